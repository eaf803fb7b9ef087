//! End to end: `llamagen-eval recon`. Scoring reconstructions made elsewhere (`--recon-batch`)
//! equals scikit-image's PSNR/SSIM and our own `fid` of the two sets; an interrupted run resumed
//! with `--resume` gives the same figures as an uninterrupted one; the golden tokenizer on the
//! golden images gives the codebook usage and PSNR the metrics crate computes on its outputs; bad
//! inputs fail with a clear message and leave nothing behind.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::path::Path;

use llamagen_metrics::codebook::codebook_usage;
use llamagen_metrics::image_quality;
use llamagen_test_support as support;
use ndarray::Array4;
use ndarray_npy::{NpzReader, NpzWriter, WriteNpyExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tch::Tensor;

use crate::harness::{
    all_cores, cli, metrics_json, scratch_with_random_inception, Run, ScratchDir,
};

fn write_images(path: &Path, images: &Array4<u8>) {
    let mut npz = NpzWriter::new(File::create(path).unwrap());
    npz.add_array("arr_0", images).unwrap();
    npz.finish().unwrap();
}

fn read_images(path: &Path) -> Array4<u8> {
    let mut npz = NpzReader::new(File::open(path).unwrap()).unwrap();
    npz.by_name("arr_0.npy").unwrap()
}

fn metric(json: &Value, name: &str) -> f64 {
    json["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no `{name}` in {json}"))
}

fn mean(values: &[Value]) -> f64 {
    let finite: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
    finite.iter().sum::<f64>() / finite.len() as f64
}

#[test]
fn recon_batch_matches_skimage_and_fid_and_resumes_identically() {
    let _cores = all_cores();
    let (root, weights) = &scratch_with_random_inception();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Three images in batches of two: a full batch, then a partial one.
    let originals = Array4::from_shape_fn((3, 32, 32, 3), |(i, y, x, c)| {
        ((x * 7 + y * 3 + i * 17 + c * 50) % 256) as u8
    });
    let recons =
        originals.mapv(|v| (i32::from(v) + rng.random_range(-30..=30)).clamp(0, 255) as u8);
    let (data, recon) = (root.join("data.npz"), root.join("recon.npz"));
    write_images(&data, &originals);
    write_images(&recon, &recons);
    let (data_npy, recon_npy) = (root.join("data.npy"), root.join("recon.npy"));
    originals
        .write_npy(File::create(&data_npy).unwrap())
        .unwrap();
    recons.write_npy(File::create(&recon_npy).unwrap()).unwrap();

    let run = |out: &Path, extra: &[&str]| {
        cli()
            .args(["recon", "--recon-batch"])
            .arg(&recon)
            .arg("--data")
            .arg(&data)
            .arg("--inception")
            .arg(weights)
            .args(["--device", "cpu", "--feature-batch-size", "2", "--out"])
            .arg(out)
            .quiet()
            .args(extra)
            .run()
    };
    let whole = root.join("runs/whole");
    run(&whole, &[]).success();
    let json = metrics_json(&whole);

    // PSNR / SSIM against scikit-image.
    let sk: Value = serde_json::from_str(&support::run_reference(
        "oracles/skimage_psnr_ssim.py",
        &[&data_npy, &recon_npy],
    ))
    .unwrap();
    let sk = &sk[0];
    for (ours, theirs, tol) in [
        ("psnr", "psnr", 1e-12),
        ("ssim", "ssim_gaussian", 1e-9),
        ("ssim_llamagen", "ssim_llamagen", 1e-6),
    ] {
        let expected = mean(sk[theirs].as_array().unwrap());
        let got = metric(&json, ours);
        assert!(
            support::rel_diff(got, expected) < tol,
            "{ours}: ours {got}, scikit-image {expected}"
        );
    }
    assert!(json["metrics"].get("codebook_usage").is_none());
    assert_eq!(json["run"]["n_images"], 3);
    assert_eq!(json["run"]["rfid_reference"], "inputs");

    // rFID against our own `fid` of the two sets.
    let fid_out = root.join("runs/fid");
    cli()
        .args(["fid", "--sample-batch"])
        .arg(&recon)
        .arg("--ref")
        .arg(&data)
        .arg("--inception")
        .arg(weights)
        .args(["--device", "cpu", "--metrics", "fid", "--out"])
        .arg(&fid_out)
        .quiet()
        .run()
        .success();
    let fid = metric(&metrics_json(&fid_out), "fid");
    let rfid = metric(&json, "rfid");
    assert!(rfid > 0.0);
    assert!(
        support::rel_diff(rfid, fid) < 1e-6,
        "rfid {rfid} vs fid {fid}"
    );

    // Interrupted after one batch, then resumed: the same figures.
    let parts = root.join("runs/parts");
    let stopped = run(&parts, &["--stop-after-batches", "1"]);
    assert!(!stopped.succeeded());
    assert!(stopped.stderr_text().contains("--resume"));
    assert!(parts.join(".journal/progress.json").is_file());
    assert!(!parts.join("metrics.json").exists());
    let stderr = run(&parts, &["--resume"]).success().stderr_text();
    assert!(!stderr.contains("nothing to resume"), "{stderr}");
    let resumed = metrics_json(&parts);
    assert_eq!(resumed["metrics"], json["metrics"]);
    assert_eq!(resumed["run"]["resumed"], true);
    assert!(!parts.join(".journal").exists());
}

