//! Shared by the metrics tests: where the golden fixtures and the reference Python live, and how to
//! run a reference script on arrays the test wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of `metrics/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("metrics/ has a parent")
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

/// Runs `tests/parity/<script>` with `args` and returns its stdout; panics with stderr on failure.
pub fn run_reference(script: &str, args: &[&Path]) -> String {
    let script_path = workspace_root().join("tests/parity").join(script);
    let output = Command::new(python())
        .arg(&script_path)
        .args(args)
        .env("OMP_NUM_THREADS", "2")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script_path.display()));
    assert!(
        output.status.success(),
        "{} failed:\n{}",
        script_path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("reference output is UTF-8")
}

/// Relative difference |a - b| / max(|b|, tiny).
pub fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}
