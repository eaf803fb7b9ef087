//! How a job's samples are split and joined again: [`Shard`] K of N holds the sample indices
//! K, K+N, K+2N, ... (the partition of `sample --shard K/N` and of rank K in a launched job of N
//! processes), and [`join_order`] is the one place that puts the rows of several parts back in
//! sample-index order, refusing an index claimed twice (and, with a total, one left out).
//!
//! Sample i depends only on (seed, i, label), so a shard's samples are exactly those samples of a
//! single-process run, and joining the shards in index order gives that run's outputs.

use std::str::FromStr;

/// The most samples one run may ask for (and so the largest job a part manifest may claim).
pub const MAX_SAMPLES: usize = 100_000_000;

/// Shard `index` of `count`: sample indices `index`, `index + count`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// K, from 0.
    pub index: usize,
    /// N.
    pub count: usize,
}

impl Shard {
    /// The whole run.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// This shard's sample indices among `total`.
    pub fn indices(self, total: usize) -> Vec<u64> {
        (self.index..total)
            .step_by(self.count)
            .map(|i| i as u64)
            .collect()
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `K/N` with 0 <= K < N.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: write the shard as K/N, e.g. 0/4"))?;
        let index: usize = k
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: K is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: N is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("`{s}`: need 0 <= K < N"));
        }
        Ok(Shard { index, count })
    }
}

/// Where one row of the joined output comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Placement {
    /// Its sample index.
    pub index: i64,
    /// The part holding it (position in the list given to [`join_order`]).
    pub part: usize,
    /// Its row in that part.
    pub row: usize,
}

/// Why parts cannot be joined; the callers name the parts' files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Two parts (or two rows of one) hold the same sample.
    #[error("sample index {index} is in parts {first} and {second}")]
    Duplicate {
        /// The sample.
        index: i64,
        /// One part.
        first: usize,
        /// The other part (may equal `first`).
        second: usize,
    },
    /// A row's index lies outside the job's samples.
    #[error("part {part}: sample index {index} outside 0..{total}")]
    OutOfRange {
        /// The part.
        part: usize,
        /// The index.
        index: i64,
        /// Samples of the job.
        total: usize,
    },
    /// No part holds a sample of the job.
    #[error("no part holds sample {index} ({covered} of {total} samples held)")]
    Missing {
        /// The first sample no part holds.
        index: i64,
        /// Samples held.
        covered: usize,
        /// Samples of the job.
        total: usize,
    },
}

impl JoinError {
    /// The error with each part named by `names[k]` (its file) rather than by its number.
    pub fn naming<N: std::fmt::Display>(&self, names: &[N]) -> String {
        match *self {
            JoinError::Duplicate {
                index,
                first,
                second,
            } => format!(
                "sample index {index} is in more than one part ({} and {})",
                names[first], names[second]
            ),
            JoinError::OutOfRange { part, index, total } => {
                format!("{}: sample index {index} outside 0..{total}", names[part])
            }
            JoinError::Missing { .. } => self.to_string(),
        }
    }
}

/// The rows of parts whose sample indices are `indices[k]` (part k, row by row), in sample-index
/// order. With `total`, the parts must hold every sample of `0..total` exactly once; without,
/// any set of distinct indices joins.
pub fn join_order<I: AsRef<[i64]>>(
    indices: &[I],
    total: Option<usize>,
) -> Result<Vec<Placement>, JoinError> {
    let mut order: Vec<Placement> =
        Vec::with_capacity(indices.iter().map(|i| i.as_ref().len()).sum());
    for (part, rows) in indices.iter().enumerate() {
        for (row, &index) in rows.as_ref().iter().enumerate() {
            if let Some(total) = total {
                if usize::try_from(index).map_or(true, |i| i >= total) {
                    return Err(JoinError::OutOfRange { part, index, total });
                }
            }
            order.push(Placement { index, part, row });
        }
    }
    order.sort_unstable();
    if let Some(w) = order.windows(2).find(|w| w[0].index == w[1].index) {
        return Err(JoinError::Duplicate {
            index: w[0].index,
            first: w[0].part,
            second: w[1].part,
        });
    }
    if let Some(total) = total {
        if order.len() != total {
            let index = order
                .iter()
                .enumerate()
                .find(|(i, p)| p.index != *i as i64)
                .map_or(order.len(), |(i, _)| i) as i64;
            return Err(JoinError::Missing {
                index,
                covered: order.len(),
                total,
            });
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_samples() {
        let parts: Vec<Vec<i64>> = (0..3)
            .map(|k| {
                Shard { index: k, count: 3 }
                    .indices(10)
                    .into_iter()
                    .map(|i| i as i64)
                    .collect()
            })
            .collect();
        let order = join_order(&parts, Some(10)).expect("a partition joins");
        let indices: Vec<i64> = order.iter().map(|p| p.index).collect();
        assert_eq!(indices, (0..10).collect::<Vec<_>>());
        assert_eq!(
            order[4],
            Placement {
                index: 4,
                part: 1,
                row: 1
            }
        );
    }

    #[test]
    fn joins_refuse_duplicates_gaps_and_strays() {
        let twice = [vec![0i64, 2], vec![1, 2]];
        assert_eq!(
            join_order(&twice, None),
            Err(JoinError::Duplicate {
                index: 2,
                first: 0,
                second: 1
            })
        );
        let gap = [vec![0i64, 3], vec![1]];
        assert_eq!(
            join_order(&gap, Some(4)),
            Err(JoinError::Missing {
                index: 2,
                covered: 3,
                total: 4
            })
        );
        let stray = [vec![0i64, 7]];
        assert_eq!(
            join_order(&stray, Some(4)),
            Err(JoinError::OutOfRange {
                part: 0,
                index: 7,
                total: 4
            })
        );
        assert_eq!(join_order(&[vec![5i64, 9]], None).map(|o| o.len()), Ok(2));
    }

    #[test]
    fn shard_text_round_trips() {
        let shard: Shard = "2/5".parse().expect("valid");
        assert_eq!(shard, Shard { index: 2, count: 5 });
        assert_eq!(shard.to_string(), "2/5");
        assert!("5/5".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
    }
}
