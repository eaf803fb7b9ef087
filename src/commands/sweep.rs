//! `llamagen-eval sweep`: `fid --gpt` at several CFG scales, then `report` over the runs — the
//! FID-vs-CFG trade-off curve of LlamaGen's figures in one command. Reference features and
//! statistics are computed once and reused from the feature cache by every run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::fid::FidCommand;
use super::report::ReportCommand;

#[derive(Args, Debug)]
pub struct SweepCommand {
    /// CFG scales to evaluate, comma-separated (each run overrides --cfg-scale).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub cfg_scales: Vec<f64>,
    /// Every flag of `fid --gpt ... --ref ...`; `--out`/`--name` name the sweep folder, which gets
    /// one run folder per scale (`cfg-<scale>`) and `report/`.
    #[command(flatten)]
    pub fid: FidCommand,
}

pub fn run(cmd: &SweepCommand, quiet: bool) -> Result<()> {
    anyhow::ensure!(
        cmd.fid.gen.gpt.is_some(),
        "sweep generates its samples: give --gpt CKPT --vq CKPT --samples N"
    );
    if let Some(bad) = cmd.cfg_scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
        anyhow::bail!("--cfg-scales: {bad} is not a usable CFG scale");
    }
    let base = cmd.fid.output.dir();
    let mut runs: Vec<PathBuf> = Vec::new();
    for &scale in &cmd.cfg_scales {
        let mut fid = cmd.fid.clone();
        fid.gen.cfg_scale = scale;
        let run_dir = base.join(format!("cfg-{scale}"));
        fid.output.out = Some(run_dir.clone());
        fid.output.name = None;
        if let Some(save) = &cmd.fid.save_samples {
            let name = save
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            fid.save_samples = Some(run_dir.join(name));
        }
        if !quiet {
            eprintln!("sweep: CFG scale {scale} -> {}", run_dir.display());
        }
        super::fid::run(&fid, quiet).with_context(|| format!("CFG scale {scale}"))?;
        runs.push(run_dir);
    }
    let report = ReportCommand {
        runs,
        out: Some(base.join("report")),
        baseline: None,
    };
    super::report::run(&report, quiet)
}
