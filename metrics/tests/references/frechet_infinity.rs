//! FID-infinity: the same subsets, distances and extrapolation as the reference algorithm run live
//! (seeded NumPy, pytorch-fid's distance), and on Gaussians with a known Fréchet distance an
//! extrapolated value far closer to it than the distance of the whole set.

use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::frechet_infinity::{frechet_distance_infinity, InfinityConfig};
use llamagen_metrics::stats::GaussianStats;
use llamagen_test_support as support;
use ndarray::{Array1, Array2};
use ndarray_npy::write_npy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Standard normal draws (Box–Muller).
fn normals(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let v: f64 = rng.random();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    })
}

#[test]
fn matches_the_reference_algorithm_run_live() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let features = normals(&mut rng, 3000, 24).mapv(|v| v * 0.7 + 0.1);
    let reference = GaussianStats::from_features(normals(&mut rng, 4000, 24).view()).unwrap();
    let config = InfinityConfig {
        points: 15,
        min_size: 500,
        seed: 7,
    };
    let ours = frechet_distance_infinity(features.view(), &reference, &config).unwrap();

    let dir = tempfile::tempdir().unwrap();
    write_npy(dir.path().join("features.npy"), &features).unwrap();
    write_npy(dir.path().join("mu.npy"), &reference.mu).unwrap();
    write_npy(dir.path().join("sigma.npy"), &reference.sigma).unwrap();
    let out = support::run_reference(
        "oracles/fid_infinity.py",
        &[dir.path().to_str().unwrap(), "7", "500", "15"],
    );
    let expected: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sizes: Vec<usize> = expected["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(ours.sizes, sizes);
    for (k, (ours, theirs)) in ours
        .distances
        .iter()
        .zip(expected["fids"].as_array().unwrap())
        .enumerate()
    {
        let theirs = theirs.as_f64().unwrap();
        let rel = support::rel_diff(*ours, theirs);
        assert!(
            rel < 1e-6,
            "size {}: ours {ours}, reference {theirs}",
            sizes[k]
        );
    }
    let theirs = expected["fid_infinity"].as_f64().unwrap();
    let rel = support::rel_diff(ours.value, theirs);
    assert!(
        rel < 1e-6,
        "FID-infinity: ours {}, reference {theirs} ({rel:e})",
        ours.value
    );
    assert!(ours.r_squared > 0.0 && ours.r_squared <= 1.0);
}

#[test]
fn removes_the_sample_size_bias_on_gaussians_with_a_known_distance() {
    // Samples from N(0, I); the reference is exactly N(m, diag(s²)), whose Fréchet distance to
    // N(0, I) is |m|² + Σ (1 + s_i² - 2 s_i).
    let dim = 128;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let m = Array1::from_shape_fn(dim, |i| 0.02 * ((i % 7) as f64 - 3.0));
    let s = Array1::from_shape_fn(dim, |i| 0.8 + 0.4 * (i as f64 / dim as f64));
    let analytic: f64 = m.dot(&m) + s.iter().map(|v| (1.0 - v).powi(2)).sum::<f64>();
    let reference = GaussianStats::new(m, Array2::from_diag(&s.mapv(|v| v * v))).unwrap();
    let features = normals(&mut rng, 20_000, dim).mapv(|v| v as f32);
    let whole = GaussianStats::from_features_f32(features.view()).unwrap();
    let biased = frechet_distance(&whole, &reference).unwrap();
    let result =
        frechet_distance_infinity(features.view(), &reference, &InfinityConfig::default()).unwrap();
    let (error_inf, error_whole) = ((result.value - analytic).abs(), (biased - analytic).abs());
    eprintln!(
        "analytic {analytic:.5}, FD of all 20,000 {biased:.5}, extrapolated {:.5} (R² {:.4})",
        result.value, result.r_squared
    );
    assert!(
        5.0 * error_inf <= error_whole,
        "extrapolated {} is not 5x closer to {analytic} than {biased}",
        result.value
    );
}
