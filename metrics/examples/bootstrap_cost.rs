//! Times the Fréchet bootstrap against the statistics and Fréchet distance it resamples, at the
//! width of Inception features: `cargo run --release -p llamagen-metrics --example
//! bootstrap_cost -- [ROWS] [DIM] [RESAMPLES]` (default 10,000 x 2048, 4 resamples). The cost of
//! one resample is a rank-k update over the ~63% of rows drawn plus one Fréchet distance, so it
//! extrapolates linearly in the row count plus a constant.

use std::time::Instant;

use llamagen_metrics::bootstrap::{frechet_replicates, BootstrapConfig};
use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::stats::GaussianStats;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let n = args.first().copied().unwrap_or(10_000);
    let d = args.get(1).copied().unwrap_or(2048);
    let resamples = args.get(2).copied().unwrap_or(4);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = Array2::from_shape_fn((n, d), |_| rng.random::<f32>());
    let y = Array2::from_shape_fn((n, d), |_| rng.random::<f32>() * 1.1);
    let t = Instant::now();
    let stats = GaussianStats::from_features_f32(x.view()).unwrap();
    let t_stats = t.elapsed().as_secs_f64();
    let reference = GaussianStats::from_features_f32(y.view()).unwrap();
    let t = Instant::now();
    let fid = frechet_distance(&stats, &reference).unwrap();
    let t_fd = t.elapsed().as_secs_f64();
    let config = BootstrapConfig { resamples, seed: 0 };
    let t = Instant::now();
    let replicates = frechet_replicates(x.view(), &stats, &reference, &config).unwrap();
    let t_boot = t.elapsed().as_secs_f64();
    println!(
        "{n} x {d}: statistics {t_stats:.2} s, Fréchet distance {t_fd:.2} s (FID {fid:.4}); \
         {resamples} resamples {t_boot:.2} s = {:.2} s per resample (first {:.4})",
        t_boot / resamples as f64,
        replicates[0]
    );
}
