//! From feature sets to the table every paper prints: which metrics to compute, and computing them
//! from sample and reference features (the run record in [`crate::record`] writes them).

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use llamagen_metrics::clip_score::clip_score;
use llamagen_metrics::cmmd::cmmd_f32;
use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::frechet_infinity::{
    frechet_distance_infinity, InfinityConfig, InfinityResult,
};
use llamagen_metrics::inception_score::{inception_score, Splits};
use llamagen_metrics::kid::{kernel_inception_distance_f32, KidConfig};
use llamagen_metrics::manifold::{manifold_metrics_f32, DistancePrecision, ManifoldConfig};
use llamagen_metrics::stats::{GaussianStats, ReferenceStats};

use crate::features::FeatureSet;
use crate::metric::MetricKey;
use crate::record::MetricValues;

/// A metric family the user can ask for with `--metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Fréchet Inception Distance on pool features.
    Fid,
    /// Spatial FID on ADM's mixed_6/conv features.
    Sfid,
    /// Inception Score (and its std over splits).
    Is,
    /// Precision, recall, density and coverage.
    Pr,
    /// Kernel Inception Distance (and its std over subsets).
    Kid,
    /// FID extrapolated to infinitely many samples (the fit in the run record).
    FidInf,
    /// Fréchet distance of DINOv2 features (dgm-eval's FD_DINOv2).
    FdDinov2,
    /// FD_DINOv2 extrapolated to infinitely many samples.
    FdDinov2Inf,
    /// Precision, recall, density and coverage on DINOv2 features.
    Dinov2Pr,
    /// CMMD: MMD of CLIP embeddings (Jayasumana et al. 2024).
    Cmmd,
    /// CLIP score of each sample against its caption (text-to-image runs).
    ClipScore,
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Metric::Fid => "fid",
            Metric::Sfid => "sfid",
            Metric::Is => "is",
            Metric::Pr => "pr",
            Metric::Kid => "kid",
            Metric::FidInf => "fid-inf",
            Metric::FdDinov2 => "fd-dinov2",
            Metric::FdDinov2Inf => "fd-dinov2-inf",
            Metric::Dinov2Pr => "dinov2-pr",
            Metric::Cmmd => "cmmd",
            Metric::ClipScore => "clip-score",
        })
    }
}

impl Metric {
    /// Every family, in table order: what is computed (when the inputs allow) without `--metrics`.
    pub const ALL: [Metric; 11] = [
        Metric::Fid,
        Metric::Sfid,
        Metric::Is,
        Metric::Pr,
        Metric::Kid,
        Metric::FidInf,
        Metric::FdDinov2,
        Metric::FdDinov2Inf,
        Metric::Dinov2Pr,
        Metric::Cmmd,
        Metric::ClipScore,
    ];
}

/// Options of the metric computations.
#[derive(Debug, Clone, Copy)]
pub struct MetricOptions {
    /// How samples are grouped for the Inception Score (default: ADM's chunks of 5,000).
    pub is_splits: Splits,
    /// Neighbourhood size, block size and distance precision of precision/recall/density/coverage.
    pub manifold: ManifoldConfig,
    /// Subset count, subset size and seed of KID.
    pub kid: KidConfig,
    /// Subset sizes and seed of FID-infinity.
    pub infinity: InfinityConfig,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions {
            is_splits: Splits::default(),
            manifold: ManifoldConfig {
                precision: DistancePrecision::Exact,
                ..Default::default()
            },
            kid: KidConfig::default(),
            infinity: InfinityConfig::default(),
        }
    }
}

/// What is known about the reference set: its statistics and, when available, its pool features
/// (precision/recall and KID need the features themselves).
#[derive(Debug, Clone, Default)]
pub struct Reference {
    /// Pool and spatial Gaussian statistics (mu/sigma), enough for FID and sFID.
    pub stats: ReferenceStats,
    /// The reference features, when known (from images or a feature file, not a stats `.npz`).
    pub features: Option<FeatureSet>,
    /// Gaussian statistics of its DINOv2 features, when known.
    pub dinov2_stats: Option<GaussianStats>,
}

