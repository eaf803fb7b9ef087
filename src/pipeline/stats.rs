//! `stats`: an ADM-compatible reference batch from a set of images — `mu`, `sigma`, `mu_s`,
//! `sigma_s` over all of them, plus `arr_0` with a seeded random subset for precision/recall —
//! in one journaled pass; under a launcher, split over the ranks (see [`super::split`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llamagen_metrics::stats::GaussianAccumulator;
use ndarray::{Array1, Array4, Axis};
use rand::SeedableRng;
use serde_json::{json, Map, Value};

use super::features::{rows_from_record, rows_to_record, sibling, FeatureStage};
use super::gather::{join_part_features, Distribution, Part};
use super::inception::{InceptionConfig, InceptionWeights};
use super::journal::StreamSpec;
use super::pass::{self, crash_point, JournalConfig, PassConfig, Stage};
use super::sinks::NpzStage;
use super::split::{clean_up, part_file, parts_in, RankPart};
use crate::data::npz::NpzImages;
use crate::data::npz_writer::ImageNpzWriter;
use crate::data::ImageSource;
use crate::features::Extractor;
use crate::io::read_i64;
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

/// The seeded random subset of the `total` images kept in `arr_0`.
fn kept_indices(total: usize, keep: usize, seed: u64) -> BTreeSet<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rand::seq::index::sample(&mut rng, total, keep)
        .into_iter()
        .collect()
}

/// Everything that decides the reference batch of `data`.
fn stats_settings(
    data: &Path,
    config: &StatsConfig,
    keep: usize,
    weights: &InceptionWeights,
) -> Result<Map<String, Value>> {
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
    settings.insert("batch_size".into(), json!(config.inception.batch_size));
    Ok(settings)
}

fn pass_config(
    config: &StatsConfig,
    journal: PathBuf,
    settings: Map<String, Value>,
    resume: bool,
) -> PassConfig {
    PassConfig {
        label: "stats",
        batch_size: config.inception.batch_size,
        progress: config.progress,
        journal: Some(JournalConfig {
            dir: journal,
            settings,
            resume,
        }),
        stop_after_new: None,
    }
}

/// Adds the statistics to a reference batch whose kept images are written, and completes it.
fn finish_reference(
    mut writer: ImageNpzWriter,
    pool: &GaussianAccumulator,
    spatial: &GaussianAccumulator,
) -> Result<()> {
    let pool = pool.finalize().context("pool statistics")?;
    let spatial = spatial.finalize().context("spatial statistics")?;
    writer.add_array("mu", &pool.mu)?;
    writer.add_array("sigma", &pool.sigma)?;
    writer.add_array("mu_s", &spatial.mu)?;
    writer.add_array("sigma_s", &spatial.sigma)?;
    writer.finish()?;
    Ok(())
}

/// The number of images at `data`, checked to be enough for statistics.
fn count_images(data: &Path, crop: Option<usize>) -> Result<usize> {
    let total = crate::data::open_images(data, crop, 1)?.len();
    anyhow::ensure!(
        total >= 2,
        "{}: statistics need at least 2 images, found {total}",
        data.display()
    );
    Ok(total)
}

/// Writes the reference batch of the images at `data` to `out`; returns (images, kept).
pub fn reference_batch(data: &Path, out: &Path, config: &StatsConfig) -> Result<(usize, usize)> {
    let batch_size = config.inception.batch_size;
    let total = count_images(data, config.crop)?;
    let mut source = crate::data::open_images(data, config.crop, batch_size)?;
    let (height, width) = source.image_size();
    let keep = config.keep_images.min(total);
    let kept = kept_indices(total, keep, config.seed);
    let weights = config.inception.locate()?;
    let extractor = config.inception.load(&weights)?;
    let mut stats = StatsStage {
        extractor: &extractor,
        pool: GaussianAccumulator::new(DIMS[0]),
        spatial: GaussianAccumulator::new(DIMS[1]),
    };
    let mut images = NpzStage::subset(ImageNpzWriter::create(out, keep, height, width)?, kept);
    let settings = stats_settings(data, config, keep, &weights)?;
    let pass_config = pass_config(config, sibling(out, ".journal"), settings, config.resume);
    let outcome = pass::run(
        &pass_config,
        source.as_mut(),
        &mut [&mut stats, &mut images],
    )?;
    let writer = images.into_writer().context("the reference batch writer")?;
    finish_reference(writer, &stats.pool, &stats.spatial)?;
    outcome.finish()?;
    Ok((total, keep))
}

