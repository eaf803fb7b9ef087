//! `llamagen-eval doctor` runs from the built binary with no LD_LIBRARY_PATH and reports libtorch.

use std::process::Command;

#[test]
fn doctor_runs_without_ld_library_path() {
    let output = Command::new(env!("CARGO_BIN_EXE_llamagen-eval"))
        .arg("doctor")
        .env_remove("LD_LIBRARY_PATH")
        .env("LLAMAGEN_EVAL_INCEPTION", "/nonexistent/inception.pth")
        .output()
        .expect("the binary starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "doctor failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("libtorch          2.13.0"), "{stdout}");
    assert!(stdout.contains("OpenBLAS"), "{stdout}");
    assert!(
        stdout.contains("/nonexistent/inception.pth (from $LLAMAGEN_EVAL_INCEPTION): not found"),
        "{stdout}"
    );
}

#[test]
fn unknown_subcommand_fails() {
    let output = Command::new(env!("CARGO_BIN_EXE_llamagen-eval"))
        .arg("no-such-command")
        .output()
        .expect("the binary starts");
    assert!(!output.status.success());
}
