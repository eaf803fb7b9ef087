//! `llamagen-eval fid --sample-batch`: the evaluation of a sample batch against a reference batch,
//! the ADM evaluator's job, with features cached by content. `fid --gpt --vq --samples N`:
//! generation, decoding and Inception streamed batch by batch (no image folder), then the same
//! metrics.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use llamagen_metrics::stats::ReferenceStats;
use serde_json::Value;

use super::metrics::{evaluate_and_write, MetricArgs, OutputArgs};
use super::sample::{GenArgs, Generator};
use super::{FeatureCache, InceptionArgs};
use crate::evaluate::{Metric, Reference};
use crate::features::FeatureSet;

#[derive(Args, Debug, Clone)]
pub struct FidCommand {
    /// Generated images: an npz with `arr_0` u8 N x H x W x 3 (stored or compressed).
    #[arg(
        long,
        value_name = "SAMPLES.npz",
        required_unless_present = "gpt",
        conflicts_with = "gpt"
    )]
    pub sample_batch: Option<PathBuf>,
    /// Generation instead of --sample-batch: `--gpt CKPT --vq CKPT --samples N` and the sampling
    /// flags of `sample`.
    #[command(flatten)]
    pub gen: GenArgs,
    /// Samples generated together with --gpt (results do not depend on it).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub gen_batch_size: u64,
    /// With --gpt: also write the generated images as an ADM/LlamaGen npz.
    #[arg(long, value_name = "SAMPLES.npz", requires = "gpt")]
    pub save_samples: Option<PathBuf>,
    /// Reference: an ADM reference batch (its mu/sigma/mu_s/sigma_s, and its `arr_0` images for
    /// precision/recall/KID), a `stats` file, a feature file, an image npz, or a folder of images.
    #[arg(long = "ref", value_name = "REF")]
    pub reference: PathBuf,
    /// Centre-crop reference images from a folder to this size (ADM's `center_crop_arr`).
    /// With --gpt: the generation resolution (default 256); folder references are then cropped
    /// to --image-size-eval (default: the same).
    #[arg(long)]
    pub image_size: Option<usize>,
    #[command(flatten)]
    pub inception: InceptionArgs,
    #[command(flatten)]
    pub metric: MetricArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Fails early, before any Inception or sampling work, on a reference file that holds nothing
