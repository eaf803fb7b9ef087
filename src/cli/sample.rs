//! `sample` and `merge`: flags and printing; the work is `pipeline::generate` and
//! `pipeline::merge`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use llamagen_eval::device::DeviceChoice;
use llamagen_eval::pipeline::features::sibling;
use llamagen_eval::pipeline::generate::sample_to_npz;
use llamagen_eval::pipeline::merge::merge;
use llamagen_eval::pipeline::{BatchSize, GenerationPlan, Generator, Shard};
use llamagen_eval::progress::Progress;

use super::args::GenArgs;

/// `sample` flags.
#[derive(Args, Debug)]
pub struct SampleCommand {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub gen: GenArgs,
    /// Generation resolution: the token grid is image-size / the tokenizer's downsampling.
    #[arg(long, default_value_t = 256)]
    pub image_size: i64,
    /// Output npz (ADM/LlamaGen layout: arr_0 images, arr_1 labels; shards add `indices`).
    #[arg(long, value_name = "SAMPLES.npz")]
    pub out: PathBuf,
    /// Samples generated together: a number, or `auto` (from the device's free memory and the
    /// generator's key/value cache per sample; results do not depend on it).
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    pub batch_size: BatchSize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Produce the samples with indices K, K+N, ... of the N-way split (join with `merge`).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Also write a PNG grid of the first (up to 64) samples.
    #[arg(long, value_name = "grid.png")]
    pub grid: Option<PathBuf>,
}

/// Runs `sample`.
pub fn run(cmd: &SampleCommand, progress: Progress) -> Result<ExitCode> {
    let count = cmd.gen.sample_count()?;
    let shard = cmd.shard.unwrap_or(Shard::ALL);
    if shard.indices(count).is_empty() {
        anyhow::bail!(
            "shard {}/{} of {count} samples is empty",
            shard.index,
            shard.count
        );
    }
    let config = cmd.gen.config(cmd.image_size, cmd.device)?;
    let mut generator = Generator::new(&config)?;
    let plan = GenerationPlan {
        samples: count,
        shard,
        batch_size: cmd.batch_size,
        overlap: !cmd.gen.no_overlap,
        save_samples: Some(cmd.out.clone()),
        journal_dir: sibling(&cmd.out, ".journal"),
        resume: cmd.gen.resume,
        stop_after: cmd.gen.stop_after,
        progress,
    };
    let generated = sample_to_npz(&mut generator, &plan, cmd.grid.as_deref())?;
    let size = generator.eval_size();
    progress.say(format!(
        "wrote {} ({} images of {size}x{size}{})",
        cmd.out.display(),
        generated.indices.len(),
        if shard.count > 1 {
            format!(", shard {}/{}", shard.index, shard.count)
        } else {
            String::new()
        }
    ));
    if progress == Progress::Shown {
        eprint!("{}", generated.timing.report());
    }
    Ok(ExitCode::SUCCESS)
}

/// `merge` flags.
#[derive(Args, Debug)]
pub struct MergeCommand {
    /// Shard npz files from `sample --shard K/N` (any order), or the feature files `features` made
    /// of them (merged into one feature file in sample order).
    #[arg(required = true, value_name = "SHARDS")]
    pub shards: Vec<PathBuf>,
    /// The joined npz, in sample-index order.
    #[arg(long, value_name = "ALL.npz")]
    pub out: PathBuf,
}

/// Runs `merge`.
pub fn run_merge(cmd: &MergeCommand, progress: Progress) -> Result<ExitCode> {
    merge(&cmd.shards, &cmd.out, progress)?;
    Ok(ExitCode::SUCCESS)
}
