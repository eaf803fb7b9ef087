//! The Fréchet distance extrapolated to infinitely many samples (Chong & Forsyth 2020,
//! "Effectively Unbiased FID and Inception Score and where to find them"): FID is biased upwards by
//! a term that falls as 1/N, so FD is measured on subsets of several sizes N_i, a line is fitted
//! to (1/N_i, FD_i) by least squares, and its value at 1/N = 0 is the bias-free estimate
//! (`fid_inf`, and `fd_dinov2_inf` on DINOv2 features).
//!
//! As the reference code (`calculate_FID_infinity` of mchong6/FID_IS_infinity) does it: the sizes
//! are `numpy.linspace(5000, N, 15).astype(int)`; before each size the rows are shuffled again
//! (the shuffles compound) and the first N_i rows are used, against the reference's fixed
//! statistics. The reference shuffles with NumPy's global generator; here it is
//! `RandomState(seed)` ([`LegacyRandomState`]), so a seeded run of the reference algorithm
//! draws the same subsets. With fewer than twice the smallest size, the sizes run from N/2 to N.
//!
//! Subset statistics are accumulated a block of gathered rows at a time: no subset is copied whole.

use ndarray::ArrayView2;

use crate::error::{ensure_finite_rows, ensure_min_samples, MetricsError, Result};
use crate::frechet::frechet_distance;
use crate::kid::LegacyRandomState;
use crate::linalg::{gather_rows_f64, Element};
use crate::stats::{GaussianAccumulator, GaussianStats};

/// The reference's number of subset sizes.
pub const DEFAULT_POINTS: usize = 15;
/// The reference's smallest subset.
pub const DEFAULT_MIN_SIZE: usize = 5000;
/// Rows gathered per accumulation step.
const GATHER_ROWS: usize = 1024;

/// Settings of [`frechet_distance_infinity`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InfinityConfig {
    /// Subset sizes fitted.
    pub points: usize,
    /// The smallest subset (when the set holds at least twice as many rows).
    pub min_size: usize,
    /// Seed of the subsets' `RandomState`.
    pub seed: u32,
}

impl Default for InfinityConfig {
    fn default() -> Self {
        InfinityConfig {
            points: DEFAULT_POINTS,
            min_size: DEFAULT_MIN_SIZE,
            seed: 0,
        }
    }
}

/// The extrapolated distance and its fit.
#[derive(Clone, Debug, PartialEq)]
pub struct InfinityResult {
    /// The fitted line's value at 1/N = 0.
    pub value: f64,
    /// The fitted line's slope in 1/N.
    pub slope: f64,
    /// Coefficient of determination of the fit (1 when the points lie on the line).
    pub r_squared: f64,
    /// The subset sizes, ascending.
    pub sizes: Vec<usize>,
    /// The Fréchet distance at each size.
    pub distances: Vec<f64>,
}

/// The subset sizes for `n` rows: `linspace(start, n, points)` truncated to integers, with
/// `start` the configured smallest size, or n/2 when the set holds fewer than twice that.
pub fn subset_sizes(n: usize, config: &InfinityConfig) -> Vec<usize> {
    let start = if n >= 2 * config.min_size {
        config.min_size
    } else {
        n / 2
    };
    let points = config.points;
    (0..points)
        .map(|i| {
            if i + 1 == points {
                n
            } else {
                let step = (n - start) as f64 / (points - 1) as f64;
                (start as f64 + i as f64 * step) as usize
            }
        })
        .collect()
}

/// The Fréchet distance of `features` (rows are samples) to `reference`, extrapolated to
/// infinitely many samples.
pub fn frechet_distance_infinity<T: Element>(
    features: ArrayView2<'_, T>,
    reference: &GaussianStats,
    config: &InfinityConfig,
) -> Result<InfinityResult> {
    const WHAT: &str = "extrapolated Fréchet distance";
    if config.points < 2 {
        return Err(MetricsError::InvalidArgument(format!(
            "{WHAT}: needs at least 2 subset sizes, got {}",
            config.points
        )));
    }
    let n = features.nrows();
    ensure_min_samples(WHAT, 8, n)?;
    ensure_finite_rows(WHAT, features)?;
    let sizes = subset_sizes(n, config);
    let mut rng = LegacyRandomState::new(config.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut distances = Vec::with_capacity(sizes.len());
    for &size in &sizes {
        shuffle(&mut rng, &mut order);
        let mut accumulator = GaussianAccumulator::new(features.ncols());
        for rows in order[..size].chunks(GATHER_ROWS) {
            accumulator.add_batch(gather_rows_f64(features, rows).view())?;
        }
        distances.push(frechet_distance(&accumulator.finalize()?, reference)?);
    }
    let x: Vec<f64> = sizes.iter().map(|&s| 1.0 / s as f64).collect();
    let (value, slope, r_squared) = least_squares_line(&x, &distances);
    Ok(InfinityResult {
        value,
        slope,
        r_squared,
        sizes,
        distances,
    })
}

/// NumPy's legacy `shuffle` in place (Fisher–Yates from the last position down).
fn shuffle(rng: &mut LegacyRandomState, values: &mut [usize]) {
    for i in (1..values.len()).rev() {
        let j = rng.interval(i as u64) as usize;
        values.swap(i, j);
    }
}

/// Intercept, slope and R² of the least-squares line through `(x, y)`.
fn least_squares_line(x: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let n = x.len() as f64;
    let mean_x = x.iter().sum::<f64>() / n;
    let mean_y = y.iter().sum::<f64>() / n;
    let sxx: f64 = x.iter().map(|v| (v - mean_x).powi(2)).sum();
    let sxy: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| (a - mean_x) * (b - mean_y))
        .sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let intercept = mean_y - slope * mean_x;
    let total: f64 = y.iter().map(|v| (v - mean_y).powi(2)).sum();
    let residual: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| (b - intercept - slope * a).powi(2))
        .sum();
    let r_squared = if total > 0.0 {
        1.0 - residual / total
    } else {
        1.0
    };
    (intercept, slope, r_squared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_numpy_linspace_truncated() {
        // numpy.linspace(5000, 50000, 15).astype('int32')
        let sizes = subset_sizes(50_000, &InfinityConfig::default());
        assert_eq!(
            sizes,
            [
                5000, 8214, 11428, 14642, 17857, 21071, 24285, 27500, 30714, 33928, 37142, 40357,
                43571, 46785, 50000
            ]
        );
        let small = subset_sizes(24, &InfinityConfig::default());
        assert_eq!((small[0], small[14]), (12, 24));
    }

    #[test]
    fn points_on_a_line_fit_exactly() {
        let x = [0.1, 0.2, 0.4];
        let y = [3.0 + 2.0 * 0.1, 3.0 + 2.0 * 0.2, 3.0 + 2.0 * 0.4];
        let (intercept, slope, r2) = least_squares_line(&x, &y);
        assert!((intercept - 3.0).abs() < 1e-12 && (slope - 2.0).abs() < 1e-12);
        assert!((r2 - 1.0).abs() < 1e-12);
    }
}