fn golden_io() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(support::golden("vq_public_io.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn tensor_images(t: &Tensor) -> Array4<u8> {
    let s: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<u8>::try_from(t.contiguous().flatten(0, -1)).unwrap();
    Array4::from_shape_vec((s[0], s[1], s[2], s[3]), data).unwrap()
}

fn vq_run(vq: &Path, data: &Path, out: &Path, extra: &[&OsStr]) -> Run {
    cli()
        .args(["recon", "--vq"])
        .arg(vq)
        .arg("--data")
        .arg(data)
        .args([
            "--device",
            "cpu",
            "--metrics",
            "psnr,ssim,codebook",
            "--out",
        ])
        .arg(out)
        .quiet()
        .args(extra)
        .run()
}

#[test]
fn golden_tokenizer_run() {
    let _cores = all_cores();
    let root = &ScratchDir::new();
    let io = golden_io();
    let images = tensor_images(&io["images_uint8_nhwc"]);
    let golden_recon = tensor_images(&io["recon_uint8_nhwc"]);
    let data = root.join("golden_images.npz");
    write_images(&data, &images);
    let vq = support::golden("vq_public.pt");

    let out = root.join("whole");
    let saved = root.join("recon.npz");
    vq_run(
        &vq,
        &data,
        &out,
        &["--save-recon".as_ref(), saved.as_os_str()],
    )
    .success();
    let json = metrics_json(&out);
    assert!(out.join("metrics.csv").is_file());

    // Codebook usage: the metrics crate on the golden indices.
    let indices = Vec::<i64>::try_from(&io["indices"]).unwrap();
    let usage = codebook_usage(&indices, 1024).unwrap();
    assert!(support::rel_diff(metric(&json, "codebook_usage"), usage.usage) < 1e-14);
    assert!(support::rel_diff(metric(&json, "codebook_perplexity"), usage.perplexity) < 1e-14);
    assert_eq!(json["run"]["codebook_used_entries"], usage.used_entries);
    let training = json["run"]["training_codebook_usage"].as_f64().unwrap();
    assert!(training > 0.0 && training <= 1.0);
    assert_eq!(json["run"]["vq_config"]["ch"], 32);
    assert_eq!(json["run"]["vq_config"]["codebook_size"], 1024);

    // PSNR: the metrics crate on our saved pixels exactly, and on the golden pixels closely.
    let ours = read_images(&saved);
    let (off, total) = (
        ours.iter()
            .zip(golden_recon.iter())
            .filter(|(a, b)| a != b)
            .count(),
        ours.len(),
    );
    assert!(
        off as f64 <= 0.001 * total as f64,
        "{off} of {total} pixels differ"
    );
    let psnr = metric(&json, "psnr");
    let on_ours = image_quality::psnr(images.view(), ours.view())
        .unwrap()
        .mean
        .unwrap();
    // (metrics.json holds the shortest decimal form; serde_json's parser may be one ulp off.)
    assert!(
        support::rel_diff(psnr, on_ours) < 1e-14,
        "psnr {psnr} vs {on_ours}"
    );
    let on_golden = image_quality::psnr(images.view(), golden_recon.view())
        .unwrap()
        .mean
        .unwrap();
    assert!(
        (psnr - on_golden).abs() < 1e-3,
        "psnr {psnr} vs golden pixels {on_golden}"
    );
    let ssim = image_quality::ssim(
        images.view(),
        ours.view(),
        image_quality::SsimMode::Gaussian,
    )
    .unwrap()
    .mean;
    assert!(support::rel_diff(metric(&json, "ssim"), ssim) < 1e-14);

    // Interrupted after one batch of two images, resumed: same figures, same saved pixels.
    let parts = root.join("parts");
    let saved_parts = root.join("recon_parts.npz");
    let save: [&OsStr; 4] = [
        "--save-recon".as_ref(),
        saved_parts.as_os_str(),
        "--feature-batch-size".as_ref(),
        "2".as_ref(),
    ];
    let mut stop = save.to_vec();
    stop.extend([OsStr::new("--stop-after-batches"), OsStr::new("1")]);
    assert!(!vq_run(&vq, &data, &parts, &stop).succeeded());
    assert!(!saved_parts.exists());
    let mut resume = save.to_vec();
    resume.push(OsStr::new("--resume"));
    vq_run(&vq, &data, &parts, &resume).success();
    assert_eq!(metrics_json(&parts)["metrics"], json["metrics"]);
    assert_eq!(read_images(&saved_parts), ours);

    // Resuming with other settings is refused.
    let other = root.join("other");
    assert!(!vq_run(&vq, &data, &other, &stop).succeeded());
    let mut changed = stop.to_vec();
    changed.extend([
        OsStr::new("--precision"),
        OsStr::new("bf16"),
        OsStr::new("--resume"),
    ]);
    let refused = vq_run(&vq, &data, &other, &changed);
    assert!(!refused.succeeded());
    assert!(refused.stderr_text().contains("other settings"));

    // bf16 runs and lands close.
    let bf16 = root.join("bf16");
    vq_run(
        &vq,
        &data,
        &bf16,
        &["--precision".as_ref(), "bf16".as_ref()],
    )
    .success();
    let p16 = metric(&metrics_json(&bf16), "psnr");
    assert!((p16 - psnr).abs() < 1.0, "bf16 psnr {p16} vs fp32 {psnr}");
}

fn assert_fails_cleanly(output: &Run, out: &Path, expected: &[&str]) {
    let stderr = output.stderr_text();
    assert!(!output.succeeded(), "should fail: {stderr}");
    for e in expected {
        assert!(stderr.contains(e), "expected `{e}` in: {stderr}");
    }
    assert!(!out.exists(), "left outputs behind in {}", out.display());
}

#[test]
fn bad_inputs_fail_cleanly() {
    let _cores = all_cores();
    let root = &ScratchDir::new();
    let golden = support::golden_dir();
    let vq = golden.join("vq_public.pt");
    let data = root.join("images64.npz");
    write_images(&data, &Array4::from_elem((2, 64, 64, 3), 100u8));

    let out = root.join("gpt");
    let output = vq_run(&golden.join("gpt_public.pt"), &data, &out, &[]);
    assert_fails_cleanly(
        &output,
        &out,
        &["looks like a GPT checkpoint", "gpt_public.pt"],
    );

    let odd = root.join("images60.npz");
    write_images(&odd, &Array4::from_elem((2, 60, 60, 3), 100u8));
    let out = root.join("odd");
    let output = vq_run(&vq, &odd, &out, &[]);
    assert_fails_cleanly(&output, &out, &["images60.npz", "60x60", "multiples of 16"]);

    let variants = root.join("variants");
    support::run_reference(
        "fixtures/make_vq_checkpoints.py",
        &[vq.as_os_str(), variants.as_os_str()],
    );
    let out = root.join("mismatch");
    let output = vq_run(&variants.join("mismatch.pt"), &data, &out, &[]);
    assert_fails_cleanly(&output, &out, &["mismatch.pt", "quant_conv"]);

    // Reconstructions that do not match the originals.
    let small = root.join("small.npz");
    write_images(&small, &Array4::from_elem((2, 32, 32, 3), 1u8));
    let out = root.join("shape");
    let output = cli()
        .args(["recon", "--recon-batch"])
        .arg(&small)
        .arg("--data")
        .arg(&data)
        .args(["--metrics", "psnr", "--out"])
        .arg(&out)
        .run();
    assert_fails_cleanly(&output, &out, &["small.npz", "do not match"]);
}

/// A folder is scored at its images' own size (80x80 here, never resized to 256 unasked); a
/// folder of mixed sizes is refused with the flag that crops it.
#[test]
fn a_folder_is_scored_at_its_own_size() {
    let _cores = all_cores();
    let root = &ScratchDir::new();
    let folder = root.join("images");
    std::fs::create_dir(&folder).unwrap();
    let write_png = |name: &str, side: u32| {
        let file = File::create(folder.join(name)).unwrap();
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), side, side);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        let pixels: Vec<u8> = (0..side * side * 3).map(|p| (p % 241) as u8).collect();
        writer.write_image_data(&pixels).unwrap();
    };
    write_png("a.png", 80);
    write_png("b.png", 80);
    let vq = support::golden("vq_public.pt");
    let out = root.join("own-size");
    vq_run(&vq, &folder, &out, &[]).success();
    let json = metrics_json(&out);
    assert_eq!(json["run"]["image_size"], serde_json::json!([80, 80]));
    assert_eq!(json["run"]["n_images"], 2, "{json}");
    // Without --ref the originals are the reference, identified as the feature cache keys them.
    assert_eq!(
        json["run"]["reference_sha256"],
        llamagen_eval::pipeline::feature_cache::content_fingerprint(&folder).unwrap(),
        "{json}"
    );

    write_png("c.png", 64);
    let refused = root.join("mixed");
    vq_run(&vq, &folder, &refused, &[]).refused_with(&[
        "c.png: is 64x64 but the first image is 80x80",
        "hint: pass --crop N",
    ]);
    assert!(!refused.exists());

    // --crop makes them one size; the record holds the crop and the size scored.
    let cropped = root.join("cropped");
    vq_run(&vq, &folder, &cropped, &["--crop".as_ref(), "64".as_ref()]).success();
    let json = metrics_json(&cropped);
    assert_eq!(json["run"]["image_size"], serde_json::json!([64, 64]));
    assert_eq!(json["run"]["crop"], 64, "{json}");
    assert_eq!(json["run"]["n_images"], 3, "{json}");
}

