//! Codebook usage of a VQ tokenizer from the token indices it produced over an evaluation set:
//! which fraction of the codebook is used, the entropy and perplexity of the code frequencies, and
//! LlamaGen's training-time usage figure.
//!
//! LlamaGen's `VectorQuantizer` (with `show_usage`) keeps the last 65536 indices in a buffer that
//! starts as zeros and reports `len(torch.unique(buffer)) / codebook_size`. [`CodebookUsage::
//! llamagen_usage`] reproduces that on the last 65536 indices given here; when fewer are given,
//! the buffer's untouched zeros still count entry 0 as used, as they do in LlamaGen.

use crate::error::{MetricsError, Result};

/// Size of LlamaGen's `codebook_used` buffer.
pub const LLAMAGEN_USAGE_WINDOW: usize = 65536;

/// A token index type: u32 or i64 (as torch's `argmin` gives).
pub trait CodeIndex: Copy + std::fmt::Display {
    /// The index as `usize`, or `None` when it is negative (or does not fit).
    fn to_index(self) -> Option<usize>;
}

impl CodeIndex for u32 {
    fn to_index(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
}

impl CodeIndex for i64 {
    fn to_index(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
}

/// Codebook usage over a set of token indices.
#[derive(Debug, Clone, PartialEq)]
pub struct CodebookUsage {
    pub codebook_size: usize,
    /// How many indices were counted.
    pub num_indices: usize,
    /// Distinct codebook entries that occur at least once.
    pub used_entries: usize,
    /// `used_entries / codebook_size`.
    pub usage: f64,
    /// Entropy of the code frequencies, `-sum p ln p`, in nats.
    pub entropy_nats: f64,
    /// The same entropy in bits (at most `log2(codebook_size)`).
    pub entropy_bits: f64,
    /// `exp(entropy_nats)`: the number of equally likely codes with the same entropy.
    pub perplexity: f64,
    /// LlamaGen's figure: distinct entries in the last [`LLAMAGEN_USAGE_WINDOW`] indices (entry 0
    /// included while the window is not full) divided by `codebook_size`.
    pub llamagen_usage: f64,
}

/// Computes [`CodebookUsage`] of `indices` for a codebook of `codebook_size` entries.
///
/// Errors: [`MetricsError::InvalidArgument`] for a codebook size of 0 or an index that is negative
/// or not below `codebook_size` (naming the first such index and its position), and
/// [`MetricsError::TooFewSamples`] for no indices.
pub fn codebook_usage<I: CodeIndex>(indices: &[I], codebook_size: usize) -> Result<CodebookUsage> {
    if codebook_size == 0 {
        return Err(MetricsError::InvalidArgument(
            "codebook usage: codebook size must be at least 1".into(),
        ));
    }
    if indices.is_empty() {
        return Err(MetricsError::TooFewSamples {
            what: "codebook usage",
            need: 1,
            got: 0,
        });
    }
    let mut counts = vec![0u64; codebook_size];
    for (pos, &raw) in indices.iter().enumerate() {
        match raw.to_index().filter(|&k| k < codebook_size) {
            Some(k) => counts[k] += 1,
            None => {
                return Err(MetricsError::InvalidArgument(format!(
                    "codebook usage: index {raw} at position {pos} is outside 0..{codebook_size}"
                )))
            }
        }
    }
    let window: Vec<usize> = indices[indices.len().saturating_sub(LLAMAGEN_USAGE_WINDOW)..]
        .iter()
        // Indices were all checked above.
        .filter_map(|raw| raw.to_index())
        .collect();
    Ok(usage_from_counts(&counts, &window, indices.len()))
}

/// [`CodebookUsage`] from per-entry counts (whose length is the codebook size), the last up to
/// [`LLAMAGEN_USAGE_WINDOW`] indices and the total number of indices: what [`codebook_usage`]
/// computes, for callers that count incrementally over batches. Window entries outside the
/// codebook are ignored.
pub fn usage_from_counts(counts: &[u64], window: &[usize], num_indices: usize) -> CodebookUsage {
    let codebook_size = counts.len();
    let n = num_indices as f64;
    let used_entries = counts.iter().filter(|&&c| c > 0).count();
    let entropy_nats = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum::<f64>()
        // A single used entry gives -1 * ln(1) = -0.0.
        .max(0.0);
    let mut seen = vec![false; codebook_size];
    for &k in window {
        if let Some(s) = seen.get_mut(k) {
            *s = true;
        }
    }
    if window.len() < LLAMAGEN_USAGE_WINDOW && codebook_size > 0 {
        seen[0] = true;
    }
    let llamagen_used = seen.iter().filter(|&&s| s).count();
    CodebookUsage {
        codebook_size,
        num_indices,
        used_entries,
        usage: used_entries as f64 / codebook_size.max(1) as f64,
        entropy_nats,
        entropy_bits: entropy_nats / std::f64::consts::LN_2,
        perplexity: entropy_nats.exp(),
        llamagen_usage: llamagen_used as f64 / codebook_size.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn uniform_use_of_half_the_codebook() {
        // Entries 0..4 of 8, each twice: entropy ln 4 = 2 bits, perplexity 4.
        let idx: Vec<u32> = (0..8).map(|i| i % 4).collect();
        let u = codebook_usage(&idx, 8).unwrap();
        assert_eq!(u.used_entries, 4);
        assert_eq!(u.num_indices, 8);
        assert!(close(u.usage, 0.5));
        assert!(close(u.entropy_nats, 4f64.ln()));
        assert!(close(u.entropy_bits, 2.0));
        assert!(close(u.perplexity, 4.0));
        // Fewer than 65536 indices: LlamaGen's zero-filled buffer adds nothing new (0 is used).
        assert!(close(u.llamagen_usage, 0.5));
    }

    #[test]
    fn skewed_frequencies() {
        // p = (1/2, 1/4, 1/4): H = 1.5 bits = 1.5 ln 2 nats, perplexity 2^1.5.
        let idx: Vec<i64> = vec![3, 3, 5, 7];
        let u = codebook_usage(&idx, 16).unwrap();
        assert_eq!(u.used_entries, 3);
        assert!(close(u.usage, 3.0 / 16.0));
        assert!(close(u.entropy_bits, 1.5));
        assert!(close(u.entropy_nats, 1.5 * std::f64::consts::LN_2));
        assert!(close(u.perplexity, 2f64.powf(1.5)));
        // LlamaGen's buffer still holds zeros: entry 0 counts too.
        assert!(close(u.llamagen_usage, 4.0 / 16.0));
    }

    #[test]
    fn single_code() {
        let u = codebook_usage(&[2u32; 10], 4).unwrap();
        assert_eq!(u.entropy_nats, 0.0);
        assert_eq!(u.perplexity, 1.0);
        assert!(close(u.usage, 0.25));
    }

    #[test]
    fn llamagen_window_is_the_last_65536() {
        // 65536 indices using entries 1..=4, then 65536 using only entry 7: LlamaGen sees only 7.
        let mut idx: Vec<u32> = (0..LLAMAGEN_USAGE_WINDOW as u32)
            .map(|i| 1 + i % 4)
            .collect();
        idx.extend(std::iter::repeat_n(7u32, LLAMAGEN_USAGE_WINDOW));
        let u = codebook_usage(&idx, 8).unwrap();
        assert_eq!(u.used_entries, 5);
        assert!(close(u.usage, 5.0 / 8.0));
        assert!(close(u.llamagen_usage, 1.0 / 8.0));
        // Exactly a full window without entry 0: the zeros are gone.
        let full: Vec<u32> = (0..LLAMAGEN_USAGE_WINDOW as u32)
            .map(|i| 1 + i % 2)
            .collect();
        assert!(close(
            codebook_usage(&full, 4).unwrap().llamagen_usage,
            2.0 / 4.0
        ));
    }

    #[test]
    fn bad_input() {
        assert!(matches!(
            codebook_usage::<u32>(&[], 8),
            Err(MetricsError::TooFewSamples { got: 0, .. })
        ));
        assert!(matches!(
            codebook_usage(&[0u32], 0),
            Err(MetricsError::InvalidArgument(_))
        ));
        let e = codebook_usage(&[1u32, 8, 2], 8).unwrap_err();
        assert!(
            matches!(&e, MetricsError::InvalidArgument(m) if m.contains("index 8 at position 1"))
        );
        let e = codebook_usage(&[1i64, -1], 8).unwrap_err();
        assert!(
            matches!(&e, MetricsError::InvalidArgument(m) if m.contains("index -1 at position 1"))
        );
    }
}
