//! `llamagen-eval report`: summary table and charts of several runs.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use llamagen_eval::progress::Progress;
use llamagen_eval::report;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ReportCommand {
    /// Run folders (each holding the `metrics.json` of `fid`, `metrics` or `recon`; a
    /// `grid.png` beside it is shown as the run's samples).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Output folder (default: reports/report-<UTC timestamp>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The run the others are compared with, highlighted in the table and charts (added to the
    /// runs when not among them): a run folder, or a JSON file such as `check`'s baseline.
    #[arg(long, value_name = "RUN_DIR|BASELINE.json")]
    pub baseline: Option<PathBuf>,
    /// Report runs evaluated against different references (their `reference_sha256` differs)
    /// together; without it such a report is refused, naming the runs of each reference.
    #[arg(long)]
    pub allow_mixed: bool,
}

/// Runs `report`.
pub fn run(cmd: &ReportCommand, progress: Progress) -> Result<ExitCode> {
    let quiet = progress == Progress::Hidden;
    let runs = report::load_runs(&cmd.runs, cmd.baseline.as_deref())?;
    let notes = report::check_references(&runs, cmd.allow_mixed)?;
    if !quiet {
        for note in &notes {
            eprintln!("{note}");
        }
    }
    let out = cmd.out.clone().unwrap_or_else(|| {
        super::args::output_dir(
            None,
            Some(&format!(
                "report-{}",
                llamagen_eval::record::utc_timestamp()
            )),
        )
    });
    let written = report::write_report(&runs, &out)?;
    if !quiet {
        eprintln!(
            "report of {} run{} in {}:",
            runs.len(),
            if runs.len() == 1 { "" } else { "s" },
            out.display()
        );
        for file in &written.files {
            eprintln!("  {}", file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
