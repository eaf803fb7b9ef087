//! Features of image files cached by content, one entry per feature network: the images'
//! fingerprint, the crop, the preprocessing mode (Inception's resize, or the network's name) and
//! the network's weights' sha256 name the entry, so a rerun with another reference, metric or
//! added network reuses them and any change to the images or weights does not.
//! Extraction into the cache is journaled, so an interrupted reference extraction resumes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use super::inception::{InceptionConfig, InceptionWeights};
use super::pass::{self, JournalConfig, PassConfig};
use super::stages::features::FeatureStage;
use crate::feature_set::{Extractor, FeatureSet, Network};
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
    /// when given (ADM's `center_crop_arr`), from every network of the run: each network's from
    /// its own cache entry, the missing ones extracted together in one pass over the images.
    pub fn features_of(&mut self, images: &Path, crop: Option<usize>) -> Result<FeatureSet> {
        let content = content_fingerprint(images)?;
        let crop_tag = crop.map(|s| format!("-crop{s}")).unwrap_or_default();
        let entry_of = |network: Network| -> Result<PathBuf> {
            let sha = self
                .weights
                .sha256_of(network)
                .with_context(|| format!("no {} weights located", network.name()))?;
            // Inception's features depend on the resize mode; the others' preprocessing is fixed.
            let mode = match network {
                Network::Inception => self.config.resize.name(),
                other => other.name(),
            };
            Ok(self.dir.join(format!(
                "{}{crop_tag}-{mode}-{}.npz",
                &content[..24],
                &sha[..12]
            )))
        };
        let mut features = FeatureSet::default();
        let mut missing = Vec::new();
        for network in self.weights.networks() {
            let entry = entry_of(network)?;
            if entry.is_file() {
                match FeatureSet::load(&entry) {
                    Ok(cached) => {
                        tracing::info!(
                            "{} features of {} from the cache ({})",
                            network.name(),
                            images.display(),
                            entry.display()
                        );
                        features.absorb(cached.of(network));
                        continue;
                    }
                    Err(e) => tracing::warn!("ignoring unreadable cache entry: {e}"),
                }
            }
            missing.push((network, entry));
        }
        let Some((_, first_entry)) = missing.first() else {
            return Ok(features);
        };
        // The images are checked before the networks are loaded.
        let mut source = crate::data::open_images(images, crop, self.config.batch_size)?;
        // The cache only saves time later: when its folder cannot be made (taken by a file,
        // read-only, a full disk), the features are computed without it, unjournaled.
        let cached = match std::fs::create_dir_all(&self.dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "features not cached (the run goes on): cannot create the feature cache {}: {e}",
                    self.dir.display()
                );
                false
            }
        };
        let journal_dir = crate::layout::entry_journal(first_entry);
        let networks: Vec<Network> = missing.iter().map(|(n, _)| *n).collect();
        let names: Vec<&str> = networks.iter().map(|n| n.name()).collect();
        let progress = self.progress;
        let batch_size = self.config.batch_size;
        let extractor = self.extractor()?;
        let mut stage = FeatureStage::for_networks(extractor, source.len(), networks.clone());
        let mut settings = Map::new();
        settings.insert("entry".into(), json!(first_entry.display().to_string()));
        settings.insert("batch_size".into(), json!(batch_size));
        if networks != [Network::Inception] {
            settings.insert("networks".into(), json!(names));
        }
        let config = PassConfig {
            label: if networks == [Network::Inception] {
                "inception"
            } else {
                "features"
            },
            batch_size,
            progress,
            journal: cached.then_some(JournalConfig {
                dir: journal_dir,
                settings,
                // The entry names already fingerprint the images and the networks.
                resume: true,
            }),
            stop_after_new: None,
        };
        let outcome = pass::run(&config, source.as_mut(), &mut [&mut stage])?;
        let extracted = stage.into_features();
        tracing::info!(
            "features of {} ({} images): {} in one pass",
            images.display(),
            extracted.len(),
            names.join(", ")
        );
        // Failing to fill the cache must not throw away the features just computed.
        for (network, entry) in missing.iter().filter(|_| cached) {
            if let Err(e) = extracted.of(*network).save(entry) {
                tracing::warn!("features not cached (the run goes on): {e}");
            }
        }
        features.absorb(extracted);
        outcome.finish()?;
        Ok(features)
    }
}

/// The first of a job's journal settings when it reads the images at `images`: what identifies
/// them ([`content_fingerprint`]) and their centre crop.
pub fn image_settings(images: &Path, crop: Option<usize>) -> Result<Map<String, Value>> {
    let mut settings = Map::new();
    settings.insert("images".into(), json!(content_fingerprint(images)?));
    settings.insert("crop".into(), json!(crop));
    Ok(settings)
}

/// What identifies a set of images for the cache: a file's sha256; for a folder, the sha256 of its
/// image files' relative paths, sizes and modification times (hashing every image would cost as
/// much as a large part of the evaluation).
pub fn content_fingerprint(images: &Path) -> Result<String> {
    if !images.is_dir() {
        // Hashed once per process: the run record's reference fingerprint and the cache entry
        // of the same file share one pass over it.
        return crate::io::content_sha256(images)
            .with_context(|| format!("cannot read {}", images.display()));
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
