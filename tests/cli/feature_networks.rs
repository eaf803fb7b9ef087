//! DINOv2 and CLIP beside Inception: one pass over each image set feeds every network, `fid`
//! writes FD_DINOv2 (with its precision/recall and the extrapolated values) and CMMD, `metrics`
//! gives the same figures from the feature files, `check` and `report` carry them, and weights of
//! the wrong network are refused naming the file.

use std::path::Path;

use llamagen_test_support as support;
use ndarray::Array4;

use crate::harness::{
    all_succeed, cli, golden, metrics_json, one_core, random_inception_and_reference, ranks, s,
    srun_tasks,
};

fn write_images(path: &Path, n: usize, seed: usize) {
    let images = Array4::from_shape_fn((n, 40, 40, 3), |(i, y, x, c)| {
        ((x * 5 + y * 11 + i * 37 + c * 70 + seed * 13) % 256) as u8
    });
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(path).unwrap());
    npz.add_array("arr_0", &images).unwrap();
    npz.finish().unwrap();
}

/// The tiny golden DINOv2 (4 heads) and CLIP beside the given Inception weights.
fn network_flags(inception: &Path) -> Vec<String> {
    [
        "--inception",
        s(inception),
        "--features",
        "inception,dinov2,clip",
        "--dinov2",
        s(&golden("dinov2_tiny_public_pretrain.pth")),
        "--dinov2-heads",
        "4",
        "--clip",
        s(&golden("clip_vision_tiny_public.safetensors")),
        "--device",
        "cpu",
        "--batch-size",
        "8",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// (`fid_inf` is left to the metric crate's tests: on 2048-d features of 20 images each of its
/// 15 distances takes two 2048 x 2048 eigendecompositions.)
const NEW_METRICS: [&str; 8] = [
    "fd_dinov2",
    "fd_dinov2_inf",
    "dinov2_precision",
    "dinov2_recall",
    "dinov2_density",
    "dinov2_coverage",
    "cmmd",
    "fid",
];

#[test]
fn fid_feeds_every_network_in_one_pass_and_metrics_agree() {
    let _core = one_core();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (weights, reference) = random_inception_and_reference(root, 12);
    let samples = root.join("samples.npz");
    write_images(&samples, 20, 1);
    let out = root.join("run");
    let mut args: Vec<String> = ["fid", "--sample-batch", s(&samples), "--ref", s(&reference)]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(network_flags(&weights));
    args.extend(
        [
            "--metrics",
            "fid,fd-dinov2,fd-dinov2-inf,dinov2-pr,cmmd",
            "--out",
            s(&out),
        ]
        .map(String::from),
    );
    let run = cli()
        .args(&args)
        .env("OMP_NUM_THREADS", "1")
        .info_log()
        .quiet()
        .run()
        .success();
    let log = run.stderr_text();
    // Each image set went through the networks once, all three together.
    for set in [&samples, &reference] {
        let passes: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("features of {}", set.display())))
            .collect();
        assert_eq!(passes.len(), 1, "{set:?}: {passes:#?}");
        assert!(
            passes[0].contains("inception, dinov2, clip in one pass"),
            "{}",
            passes[0]
        );
    }
    let record = metrics_json(&out);
    for key in NEW_METRICS {
        assert!(record["metrics"][key].is_number(), "{key}: {record}");
    }
    assert!(record["run"]["fd_dinov2_inf_fit"]["r_squared"].is_number());
    assert_eq!(
        record["run"]["feature_networks"],
        serde_json::json!(["inception", "dinov2", "clip"])
    );

    // The same figures from feature files, which now carry `dinov2` and `clip`.
    let features = |images: &Path, name: &str| {
        let file = root.join(name);
        let mut args: Vec<String> = ["features", "--images", s(images), "--out", s(&file)]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(network_flags(&weights));
        cli()
            .args(&args)
            .env("OMP_NUM_THREADS", "1")
            .quiet()
            .run()
            .success();
        file
    };
    let sample_features = features(&samples, "samples-features.npz");
    let reference_features = features(&reference, "reference-features.npz");
    let from_files = root.join("from-files");
    cli()
        .args([
            "metrics",
            "--sample-features",
            s(&sample_features),
            "--ref-features",
            s(&reference_features),
            "--metrics",
            "fid,fd-dinov2,fd-dinov2-inf,dinov2-pr,cmmd",
            "--out",
            s(&from_files),
        ])
        .quiet()
        .run()
        .success();
    let again = metrics_json(&from_files);
    for key in NEW_METRICS {
        let (a, b) = (
            record["metrics"][key].as_f64().unwrap(),
            again["metrics"][key].as_f64().unwrap(),
        );
        // The same features; only BLAS threads differ (FID of these random weights is ~6e-9).
        assert!(
            support::rel_diff(a, b) < 1e-6 || (a - b).abs() < 1e-12,
            "{key}: fid {a}, metrics from feature files {b}"
        );
    }

    // `check` gates on them and `report` tabulates them.
    let baseline = root.join("baseline.json");
    cli()
        .args(["check", "--run", s(&out), "--write-baseline", s(&baseline)])
        .quiet()
        .run()
        .success();
    let checked = cli()
        .args(["check", "--run", s(&from_files), "--baseline", s(&baseline)])
        .run()
        .success();
    for key in ["fd_dinov2", "cmmd", "dinov2_precision"] {
        assert!(
            checked.stdout_text().contains(key),
            "{}",
            checked.stdout_text()
        );
    }
    let report = root.join("report");
    cli()
        .args(["report", s(&out), "--out", s(&report)])
        .quiet()
        .run()
        .success();
    let summary = std::fs::read_to_string(report.join("summary.csv")).unwrap();
    let header = summary.lines().next().unwrap();
    for key in ["fd_dinov2", "fd_dinov2_inf", "cmmd", "dinov2_coverage"] {
        assert!(header.split(',').any(|c| c == key), "{header}");
    }
}

