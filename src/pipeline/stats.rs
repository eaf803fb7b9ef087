//! `stats`: an ADM-compatible reference batch from a set of images — `mu`, `sigma`, `mu_s`,
//! `sigma_s` over all of them, plus `arr_0` with a seeded random subset for precision/recall —
//! in one journaled pass.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result};
use llamagen_metrics::stats::GaussianAccumulator;
use ndarray::Array4;
use rand::SeedableRng;
use serde_json::{json, Map};

use super::features::{rows_from_record, rows_to_record, sibling};
use super::inception::InceptionConfig;
use super::journal::StreamSpec;
use super::pass::{self, crash_point, JournalConfig, PassConfig, Stage};
use super::sinks::NpzStage;
use crate::data::npz_writer::ImageNpzWriter;
use crate::features::Extractor;
use crate::models::inception::{POOL_DIM, SPATIAL_DIM};
use crate::progress::Progress;

/// What a reference batch is made of.
#[derive(Debug, Clone)]
pub struct StatsConfig {
    /// Centre-crop every image to this square size.
    pub crop: Option<usize>,
    /// Images kept in `arr_0` (a seeded random subset; ADM keeps 10,000).
    pub keep_images: usize,
    /// Seed of the kept subset.
    pub seed: u64,
    /// The feature network.
    pub inception: InceptionConfig,
    /// Continue an interrupted run.
    pub resume: bool,
    /// Bars or none.
    pub progress: Progress,
}

/// Streams every image's pool and spatial features into Gaussian accumulators.
struct StatsStage<'e> {
    extractor: &'e Extractor,
    pool: GaussianAccumulator,
    spatial: GaussianAccumulator,
}

const DIMS: [usize; 2] = [POOL_DIM as usize, SPATIAL_DIM as usize];

impl Stage for StatsStage<'_> {
    fn streams(&self) -> Vec<StreamSpec> {
        vec![
            StreamSpec::new("pool", DIMS[0] * 4),
            StreamSpec::new("spatial", DIMS[1] * 4),
        ]
    }

    fn process(&mut self, _positions: Range<usize>, images: &Array4<u8>) -> Result<Vec<Vec<u8>>> {
        let [pool, spatial, _] = self.extractor.extract_batch(images)?;
        crash_point("features");
        self.pool.add_batch_f32(pool.view())?;
        self.spatial.add_batch_f32(spatial.view())?;
        Ok([pool, spatial].iter().map(rows_to_record).collect())
    }

    fn restore(
        &mut self,
        positions: Range<usize>,
        _images: Option<&Array4<u8>>,
        records: &[Vec<u8>],
    ) -> Result<()> {
        for ((acc, bytes), dim) in [&mut self.pool, &mut self.spatial]
            .into_iter()
            .zip(records)
            .zip(DIMS)
        {
            let rows = rows_from_record(bytes, positions.len(), dim)?;
            acc.add_batch_f32(rows.view())?;
        }
        Ok(())
    }
}

/// Writes the reference batch of the images at `data` to `out`; returns (images, kept).
pub fn reference_batch(data: &Path, out: &Path, config: &StatsConfig) -> Result<(usize, usize)> {
    let batch_size = config.inception.batch_size;
    let mut source = crate::data::open_images(data, config.crop, batch_size)?;
    let total = source.len();
    anyhow::ensure!(
        total >= 2,
        "{}: statistics need at least 2 images, found {total}",
        data.display()
    );
    let (height, width) = source.image_size();
    let keep = config.keep_images.min(total);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
    let kept: BTreeSet<usize> = rand::seq::index::sample(&mut rng, total, keep)
        .into_iter()
        .collect();
    let weights = config.inception.locate()?;
    let extractor = config.inception.load(&weights)?;
    let mut stats = StatsStage {
        extractor: &extractor,
        pool: GaussianAccumulator::new(DIMS[0]),
        spatial: GaussianAccumulator::new(DIMS[1]),
    };
    let mut images = NpzStage::subset(ImageNpzWriter::create(out, keep, height, width)?, kept);
    let mut settings = Map::new();
    settings.insert(
        "images".into(),
        json!(super::cache::content_fingerprint(data)?),
    );
    settings.insert("crop".into(), json!(config.crop));
    settings.insert("keep_images".into(), json!(keep));
    settings.insert("seed".into(), json!(config.seed));
    settings.insert("resize".into(), json!(config.inception.resize.name()));
    settings.insert("inception_sha256".into(), json!(weights.sha256));
    settings.insert("batch_size".into(), json!(batch_size));
    let pass_config = PassConfig {
        label: "stats",
        batch_size,
        progress: config.progress,
        journal: Some(JournalConfig {
            dir: sibling(out, ".journal"),
            settings,
            resume: config.resume,
        }),
        stop_after_new: None,
    };
    let outcome = pass::run(
        &pass_config,
        source.as_mut(),
        &mut [&mut stats, &mut images],
    )?;
    let pool = stats.pool.finalize().context("pool statistics")?;
    let spatial = stats.spatial.finalize().context("spatial statistics")?;
    let mut writer = images.into_writer().context("the reference batch writer")?;
    writer.add_array("mu", &pool.mu)?;
    writer.add_array("sigma", &pool.sigma)?;
    writer.add_array("mu_s", &spatial.mu)?;
    writer.add_array("sigma_s", &spatial.sigma)?;
    writer.finish()?;
    outcome.finish()?;
    Ok((total, keep))
}
