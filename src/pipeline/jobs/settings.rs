//! The settings of the jobs as typed values — [`FidConfig`], [`StatsConfig`], and with
//! [`ReconConfig`] (beside its job) — and [`JobDescription`], a job as a launched job's manifests
//! keep it for `merge OUT_DIR`: its settings with every path from the filesystem root, so the
//! gather needs neither the command line's spelling nor the working directory the job ran in.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::recon::config::ReconConfig;
use crate::evaluate::MetricRequest;
use crate::pipeline::inception::InceptionConfig;
use crate::progress::Progress;

/// The evaluation side of a `fid` run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FidConfig {
    /// The reference (ADM batch, stats file, feature file, image npz or folder).
    pub reference: PathBuf,
    /// Centre-crop size for reference images (ADM's `center_crop_arr`).
    pub reference_crop: Option<usize>,
    /// The feature network.
    pub inception: InceptionConfig,
    /// Which metrics.
    pub metrics: MetricRequest,
    /// Bars or none.
    #[serde(skip)]
    pub progress: Progress,
}

impl FidConfig {
    /// The same settings with every file named from the filesystem root.
    pub fn with_absolute_paths(&self) -> Self {
        FidConfig {
            reference: crate::io::absolute(&self.reference),
            inception: self.inception.with_absolute_paths(),
            ..self.clone()
        }
    }
}

/// What a reference batch is made of.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StatsConfig {
    /// Centre-crop every image to this square size.
    pub crop: Option<usize>,
    /// Images kept in `arr_0` (a seeded random subset; ADM keeps 10,000).
    pub keep_images: usize,
    /// Seed of the kept subset.
    pub seed: u64,
    /// The feature network.
    pub inception: InceptionConfig,
    /// Continue an interrupted run.
    pub resume: bool,
    /// Bars or none.
    #[serde(skip)]
    pub progress: Progress,
}

impl StatsConfig {
    /// The same settings with every file named from the filesystem root.
    pub fn with_absolute_paths(&self) -> Self {
        StatsConfig {
            inception: self.inception.with_absolute_paths(),
            ..self.clone()
        }
    }
}

/// A job as its parts' manifests keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum JobDescription {
    /// `fid --gpt`: one run, or one CFG scale of a `sweep`.
    Fid {
        /// The evaluation.
        config: FidConfig,
        /// Where the run also writes its samples.
        save_samples: Option<PathBuf>,
        /// The scales of the sweep the run is one of.
        sweep_scales: Option<Vec<f64>>,
    },
    /// `sample`.
    Sample {
        /// The grid PNG asked for.
        grid: Option<PathBuf>,
    },
    /// `features`.
    Features {
        /// The images (their `indices` go into the joined file).
        images: PathBuf,
    },
    /// `stats`.
    Stats {
        /// The reference batch's settings.
        config: StatsConfig,
    },
    /// `recon`.
    Recon {
        /// The scoring's settings.
        config: ReconConfig,
    },
}

impl JobDescription {
    /// The description in the manifests' serde form.
    pub fn to_value(&self) -> Value {
        // Plain structs, enums and paths: serializing cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
