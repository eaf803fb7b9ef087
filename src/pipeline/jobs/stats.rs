//! `stats`: an ADM-compatible reference batch from a set of images — `mu`, `sigma`, `mu_s`,
//! `sigma_s` over all of them (and `mu_dinov2`/`sigma_dinov2` with `--features inception,dinov2`),
//! plus `arr_0` with a seeded random subset for precision/recall — in one journaled pass; under a
//! launcher, split over the ranks (see [`crate::dist`]). CLIP embeddings are not stored: CMMD's
//! reference embeddings come from `arr_0` when a run evaluates against the batch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::{Array1, Axis};
use rand::SeedableRng;
use serde_json::{json, Map, Value};

use crate::data::npz::NpzImages;
use crate::data::npz_writer::ImageNpzWriter;
use crate::data::ImageSource;
use crate::dist::part::PartReport;
use crate::dist::{Distribution, JobRun, Part, RankPart, ShardedJob};
use crate::io::read_i64;
use crate::layout::RunLayout;
use crate::partition::join_order;
use crate::pipeline::feature_cache::image_settings;
use crate::pipeline::inception::InceptionWeights;
use crate::pipeline::parts::{join_part_features, write_features_part};
use crate::pipeline::pass::{self, JournalConfig, PassConfig};
use crate::pipeline::stages::features::FeatureStage;
use crate::pipeline::stages::sinks::NpzStage;
use crate::pipeline::stages::stats::{Accumulators, StatsStage};

use super::settings::{JobDescription, StatsConfig};

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
    let mut settings = image_settings(data, config.crop)?;
    settings.insert("keep_images".into(), json!(keep));
    settings.insert("seed".into(), json!(config.seed));
    settings.insert("resize".into(), json!(config.inception.resize.name()));
    settings.insert("inception_sha256".into(), json!(weights.sha256));
    settings.extend(
        weights
            .extra_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    settings.insert("batch_size".into(), json!(config.inception.batch_size));
    Ok(settings)
}

/// Adds the statistics to a reference batch whose kept images are written, and completes it.
fn finish_reference(mut writer: ImageNpzWriter, accumulators: &Accumulators) -> Result<()> {
    for (name, mu_key, sigma_key) in [
        ("pool", "mu", "sigma"),
        ("spatial", "mu_s", "sigma_s"),
        ("dinov2", "mu_dinov2", "sigma_dinov2"),
    ] {
        let Some(acc) = accumulators.get(name) else {
            anyhow::ensure!(name == "dinov2", "no {name} statistics");
            continue;
        };
        let stats = acc
            .finalize()
            .with_context(|| format!("{name} statistics"))?;
        writer.add_array(mu_key, &stats.mu)?;
        writer.add_array(sigma_key, &stats.sigma)?;
    }
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

/// `stats`: the reference batch of the images at `data` written to `out`. On its own, one
/// streamed pass accumulates the statistics; in a launched job, each rank's part holds the
/// features of its images and those of its images that are in the kept subset (with their
/// indices) in `<out>.parts/`, and rank 0 writes the reference batch one process would have
/// written from every rank's part. Returns (images, kept), `None` on the ranks other than 0.
pub fn run_stats(
    data: &Path,
    out: &Path,
    config: &StatsConfig,
    distribution: &Distribution,
) -> Result<Option<(usize, usize)>> {
    crate::io::ensure_distinct(data, out)?;
    crate::io::check_output_file(out)?;
    let total = count_images(data, config.crop)?;
    let keep = config.keep_images.min(total);
    let weights = config.inception.locate()?;
    let settings = stats_settings(data, config, keep, &weights)?;
    let mut job = StatsJob {
        data,
        config,
        weights: Some(&weights),
        settings: settings.clone(),
    };
    let run = JobRun {
        distribution,
        layout: RunLayout::file(out),
        total,
        shard: None,
        resume: config.resume,
        settings,
        progress: config.progress,
        description: JobDescription::Stats {
            config: config.with_absolute_paths(),
        }
        .to_value(),
    };
    crate::dist::job::run(&mut job, run)
}

/// `merge OUT` for a launched `stats` job whose rank 0 did not finish the gather: writes the
/// reference batch `out` from the parts in `<out>.parts/`; returns (images, kept).
pub fn gather_stats_offline(out: &Path, config: &StatsConfig) -> Result<(usize, usize)> {
    let mut job = StatsJob {
        data: Path::new(""),
        config,
        weights: None,
        settings: Map::new(),
    };
    let (counts, _) =
        crate::dist::job::gather_offline(&mut job, &RunLayout::file(out), config.progress)?;
    Ok(counts)
}

/// The `stats` job.
struct StatsJob<'a> {
    data: &'a Path,
    config: &'a StatsConfig,
    /// Located before any long work (none for a gather offline, which runs no network).
    weights: Option<&'a InceptionWeights>,
    settings: Map<String, Value>,
}

