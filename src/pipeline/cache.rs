//! Features of image files cached by content: the images' fingerprint, the crop, the
//! preprocessing mode and the Inception weights' sha256 name the cache entry, so a rerun with
//! another reference or metric reuses them and any change to the images or weights does not.
//! Extraction into the cache is journaled, so an interrupted reference extraction resumes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Map};

use super::inception::{InceptionConfig, InceptionWeights};
use super::pass::{self, JournalConfig, PassConfig};
use super::FeatureStage;
use crate::features::{sha256_file, Extractor, FeatureSet};
use crate::progress::Progress;

/// The feature cache of a run, with the network loaded on first need and kept for the run.
pub struct FeatureCache {
    dir: PathBuf,
    config: InceptionConfig,
    weights: InceptionWeights,
    extractor: Option<Extractor>,
    progress: Progress,
}

impl FeatureCache {
    /// A cache in `dir` for the Inception of `config` (weights located and hashed now, loaded
    /// later, only if some features are not cached).
    pub fn new(dir: PathBuf, config: InceptionConfig, progress: Progress) -> Result<Self> {
        Ok(FeatureCache {
            dir,
            weights: config.locate()?,
            config,
            extractor: None,
            progress,
        })
    }

    /// The cache folder of runs written to `out_dir`: `<parent>/.feature-cache`, shared by
    /// sibling runs.
    pub fn dir_for(out_dir: &Path) -> PathBuf {
        out_dir
            .parent()
            .map(|p| p.join(".feature-cache"))
            .unwrap_or_else(|| PathBuf::from(".feature-cache"))
    }

    /// The located weights.
    pub fn weights(&self) -> &InceptionWeights {
        &self.weights
    }

    /// The Inception settings.
    pub fn config(&self) -> &InceptionConfig {
        &self.config
    }

    /// The loaded network (loaded now if it is not yet).
    pub fn extractor(&mut self) -> Result<&Extractor> {
        if self.extractor.is_none() {
            self.extractor = Some(self.config.load(&self.weights)?);
        }
        self.extractor.as_ref().context("extractor loaded")
    }

    /// Unloads the network (its memory is wanted by the metric stage).
    pub fn release(&mut self) {
        self.extractor = None;
    }

    /// The features of the images in the npz or folder at `images`, centre-cropped to `crop`
    /// when given (ADM's `center_crop_arr`), from the cache or freshly extracted.
    pub fn features_of(&mut self, images: &Path, crop: Option<usize>) -> Result<FeatureSet> {
        let content = content_fingerprint(images)?;
        let crop_tag = crop.map(|s| format!("-crop{s}")).unwrap_or_default();
        let entry = self.dir.join(format!(
            "{}{crop_tag}-{}-{}.npz",
            &content[..24],
            self.config.resize.name(),
            &self.weights.sha256[..12]
        ));
        if entry.is_file() {
            match FeatureSet::load(&entry) {
                Ok(features) => {
                    tracing::info!(
                        "features of {} from the cache ({})",
                        images.display(),
                        entry.display()
                    );
                    return Ok(features);
                }
                Err(e) => tracing::warn!("ignoring unreadable cache entry: {e}"),
            }
        }
        // The images are checked before the network is loaded.
        let mut source = crate::data::open_images(images, crop, self.config.batch_size)?;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the feature cache {}", self.dir.display()))?;
        let progress = self.progress;
        let batch_size = self.config.batch_size;
        let extractor = self.extractor()?;
        let mut stage = FeatureStage::new(extractor, source.len());
        let mut settings = Map::new();
        settings.insert("entry".into(), json!(entry.display().to_string()));
        settings.insert("batch_size".into(), json!(batch_size));
        let config = PassConfig {
            label: "inception",
            batch_size,
            progress,
            journal: Some(JournalConfig {
                dir: entry.with_extension("journal"),
                settings,
                // The entry name already fingerprints the images and the network.
                resume: true,
            }),
            stop_after_new: None,
        };
        let outcome = pass::run(&config, source.as_mut(), &mut [&mut stage])?;
        let features = stage.into_features();
        features.save(&entry)?;
        outcome.finish()?;
        Ok(features)
    }
}

/// What identifies a set of images for the cache: a file's sha256; for a folder, the sha256 of its
/// image files' relative paths, sizes and modification times (hashing every image would cost as
/// much as a large part of the evaluation).
pub fn content_fingerprint(images: &Path) -> Result<String> {
    if !images.is_dir() {
        return sha256_file(images).with_context(|| format!("cannot read {}", images.display()));
    }
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for file in crate::data::folder::list_images(images)? {
        let meta =
            std::fs::metadata(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let relative = file.strip_prefix(images).unwrap_or(&file);
        hasher.update(format!(
            "{}\0{}\0{modified}\n",
            relative.display(),
            meta.len()
        ));
    }
    Ok(format!("{:x}", hasher.finalize()))
}
