//! `llamagen-eval doctor` runs from the built binary with no LD_LIBRARY_PATH and reports libtorch.

use crate::harness::cli;

#[test]
fn doctor_runs_without_ld_library_path() {
    let run = cli()
        .arg("doctor")
        .env_remove("LD_LIBRARY_PATH")
        .env("LLAMAGEN_EVAL_INCEPTION", "/nonexistent/inception.pth")
        .run();
    let stdout = run.stdout_text();
    assert!(
        run.succeeded(),
        "doctor failed: {stdout}\n{}",
        run.stderr_text()
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
    cli()
        .arg("no-such-command")
        .run()
        .refused_with(&["unrecognized subcommand 'no-such-command'"]);
}

#[test]
fn doctor_says_when_inception_weights_are_not_the_released_file() {
    let weights = crate::harness::random_inception_weights();
    let stdout = cli()
        .args(["doctor", "--inception"])
        .arg(&weights)
        .run()
        .success()
        .stdout_text();
    assert!(
        stdout.contains("found, but NOT pytorch-fid's released file"),
        "{stdout}"
    );
}
