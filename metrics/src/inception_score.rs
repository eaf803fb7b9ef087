//! Inception Score from unbiased Inception logits.
//!
//! ADM semantics by default (the numbers papers report): softmax over the 1008 logits
//! (`pool @ W`, no bias), contiguous splits of 5000 samples with a partial last split, and the mean of
//! the per-split `exp(mean KL(p(y|x) || p(y)))`. torch-fidelity's convention — the rows shuffled
//! by NumPy's `RandomState(seed).permutation` (seed 2020 by default), then a fixed number of equal
//! splits with `i*N/splits` boundaries — is offered too. All arithmetic is in f64 on a
//! log-softmax, so no probability underflows to `log(0)`.

use ndarray::{Array1, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{ensure_finite_rows, ensure_min_samples, MetricsError, Result};
use crate::kid::LegacyRandomState;

/// How samples are grouped into splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Splits {
    /// ADM evaluator: consecutive chunks of `split_size` rows, the last one possibly shorter.
    Adm { split_size: usize },
    /// torch-fidelity's `isc_features_to_metric`: with `shuffle: Some(seed)` (torch-fidelity's
    /// default, `samples_shuffle=True` with `rng_seed=2020`) the rows in the order of NumPy's
    /// `RandomState(seed).permutation(N)`, with `None` as given; then `splits` chunks with
    /// boundaries `i * N / splits`.
    Equal { splits: usize, shuffle: Option<u32> },
}

/// torch-fidelity's default seed (`rng_seed`) for the Inception Score's shuffle.
pub const TORCH_FIDELITY_SEED: u32 = 2020;

impl Default for Splits {
    fn default() -> Self {
        Splits::Adm { split_size: 5000 }
    }
}

/// Inception Score: the mean over splits and the (population) standard deviation over splits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InceptionScore {
    pub mean: f64,
    pub std: f64,
    pub splits: usize,
}

/// Inception Score of `logits` (rows are samples, columns classes).
pub fn inception_score(logits: ArrayView2<'_, f32>, splits: Splits) -> Result<InceptionScore> {
    let n = logits.nrows();
    ensure_min_samples("Inception Score", 1, n)?;
    ensure_finite_rows("Inception Score logits", logits)?;
    let bounds: Vec<(usize, usize)> = match splits {
        Splits::Adm { split_size } => {
            if split_size == 0 {
                return Err(MetricsError::InvalidArgument(
                    "Inception Score split size must be positive".into(),
                ));
            }
            (0..n)
                .step_by(split_size)
                .map(|s| (s, (s + split_size).min(n)))
                .collect()
        }
        Splits::Equal { splits, .. } => {
            if splits == 0 || splits > n {
                return Err(MetricsError::InvalidArgument(format!(
                    "Inception Score needs 1 <= splits <= samples, got {splits} splits for {n} samples"
                )));
            }
            (0..splits)
                .map(|i| (i * n / splits, (i + 1) * n / splits))
                .collect()
        }
    };
    let mut log_probs = log_softmax_rows(logits);
    if let Splits::Equal {
        shuffle: Some(seed),
        ..
    } = splits
    {
        let order = LegacyRandomState::new(seed).permutation(n);
        log_probs = log_probs.select(Axis(0), &order);
    }
    let scores: Vec<f64> = bounds
        .par_iter()
        .map(|&(start, end)| split_score(log_probs.slice(ndarray::s![start..end, ..])))
        .collect();
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / scores.len() as f64;
    Ok(InceptionScore {
        mean,
        std: var.sqrt(),
        splits: scores.len(),
    })
}

fn log_softmax_rows(logits: ArrayView2<'_, f32>) -> ndarray::Array2<f64> {
    let mut out = logits.mapv(f64::from);
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .for_each(|mut row| {
            let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            let log_sum = row.iter().map(|&v| (v - max).exp()).sum::<f64>().ln() + max;
            row -= log_sum;
        });
    out
}

/// `exp(mean_i KL(p_i || mean p))` over one split of log-probabilities.
fn split_score(log_probs: ArrayView2<'_, f64>) -> f64 {
    let probs = log_probs.mapv(f64::exp);
    let marginal: Array1<f64> = probs.mean_axis(Axis(0)).expect("split is non-empty");
    let log_marginal = marginal.mapv(f64::ln);
    let kl_sum: f64 = probs
        .axis_iter(Axis(0))
        .zip(log_probs.axis_iter(Axis(0)))
        .map(|(p, lp)| {
            p.iter()
                .zip(lp.iter())
                .zip(log_marginal.iter())
                .map(|((&p, &lp), &lm)| if p > 0.0 { p * (lp - lm) } else { 0.0 })
                .sum::<f64>()
        })
        .sum();
    (kl_sum / log_probs.nrows() as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    #[test]
    fn confident_distinct_predictions_score_the_class_count() {
        // Each sample certain of its own class, classes uniform over the split: IS = number of classes.
        let mut logits = Array2::<f32>::zeros((4, 4));
        for i in 0..4 {
            logits[[i, i]] = 100.0;
        }
        let score = inception_score(logits.view(), Splits::default()).unwrap();
        assert!((score.mean - 4.0).abs() < 1e-9);
        assert_eq!(score.splits, 1);
    }

    #[test]
    fn identical_predictions_score_one() {
        let logits = array![[1.0f32, 2.0, 3.0], [1.0, 2.0, 3.0]];
        let score = inception_score(
            logits.view(),
            Splits::Equal {
                splits: 2,
                shuffle: None,
            },
        )
        .unwrap();
        assert!((score.mean - 1.0).abs() < 1e-12);
        assert!(score.std.abs() < 1e-12);
    }

    #[test]
    fn adm_splits_keep_a_partial_last_split() {
        let logits = Array2::<f32>::zeros((12, 3));
        assert_eq!(
            inception_score(logits.view(), Splits::Adm { split_size: 5 })
                .unwrap()
                .splits,
            3
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let empty = Array2::<f32>::zeros((0, 3));
        assert!(inception_score(empty.view(), Splits::default()).is_err());
        let nan = array![[1.0f32, f32::NAN]];
        assert!(matches!(
            inception_score(nan.view(), Splits::default()),
            Err(MetricsError::NonFinite { rows: 1, .. })
        ));
        let two = Array2::<f32>::zeros((2, 3));
        assert!(inception_score(
            two.view(),
            Splits::Equal {
                splits: 3,
                shuffle: None,
            }
        )
        .is_err());
    }
}
