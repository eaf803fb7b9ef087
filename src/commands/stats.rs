//! `llamagen-eval stats`: an ADM-compatible reference batch from a set of images — `mu`, `sigma`,
//! `mu_s`, `sigma_s` over all of them, plus `arr_0` with a seeded random subset for
//! precision/recall — in one streamed pass.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use llamagen_metrics::stats::GaussianAccumulator;
use rand::SeedableRng;

use super::InceptionArgs;
use crate::data::npz_writer::ImageNpzWriter;
use crate::data::open_images;
use crate::models::inception::{POOL_DIM, SPATIAL_DIM};

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
    #[command(flatten)]
    pub inception: InceptionArgs,
}

pub fn run(cmd: &StatsCommand, quiet: bool) -> Result<()> {
    let batch_size = cmd.inception.batch_size();
    let mut source = open_images(&cmd.data, cmd.image_size, batch_size)?;
    let total = source.len();
    anyhow::ensure!(
        total >= 2,
        "{}: statistics need at least 2 images, found {total}",
        cmd.data.display()
    );
    let (height, width) = source.image_size();
    let keep = cmd.keep_images.min(total);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cmd.seed);
    let kept: BTreeSet<usize> = rand::seq::index::sample(&mut rng, total, keep)
        .into_iter()
        .collect();

    let weights = cmd.inception.locate()?;
    let extractor = cmd.inception.load(&weights)?;
    let mut pool = GaussianAccumulator::new(POOL_DIM as usize);
    let mut spatial = GaussianAccumulator::new(SPATIAL_DIM as usize);
    let mut writer = ImageNpzWriter::create(&cmd.out, keep, height, width)?;
    let bar = crate::progress::bar(total, "stats", "img", quiet);
    let mut index = 0;
    while let Some(batch) = source.next_batch(batch_size)? {
        let [pool_features, spatial_features, _] = extractor.extract_batch(&batch)?;
        pool.add_batch_f32(pool_features.view())?;
        spatial.add_batch_f32(spatial_features.view())?;
        for image in batch.outer_iter() {
            if kept.contains(&index) {
                writer.push(image)?;
            }
            index += 1;
        }
        bar.inc(batch.dim().0 as u64);
    }
    bar.finish_and_clear();
    let pool = pool.finalize().context("pool statistics")?;
    let spatial = spatial.finalize().context("spatial statistics")?;
    writer.add_array("mu", &pool.mu)?;
    writer.add_array("sigma", &pool.sigma)?;
    writer.add_array("mu_s", &spatial.mu)?;
    writer.add_array("sigma_s", &spatial.sigma)?;
    writer.finish()?;
    if !quiet {
        eprintln!(
            "wrote {}: statistics of {total} images, {keep} kept as arr_0",
            cmd.out.display()
        );
    }
    Ok(())
}