impl StatsJob<'_> {
    fn pass_config(&self, rank: &RankPart<'_>) -> PassConfig {
        PassConfig {
            label: "stats",
            batch_size: self.config.inception.batch_size,
            progress: self.config.progress,
            journal: Some(JournalConfig {
                dir: rank.journal(),
                settings: self.settings.clone(),
                resume: rank.resuming,
            }),
            stop_after_new: None,
        }
    }
}

impl ShardedJob for StatsJob<'_> {
    type Output = (usize, usize);

    /// One pass accumulates the statistics and writes the kept images.
    fn write_output(&mut self, rank: &RankPart<'_>) -> Result<(usize, usize)> {
        let config = self.config;
        let weights = self.weights.context("the feature network's weights")?;
        let total = rank.total;
        let mut source =
            crate::data::open_images(self.data, config.crop, config.inception.batch_size)?;
        let (height, width) = source.image_size();
        let keep = config.keep_images.min(total);
        let kept = kept_indices(total, keep, config.seed);
        let extractor = config.inception.load(weights)?;
        let mut stats = StatsStage::new(&extractor);
        let out = rank.layout.output();
        let mut images = NpzStage::subset(ImageNpzWriter::create(out, keep, height, width)?, kept);
        let outcome = pass::run(
            &self.pass_config(rank),
            source.as_mut(),
            &mut [&mut stats, &mut images],
        )?;
        let writer = images.into_writer().context("the reference batch writer")?;
        finish_reference(writer, stats.accumulators())?;
        outcome.finish()?;
        Ok((total, keep))
    }

    /// The rank's features and its share of the kept images, with their indices.
    fn write_part(&mut self, rank: &RankPart<'_>) -> Result<()> {
        let config = self.config;
        let weights = self.weights.context("the feature network's weights")?;
        let total = rank.total;
        let keep = config.keep_images.min(total);
        let shard = rank.shard();
        let mut source =
            crate::data::open_shard(self.data, config.crop, config.inception.batch_size, shard)?;
        let (height, width) = source.image_size();
        let mine: Vec<usize> = kept_indices(total, keep, config.seed)
            .into_iter()
            .filter(|i| i % shard.count == shard.index)
            .collect();
        let positions = mine.iter().map(|i| i / shard.count).collect();
        let extractor = config.inception.load(weights)?;
        let mut features = FeatureStage::new(&extractor, source.len());
        let (kept_name, kept_path) = rank.file("kept");
        let mut images = NpzStage::subset(
            ImageNpzWriter::create(&kept_path, mine.len(), height, width)?,
            positions,
        );
        let outcome = pass::run(
            &self.pass_config(rank),
            source.as_mut(),
            &mut [&mut features, &mut images],
        )?;
        let mut writer = images.into_writer().context("the kept images' writer")?;
        let indices: Array1<i64> = mine.iter().map(|&i| i as i64).collect();
        writer.add_array("indices", &indices)?;
        writer.finish()?;
        let mut features = features.into_features();
        features.logits = None;
        let (features_name, features_path) = rank.file("features");
        write_features_part(&mut features, &rank.indices(), &features_path)?;
        let mut run_fields = Map::new();
        run_fields.insert("image_size".into(), json!([height, width]));
        let (rank_record, timing) = rank.image_job_record(extractor.device(), outcome.resumed);
        rank.write_manifest(
            PartReport {
                files: BTreeMap::from([
                    ("features".to_owned(), features_name),
                    ("kept".to_owned(), kept_name),
                ]),
                rank_record,
                timing,
                run_fields,
            },
            config.progress,
        )?;
        outcome.finish()?;
        Ok(())
    }

    fn join_parts(&mut self, parts: &[Part], layout: &RunLayout) -> Result<(usize, usize)> {
        gather_stats(parts, layout, self.config)
    }
}

