//! `llamagen-eval check`: exit status 0 when within tolerance, 1 on a regression, 2 on unusable
//! input (missing files, bad JSON, a metric missing from the run, NaN, bad tolerances), and
//! `--write-baseline` recording a run.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::harness::{cli, Run};

fn check(args: &[&std::ffi::OsStr]) -> Run {
    cli().arg("check").args(args).quiet().run()
}

fn write_run(root: &Path, name: &str, metrics: serde_json::Value) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let doc = json!({"metrics": metrics, "run": {"tool_version": "0.1.0", "seed": 0}});
    std::fs::write(dir.join("metrics.json"), doc.to_string()).unwrap();
    dir
}

fn base_metrics() -> serde_json::Value {
    json!({
        "fid": 10.0, "sfid": 20.0, "inception_score": 100.0, "inception_score_std": 2.0,
        "precision": 0.70, "recall": 0.50, "kid": 0.01, "kid_std": 0.001
    })
}

/// `base_metrics` with some values replaced.
fn metrics_with(changes: serde_json::Value) -> serde_json::Value {
    let mut m = base_metrics();
    for (k, v) in changes.as_object().unwrap() {
        m[k] = v.clone();
    }
    m
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    baseline: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let run = write_run(&root, "base", base_metrics());
        let baseline = root.join("ci/baseline.json");
        check(&[
            "--run".as_ref(),
            run.as_os_str(),
            "--write-baseline".as_ref(),
            baseline.as_os_str(),
        ])
        .success();
        Fixture {
            _dir: dir,
            root,
            baseline,
        }
    }

    /// Checks a run with `metrics` against the baseline; returns (exit code, stdout, stderr).
    fn check(
        &self,
        name: &str,
        metrics: serde_json::Value,
        extra: &[&str],
    ) -> (i32, String, String) {
        let run = write_run(&self.root, name, metrics);
        self.check_dir(&run, &self.baseline, extra)
    }

    fn check_dir(&self, run: &Path, baseline: &Path, extra: &[&str]) -> (i32, String, String) {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--run".as_ref(),
            run.as_os_str(),
            "--baseline".as_ref(),
            baseline.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let output = check(&args);
        (
            output.code().expect("exit code"),
            output.stdout_text(),
            output.stderr_text(),
        )
    }
}