/// usable.
fn ensure_usable_reference(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let names = super::npz_entry_names(path)?;
    let usable = ["mu", "mu_s", "arr_0", "pool", "spatial", "logits"];
    if !names.iter().any(|n| usable.contains(&n.as_str())) {
        anyhow::bail!(
            "{}: the reference batch has neither statistics (mu/sigma, mu_s/sigma_s) nor images (arr_0) nor features; entries: {}",
            path.display(),
            names.join(", ")
        );
    }
    Ok(())
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

/// Generates the samples and extracts their features batch by batch.
fn generated_features(
    cmd: &FidCommand,
    cache: &FeatureCache<'_>,
    quiet: bool,
) -> Result<(FeatureSet, super::sample::Timing, Vec<ndarray::Array3<u8>>)> {
    let count = cmd.gen.sample_count()?;
    let device = cmd.inception.device.resolve().map_err(anyhow::Error::msg)?;
    // Everything that can fail is checked before the first sample.
    let image_size = cmd.image_size.map_or(256, |s| s as i64);
    let mut generator = Generator::new(&cmd.gen, image_size, device)?;
    let extractor = cmd.inception.load(cache.weights())?;
    let size = generator.eval_size as usize;
    let mut writer = cmd
        .save_samples
        .as_deref()
        .map(|p| crate::data::npz_writer::ImageNpzWriter::create(p, count, size, size))
        .transpose()?;
    let batch = usize::try_from(cmd.gen_batch_size).unwrap_or(usize::MAX);
    let indices: Vec<u64> = (0..count as u64).collect();
    let bar = crate::progress::bar(count, "generate", "img", quiet);
    let mut parts: [Vec<ndarray::Array2<f32>>; 3] = Default::default();
    let mut inception = std::time::Duration::ZERO;
    let mut grid = Vec::new();
    for chunk in indices.chunks(batch) {
        let tokens = generator.tokens(chunk)?;
        let images = generator.images(&tokens)?;
        for image in images.outer_iter().take(64usize.saturating_sub(grid.len())) {
            grid.push(image.to_owned());
        }
        let start = std::time::Instant::now();
        for (part, array) in parts.iter_mut().zip(extractor.extract_batch(&images)?) {
            part.push(array);
        }
        inception += start.elapsed();
        if let Some(w) = writer.as_mut() {
            for image in images.outer_iter() {
                w.push(image)?;
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if let Some(mut w) = writer {
        let labels: ndarray::Array1<i64> = indices.iter().map(|&i| generator.label(i)).collect();
        w.add_array("arr_1", &labels)?;
        w.finish()?;
    }
    let join = |arrays: &[ndarray::Array2<f32>]| -> Result<Option<ndarray::Array2<f32>>> {
        if arrays.is_empty() {
            return Ok(None);
        }
        let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
        Ok(Some(ndarray::concatenate(ndarray::Axis(0), &views)?))
    };
    let features = FeatureSet {
        pool: join(&parts[0])?,
        spatial: join(&parts[1])?,
        logits: join(&parts[2])?,
        indices: None,
    };
    let mut timing = generator.timing.clone();
    timing.inception = inception;
    Ok((features, timing, grid))
}

pub fn run(cmd: &FidCommand, quiet: bool) -> Result<()> {
    let out_dir = cmd.output.dir();
    let cache_dir = out_dir
        .parent()
        .map(|p| p.join(".feature-cache"))
        .unwrap_or_else(|| PathBuf::from(".feature-cache"));
    ensure_usable_reference(&cmd.reference)?;
    let mut cache = FeatureCache::new(cache_dir, &cmd.inception, quiet)?;
    let wants_features = cmd
        .metric
        .metrics
        .as_ref()
        .is_none_or(|m| m.iter().any(|m| matches!(m, Metric::Pr | Metric::Kid)));
    // With --gpt, folder references are cropped to the evaluated size.
    let crop = match cmd.gen.gpt {
        Some(_) => Some(
            cmd.gen
                .image_size_eval
                .map_or(cmd.image_size.unwrap_or(256), |s| s as usize),
        ),
        None => cmd.image_size,
    };
    // With --gpt the reference is read first, so that a bad one fails before any sampling.
    let mut reference = match cmd.gen.gpt {
        Some(_) => Some(load_reference(
            &cmd.reference,
            crop,
            wants_features,
            &mut cache,
        )?),
        None => None,
    };
    let mut grid = Vec::new();
    let (sample, timing, source) = match &cmd.sample_batch {
        Some(path) => {
            let sample: FeatureSet = cache
                .features(path)
                .with_context(|| format!("sample batch {}", path.display()))?;
            (sample, None, path.display().to_string())
        }
        None => {
            let (sample, timing, first) = generated_features(cmd, &cache, quiet)?;
            grid = first;
            let source = match &cmd.save_samples {
                Some(p) => format!("generated (saved to {})", p.display()),
                None => "generated".to_owned(),
            };
            (sample, Some(timing), source)
        }
    };
    let reference = match reference.take() {
        Some(r) => r,
        None => load_reference(&cmd.reference, crop, wants_features, &mut cache)?,
    };
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
        ("sample_batch", Value::from(source)),
        (
            "reference",
            Value::from(cmd.reference.display().to_string()),
        ),
    ];
    // Inception is done with: release the network before the metrics need their memory.
    drop(cache);
    record.extend(cmd.metric.record());
    if let Some(timing) = &timing {
        record.extend(cmd.gen.record(cmd.image_size.map_or(256, |s| s as i64)));
        record.push(("throughput", timing.record()));
    }
    let run = super::run_record(record);
    evaluate_and_write(&cmd.metric, &sample, Some(&reference), &out_dir, run, quiet)?;
    if !grid.is_empty() {
        // The first generated images, for `report`.
        super::sample::write_grid(&out_dir.join("grid.png"), &grid)?;
    }
    if let (Some(timing), false) = (&timing, quiet) {
        eprint!("{}", timing.report());
    }
    Ok(())
}
