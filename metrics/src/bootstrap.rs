//! Seeded bootstrap uncertainty of the metrics: a standard error and a 95% interval of each figure
//! from resampling, with replacement, the rows it was computed from.
//!
//! A resample is a vector of integer weights on the rows (how often each row was drawn; the weights
//! sum to the row count), drawn by the crate's NumPy-compatible MT19937 ([`LegacyRandomState`]):
//! resample `b` of seed `s` has its own generator, so the result does not depend on the thread
//! count or on the order in which resamples run.
//!
//! - Figures that are means of per-row contributions (precision and density over the samples,
//!   recall and coverage over the reference rows, per-image PSNR and SSIM) are bootstrapped on
//!   those contributions: a replicate is a weighted mean, nothing is recomputed
//!   ([`mean_replicates`]).
//! - The Fréchet distance (FID, sFID, FD_DINOv2, rFID) against fixed reference statistics
//!   ([`frechet_replicates`]): the features are centred on their mean once; a resample's mean is
//!   `x̄ + δ` with `δ = Σ wᵢ (xᵢ − x̄) / N` and its covariance
//!   `(Σ wᵢ (xᵢ − x̄)(xᵢ − x̄)ᵀ − N δδᵀ) / (N − 1)`, one rank-k update (`dsyrk`) of the drawn rows
//!   scaled by `√wᵢ` (rows drawn zero times, about 37%, are skipped), then the crate's Fréchet
//!   distance (one Cholesky, two triangular products, one eigenvalue solve).
//! - KID ([`kid_replicates`]) and the Inception Score ([`inception_score_replicates`]) are
//!   recomputed on the resampled rows (KID's subsets are then drawn from the resample).
//!
//! [`summarize`] turns the replicates into an [`Uncertainty`]: the standard error is their sample
//! standard deviation; the 95% interval is their 2.5% and 97.5% percentiles shifted by the
//! bootstrap's bias estimate (the replicates' mean minus the figure), so it is centred where the
//! figure is. It is an interval for the figure's expected value at this sample count against this
//! reference: biased estimators such as FID (whose expectation at N samples exceeds the
//! population distance by roughly a constant over N) keep their bias, which is the same for every
//! run of the same N, and the interval covers the sampling noise of these N samples only.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{ensure_finite_rows, ensure_min_samples, ensure_same_dim, MetricsError, Result};
use crate::frechet::frechet_distance;
use crate::inception_score::{inception_score, Splits};
use crate::kid::{kernel_inception_distance, KidConfig, LegacyRandomState};
use crate::linalg::{gather_rows_f64, symmetric_eigen, syrk_upper_transposed, Element, SerialBlas};
use crate::stats::GaussianStats;

/// Resamples when none are asked for.
pub const DEFAULT_RESAMPLES: usize = 100;
/// Seed when none is given.
pub const DEFAULT_SEED: u32 = 0;

/// Rows scaled and fed to one rank-k update of a Fréchet resample.
const BLOCK_ROWS: usize = 512;

/// How many resamples, from which seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootstrapConfig {
    /// Number of resamples (at least 2).
    pub resamples: usize,
    pub seed: u32,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            resamples: DEFAULT_RESAMPLES,
            seed: DEFAULT_SEED,
        }
    }
}

impl BootstrapConfig {
    fn validate(&self) -> Result<()> {
        if self.resamples < 2 {
            return Err(MetricsError::InvalidArgument(format!(
                "bootstrap: needs at least 2 resamples, got {}",
                self.resamples
            )));
        }
        Ok(())
    }
}

/// A figure's bootstrap uncertainty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Uncertainty {
    /// The figure itself (the interval is centred on it).
    pub estimate: f64,
    /// Standard error: the sample standard deviation of the replicates.
    pub se: f64,
    /// 95% interval: the replicates' 2.5% and 97.5% percentiles minus [`Self::bias`].
    pub ci95: (f64, f64),
    /// The bootstrap's bias estimate: the replicates' mean minus the figure.
    pub bias: f64,
    /// Number of replicates.
    pub resamples: usize,
}

