//! Our metrics against the reference implementations on the same inputs, in one run, reporting
//! speed ratios (machines here are noisy, so only same-run ratios mean anything).
//!
//! Run with `cargo bench --bench versus_reference` inside the project venv (`./x bench`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::stats::GaussianStats;
use ndarray::Array2;
use ndarray_npy::write_npy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn python() -> PathBuf {
    std::env::var_os("LLAMAGEN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

fn run_reference(script: &str, args: &[String]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/parity")
        .join(script);
    let output = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        output.status.success(),
        "{} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("reference prints JSON")
}

fn median_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn random_stats(rng: &mut ChaCha8Rng, n: usize, dim: usize, shift: f64) -> GaussianStats {
    let raw = Array2::from_shape_fn((n, dim), |_| rng.random::<f64>() + shift);
    let mixing = Array2::from_shape_fn((dim, dim), |_| rng.random::<f64>() / dim as f64);
    GaussianStats::from_features(raw.dot(&mixing).mapv(|v: f64| v.max(0.0)).view()).expect("stats")
}

fn frechet_vs_pytorch_fid() {
    let dim = 2048;
    let mut rng = ChaCha8Rng::seed_from_u64(2048);
    let a = random_stats(&mut rng, 4096, dim, 0.0);
    let b = random_stats(&mut rng, 4096, dim, 0.1);
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, value) in [("mu1", &a.mu), ("mu2", &b.mu)] {
        write_npy(dir.path().join(format!("{name}.npy")), value).expect("write");
    }
    for (name, value) in [("sigma1", &a.sigma), ("sigma2", &b.sigma)] {
        write_npy(dir.path().join(format!("{name}.npy")), value).expect("write");
    }
    let repeats = 3;
    let mut ours = 0.0;
    let our_seconds = median_seconds(repeats, || ours = frechet_distance(&a, &b).expect("fid"));
    let reference = run_reference(
        "bench_pytorch_fid.py",
        &[dir.path().display().to_string(), repeats.to_string()],
    );
    let ref_seconds = reference["seconds"].as_f64().expect("seconds");
    let ref_fid = reference["fid"].as_f64().expect("fid");
    println!(
        "frechet_distance 2048-d: ours {our_seconds:.3} s, pytorch-fid {ref_seconds:.3} s, \
         ratio {:.1}x; values {ours:.9} vs {ref_fid:.9} (rel diff {:.1e})",
        ref_seconds / our_seconds,
        (ours - ref_fid).abs() / ref_fid.abs()
    );
}

fn main() {
    frechet_vs_pytorch_fid();
}
