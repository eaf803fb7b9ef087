//! `features` and `stats`: flags and printing; the work is `pipeline::features` and
//! `pipeline::stats`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use llamagen_eval::pipeline::features::extract_to_file;
use llamagen_eval::pipeline::stats::{reference_batch, StatsConfig};
use llamagen_eval::progress::Progress;

use super::args::InceptionArgs;

/// `features` flags.
#[derive(Args, Debug)]
pub struct FeaturesCommand {
    /// Images: an npz with `arr_0` u8 N x H x W x 3 (the ADM/LlamaGen sample format), or a folder
    /// of PNG/JPEG files.
    #[arg(long, value_name = "IMAGES")]
    pub images: PathBuf,
    /// Centre-crop every image to this square size first (ADM's `center_crop_arr`).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Output npz with `pool` [N,2048], `spatial` [N,2023], `logits` [N,1008] (f32).
    #[arg(long, value_name = "FEATURES.npz")]
    pub out: PathBuf,
    /// Continue an interrupted extraction (its journal beside --out).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub inception: InceptionArgs,
}

/// Runs `features`.
pub fn run(cmd: &FeaturesCommand, progress: Progress) -> Result<ExitCode> {
    let features = extract_to_file(
        &cmd.images,
        cmd.image_size,
        &cmd.inception.config(),
        &cmd.out,
        cmd.resume,
        progress,
    )?;
    progress.say(format!(
        "wrote features of {} images to {}",
        features.len(),
        cmd.out.display()
    ));
    Ok(ExitCode::SUCCESS)
}

/// `stats` flags.
#[derive(Args, Debug)]
pub struct StatsCommand {
    /// Images: a folder of PNG/JPEG files (recursive) or an npz with `arr_0` u8 N x H x W x 3.
    #[arg(long, value_name = "IMAGES")]
    pub data: PathBuf,
    /// Centre-crop every image to this square size (ADM's `center_crop_arr`: BOX halving, BICUBIC
    /// resize, centre crop). Needed for folders of differently sized images.
    #[arg(long)]
    pub image_size: Option<usize>,
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
    #[allow(missing_docs)]
    pub inception: InceptionArgs,
}

/// Runs `stats`.
pub fn run_stats(cmd: &StatsCommand, progress: Progress) -> Result<ExitCode> {
    let config = StatsConfig {
        crop: cmd.image_size,
        keep_images: cmd.keep_images,
        seed: cmd.seed,
        inception: cmd.inception.config(),
        resume: cmd.resume,
        progress,
    };
    let (total, keep) = reference_batch(&cmd.data, &cmd.out, &config)?;
    progress.say(format!(
        "wrote {}: statistics of {total} images, {keep} kept as arr_0",
        cmd.out.display()
    ));
    Ok(ExitCode::SUCCESS)
}
