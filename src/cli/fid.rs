//! `fid`: flags and printing; the work is `pipeline::fid`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use llamagen_eval::pipeline::fid::evaluate_sample_batch;
use llamagen_eval::pipeline::{FeatureCache, GeneratedEvaluation, GeneratedRun};
use llamagen_eval::progress::Progress;

use super::args::{print_outcome, FidArgs};

/// Runs `fid`.
pub fn run(cmd: &FidArgs, progress: Progress) -> Result<ExitCode> {
    let out_dir = cmd.output.dir();
    let config = cmd.fid_config(progress);
    let outcome = match &cmd.sample_batch {
        Some(samples) => evaluate_sample_batch(&config, samples, &out_dir)?,
        None => {
            let plan = cmd.plan(&out_dir, progress)?;
            let generator = cmd
                .gen
                .config(cmd.generation_size(), cmd.inception.device)?;
            let mut evaluation =
                GeneratedEvaluation::open(&config, &generator, FeatureCache::dir_for(&out_dir))?;
            let run = GeneratedRun {
                out_dir: out_dir.clone(),
                plan,
            };
            evaluation
                .run(&run, true)
                .with_context(|| format!("generated evaluation into {}", out_dir.display()))?
        }
    };
    print_outcome(&outcome, &out_dir, progress);
    Ok(ExitCode::SUCCESS)
}
