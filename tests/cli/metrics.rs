//! `llamagen-eval metrics` on feature files built from the golden features reproduces the ADM
//! evaluator's figures, writes the documented outputs, and refuses bad input cleanly.

use std::fs::File;
use std::path::{Path, PathBuf};

use llamagen_test_support as support;
use ndarray::Array2;
use ndarray_npy::{write_npy, NpzReader, NpzWriter};

use crate::harness::{cli, metrics_json, Run};

fn golden(key: &str) -> Array2<f32> {
    let path = support::golden("metrics_public.npz");
    let mut npz = NpzReader::new(File::open(path).unwrap()).unwrap();
    npz.by_name(key).unwrap()
}

fn manifest(metric: &str) -> f64 {
    let path = support::golden("manifest_public.json");
    let value: serde_json::Value = serde_json::from_reader(File::open(path).unwrap()).unwrap();
    value["adm_metrics"][metric].as_f64().unwrap()
}

fn write_features(path: &Path, entries: &[(&str, &Array2<f32>)]) {
    let mut npz = NpzWriter::new(File::create(path).unwrap());
    for (key, array) in entries {
        npz.add_array(*key, *array).unwrap();
    }
    npz.finish().unwrap();
}

/// `metrics` with `args`, quiet.
fn metrics(args: &[&std::ffi::OsStr]) -> Run {
    cli().arg("metrics").args(args).quiet().run()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (sample, spatial_sample) = (golden("sample"), golden("spatial_sample"));
        let (reference, spatial_ref) = (golden("ref"), golden("spatial_ref"));
        write_features(
            &root.join("sample.npz"),
            &[("pool", &sample), ("spatial", &spatial_sample)],
        );
        write_features(
            &root.join("ref.npz"),
            &[("pool", &reference), ("spatial", &spatial_ref)],
        );
        let logits = golden("is_activations")
            .mapv(f64::from)
            .dot(&golden("is_weight").mapv(f64::from))
            .mapv(|v| v as f32);
        write_features(&root.join("logits.npz"), &[("logits", &logits)]);
        Fixture { _dir: dir, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

#[test]
fn reproduces_adm_fid_sfid_against_a_reference_batch() {
    let fx = Fixture::new();
    let out = fx.path("run-stats");
    let adm_ref = support::golden("adm_ref_public.npz");
    metrics(&[
        "--sample-features".as_ref(),
        fx.path("sample.npz").as_os_str(),
        "--ref-features".as_ref(),
        adm_ref.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
    .success();
    let json = metrics_json(&out);
    for metric in ["fid", "sfid"] {
        let ours = json["metrics"][metric].as_f64().unwrap();
        assert!(
            support::rel_diff(ours, manifest(metric)) < 1e-6,
            "{metric}: {ours}"
        );
    }
    // Statistics alone allow no precision/recall: defaulted metrics are skipped, not invented.
    assert!(json["metrics"].get("precision").is_none());
    let run = &json["run"];
    assert_eq!(run["n_samples"], 2000);
    assert!(run["tool_version"].is_string() && run["command_line"].is_string());

    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header.len(), row.len());
    for name in llamagen_eval::metric::MetricKey::ALL.map(|m| m.name()) {
        assert!(header.contains(&name), "CSV lacks column {name}");
    }
    let fid_column = header.iter().position(|h| *h == "fid").unwrap();
    let fid: f64 = row[fid_column].parse().unwrap();
    assert!(support::rel_diff(fid, manifest("fid")) < 1e-6);
}

#[test]
fn reproduces_adm_precision_recall_and_inception_score() {
    let fx = Fixture::new();
    for (mode, precision_key, recall_key) in [
        ("exact", "precision_float64", "recall_float64"),
        ("adm-fp16", "precision", "recall"),
    ] {
        let out = fx.path(&format!("run-{mode}"));
        metrics(&[
            "--sample-features".as_ref(),
            fx.path("sample.npz").as_os_str(),
            "--ref-features".as_ref(),
            fx.path("ref.npz").as_os_str(),
            "--metrics".as_ref(),
            "fid,sfid,pr".as_ref(),
            "--pr-distance".as_ref(),
            mode.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ])
        .success();
        let json = metrics_json(&out);
        assert!(
            support::rel_diff(json["metrics"]["fid"].as_f64().unwrap(), manifest("fid")) < 1e-6
        );
        let precision = json["metrics"]["precision"].as_f64().unwrap();
        let recall = json["metrics"]["recall"].as_f64().unwrap();
        assert!(
            (precision - manifest(precision_key)).abs() <= 1.0 / 2000.0,
            "{mode} precision {precision}"
        );
        assert!(
            (recall - manifest(recall_key)).abs() <= 1.0 / 1500.0,
            "{mode} recall {recall}"
        );
        for key in ["density", "coverage"] {
            assert!(json["metrics"][key].is_number(), "{key} missing");
        }
    }
    let out = fx.path("run-is");
    metrics(&[
        "--sample-features".as_ref(),
        fx.path("logits.npz").as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
    .success();
    let json = metrics_json(&out);
    let is = json["metrics"]["inception_score"].as_f64().unwrap();
    assert!(
        support::rel_diff(is, manifest("inception_score")) < 1e-5,
        "IS {is}"
    );
    assert!(json["metrics"]["inception_score_std"].is_number());

    // torch-fidelity's convention, shuffled with the given seed: torch-fidelity's own value on the
    // same logits, and the seed in the run record.
    let out = fx.path("run-is-torch-fidelity");
    metrics(&[
        "--sample-features".as_ref(),
        fx.path("logits.npz").as_os_str(),
        "--is-splits".as_ref(),
        "torch-fidelity".as_ref(),
        "--is-seed".as_ref(),
        "7".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
    .success();
    let json = metrics_json(&out);
    let logits: Array2<f32> = NpzReader::new(File::open(fx.path("logits.npz")).unwrap())
        .unwrap()
        .by_name("logits")
        .unwrap();
    let logits_npy = fx.path("logits.npy");
    write_npy(&logits_npy, &logits).unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        support::run_reference(
            "oracles/torch_fidelity_isc.py",
            &[
                logits_npy.as_path(),
                Path::new("10"),
                Path::new("1"),
                Path::new("7"),
            ],
        )
        .trim(),
    )
    .unwrap();
    let (ours, theirs) = (
        json["metrics"]["inception_score"].as_f64().unwrap(),
        reference["mean"].as_f64().unwrap(),
    );
    assert!(
        support::rel_diff(ours, theirs) < 1e-10,
        "IS {ours} vs torch-fidelity {theirs}"
    );
    assert_eq!(json["run"]["is_splits"], "torchfidelity");
    assert_eq!(json["run"]["is_seed"], 7);
}

#[test]
fn bad_inputs_fail_cleanly_without_outputs() {
    let fx = Fixture::new();
    let narrow = golden("ref").slice(ndarray::s![.., ..128]).to_owned();
    write_features(&fx.path("narrow.npz"), &[("pool", &narrow)]);
    let adm_ref = support::golden("adm_ref_public.npz");
    let cases: Vec<(Vec<PathBuf>, &str)> = vec![
        (
            vec![fx.path("narrow.npz"), adm_ref.clone()],
            "dimensions differ",
        ),
        (vec![fx.path("missing.npz"), adm_ref.clone()], "missing.npz"),
        (
            vec![adm_ref.clone(), adm_ref.clone()],
            "none of `pool`, `spatial`, `logits`",
        ),
        (
            vec![fx.path("sample.npz"), fx.path("logits.npz")],
            "`fid` was asked for",
        ),
    ];
    for (i, (files, expected)) in cases.iter().enumerate() {
        let out = fx.path(&format!("bad-{i}"));
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--sample-features".as_ref(),
            files[0].as_os_str(),
            "--ref-features".as_ref(),
            files[1].as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        if i == 3 {
            args.push("--metrics".as_ref());
            args.push("fid".as_ref());
        }
        let output = metrics(&args);
        let stderr = output.stderr_text();
        assert!(!output.succeeded(), "case {i} should fail");
        assert!(stderr.contains(expected), "case {i}: {stderr}");
        assert!(!out.exists(), "case {i} left outputs behind");
    }
}
