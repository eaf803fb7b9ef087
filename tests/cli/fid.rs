//! End to end: `llamagen-eval fid` on image batches with random Inception weights equals the FID
//! computed in Python from torch-fidelity's features; a rerun with another reference reuses the
//! cached sample features; bad sample batches fail cleanly.

use std::fs::File;
use std::path::{Path, PathBuf};

use llamagen_test_support as support;
use ndarray::Array4;
use ndarray_npy::{NpzReader, NpzWriter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::harness::{
    all_cores, cli, inception_on_cpu, metrics_json, s, scratch_with_inception,
    scratch_with_random_inception, sha256_hex, Run, ScratchDir,
};

fn image_batch(path: &Path, rng: &mut ChaCha8Rng, n: usize, size: usize, tint: usize) {
    let images = Array4::from_shape_fn((n, size, size, 3), |(i, y, x, c)| {
        let base = (x * 200 / size + y * 50 / size + i * 13 + c * tint) % 256;
        (base as i32 + rng.random_range(-40..=40)).clamp(0, 255) as u8
    });
    let mut npz = NpzWriter::new(File::create(path).unwrap());
    npz.add_array("arr_0", &images).unwrap();
    npz.finish().unwrap();
}

/// A PNG of `side` x `side` pixels, its pattern set by `seed`.
fn write_png(path: &Path, side: u32, seed: u32) {
    let file = File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), side, side);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().unwrap();
    let pixels: Vec<u8> = (0..side * side * 3)
        .map(|p| ((p * (seed + 3)) % 253) as u8)
        .collect();
    writer.write_image_data(&pixels).unwrap();
}

fn fid_run(weights: &Path, samples: &Path, reference: &Path, out: &Path) -> Run {
    cli()
        .info_log()
        .arg("fid")
        .arg("--sample-batch")
        .arg(samples)
        .arg("--ref")
        .arg(reference)
        .arg("--inception")
        .arg(weights)
        .args([
            "--device",
            "cpu",
            "--feature-batch-size",
            "16",
            "--metrics",
            "fid,is",
            "--out",
        ])
        .arg(out)
        .quiet()
        .run()
}

