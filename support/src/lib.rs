//! Shared by the tests and benchmarks of both crates: where the golden fixtures and the reference
//! Python live, how to run the Python scripts of `tests/python/`, and the comparisons the parity
//! tests make.
//!
//! `tests/python/` holds the scripts by role: `fixtures/` write inputs for the tests (checkpoints,
//! random weights), `oracles/` compute what the reference implementations give on the tests'
//! inputs, `bench/` time the reference implementations for `benches/versus_reference.rs`.
//!
//! [`process`] starts every other process of the tests: the binary under test, its launchers,
//! and the measured runs (peak memory and wall time).

pub mod process;

pub use process::{array_vars, run_together, srun_vars, Cli, LauncherVars, Measured, Run};

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of `support/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("support/ has a parent")
        .to_path_buf()
}

/// `../shared/golden` beside the checkout (or `$LLAMAGEN_GOLDEN`). Panics when it is missing: the
/// golden tests must fail, not skip, without their fixtures.
pub fn golden_dir() -> PathBuf {
    let dir = std::env::var_os("LLAMAGEN_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/golden"));
    assert!(
        dir.join("manifest_public.json").is_file(),
        "golden fixtures not found at {} (set LLAMAGEN_GOLDEN or place shared/ beside the checkout)",
        dir.display()
    );
    dir
}

/// A file of the golden fixtures (`golden_dir()/name`).
pub fn golden(name: &str) -> PathBuf {
    golden_dir().join(name)
}

/// The project venv's Python (or `$LLAMAGEN_PYTHON`), which has the reference packages installed.
pub fn python() -> PathBuf {
    let python = std::env::var_os("LLAMAGEN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        python.is_file(),
        "reference Python not found at {}: run ./x setup",
        python.display()
    );
    python
}

/// `tests/python/<script>`: `script` is relative to that folder (`oracles/fid_reference.py`).
pub fn script_path(script: &str) -> PathBuf {
    workspace_root().join("tests/python").join(script)
}

fn run(mut command: Command, path: &Path) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        output.status.success(),
        "{} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("script output is UTF-8")
}

/// Runs the fixture or oracle `tests/python/<script>` with `args` beside other tests: its BLAS /
/// OpenMP threads are capped at two. Returns stdout; panics with stderr on failure.
pub fn run_reference<S: AsRef<OsStr>>(script: &str, args: &[S]) -> String {
    let path = script_path(script);
    let mut command = Command::new(python());
    command.arg(&path).args(args).env("OMP_NUM_THREADS", "2");
    run(command, &path)
}

/// Runs the Python one-liner `code` (`python -c code args...`) with two BLAS / OpenMP threads.
/// Returns stdout; panics with stderr on failure.
pub fn run_python_code<S: AsRef<OsStr>>(code: &str, args: &[S]) -> String {
    let mut command = Command::new(python());
    command
        .arg("-c")
        .arg(code)
        .args(args)
        .env("OMP_NUM_THREADS", "2");
    run(command, Path::new(code))
}

/// Runs `tests/python/<script>` with `args` in the environment as it is (the benchmarks time the
/// reference implementations at their own thread counts). Returns stdout; panics with stderr on
/// failure.
pub fn run_script<S: AsRef<OsStr>>(script: &str, args: &[S]) -> String {
    let path = script_path(script);
    let mut command = Command::new(python());
    command.arg(&path).args(args);
    run(command, &path)
}

/// max |a - b| / max |b|: the relative error measure of the parity tests.
pub fn max_rel_err(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "lengths differ");
    let max_abs = reference
        .iter()
        .fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let max_diff = ours.iter().zip(reference).fold(0f64, |m, (&a, &b)| {
        m.max((f64::from(a) - f64::from(b)).abs())
    });
    max_diff / max_abs.max(1e-30)
}

/// Relative difference |a - b| / max(|b|, tiny).
pub fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// Random FID-architecture Inception weights (`fixtures/random_inception_weights.py`, seeded), made
/// once and kept in `tmp_dir`: a test or benchmark passes `env!("CARGO_TARGET_TMPDIR")`, which
/// Cargo defines only for integration tests and benchmarks.
pub fn random_inception_weights(tmp_dir: &Path) -> PathBuf {
    let dir = tmp_dir.join("random-inception");
    let weights = dir.join("inception.pth");
    if !weights.is_file() {
        let tmp = tempfile::tempdir_in(tmp_dir).expect("temporary folder");
        run_reference("fixtures/random_inception_weights.py", &[tmp.path()]);
        std::fs::create_dir_all(&dir).expect("weights folder");
        // Another test may have finished first; either file is the same seeded weights.
        let _ = std::fs::rename(tmp.path().join("inception.pth"), &weights);
    }
    weights
}
