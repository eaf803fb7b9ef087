//! `fid`: flags and printing; the work is `pipeline::jobs::fid`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use llamagen_eval::dist::Distribution;
use llamagen_eval::pipeline::jobs::fid::evaluate_sample_batch;
use llamagen_eval::pipeline::{FeatureCache, GeneratedEvaluation, GeneratedRun};
use llamagen_eval::progress::Progress;

use super::args::FidArgs;
use super::output::print_outcome;

/// Runs `fid`.
pub fn run(cmd: &FidArgs, progress: Progress, distribution: Distribution) -> Result<ExitCode> {
    let out_dir = cmd.output.dir();
    let world = distribution.world;
    let config = cmd.fid_config(progress, &world)?;
    let outcome = match &cmd.sample_batch {
        Some(_) if world.is_distributed() => bail!(
            "`fid --sample-batch` does not split over the ranks of a launched job ({world}): run it as one process (without the launcher, or with --launcher none)"
        ),
        Some(samples) => evaluate_sample_batch(&config, samples, &out_dir)?,
        None => {
            let plan = cmd.plan(&out_dir, progress, distribution)?;
            let generator = cmd
                .gen
                .config(cmd.generation_size(), config.inception.device, progress)?;
            let mut evaluation = GeneratedEvaluation::open(
                &config,
                &generator,
                FeatureCache::dir_for(&out_dir),
                world.rank == 0,
            )?;
            let run = GeneratedRun {
                out_dir: out_dir.clone(),
                plan,
                sweep_scales: None,
            };
            let outcome = evaluation
                .run(&run, true)
                .with_context(|| format!("generated evaluation into {}", out_dir.display()))?;
            match outcome {
                Some(outcome) => outcome,
                None => {
                    progress.say(format!(
                        "rank {} of {}: done; rank 0 gathers the parts into {}",
                        world.rank,
                        world.size,
                        out_dir.display()
                    ));
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    };
    print_outcome(&outcome, &out_dir, progress);
    Ok(ExitCode::SUCCESS)
}
