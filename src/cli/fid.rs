//! `fid`: flags and printing; the work is `pipeline::fid`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use llamagen_eval::pipeline::fid::{evaluate_sample_batch, journal_dir, FidOutcome};
use llamagen_eval::pipeline::{
    FeatureCache, FidConfig, GeneratedEvaluation, GeneratedRun, GenerationPlan, Shard,
};
use llamagen_eval::progress::Progress;

use super::args::{GenArgs, InceptionArgs, MetricArgs, OutputArgs};

/// `fid` flags.
#[derive(Args, Debug, Clone)]
pub struct FidCommand {
    /// Generated images: an npz with `arr_0` u8 N x H x W x 3 (stored or compressed).
    #[arg(
        long,
        value_name = "SAMPLES.npz",
        required_unless_present = "gpt",
        conflicts_with = "gpt"
    )]
    pub sample_batch: Option<PathBuf>,
    /// Generation instead of --sample-batch: `--gpt CKPT --vq CKPT --samples N` and the sampling
    /// flags of `sample`.
    #[command(flatten)]
    pub gen: GenArgs,
    /// Samples generated together with --gpt (results do not depend on it).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub gen_batch_size: u64,
    /// With --gpt: also write the generated images as an ADM/LlamaGen npz.
    #[arg(long, value_name = "SAMPLES.npz", requires = "gpt")]
    pub save_samples: Option<PathBuf>,
    /// Reference: an ADM reference batch (its mu/sigma/mu_s/sigma_s, and its `arr_0` images for
    /// precision/recall/KID), a `stats` file, a feature file, an image npz, or a folder of images.
    #[arg(long = "ref", value_name = "REF")]
    pub reference: PathBuf,
    /// Centre-crop reference images from a folder to this size (ADM's `center_crop_arr`).
    /// With --gpt: the generation resolution (default 256); folder references are then cropped
    /// to --image-size-eval (default: the same).
    #[arg(long)]
    pub image_size: Option<usize>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub inception: InceptionArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub metric: MetricArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub output: OutputArgs,
}

impl FidCommand {
    /// The generation size with --gpt.
    pub fn generation_size(&self) -> i64 {
        self.image_size.map_or(256, |s| s as i64)
    }

    /// The evaluation side.
    pub fn fid_config(&self, progress: Progress) -> FidConfig {
        // With --gpt, folder references are cropped to the evaluated size.
        let reference_crop = match self.gen.gpt {
            Some(_) => Some(
                self.gen
                    .image_size_eval
                    .map_or(self.generation_size() as usize, |s| s as usize),
            ),
            None => self.image_size,
        };
        FidConfig {
            reference: self.reference.clone(),
            reference_crop,
            inception: self.inception.config(),
            metrics: self.metric.request(),
            progress,
        }
    }

    /// How the samples are generated into `out_dir`.
    pub fn plan(&self, out_dir: &std::path::Path, progress: Progress) -> Result<GenerationPlan> {
        Ok(GenerationPlan {
            samples: self.gen.sample_count()?,
            shard: Shard::ALL,
            batch_size: usize::try_from(self.gen_batch_size).unwrap_or(usize::MAX),
            save_samples: self.save_samples.clone(),
            journal_dir: journal_dir(out_dir),
            resume: self.gen.resume,
            stop_after: self.gen.stop_after,
            progress,
        })
    }
}

/// Prints a finished run's table and, for generated samples, its throughput.
pub fn print_outcome(outcome: &FidOutcome, out_dir: &std::path::Path, progress: Progress) {
    print!("{}", outcome.record.metrics.table());
    progress.say(format!("wrote {}/metrics.json and metrics.csv", out_dir.display()));
    if let Some(timing) = &outcome.timing {
        if progress == Progress::Shown {
            eprint!("{}", timing.report());
        }
    }
}

/// Runs `fid`.
pub fn run(cmd: &FidCommand, progress: Progress) -> Result<ExitCode> {
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
