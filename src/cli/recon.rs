//! `recon`: flags and printing; the work is `pipeline::jobs::recon`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{ArgGroup, Args};
use llamagen_eval::dist::Distribution;
use llamagen_eval::launcher::World;
use llamagen_eval::models::vq::VqWeights;
use llamagen_eval::pipeline::jobs::recon::{
    reconstruct, ReconConfig, ReconMetric, ReconPrecision, Reconstructions,
};
use llamagen_eval::progress::Progress;

use super::args::{CropArgs, InceptionArgs, OutputArgs};
use super::choice::choice;
use super::output::print_record;

/// `recon` flags.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["vq", "recon_batch"])))]
pub struct ReconCommand {
    /// Tokenizer checkpoint (LlamaGen VQ: vq_ds16_c2i.pt, vq_ds8_c2i.pt, or a training
    /// checkpoint); its configuration is read from the tensor shapes.
    #[arg(long, value_name = "CKPT")]
    pub vq: Option<PathBuf>,
    /// Reconstructions made elsewhere (npz `arr_0`, same order and shape as --data), scored
    /// instead of running a tokenizer.
    #[arg(long, value_name = "R.npz")]
    pub recon_batch: Option<PathBuf>,
    /// Original images: an npz with `arr_0` u8 N x H x W x 3, or a folder of PNG/JPEG files.
    #[arg(long, value_name = "IMAGES")]
    pub data: PathBuf,
    #[command(flatten)]
    pub crop: CropArgs,
    /// rFID reference: an ADM reference batch or stats file (mu/sigma), a feature file, or images;
    /// default: the input images themselves (LlamaGen's protocol).
    #[arg(long = "ref", value_name = "REF.npz")]
    pub reference: Option<PathBuf>,
    /// Also write the reconstructions as an npz (`arr_0`).
    #[arg(long, value_name = "R.npz", requires = "vq")]
    pub save_recon: Option<PathBuf>,
    /// Precision of the tokenizer.
    #[arg(long, value_parser = choice::<ReconPrecision>(), default_value_t = ReconPrecision::Fp32)]
    pub precision: ReconPrecision,
    /// Which weights of a training checkpoint: `ema` when present (auto), `ema`, or `model`.
    #[arg(long, value_parser = choice::<VqWeights>(), default_value_t = VqWeights::Auto)]
    pub vq_weights: VqWeights,
    /// Figures to compute (comma-separated); default: all that the inputs allow.
    #[arg(long, value_parser = choice::<ReconMetric>(), value_delimiter = ',')]
    pub metrics: Option<Vec<ReconMetric>>,
    /// Continue an interrupted run in the same output folder.
    #[arg(long)]
    pub resume: bool,
    /// Testing aid: stop with an error after this many batches.
    #[arg(long, hide = true, value_name = "K")]
    pub stop_after_batches: Option<usize>,
    #[command(flatten)]
    pub inception: InceptionArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl ReconCommand {
    /// The library's configuration of this command, the tokenizer and Inception on `world`'s
    /// device.
    pub fn config(&self, progress: Progress, world: &World) -> Result<ReconConfig> {
        let reconstructions = match (&self.vq, &self.recon_batch) {
            (Some(vq), _) => Reconstructions::Tokenizer {
                vq: vq.clone(),
                weights: self.vq_weights,
                precision: self.precision,
                save: self.save_recon.clone(),
            },
            (None, Some(batch)) => Reconstructions::Batch(batch.clone()),
            (None, None) => anyhow::bail!("give --vq CKPT or --recon-batch R.npz"),
        };
        let mut inception = self.inception.config()?;
        inception.device = world.device(inception.device).map_err(anyhow::Error::msg)?;
        Ok(ReconConfig {
            data: self.data.clone(),
            crop: self.crop.crop(),
            reconstructions,
            reference: self.reference.clone(),
            metrics: self.metrics.clone(),
            inception,
            out_dir: self.output.dir(),
            resume: self.resume,
            stop_after_batches: self.stop_after_batches,
            progress,
        })
    }
}

/// Runs `recon`.
pub fn run(cmd: &ReconCommand, progress: Progress, distribution: Distribution) -> Result<ExitCode> {
    let config = cmd.config(progress, &distribution.world)?;
    if let Some(record) = reconstruct(&config, &distribution)? {
        print_record(&record, &config.out_dir, progress);
    }
    Ok(ExitCode::SUCCESS)
}