/// `stats` in this process: [`reference_batch`] on its own; in a launched job, this rank's part
/// (the features of its images, and those of its images that are in the kept subset, with their
/// indices) into `<out>.parts/`, and on rank 0 the reference batch one process would have
/// written, from every rank's part. Returns (images, kept), `None` on the ranks other than 0.
pub fn run_stats(
    data: &Path,
    out: &Path,
    config: &StatsConfig,
    distribution: &Distribution,
) -> Result<Option<(usize, usize)>> {
    if !distribution.world.is_distributed() {
        return reference_batch(data, out, config).map(Some);
    }
    let total = count_images(data, config.crop)?;
    let keep = config.keep_images.min(total);
    let weights = config.inception.locate()?;
    let settings = stats_settings(data, config, keep, &weights)?;
    let journal = sibling(out, ".journal");
    let part = RankPart::start(
        distribution,
        sibling(out, ".parts"),
        total,
        config.resume,
        &settings,
    )?;
    if part.kept(config.progress).is_none() {
        let shard = part.shard();
        let mut source =
            crate::data::open_shard(data, config.crop, config.inception.batch_size, shard)?;
        let (height, width) = source.image_size();
        let mine: Vec<usize> = kept_indices(total, keep, config.seed)
            .into_iter()
            .filter(|i| i % shard.count == shard.index)
            .collect();
        let positions = mine.iter().map(|i| i / shard.count).collect();
        let extractor = config.inception.load(&weights)?;
        let mut features = FeatureStage::new(&extractor, source.len());
        let (kept_name, kept_path) = part.file("kept");
        let mut images = NpzStage::subset(
            ImageNpzWriter::create(&kept_path, mine.len(), height, width)?,
            positions,
        );
        let pass_config = pass_config(config, part.journal(&journal), settings, part.resuming);
        let outcome = pass::run(
            &pass_config,
            source.as_mut(),
            &mut [&mut features, &mut images],
        )?;
        let mut writer = images.into_writer().context("the kept images' writer")?;
        let indices: Array1<i64> = mine.iter().map(|&i| i as i64).collect();
        writer.add_array("indices", &indices)?;
        writer.finish()?;
        let mut features = features.into_features();
        features.logits = None;
        features.indices = Some(part.indices());
        let (features_name, features_path) = part.file("features");
        features.save(&features_path)?;
        let mut run_fields = Map::new();
        run_fields.insert("image_size".into(), json!([height, width]));
        part.write_manifest(
            BTreeMap::from([
                ("features".to_owned(), features_name),
                ("kept".to_owned(), kept_name),
            ]),
            extractor.device(),
            outcome.resumed,
            run_fields,
            config.progress,
        )?;
        outcome.finish()?;
    }
    let Some(parts) = part.gather(out, config.progress)? else {
        return Ok(None);
    };
    gather_stats(&parts, out, config)?;
    clean_up(&part.dir, &journal)?;
    Ok(Some((total, keep)))
}

/// `merge OUT` for a launched `stats` job whose rank 0 did not finish the gather: writes the
/// reference batch `out` from the parts in `<out>.parts/`; returns (images, kept).
pub fn gather_stats_offline(out: &Path, config: &StatsConfig) -> Result<(usize, usize)> {
    let dir = sibling(out, ".parts");
    let parts = parts_in(&dir, out, config.progress)?;
    let counts = gather_stats(&parts, out, config)?;
    clean_up(&dir, &sibling(out, ".journal"))?;
    Ok(counts)
}

/// Writes the reference batch `out` from the ranks' `parts`: the statistics of their features
/// in image order, accumulated over the batches one process would have used, and the kept
/// images in image order. Returns (images, kept).
fn gather_stats(parts: &[Part], out: &Path, config: &StatsConfig) -> Result<(usize, usize)> {
    let first = parts.first().context("no parts to gather")?;
    let total = first.manifest.samples;
    let keep = config.keep_images.min(total);
    let features = join_part_features(parts)?;
    let dir = sibling(out, ".parts");
    let (pool, spatial) = match (&features.pool, &features.spatial) {
        (Some(pool), Some(spatial)) if pool.nrows() == total => (pool, spatial),
        _ => bail!(
            "{}: the parts do not hold pool and spatial features of all {total} images",
            dir.display()
        ),
    };
    let size = &first.manifest.run_fields["image_size"];
    let dimension = |k: usize| {
        size[k]
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .with_context(|| format!("{}: no `image_size` in run_fields", first.path.display()))
    };
    let (height, width) = (dimension(0)?, dimension(1)?);

    // The kept images: each part's in image order, merged.
    let mut readers = Vec::with_capacity(parts.len());
    let mut order: Vec<(i64, usize)> = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        let path = part_file(part, "kept")?;
        let indices = read_i64(&path, "indices")?
            .with_context(|| format!("{}: no `indices`", path.display()))?;
        let images = if indices.is_empty() {
            None
        } else {
            let images = NpzImages::open(&path, 16)?;
            anyhow::ensure!(
                images.len() == indices.len(),
                "{}: {} images for {} indices",
                path.display(),
                images.len(),
                indices.len()
            );
            Some(images)
        };
        order.extend(indices.iter().map(|&i| (i, k)));
        readers.push(images);
    }
    order.sort_unstable();
    let expected: Vec<i64> = kept_indices(total, keep, config.seed)
        .into_iter()
        .map(|i| i as i64)
        .collect();
    let got: Vec<i64> = order.iter().map(|&(i, _)| i).collect();
    anyhow::ensure!(
        got == expected,
        "{}: the parts keep {} images, not the {keep} of the seeded subset (--keep-images {}, --seed {})",
        dir.display(),
        got.len(),
        config.keep_images,
        config.seed
    );
    let mut writer = ImageNpzWriter::create(out, keep, height, width)?;
    for &(index, k) in &order {
        let images = readers[k]
            .as_mut()
            .context("kept images of a part without any")?;
        let image = images
            .next_batch(1)?
            .with_context(|| format!("{}: ended before image {index}", images.describe()))?;
        writer.push(image.index_axis(Axis(0), 0))?;
    }

    let batch = config.inception.batch_size.max(1);
    let mut pool_stats = GaussianAccumulator::new(DIMS[0]);
    let mut spatial_stats = GaussianAccumulator::new(DIMS[1]);
    for (p, s) in pool
        .axis_chunks_iter(Axis(0), batch)
        .zip(spatial.axis_chunks_iter(Axis(0), batch))
    {
        pool_stats.add_batch_f32(p)?;
        spatial_stats.add_batch_f32(s)?;
    }
    finish_reference(writer, &pool_stats, &spatial_stats)?;
    Ok((total, keep))
}
