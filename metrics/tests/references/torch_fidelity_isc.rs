//! Inception Score in torch-fidelity's convention (`Splits::Equal`), live against torch-fidelity
//! 0.4.0's `isc_features_to_metric` (`tests/python/oracles/torch_fidelity_isc.py`): shuffled with
//! its default seed and another one, and unshuffled, on sample counts the splits divide and do not.

use std::path::Path;

use llamagen_metrics::inception_score::{inception_score, Splits, TORCH_FIDELITY_SEED};
use llamagen_test_support as support;
use ndarray::Array2;
use ndarray_npy::write_npy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// Logits whose rows differ in sharpness and favourite class, so that which rows share a split
/// changes the score.
fn logits(rng: &mut ChaCha8Rng, n: usize, classes: usize) -> Array2<f32> {
    let mut logits = Array2::from_shape_simple_fn((n, classes), || rng.random_range(-1.0f32..1.0));
    for (i, mut row) in logits.rows_mut().into_iter().enumerate() {
        let sharpness = 1.0 + 6.0 * (i as f32 / n as f32);
        row *= sharpness;
        row[(i * 7) % classes] += sharpness * 2.0;
    }
    logits
}

fn reference(dir: &Path, logits: &Array2<f32>, splits: usize, shuffle: Option<u32>) -> (f64, f64) {
    let path = dir.join("logits.npy");
    write_npy(&path, logits).unwrap();
    let args = [
        splits.to_string(),
        u8::from(shuffle.is_some()).to_string(),
        shuffle.unwrap_or(TORCH_FIDELITY_SEED).to_string(),
    ];
    let mut paths: Vec<&Path> = vec![&path];
    paths.extend(args.iter().map(Path::new));
    let out = support::run_reference("oracles/torch_fidelity_isc.py", &paths);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    (v["mean"].as_f64().unwrap(), v["std"].as_f64().unwrap())
}

#[test]
fn torch_fidelity_inception_score_parity() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0x6973_6373);
    for n in [1000, 1003] {
        let logits = logits(&mut rng, n, 1008);
        let mut means = Vec::new();
        for shuffle in [Some(TORCH_FIDELITY_SEED), Some(7), None] {
            let ours = inception_score(
                logits.view(),
                Splits::Equal {
                    splits: 10,
                    shuffle,
                },
            )
            .unwrap();
            let (mean, std) = reference(dir.path(), &logits, 10, shuffle);
            println!(
                "n {n} shuffle {shuffle:?}: ours {} ± {}, torch-fidelity {mean} ± {std}",
                ours.mean, ours.std
            );
            assert!(
                (ours.mean - mean).abs() <= 1e-10 * mean,
                "mean {} vs {mean}",
                ours.mean
            );
            assert!(
                (ours.std - std).abs() <= 1e-8 * std.max(1e-3),
                "std {} vs {std}",
                ours.std
            );
            means.push(ours.mean);
        }
        // The shuffle matters on these logits, so the parity above tests it.
        assert!((means[0] - means[2]).abs() > 1e-6 * means[2], "{means:?}");
        assert!((means[0] - means[1]).abs() > 1e-6 * means[1], "{means:?}");
    }
}
