//! Gaussian statistics (mean and covariance) of feature sets, accumulated in streaming batches and
//! mergeable across shards exactly. (Their ADM `.npz` form is read and written by the
//! `llamagen-eval` crate: this crate touches no files.)
//!
//! The accumulator keeps the count, the sum and the sum of outer products in f64, so merging
//! shards gives bit-for-bit the same sums regardless of order of arrival within a shard, and the
//! final covariance uses the N-1 denominator as `np.cov` does. The sum of outer products is a
//! symmetric rank-k update (`dsyrk`) on one triangle, mirrored when the statistics are finalised,
//! and f32 features are widened to f64 a few hundred rows at a time, so no f64 copy of a feature
//! matrix is ever made.

use ndarray::{s, Array1, Array2, ArrayView2, Axis};

use crate::error::{ensure_finite_rows, ensure_min_samples, ensure_same_dim, MetricsError, Result};
use crate::linalg::syrk_upper_transposed;

/// Rows widened from f32 to f64 per rank-k update: 512 x 2048 f64 is an 8 MiB buffer, and updates
/// of this depth run BLAS at full speed.
const WIDEN_ROWS: usize = 512;

/// Streaming accumulator of the first two moments of feature vectors.
///
/// The sum of outer products is kept on the upper triangle only (the strictly lower part of the
/// matrix in [`Self::parts`] is not maintained); [`Self::finalize`] mirrors it.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianAccumulator {
    count: usize,
    sum: Array1<f64>,
    outer: Array2<f64>,
}

impl GaussianAccumulator {
    pub fn new(dim: usize) -> Self {
        GaussianAccumulator {
            count: 0,
            sum: Array1::zeros(dim),
            outer: Array2::zeros((dim, dim)),
        }
    }

    pub fn dim(&self) -> usize {
        self.sum.len()
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds a batch of f32 features (rows are samples), widened to f64 [`WIDEN_ROWS`] rows at a
    /// time into one reused buffer.
    pub fn add_batch_f32(&mut self, batch: ArrayView2<'_, f32>) -> Result<()> {
        ensure_same_dim("Gaussian statistics", self.dim(), batch.ncols())?;
        ensure_finite_rows("Gaussian statistics", batch)?;
        let mut wide = Array2::<f64>::zeros((WIDEN_ROWS.min(batch.nrows()), batch.ncols()));
        for chunk in batch.axis_chunks_iter(Axis(0), WIDEN_ROWS) {
            let mut rows = wide.slice_mut(s![..chunk.nrows(), ..]);
            rows.zip_mut_with(&chunk, |w, &v| *w = f64::from(v));
            self.accumulate(rows.view())?;
        }
        self.count += batch.nrows();
        Ok(())
    }

    /// Adds a batch of features (rows are samples): the sums and a BLAS rank-k update.
    pub fn add_batch(&mut self, batch: ArrayView2<'_, f64>) -> Result<()> {
        ensure_same_dim("Gaussian statistics", self.dim(), batch.ncols())?;
        ensure_finite_rows("Gaussian statistics", batch)?;
        if batch.is_standard_layout() {
            self.accumulate(batch)?;
        } else {
            for chunk in batch.axis_chunks_iter(Axis(0), WIDEN_ROWS) {
                self.accumulate(chunk.as_standard_layout().view())?;
            }
        }
        self.count += batch.nrows();
        Ok(())
    }

    /// Sums and upper-triangle rank-k update of validated, row-contiguous rows.
    fn accumulate(&mut self, rows: ArrayView2<'_, f64>) -> Result<()> {
        self.sum += &rows.sum_axis(Axis(0));
        syrk_upper_transposed(rows, &mut self.outer)
    }

    /// Folds another shard's accumulator into this one.
    pub fn merge(&mut self, other: &GaussianAccumulator) -> Result<()> {
        ensure_same_dim("merging Gaussian statistics", self.dim(), other.dim())?;
        self.count = self.count.checked_add(other.count).ok_or_else(|| {
            MetricsError::InvalidArgument(format!(
                "merging Gaussian statistics: the sample count {} + {} overflows",
                self.count, other.count
            ))
        })?;
        self.sum += &other.sum;
        self.outer += &other.outer;
        Ok(())
    }

    /// The running sums (count, sum, sum of outer products on the upper triangle), to persist a
    /// partial pass.
    pub fn parts(&self) -> (usize, &Array1<f64>, &Array2<f64>) {
        (self.count, &self.sum, &self.outer)
    }

    /// An accumulator resumed from [`Self::parts`]; the shapes must agree. Only the upper
    /// triangle of `outer` is used.
    pub fn from_parts(count: usize, sum: Array1<f64>, outer: Array2<f64>) -> Result<Self> {
        ensure_same_dim("Gaussian accumulator rows", sum.len(), outer.nrows())?;
        ensure_same_dim("Gaussian accumulator columns", sum.len(), outer.ncols())?;
        Ok(GaussianAccumulator { count, sum, outer })
    }

    /// Mean and covariance (N-1 denominator). Needs at least two samples.
    pub fn finalize(&self) -> Result<GaussianStats> {
        ensure_min_samples("Gaussian statistics", 2, self.count)?;
        let n = self.count as f64;
        let mu = &self.sum / n;
        let dim = self.dim();
        let mut sigma = Array2::<f64>::zeros((dim, dim));
        for i in 0..dim {
            for j in i..dim {
                sigma[[i, j]] = (self.outer[[i, j]] - mu[i] * mu[j] * n) / (n - 1.0);
            }
        }
        // Mirror the upper triangle in tiles, so both the reads and the writes stay in cache.
        const TILE: usize = 64;
        for bi in (0..dim).step_by(TILE) {
            for bj in (0..=bi).step_by(TILE) {
                for i in bi..(bi + TILE).min(dim) {
                    for j in bj..(bj + TILE).min(i) {
                        sigma[[i, j]] = sigma[[j, i]];
                    }
                }
            }
        }
        // Finite rows can still overflow their sums of squares (values beyond about 1e154).
        if mu.iter().chain(sigma.iter()).any(|v| !v.is_finite()) {
            return Err(MetricsError::InvalidArgument(
                "Gaussian statistics: the sums of the features or of their squares overflow \
                 float64; the feature values are far too large (scale them down)"
                    .into(),
            ));
        }
        Ok(GaussianStats {
            mu,
            sigma,
            count: Some(self.count),
        })
    }
}

/// Mean and covariance of a feature set.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    pub mu: Array1<f64>,
    pub sigma: Array2<f64>,
    /// Number of samples, when known (ADM reference files do not record it).
    pub count: Option<usize>,
}

