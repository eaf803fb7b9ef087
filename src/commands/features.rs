//! `llamagen-eval features`: Inception features of an image batch, saved for later metrics.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::InceptionArgs;
use crate::data::open_images;

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
    #[command(flatten)]
    pub inception: InceptionArgs,
}

pub fn run(cmd: &FeaturesCommand, quiet: bool) -> Result<()> {
    let mut source = open_images(&cmd.images, cmd.image_size, cmd.inception.batch_size())?;
    let weights = cmd.inception.locate()?;
    let extractor = cmd.inception.load(&weights)?;
    let mut features = extractor.extract(source.as_mut(), cmd.inception.batch_size(), quiet)?;
    // Shards of `sample --shard` carry their sample indices: keep them for `merge`.
    if !cmd.images.is_dir() {
        if let Some(indices) = super::read_i64(&cmd.images, "indices")? {
            anyhow::ensure!(
                indices.len() == features.len(),
                "{}: {} indices for {} images",
                cmd.images.display(),
                indices.len(),
                features.len()
            );
            features.indices = Some(indices.into());
        }
    }
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
