//! Inception features as a pass stage: every batch's `pool`, `spatial` and `logits` rows go into
//! arrays allocated once at their final size, and into the journal, so a resumed run reads the
//! finished rows back bit for bit instead of running the network again.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ndarray::{s, Array1, Array2, Array4};
use serde_json::{json, Map, Value};

use super::gather::{join_part_features, Distribution, Part};
use super::inception::{InceptionConfig, InceptionWeights};
use super::journal::StreamSpec;
use super::pass::{crash_point, JournalConfig, PassConfig, PassOutcome, Stage};
use super::split::{clean_up, parts_in, RankPart};
use crate::data::ImageSource;
use crate::features::{Extractor, FeatureSet};
use crate::models::inception::{LOGITS_DIM, POOL_DIM, SPATIAL_DIM};
use crate::progress::Progress;

const NAMES: [&str; 3] = ["pool", "spatial", "logits"];
const DIMS: [usize; 3] = [POOL_DIM as usize, SPATIAL_DIM as usize, LOGITS_DIM as usize];

/// Collects the features of `total` images.
pub struct FeatureStage<'e> {
    extractor: &'e Extractor,
    outputs: [Array2<f32>; 3],
    /// Time spent in the network.
    pub elapsed: Duration,
}

impl<'e> FeatureStage<'e> {
    /// Room for `total` images' features.
    pub fn new(extractor: &'e Extractor, total: usize) -> Self {
        FeatureStage {
            extractor,
            outputs: DIMS.map(|dim| Array2::zeros((total, dim))),
            elapsed: Duration::ZERO,
        }
    }

    /// The collected features.
    pub fn into_features(self) -> FeatureSet {
        let [pool, spatial, logits] = self.outputs;
        FeatureSet {
            pool: Some(pool),
            spatial: Some(spatial),
            logits: Some(logits),
            indices: None,
        }
    }
}

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
        NAMES
            .iter()
            .zip(DIMS)
            .map(|(name, dim)| StreamSpec::new(*name, dim * 4))
            .collect()
    }

    fn process(&mut self, positions: Range<usize>, images: &Array4<u8>) -> Result<Vec<Vec<u8>>> {
        let start = Instant::now();
        let arrays = self.extractor.extract_batch(images)?;
        self.elapsed += start.elapsed();
        crash_point("features");
        let mut records = Vec::with_capacity(3);
        for (out, array) in self.outputs.iter_mut().zip(arrays) {
            out.slice_mut(s![positions.clone(), ..]).assign(&array);
            records.push(rows_to_record(&array));
        }
        Ok(records)
    }

    fn restore(
        &mut self,
        positions: Range<usize>,
        _images: Option<&Array4<u8>>,
        records: &[Vec<u8>],
    ) -> Result<()> {
        for ((out, bytes), dim) in self.outputs.iter_mut().zip(records).zip(DIMS) {
            let rows = rows_from_record(bytes, positions.len(), dim)?;
            out.slice_mut(s![positions.clone(), ..]).assign(&rows);
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
    let weights = inception.locate()?;
    let settings = feature_settings(images, crop, inception, &weights)?;
    let journal = sibling(out, ".journal");
    if !distribution.world.is_distributed() {
        let mut source = crate::data::open_images(images, crop, inception.batch_size)?;
        let input_indices = read_input_indices(images, source.len())?;
        let extractor = inception.load(&weights)?;
        let (mut features, outcome) = extract(
            source.as_mut(),
            &extractor,
            images,
            pass_config(inception, progress, journal, settings, resume),
        )?;
        features.indices = input_indices;
        features.save(out)?;
        outcome.finish()?;
        return Ok(Some(features));
    }
    let total = crate::data::open_images(images, crop, 1)?.len();
    let part = RankPart::start(
        distribution,
        sibling(out, ".parts"),
        total,
        resume,
        &settings,
    )?;
    if part.kept(progress).is_none() {
        let mut source = crate::data::open_shard(images, crop, inception.batch_size, part.shard())?;
        let extractor = inception.load(&weights)?;
        let config = pass_config(
            inception,
            progress,
            part.journal(&journal),
            settings,
            part.resuming,
        );
        let (mut features, outcome) = extract(source.as_mut(), &extractor, images, config)?;
        features.indices = Some(part.indices());
        let (name, path) = part.file("features");
        features.save(&path)?;
        part.write_manifest(
            BTreeMap::from([("features".to_owned(), name)]),
            extractor.device(),
            outcome.resumed,
            Map::new(),
            progress,
        )?;
        outcome.finish()?;
    }
    let Some(parts) = part.gather(out, progress)? else {
        return Ok(None);
    };
    let features = gather_features(&parts, images, out)?;
    clean_up(&part.dir, &journal)?;
    Ok(Some(features))
}

/// `merge OUT` for a launched `features` job whose rank 0 did not finish the gather: joins the
/// parts in `<out>.parts/` into `out`.
pub fn gather_features_offline(
    images: &Path,
    out: &Path,
    progress: Progress,
) -> Result<FeatureSet> {
    let dir = sibling(out, ".parts");
    let parts = parts_in(&dir, out, progress)?;
    let features = gather_features(&parts, images, out)?;
    clean_up(&dir, &sibling(out, ".journal"))?;
    Ok(features)
}

/// The ranks' features joined in image order into `out`, with the input's own `indices`.
fn gather_features(parts: &[Part], images: &Path, out: &Path) -> Result<FeatureSet> {
    let mut features = join_part_features(parts)?;
    let total = parts.first().map_or(0, |p| p.manifest.samples);
    anyhow::ensure!(
        features.len() == total,
        "{}: the parts hold features of {} of the {total} images",
        sibling(out, ".parts").display(),
        features.len()
    );
    features.indices = read_input_indices(images, total)?;
    features.save(out)?;
    Ok(features)
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

/// `path` with `suffix` appended to its file name (`out.npz` -> `out.npz.journal`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