impl Reference {
    /// A reference described by features alone: its statistics are computed from them.
    pub fn from_features(features: FeatureSet) -> Result<Self> {
        let stats = ReferenceStats {
            pool: features
                .pool
                .as_ref()
                .map(|p| GaussianStats::from_features_f32(p.view()))
                .transpose()?,
            spatial: features
                .spatial
                .as_ref()
                .map(|s| GaussianStats::from_features_f32(s.view()))
                .transpose()?,
        };
        let dinov2_stats = features
            .dinov2
            .as_ref()
            .map(|d| GaussianStats::from_features_f32(d.view()))
            .transpose()?;
        Ok(Reference {
            stats,
            features: Some(features),
            dinov2_stats,
        })
    }

    fn pool_features(&self) -> Option<&ndarray::Array2<f32>> {
        self.features.as_ref().and_then(|f| f.pool.as_ref())
    }

    fn features_named(&self, key: &str) -> Option<&ndarray::Array2<f32>> {
        self.features.as_ref().and_then(|f| f.get(key))
    }
}

/// Which of `requested` can be computed from what the inputs hold; `explicit` requests that cannot
/// be met are errors, defaulted ones are dropped with a log line. The extrapolated distances are
/// defaulted only from `2 * min_size` samples on (the reference code's smallest subset is 5,000;
/// below that they are computed when asked for, over subsets of N/2 to N).
pub fn plan(
    requested: Option<&[Metric]>,
    sample: &FeatureSet,
    captions: Option<&ndarray::Array2<f32>>,
    reference: Option<&Reference>,
    options: &MetricOptions,
) -> Result<BTreeSet<Metric>> {
    let extrapolation_samples = 2 * options.infinity.min_size;
    let explicit = requested.is_some();
    let wanted: BTreeSet<Metric> = requested.unwrap_or(&Metric::ALL).iter().copied().collect();
    let mut planned = BTreeSet::new();
    // Precision/recall take each point's k-th nearest other point: both sets need more than k.
    let k = options.manifold.k;
    let too_few = |a: Option<&ndarray::Array2<f32>>, b: Option<&ndarray::Array2<f32>>| {
        [a, b].into_iter().flatten().any(|f| f.nrows() <= k)
    };
    let neighbours = &*format!("more than k = {k} samples and reference images");
    for metric in wanted {
        let missing = match metric {
            Metric::FidInf | Metric::FdDinov2Inf
                if !explicit && sample.len() < extrapolation_samples =>
            {
                Some("at least 10,000 samples unless asked for with --metrics")
            }
            Metric::Fid | Metric::FidInf if sample.pool.is_none() => {
                Some("the samples' pool features")
            }
            Metric::Fid | Metric::FidInf
                if reference.and_then(|r| r.stats.pool.as_ref()).is_none() =>
            {
                Some("reference pool statistics (mu/sigma) or features")
            }
            Metric::Sfid if sample.spatial.is_none() => Some("the samples' spatial features"),
            Metric::Sfid if reference.and_then(|r| r.stats.spatial.as_ref()).is_none() => {
                Some("reference spatial statistics (mu_s/sigma_s) or features")
            }
            Metric::Is if sample.logits.is_none() => Some("the samples' logits"),
            Metric::Pr | Metric::Kid if sample.pool.is_none() => Some("the samples' pool features"),
            Metric::Pr | Metric::Kid if reference.and_then(Reference::pool_features).is_none() => {
                Some("reference pool features (reference images or a feature file, not statistics alone)")
            }
            Metric::Pr if too_few(sample.pool.as_ref(), reference.and_then(Reference::pool_features)) => {
                Some(neighbours)
            }
            Metric::FdDinov2 | Metric::FdDinov2Inf | Metric::Dinov2Pr
                if sample.dinov2.is_none() =>
            {
                Some("the samples' DINOv2 features (--features inception,dinov2)")
            }
            Metric::FdDinov2 | Metric::FdDinov2Inf
                if reference.and_then(|r| r.dinov2_stats.as_ref()).is_none() =>
            {
                Some("the reference's DINOv2 features (reference images or a feature file with `dinov2`)")
            }
            Metric::Dinov2Pr if reference.and_then(|r| r.features_named("dinov2")).is_none() => {
                Some("the reference's DINOv2 features (reference images or a feature file with `dinov2`)")
            }
            Metric::Dinov2Pr
                if too_few(sample.dinov2.as_ref(), reference.and_then(|r| r.features_named("dinov2"))) =>
            {
                Some(neighbours)
            }
            Metric::Cmmd if sample.clip.is_none() => {
                Some("the samples' CLIP embeddings (--features inception,clip)")
            }
            Metric::Cmmd if reference.and_then(|r| r.features_named("clip")).is_none() => {
                Some("the reference's CLIP embeddings (reference images or a feature file with `clip`)")
            }
            Metric::ClipScore if sample.clip.is_none() => {
                Some("the samples' CLIP embeddings (--features inception,clip)")
            }
            Metric::ClipScore if captions.is_none() => Some(
                "each sample's caption text (a text-to-image run with --prompts, or \
                 --caption-embeddings holding `captions`) and a CLIP text tower (--clip given a \
                 CLIPModel file with its tokenizer.json beside it)",
            ),
            _ => None,
        };
        match missing {
            None => {
                planned.insert(metric);
            }
            Some(what) if explicit => bail!("`{metric}` was asked for but needs {what}"),
            Some(what) => tracing::info!("skipping `{metric}`: needs {what}"),
        }
    }
    if planned.is_empty() {
        bail!("no metric can be computed from these inputs (a reference is needed for all but IS)");
    }
    Ok(planned)
}