fn python_fid(weights: &Path, samples: &Path, reference: &Path) -> f64 {
    let out = support::run_reference("oracles/fid_reference.py", &[weights, samples, reference]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["fid"]
        .as_f64()
        .unwrap()
}

/// [`fid_run`] into `out`, which must succeed with the FID that torch-fidelity's features give;
/// its `metrics.json` and its log.
#[track_caller]
fn fid_as_torch_fidelity(
    weights: &Path,
    samples: &Path,
    reference: &Path,
    out: &Path,
) -> (serde_json::Value, String) {
    let stderr = fid_run(weights, samples, reference, out)
        .success()
        .stderr_text();
    let json = metrics_json(out);
    let ours = json["metrics"]["fid"].as_f64().unwrap();
    let theirs = python_fid(weights, samples, reference);
    assert!(
        support::rel_diff(ours, theirs) < 1e-4,
        "fid ours {ours}, torch-fidelity features {theirs}"
    );
    (json, stderr)
}

#[test]
fn fid_matches_torch_fidelity_features_and_caches_samples() {
    let _cores = all_cores();
    let (root, weights) = &scratch_with_random_inception();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (samples, ref_a, ref_b) = (
        root.join("samples.npz"),
        root.join("ref_a.npz"),
        root.join("ref_b.npz"),
    );
    image_batch(&samples, &mut rng, 24, 32, 40);
    image_batch(&ref_a, &mut rng, 20, 48, 70);
    image_batch(&ref_b, &mut rng, 20, 32, 10);
    let runs: PathBuf = root.join("reports");

    let (json, stderr) = fid_as_torch_fidelity(weights, &samples, &ref_a, &runs.join("a"));
    assert!(
        !stderr.contains("from the cache"),
        "nothing is cached yet: {stderr}"
    );
    assert!(json["metrics"]["inception_score"].is_number());
    assert_eq!(json["run"]["n_samples"], 24);
    assert_eq!(json["run"]["n_reference"], 20);
    assert_eq!(json["run"]["resize"], "adm");
    assert_eq!(
        json["run"]["inception_sha256"].as_str().map(str::len),
        Some(64)
    );

    let (_, stderr) = fid_as_torch_fidelity(weights, &samples, &ref_b, &runs.join("b"));
    assert!(
        stderr.contains(&format!("features of {} from the cache", samples.display())),
        "the sample features should come from the cache: {stderr}"
    );
}

#[test]
fn bad_sample_batches_fail_cleanly() {
    let root = &ScratchDir::new();
    // Weights are never loaded: the input check comes first, so any file will do here.
    let weights = root.join("weights.pth");
    std::fs::write(&weights, b"not used").unwrap();
    let reference = support::golden("adm_ref_public.npz");
    let write = |name: &str, key: &str, array: ndarray::ArrayD<u8>| {
        let path = root.join(name);
        let mut npz = NpzWriter::new(File::create(&path).unwrap());
        npz.add_array(key, &array).unwrap();
        npz.finish().unwrap();
        path
    };
    let floats = root.join("floats.npz");
    let mut npz = NpzWriter::new(File::create(&floats).unwrap());
    npz.add_array("arr_0", &ndarray::Array4::<f32>::zeros((2, 8, 8, 3)))
        .unwrap();
    npz.finish().unwrap();
    let cases = [
        (
            write(
                "no_arr0.npz",
                "images",
                ndarray::ArrayD::zeros(vec![2, 8, 8, 3]),
            ),
            "has no `arr_0`",
        ),
        (floats, "dtype <f4"),
        (
            write(
                "nchw.npz",
                "arr_0",
                ndarray::ArrayD::zeros(vec![2, 3, 8, 8]),
            ),
            "N x C x H x W",
        ),
    ];
    let good_samples = root.join("good.npz");
    image_batch(&good_samples, &mut ChaCha8Rng::seed_from_u64(1), 2, 8, 0);
    let empty_ref = write("empty_ref.npz", "labels", ndarray::ArrayD::zeros(vec![3]));
    let output = fid_run(&weights, &good_samples, &empty_ref, &root.join("out-ref"));
    let stderr = output.stderr_text();
    assert!(!output.succeeded());
    assert!(
        stderr.contains("neither statistics") && stderr.contains("empty_ref.npz"),
        "{stderr}"
    );
    assert!(!root.join("out-ref").exists());
    for (i, (path, expected)) in cases.iter().enumerate() {
        let out = root.join(format!("out{i}"));
        let output = fid_run(&weights, path, &reference, &out);
        let stderr = output.stderr_text();
        assert!(!output.succeeded(), "case {i} should fail");
        assert!(
            stderr.contains(expected) && stderr.contains(&*path.display().to_string()),
            "case {i}: {stderr}"
        );
        assert!(!out.exists(), "case {i} left outputs behind");
    }
}

/// An npz whose `arr_0` header claims `count` images of 256x256x3 but holds the pixels of two.
fn header_bomb(path: &Path, count: u64) {
    use std::io::Write;
    let mut npy = crate::harness::npy_header("|u1", &[count, 256, 256, 3]);
    npy.extend((0..2 * 256 * 256 * 3).map(|i| (i % 251) as u8));
    let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("arr_0.npy", options).unwrap();
    zip.write_all(&npy).unwrap();
    zip.finish().unwrap();
}

#[test]
fn a_header_claiming_a_billion_images_and_an_output_over_the_input_fail_cleanly() {
    let (root, weights, reference) = &scratch_with_inception(4);
    let bomb = root.join("bomb.npz");
    header_bomb(&bomb, 1_000_000_000);
    let out = root.join("out");
    let features = root.join("features.npz");
    for args in [
        vec![
            "fid",
            "--sample-batch",
            s(&bomb),
            "--ref",
            s(reference),
            "--out",
            s(&out),
        ],
        vec!["features", "--images", s(&bomb), "--out", s(&features)],
    ] {
        let run = cli()
            .args(&args)
            .args(inception_on_cpu(weights))
            .quiet()
            .run();
        // A clean error, not an allocation abort sized from the header.
        assert_eq!(run.code(), Some(1), "{}", run.stderr_text());
        let stderr = run.stderr_text();
        assert!(
            stderr.contains("bomb.npz")
                && stderr.contains("truncated or corrupt: its header claims 1000000000 images"),
            "{stderr}"
        );
    }
    assert!(!out.join("metrics.json").exists());
    assert!(!features.exists());

    // An output that is the input itself is refused before it could be overwritten.
    let before = std::fs::read(reference).unwrap();
    for command in [
        ["features", "--images", s(reference), "--out", s(reference)],
        ["stats", "--data", s(reference), "--out", s(reference)],
    ] {
        cli()
            .args(command)
            .args(inception_on_cpu(weights))
            .quiet()
            .run()
            .refused_with(&["is the input"]);
    }
    assert_eq!(std::fs::read(reference).unwrap(), before);
}

#[test]
fn no_stale_or_partial_result_looks_like_a_finished_run() {
    let (root, weights, reference) = &scratch_with_inception(4);
    let out = root.join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("metrics.json"),
        br#"{"metrics": {"fid": 1.0}, "run": {}}"#,
    )
    .unwrap();
    std::fs::write(out.join("metrics.csv"), b"fid\n1.0\n").unwrap();
    // A rerun into the folder, killed inside Inception: the earlier result is gone.
    let run = cli()
        .args(["fid", "--sample-batch", s(reference), "--ref", s(reference)])
        .args(inception_on_cpu(weights))
        .args(["--out", s(&out)])
        .env("LLAMAGEN_EVAL_CRASH_AT", "features:1")
        .quiet()
        .run();
    assert_eq!(run.signal(), Some(9), "{}", run.stderr_text());
    assert!(!out.join("metrics.json").exists());
    assert!(!out.join("metrics.csv").exists());
    let check = cli()
        .args([
            "check",
            "--run",
            s(&out),
            "--baseline",
            s(&out.join("b.json")),
        ])
        .run();
    assert_eq!(check.code(), Some(2), "{}", check.stderr_text());

    // A folder whose metrics.csv cannot be replaced (here a directory) gets no metrics.json that
    // `check` would trust.
    let features = root.join("features.npz");
    cli()
        .args(["features", "--images", s(reference), "--out", s(&features)])
        .args(inception_on_cpu(weights))
        .quiet()
        .run()
        .success();
    let blocked = root.join("blocked");
    std::fs::create_dir_all(blocked.join("metrics.csv")).unwrap();
    cli()
        .args([
            "metrics",
            "--sample-features",
            s(&features),
            "--ref-features",
            s(&features),
            "--metrics",
            "fid",
            "--out",
            s(&blocked),
        ])
        .quiet()
        .run()
        .failure();
    assert!(!blocked.join("metrics.json").exists());
}