impl GaussianStats {
    /// Statistics of a whole feature matrix at once.
    pub fn from_features(features: ArrayView2<'_, f64>) -> Result<Self> {
        let mut acc = GaussianAccumulator::new(features.ncols());
        acc.add_batch(features)?;
        acc.finalize()
    }

    /// Statistics of a whole f32 feature matrix, converted to f64 a block of rows at a time so
    /// that a 50,000-row set never needs a full f64 copy.
    pub fn from_features_f32(features: ArrayView2<'_, f32>) -> Result<Self> {
        let mut acc = GaussianAccumulator::new(features.ncols());
        acc.add_batch_f32(features)?;
        acc.finalize()
    }

    /// Wraps a given mean and covariance, checking their shapes and values.
    pub fn new(mu: Array1<f64>, sigma: Array2<f64>) -> Result<Self> {
        ensure_same_dim("covariance rows vs mean", mu.len(), sigma.nrows())?;
        ensure_same_dim("covariance columns vs mean", mu.len(), sigma.ncols())?;
        if mu.iter().chain(sigma.iter()).any(|v| !v.is_finite()) {
            return Err(MetricsError::NonFinite {
                what: "Gaussian statistics",
                rows: sigma
                    .axis_iter(Axis(0))
                    .filter(|r| r.iter().any(|v| !v.is_finite()))
                    .count()
                    .max(1),
            });
        }
        Ok(GaussianStats {
            mu,
            sigma,
            count: None,
        })
    }

    pub fn dim(&self) -> usize {
        self.mu.len()
    }
}

/// The statistics an ADM reference batch carries: pool features (`mu`, `sigma`) and spatial
/// features (`mu_s`, `sigma_s`), either of which may be absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReferenceStats {
    pub pool: Option<GaussianStats>,
    pub spatial: Option<GaussianStats>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn matches_two_pass_covariance_and_merges_exactly() {
        let x = array![[1.0, 2.0], [2.0, 0.5], [4.0, 1.0], [0.0, -1.0], [3.0, 3.5]];
        let full = GaussianStats::from_features(x.view()).unwrap();
        let mean = x.mean_axis(Axis(0)).unwrap();
        let centred = &x - &mean;
        let cov = centred.t().dot(&centred) / 4.0;
        for (a, b) in full.sigma.iter().zip(cov.iter()) {
            assert!((a - b).abs() < 1e-12);
        }
        let mut left = GaussianAccumulator::new(2);
        left.add_batch(x.slice(ndarray::s![..2, ..])).unwrap();
        let mut right = GaussianAccumulator::new(2);
        right.add_batch(x.slice(ndarray::s![2.., ..])).unwrap();
        left.merge(&right).unwrap();
        let merged = left.finalize().unwrap();
        assert_eq!(merged.count, Some(5));
        for (a, b) in merged.sigma.iter().zip(full.sigma.iter()) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn refuses_overflowing_sums_and_counts() {
        let mut acc = GaussianAccumulator::new(2);
        acc.add_batch(array![[1e200, -1e200], [-1e200, 3e200], [0.0, 1.0]].view())
            .unwrap();
        assert!(matches!(
            acc.finalize(),
            Err(MetricsError::InvalidArgument(m)) if m.contains("overflow float64")
        ));
        let mut huge =
            GaussianAccumulator::from_parts(usize::MAX, Array1::zeros(2), Array2::zeros((2, 2)))
                .unwrap();
        assert!(matches!(
            huge.merge(&acc),
            Err(MetricsError::InvalidArgument(m)) if m.contains("count")
        ));
    }

    #[test]
    fn rejects_bad_input() {
        let mut acc = GaussianAccumulator::new(3);
        assert!(matches!(
            acc.add_batch(array![[1.0, 2.0]].view()),
            Err(MetricsError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            acc.add_batch(
                array![
                    [1.0, f64::NAN, 0.0],
                    [1.0, 2.0, 3.0],
                    [f64::INFINITY, 0.0, 0.0]
                ]
                .view()
            ),
            Err(MetricsError::NonFinite { rows: 2, .. })
        ));
        acc.add_batch(array![[1.0, 2.0, 3.0]].view()).unwrap();
        assert!(matches!(
            acc.finalize(),
            Err(MetricsError::TooFewSamples { got: 1, .. })
        ));
    }
}
