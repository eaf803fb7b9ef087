//! Validation of the bootstrap (`llamagen_metrics::bootstrap`) on synthetic Gaussian features,
//! where as many independent sample sets as wanted can be drawn: the standard error the bootstrap
//! gives from one set must agree with the spread of the figure across independent sets, and the
//! 95% interval must cover the figure's expected value at that sample count.
//!
//! Populations: samples from `N(μ₁, diag(a))`, reference `N(μ₂, diag(b))` with `a` a decaying
//! spectrum `aᵢ = 1 / (1 + i/4)`, `b = 1.3 a` and `μ₁ − μ₂` of squared length 0.25, so the
//! population FID is `‖μ₁ − μ₂‖² + Σ (√aᵢ − √bᵢ)²` in closed form. FID is taken against the
//! reference's exact (population) statistics; precision and KID against one fixed draw of 1,000
//! reference rows. Run with `--nocapture` to see the measured ratios and counts (the README quotes
//! them).

use llamagen_metrics::bootstrap::{
    frechet_replicates, kid_replicates, mean_replicates, summarize, BootstrapConfig,
};
use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::kid::{kernel_inception_distance, KidConfig};
use llamagen_metrics::manifold::{manifold_contributions, ManifoldConfig};
use llamagen_metrics::stats::GaussianStats;
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The two populations of dimension `d`.
struct Populations {
    mu_samples: Array1<f64>,
    var_samples: Array1<f64>,
    mu_reference: Array1<f64>,
    var_reference: Array1<f64>,
}

impl Populations {
    fn new(d: usize) -> Self {
        let var_samples = Array1::from_shape_fn(d, |i| 1.0 / (1.0 + i as f64 / 4.0));
        let step = 0.5 / (d as f64).sqrt();
        Populations {
            mu_samples: Array1::from_shape_fn(d, |i| if i % 2 == 0 { step } else { -step }),
            var_reference: &var_samples * 1.3,
            var_samples,
            mu_reference: Array1::zeros(d),
        }
    }

    /// The Fréchet distance of the two populations, in closed form (commuting covariances).
    fn population_fid(&self) -> f64 {
        let mean = (&self.mu_samples - &self.mu_reference)
            .mapv(|v| v * v)
            .sum();
        let cov: f64 = self
            .var_samples
            .iter()
            .zip(&self.var_reference)
            .map(|(a, b)| (a.sqrt() - b.sqrt()).powi(2))
            .sum();
        mean + cov
    }

    fn reference_stats(&self) -> GaussianStats {
        GaussianStats::new(
            self.mu_reference.clone(),
            Array2::from_diag(&self.var_reference),
        )
        .unwrap()
    }

