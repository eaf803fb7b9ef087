//! Inception features as a pass stage: every batch's `pool`, `spatial` and `logits` rows go into
//! arrays allocated once at their final size, and into the journal, so a resumed run reads the
//! finished rows back bit for bit instead of running the network again.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ndarray::{Array1, Array2, Array4};
use serde_json::{json, Map, Value};

use super::inception::{InceptionConfig, InceptionWeights};
use super::parts::{join_part_features, write_features_part};
use super::pass::{crash_point, JournalConfig, PassConfig, PassOutcome, Stage};
use crate::data::ImageSource;
use crate::dist::part::PartReport;
use crate::dist::{Distribution, JobRun, Part, RankPart, ShardedJob};
use crate::features::{Extractor, FeatureSet, Network};
use crate::journal::StreamSpec;
use crate::layout::RunLayout;
use crate::progress::Progress;

/// Collects the features of `total` images from each of its networks.
pub struct FeatureStage<'e> {
    extractor: &'e Extractor,
    networks: Vec<Network>,
    /// `(name, width, rows so far)` of every feature array, in the networks' order; grown batch
    /// by batch, never sized from an image count a file header claims.
    outputs: Vec<(&'static str, usize, Vec<f32>)>,
    /// Time spent in the networks.
    pub elapsed: Duration,
}

impl<'e> FeatureStage<'e> {
    /// The features of about `total` images from every network `extractor` holds.
    pub fn new(extractor: &'e Extractor, total: usize) -> Self {
        Self::for_networks(extractor, total, extractor.networks())
    }

    /// The features of about `total` images from `networks` only (each loaded in `extractor`).
    /// `total` only sizes the first allocation, capped: a source's announced count is a header's
    /// claim until its images arrive.
    pub fn for_networks(extractor: &'e Extractor, total: usize, networks: Vec<Network>) -> Self {
        let rows = total.min(RESERVED_ROWS);
        let outputs = networks
            .iter()
            .flat_map(|n| extractor.outputs(*n))
            .map(|(name, dim)| (name, dim, Vec::with_capacity(rows * dim)))
            .collect();
        FeatureStage {
            extractor,
            networks,
            outputs,
            elapsed: Duration::ZERO,
        }
    }

    /// The collected features.
    pub fn into_features(self) -> FeatureSet {
        let mut set = FeatureSet::default();
        for (name, dim, values) in self.outputs {
            let rows = Array2::from_shape_vec((values.len() / dim.max(1), dim), values)
                .expect("whole rows of `dim` values");
            if let Some(slot) = set.slot(name) {
                *slot = Some(rows);
            }
        }
        set
    }

    /// Appends a batch's rows of one array; batches arrive in order.
    fn append(
        out: &mut (&'static str, usize, Vec<f32>),
        positions: &Range<usize>,
        rows: &Array2<f32>,
    ) -> Result<()> {
        let (name, dim, values) = out;
        anyhow::ensure!(
            values.len() == positions.start * *dim && rows.dim() == (positions.len(), *dim),
            "`{name}` rows {positions:?} of width {} after {} rows of width {dim}",
            rows.ncols(),
            values.len() / (*dim).max(1)
        );
        values.extend(rows.iter());
        Ok(())
    }
}

/// Rows reserved before the first batch arrives.
const RESERVED_ROWS: usize = 4096;

/// Feature rows as little-endian f32 bytes, row after row (the journal's record format).
pub fn rows_to_record(rows: &Array2<f32>) -> Vec<u8> {
    rows.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The inverse of [`rows_to_record`]: `count` rows of `dim` features.
pub fn rows_from_record(bytes: &[u8], count: usize, dim: usize) -> Result<Array2<f32>> {
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Array2::from_shape_vec((count, dim), values)?)
}

impl Stage for FeatureStage<'_> {
    fn streams(&self) -> Vec<StreamSpec> {
        self.outputs
            .iter()
            .map(|(name, dim, _)| StreamSpec::new(*name, dim * 4))
            .collect()
    }

    fn process(&mut self, positions: Range<usize>, images: &Array4<u8>) -> Result<Vec<Vec<u8>>> {
        let start = Instant::now();
        let batch = self.extractor.extract(images, &self.networks)?;
        self.elapsed += start.elapsed();
        crash_point("features");
        let mut records = Vec::with_capacity(self.outputs.len());
        for out in self.outputs.iter_mut() {
            let name = out.0;
            let array = batch
                .get(name)
                .with_context(|| format!("the network gave no `{name}` features"))?;
            Self::append(out, &positions, array)?;
            records.push(rows_to_record(array));
        }
        Ok(records)
    }

    fn restore(
        &mut self,
        positions: Range<usize>,
        _images: Option<&Array4<u8>>,
        records: &[Vec<u8>],
    ) -> Result<()> {
        for (out, bytes) in self.outputs.iter_mut().zip(records) {
            let rows = rows_from_record(bytes, positions.len(), out.1)?;
            Self::append(out, &positions, &rows)?;
        }
        Ok(())
    }
}

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
    let mut settings = Map::new();
    settings.insert(
        "images".into(),
        json!(super::cache::content_fingerprint(images)?),
    );
    settings.insert("crop".into(), json!(crop));
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
    let outcome = super::pass::run(&config, source, &mut [&mut stage])
        .with_context(|| format!("features of {}", images.display()))?;
    Ok((stage.into_features(), outcome))
}
