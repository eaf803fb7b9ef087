//! `sweep`: flags and printing; the work is `pipeline::jobs::sweep`.

use std::process::ExitCode;

use anyhow::{ensure, Result};
use clap::Args;
use llamagen_eval::dist::Distribution;
use llamagen_eval::pipeline::jobs::sweep::sweep;
use llamagen_eval::progress::Progress;

use super::args::FidArgs;
use super::output::{print_scale, print_sweep_summary};

/// `sweep` flags.
#[derive(Args, Debug)]
pub struct SweepCommand {
    /// CFG scales to evaluate, comma-separated (each run overrides --cfg-scale).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub cfg_scales: Vec<f64>,
    /// Every flag of `fid --gpt ... --ref ...`; `--out`/`--name` name the sweep folder, which gets
    /// one run folder per scale (`cfg-<scale>`) and `report/`.
    #[command(flatten)]
    pub fid: FidArgs,
}

/// Runs `sweep`.
pub fn run(cmd: &SweepCommand, progress: Progress, distribution: Distribution) -> Result<ExitCode> {
    ensure!(
        cmd.fid.gen.gpt.is_some(),
        "sweep generates its samples: give --gpt CKPT --vq CKPT --samples N"
    );
    let base = cmd.fid.output.dir();
    let world = distribution.world;
    let config = cmd.fid.fid_config(progress, &world)?;
    let plan = cmd.fid.plan(&base, progress, distribution)?;
    let generator = cmd.fid.gen.config(
        cmd.fid.generation_size(),
        config.inception.device,
        progress,
        (plan.samples, plan.partition()),
    )?;
    let outcome = sweep(
        &config,
        &generator,
        &cmd.cfg_scales,
        &plan,
        &base,
        &mut |scale, dir, run| print_scale(scale, dir, run, progress),
    )?;
    print_sweep_summary(&outcome, progress);
    if outcome.report.is_none() {
        progress.say(format!(
            "rank {} of {}: done; rank 0 gathers the parts into {}",
            world.rank,
            world.size,
            base.display()
        ));
    }
    Ok(ExitCode::SUCCESS)
}
