//! Generation jobs: `sample` (samples into an ADM/LlamaGen npz, sharded) and the generated side
//! of `fid --gpt` (samples into Inception features, optionally also into an npz), both one
//! journaled pass over the generator as an image source, so both resume after a kill.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};
use ndarray::{Array1, Array3};
use serde_json::{json, Map, Value};

use super::features::FeatureStage;
use super::generator::{Generator, Timing};
use super::pass::{self, JournalConfig, PassConfig, PassOutcome, Stage};
use super::sinks::{write_grid, GridStage, NpzStage};
use crate::data::npz_writer::ImageNpzWriter;
use crate::features::{Extractor, FeatureSet};
use crate::progress::Progress;

/// Images kept for the grid of a run.
pub const GRID_IMAGES: usize = 64;

/// Shard `index` of `count`: sample indices `index`, `index + count`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// K, from 0.
    pub index: usize,
    /// N.
    pub count: usize,
}

impl Shard {
    /// The whole run.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// This shard's sample indices among `total`.
    pub fn indices(self, total: usize) -> Vec<u64> {
        (self.index..total)
            .step_by(self.count)
            .map(|i| i as u64)
            .collect()
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `K/N` with 0 <= K < N.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: write the shard as K/N, e.g. 0/4"))?;
        let index: usize = k
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: K is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: N is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("`{s}`: need 0 <= K < N"));
        }
        Ok(Shard { index, count })
    }
}

/// How generated samples are produced and where they go.
#[derive(Debug, Clone)]
pub struct GenerationPlan {
    /// Total samples of the run (all shards).
    pub samples: usize,
    /// This process's part.
    pub shard: Shard,
    /// Samples generated together (results do not depend on it).
    pub batch_size: usize,
    /// Also (or only) write the images as an ADM/LlamaGen npz.
    pub save_samples: Option<PathBuf>,
    /// The journal folder.
    pub journal_dir: PathBuf,
    /// Continue an interrupted run.
    pub resume: bool,
    /// Testing aid: stop with an error after this many new samples.
    pub stop_after: Option<usize>,
    /// Bars or none.
    pub progress: Progress,
}

/// What a generation pass produced.
pub struct Generated {
    /// Inception features of the samples (when an extractor was given).
    pub features: Option<FeatureSet>,
    /// The first samples, for the grid.
    pub grid: Vec<Array3<u8>>,
    /// Where the time went (this process's new work).
    pub timing: Timing,
    /// Samples restored from an interrupted run's journal instead of generated.
    pub resumed: usize,
    /// The pass, whose journal is removed by [`PassOutcome::finish`] once every output is written.
    pub pass: PassOutcome,
    /// The shard's sample indices.
    pub indices: Vec<u64>,
}

/// Generates this shard's samples through `extractor` (if given) and into `plan.save_samples`
/// (if given), journaled under `plan.journal_dir`; `settings` are the fingerprint of everything
/// else that decides the result (the generator's own settings are added here).
pub fn generate(
    generator: &mut Generator,
    extractor: Option<&Extractor>,
    plan: &GenerationPlan,
    mut settings: Map<String, Value>,
) -> Result<Generated> {
    let indices = plan.shard.indices(plan.samples);
    if indices.is_empty() {
        bail!(
            "shard {}/{} of {} samples is empty",
            plan.shard.index,
            plan.shard.count,
            plan.samples
        );
    }
    add_generation_settings(&mut settings, generator, plan);
    let size = generator.eval_size();
    let mut writer = plan
        .save_samples
        .as_deref()
        .map(|p| ImageNpzWriter::create(p, indices.len(), size, size).map(NpzStage::new))
        .transpose()?;
    let mut features = extractor.map(|e| FeatureStage::new(e, indices.len()));
    let mut grid = GridStage::new(GRID_IMAGES);
    generator.timing = Timing::default();
    let config = PassConfig {
        label: if extractor.is_some() {
            "generate"
        } else {
            "sample"
        },
        batch_size: plan.batch_size,
        progress: plan.progress,
        journal: Some(JournalConfig {
            dir: plan.journal_dir.clone(),
            settings,
            resume: plan.resume,
        }),
        stop_after_new: plan.stop_after,
    };
    let labels: Array1<i64> = indices.iter().map(|&i| generator.label(i)).collect();
    let outcome = {
        let mut source = generator.source(indices.clone());
        let mut stages: Vec<&mut dyn Stage> = vec![&mut grid];
        if let Some(f) = features.as_mut() {
            stages.push(f);
        }
        if let Some(w) = writer.as_mut() {
            stages.push(w);
        }
        pass::run(&config, &mut source, &mut stages)?
    };
    let mut timing = generator.timing.clone();
    if let Some(f) = &features {
        timing.inception = f.elapsed;
    }
    if let Some(mut writer) = writer.and_then(NpzStage::into_writer) {
        writer.add_array("arr_1", &labels)?;
        if plan.shard.count > 1 {
            let idx: Array1<i64> = indices.iter().map(|&i| i as i64).collect();
            writer.add_array("indices", &idx)?;
        }
        writer.finish()?;
    }
    Ok(Generated {
        features: features.map(FeatureStage::into_features),
        grid: grid.into_images(),
        timing,
        resumed: outcome.resumed,
        pass: outcome,
        indices,
    })
}

/// Adds the generator's settings and the sample range to a fingerprint.
pub fn add_generation_settings(
    settings: &mut Map<String, Value>,
    generator: &Generator,
    plan: &GenerationPlan,
) {
    settings.extend(generator.config().fingerprint());
    settings.insert("samples".into(), json!(plan.samples));
    settings.insert(
        "shard".into(),
        json!(format!("{}/{}", plan.shard.index, plan.shard.count)),
    );
}

/// `sample`: this shard's samples into the npz `out` (and a grid PNG when asked).
pub fn sample_to_npz(
    generator: &mut Generator,
    plan: &GenerationPlan,
    grid: Option<&Path>,
) -> Result<Generated> {
    let mut generated = generate(generator, None, plan, Map::new())?;
    if let Some(path) = grid {
        write_grid(path, &generated.grid)?;
    }
    let pass = std::mem::replace(&mut generated.pass, PassOutcome::done());
    pass.finish()?;
    Ok(generated)
}
