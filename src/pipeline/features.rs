//! Inception features as a pass stage: every batch's `pool`, `spatial` and `logits` rows go into
//! arrays allocated once at their final size, and into the journal, so a resumed run reads the
//! finished rows back bit for bit instead of running the network again.

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::Result;
use ndarray::{s, Array2, Array4};

use super::journal::StreamSpec;
use super::pass::{crash_point, Stage};
use crate::features::{Extractor, FeatureSet};
use crate::models::inception::{LOGITS_DIM, POOL_DIM, SPATIAL_DIM};

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
/// `resume`. Shards of `sample --shard` keep their sample `indices` for `merge`.
pub fn extract_to_file(
    images: &std::path::Path,
    crop: Option<usize>,
    inception: &super::InceptionConfig,
    out: &std::path::Path,
    resume: bool,
    progress: crate::progress::Progress,
) -> Result<FeatureSet> {
    use anyhow::Context as _;
    let mut source = crate::data::open_images(images, crop, inception.batch_size)?;
    let indices = if images.is_dir() {
        None
    } else {
        crate::io::read_i64(images, "indices")?
    };
    if let Some(indices) = &indices {
        anyhow::ensure!(
            indices.len() == source.len(),
            "{}: {} indices for {} images",
            images.display(),
            indices.len(),
            source.len()
        );
    }
    let weights = inception.locate()?;
    let extractor = inception.load(&weights)?;
    let mut stage = FeatureStage::new(&extractor, source.len());
    let mut settings = serde_json::Map::new();
    settings.insert(
        "images".into(),
        serde_json::json!(super::cache::content_fingerprint(images)?),
    );
    settings.insert("crop".into(), serde_json::json!(crop));
    settings.insert("resize".into(), serde_json::json!(inception.resize.name()));
    settings.insert("inception_sha256".into(), serde_json::json!(weights.sha256));
    settings.insert("batch_size".into(), serde_json::json!(inception.batch_size));
    let config = super::PassConfig {
        label: "inception",
        batch_size: inception.batch_size,
        progress,
        journal: Some(super::JournalConfig {
            dir: sibling(out, ".journal"),
            settings,
            resume,
        }),
        stop_after_new: None,
    };
    let outcome = super::pass::run(&config, source.as_mut(), &mut [&mut stage])
        .with_context(|| format!("features of {}", images.display()))?;
    let mut features = stage.into_features();
    features.indices = indices.map(Into::into);
    features.save(out)?;
    outcome.finish()?;
    Ok(features)
}

/// `path` with `suffix` appended to its file name (`out.npz` -> `out.npz.journal`).
pub fn sibling(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    std::path::PathBuf::from(name)
}