#[test]
fn weights_of_the_wrong_network_are_refused_naming_the_file() {
    let _core = one_core();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (weights, reference) = random_inception_and_reference(root, 4);
    let samples = root.join("samples.npz");
    write_images(&samples, 4, 2);
    let fid = |extra: &[&str]| {
        let mut args = vec![
            "fid",
            "--sample-batch",
            s(&samples),
            "--ref",
            s(&reference),
            "--device",
            "cpu",
            "--out",
        ];
        let out = root.join("out");
        let out = s(&out).to_owned();
        args.push(&out);
        args.extend_from_slice(extra);
        let run = cli().args(&args).quiet().run().failure();
        assert!(!Path::new(&out).join("metrics.json").exists());
        run.stderr_text()
    };
    let dinov2 = golden("dinov2_tiny_public_pretrain.pth");
    let clip = golden("clip_vision_tiny_public.safetensors");
    let text = golden("clip_text_tiny_public.safetensors");
    // A DINOv2 file as the Inception weights.
    let stderr = fid(&["--inception", s(&dinov2)]);
    assert!(
        stderr.contains("dinov2_tiny_public_pretrain.pth"),
        "{stderr}"
    );
    // The Inception weights as DINOv2.
    let stderr = fid(&[
        "--inception",
        s(&weights),
        "--dinov2",
        s(&weights),
        "--dinov2-heads",
        "4",
    ]);
    assert!(
        stderr.contains(&*weights.file_name().unwrap().to_string_lossy())
            && stderr.contains("DINOv2"),
        "{stderr}"
    );
    // CLIP's text tower as the CLIP vision weights.
    let stderr = fid(&["--inception", s(&weights), "--clip", s(&text)]);
    assert!(
        stderr.contains("clip_text_tiny_public.safetensors") && stderr.contains("text"),
        "{stderr}"
    );
    // Missing DINOv2 weights: where they were looked for and what to download.
    let stderr = fid(&[
        "--inception",
        s(&weights),
        "--features",
        "inception,dinov2",
        "--clip",
        s(&clip),
    ]);
    assert!(
        stderr.contains("DINOv2 weights not found")
            && stderr.contains("dinov2_vitl14_pretrain.pth"),
        "{stderr}"
    );
}

