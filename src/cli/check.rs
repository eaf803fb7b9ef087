//! `check`: a run against a baseline, for CI. Exit status 0 pass, 1 regression,
//! 2 unusable input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use llamagen_eval::check::{self, Baseline, Verdict};
use llamagen_eval::progress::Progress;
use llamagen_eval::record::{metrics_path, RunRecord};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["baseline", "write_baseline"])))]
pub struct CheckCommand {
    /// The run folder (or its metrics.json) to check.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Baseline JSON (from --write-baseline, or any run's metrics.json) to compare with.
    #[arg(long, value_name = "BASELINE.json")]
    pub baseline: Option<PathBuf>,
    /// Record the run's metrics as a baseline instead of checking.
    #[arg(long, value_name = "BASELINE.json", conflicts_with = "tolerance")]
    pub write_baseline: Option<PathBuf>,
    /// Per-metric tolerances, comma-separated: `fid=0.5` (absolute, in the metric's units),
    /// `is=2%` (relative to the baseline), `fid=2se` (standard errors of the difference; needs
    /// both records made with --bootstrap N) or `precision=off`. Defaults: fid/sfid/rfid 5%,
    /// kid 0.001, inception_score and codebook_perplexity 2%, precision/recall/coverage 0.02,
    /// density 0.05, psnr 0.1 (dB), ssim/ssim_llamagen 0.005, codebook_usage 0.01.
    #[arg(long, value_name = "METRIC=TOL,...")]
    pub tolerance: Vec<String>,
    /// When both records carry a metric's standard error (--bootstrap N), a difference beyond
    /// the tolerance regresses only when it is significant in a one-sided z test at this
    /// confidence.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.95,
        conflicts_with = "write_baseline"
    )]
    pub confidence: f64,
}

/// Exit status for a regression.
pub const EXIT_REGRESSION: u8 = 1;
/// Exit status for unusable input (missing or bad files, missing or NaN metrics, bad tolerances).
pub const EXIT_UNUSABLE: u8 = 2;

/// Runs the check; its exit statuses are its own: unusable input is reported here and exits 2,
/// not with the general failure status.
pub fn run(cmd: &CheckCommand, progress: Progress) -> Result<ExitCode> {
    match compare(cmd, progress == Progress::Hidden) {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::from(EXIT_REGRESSION)),
        Err(err) => {
            eprintln!("error: {err:#}");
            Ok(ExitCode::from(EXIT_UNUSABLE))
        }
    }
}

/// `Ok(true)` when nothing regressed, `Ok(false)` on a regression, `Err` for unusable input.
fn compare(cmd: &CheckCommand, quiet: bool) -> Result<bool> {
    let record = RunRecord::read(&cmd.run)?;
    let file = metrics_path(&cmd.run);
    if let Some(target) = &cmd.write_baseline {
        return write_baseline(&record, &file, target, quiet).map(|()| true);
    }
    let baseline_path = cmd
        .baseline
        .as_ref()
        .context("--baseline or --write-baseline")?;
    let mut overrides = Vec::new();
    for spec in &cmd.tolerance {
        overrides.extend(check::parse_tolerances(spec)?);
    }
    let baseline = Baseline::load(baseline_path)?;
    let rows = check::compare(
        &baseline,
        baseline_path,
        &record,
        &file,
        &overrides,
        cmd.confidence,
    )?;
    print!("{}", check::table(&rows));
    if let Some(note) = check::uncertainty_note(&rows, &baseline, baseline_path, &record, &file) {
        println!("{note}");
    }
    let regressed: Vec<&str> = rows
        .iter()
        .filter(|r| r.verdict == Verdict::Regressed)
        .map(|r| r.metric.name())
        .collect();
    let checked = rows.iter().filter(|r| r.verdict != Verdict::Info).count();
    let noise = rows.iter().filter(|r| r.verdict == Verdict::Noise).count();
    if regressed.is_empty() {
        let within_noise = if noise > 0 {
            format!(
                " ({noise} beyond it but not significant at confidence {})",
                cmd.confidence
            )
        } else {
            String::new()
        };
        println!(
            "PASS: {checked} metric{} within tolerance of {}{within_noise}",
            if checked == 1 { "" } else { "s" },
            baseline_path.display()
        );
        Ok(true)
    } else {
        println!(
            "FAIL: {} regressed against {}: {}",
            regressed.len(),
            baseline_path.display(),
            regressed.join(", ")
        );
        Ok(false)
    }
}

fn write_baseline(record: &RunRecord, file: &Path, target: &Path, quiet: bool) -> Result<()> {
    check::write_baseline(record, file, target)?;
    if !quiet {
        eprintln!(
            "recorded {} metric{} of {} as baseline {}",
            record.metrics.len(),
            if record.metrics.len() == 1 { "" } else { "s" },
            file.display(),
            target.display()
        );
    }
    Ok(())
}
