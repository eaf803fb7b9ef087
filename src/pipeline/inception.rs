//! Which FID Inception-V3 weights, preprocessing, device and batch size a run uses, and loading
//! them — located and fingerprinted first, loaded only when some images actually need features.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cache;
use crate::device::DeviceChoice;
use crate::features::{sha256_file, Extractor, RELEASED_WEIGHTS_SHA256_PREFIX};
use crate::models::inception::{self, Resize};

/// The Inception side of a run.
#[derive(Debug, Clone)]
pub struct InceptionConfig {
    /// The weights file; `None`: `$LLAMAGEN_EVAL_INCEPTION`, else the cache directory.
    pub weights: Option<PathBuf>,
    /// Preprocessing.
    pub resize: Resize,
    /// Where the network runs.
    pub device: DeviceChoice,
    /// Images per forward pass.
    pub batch_size: usize,
}

impl Default for InceptionConfig {
    fn default() -> Self {
        InceptionConfig {
            weights: None,
            resize: Resize::Adm,
            device: DeviceChoice::Auto,
            batch_size: 50,
        }
    }
}

/// Inception weights located and fingerprinted, not yet loaded.
#[derive(Debug, Clone)]
pub struct InceptionWeights {
    /// The file.
    pub path: PathBuf,
    /// Its sha256 (hex), recorded in every run and part of every feature-cache key.
    pub sha256: String,
}

impl InceptionConfig {
    /// Finds the weights file and hashes it, or says where to get it.
    pub fn locate(&self) -> Result<InceptionWeights> {
        let source = cache::inception_weights(self.weights.clone());
        let path = source.path();
        if !path.is_file() {
            anyhow::bail!(
                "Inception weights not found: {}\n  download {} there, set ${}, or pass the file explicitly",
                source.describe(),
                cache::INCEPTION_WEIGHTS_URL,
                cache::INCEPTION_WEIGHTS_ENV
            );
        }
        let sha256 =
            sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !sha256.starts_with(RELEASED_WEIGHTS_SHA256_PREFIX) {
            tracing::warn!(
                "{} (sha256 {}...) is not pytorch-fid's released FID Inception file: figures will not be comparable to published ones",
                path.display(),
                &sha256[..16]
            );
        }
        Ok(InceptionWeights {
            path: path.clone(),
            sha256,
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
        Ok(Extractor::new(
            vs,
            model,
            self.resize,
            weights.sha256.clone(),
        ))
    }
}
