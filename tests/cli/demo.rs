//! `llamagen-eval demo` (shortened) runs the whole job on its built-in models and leaves the
//! documented outputs: per-run metrics.json/metrics.csv, samples, and the report with its charts.

use std::fs::File;

use crate::harness::{all_cores, cli, metrics_json, tiny_gpt};

#[test]
fn demo_writes_runs_and_report() {
    let _cores = all_cores();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let stderr = cli()
        .args(["demo", "--samples", "8", "--out"])
        .arg(&out)
        .run()
        .success()
        .stderr_text();
    assert!(
        stderr.contains("MEANINGLESS"),
        "the demo must say its figures mean nothing: {stderr}"
    );
    for scale in ["1.5", "4"] {
        let run = out.join("sweep").join(format!("cfg-{scale}"));
        let json = metrics_json(&run);
        for metric in [
            "fid",
            "sfid",
            "inception_score",
            "precision",
            "recall",
            "kid",
        ] {
            let value = json["metrics"][metric].as_f64().unwrap_or(f64::NAN);
            assert!(value.is_finite(), "cfg {scale}: {metric} = {value}");
        }
        assert_eq!(json["run"]["n_samples"], 8);
        assert!(run.join("metrics.csv").is_file());
        assert!(run.join("samples.npz").is_file());
    }
    let report = out.join("sweep").join("report");
    let csv = std::fs::read_to_string(report.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "header and one row per run:\n{csv}");
    for chart in [
        "fid_is_vs_cfg.png",
        "precision_recall.png",
        "metric_fid.png",
    ] {
        let decoder = png::Decoder::new(std::io::BufReader::new(
            File::open(report.join(chart)).unwrap(),
        ));
        let reader = decoder.read_info().expect("valid PNG");
        assert_eq!(
            (reader.info().width, reader.info().height),
            (1200, 800),
            "{chart}"
        );
    }
    assert!(report.join("report.md").is_file());
}

#[test]
fn sweep_needs_a_generator_and_usable_scales() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| cli().args(args).current_dir(dir.path()).run();
    let output = run(&[
        "sweep",
        "--cfg-scales",
        "1.5,2",
        "--sample-batch",
        "s.npz",
        "--ref",
        "r.npz",
    ]);
    output.refused_with(&["sweep generates its samples: give --gpt CKPT --vq CKPT --samples N"]);
    // The golden generator's complete command line with one unusable scale (`=`: clap takes a
    // bare `-1` for a flag and refuses it before the scales are looked at).
    let mut args = tiny_gpt("sweep");
    args.extend(["--cfg-scales=1.5,-1", "--samples", "4", "--ref", "r.npz"]);
    run(&args).refused_with(&["CFG scale -1 is not usable: scales must be finite and at least 0"]);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}
