//! PSNR and SSIM against scikit-image 0.25.2, live: random u8 image sets are written as .npy and
//! `tests/python/oracles/skimage_psnr_ssim.py` computes the reference figures on them.

use std::path::PathBuf;

use llamagen_metrics::image_quality::{psnr, ssim, SsimMode};
use llamagen_test_support as support;
use ndarray::{Array4, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A set of originals and reconstructions to compare, with a name for failure messages.
struct Case {
    name: &'static str,
    originals: Array4<u8>,
    reconstructions: Array4<u8>,
}

/// Smooth-ish originals (a few random waves plus grain), so that windows have structure.
fn originals(rng: &mut ChaCha8Rng, n: usize, h: usize, w: usize, c: usize) -> Array4<u8> {
    let mut out = Array4::zeros((n, h, w, c));
    for mut img in out.axis_iter_mut(Axis(0)) {
        let waves: Vec<[f64; 4]> = (0..3)
            .map(|_| {
                [
                    rng.random_range(0.02..0.4),
                    rng.random_range(0.02..0.4),
                    rng.random_range(0.0..6.3),
                    rng.random_range(20.0..50.0),
                ]
            })
            .collect();
        for ((i, j, ch), v) in img.indexed_iter_mut() {
            let mut t = 128.0 + 10.0 * ch as f64;
            for [fy, fx, phase, amp] in &waves {
                t += amp * (fy * i as f64 + fx * j as f64 + phase + ch as f64).sin();
            }
            t += rng.random_range(-12.0..12.0);
            *v = t.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// `originals` plus uniform integer noise of up to `amp`, clipped to u8.
fn add_noise(rng: &mut ChaCha8Rng, originals: &Array4<u8>, amp: i32) -> Array4<u8> {
    originals.mapv(|v| (i32::from(v) + rng.random_range(-amp..=amp)).clamp(0, 255) as u8)
}

/// Uncorrelated uniform noise images (SSIM near 0).
fn noise(rng: &mut ChaCha8Rng, n: usize, h: usize, w: usize, c: usize) -> Array4<u8> {
    Array4::from_shape_simple_fn((n, h, w, c), || rng.random())
}

fn cases() -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(20240611);
    let mut cases = Vec::new();

    let o = originals(&mut rng, 6, 64, 64, 3);
    // Reconstructions of varying quality, one of them perfect (infinite PSNR).
    let mut r = o.clone();
    for (k, amp) in [(0, 3), (1, 10), (2, 25), (3, 60), (4, 120)] {
        let noisy = add_noise(
            &mut rng,
            &o.slice(ndarray::s![k..k + 1, .., .., ..]).to_owned(),
            amp,
        );
        r.slice_mut(ndarray::s![k..k + 1, .., .., ..])
            .assign(&noisy);
    }
    cases.push(Case {
        name: "64x64x3 noisy",
        originals: o,
        reconstructions: r,
    });

    // Originals with noise of up to `amp` added, as (name, n, h, w, c, amp). Two channels take
    // the path without a compile-time channel count; 11x11 is the smallest image the Gaussian
    // window accepts.
    for (name, n, h, w, c, amp) in [
        ("37x53x3 noisy", 3, 37, 53, 3, 20),
        ("256x256x3 noisy", 3, 256, 256, 3, 15),
        ("48x40x1 grayscale", 3, 48, 40, 1, 30),
        ("24x30x2 noisy", 2, 24, 30, 2, 20),
        ("11x11x3 noisy", 2, 11, 11, 3, 8),
    ] {
        let o = originals(&mut rng, n, h, w, c);
        let r = add_noise(&mut rng, &o, amp);
        cases.push(Case {
            name,
            originals: o,
            reconstructions: r,
        });
    }

    let o = noise(&mut rng, 3, 32, 32, 3);
    let r = noise(&mut rng, 3, 32, 32, 3);
    cases.push(Case {
        name: "32x32x3 uncorrelated",
        originals: o,
        reconstructions: r,
    });
    cases
}

/// Largest relative difference over one per-image list, with `None` (infinite) matching infinity.
fn max_rel_diff(ours: &[f64], reference: &serde_json::Value) -> f64 {
    let reference = reference.as_array().expect("reference list");
    assert_eq!(ours.len(), reference.len());
    ours.iter()
        .zip(reference)
        .map(|(&a, b)| match b.as_f64() {
            Some(b) => support::rel_diff(a, b),
            None => {
                assert!(a.is_infinite(), "reference is infinite, ours {a}");
                0.0
            }
        })
        .fold(0.0, f64::max)
}

#[test]
fn psnr_and_ssim_match_scikit_image() {
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    let mut paths: Vec<PathBuf> = Vec::new();
    for (k, case) in cases.iter().enumerate() {
        for (tag, data) in [("orig", &case.originals), ("recon", &case.reconstructions)] {
            let path = dir.path().join(format!("{k}_{tag}.npy"));
            ndarray_npy::write_npy(&path, data).unwrap();
            paths.push(path);
        }
    }
    let args: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    let out = support::run_reference("oracles/skimage_psnr_ssim.py", &args);
    let reference: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(reference.len(), cases.len());

    // float64 paths agree to rounding (largest seen: 1e-13, on near-zero SSIM); LlamaGen mode
    // repeats scikit-image's float32 arithmetic and agrees to the bit in practice.
    const TOL_F64: f64 = 1e-10;
    const TOL_LLAMAGEN: f64 = 1e-6;
    let mut failures = Vec::new();
    for (case, refs) in cases.iter().zip(&reference) {
        let (o, r) = (case.originals.view(), case.reconstructions.view());
        let p = psnr(o, r).unwrap();
        let mut report = vec![("psnr", max_rel_diff(&p.per_image, &refs["psnr"]))];
        for (key, mode) in [
            ("ssim_gaussian", SsimMode::Gaussian),
            ("ssim_uniform", SsimMode::Uniform),
            ("ssim_llamagen", SsimMode::LlamagenCompat),
        ] {
            let s = ssim(o, r, mode).unwrap();
            report.push((key, max_rel_diff(&s.per_image, &refs[key])));
        }
        let line: Vec<String> = report.iter().map(|(k, d)| format!("{k} {d:.1e}")).collect();
        eprintln!("{:>22}: {}", case.name, line.join(", "));
        for (key, diff) in report {
            let tol = if key == "ssim_llamagen" {
                TOL_LLAMAGEN
            } else {
                TOL_F64
            };
            if diff > tol {
                failures.push(format!(
                    "{} {key}: relative difference {diff:.2e}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn llamagen_mode_is_above_wang_ssim_on_noisy_images() {
    // data_range = 2.0 on [0, 1] data inflates C1 and C2, so LlamaGen's figure is higher than the
    // same window with the right constants.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let o = originals(&mut rng, 4, 64, 64, 3);
    let r = add_noise(&mut rng, &o, 40);
    let uniform = ssim(o.view(), r.view(), SsimMode::Uniform).unwrap();
    let llamagen = ssim(o.view(), r.view(), SsimMode::LlamagenCompat).unwrap();
    for (u, l) in uniform.per_image.iter().zip(&llamagen.per_image) {
        assert!(l > u, "{l} vs {u}");
    }
    let mean = llamagen.per_image.iter().sum::<f64>() / 4.0;
    assert!((llamagen.mean - mean).abs() < 1e-15);
}
