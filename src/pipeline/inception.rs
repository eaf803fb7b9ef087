//! Which feature networks a run uses — the FID Inception-V3 always, DINOv2 and CLIP when asked
//! for — with their weights, preprocessing, device and batch size, and loading them: located and
//! fingerprinted first, loaded only when some images actually need features.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::device::DeviceChoice;
use crate::feature_set::{is_released_inception, sha256_file, Extractor, Network};
use crate::models::inception::{self, Resize};
use crate::models::{clip, dinov2};
use crate::weight_files;

/// The Inception side of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InceptionConfig {
    /// The weights file; `None`: `$LLAMAGEN_EVAL_INCEPTION`, else the cache directory.
    pub weights: Option<PathBuf>,
    /// Preprocessing.
    pub resize: Resize,
    /// Where the network runs.
    pub device: DeviceChoice,
    /// Images per forward pass.
    pub batch_size: usize,
    /// DINOv2 beside Inception (FD_DINOv2), when asked for.
    pub dinov2: Option<ExtraNetwork>,
    /// CLIP's vision tower beside Inception (CMMD), when asked for.
    pub clip: Option<ExtraNetwork>,
}

impl Default for InceptionConfig {
    fn default() -> Self {
        InceptionConfig {
            weights: None,
            resize: Resize::Adm,
            device: DeviceChoice::Auto,
            batch_size: 50,
            dinov2: None,
            clip: None,
        }
    }
}

/// A feature network beyond Inception: where its weights are and, for widths the released
/// files do not have, its head count.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ExtraNetwork {
    /// The weights file; `None`: the network's environment variable, else the cache directory.
    pub weights: Option<PathBuf>,
    /// Attention heads (released widths know theirs).
    pub heads: Option<i64>,
}

/// A network's weights located and fingerprinted.
#[derive(Debug, Clone)]
pub struct LocatedWeights {
    /// The file.
    pub path: PathBuf,
    /// Its sha256 (hex): part of the feature-cache key of the network's features.
    pub sha256: String,
    /// Attention heads, when given.
    pub heads: Option<i64>,
}

/// The run's feature networks' weights located and fingerprinted, not yet loaded.
#[derive(Debug, Clone)]
pub struct InceptionWeights {
    /// The Inception file.
    pub path: PathBuf,
    /// Its sha256 (hex), recorded in every run and part of every feature-cache key.
    pub sha256: String,
    /// DINOv2's, when the run uses it.
    pub dinov2: Option<LocatedWeights>,
    /// CLIP's, when the run uses it.
    pub clip: Option<LocatedWeights>,
}

impl InceptionWeights {
    /// The networks the run uses, in [`Network::ALL`] order.
    pub fn networks(&self) -> Vec<Network> {
        Network::with(self.dinov2.is_some(), self.clip.is_some())
    }

    /// Run-record and fingerprint fields of the networks beyond Inception: `feature_networks`
    /// and each one's `<name>_sha256` (nothing for an Inception-only run, whose records keep
    /// their form).
    pub fn extra_fields(&self) -> Vec<(&'static str, serde_json::Value)> {
        let networks = self.networks();
        if networks.len() == 1 {
            return Vec::new();
        }
        let mut fields = vec![(
            "feature_networks",
            serde_json::json!(networks.iter().map(|n| n.name()).collect::<Vec<_>>()),
        )];
        if let Some(w) = &self.dinov2 {
            fields.push(("dinov2_sha256", serde_json::json!(w.sha256)));
        }
        if let Some(w) = &self.clip {
            fields.push(("clip_sha256", serde_json::json!(w.sha256)));
        }
        fields
    }

    /// The sha256 of `network`'s weights.
    pub fn sha256_of(&self, network: Network) -> Option<&str> {
        match network {
            Network::Inception => Some(&self.sha256),
            Network::Dinov2 => self.dinov2.as_ref().map(|w| w.sha256.as_str()),
            Network::Clip => self.clip.as_ref().map(|w| w.sha256.as_str()),
        }
    }
}

fn locate_extra(
    file: weight_files::NetworkFile,
    choice: Option<&ExtraNetwork>,
) -> Result<Option<LocatedWeights>> {
    let Some(choice) = choice else {
        return Ok(None);
    };
    let source = weight_files::network_weights(file, choice.weights.clone());
    let path = source.path();
    if !path.is_file() {
        anyhow::bail!("{}", source.missing());
    }
    let sha256 = sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(LocatedWeights {
        path: path.clone(),
        sha256,
        heads: choice.heads,
    }))
}

impl InceptionConfig {
    /// The same settings with every weights file named from the filesystem root.
    pub fn with_absolute_paths(&self) -> Self {
        let absolute = |network: &Option<ExtraNetwork>| {
            network.as_ref().map(|n| ExtraNetwork {
                weights: n.weights.as_deref().map(crate::io::absolute),
                ..n.clone()
            })
        };
        InceptionConfig {
            weights: self.weights.as_deref().map(crate::io::absolute),
            dinov2: absolute(&self.dinov2),
            clip: absolute(&self.clip),
            ..self.clone()
        }
    }

    /// Finds the weights file and hashes it, or says where to get it.
    pub fn locate(&self) -> Result<InceptionWeights> {
        let source = weight_files::inception_weights(self.weights.clone());
        let path = source.path();
        if !path.is_file() {
            anyhow::bail!("{}", source.missing());
        }
        let sha256 =
            sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !is_released_inception(&sha256) {
            tracing::warn!(
                "{} (sha256 {}...) is not pytorch-fid's released FID Inception file: figures will not be comparable to published ones",
                path.display(),
                &sha256[..16]
            );
        }
        Ok(InceptionWeights {
            path: path.clone(),
            sha256,
            dinov2: locate_extra(weight_files::DINOV2_FILE, self.dinov2.as_ref())?,
            clip: locate_extra(weight_files::CLIP_FILE, self.clip.as_ref())?,
        })
    }

    /// Loads located weights onto the configured device.
    pub fn load(&self, weights: &InceptionWeights) -> Result<Extractor> {
        let device = self.device.resolve().map_err(anyhow::Error::msg)?;
        let (vs, model) = inception::load(&weights.path, device)?;
        super::batch::benchmark_fixed_shapes(device);
        tracing::info!(
            "Inception-V3 loaded from {} on {device:?}",
            weights.path.display()
        );
        let mut extractor = Extractor::new(vs, model, self.resize, weights.path.clone());
        if let Some(w) = &weights.dinov2 {
            let (vs, model) = dinov2::Dinov2::load(&w.path, device, w.heads)?;
            tracing::info!("DINOv2 loaded from {}", w.path.display());
            extractor = extractor.with_dinov2(vs, model, w.path.clone());
        }
        if let Some(w) = &weights.clip {
            let heads = w.heads.map_or(clip::Heads::Auto, clip::Heads::Explicit);
            let (vs, model) = clip::ClipVisionModel::load(&w.path, device, heads)?;
            tracing::info!("CLIP vision tower loaded from {}", w.path.display());
            extractor = extractor.with_clip(vs, model, w.path.clone());
        }
        Ok(extractor)
    }
}
