//! CLIP score (Hessel et al. 2021, "CLIPScore"; torchmetrics' `CLIPScore` with weight 100): how
//! well each generated image matches its caption, from the CLIP image and text embeddings of the
//! pairs (row i of one with row i of the other):
//!
//! `score_i = 100 · max(cos(image_i, text_i), 0)`,
//!
//! reported as the mean over pairs, with the population standard deviation (divisor N, numpy's
//! default: the spread of the pairs themselves, not an estimate of the mean's error) and the
//! per-pair scores.
//!
//! torchmetrics documents this per-pair formula, but its code clamps the *mean* instead:
//! `max(mean_i 100 · cos_i, 0)`. The two agree whenever no pair has a negative cosine, which for
//! trained CLIP models and real captions is every pair in practice; [`ClipScore::torchmetrics`]
//! gives the code's figure for comparison.
//!
//! Computed in float64. Embeddings need not be normalised (each is divided by its norm, as
//! torchmetrics does); a zero embedding has no direction and is refused.

use ndarray::{ArrayView2, Axis};

use crate::error::{ensure_finite_rows, ensure_min_samples, ensure_same_dim, MetricsError, Result};

/// The weight torchmetrics multiplies cosines by.
pub const WEIGHT: f64 = 100.0;

/// The CLIP score of a set of image-caption pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipScore {
    /// Mean of [`Self::per_pair`].
    pub mean: f64,
    /// Population standard deviation of [`Self::per_pair`] (0 for one pair).
    pub std: f64,
    /// `100 · max(cos, 0)` of each pair, in input order.
    pub per_pair: Vec<f64>,
    /// `100 · cos` of each pair, before clamping.
    pub cosines: Vec<f64>,
}

impl ClipScore {
    /// What torchmetrics' `CLIPScore.compute()` returns for the same pairs: the mean of the
    /// unclamped scores, clamped at 0.
    pub fn torchmetrics(&self) -> f64 {
        let n = self.cosines.len() as f64;
        (self.cosines.iter().sum::<f64>() / n).max(0.0)
    }
}

/// The CLIP score of pairs (`images` row i with `texts` row i): CLIP image embeddings and the text
/// embeddings of their captions, from the same CLIP model.
pub fn clip_score<A: Copy + Into<f64>>(
    images: ArrayView2<'_, A>,
    texts: ArrayView2<'_, A>,
) -> Result<ClipScore> {
    const WHAT: &str = "CLIP score";
    ensure_min_samples(WHAT, 1, images.nrows())?;
    if images.nrows() != texts.nrows() {
        return Err(MetricsError::InvalidArgument(format!(
            "{WHAT}: {} image embeddings but {} caption embeddings; every image needs its caption",
            images.nrows(),
            texts.nrows()
        )));
    }
    ensure_same_dim(WHAT, images.ncols(), texts.ncols())?;
    if images.ncols() == 0 {
        return Err(MetricsError::InvalidArgument(format!(
            "{WHAT}: embeddings have no components"
        )));
    }
    ensure_finite_rows("CLIP score (image embeddings)", images)?;
    ensure_finite_rows("CLIP score (caption embeddings)", texts)?;
    let mut cosines = Vec::with_capacity(images.nrows());
    for (i, (image, text)) in images
        .axis_iter(Axis(0))
        .zip(texts.axis_iter(Axis(0)))
        .enumerate()
    {
        let (mut dot, mut ii, mut tt) = (0f64, 0f64, 0f64);
        for (&a, &b) in image.iter().zip(text.iter()) {
            let (a, b): (f64, f64) = (a.into(), b.into());
            dot += a * b;
            ii += a * a;
            tt += b * b;
        }
        if ii == 0.0 || tt == 0.0 {
            return Err(MetricsError::InvalidArgument(format!(
                "{WHAT}: pair {i} has an all-zero {} embedding, which has no direction",
                if ii == 0.0 { "image" } else { "caption" }
            )));
        }
        cosines.push(WEIGHT * dot / (ii.sqrt() * tt.sqrt()));
    }
    let per_pair: Vec<f64> = cosines.iter().map(|&c| c.max(0.0)).collect();
    let n = per_pair.len() as f64;
    let mean = per_pair.iter().sum::<f64>() / n;
    let std = (per_pair.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    Ok(ClipScore {
        mean,
        std,
        per_pair,
        cosines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn scores_are_clamped_cosines_times_100() {
        // Cosines 1, -1, 0.6 and 0 (orthogonal), with unnormalised rows.
        let images = array![[2.0f32, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 5.0]];
        let texts = array![[5.0f32, 0.0], [-2.0, -2.0], [1.0, 0.0], [7.0, 0.0]];
        let s = clip_score(images.view(), texts.view()).unwrap();
        let expect = [100.0, 0.0, 60.0, 0.0];
        for (got, want) in s.per_pair.iter().zip(expect) {
            assert!((got - want).abs() < 1e-12, "{:?}", s.per_pair);
        }
        assert!((s.cosines[1] + 100.0).abs() < 1e-12);
        assert!((s.mean - 40.0).abs() < 1e-12);
        // Population std of [100, 0, 60, 0] around 40: sqrt((3600 + 1600 + 400 + 1600) / 4).
        assert!((s.std - 1800f64.sqrt()).abs() < 1e-9, "{}", s.std);
        // torchmetrics' code: (100 - 100 + 60 + 0) / 4.
        assert!((s.torchmetrics() - 15.0).abs() < 1e-12);
        let single = clip_score(
            images.slice(ndarray::s![..1, ..]),
            texts.slice(ndarray::s![..1, ..]),
        )
        .unwrap();
        assert_eq!(single.std, 0.0);
    }

    #[test]
    fn the_torchmetrics_figure_clamps_the_mean() {
        let images = array![[1.0f64, 0.0], [1.0, 0.0]];
        let texts = array![[-1.0f64, 0.0], [0.5, 0.866]];
        let s = clip_score(images.view(), texts.view()).unwrap();
        assert_eq!(s.torchmetrics(), 0.0);
        assert!(s.mean > 0.0);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let two = array![[1.0f32, 0.0], [0.0, 1.0]];
        let three = array![[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]];
        assert!(matches!(
            clip_score(two.view(), three.view()),
            Err(MetricsError::InvalidArgument(m)) if m.contains("2 image embeddings but 3")
        ));
        let wide = array![[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0]];
        assert!(matches!(
            clip_score(two.view(), wide.view()),
            Err(MetricsError::DimensionMismatch {
                left: 2,
                right: 3,
                ..
            })
        ));
        let empty = ndarray::Array2::<f32>::zeros((0, 2));
        assert!(matches!(
            clip_score(empty.view(), empty.view()),
            Err(MetricsError::TooFewSamples { .. })
        ));
        let nan = array![[f32::NAN, 0.0], [0.0, 1.0]];
        assert!(matches!(
            clip_score(two.view(), nan.view()),
            Err(MetricsError::NonFinite { rows: 1, .. })
        ));
        let zero = array![[1.0f32, 0.0], [0.0, 0.0]];
        assert!(matches!(
            clip_score(zero.view(), two.view()),
            Err(MetricsError::InvalidArgument(m)) if m.contains("pair 1 has an all-zero image")
        ));
    }
}
