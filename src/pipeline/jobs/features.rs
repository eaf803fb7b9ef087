//! `features`: the features of a set of images (an npz or a folder) into one file, in one
//! journaled pass through [`crate::pipeline::stages::features::FeatureStage`]; under a launcher,
//! split over the ranks (see [`crate::dist`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ndarray::Array1;
use serde_json::{json, Map, Value};

use crate::data::ImageSource;
use crate::dist::part::PartReport;
use crate::dist::{Distribution, JobRun, Part, RankPart, ShardedJob};
use crate::feature_set::{Extractor, FeatureSet};
use crate::layout::RunLayout;
use crate::pipeline::feature_cache::image_settings;
use crate::pipeline::inception::{InceptionConfig, InceptionWeights};
use crate::pipeline::parts::{join_part_features, write_features_part};
use crate::pipeline::pass::{JournalConfig, PassConfig, PassOutcome};
use crate::pipeline::stages::features::FeatureStage;
use crate::progress::Progress;

use super::settings::JobDescription;

/// `features`: the Inception features of the images in `images` (an npz or a folder, cropped to
/// `crop`), written to `out`; journaled beside `out`, so a large extraction resumes with
/// `resume`. Shards of `sample --shard` keep their sample `indices` for `merge`. In a launched
/// job every rank extracts its images' features into `<out>.parts/` and rank 0 joins them into
/// `out`; the other ranks return `None`.
pub fn extract_to_file(
    images: &Path,
    crop: Option<usize>,
    inception: &InceptionConfig,
    out: &Path,
    resume: bool,
    progress: Progress,
    distribution: &Distribution,
) -> Result<Option<FeatureSet>> {
    crate::io::ensure_distinct(images, out)?;
    crate::io::check_output_file(out)?;
    let weights = inception.locate()?;
    let settings = feature_settings(images, crop, inception, &weights)?;
    let total = crate::data::open_images(images, crop, 1)?.len();
    read_input_indices(images, total)?;
    let mut job = FeatureJob {
        images,
        crop,
        network: Some((inception, &weights)),
        settings: settings.clone(),
        progress,
    };
    let run = JobRun {
        distribution,
        layout: RunLayout::file(out),
        total,
        shard: None,
        resume,
        settings,
        progress,
        description: JobDescription::Features {
            images: crate::io::absolute(images),
        }
        .to_value(),
    };
    crate::dist::job::run(&mut job, run)
}

/// `merge OUT` for a launched `features` job whose rank 0 did not finish the gather: joins the
/// parts in `<out>.parts/` into `out`.
pub fn gather_features_offline(
    images: &Path,
    out: &Path,
    progress: Progress,
) -> Result<FeatureSet> {
    let mut job = FeatureJob {
        images,
        crop: None,
        network: None,
        settings: Map::new(),
        progress,
    };
    let (features, _) =
        crate::dist::job::gather_offline(&mut job, &RunLayout::file(out), progress)?;
    Ok(features)
}

/// The `features` job: the features of a set of images into one file.
struct FeatureJob<'a> {
    images: &'a Path,
    crop: Option<usize>,
    /// The network and its weights, located before any long work (none for a gather offline,
    /// which runs no network).
    network: Option<(&'a InceptionConfig, &'a InceptionWeights)>,
    settings: Map<String, Value>,
    progress: Progress,
}

impl FeatureJob<'_> {
    /// The features of this rank's images, the pass (whose journal goes once they are written)
    /// and the device they were computed on.
    fn run_shard(&self, rank: &RankPart<'_>) -> Result<(FeatureSet, PassOutcome, tch::Device)> {
        let (inception, weights) = self.network.context("the feature network")?;
        let mut source =
            crate::data::open_shard(self.images, self.crop, inception.batch_size, rank.shard())?;
        let extractor = inception.load(weights)?;
        let config = pass_config(
            inception,
            self.progress,
            rank.journal(),
            self.settings.clone(),
            rank.resuming,
        );
        let (features, outcome) = extract(source.as_mut(), &extractor, self.images, config)?;
        Ok((features, outcome, extractor.device()))
    }
}

impl ShardedJob for FeatureJob<'_> {
    type Output = FeatureSet;

    fn write_output(&mut self, rank: &RankPart<'_>) -> Result<FeatureSet> {
        let (mut features, outcome, _) = self.run_shard(rank)?;
        features.indices = read_input_indices(self.images, features.len())?;
        features.save(rank.layout.output())?;
        outcome.finish()?;
        Ok(features)
    }

    fn write_part(&mut self, rank: &RankPart<'_>) -> Result<()> {
        let (mut features, outcome, device) = self.run_shard(rank)?;
        let (name, path) = rank.file("features");
        write_features_part(&mut features, &rank.indices(), &path)?;
        let (rank_record, timing) = rank.image_job_record(device, outcome.resumed);
        rank.write_manifest(
            PartReport {
                files: BTreeMap::from([("features".to_owned(), name)]),
                rank_record,
                timing,
                run_fields: Map::new(),
            },
            self.progress,
        )?;
        outcome.finish()?;
        Ok(())
    }

    /// The ranks' features joined in image order into the output, with the input's own
    /// `indices`.
    fn join_parts(&mut self, parts: &[Part], layout: &RunLayout) -> Result<FeatureSet> {
        let mut features = join_part_features(parts)?;
        let total = parts.first().map_or(0, |p| p.manifest.samples);
        anyhow::ensure!(
            features.len() == total,
            "{}: the parts hold features of {} of the {total} images",
            layout.parts().display(),
            features.len()
        );
        features.indices = read_input_indices(self.images, total)?;
        features.save(layout.output())?;
        Ok(features)
    }
}

/// The `indices` of a sharded sample npz (none for folders and whole sets), checked against its
/// `count` images.
fn read_input_indices(images: &Path, count: usize) -> Result<Option<Array1<i64>>> {
    if images.is_dir() {
        return Ok(None);
    }
    let indices = crate::io::read_i64(images, "indices")?;
    if let Some(indices) = &indices {
        anyhow::ensure!(
            indices.len() == count,
            "{}: {} indices for {count} images",
            images.display(),
            indices.len(),
        );
    }
    Ok(indices.map(Into::into))
}

/// Everything that decides the features of `images`.
fn feature_settings(
    images: &Path,
    crop: Option<usize>,
    inception: &InceptionConfig,
    weights: &InceptionWeights,
) -> Result<Map<String, Value>> {
    let mut settings = image_settings(images, crop)?;
    settings.insert("resize".into(), json!(inception.resize.name()));
    settings.insert("inception_sha256".into(), json!(weights.sha256));
    settings.insert("batch_size".into(), json!(inception.batch_size));
    Ok(settings)
}

fn pass_config(
    inception: &InceptionConfig,
    progress: Progress,
    journal: PathBuf,
    settings: Map<String, Value>,
    resume: bool,
) -> PassConfig {
    PassConfig {
        label: "inception",
        batch_size: inception.batch_size,
        progress,
        journal: Some(JournalConfig {
            dir: journal,
            settings,
            resume,
        }),
        stop_after_new: None,
    }
}

/// The features of every image of `source` (read from `images`), in one journaled pass.
fn extract(
    source: &mut dyn ImageSource,
    extractor: &Extractor,
    images: &Path,
    config: PassConfig,
) -> Result<(FeatureSet, PassOutcome)> {
    let mut stage = FeatureStage::new(extractor, source.len());
    let outcome = crate::pipeline::pass::run(&config, source, &mut [&mut stage])
        .with_context(|| format!("features of {}", images.display()))?;
    Ok((stage.into_features(), outcome))
}
