//! `llamagen-eval features`: Inception features of an image batch, saved for later metrics.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::InceptionArgs;
use crate::data::npz::NpzImages;

#[derive(Args, Debug)]
pub struct FeaturesCommand {
    /// Images: an npz with `arr_0` u8 N x H x W x 3 (the ADM/LlamaGen sample format).
    #[arg(long, value_name = "IMAGES.npz")]
    pub images: PathBuf,
    /// Output npz with `pool` [N,2048], `spatial` [N,2023], `logits` [N,1008] (f32).
    #[arg(long, value_name = "FEATURES.npz")]
    pub out: PathBuf,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

pub fn run(cmd: &FeaturesCommand, quiet: bool) -> Result<()> {
    let mut source = NpzImages::open(&cmd.images, cmd.inception.batch_size())?;
    let weights = cmd.inception.locate()?;
    let extractor = cmd.inception.load(&weights)?;
    let features = extractor.extract(&mut source, cmd.inception.batch_size(), quiet)?;
    features.save(&cmd.out)?;
    if !quiet {
        eprintln!(
            "wrote features of {} images to {}",
            features.len(),
            cmd.out.display()
        );
    }
    Ok(())
}
