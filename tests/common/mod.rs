//! Shared by the integration tests: golden fixtures, the reference Python, comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `../shared/golden` beside the checkout (or `$LLAMAGEN_GOLDEN`); panics when missing, so golden
/// tests fail rather than skip without their fixtures.
pub fn golden_dir() -> PathBuf {
    let dir = std::env::var_os("LLAMAGEN_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"));
    assert!(
        dir.join("manifest_public.json").is_file(),
        "golden fixtures not found at {} (set LLAMAGEN_GOLDEN or place shared/ beside the checkout)",
        dir.display()
    );
    dir
}

/// The project venv's Python (or `$LLAMAGEN_PYTHON`).
pub fn python() -> PathBuf {
    let python = std::env::var_os("LLAMAGEN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        python.is_file(),
        "reference Python not found at {}: run ./x setup",
        python.display()
    );
    python
}

/// Runs `tests/parity/<script>` with `args`; returns stdout, panics with stderr on failure.
pub fn run_reference<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/parity")
        .join(script);
    let output = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        output.status.success(),
        "{} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
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

/// |a - b| / |b|.
pub fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// Random FID-architecture Inception weights (tests/parity/inception_reference.py, seeded), made
/// once and kept in the target's test folder.
pub fn random_inception_weights() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("random-inception");
    let weights = dir.join("inception.pth");
    if !weights.is_file() {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary folder");
        run_reference(
            "inception_reference.py",
            &["make-weights".as_ref(), tmp.path().as_os_str()],
        );
        std::fs::create_dir_all(&dir).expect("weights folder");
        // Another test may have finished first; either file is the same seeded weights.
        let _ = std::fs::rename(tmp.path().join("inception.pth"), &weights);
    }
    weights
}
