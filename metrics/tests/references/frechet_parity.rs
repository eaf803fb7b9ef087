//! Live parity with pytorch-fid's `calculate_frechet_distance` (scipy `sqrtm`) on statistics of
//! features this test generates.

use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::stats::GaussianStats;
use llamagen_test_support as support;
use ndarray::Array2;
use ndarray_npy::write_npy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Non-negative, correlated features shaped like Inception pool activations.
fn features(rng: &mut ChaCha8Rng, n: usize, dim: usize, shift: f64) -> Array2<f64> {
    let mixing = Array2::from_shape_fn((dim, dim), |_| rng.random::<f64>() / dim as f64);
    let raw = Array2::from_shape_fn((n, dim), |_| rng.random::<f64>() * 2.0 + shift);
    raw.dot(&mixing).mapv(|v: f64| v.max(0.0))
}

fn pytorch_fid(a: &GaussianStats, b: &GaussianStats) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    write_npy(dir.path().join("mu1.npy"), &a.mu).unwrap();
    write_npy(dir.path().join("sigma1.npy"), &a.sigma).unwrap();
    write_npy(dir.path().join("mu2.npy"), &b.mu).unwrap();
    write_npy(dir.path().join("sigma2.npy"), &b.sigma).unwrap();
    let out = support::run_reference("oracles/pytorch_fid_frechet.py", &[dir.path()]);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    value["fid"].as_f64().unwrap()
}

#[test]
fn full_rank_statistics_match_pytorch_fid_to_1e6() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (dim, n1, n2, shift) in [(64, 500, 400, 0.3), (256, 1200, 900, 0.05)] {
        let a = GaussianStats::from_features(features(&mut rng, n1, dim, 0.0).view()).unwrap();
        let b = GaussianStats::from_features(features(&mut rng, n2, dim, shift).view()).unwrap();
        let ours = frechet_distance(&a, &b).unwrap();
        let reference = pytorch_fid(&a, &b);
        let rel = support::rel_diff(ours, reference);
        assert!(
            rel < 1e-6,
            "dim {dim}: ours {ours}, pytorch-fid {reference}, rel {rel:e}"
        );
    }
}

#[test]
fn rank_deficient_statistics_stay_finite_and_close() {
    // Fewer samples than dimensions: singular covariances. scipy's sqrtm is itself only
    // approximate here (pytorch-fid warns), so the tolerance is looser than for full rank.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let a = GaussianStats::from_features(features(&mut rng, 40, 64, 0.0).view()).unwrap();
    let b = GaussianStats::from_features(features(&mut rng, 50, 64, 0.2).view()).unwrap();
    let ours = frechet_distance(&a, &b).unwrap();
    let reference = pytorch_fid(&a, &b);
    assert!(ours.is_finite());
    let rel = support::rel_diff(ours, reference);
    assert!(
        rel < 1e-4,
        "ours {ours}, pytorch-fid {reference}, rel {rel:e}"
    );
}