#[test]
fn stats_writes_dinov2_statistics_that_fid_uses() {
    let _core = one_core();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (weights, reference_images) = random_inception_and_reference(root, 12);
    let samples = root.join("samples.npz");
    write_images(&samples, 10, 3);
    let dinov2_flags = |args: &mut Vec<String>| {
        let mut flags = network_flags(&weights);
        // DINOv2 only: drop `--features ...,clip` and `--clip FILE`.
        flags[3] = "inception,dinov2".into();
        flags.drain(8..10);
        args.extend(flags);
    };
    let stats = root.join("ref-stats.npz");
    let mut args: Vec<String> = ["stats", "--data", s(&reference_images), "--out", s(&stats)]
        .map(String::from)
        .to_vec();
    dinov2_flags(&mut args);
    cli().args(&args).quiet().run().success();
    let features = root.join("ref-features.npz");
    let mut args: Vec<String> = [
        "features",
        "--images",
        s(&reference_images),
        "--out",
        s(&features),
    ]
    .map(String::from)
    .to_vec();
    dinov2_flags(&mut args);
    cli().args(&args).quiet().run().success();

    // mu_dinov2/sigma_dinov2 are the mean and covariance (N-1) of the images' DINOv2 features.
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&stats).unwrap()).unwrap();
    let mu: ndarray::Array1<f64> = npz.by_name("mu_dinov2").unwrap();
    let sigma: ndarray::Array2<f64> = npz.by_name("sigma_dinov2").unwrap();
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&features).unwrap()).unwrap();
    let rows: ndarray::Array2<f32> = npz.by_name("dinov2").unwrap();
    let rows = rows.mapv(f64::from);
    let n = rows.nrows() as f64;
    let mean = rows.mean_axis(ndarray::Axis(0)).unwrap();
    let centred = &rows - &mean;
    let covariance = centred.t().dot(&centred) / (n - 1.0);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1.0 + b.abs());
    assert!(mu.iter().zip(&mean).all(|(a, b)| close(*a, *b)));
    assert!(sigma.iter().zip(&covariance).all(|(a, b)| close(*a, *b)));

    // FD_DINOv2 against the reference batch equals FD_DINOv2 against its images.
    let fd = |reference: &Path, name: &str| {
        let out = root.join(name);
        let mut args: Vec<String> = [
            "fid",
            "--sample-batch",
            s(&samples),
            "--ref",
            s(reference),
            "--metrics",
            "fid,fd-dinov2",
            "--out",
            s(&out),
        ]
        .map(String::from)
        .to_vec();
        dinov2_flags(&mut args);
        cli().args(&args).quiet().run().success();
        metrics_json(&out)["metrics"]["fd_dinov2"].as_f64().unwrap()
    };
    let (from_stats, from_images) = (fd(&stats, "vs-stats"), fd(&reference_images, "vs-images"));
    assert!(
        support::rel_diff(from_stats, from_images) < 1e-6,
        "reference batch {from_stats}, images {from_images}"
    );
}

#[test]
fn recon_scores_reconstructions_with_dinov2_and_clip_against_the_originals() {
    let _core = one_core();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (weights, originals) = random_inception_and_reference(root, 12);
    let out = root.join("recon");
    let saved = root.join("recon.npz");
    let mut args: Vec<String> = [
        "recon",
        "--vq",
        s(&golden("vq_public.pt")),
        "--data",
        s(&originals),
        "--save-recon",
        s(&saved),
        "--out",
        s(&out),
    ]
    .map(String::from)
    .to_vec();
    args.extend(network_flags(&weights));
    cli()
        .args(&args)
        .env("OMP_NUM_THREADS", "1")
        .quiet()
        .run()
        .success();
    let record = metrics_json(&out);
    for key in ["rfid", "fd_dinov2", "cmmd", "psnr"] {
        assert!(record["metrics"][key].is_number(), "{key}: {record}");
    }

    // The same FD_DINOv2 and CMMD from the saved reconstructions' and the originals' features.
    let features = |images: &Path, name: &str| {
        let file = root.join(name);
        let mut args: Vec<String> = ["features", "--images", s(images), "--out", s(&file)]
            .map(String::from)
            .to_vec();
        args.extend(network_flags(&weights));
        cli()
            .args(&args)
            .env("OMP_NUM_THREADS", "1")
            .quiet()
            .run()
            .success();
        file
    };
    let (recon_features, original_features) = (
        features(&saved, "recon-features.npz"),
        features(&originals, "original-features.npz"),
    );
    let from_files = root.join("from-files");
    cli()
        .args([
            "metrics",
            "--sample-features",
            s(&recon_features),
            "--ref-features",
            s(&original_features),
            "--metrics",
            "fd-dinov2,cmmd",
            "--out",
            s(&from_files),
        ])
        .quiet()
        .run()
        .success();
    let again = metrics_json(&from_files);
    for key in ["fd_dinov2", "cmmd"] {
        let (a, b) = (
            record["metrics"][key].as_f64().unwrap(),
            again["metrics"][key].as_f64().unwrap(),
        );
        assert!(
            support::rel_diff(a, b) < 1e-6,
            "{key}: recon {a}, metrics from feature files {b}"
        );
    }

    // Split over 3 Slurm tasks, rank 0 gathers the same figures (the decoder's rounding aside).
    let launched = root.join("recon-3");
    let mut args: Vec<String> = [
        "recon",
        "--vq",
        s(&golden("vq_public.pt")),
        "--data",
        s(&originals),
        "--out",
        s(&launched),
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.extend(network_flags(&weights));
    all_succeed(ranks(&args, &srun_tasks(3)));
    let split = metrics_json(&launched);
    assert_eq!(split["run"]["world_size"], 3);
    for key in ["fd_dinov2", "cmmd", "rfid"] {
        let (a, b) = (
            record["metrics"][key].as_f64().unwrap(),
            split["metrics"][key].as_f64().unwrap(),
        );
        assert!(
            support::rel_diff(a, b) < 1e-3,
            "{key}: one process {a}, 3 ranks {b}"
        );
    }
}
