//! Gaussian statistics (mean and covariance) of feature sets, accumulated in streaming batches and
//! mergeable across shards exactly. (Their ADM `.npz` form is read and written by the
//! `llamagen-eval` crate: this crate touches no files.)
//!
//! The accumulator keeps the count, the sum and the sum of outer products in f64, so merging
//! shards gives bit-for-bit the same sums regardless of order of arrival within a shard, and the
//! final covariance uses the N-1 denominator as `np.cov` does.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::error::{ensure_finite_rows, ensure_min_samples, ensure_same_dim, MetricsError, Result};

/// Streaming accumulator of the first two moments of feature vectors.
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

    /// Adds a batch of f32 features (rows are samples).
    pub fn add_batch_f32(&mut self, batch: ArrayView2<'_, f32>) -> Result<()> {
        self.add_batch(batch.mapv(f64::from).view())
    }

    /// Adds a batch of features (rows are samples): the sums and a BLAS rank-k update.
    pub fn add_batch(&mut self, batch: ArrayView2<'_, f64>) -> Result<()> {
        ensure_same_dim("Gaussian statistics", self.dim(), batch.ncols())?;
        ensure_finite_rows("Gaussian statistics", batch)?;
        self.count += batch.nrows();
        self.sum += &batch.sum_axis(Axis(0));
        general_mat_mul(1.0, &batch.t(), &batch, 1.0, &mut self.outer);
        Ok(())
    }

    /// Folds another shard's accumulator into this one.
    pub fn merge(&mut self, other: &GaussianAccumulator) -> Result<()> {
        ensure_same_dim("merging Gaussian statistics", self.dim(), other.dim())?;
        self.count += other.count;
        self.sum += &other.sum;
        self.outer += &other.outer;
        Ok(())
    }

    /// The running sums (count, sum, sum of outer products), to persist a partial pass.
    pub fn parts(&self) -> (usize, &Array1<f64>, &Array2<f64>) {
        (self.count, &self.sum, &self.outer)
    }

    /// An accumulator resumed from [`Self::parts`]; the shapes must agree.
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
        let mut sigma = &self.outer - &(outer_product(mu.view(), mu.view()) * n);
        sigma /= n - 1.0;
        // The rank-k update fills both triangles with independently rounded sums; make them equal.
        let sym = (&sigma + &sigma.t()) * 0.5;
        Ok(GaussianStats {
            mu,
            sigma: sym,
            count: Some(self.count),
        })
    }
}

fn outer_product(a: ArrayView1<'_, f64>, b: ArrayView1<'_, f64>) -> Array2<f64> {
    let col = a.insert_axis(Axis(1));
    let row = b.insert_axis(Axis(0));
    col.dot(&row)
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
        const ROWS: usize = 4096;
        let mut acc = GaussianAccumulator::new(features.ncols());
        for block in features.axis_chunks_iter(Axis(0), ROWS) {
            acc.add_batch_f32(block)?;
        }
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