/// `fid SAMPLES REF`, as pytorch-fid users type it, on a folder of PNG images: the same metrics as
/// `fid --sample-batch SAMPLES --ref REF`; a clean fresh run's log has no warning and, captured to
/// a file, no colour codes.
#[test]
fn fid_takes_samples_and_reference_as_pytorch_fid_does() {
    let _cores = all_cores();
    let (root, weights) = &scratch_with_random_inception();
    let folder = root.join("samples");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..12u32 {
        write_png(&folder.join(format!("{i:02}.png")), 32, i);
    }
    let reference = root.join("ref.npz");
    image_batch(&reference, &mut ChaCha8Rng::seed_from_u64(9), 16, 32, 30);
    let fid_and_is = ["--metrics", "fid,is"];
    let (positional, flags) = (root.join("positional"), root.join("flags"));
    let run = cli()
        .env_remove("RUST_LOG")
        .args(["fid", s(&folder), s(&reference), "--out", s(&positional)])
        .args(inception_on_cpu(weights))
        .args(fid_and_is)
        .run()
        .success();
    let (stdout, stderr) = (run.stdout_text(), run.stderr_text());
    for note in [
        "note: `fid`: 12 samples in 2048 dimensions make a singular covariance",
        "note: `is`: one split of 12 samples",
    ] {
        assert!(stdout.contains(note), "`{note}` not in:\n{stdout}");
    }
    // The only warning: weights that are not the released ones; none about the feature cache's
    // mechanics. 12 samples in 2048 dimensions and one IS split are notes naming their metric.
    for line in stderr.lines().filter(|line| line.contains("WARN")) {
        assert!(line.contains("not pytorch-fid's released"), "{stderr}");
    }
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a captured log: {stderr}"
    );
    cli()
        .args(["fid", "--sample-batch", s(&folder), "--ref", s(&reference)])
        .args(["--out", s(&flags)])
        .args(inception_on_cpu(weights))
        .args(fid_and_is)
        .run()
        .success();
    let metrics = |out: &Path| metrics_json(out)["metrics"].clone();
    assert_eq!(metrics(&positional), metrics(&flags));
    assert_eq!(metrics_json(&positional)["run"]["n_samples"], 12);
    cli()
        .args(["fid", s(&folder)])
        .run()
        .refused_with(&["<REF>"]);

    // Against statistics alone (`stats --keep-images 0`), the metrics that need the reference's
    // images are noted as not computed, with the reason.
    let statistics = root.join("statistics.npz");
    cli()
        .args(["stats", "--data", s(&reference), "--out", s(&statistics)])
        .args(["--keep-images", "0"])
        .args(inception_on_cpu(weights))
        .run()
        .success();
    let stdout = cli()
        .args([
            "fid",
            s(&folder),
            s(&statistics),
            "--out",
            s(&root.join("stats-only")),
        ])
        .args(inception_on_cpu(weights))
        .run()
        .success()
        .stdout_text();
    for metric in ["pr", "kid"] {
        let note = format!("note: `{metric}` not computed: it needs reference pool features");
        assert!(stdout.contains(&note), "`{note}` not in:\n{stdout}");
    }
    assert!(stdout.contains("sfid "), "{stdout}");
}