/// The uncertainty of `estimate` from its bootstrap `replicates`.
pub fn summarize(estimate: f64, replicates: &[f64]) -> Result<Uncertainty> {
    ensure_min_samples("bootstrap replicates", 2, replicates.len())?;
    if !estimate.is_finite() || replicates.iter().any(|v| !v.is_finite()) {
        return Err(MetricsError::NonFinite {
            what: "bootstrap replicates",
            rows: replicates.iter().filter(|v| !v.is_finite()).count().max(1),
        });
    }
    let b = replicates.len() as f64;
    let mean = replicates.iter().sum::<f64>() / b;
    let variance = replicates.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (b - 1.0);
    let mut sorted = replicates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let bias = mean - estimate;
    Ok(Uncertainty {
        estimate,
        se: variance.sqrt(),
        ci95: (
            percentile(&sorted, 0.025) - bias,
            percentile(&sorted, 0.975) - bias,
        ),
        bias,
        resamples: replicates.len(),
    })
}

/// NumPy's default (linear) percentile of ascending `sorted` at fraction `q`.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let low = position.floor() as usize;
    let high = (low + 1).min(sorted.len() - 1);
    let t = position - low as f64;
    sorted[low] + t * (sorted[high] - sorted[low])
}

/// The generator of resample `index` of `seed`: MT19937 seeded from both through SplitMix64.
fn resample_rng(seed: u32, index: usize) -> LegacyRandomState {
    let mut z = (u64::from(seed) << 32 ^ index as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    LegacyRandomState::new((z >> 32) as u32)
}

/// The rows of resample `index` of `seed` over `n` rows, in drawing order (n uniform draws).
pub fn resample_rows(n: usize, seed: u32, index: usize) -> Vec<usize> {
    let mut rng = resample_rng(seed, index);
    let max = n.saturating_sub(1) as u64;
    (0..n).map(|_| rng.interval(max) as usize).collect()
}

/// How often each of `n` rows is drawn in resample `index` of `seed` (the weights sum to `n`).
pub fn resample_weights(n: usize, seed: u32, index: usize) -> Vec<u32> {
    let mut weights = vec![0u32; n];
    for row in resample_rows(n, seed, index) {
        weights[row] += 1;
    }
    weights
}

/// Bootstrap replicates of the mean of `values` (one contribution per row).
pub fn mean_replicates(values: &[f64], config: &BootstrapConfig) -> Result<Vec<f64>> {
    config.validate()?;
    ensure_min_samples("bootstrap of a mean", 1, values.len())?;
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(MetricsError::NonFinite {
            what: "bootstrap of a mean",
            rows: bad,
        });
    }
    let n = values.len() as f64;
    Ok((0..config.resamples)
        .into_par_iter()
        .map(|b| {
            resample_weights(values.len(), config.seed, b)
                .iter()
                .zip(values)
                .map(|(&w, &v)| f64::from(w) * v)
                .sum::<f64>()
                / n
        })
        .collect())
}

/// The uncertainty of the mean of `values` (one contribution per row), centred on `estimate`
/// (the figure as its metric computed it).
pub fn mean_uncertainty(
    values: &[f64],
    estimate: f64,
    config: &BootstrapConfig,
) -> Result<Uncertainty> {
    summarize(estimate, &mean_replicates(values, config)?)
}

/// Bootstrap replicates of the Fréchet distance between the statistics of `samples` (rows are
/// feature vectors; `sample_stats` their mean and covariance, as the metric computed them) and
/// fixed `reference` statistics, resampling the sample rows.
pub fn frechet_replicates<T: Element>(
    samples: ArrayView2<'_, T>,
    sample_stats: &GaussianStats,
    reference: &GaussianStats,
    config: &BootstrapConfig,
) -> Result<Vec<f64>> {
    config.validate()?;
    let (n, d) = samples.dim();
    ensure_min_samples("Fréchet bootstrap (samples)", 2, n)?;
    ensure_same_dim("Fréchet bootstrap", d, sample_stats.dim())?;
    ensure_same_dim("Fréchet bootstrap", d, reference.dim())?;
    if let Some(count) = sample_stats.count {
        if count != n {
            return Err(MetricsError::InvalidArgument(format!(
                "Fréchet bootstrap: statistics of {count} samples given with {n} feature rows"
            )));
        }
    }
    ensure_finite_rows("Fréchet bootstrap (samples)", samples)?;
    let mean = &sample_stats.mu;
    let _serial = SerialBlas::enter();
    (0..config.resamples)
        .into_par_iter()
        .map(|b| {
            let weights = resample_weights(n, config.seed, b);
            if weights.iter().filter(|&&w| w > 0).count() < d {
                resampled_distance_low_rank(samples, mean, &weights, reference)
            } else {
                frechet_distance(&resampled_stats(samples, mean, &weights)?, reference)
            }
        })
        .collect()
}