/// Writes the reference batch `out` from the ranks' `parts`: the statistics of their features
/// in image order, accumulated over the batches one process would have used, and the kept
/// images in image order. Returns (images, kept).
fn gather_stats(
    parts: &[Part],
    layout: &RunLayout,
    config: &StatsConfig,
) -> Result<(usize, usize)> {
    let out = layout.output();
    let first = parts.first().context("no parts to gather")?;
    let total = first.manifest.samples;
    let keep = config.keep_images.min(total);
    let features = join_part_features(parts)?;
    let dir = layout.parts();
    let complete = |name: &str| features.get(name).is_some_and(|f| f.nrows() == total);
    if !complete("pool") || !complete("spatial") {
        bail!(
            "{}: the parts do not hold pool and spatial features of all {total} images",
            dir.display()
        );
    }
    let size = &first.manifest.run_fields["image_size"];
    let dimension = |k: usize| {
        size[k]
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .with_context(|| format!("{}: no `image_size` in run_fields", first.path.display()))
    };
    let (height, width) = (dimension(0)?, dimension(1)?);

    // The kept images: each part's in image order, joined.
    let mut readers = Vec::with_capacity(parts.len());
    let mut indices = Vec::with_capacity(parts.len());
    for part in parts {
        let path = part.require_file("kept")?;
        let kept = read_i64(&path, "indices")?
            .with_context(|| format!("{}: no `indices`", path.display()))?;
        let images = if kept.is_empty() {
            None
        } else {
            let images = NpzImages::open(&path, 16)?;
            anyhow::ensure!(
                images.len() == kept.len(),
                "{}: {} images for {} indices",
                path.display(),
                images.len(),
                kept.len()
            );
            Some(images)
        };
        indices.push(kept);
        readers.push(images);
    }
    let order = join_order(&indices, None)
        .with_context(|| format!("{}: the parts' kept images", dir.display()))?;
    let expected: Vec<i64> = kept_indices(total, keep, config.seed)
        .into_iter()
        .map(|i| i as i64)
        .collect();
    let got: Vec<i64> = order.iter().map(|p| p.index).collect();
    anyhow::ensure!(
        got == expected,
        "{}: the parts keep {} images, not the {keep} of the seeded subset (--keep-images {}, --seed {})",
        dir.display(),
        got.len(),
        config.keep_images,
        config.seed
    );
    let mut writer = ImageNpzWriter::create(out, keep, height, width)?;
    for placement in &order {
        // Each part's kept indices increase, so its images are read in file order.
        let images = readers[placement.part]
            .as_mut()
            .context("kept images of a part without any")?;
        let image = images.next_batch(1)?.with_context(|| {
            format!(
                "{}: ended before image {}",
                images.describe(),
                placement.index
            )
        })?;
        writer.push(image.index_axis(Axis(0), 0))?;
    }

    let batch = config.inception.batch_size.max(1);
    let mut accumulators = Accumulators::for_features(&features);
    let names = accumulators.names();
    for name in names {
        let rows = features.get(name).context("joined features")?;
        for chunk in rows.axis_chunks_iter(Axis(0), batch) {
            accumulators.add(name, chunk)?;
        }
    }
    finish_reference(writer, &accumulators)?;
    Ok((total, keep))
}