/// `--crop` centre-crops a reference folder of mixed sizes for `stats` and `fid`; in `fid`
/// without --gpt, `--image-size` (its old meaning there) still does, with a note, and the two
/// together are refused.
#[test]
fn crop_centre_crops_reference_folders_and_the_old_image_size_spelling_still_does() {
    let _cores = all_cores();
    let (root, weights) = &scratch_with_random_inception();
    let folder = root.join("ref");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..6u32 {
        write_png(
            &folder.join(format!("{i}.png")),
            if i < 4 { 40 } else { 48 },
            i,
        );
    }
    let stats = root.join("stats.npz");
    cli()
        .args([
            "stats",
            "--data",
            s(&folder),
            "--crop",
            "32",
            "--out",
            s(&stats),
        ])
        .args(inception_on_cpu(weights))
        .quiet()
        .run()
        .success();
    let mut npz = NpzReader::new(File::open(&stats).unwrap()).unwrap();
    let kept: Array4<u8> = npz.by_name("arr_0").unwrap();
    assert_eq!(kept.dim(), (6, 32, 32, 3));

    let samples = root.join("samples.npz");
    image_batch(&samples, &mut ChaCha8Rng::seed_from_u64(3), 8, 32, 20);
    let fid = |out: &Path, crop: &[&str]| {
        cli()
            .args(["fid", s(&samples), s(&folder), "--metrics", "fid,is"])
            .args(["--out", s(out)])
            .args(crop)
            .args(inception_on_cpu(weights))
            .run()
    };
    let (new, old) = (root.join("crop"), root.join("image-size"));
    fid(&new, &["--crop", "32", "--quiet"]).success();
    let stderr = fid(&old, &["--image-size", "32"]).success().stderr_text();
    assert!(
        stderr.contains("note: --image-size without --gpt is now --crop"),
        "{stderr}"
    );
    let (new, old) = (metrics_json(&new), metrics_json(&old));
    assert_eq!(new["metrics"], old["metrics"]);
    assert_eq!(new["run"]["crop"], 32, "{new}");
    assert_eq!(old["run"]["crop"], 32, "{old}");
    fid(&root.join("both"), &["--crop", "32", "--image-size", "32"])
        .refused_with(&["--crop 32 and --image-size 32", "give --crop N alone"]);
}

