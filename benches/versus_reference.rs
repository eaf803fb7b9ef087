//! Our metrics against the reference implementations on the same inputs, in one run, reporting
//! speed ratios (machines here are noisy, so only same-run ratios mean anything).
//!
//! Run with `./x bench --bench versus_reference` (add `-- NAME` for one comparison).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use llamagen_eval::models::inception::{self, Resize};
use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::image_quality::{ssim, SsimMode};
use llamagen_metrics::stats::GaussianStats;
use ndarray::{Array2, Array4};
use ndarray_npy::write_npy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A reference script's JSON output.
fn run_reference(script: &str, args: &[String]) -> serde_json::Value {
    serde_json::from_str(&common::run_reference(script, args)).expect("reference prints JSON")
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

fn ssim_vs_scikit_image() {
    let mut rng = ChaCha8Rng::seed_from_u64(256);
    let originals = Array4::from_shape_fn((200, 256, 256, 3), |(i, y, x, c)| {
        ((x + 2 * y + 7 * i + 50 * c) % 256) as u8
    });
    let reconstructions =
        originals.mapv(|v| (i32::from(v) + rng.random_range(-12..=12)).clamp(0, 255) as u8);
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (
        dir.path().join("originals.npy"),
        dir.path().join("reconstructions.npy"),
    );
    write_npy(&a, &originals).expect("write");
    write_npy(&b, &reconstructions).expect("write");
    let repeats = 3;
    let mut ours = 0.0;
    let our_seconds = median_seconds(repeats, || {
        ours = ssim(originals.view(), reconstructions.view(), SsimMode::Gaussian)
            .expect("ssim")
            .mean;
    });
    let reference = run_reference(
        "bench_skimage_ssim.py",
        &[
            a.display().to_string(),
            b.display().to_string(),
            repeats.to_string(),
        ],
    );
    let ref_seconds = reference["seconds"].as_f64().expect("seconds");
    println!(
        "ssim 200 x 256x256x3: ours {our_seconds:.3} s, scikit-image {ref_seconds:.3} s, ratio {:.1}x; \
         mean SSIM {ours:.9} vs {:.9}",
        ref_seconds / our_seconds,
        reference["mean_ssim"].as_f64().expect("mean_ssim")
    );
}

fn inception_vs_pytorch_fid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = common::random_inception_weights();
    let images = Array4::from_shape_fn((64, 256, 256, 3), |(i, y, x, c)| {
        ((x * 3 + y + 11 * i + 40 * c) % 256) as u8
    });
    let images_path = dir.path().join("images.npy");
    write_npy(&images_path, &images).expect("write");
    let (_vs, model) = inception::load(&weights, tch::Device::Cpu).expect("weights");
    let batch = 16;
    let repeats = 2;
    let our_seconds = median_seconds(repeats, || {
        for start in (0..64).step_by(batch) {
            let chunk = images
                .slice(ndarray::s![start..start + batch, .., .., ..])
                .to_owned();
            let data: Vec<u8> = chunk.iter().copied().collect();
            let tensor = tch::Tensor::from_slice(&data)
                .view([batch as i64, 256, 256, 3])
                .permute([0, 3, 1, 2]);
            let _ = tch::no_grad(|| model.features(&tensor, Resize::PytorchFid));
        }
    });
    let reference = run_reference(
        "bench_pytorch_fid_features.py",
        &[
            weights.display().to_string(),
            images_path.display().to_string(),
            batch.to_string(),
            repeats.to_string(),
        ],
    );
    let ref_seconds = reference["seconds"].as_f64().expect("seconds");
    println!(
        "inception features, 64 images 256x256, batch {batch}, CPU: ours {:.1} img/s, pytorch-fid {:.1} img/s, ratio {:.2}x",
        64.0 / our_seconds,
        64.0 / ref_seconds,
        ref_seconds / our_seconds
    );
}

fn main() {
    // `cargo bench --bench versus_reference -- NAME` runs only the comparisons whose name contains NAME.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let benches: [(&str, fn()); 3] = [
        ("frechet", frechet_vs_pytorch_fid),
        ("ssim", ssim_vs_scikit_image),
        ("inception", inception_vs_pytorch_fid),
    ];
    for (name, bench) in benches {
        if name.contains(&filter) {
            bench();
        }
    }
}
