//! DINOv2 and CLIP beside Inception: one pass over each image set feeds every network, `fid`
//! writes FD_DINOv2 (with its precision/recall and the extrapolated values) and CMMD, `metrics`
//! gives the same figures from the feature files, `check` and `report` carry them, and weights of
//! the wrong network are refused naming the file.

use std::path::{Path, PathBuf};

use llamagen_test_support as support;
use ndarray::Array4;

use crate::harness::{
    all_succeed, cli, golden, metrics_json, one_core, ranks, s, scratch_with_inception, srun_tasks,
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
        "--feature-batch-size",
        "8",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// `command` (a subcommand and its own flags) followed by [`network_flags`].
fn with_networks(command: &[&str], inception: &Path) -> Vec<String> {
    let mut args: Vec<String> = command.iter().map(|a| a.to_string()).collect();
    args.extend(network_flags(inception));
    args
}

/// The binary with `args`, quiet and single-threaded, which must succeed.
fn run_single_threaded(args: &[String]) {
    cli()
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .quiet()
        .run()
        .success();
}

/// `features` of `images` through every network into `root/name`, single-threaded; its path.
fn write_features(root: &Path, inception: &Path, images: &Path, name: &str) -> PathBuf {
    let file = root.join(name);
    let args = with_networks(
        &["features", "--images", s(images), "--out", s(&file)],
        inception,
    );
    run_single_threaded(&args);
    file
}

/// `metrics` into `root/from-files` of the feature files that [`write_features`] makes of the
/// `samples` and `reference` images (`root/samples-features.npz`, `root/reference-features.npz`);
/// that folder.
fn metrics_from_feature_files(
    root: &Path,
    inception: &Path,
    (samples, reference): (&Path, &Path),
    metrics: &str,
) -> PathBuf {
    let samples = write_features(root, inception, samples, "samples-features.npz");
    let reference = write_features(root, inception, reference, "reference-features.npz");
    let out = root.join("from-files");
    cli()
        .args([
            "metrics",
            "--sample-features",
            s(&samples),
            "--ref-features",
            s(&reference),
            "--metrics",
            metrics,
            "--out",
            s(&out),
        ])
        .quiet()
        .run()
        .success();
    out
}

/// Panics unless each of `keys` has the same value in the metrics of `a` and `b`: within
/// `rel_tol` relatively, or `abs_tol` absolutely (for values near zero); `what` names the two.
#[track_caller]
fn assert_same_figures(
    a: &serde_json::Value,
    b: &serde_json::Value,
    keys: &[&str],
    (rel_tol, abs_tol): (f64, f64),
    what: (&str, &str),
) {
    for key in keys {
        let (x, y) = (
            a["metrics"][key].as_f64().unwrap(),
            b["metrics"][key].as_f64().unwrap(),
        );
        assert!(
            support::rel_diff(x, y) < rel_tol || (x - y).abs() < abs_tol,
            "{key}: {} {x}, {} {y}",
            what.0,
            what.1
        );
    }
}

/// `root/samples.npz`: `n` 40x40 images, told apart by `seed`.
fn write_samples(root: &Path, n: usize, seed: usize) -> PathBuf {
    let samples = root.join("samples.npz");
    write_images(&samples, n, seed);
    samples
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
    let (root, weights, reference) = &scratch_with_inception(12);
    let samples = write_samples(root, 20, 1);
    let out = root.join("run");
    let mut args = with_networks(
        &["fid", "--sample-batch", s(&samples), "--ref", s(reference)],
        weights,
    );
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
    for set in [&samples, reference] {
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
    let from_files = metrics_from_feature_files(
        root,
        weights,
        (&samples, reference),
        "fid,fd-dinov2,fd-dinov2-inf,dinov2-pr,cmmd",
    );
    let again = metrics_json(&from_files);
    // The same features; only BLAS threads differ (FID of these random weights is ~6e-9).
    assert_same_figures(
        &record,
        &again,
        &NEW_METRICS,
        (1e-6, 1e-12),
        ("fid", "metrics from feature files"),
    );

    // `check` gates on them and `report` tabulates them.
    let baseline = root.join("baseline.json");
    cli()
        .args(["check", "--run", s(&out), "--write-baseline", s(&baseline)])
        .quiet()
        .run()
        .success();
    // Against the run itself: the feature-file run was measured against another reference file
    // (the reference's features), which `check` refuses to compare.
    let checked = cli()
        .args(["check", "--run", s(&out), "--baseline", s(&baseline)])
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
    let (root, weights, reference) = &scratch_with_inception(4);
    let samples = write_samples(root, 4, 2);
    let fid = |extra: &[&str]| {
        let mut args = vec![
            "fid",
            "--sample-batch",
            s(&samples),
            "--ref",
            s(reference),
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
        s(weights),
        "--dinov2",
        s(weights),
        "--dinov2-heads",
        "4",
    ]);
    assert!(
        stderr.contains(&*weights.file_name().unwrap().to_string_lossy())
            && stderr.contains("DINOv2"),
        "{stderr}"
    );
    // CLIP's text tower as the CLIP vision weights.
    let stderr = fid(&["--inception", s(weights), "--clip", s(&text)]);
    assert!(
        stderr.contains("clip_text_tiny_public.safetensors") && stderr.contains("text"),
        "{stderr}"
    );
    // Missing DINOv2 weights: where they were looked for and what to download.
    let stderr = fid(&[
        "--inception",
        s(weights),
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

/// `weights` with every value of the variables named like `name_part` set to NaN, written to
/// `file` as safetensors.
fn with_nan_weights(weights: &Path, name_part: &str, file: &Path) -> PathBuf {
    let mut tensors = tch::Tensor::read_safetensors(weights).unwrap();
    let mut damaged = 0;
    for (name, tensor) in tensors.iter_mut() {
        if name.contains(name_part) {
            let _ = tensor.fill_(f64::NAN);
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no variable named like {name_part}");
    let named: Vec<(&str, &tch::Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::Tensor::write_safetensors(&named, file).unwrap();
    file.to_path_buf()
}

#[test]
fn networks_giving_non_finite_features_are_refused_naming_the_weights() {
    let _core = one_core();
    let (root, weights, reference) = &scratch_with_inception(4);
    let damaged = with_nan_weights(weights, "fc", &root.join("damaged_inception.safetensors"));
    let out = root.join("features.npz");
    let run = cli()
        .args([
            "features",
            "--images",
            s(reference),
            "--inception",
            s(&damaged),
            "--device",
            "cpu",
            "--out",
            s(&out),
        ])
        .quiet()
        .run()
        .failure();
    let stderr = run.stderr_text();
    assert!(
        stderr.contains("damaged_inception.safetensors")
            && stderr.contains("non-finite")
            && stderr.contains("`logits`"),
        "{stderr}"
    );
    assert!(!out.exists(), "no feature file from damaged weights");
}

#[test]
fn stats_writes_dinov2_statistics_that_fid_uses() {
    let _core = one_core();
    let (root, weights, reference_images) = &scratch_with_inception(12);
    let samples = write_samples(root, 10, 3);
    // `command` with the networks but CLIP: drop `--features ...,clip` and `--clip FILE`.
    let run_with_dinov2 = |command: &[&str]| {
        let mut args = with_networks(command, weights);
        let first_flag = command.len();
        args[first_flag + 3] = "inception,dinov2".into();
        args.drain(first_flag + 8..first_flag + 10);
        cli().args(&args).quiet().run().success();
    };
    let stats = root.join("ref-stats.npz");
    run_with_dinov2(&["stats", "--data", s(reference_images), "--out", s(&stats)]);
    let features = root.join("ref-features.npz");
    run_with_dinov2(&[
        "features",
        "--images",
        s(reference_images),
        "--out",
        s(&features),
    ]);

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
        run_with_dinov2(&[
            "fid",
            "--sample-batch",
            s(&samples),
            "--ref",
            s(reference),
            "--metrics",
            "fid,fd-dinov2",
            "--out",
            s(&out),
        ]);
        metrics_json(&out)["metrics"]["fd_dinov2"].as_f64().unwrap()
    };
    let (from_stats, from_images) = (fd(&stats, "vs-stats"), fd(reference_images, "vs-images"));
    assert!(
        support::rel_diff(from_stats, from_images) < 1e-6,
        "reference batch {from_stats}, images {from_images}"
    );
}

#[test]
fn recon_scores_reconstructions_with_dinov2_and_clip_against_the_originals() {
    let _core = one_core();
    let (root, weights, originals) = &scratch_with_inception(12);
    let out = root.join("recon");
    let saved = root.join("recon.npz");
    let vq = golden("vq_public.pt");
    // `recon` of the originals into `out` through every network, with `extra` flags.
    let recon_args = |out: &Path, extra: &[&str]| {
        let mut command = vec![
            "recon",
            "--vq",
            s(&vq),
            "--data",
            s(originals),
            "--out",
            s(out),
        ];
        command.extend_from_slice(extra);
        with_networks(&command, weights)
    };
    let args = recon_args(&out, &["--save-recon", s(&saved)]);
    run_single_threaded(&args);
    let record = metrics_json(&out);
    for key in ["rfid", "fd_dinov2", "cmmd", "psnr"] {
        assert!(record["metrics"][key].is_number(), "{key}: {record}");
    }

    // The same FD_DINOv2 and CMMD from the saved reconstructions' and the originals' features.
    let from_files =
        metrics_from_feature_files(root, weights, (&saved, originals), "fd-dinov2,cmmd");
    let again = metrics_json(&from_files);
    assert_same_figures(
        &record,
        &again,
        &["fd_dinov2", "cmmd"],
        (1e-6, 0.0),
        ("recon", "metrics from feature files"),
    );

    // Split over 3 Slurm tasks, rank 0 gathers the same figures (the decoder's rounding aside).
    let launched = root.join("recon-3");
    let args = recon_args(&launched, &["--quiet"]);
    all_succeed(ranks(&args, &srun_tasks(3)));
    let split = metrics_json(&launched);
    assert_eq!(split["run"]["world_size"], 3);
    assert_same_figures(
        &record,
        &split,
        &["fd_dinov2", "cmmd", "rfid"],
        (1e-3, 0.0),
        ("one process", "3 ranks"),
    );
}
