//! `llamagen-eval fid --sample-batch`: the evaluation of a sample batch against a reference batch,
//! the ADM evaluator's job, with features cached by content.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use llamagen_metrics::stats::ReferenceStats;
use serde_json::Value;

use super::metrics::{evaluate_and_write, MetricArgs, OutputArgs};
use super::{FeatureCache, InceptionArgs};
use crate::evaluate::{Metric, Reference};
use crate::features::FeatureSet;

#[derive(Args, Debug)]
pub struct FidCommand {
    /// Generated images: an npz with `arr_0` u8 N x H x W x 3 (stored or compressed).
    #[arg(long, value_name = "SAMPLES.npz")]
    pub sample_batch: PathBuf,
    /// Reference: an ADM reference batch (its mu/sigma/mu_s/sigma_s, and its `arr_0` images for
    /// precision/recall/KID), a `stats` file, a feature file, an image npz, or a folder of images.
    #[arg(long = "ref", value_name = "REF")]
    pub reference: PathBuf,
    /// Centre-crop reference images from a folder to this size (ADM's `center_crop_arr`).
    #[arg(long)]
    pub image_size: Option<usize>,
    #[command(flatten)]
    pub inception: InceptionArgs,
    #[command(flatten)]
    pub metric: MetricArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The reference side: statistics from the file when it has them, features of its images when a
/// requested metric needs them or there are no statistics.
fn load_reference(
    path: &Path,
    image_size: Option<usize>,
    wants_features: bool,
    cache: &mut FeatureCache<'_>,
) -> Result<Reference> {
    if path.is_dir() {
        let features = cache
            .features_of(path, image_size)
            .with_context(|| format!("reference images {}", path.display()))?;
        return Reference::from_features(features);
    }
    let names = super::npz_entry_names(path)?;
    let has = |key: &str| names.iter().any(|n| n == key);
    if has("pool") || has("spatial") || has("logits") {
        return super::metrics::reference_from_file(path);
    }
    let stats = ReferenceStats::load(path)?;
    let has_stats = stats.pool.is_some() || stats.spatial.is_some();
    if !has("arr_0") {
        if !has_stats {
            anyhow::bail!(
                "{}: the reference batch has neither statistics (mu/sigma, mu_s/sigma_s) nor images (arr_0); entries: {}",
                path.display(),
                names.join(", ")
            );
        }
        return Ok(Reference {
            stats,
            features: None,
        });
    }
    if has_stats && !wants_features {
        return Ok(Reference {
            stats,
            features: None,
        });
    }
    let features = cache
        .features_of(path, image_size)
        .with_context(|| format!("reference images {}", path.display()))?;
    let mut reference = Reference::from_features(features)?;
    // Precomputed statistics (over the reference's full image set) win over the kept subset's.
    if stats.pool.is_some() {
        reference.stats.pool = stats.pool;
    }
    if stats.spatial.is_some() {
        reference.stats.spatial = stats.spatial;
    }
    Ok(reference)
}

pub fn run(cmd: &FidCommand, quiet: bool) -> Result<()> {
    let out_dir = cmd.output.dir();
    let cache_dir = out_dir
        .parent()
        .map(|p| p.join(".feature-cache"))
        .unwrap_or_else(|| PathBuf::from(".feature-cache"));
    let mut cache = FeatureCache::new(cache_dir, &cmd.inception, quiet)?;
    let sample: FeatureSet = cache
        .features(&cmd.sample_batch)
        .with_context(|| format!("sample batch {}", cmd.sample_batch.display()))?;
    let wants_features = cmd
        .metric
        .metrics
        .as_ref()
        .is_none_or(|m| m.iter().any(|m| matches!(m, Metric::Pr | Metric::Kid)));
    let reference = load_reference(&cmd.reference, cmd.image_size, wants_features, &mut cache)?;
    let mut record = vec![
        ("n_samples", Value::from(sample.len())),
        (
            "n_reference",
            reference
                .features
                .as_ref()
                .map(|f| Value::from(f.len()))
                .unwrap_or(Value::Null),
        ),
        ("resize", Value::from(cmd.inception.resize.name())),
        (
            "inception_sha256",
            Value::from(cache.weights().sha256.clone()),
        ),
        (
            "sample_batch",
            Value::from(cmd.sample_batch.display().to_string()),
        ),
        (
            "reference",
            Value::from(cmd.reference.display().to_string()),
        ),
    ];
    record.extend(cmd.metric.record());
    let run = super::run_record(record);
    evaluate_and_write(&cmd.metric, &sample, Some(&reference), &out_dir, run, quiet)?;
    Ok(())
}
