//! `recon`'s configuration: the inputs, where the reconstructions come from, which figures, and
//! which of those the inputs allow ([`wanted_metrics`]).

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::choice::choice_enum;
use crate::feature_set::Network;
use crate::metric::{ReconMetric, ReconNeed};
use crate::models::vq::VqWeights;
use crate::pipeline::inception::InceptionConfig;
use crate::progress::Progress;

choice_enum! {
    /// Precision the tokenizer runs in.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum ReconPrecision: "tokenizer precision" {
        /// float32.
        #[default]
        Fp32 => ("fp32", "float32"),
        /// bfloat16.
        Bf16 => ("bf16", "bfloat16"),
    }
}

/// Where reconstructions come from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Reconstructions {
    /// A LlamaGen VQ checkpoint, run here.
    Tokenizer {
        /// The checkpoint.
        vq: PathBuf,
        /// Which weights of a training checkpoint.
        weights: VqWeights,
        /// Its dtype.
        precision: ReconPrecision,
        /// Also write the reconstructions as an npz.
        save: Option<PathBuf>,
    },
    /// Reconstructions made elsewhere (npz `arr_0`, same order and shape as the originals).
    Batch(PathBuf),
}

/// A `recon` run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReconConfig {
    /// Original images (npz or folder).
    pub data: PathBuf,
    /// Centre-crop size of the originals (default: the images as they are). Launched jobs
    /// described before it was named after `--crop` called it `image_size`.
    #[serde(alias = "image_size")]
    pub crop: Option<usize>,
    /// The reconstructions.
    pub reconstructions: Reconstructions,
    /// rFID reference; `None`: the originals themselves (LlamaGen's protocol).
    pub reference: Option<PathBuf>,
    /// `None`: every figure the inputs allow.
    pub metrics: Option<Vec<ReconMetric>>,
    /// Feature network (and batch size, and the device the tokenizer runs on).
    pub inception: InceptionConfig,
    /// Output folder (metrics.json, metrics.csv, the journal).
    pub out_dir: PathBuf,
    /// Continue an interrupted run.
    pub resume: bool,
    /// Testing aid: stop with an error after this many batches.
    pub stop_after_batches: Option<usize>,
    /// Bars or none.
    #[serde(skip)]
    pub progress: Progress,
}

impl ReconConfig {
    /// The same settings with every file and folder named from the filesystem root.
    pub fn with_absolute_paths(&self) -> Self {
        let absolute = crate::io::absolute;
        ReconConfig {
            data: absolute(&self.data),
            reconstructions: match &self.reconstructions {
                Reconstructions::Tokenizer {
                    vq,
                    weights,
                    precision,
                    save,
                } => Reconstructions::Tokenizer {
                    vq: absolute(vq),
                    weights: *weights,
                    precision: *precision,
                    save: save.as_deref().map(absolute),
                },
                Reconstructions::Batch(batch) => Reconstructions::Batch(absolute(batch)),
            },
            reference: self.reference.as_deref().map(absolute),
            inception: self.inception.with_absolute_paths(),
            out_dir: absolute(&self.out_dir),
            ..self.clone()
        }
    }
}

/// Whether `config` runs `network`.
pub(super) fn loaded(config: &ReconConfig, network: Network) -> bool {
    match network {
        Network::Inception => true,
        Network::Dinov2 => config.inception.dinov2.is_some(),
        Network::Clip => config.inception.clip.is_some(),
    }
}

/// The figures `config` asks for, as far as its inputs allow.
pub(super) fn wanted_metrics(config: &ReconConfig) -> Result<BTreeSet<ReconMetric>> {
    let explicit = config.metrics.is_some();
    let mut wanted: BTreeSet<ReconMetric> = config
        .metrics
        .clone()
        .unwrap_or_else(|| ReconMetric::ALL.to_vec())
        .into_iter()
        .collect();
    let tokenizer = matches!(config.reconstructions, Reconstructions::Tokenizer { .. });
    for metric in ReconMetric::ALL {
        for need in metric.needs() {
            let why = match need {
                ReconNeed::Tokenizer if !tokenizer => format!(
                    "`{metric}` needs the tokenizer; reconstructions made elsewhere have no token indices"
                ),
                ReconNeed::Features(network) if !loaded(config, *network) => format!(
                    "`{metric}` needs the {network} network: add --features inception,{network}",
                    network = network.name()
                ),
                _ => continue,
            };
            if wanted.remove(&metric) && explicit {
                bail!("{why}");
            }
        }
    }
    Ok(wanted)
}
