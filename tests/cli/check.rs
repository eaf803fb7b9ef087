//! `llamagen-eval check`: exit status 0 when within tolerance, 1 on a regression, 2 on unusable
//! input (missing files, bad JSON, a metric missing from the run, NaN, bad tolerances, runs
//! against different references), `--write-baseline` recording a run, and the significance
//! test when both records carry the bootstrap uncertainty.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::harness::{cli, metrics_json, runs_against_two_references, s, sha256_hex, Run};

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

/// A run folder whose `metrics.json` holds FID alone, with its bootstrap standard error.
fn write_fid_run(root: &Path, name: &str, fid: f64, se: f64) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let doc = json!({
        "metrics": {"fid": fid},
        "uncertainty": {"fid": {"se": se, "ci95": [fid - 2.0 * se, fid + 2.0 * se],
                                "method": "bootstrap over 100 samples, 10 resamples, seed 0"}},
        "run": {"tool_version": "0.1.0"}
    });
    std::fs::write(dir.join("metrics.json"), doc.to_string()).unwrap();
    dir
}

/// The table row of `metric`.
fn row<'a>(stdout: &'a str, metric: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{metric} ")))
        .unwrap_or_else(|| panic!("no row for {metric}: {stdout}"))
}

#[test]
fn differences_within_the_noise_pass_and_significant_ones_regress() {
    let fx = Fixture::new();
    // Baseline FID 10 ± 1.2, runs ± 1.6: the difference's standard error is sqrt(1.2² + 1.6²) = 2.
    let base_run = write_fid_run(&fx.root, "noisy-base", 10.0, 1.2);
    let baseline = fx.root.join("noisy-baseline.json");
    check(&[
        "--run".as_ref(),
        base_run.as_os_str(),
        "--write-baseline".as_ref(),
        baseline.as_os_str(),
    ])
    .success();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    assert_eq!(doc["uncertainty"]["fid"]["se"], 1.2, "{doc}");
    let run = |name: &str, fid: f64, extra: &[&str]| {
        fx.check_dir(&write_fid_run(&fx.root, name, fid, 1.6), &baseline, extra)
    };
    // +1 is beyond the default 5% but half a standard error: noise.
    let (code, stdout, stderr) = run("half-se", 11.0, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for column in ["95% interval", "z"] {
        assert!(stdout.contains(column), "{stdout}");
    }
    let line = row(&stdout, "fid");
    for cell in [
        "+1 (+10.00%)",
        "[-2.919928, +4.919928]",
        "+0.50",
        "ok (noise)",
    ] {
        assert!(line.contains(cell), "{cell} not in {line}");
    }
    assert!(!stdout.contains("note:"), "{stdout}");
    // +10: five standard errors and beyond the tolerance.
    let (code, stdout, _) = run("five-se", 20.0, &[]);
    assert_eq!(code, 1, "{stdout}");
    let line = row(&stdout, "fid");
    assert!(
        line.contains("+5.00") && line.contains("REGRESSED"),
        "{line}"
    );
    // +5 is 2.5 standard errors: significant at 0.95 (z > 1.645), not at 0.999 (z > 3.09).
    let (code, stdout, _) = run("z-2.5", 15.0, &[]);
    assert_eq!(code, 1, "{stdout}");
    let (code, stdout, _) = run("z-2.5-strict", 15.0, &["--confidence", "0.999"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("not significant at confidence 0.999"),
        "{stdout}"
    );
    // Tolerances in standard errors: +3 is within 2se (4), +5 beyond it.
    let (code, stdout, _) = run("within-2se", 13.0, &["--tolerance", "fid=2se"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(row(&stdout, "fid").contains("+2se"), "{stdout}");
    let (code, stdout, _) = run("beyond-2se", 15.0, &["--tolerance", "fid=2se"]);
    assert_eq!(code, 1, "{stdout}");
    let (code, _, stderr) = run("bad-confidence", 10.0, &["--confidence", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--confidence"), "{stderr}");
}

#[test]
fn a_baseline_without_uncertainty_is_checked_on_tolerances_with_a_note() {
    let fx = Fixture::new();
    // The fixture's baseline has no `uncertainty`: +1 FID is beyond 5%, whatever the run's se.
    let run = write_fid_run(&fx.root, "fid-only", 11.0, 1.6);
    let mut baseline_doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fx.baseline).unwrap()).unwrap();
    baseline_doc["metrics"] = json!({"fid": 10.0});
    let baseline = fx.root.join("fid-baseline.json");
    std::fs::write(&baseline, baseline_doc.to_string()).unwrap();
    let (code, stdout, _) = fx.check_dir(&run, &baseline, &[]);
    assert_eq!(code, 1, "{stdout}");
    let notes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "{stdout}");
    assert!(
        notes[0].contains("no standard error in") && notes[0].contains("fid-baseline.json for fid"),
        "{stdout}"
    );
    assert!(!stdout.contains("95% interval"), "{stdout}");
    // A tolerance in standard errors needs them on both sides.
    let (code, _, stderr) = fx.check_dir(&run, &baseline, &["--tolerance", "fid=2se"]);
    assert_eq!(code, 2, "{stderr}");
    for needle in ["`fid=2se`", "fid-baseline.json has none", "--bootstrap N"] {
        assert!(stderr.contains(needle), "{needle} not in {stderr}");
    }
}

#[test]
fn runs_against_different_references_are_not_compared() {
    let dir = tempfile::tempdir().unwrap();
    let [(run_a, ref_a), (run_b, ref_b)] = runs_against_two_references(dir.path());
    let (a, b) = (metrics_json(&run_a), metrics_json(&run_b));
    assert_eq!(a["run"]["reference_sha256"], sha256_hex(&ref_a));
    assert_eq!(b["run"]["reference_sha256"], sha256_hex(&ref_b));
    let baseline = dir.path().join("baseline.json");
    check(&[
        "--run".as_ref(),
        run_a.as_os_str(),
        "--write-baseline".as_ref(),
        baseline.as_os_str(),
    ])
    .success();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    assert_eq!(written["uncertainty"], a["uncertainty"]);
    assert_eq!(
        written["run"]["reference_sha256"],
        a["run"]["reference_sha256"]
    );
    let against = |run: &Path| {
        check(&[
            "--run".as_ref(),
            run.as_os_str(),
            "--baseline".as_ref(),
            baseline.as_os_str(),
        ])
    };
    // The same run against its own baseline: a difference of 0 standard errors.
    let same = against(&run_a).success();
    assert!(
        row(&same.stdout_text(), "fid").contains("+0.00"),
        "{}",
        same.stdout_text()
    );
    let other = against(&run_b);
    assert_eq!(other.code(), Some(2));
    let stderr = other.stderr_text();
    for needle in [
        run_b.join("metrics.json").display().to_string(),
        baseline.display().to_string(),
        "evaluated against different references".to_string(),
    ] {
        assert!(stderr.contains(&needle), "{needle} not in {stderr}");
    }
}

#[test]
fn a_baseline_of_many_unknown_metrics_warns_in_one_line() {
    let fixture = Fixture::new();
    let mut metrics = base_metrics();
    for i in 0..100_000 {
        metrics[format!("foreign_{i}")] = json!(1.0);
    }
    let baseline = fixture.root.join("many.json");
    std::fs::write(&baseline, json!({ "metrics": metrics }).to_string()).unwrap();
    let run = write_run(&fixture.root, "run", base_metrics());
    // Not --quiet, which would silence the warning.
    let stderr = cli()
        .arg("check")
        .args(["--run", s(&run), "--baseline", s(&baseline)])
        .run()
        .success()
        .stderr_text();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("unknown metric"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("100000 unknown metrics ignored")
            && warnings[0].contains("and 99995 more"),
        "{stderr}"
    );
    assert!(stderr.len() < 10_000, "{} bytes of stderr", stderr.len());
}