/// The Fréchet distance of a resample that draws fewer distinct rows `m` than dimensions, from
/// the `m x m` side: its covariance is `ZᵀZ / (N − 1)` with `Z` the drawn rows centred on the
/// resample's mean and scaled by `√wᵢ`, so the non-zero eigenvalues of `Σ* Σ₂` are those of
/// `Z Σ₂ Zᵀ / (N − 1)` and `tr Σ* = ‖Z‖² / (N − 1)`: two products and an `m x m` eigenvalue
/// solve instead of `d x d` ones (the same value up to rounding).
fn resampled_distance_low_rank<T: Element>(
    samples: ArrayView2<'_, T>,
    mean: &Array1<f64>,
    weights: &[u32],
    reference: &GaussianStats,
) -> Result<f64> {
    let n = samples.nrows() as f64;
    let drawn: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    let mut z = gather_rows_f64(samples, &drawn);
    let mut shift = Array1::<f64>::zeros(z.ncols());
    for (row, &i) in z.axis_iter(Axis(0)).zip(&drawn) {
        shift.scaled_add(f64::from(weights[i]), &(&row - mean));
    }
    shift /= n;
    let centre = mean + &shift;
    for (mut row, &i) in z.axis_iter_mut(Axis(0)).zip(&drawn) {
        row -= &centre;
        row *= f64::from(weights[i]).sqrt();
    }
    let product = z.dot(&reference.sigma).dot(&z.t());
    let symmetric = (&product + &product.t()) / 2.0;
    let (eigenvalues, _) = symmetric_eigen(&symmetric, false)?;
    let trace_sqrt = eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).sum::<f64>() / (n - 1.0).sqrt();
    let trace = z.iter().map(|v| v * v).sum::<f64>() / (n - 1.0);
    let diff = &centre - &reference.mu;
    Ok(diff.dot(&diff) + trace + reference.sigma.diag().sum() - 2.0 * trace_sqrt)
}

/// Mean and covariance of `samples` weighted by `weights` (integers summing to the row count),
/// from the rows centred on `mean`.
fn resampled_stats<T: Element>(
    samples: ArrayView2<'_, T>,
    mean: &Array1<f64>,
    weights: &[u32],
) -> Result<GaussianStats> {
    let (n, d) = samples.dim();
    let drawn: Vec<usize> = (0..n).filter(|&i| weights[i] > 0).collect();
    let mut outer = Array2::<f64>::zeros((d, d));
    let mut shift = Array1::<f64>::zeros(d);
    for rows in drawn.chunks(BLOCK_ROWS) {
        let mut block = gather_rows_f64(samples, rows);
        for (mut row, &i) in block.axis_iter_mut(Axis(0)).zip(rows) {
            let w = f64::from(weights[i]);
            row -= mean;
            shift.scaled_add(w, &row);
            row *= w.sqrt();
        }
        syrk_upper_transposed(block.view(), &mut outer)?;
    }
    let nf = n as f64;
    shift /= nf;
    let mut sigma = outer;
    for i in 0..d {
        for j in i..d {
            let v = (sigma[[i, j]] - nf * shift[i] * shift[j]) / (nf - 1.0);
            sigma[[i, j]] = v;
            sigma[[j, i]] = v;
        }
    }
    Ok(GaussianStats {
        mu: mean + &shift,
        sigma,
        count: Some(n),
    })
}

