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
        // The images are checked before the networks are loaded, and their count is what a cache
        // entry must have.
        let mut source = crate::data::open_images(images, crop, self.config.batch_size)?;
        let crop_tag = crop.map(|s| format!("-crop{s}")).unwrap_or_default();
        // Each entry is named by a prefix of its key and sealed to the whole key.
        let entry_of = |network: Network| -> Result<(PathBuf, String)> {
            let sha = self
                .weights
                .sha256_of(network)
                .with_context(|| format!("no {} weights located", network.name()))?;
            // Inception's features depend on the resize mode; the others' preprocessing is fixed.
            let mode = match network {
                Network::Inception => self.config.resize.name(),
                other => other.name(),
            };
            let file = format!("{}{crop_tag}-{mode}-{}.npz", &content[..24], &sha[..12]);
            Ok((
                self.dir.join(file),
                format!("{content}{crop_tag}-{mode}-{sha}"),
            ))
        };
        let mut features = FeatureSet::default();
        let mut missing = Vec::new();
        for network in self.weights.networks() {
            let (entry, key) = entry_of(network)?;
            if entry.is_file() {
                match FeatureSet::load_sealed(&entry, &key, source.len(), &expected_widths(network))
                {
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
                    Err(e) => tracing::warn!(
                        "cache entry not used, {} features computed again: {e}",
                        network.name()
                    ),
                }
            }
            missing.push((network, entry, key));
        }
        let Some((_, first_entry, _)) = missing.first() else {
            return Ok(features);
        };
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
        let networks: Vec<Network> = missing.iter().map(|(n, _, _)| *n).collect();
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
        for (network, entry, key) in missing.iter().filter(|_| cached) {
            if let Err(e) = extracted.of(*network).save_sealed(entry, key) {
                tracing::warn!("features not cached (the run goes on): {e}");
            }
        }
        features.absorb(extracted);
        outcome.finish()?;
        Ok(features)
    }
}

/// The widths a cache entry of `network`'s features must have (DINOv2's and CLIP's depend on
/// the model, which their seal's weights sha256 already pins).
fn expected_widths(network: Network) -> Vec<(&'static str, Option<usize>)> {
    use crate::models::inception::{LOGITS_DIM, POOL_DIM, SPATIAL_DIM};
    match network {
        Network::Inception => vec![
            ("pool", Some(POOL_DIM as usize)),
            ("spatial", Some(SPATIAL_DIM as usize)),
            ("logits", Some(LOGITS_DIM as usize)),
        ],
        other => other.outputs().iter().map(|&name| (name, None)).collect(),
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

/// What identifies a set of images: a file's sha256; for a folder, the sha256 of its image files'
/// relative paths and contents' sha256, so an image changed at the same size and modification
/// time is a new set. Files are hashed in parallel, and once per process
/// ([`crate::io::content_sha256`]): reading the images again costs little next to decoding them.
pub fn content_fingerprint(images: &Path) -> Result<String> {
    let hash = |file: &Path| {
        crate::io::content_sha256(file).with_context(|| format!("cannot read {}", file.display()))
    };
    if !images.is_dir() {
        return hash(images);
    }
    use rayon::prelude::*;
    use sha2::Digest;
    let files = crate::data::folder::list_images(images)?;
    let hashes = files
        .par_iter()
        .map(|file| hash(file))
        .collect::<Result<Vec<_>>>()?;
    let mut hasher = sha2::Sha256::new();
    for (file, sha256) in files.iter().zip(hashes) {
        let relative = file.strip_prefix(images).unwrap_or(file);
        hasher.update(format!("{}\0{sha256}\n", relative.display()));
    }
    Ok(format!("{:x}", hasher.finalize()))
}