/// The spellings `--crop` and `--feature-batch-size` had before (`--image-size`, `--batch-size`)
/// still set them, each with a note naming the new flag; either with its new spelling is refused.
#[test]
fn old_spellings_of_crop_and_feature_batch_size_still_work_with_a_note() {
    let _cores = all_cores();
    let root = &ScratchDir::new();
    let data = root.join("data.npz");
    write_images(
        &data,
        &Array4::from_shape_fn((3, 40, 40, 3), |(i, y, x, c)| {
            ((x * 5 + y * 3 + i * 29 + c * 60) % 256) as u8
        }),
    );
    let vq = support::golden("vq_public.pt");
    let run = |out: &Path, extra: &[&str]| {
        cli()
            .args(["recon", "--vq"])
            .arg(&vq)
            .arg("--data")
            .arg(&data)
            .args(["--device", "cpu", "--metrics", "psnr", "--out"])
            .arg(out)
            .args(extra)
            .run()
    };
    let old = root.join("old");
    let stderr = run(&old, &["--image-size", "32", "--batch-size", "2"])
        .success()
        .stderr_text();
    for note in [
        "note: --image-size is now --crop",
        "note: --batch-size is now --feature-batch-size",
    ] {
        assert!(stderr.contains(note), "`{note}` not in:\n{stderr}");
    }
    let json = metrics_json(&old);
    assert_eq!(json["run"]["crop"], 32, "{json}");
    assert_eq!(json["run"]["image_size"], serde_json::json!([32, 32]));
    assert_eq!(json["run"]["feature_batch_size"], 2, "{json}");
    let new = root.join("new");
    run(
        &new,
        &["--crop", "32", "--feature-batch-size", "2", "--quiet"],
    )
    .success();
    assert_eq!(metrics_json(&new)["metrics"], json["metrics"]);
    for both in [
        ["--crop", "32", "--image-size", "32"],
        ["--feature-batch-size", "2", "--batch-size", "2"],
    ] {
        run(&root.join("both"), &both).refused_with(&["cannot be used with"]);
    }
}