/// Bootstrap replicates of KID's mean, resampling the sample rows (the reference fixed); each
/// replicate draws `kid`'s subsets from the resampled rows with `kid`'s seed.
pub fn kid_replicates<T: Element>(
    reference: ArrayView2<'_, T>,
    samples: ArrayView2<'_, T>,
    kid: &KidConfig,
    config: &BootstrapConfig,
) -> Result<Vec<f64>> {
    config.validate()?;
    ensure_min_samples("KID bootstrap (samples)", 2, samples.nrows())?;
    let reference = gather_rows_f64(reference, &(0..reference.nrows()).collect::<Vec<_>>());
    (0..config.resamples)
        .map(|b| {
            let rows = resample_rows(samples.nrows(), config.seed, b);
            let resampled = gather_rows_f64(samples, &rows);
            Ok(kernel_inception_distance(reference.view(), resampled.view(), kid)?.mean)
        })
        .collect()
}

/// Bootstrap replicates of the Inception Score's mean, resampling the rows of `logits` (the
/// resampled rows, in drawing order, are split as `splits` says).
pub fn inception_score_replicates(
    logits: ArrayView2<'_, f32>,
    splits: Splits,
    config: &BootstrapConfig,
) -> Result<Vec<f64>> {
    config.validate()?;
    ensure_min_samples("Inception Score bootstrap", 1, logits.nrows())?;
    ensure_finite_rows("Inception Score bootstrap", logits)?;
    (0..config.resamples)
        .map(|b| {
            let rows = resample_rows(logits.nrows(), config.seed, b);
            let resampled = logits.select(Axis(0), &rows);
            Ok(inception_score(resampled.view(), splits)?.mean)
        })
        .collect()
}