fn need<'a>(
    what: Option<&'a ndarray::Array2<f32>>,
    name: &str,
) -> Result<&'a ndarray::Array2<f32>> {
    what.with_context(|| format!("missing {name}"))
}

/// The samples' Gaussian statistics the planned FID/sFID need (computed before the metrics, so
/// that feature arrays no later metric reads can be freed first).
pub fn sample_statistics(
    metrics: &BTreeSet<Metric>,
    sample: &FeatureSet,
) -> Result<ReferenceStats> {
    let stats =
        |wanted: bool, features: &Option<ndarray::Array2<f32>>| -> Result<Option<GaussianStats>> {
            match (wanted, features) {
                (true, Some(f)) => Ok(Some(GaussianStats::from_features_f32(f.view())?)),
                (true, None) => bail!("missing sample features"),
                (false, _) => Ok(None),
            }
        };
    Ok(ReferenceStats {
        pool: stats(metrics.contains(&Metric::Fid), &sample.pool)?,
        spatial: stats(metrics.contains(&Metric::Sfid), &sample.spatial)?,
    })
}

/// The computed metrics, and how the extrapolated ones were fitted (for the run record).
#[derive(Debug, Default)]
pub struct Computed {
    /// The figures.
    pub values: MetricValues,
    /// Run-record fields: `fid_inf_fit` (sizes, distances, slope, R², seed).
    pub details: Vec<(&'static str, serde_json::Value)>,
}

/// Computes the planned metrics (FID/sFID from `sample_stats`).
pub fn compute(
    metrics: &BTreeSet<Metric>,
    sample: &FeatureSet,
    captions: Option<&ndarray::Array2<f32>>,
    sample_stats: &ReferenceStats,
    reference: Option<&Reference>,
    options: &MetricOptions,
) -> Result<Computed> {
    let mut values = MetricValues::default();
    let mut details = Vec::new();
    for metric in metrics {
        match metric {
            Metric::Fid | Metric::Sfid => {
                let (ours, stats, name) = if *metric == Metric::Fid {
                    (
                        sample_stats.pool.as_ref(),
                        reference.and_then(|r| r.stats.pool.as_ref()),
                        MetricKey::Fid,
                    )
                } else {
                    (
                        sample_stats.spatial.as_ref(),
                        reference.and_then(|r| r.stats.spatial.as_ref()),
                        MetricKey::Sfid,
                    )
                };
                let ours = ours.context("missing sample statistics")?;
                let stats_ref = stats.context("missing reference statistics")?;
                values.insert(name, frechet_distance(ours, stats_ref)?);
            }
            Metric::Is => {
                let logits = need(sample.logits.as_ref(), "sample logits")?;
                let score = inception_score(logits.view(), options.is_splits)?;
                values.insert(MetricKey::InceptionScore, score.mean);
                values.insert(MetricKey::InceptionScoreStd, score.std);
            }
            Metric::Pr => {
                let samples = need(sample.pool.as_ref(), "sample pool features")?;
                let refs = need(
                    reference.and_then(Reference::pool_features),
                    "reference pool features",
                )?;
                let m = manifold_metrics_f32(refs.view(), samples.view(), &options.manifold)?;
                values.insert(MetricKey::Precision, m.precision);
                values.insert(MetricKey::Recall, m.recall);
                values.insert(MetricKey::Density, m.density);
                values.insert(MetricKey::Coverage, m.coverage);
            }
            Metric::Kid => {
                let samples = need(sample.pool.as_ref(), "sample pool features")?;
                let refs = need(
                    reference.and_then(Reference::pool_features),
                    "reference pool features",
                )?;
                let kid = kernel_inception_distance_f32(refs.view(), samples.view(), &options.kid)?;
                values.insert(MetricKey::Kid, kid.mean);
                values.insert(MetricKey::KidStd, kid.std);
            }
            Metric::FidInf => {
                let samples = need(sample.pool.as_ref(), "sample pool features")?;
                let stats_ref = reference
                    .and_then(|r| r.stats.pool.as_ref())
                    .context("missing reference statistics")?;
                let fit = frechet_distance_infinity(samples.view(), stats_ref, &options.infinity)?;
                values.insert(MetricKey::FidInf, fit.value);
                details.push(("fid_inf_fit", fit_record(&fit, &options.infinity)));
            }
            Metric::FdDinov2 => {
                let samples = need(sample.dinov2.as_ref(), "sample DINOv2 features")?;
                let stats_ref = reference
                    .and_then(|r| r.dinov2_stats.as_ref())
                    .context("missing reference DINOv2 statistics")?;
                let ours = GaussianStats::from_features_f32(samples.view())?;
                values.insert(MetricKey::FdDinov2, frechet_distance(&ours, stats_ref)?);
            }
            Metric::FdDinov2Inf => {
                let samples = need(sample.dinov2.as_ref(), "sample DINOv2 features")?;
                let stats_ref = reference
                    .and_then(|r| r.dinov2_stats.as_ref())
                    .context("missing reference DINOv2 statistics")?;
                let fit = frechet_distance_infinity(samples.view(), stats_ref, &options.infinity)?;
                values.insert(MetricKey::FdDinov2Inf, fit.value);
                details.push(("fd_dinov2_inf_fit", fit_record(&fit, &options.infinity)));
            }
            Metric::Dinov2Pr => {
                let samples = need(sample.dinov2.as_ref(), "sample DINOv2 features")?;
                let refs = need(
                    reference.and_then(|r| r.features_named("dinov2")),
                    "reference DINOv2 features",
                )?;
                let m = manifold_metrics_f32(refs.view(), samples.view(), &options.manifold)?;
                values.insert(MetricKey::Dinov2Precision, m.precision);
                values.insert(MetricKey::Dinov2Recall, m.recall);
                values.insert(MetricKey::Dinov2Density, m.density);
                values.insert(MetricKey::Dinov2Coverage, m.coverage);
            }
            Metric::Cmmd => {
                let samples = need(sample.clip.as_ref(), "sample CLIP embeddings")?;
                let refs = need(
                    reference.and_then(|r| r.features_named("clip")),
                    "reference CLIP embeddings",
                )?;
                values.insert(MetricKey::Cmmd, cmmd_f32(refs.view(), samples.view())?);
            }
            Metric::ClipScore => {
                let images = need(sample.clip.as_ref(), "sample CLIP embeddings")?;
                let texts = need(captions, "caption CLIP text embeddings")?;
                let score = clip_score(images.view(), texts.view())?;
                values.insert(MetricKey::ClipScore, score.mean);
                values.insert(MetricKey::ClipScoreStd, score.std);
            }
        }
    }
    Ok(Computed { values, details })
}

/// How an extrapolated distance was fitted: the subset sizes and their distances, the line, R².
fn fit_record(fit: &InfinityResult, config: &InfinityConfig) -> serde_json::Value {
    serde_json::json!({
        "r_squared": fit.r_squared,
        "slope": fit.slope,
        "sizes": fit.sizes,
        "distances": fit.distances,
        "seed": config.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn plan_drops_defaulted_metrics_and_rejects_explicit_ones() {
        let sample = FeatureSet {
            logits: Some(Array2::zeros((4, 3))),
            ..Default::default()
        };
        let options = MetricOptions::default();
        let planned = plan(None, &sample, None, None, &options).unwrap();
        assert_eq!(planned.into_iter().collect::<Vec<_>>(), [Metric::Is]);
        assert!(plan(Some(&[Metric::Fid]), &sample, None, None, &options).is_err());
    }
}
