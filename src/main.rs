//! The `llamagen-eval` binary: parses the command line and runs it (see `cli`).

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// Logs go to stderr. A person reads them without timestamps or module paths, and in colour only
/// on a terminal that did not ask for `NO_COLOR`; `RUST_LOG` (a developer's filter) brings the
/// timestamps and module paths back.
fn init_logging(quiet: bool) {
    let developer = std::env::var_os("RUST_LOG").is_some();
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    if developer {
        logs.init();
    } else {
        logs.without_time().with_target(false).init();
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.quiet);
    let resume_command = cli.resume_command();
    llamagen_eval::interrupt::install(format!(
        "\ninterrupted: nothing half-written was kept\n  to continue: {resume_command}\n"
    ));
    match cli.run() {
        Ok(code) => code,
        Err(err) => {
            if let Some((status, next)) = cli::interruption(&err, &resume_command) {
                eprintln!("stopped: {err:#}\n  {next}");
                return ExitCode::from(status);
            }
            eprintln!("error: {err:#}");
            if let Some(hint) = cli::flag_hint(&err) {
                eprintln!("  hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