/// The weighted rows of a resample, for tests: rows drawn `w` times repeated `w` times.
#[cfg(test)]
fn expanded(samples: ArrayView2<'_, f64>, weights: &[u32]) -> Array2<f64> {
    let rows: Vec<usize> = weights
        .iter()
        .enumerate()
        .flat_map(|(i, &w)| std::iter::repeat_n(i, w as usize))
        .collect();
    samples.select(Axis(0), &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn grid(rows: usize, cols: usize) -> Array2<f64> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            (((i * 7 + j * 13) % 17) as f64 / 17.0).powi((j % 3 + 1) as i32)
                + 0.1 * i as f64 / rows as f64
        })
    }

    #[test]
    fn weights_are_draws_and_deterministic() {
        let w = resample_weights(1000, 3, 5);
        assert_eq!(w.iter().map(|&v| v as usize).sum::<usize>(), 1000);
        assert_eq!(w, resample_weights(1000, 3, 5));
        assert_ne!(w, resample_weights(1000, 3, 6));
        assert_ne!(w, resample_weights(1000, 4, 5));
        // About 1/e of the rows are not drawn.
        let zeros = w.iter().filter(|&&v| v == 0).count();
        assert!((330..410).contains(&zeros), "{zeros}");
    }

    #[test]
    fn resampled_statistics_equal_the_statistics_of_the_repeated_rows() {
        let x = grid(700, 5);
        let stats = GaussianStats::from_features(x.view()).unwrap();
        let weights = resample_weights(700, 1, 0);
        let fast = resampled_stats(x.view(), &stats.mu, &weights).unwrap();
        let direct = GaussianStats::from_features(expanded(x.view(), &weights).view()).unwrap();
        for (a, b) in fast.mu.iter().zip(&direct.mu) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        for (a, b) in fast.sigma.iter().zip(&direct.sigma) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        let x32 = x.mapv(|v| v as f32);
        let stats32 = GaussianStats::from_features_f32(x32.view()).unwrap();
        let reference =
            GaussianStats::new(array![0.1, 0.2, 0.0, 0.3, 0.1], Array2::eye(5)).unwrap();
        let config = BootstrapConfig {
            resamples: 4,
            seed: 1,
        };
        let replicates = frechet_replicates(x32.view(), &stats32, &reference, &config).unwrap();
        let expected = frechet_distance(
            &resampled_stats(x32.view(), &stats32.mu, &weights).unwrap(),
            &reference,
        )
        .unwrap();
        // (Outside the parallel region BLAS may round differently in the last bit.)
        assert!(
            (replicates[0] - expected).abs() < 1e-12 * expected,
            "{replicates:?} {expected}"
        );
        assert_eq!(replicates.len(), 4);
    }

    #[test]
    fn low_rank_resamples_equal_the_distance_of_the_repeated_rows() {
        let x = grid(9, 12);
        let stats = GaussianStats::from_features(x.view()).unwrap();
        let reference =
            GaussianStats::from_features(grid(30, 12).mapv(|v| v * 0.8).view()).unwrap();
        for b in 0..3 {
            let weights = resample_weights(9, 5, b);
            let fast =
                resampled_distance_low_rank(x.view(), &stats.mu, &weights, &reference).unwrap();
            let direct = frechet_distance(
                &GaussianStats::from_features(expanded(x.view(), &weights).view()).unwrap(),
                &reference,
            )
            .unwrap();
            assert!(
                (fast - direct).abs() < 1e-7 * direct.max(1.0),
                "{fast} vs {direct}"
            );
            let full = frechet_distance(
                &resampled_stats(x.view(), &stats.mu, &weights).unwrap(),
                &reference,
            )
            .unwrap();
            assert!(
                (fast - full).abs() < 1e-7 * full.max(1.0),
                "{fast} vs {full}"
            );
        }
    }

    #[test]
    fn summary_of_known_replicates() {
        let replicates: Vec<f64> = (0..=100).map(f64::from).collect();
        let u = summarize(49.0, &replicates).unwrap();
        assert_eq!(u.bias, 1.0);
        assert!((u.ci95.0 - (2.5 - 1.0)).abs() < 1e-12);
        assert!((u.ci95.1 - (97.5 - 1.0)).abs() < 1e-12);
        let var = replicates.iter().map(|v| (v - 50.0).powi(2)).sum::<f64>() / 100.0;
        assert!((u.se - var.sqrt()).abs() < 1e-12);
        assert!(summarize(1.0, &[1.0]).is_err());
        assert!(summarize(1.0, &[1.0, f64::NAN]).is_err());
    }

    #[test]
    fn mean_replicates_match_weighted_means() {
        let values: Vec<f64> = (0..50).map(|i| f64::from(i % 7)).collect();
        let config = BootstrapConfig {
            resamples: 3,
            seed: 9,
        };
        let got = mean_replicates(&values, &config).unwrap();
        let rows = resample_rows(50, 9, 2);
        let expected = rows.iter().map(|&r| values[r]).sum::<f64>() / 50.0;
        assert!((got[2] - expected).abs() < 1e-12);
        assert!(mean_replicates(
            &values,
            &BootstrapConfig {
                resamples: 1,
                seed: 0
            }
        )
        .is_err());
        assert!(mean_replicates(&[], &config).is_err());
        assert!(mean_replicates(&[f64::INFINITY], &config).is_err());
    }

    #[test]
    fn kid_and_inception_score_replicates_score_the_resampled_rows() {
        let logits = Array2::from_shape_fn((30, 4), |(i, j)| ((i * 3 + j * 5) % 7) as f32 * 0.5);
        let splits = Splits::Adm { split_size: 10 };
        let config = BootstrapConfig {
            resamples: 3,
            seed: 4,
        };
        let got = inception_score_replicates(logits.view(), splits, &config).unwrap();
        let rows = resample_rows(30, 4, 1);
        let expected = inception_score(logits.select(Axis(0), &rows).view(), splits)
            .unwrap()
            .mean;
        assert_eq!(got[1], expected);

        let (reference, samples) = (grid(40, 3), grid(30, 3).mapv(|v| v * 1.2));
        let kid = KidConfig {
            subsets: 4,
            subset_size: 10,
            seed: 1,
        };
        let got = kid_replicates(reference.view(), samples.view(), &kid, &config).unwrap();
        let expected = kernel_inception_distance(
            reference.view(),
            samples.select(Axis(0), &resample_rows(30, 4, 2)).view(),
            &kid,
        )
        .unwrap()
        .mean;
        assert!((got[2] - expected).abs() <= 1e-12 * expected.abs().max(1.0));
    }

    #[test]
    fn bad_input_is_an_error() {
        let x = grid(10, 3);
        let stats = GaussianStats::from_features(x.view()).unwrap();
        let other = GaussianStats::new(array![0.0, 0.0], Array2::eye(2)).unwrap();
        let config = BootstrapConfig::default();
        assert!(matches!(
            frechet_replicates(x.view(), &stats, &other, &config),
            Err(MetricsError::DimensionMismatch { .. })
        ));
        let short = grid(9, 3);
        assert!(frechet_replicates(short.view(), &stats, &stats, &config).is_err());
    }
}