#[test]
fn write_baseline_records_the_run() {
    let fx = Fixture::new();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fx.baseline).unwrap()).unwrap();
    assert_eq!(doc["metrics"], base_metrics());
    assert_eq!(doc["run"]["seed"], 0);
    assert!(doc["baseline"]["source"]
        .as_str()
        .unwrap()
        .ends_with("metrics.json"));
    let leftovers: Vec<_> = std::fs::read_dir(fx.baseline.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn passes_within_tolerance_and_on_improvements() {
    let fx = Fixture::new();
    let (code, stdout, stderr) = fx.check("same", base_metrics(), &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for column in ["metric", "baseline", "current", "delta", "verdict"] {
        assert!(stdout.contains(column), "{stdout}");
    }
    assert!(stdout.contains("PASS"), "{stdout}");
    // FID +4% (default 5%), IS -1% (default 2%), precision -0.01 (default 0.02), recall better.
    let (code, stdout, _) = fx.check(
        "close",
        metrics_with(
            json!({"fid": 10.4, "inception_score": 99.0, "precision": 0.69, "recall": 0.6}),
        ),
        &[],
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("better"), "{stdout}");
    // Spreads are shown, never checked.
    let (code, stdout, _) = fx.check("spread", metrics_with(json!({"kid_std": 1.0})), &[]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn regressions_exit_1_in_each_metrics_direction() {
    let fx = Fixture::new();
    let cases = [
        ("fid-up", json!({"fid": 10.6}), "fid"),
        (
            "is-down",
            json!({"inception_score": 97.0}),
            "inception_score",
        ),
        ("precision-down", json!({"precision": 0.65}), "precision"),
        ("kid-up", json!({"kid": 0.02}), "kid"),
    ];
    for (name, changes, metric) in cases {
        let (code, stdout, stderr) = fx.check(name, metrics_with(changes), &[]);
        assert_eq!(code, 1, "{name}: {stdout}{stderr}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{metric} ")))
            .unwrap_or_else(|| panic!("{name}: no row for {metric}: {stdout}"));
        assert!(line.contains("REGRESSED"), "{name}: {line}");
        assert!(stdout.contains("FAIL"), "{stdout}");
    }
    // Lower FID, higher IS: improvements, not regressions.
    let (code, stdout, _) = fx.check(
        "better",
        metrics_with(json!({"fid": 5.0, "inception_score": 150.0})),
        &[],
    );
    assert_eq!(code, 0, "{stdout}");
    // Tolerances from the command line: absolute, relative (with the `is` alias), off.
    let worse = metrics_with(json!({"fid": 10.6, "inception_score": 97.0}));
    let (code, stdout, _) = fx.check("loose", worse.clone(), &["--tolerance", "fid=0.7,is=5%"]);
    assert_eq!(code, 0, "{stdout}");
    let (code, _, _) = fx.check("half", worse.clone(), &["--tolerance", "fid=0.7"]);
    assert_eq!(code, 1);
    let (code, _, _) = fx.check(
        "off",
        worse,
        &["--tolerance", "fid=off", "--tolerance", "is=3%"],
    );
    assert_eq!(code, 0);
    let (code, _, _) = fx.check("tight", base_metrics(), &["--tolerance", "fid=0"]);
    assert_eq!(code, 0, "an unchanged value passes a zero tolerance");
}

#[test]
fn unusable_input_exits_2() {
    let fx = Fixture::new();
    // A metric of the baseline missing from the run.
    let mut missing = base_metrics();
    missing.as_object_mut().unwrap().remove("precision");
    let (code, _, stderr) = fx.check("missing", missing, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("precision"), "{stderr}");
    // NaN: written as null by serde, or as a bare NaN token (Python's json), or a string.
    let (code, _, stderr) = fx.check("nan", metrics_with(json!({"fid": null})), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("fid"), "{stderr}");
    let (code, _, _) = fx.check("nan-string", metrics_with(json!({"fid": "NaN"})), &[]);
    assert_eq!(code, 2);
    let bare = fx.root.join("bare-nan");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(
        bare.join("metrics.json"),
        r#"{"metrics": {"fid": NaN}, "run": {}}"#,
    )
    .unwrap();
    let (code, _, stderr) = fx.check_dir(&bare, &fx.baseline, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid JSON"), "{stderr}");
    // Bad tolerance syntax, unknown metric, negative tolerance.
    // (Each form of bad syntax is covered by the unit tests of `check::parse_tolerances`.)
    for spec in ["fid=abc", "nope=1"] {
        let (code, _, stderr) = fx.check("tol", base_metrics(), &["--tolerance", spec]);
        assert_eq!(code, 2, "{spec}: {stderr}");
        assert!(stderr.contains("tolerance"), "{spec}: {stderr}");
    }
    // Missing or broken files.
    let run = fx.root.join("same-run");
    write_run(&fx.root, "same-run", base_metrics());
    let (code, _, stderr) = fx.check_dir(&run, &fx.root.join("absent.json"), &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("absent.json"), "{stderr}");
    let broken = fx.root.join("broken.json");
    std::fs::write(&broken, "{\"metrics\": ").unwrap();
    let (code, _, stderr) = fx.check_dir(&run, &broken, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("broken.json: invalid JSON"), "{stderr}");
    let (code, _, stderr) = fx.check_dir(&fx.root.join("no-run"), &fx.baseline, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no-run"), "{stderr}");
    // A NaN run cannot become a baseline.
    let nan = write_run(&fx.root, "nan-base", metrics_with(json!({"kid": null})));
    let target = fx.root.join("nan-baseline.json");
    let output = check(&[
        "--run".as_ref(),
        nan.as_os_str(),
        "--write-baseline".as_ref(),
        target.as_os_str(),
    ]);
    assert_eq!(output.code(), Some(2));
    assert!(!target.exists());
}
