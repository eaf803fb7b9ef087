//! `features` and `stats`: flags and printing; the work is `pipeline::jobs::features` and
//! `pipeline::jobs::stats`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use llamagen_eval::dist::Distribution;
use llamagen_eval::launcher::World;
use llamagen_eval::pipeline::jobs::features::extract_to_file;
use llamagen_eval::pipeline::jobs::settings::StatsConfig;
use llamagen_eval::pipeline::jobs::stats::run_stats as run_stats_job;
use llamagen_eval::pipeline::InceptionConfig;
use llamagen_eval::progress::Progress;

use super::args::{CropArgs, InceptionArgs};
use super::output::{print_features, print_stats};

/// `features` flags.
#[derive(Args, Debug)]
pub struct FeaturesCommand {
    /// Images: an npz with `arr_0` u8 N x H x W x 3 (the ADM/LlamaGen sample format), or a folder
    /// of PNG/JPEG files.
    #[arg(long, value_name = "IMAGES")]
    pub images: PathBuf,
    #[command(flatten)]
    pub crop: CropArgs,
    /// Output npz with `pool` [N,2048], `spatial` [N,2023], `logits` [N,1008] (f32).
    #[arg(long, value_name = "FEATURES.npz")]
    pub out: PathBuf,
    /// Continue an interrupted extraction (its journal beside --out).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

/// The Inception settings of a command, on this rank's device.
fn inception(args: &InceptionArgs, world: &World) -> Result<InceptionConfig> {
    let mut inception = args.config()?;
    inception.device = world.device(inception.device).map_err(anyhow::Error::msg)?;
    Ok(inception)
}

/// Runs `features`.
pub fn run(
    cmd: &FeaturesCommand,
    progress: Progress,
    distribution: Distribution,
) -> Result<ExitCode> {
    let features = extract_to_file(
        &cmd.images,
        cmd.crop.crop(),
        &inception(&cmd.inception, &distribution.world)?,
        &cmd.out,
        cmd.resume,
        progress,
        &distribution,
    )?;
    if let Some(features) = features {
        print_features(&features, &cmd.out, progress);
    }
    Ok(ExitCode::SUCCESS)
}

/// `stats` flags.
#[derive(Args, Debug)]
pub struct StatsCommand {
    /// Images: a folder of PNG/JPEG files (recursive) or an npz with `arr_0` u8 N x H x W x 3.
    #[arg(long, value_name = "IMAGES")]
    pub data: PathBuf,
    #[command(flatten)]
    pub crop: CropArgs,
    /// Output reference batch (npz).
    #[arg(long, value_name = "REF.npz")]
    pub out: PathBuf,
    /// Images kept in `arr_0` for precision/recall (a seeded random subset; ADM keeps 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub keep_images: usize,
    /// Seed of the kept subset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue an interrupted run (its journal beside --out).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

impl StatsCommand {
    /// The library's configuration of this command on `world`'s device.
    pub fn config(&self, progress: Progress, world: &World) -> Result<StatsConfig> {
        let mut inception = inception(&self.inception, world)?;
        if inception.clip.take().is_some() {
            tracing::warn!(
                "stats keeps no CLIP embeddings: CMMD takes the reference's from its kept images (arr_0) when a run evaluates against it"
            );
        }
        Ok(StatsConfig {
            crop: self.crop.crop(),
            keep_images: self.keep_images,
            seed: self.seed,
            inception,
            resume: self.resume,
            progress,
        })
    }
}

/// Runs `stats`.
pub fn run_stats(
    cmd: &StatsCommand,
    progress: Progress,
    distribution: Distribution,
) -> Result<ExitCode> {
    let config = cmd.config(progress, &distribution.world)?;
    if let Some(counts) = run_stats_job(&cmd.data, &cmd.out, &config, &distribution)? {
        print_stats(counts, &cmd.out, progress);
    }
    Ok(ExitCode::SUCCESS)
}