/// Each flag has one meaning in the help: `--batch-size` (the feature networks' batch in some
/// commands, the generation batch in `sample` before) and the old spelling of `--crop` are
/// accepted but not shown.
#[test]
fn help_shows_each_flag_under_its_one_name() {
    let help = |command: &str| cli().args([command, "-h"]).run().success().stdout_text();
    for command in ["fid", "sweep", "features", "stats", "recon", "sample"] {
        let text = help(command);
        assert!(!text.contains(" --batch-size"), "{command}: {text}");
        let batch = if command == "sample" {
            "--gen-batch-size"
        } else {
            "--feature-batch-size"
        };
        assert!(text.contains(batch), "{command}: {text}");
    }
    for command in ["features", "stats", "recon"] {
        let text = help(command);
        assert!(text.contains("--crop <N>"), "{command}: {text}");
        assert!(!text.contains("--image-size"), "{command}: {text}");
    }
    let fid = help("fid");
    assert!(
        fid.contains("--crop <N>") && fid.contains("--image-size <N>"),
        "{fid}"
    );
    // A sweep always generates: its --image-size is the generation resolution alone.
    let sweep = help("sweep");
    assert!(
        sweep.contains("--image-size <N>") && !sweep.contains("old spelling"),
        "{sweep}"
    );
}