    fn draw(&self, rng: &mut ChaCha8Rng, n: usize, reference: bool) -> Array2<f64> {
        let (mu, var) = if reference {
            (&self.mu_reference, &self.var_reference)
        } else {
            (&self.mu_samples, &self.var_samples)
        };
        Array2::from_shape_fn((n, mu.len()), |(_, j)| mu[j] + var[j].sqrt() * normal(rng))
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

const DIMS: [usize; 2] = [16, 64];
const COUNTS: [usize; 2] = [500, 2000];
/// Independent sample sets for the empirical spread.
const SETS: usize = 60;
/// Sets whose bootstrap standard error is compared with it (each one on its own).
const BOOTSTRAPPED_SETS: usize = 8;

/// Asserts that every bootstrapped set's standard error is within a factor 1.5 of the empirical
/// spread, and prints the ratios.
fn check_ratios(metric: &str, d: usize, n: usize, empirical: f64, ses: &[f64]) {
    let ratios: Vec<f64> = ses.iter().map(|se| se / empirical).collect();
    let (mean_ratio, _) = mean_sd(&ratios);
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
    println!(
        "{metric}: d {d}, N {n}: spread over {SETS} sets {empirical:.5}, bootstrap SE / spread: \
         mean {mean_ratio:.3}, range {lo:.3}..{hi:.3} over {} sets",
        ses.len()
    );
    assert!(
        ratios.iter().all(|r| (1.0 / 1.5..=1.5).contains(r)),
        "{metric} d {d} N {n}: ratios {ratios:?}"
    );
}

#[test]
fn fid_standard_error_matches_the_spread_over_independent_sets() {
    let config = BootstrapConfig {
        resamples: 200,
        seed: 1,
    };
    for d in DIMS {
        let populations = Populations::new(d);
        let reference = populations.reference_stats();
        for n in COUNTS {
            let mut rng = ChaCha8Rng::seed_from_u64((d * 100_000 + n) as u64);
            let mut fids = Vec::new();
            let mut ses = Vec::new();
            for set in 0..SETS {
                let x = populations.draw(&mut rng, n, false);
                let stats = GaussianStats::from_features(x.view()).unwrap();
                let fid = frechet_distance(&stats, &reference).unwrap();
                fids.push(fid);
                if set < BOOTSTRAPPED_SETS {
                    let replicates =
                        frechet_replicates(x.view(), &stats, &reference, &config).unwrap();
                    ses.push(summarize(fid, &replicates).unwrap().se);
                }
            }
            let (_, spread) = mean_sd(&fids);
            check_ratios("FID", d, n, spread, &ses);
        }
    }
}

#[test]
fn fid_interval_covers_the_expected_fid_at_n() {
    // The interval is an interval for the expected FID at N samples: the population FID (closed
    // form) plus FID's finite-N bias, which is estimated here by the mean FID of 500 independent
    // sets (its Monte Carlo error is printed; it is small against the interval's half-width).
    let (d, n) = (16, 1000);
    let populations = Populations::new(d);
    let reference = populations.reference_stats();
    let mut rng = ChaCha8Rng::seed_from_u64(26);
    let independent: Vec<f64> = (0..500)
        .map(|_| {
            let x = populations.draw(&mut rng, n, false);
            frechet_distance(&GaussianStats::from_features(x.view()).unwrap(), &reference).unwrap()
        })
        .collect();
    let (expected_at_n, spread) = mean_sd(&independent);
    let population = populations.population_fid();
    let config = BootstrapConfig {
        resamples: 200,
        seed: 7,
    };
    let (mut covered, mut covered_population) = (0, 0);
    let mut widths = Vec::new();
    for _ in 0..100 {
        let x = populations.draw(&mut rng, n, false);
        let stats = GaussianStats::from_features(x.view()).unwrap();
        let fid = frechet_distance(&stats, &reference).unwrap();
        let replicates = frechet_replicates(x.view(), &stats, &reference, &config).unwrap();
        let u = summarize(fid, &replicates).unwrap();
        covered += usize::from(u.ci95.0 <= expected_at_n && expected_at_n <= u.ci95.1);
        covered_population += usize::from(u.ci95.0 <= population && population <= u.ci95.1);
        widths.push(u.ci95.1 - u.ci95.0);
    }
    let (width, _) = mean_sd(&widths);
    println!(
        "FID interval, d {d}, N {n}, 200 resamples: population FID {population:.5}, expected FID \
         at N {expected_at_n:.5} ± {:.5} (bias {:.5}), mean 95% width {width:.5}; covers the \
         expected FID at N in {covered}/100 trials, the population FID in \
         {covered_population}/100",
        spread / (independent.len() as f64).sqrt(),
        expected_at_n - population
    );
    assert!(covered >= 85, "{covered}/100");
}

#[test]
fn precision_standard_error_matches_the_spread_over_independent_sets() {
    let config = BootstrapConfig {
        resamples: 200,
        seed: 2,
    };
    let manifold = ManifoldConfig::default();
    for d in DIMS {
        let populations = Populations::new(d);
        let mut rng = ChaCha8Rng::seed_from_u64(d as u64);
        let reference = populations.draw(&mut rng, 1000, true);
        for n in COUNTS {
            let mut precisions = Vec::new();
            let mut ses = Vec::new();
            for set in 0..SETS {
                let x = populations.draw(&mut rng, n, false);
                let parts = manifold_contributions(reference.view(), x.view(), &manifold).unwrap();
                let precision = parts.metrics().precision;
                precisions.push(precision);
                if set < BOOTSTRAPPED_SETS {
                    let values: Vec<f64> = parts
                        .in_reference_ball
                        .iter()
                        .map(|&b| f64::from(u8::from(b)))
                        .collect();
                    let replicates = mean_replicates(&values, &config).unwrap();
                    ses.push(summarize(precision, &replicates).unwrap().se);
                }
            }
            let (_, spread) = mean_sd(&precisions);
            check_ratios("precision", d, n, spread, &ses);
        }
    }
}

#[test]
fn kid_standard_error_matches_the_spread_over_independent_sets() {
    let config = BootstrapConfig {
        resamples: 100,
        seed: 3,
    };
    let kid = KidConfig {
        subsets: 10,
        subset_size: 250,
        seed: 2020,
    };
    for d in DIMS {
        let populations = Populations::new(d);
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + d as u64);
        let reference = populations.draw(&mut rng, 1000, true);
        for n in COUNTS {
            let mut kids = Vec::new();
            let mut ses = Vec::new();
            for set in 0..SETS {
                let x = populations.draw(&mut rng, n, false);
                let value = kernel_inception_distance(reference.view(), x.view(), &kid)
                    .unwrap()
                    .mean;
                kids.push(value);
                if set < 4 {
                    let replicates =
                        kid_replicates(reference.view(), x.view(), &kid, &config).unwrap();
                    ses.push(summarize(value, &replicates).unwrap().se);
                }
            }
            let (_, spread) = mean_sd(&kids);
            check_ratios("KID", d, n, spread, &ses);
        }
    }
}
