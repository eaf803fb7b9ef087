//! `sample` and `merge`: flags and printing; the work is `pipeline::jobs::generate` and
//! `pipeline::jobs::merge`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use llamagen_eval::device::DeviceChoice;
use llamagen_eval::dist::{split_summary, Distribution};
use llamagen_eval::layout::RunLayout;
use llamagen_eval::partition::Shard;
use llamagen_eval::pipeline::generator::DEFAULT_IMAGE_SIZE;
use llamagen_eval::pipeline::jobs::generate::sample_to_npz;
use llamagen_eval::pipeline::jobs::merge::merge;
use llamagen_eval::pipeline::{BatchSize, GenerationPlan, Generator};
use llamagen_eval::progress::Progress;

use super::args::GenArgs;

/// `sample` flags.
#[derive(Args, Debug)]
pub struct SampleCommand {
    #[command(flatten)]
    pub gen: GenArgs,
    /// Generation resolution: the token grid is image-size / the tokenizer's downsampling.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_IMAGE_SIZE)]
    pub image_size: i64,
    /// Output npz (ADM/LlamaGen layout: arr_0 images, arr_1 labels, or for captions
    /// caption_indices and captions; shards add `indices`).
    #[arg(long, value_name = "SAMPLES.npz")]
    pub out: PathBuf,
    /// Samples generated together: a number, or `auto` (from the device's free memory and the
    /// generator's key/value cache per sample; results do not depend on it).
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    pub gen_batch_size: BatchSize,
    /// The spelling --gen-batch-size had here before `--batch-size` came to mean the feature
    /// networks' batch in the other commands; hidden, kept for existing scripts.
    #[arg(
        long = "batch-size",
        value_name = "N|auto",
        hide = true,
        conflicts_with = "gen_batch_size"
    )]
    pub batch_size_alias: Option<BatchSize>,
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

impl SampleCommand {
    /// The note for the old spelling of --gen-batch-size.
    pub fn notes(&self) -> Vec<&'static str> {
        self.batch_size_alias
            .map(|_| "--batch-size of `sample` is now --gen-batch-size (the generation batch)")
            .into_iter()
            .collect()
    }
}

/// Runs `sample`.
pub fn run(
    cmd: &SampleCommand,
    progress: Progress,
    distribution: Distribution,
) -> Result<ExitCode> {
    let count = cmd.gen.sample_count()?;
    let world = distribution.world;
    let shard = cmd.shard.unwrap_or(Shard::ALL);
    let device = world.device(cmd.device).map_err(anyhow::Error::msg)?;
    let plan = GenerationPlan {
        samples: count,
        shard,
        batch_size: cmd.batch_size_alias.unwrap_or(cmd.gen_batch_size),
        overlap: !cmd.gen.no_overlap,
        save_samples: Some(cmd.out.clone()),
        layout: RunLayout::file(&cmd.out),
        resume: cmd.gen.resume,
        stop_after: cmd.gen.stop_after,
        progress,
        distribution,
    };
    plan.check()?;
    let config = cmd
        .gen
        .config(cmd.image_size, device, progress, (count, plan.partition()))?;
    if let Some(grid) = &cmd.grid {
        llamagen_eval::io::check_output_file(grid)?;
    }
    let partition = plan.partition();
    let mut generator = Generator::new(&config)?;
    let sampled = sample_to_npz(&mut generator, &plan, cmd.grid.as_deref())?;
    let size = generator.eval_size();
    if sampled.gathered.is_empty() && world.rank == 0 {
        let written = sampled.generated.as_ref().map_or(0, |g| g.indices.len());
        progress.say(format!(
            "wrote {} ({written} images of {size}x{size}{})",
            cmd.out.display(),
            if partition.count > 1 {
                format!(", shard {}/{}", partition.index, partition.count)
            } else {
                String::new()
            }
        ));
    }
    if progress == Progress::Shown {
        if let Some(generated) = &sampled.generated {
            eprint!("{}", generated.timing.report());
        }
        if !sampled.gathered.is_empty() {
            eprint!("{}", split_summary(&sampled.gathered));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `merge` flags.
#[derive(Args, Debug)]
pub struct MergeCommand {
    /// Shard npz files from `sample --shard K/N` (any order), or the feature files `features` made
    /// of them (merged into one feature file in sample order); or, alone and without --out, the
    /// output of a launched job whose gather did not finish (a `fid`/`sweep`/`recon` folder, or
    /// a `sample`/`features`/`stats` npz path or its `.parts` folder).
    #[arg(required = true, value_name = "SHARDS|OUT_DIR")]
    pub shards: Vec<PathBuf>,
    /// The joined npz, in sample-index order.
    #[arg(long, value_name = "ALL.npz")]
    pub out: Option<PathBuf>,
}

/// Runs `merge`.
pub fn run_merge(cmd: &MergeCommand, progress: Progress) -> Result<ExitCode> {
    match (&cmd.out, cmd.shards.as_slice()) {
        (Some(out), shards) => merge(shards, out, progress)?,
        (None, [target]) => return super::gather::finish(target, progress),
        (None, _) => anyhow::bail!(
            "--out ALL.npz is required to merge shard files (`merge OUT_DIR` alone finishes a launched job's gather)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}
