//! `fid`: flags and printing; the work is `pipeline::jobs::fid`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use llamagen_eval::dist::Distribution;
use llamagen_eval::pipeline::jobs::fid::evaluate_sample_batch;
use llamagen_eval::pipeline::{FeatureCache, GeneratedEvaluation, GeneratedRun};
use llamagen_eval::progress::Progress;

use super::args::FidArgs;
use super::output::print_outcome;

/// `fid` flags: the samples and the reference as pytorch-fid takes them (`fid SAMPLES REF`), or
/// as flags.
#[derive(Args, Debug)]
pub struct FidCommand {
    /// Generated images, as pytorch-fid takes them: the same as `--sample-batch SAMPLES`.
    #[arg(value_name = "SAMPLES", requires = "positional_reference")]
    pub positional_samples: Option<PathBuf>,
    /// The reference after SAMPLES: the same as `--ref REF`.
    #[arg(value_name = "REF")]
    pub positional_reference: Option<PathBuf>,
    #[command(flatten)]
    pub fid: FidArgs,
}

impl FidCommand {
    /// The flags, with the positional `SAMPLES REF` moved into `--sample-batch` and `--ref`.
    fn into_args(self) -> Result<FidArgs> {
        let mut args = self.fid;
        if let Some(samples) = self.positional_samples {
            if args.sample_batch.is_some() || args.gen.gpt.is_some() {
                bail!("SAMPLES given twice: positionally and as --sample-batch or --gpt");
            }
            args.sample_batch = Some(samples);
        }
        if let Some(reference) = self.positional_reference {
            if args.reference.is_some() {
                bail!("REF given twice: positionally and as --ref");
            }
            args.reference = Some(reference);
        }
        if args.sample_batch.is_none() && args.gen.gpt.is_none() {
            bail!(
                "no samples: give `fid SAMPLES REF`, --sample-batch SAMPLES, or --gpt CKPT --vq CKPT --samples N to generate them"
            );
        }
        Ok(args)
    }
}

/// Runs `fid`.
pub fn run(cmd: FidCommand, progress: Progress, distribution: Distribution) -> Result<ExitCode> {
    let cmd = &cmd.into_args()?;
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
                .config(
                    cmd.generation_size(),
                    config.inception.device,
                    progress,
                    (plan.samples, plan.partition()),
                )?;
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