#[test]
fn bootstrap_writes_the_uncertainty_of_each_computed_metric_and_none_when_off() {
    let (root, weights, reference) = &scratch_with_inception(12);
    let samples = root.join("samples.npz");
    image_batch(&samples, &mut ChaCha8Rng::seed_from_u64(26), 12, 32, 40);
    let run = |out: &Path, resamples: &str| {
        cli()
            .args([
                "fid",
                "--sample-batch",
                s(&samples),
                "--ref",
                s(reference),
                "--kid-subsets",
                "5",
                "--bootstrap",
                resamples,
                "--out",
                s(out),
            ])
            .args(inception_on_cpu(weights))
            .quiet()
            .run()
            .success();
        metrics_json(out)
    };
    let with = run(&root.join("with"), "50");
    // The reference is identified by its content in the record, for `check` and `report`.
    assert_eq!(with["run"]["reference_sha256"], sha256_hex(reference));
    let metrics = with["metrics"].as_object().unwrap();
    let uncertainty = with["uncertainty"].as_object().unwrap();
    for name in [
        "fid",
        "sfid",
        "inception_score",
        "precision",
        "recall",
        "density",
        "coverage",
        "kid",
    ] {
        assert!(
            metrics.contains_key(name),
            "{name} not computed: {metrics:?}"
        );
    }
    // Every computed figure but the spreads over splits and subsets has its uncertainty.
    for name in metrics.keys().filter(|k| !k.ends_with("_std")) {
        let u = &uncertainty[name];
        let se = u["se"].as_f64().unwrap();
        let (lo, hi) = (
            u["ci95"][0].as_f64().unwrap(),
            u["ci95"][1].as_f64().unwrap(),
        );
        assert!(se.is_finite() && se >= 0.0 && lo <= hi, "{name}: {u}");
        let method = u["method"].as_str().unwrap();
        assert!(
            method.starts_with("bootstrap over 12 ") && method.ends_with("50 resamples, seed 0"),
            "{name}: {method}"
        );
    }
    assert_eq!(
        uncertainty.len(),
        metrics.keys().filter(|k| !k.ends_with("_std")).count()
    );
    let csv = std::fs::read_to_string(root.join("with").join("metrics.csv")).unwrap();
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .split(',')
        .any(|h| h == "fid_se"));

    let without = run(&root.join("without"), "0");
    assert!(without.get("uncertainty").is_none(), "{without}");
    // The bootstrap is additive: the figures are the same to the bit.
    assert_eq!(without["metrics"], with["metrics"]);
    let csv = std::fs::read_to_string(root.join("without").join("metrics.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(!header.split(',').any(|h| h.ends_with("_se")), "{header}");
}

/// The FID of `samples` against `reference` from `fid_run` into `out`, and its log.
fn fid_and_log(weights: &Path, samples: &Path, reference: &Path, out: &Path) -> (f64, String) {
    let stderr = fid_run(weights, samples, reference, out)
        .success()
        .stderr_text();
    (
        metrics_json(out)["metrics"]["fid"].as_f64().unwrap(),
        stderr,
    )
}

#[test]
fn cache_entries_are_used_only_for_the_content_they_were_made_from() {
    let _cores = all_cores();
    let (root, weights, reference) = &scratch_with_inception(10);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (p, q) = (root.join("p.npz"), root.join("q.npz"));
    image_batch(&p, &mut rng, 8, 32, 40);
    image_batch(&q, &mut rng, 8, 32, 90);
    let runs = root.join("runs");
    let (fid_p, _) = fid_and_log(weights, &p, reference, &runs.join("p"));
    let (fid_q, _) = fid_and_log(weights, &q, reference, &runs.join("q"));
    assert_ne!(fid_p, fid_q);

    // Q's cache entry copied over P's: refused by its seal, P's features computed again.
    let cache = runs.join(".feature-cache");
    let entry_of = |images: &Path| -> PathBuf {
        let content = llamagen_eval::pipeline::feature_cache::content_fingerprint(images).unwrap();
        let name = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(&content[..24]) && n.ends_with(".npz"))
            .unwrap();
        cache.join(name)
    };
    std::fs::copy(entry_of(&q), entry_of(&p)).unwrap();
    let (fid, stderr) = fid_and_log(weights, &p, reference, &runs.join("p-again"));
    assert_eq!(fid, fid_p);
    assert!(
        stderr.contains("cache entry not used")
            && stderr.contains(&*entry_of(&p).to_string_lossy())
            && stderr.contains("other images"),
        "{stderr}"
    );
    // A damaged entry (bytes changed inside an array) is refused by its checksum.
    let entry = entry_of(&p);
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&entry, bytes).unwrap();
    let (fid, stderr) = fid_and_log(weights, &p, reference, &runs.join("p-damaged"));
    assert_eq!(fid, fid_p);
    assert!(stderr.contains("cache entry not used"), "{stderr}");

    // A folder whose image changed at the same size and modification time is a new image set.
    let folder = root.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let solid = |rgb: [u8; 3]| image::RgbImage::from_pixel(32, 32, image::Rgb(rgb));
    let image = folder.join("a.png");
    solid([200, 10, 10]).save(&image).unwrap();
    solid([10, 200, 10]).save(folder.join("b.png")).unwrap();
    let before = std::fs::metadata(&image).unwrap();
    let (fid_red, _) = fid_and_log(weights, &folder, reference, &runs.join("red"));
    solid([10, 10, 200]).save(&image).unwrap();
    assert_eq!(std::fs::metadata(&image).unwrap().len(), before.len());
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let (fid_blue, stderr) = fid_and_log(weights, &folder, reference, &runs.join("blue"));
    assert!(
        !stderr.contains(&format!("features of {} from the cache", folder.display())),
        "{stderr}"
    );
    assert_ne!(fid_red, fid_blue);
}
