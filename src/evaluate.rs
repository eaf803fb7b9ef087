//! From feature sets to the table every paper prints: which metrics to compute ([`MetricRequest`],
//! planned against what the inputs hold), computing them from sample and reference features, and
//! the last step of every evaluation, [`evaluate`]: sample features and a reference in, the run
//! record (`{"metrics": ..., "run": ...}`) out.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use llamagen_metrics::bootstrap::{
    frechet_replicates, inception_score_replicates, kid_replicates, mean_replicates, summarize,
    BootstrapConfig,
};
use llamagen_metrics::clip_score::clip_score;
use llamagen_metrics::cmmd::cmmd;
use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::frechet_infinity::{
    frechet_distance_infinity, InfinityConfig, InfinityResult,
};
use llamagen_metrics::inception_score::{inception_score, Splits};
use llamagen_metrics::kid::{kernel_inception_distance, KidConfig};
use llamagen_metrics::manifold::{manifold_contributions, DistancePrecision, ManifoldConfig};
use llamagen_metrics::stats::{GaussianStats, ReferenceStats};

use serde_json::{Map, Value};

use crate::choice::{choice_enum, Choice};
use crate::feature_set::FeatureSet;
use crate::metric::MetricKey;
use crate::record::{MetricUncertainty, MetricValues, RunRecord, Uncertainties, REFERENCE_SHA256};

pub use crate::metric::{Metric, Need};

choice_enum! {
    /// How the Inception Score groups the samples (`--is-splits`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum IsSplits: "Inception Score split convention" {
        /// ADM's: consecutive splits of 5000, the last one partial.
        #[default]
        Adm => ("adm", "Consecutive splits of 5000, partial last"),
        /// torch-fidelity's defaults: the samples shuffled with a seed, then 10 equal splits.
        TorchFidelity => (
            "torch-fidelity",
            "The samples shuffled with --is-seed, then 10 equal splits"
        ),
    }
}

impl IsSplits {
    /// The splits of this convention; `seed` shuffles torch-fidelity's.
    pub fn splits(self, seed: u32) -> Splits {
        match self {
            IsSplits::Adm => Splits::default(),
            IsSplits::TorchFidelity => Splits::Equal {
                splits: 10,
                shuffle: Some(seed),
            },
        }
    }
}

/// `--pr-distance`: the arithmetic of precision/recall distances.
impl Choice for DistancePrecision {
    const WHAT: &'static str = "distance precision";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (DistancePrecision::Exact, "exact", "float64"),
        (
            DistancePrecision::AdmFp16,
            "adm-fp16",
            "ADM's float16 rounding",
        ),
    ];
}

/// Options of the metric computations.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct MetricOptions {
    /// How samples are grouped for the Inception Score (default: ADM's chunks of 5,000).
    pub is_splits: Splits,
    /// Neighbourhood size, block size and distance precision of precision/recall/density/coverage.
    pub manifold: ManifoldConfig,
    /// Subset count, subset size and seed of KID.
    pub kid: KidConfig,
    /// Subset sizes and seed of FID-infinity.
    pub infinity: InfinityConfig,
    /// Bootstrap uncertainty (`--bootstrap N`): resamples (0: none) and seed.
    #[serde(default = "no_bootstrap")]
    pub bootstrap: BootstrapConfig,
}

/// No bootstrap (`--bootstrap 0`), also what job descriptions written before it read as.
pub fn no_bootstrap() -> BootstrapConfig {
    BootstrapConfig {
        resamples: 0,
        seed: 0,
    }
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
            bootstrap: no_bootstrap(),
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
    /// The content fingerprint of the file or folder it was read from, recorded as the run's
    /// `reference_sha256` so that `check` and `report` can tell runs against different
    /// references apart; `None` for a reference built in memory.
    pub sha256: Option<String>,
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
            sha256: None,
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
) -> Result<Plan> {
    let extrapolation_samples = 2 * options.infinity.min_size;
    let explicit = requested.is_some();
    let wanted: BTreeSet<Metric> = requested.unwrap_or(&Metric::ALL).iter().copied().collect();
    let mut planned = BTreeSet::new();
    let mut skipped = Vec::new();
    // Precision/recall take each point's k-th nearest other point: both sets need more than k.
    let k = options.manifold.k;
    let too_few = |a: Option<&ndarray::Array2<f32>>, b: Option<&ndarray::Array2<f32>>| {
        [a, b].into_iter().flatten().any(|f| f.nrows() <= k)
    };
    let neighbours = &*format!("more than k = {k} samples and reference images");
    let reference_dinov2 =
        "the reference's DINOv2 features (reference images or a feature file with `dinov2`)";
    let unmet = |need: Need| -> Option<&str> {
        let lacks = |f: Option<&ndarray::Array2<f32>>| f.is_none();
        let dinov2 = reference.and_then(|r| r.features_named("dinov2"));
        match need {
            Need::ManySamples => (!explicit && sample.len() < extrapolation_samples)
                .then_some("at least 10,000 samples unless asked for with --metrics"),
            Need::SamplePool | Need::SamplePoolStats => {
                lacks(sample.pool.as_ref()).then_some("the samples' pool features")
            }
            Need::SampleSpatialStats => {
                lacks(sample.spatial.as_ref()).then_some("the samples' spatial features")
            }
            Need::SampleLogits => lacks(sample.logits.as_ref()).then_some("the samples' logits"),
            Need::SampleDinov2 | Need::SampleDinov2Stats => lacks(sample.dinov2.as_ref())
                .then_some("the samples' DINOv2 features (--features inception,dinov2)"),
            Need::SampleClip => lacks(sample.clip.as_ref())
                .then_some("the samples' CLIP embeddings (--features inception,clip)"),
            Need::Captions => captions.is_none().then_some(
                "each sample's caption text (a text-to-image run with --prompts, or \
                 --caption-embeddings holding `captions`) and a CLIP text tower (--clip given a \
                 CLIPModel file with its tokenizer.json beside it)",
            ),
            Need::ReferencePoolStats => reference
                .and_then(|r| r.stats.pool.as_ref())
                .is_none()
                .then_some("reference pool statistics (mu/sigma) or features"),
            Need::ReferenceSpatialStats => reference
                .and_then(|r| r.stats.spatial.as_ref())
                .is_none()
                .then_some("reference spatial statistics (mu_s/sigma_s) or features"),
            Need::ReferencePoolFeatures => lacks(reference.and_then(Reference::pool_features))
                .then_some(
                    "reference pool features (reference images or a feature file, not statistics alone)",
                ),
            Need::ReferenceDinov2Stats => reference
                .and_then(|r| r.dinov2_stats.as_ref())
                .is_none()
                .then_some(reference_dinov2),
            Need::ReferenceDinov2Features => lacks(dinov2).then_some(reference_dinov2),
            Need::ReferenceClip => lacks(reference.and_then(|r| r.features_named("clip")))
                .then_some(
                    "the reference's CLIP embeddings (reference images or a feature file with `clip`)",
                ),
            Need::PoolNeighbours => {
                too_few(sample.pool.as_ref(), reference.and_then(Reference::pool_features))
                    .then_some(neighbours)
            }
            Need::Dinov2Neighbours => {
                too_few(sample.dinov2.as_ref(), dinov2).then_some(neighbours)
            }
        }
    };
    // Metrics of a network or input the run did not ask for (DINOv2, CLIP, captions) or of runs
    // far larger than this one are left out quietly; the others are noted with their reason.
    let opted_in = |need: Need| {
        matches!(
            need,
            Need::SampleDinov2
                | Need::SampleDinov2Stats
                | Need::SampleClip
                | Need::Captions
                | Need::ManySamples
        )
    };
    for metric in wanted {
        let missing = metric
            .needs()
            .iter()
            .find_map(|&need| unmet(need).map(|what| (need, what)));
        match missing {
            None => {
                planned.insert(metric);
            }
            Some((_, what)) if explicit => bail!("`{metric}` was asked for but needs {what}"),
            Some((need, what)) if opted_in(need) => {
                tracing::info!("skipping `{metric}`: needs {what}")
            }
            Some((_, what)) => skipped.push(format!("`{metric}` not computed: it needs {what}")),
        }
    }
    if planned.is_empty() {
        bail!("no metric can be computed from these inputs (a reference is needed for all but IS)");
    }
    Ok(Plan {
        metrics: planned,
        skipped,
    })
}

/// The metrics a run computes, and a sentence for each default one it leaves out.
#[derive(Debug)]
pub struct Plan {
    /// What is computed.
    pub metrics: BTreeSet<Metric>,
    /// Why each defaulted metric that the inputs do not allow is left out.
    pub skipped: Vec<String>,
}

/// Sentences on what a reader must know to read the figures: metrics left out and why, and
/// figures computed with less than their usual footing (recorded as the run's `notes`).
fn caveats(plan: &Plan, sample: &FeatureSet, stats: &SampleStats) -> Vec<String> {
    let mut notes = plan.skipped.clone();
    let n = sample.len();
    for (metric, stats) in [
        (Metric::Fid, &stats.pool),
        (Metric::Sfid, &stats.spatial),
        (Metric::FdDinov2, &stats.dinov2),
    ] {
        if let Some(stats) = stats
            .as_ref()
            .filter(|s| plan.metrics.contains(&metric) && n <= s.dim())
        {
            notes.push(format!(
                "`{metric}`: {n} samples in {} dimensions make a singular covariance; the distance is finite but biased upward, comparable only with runs of the same sample count",
                stats.dim()
            ));
        }
    }
    notes
}

fn need<'a, T>(what: Option<&'a T>, name: &str) -> Result<&'a T> {
    what.with_context(|| format!("missing {name}"))
}

/// The samples' and the reference's `what` (`pool features`), for a metric comparing the two.
fn both<'a, T>(
    sample: Option<&'a T>,
    reference: Option<&'a T>,
    what: &str,
) -> Result<(&'a T, &'a T)> {
    Ok((
        need(sample, &format!("sample {what}"))?,
        need(reference, &format!("reference {what}"))?,
    ))
}

/// Whether some of `metrics` needs `need`.
pub fn needed(metrics: &BTreeSet<Metric>, need: Need) -> bool {
    metrics.iter().any(|m| m.needs().contains(&need))
}

/// The samples' Gaussian statistics the planned metrics read ([`Need::SamplePoolStats`] and the
/// like).
#[derive(Debug, Clone, Default)]
pub struct SampleStats {
    /// Of the pool features (FID).
    pub pool: Option<GaussianStats>,
    /// Of the spatial features (sFID).
    pub spatial: Option<GaussianStats>,
    /// Of the DINOv2 features (FD_DINOv2).
    pub dinov2: Option<GaussianStats>,
}

/// The samples' Gaussian statistics the planned metrics need (computed before the metrics, so
/// that feature arrays no later metric reads can be freed first).
pub fn sample_statistics(metrics: &BTreeSet<Metric>, sample: &FeatureSet) -> Result<SampleStats> {
    let stats =
        |need: Need, features: &Option<ndarray::Array2<f32>>| -> Result<Option<GaussianStats>> {
            match (needed(metrics, need), features) {
                (true, Some(f)) => Ok(Some(GaussianStats::from_features_f32(f.view())?)),
                (true, None) => bail!("missing sample features"),
                (false, _) => Ok(None),
            }
        };
    Ok(SampleStats {
        pool: stats(Need::SamplePoolStats, &sample.pool)?,
        spatial: stats(Need::SampleSpatialStats, &sample.spatial)?,
        dinov2: stats(Need::SampleDinov2Stats, &sample.dinov2)?,
    })
}

/// The computed metrics, and how the extrapolated ones were fitted (for the run record).
#[derive(Debug, Default)]
pub struct Computed {
    /// The figures.
    pub values: MetricValues,
    /// Run-record fields: `fid_inf_fit` (sizes, distances, slope, R², seed).
    pub details: Vec<(&'static str, serde_json::Value)>,
    /// The figures' bootstrap uncertainty, when asked for.
    pub uncertainty: Uncertainties,
}

/// Records `key`'s uncertainty from bootstrap `replicates` of `estimate` over `rows` rows of
/// `what` (`samples`).
fn record_uncertainty(
    uncertainty: &mut Uncertainties,
    key: MetricKey,
    estimate: f64,
    replicates: &[f64],
    rows: usize,
    what: &str,
    config: &BootstrapConfig,
) -> Result<()> {
    let u = summarize(estimate, replicates)?;
    uncertainty.insert(
        key,
        MetricUncertainty {
            se: u.se,
            ci95: [u.ci95.0, u.ci95.1],
            method: format!(
                "bootstrap over {rows} {what}, {} resamples, seed {}",
                config.resamples, config.seed
            ),
        },
    );
    Ok(())
}

/// Computes the planned metrics: each family's kernel is its arm here (FID, sFID and FD_DINOv2
/// from `sample_stats`).
pub fn compute(
    metrics: &BTreeSet<Metric>,
    sample: &FeatureSet,
    captions: Option<&ndarray::Array2<f32>>,
    sample_stats: &SampleStats,
    reference: Option<&Reference>,
    options: &MetricOptions,
) -> Result<Computed> {
    let mut values = MetricValues::default();
    let mut details = Vec::new();
    let mut uncertainty = Uncertainties::default();
    let boot = &options.bootstrap;
    let bootstrap = boot.resamples > 0;
    for metric in metrics {
        match metric {
            Metric::Fid | Metric::Sfid | Metric::FdDinov2 => {
                let (ours, theirs, what, key) = match metric {
                    Metric::Fid => (
                        sample_stats.pool.as_ref(),
                        reference.and_then(|r| r.stats.pool.as_ref()),
                        "statistics",
                        MetricKey::Fid,
                    ),
                    Metric::Sfid => (
                        sample_stats.spatial.as_ref(),
                        reference.and_then(|r| r.stats.spatial.as_ref()),
                        "statistics",
                        MetricKey::Sfid,
                    ),
                    // Metric::FdDinov2
                    _ => (
                        sample_stats.dinov2.as_ref(),
                        reference.and_then(|r| r.dinov2_stats.as_ref()),
                        "DINOv2 statistics",
                        MetricKey::FdDinov2,
                    ),
                };
                let (ours, theirs) = both(ours, theirs, what)?;
                let value = frechet_distance(ours, theirs)?;
                values.insert(key, value);
                if bootstrap {
                    let features = match metric {
                        Metric::Fid => sample.pool.as_ref(),
                        Metric::Sfid => sample.spatial.as_ref(),
                        _ => sample.dinov2.as_ref(),
                    };
                    let features = need(features, "sample features for the bootstrap")?;
                    let replicates = frechet_replicates(features.view(), ours, theirs, boot)?;
                    record_uncertainty(
                        &mut uncertainty,
                        key,
                        value,
                        &replicates,
                        features.nrows(),
                        "samples",
                        boot,
                    )?;
                }
            }
            Metric::Is => {
                let logits = need(sample.logits.as_ref(), "sample logits")?;
                let score = inception_score(logits.view(), options.is_splits)?;
                // The splits the kernel took, for the record and the single-split note.
                details.push(("is_splits_used", Value::from(score.splits)));
                values.insert(MetricKey::InceptionScore, score.mean);
                if bootstrap {
                    let replicates =
                        inception_score_replicates(logits.view(), options.is_splits, boot)?;
                    record_uncertainty(
                        &mut uncertainty,
                        MetricKey::InceptionScore,
                        score.mean,
                        &replicates,
                        logits.nrows(),
                        "samples",
                        boot,
                    )?;
                }
                values.insert(MetricKey::InceptionScoreStd, score.std);
            }
            Metric::Pr | Metric::Dinov2Pr => {
                let ((samples, refs), keys) = if *metric == Metric::Pr {
                    (
                        both(
                            sample.pool.as_ref(),
                            reference.and_then(Reference::pool_features),
                            "pool features",
                        )?,
                        [
                            MetricKey::Precision,
                            MetricKey::Recall,
                            MetricKey::Density,
                            MetricKey::Coverage,
                        ],
                    )
                } else {
                    (
                        both(
                            sample.dinov2.as_ref(),
                            reference.and_then(|r| r.features_named("dinov2")),
                            "DINOv2 features",
                        )?,
                        [
                            MetricKey::Dinov2Precision,
                            MetricKey::Dinov2Recall,
                            MetricKey::Dinov2Density,
                            MetricKey::Dinov2Coverage,
                        ],
                    )
                };
                let parts = manifold_contributions(refs.view(), samples.view(), &options.manifold)?;
                let m = parts.metrics();
                for (key, value) in
                    keys.into_iter()
                        .zip([m.precision, m.recall, m.density, m.coverage])
                {
                    values.insert(key, value);
                }
                if bootstrap {
                    let flags = |v: &[bool]| -> Vec<f64> {
                        v.iter().map(|&b| f64::from(u8::from(b))).collect()
                    };
                    let k = parts.k as f64;
                    let density: Vec<f64> =
                        parts.ball_count.iter().map(|&c| c as f64 / k).collect();
                    // Precision and density average over the samples, recall and coverage over
                    // the reference rows.
                    for (key, value, contributions, what) in [
                        (
                            keys[0],
                            m.precision,
                            flags(&parts.in_reference_ball),
                            "samples",
                        ),
                        (
                            keys[1],
                            m.recall,
                            flags(&parts.in_sample_ball),
                            "reference rows",
                        ),
                        (keys[2], m.density, density, "samples"),
                        (keys[3], m.coverage, flags(&parts.covered), "reference rows"),
                    ] {
                        let replicates = mean_replicates(&contributions, boot)?;
                        record_uncertainty(
                            &mut uncertainty,
                            key,
                            value,
                            &replicates,
                            contributions.len(),
                            what,
                            boot,
                        )?;
                    }
                }
            }
            Metric::Kid => {
                let (samples, refs) = both(
                    sample.pool.as_ref(),
                    reference.and_then(Reference::pool_features),
                    "pool features",
                )?;
                let kid = kernel_inception_distance(refs.view(), samples.view(), &options.kid)?;
                // The subset size used, capped at the smaller set's size, replaces the one asked.
                details.push(("kid_subset_size", Value::from(kid.subset_size)));
                values.insert(MetricKey::Kid, kid.mean);
                if bootstrap {
                    let replicates =
                        kid_replicates(refs.view(), samples.view(), &options.kid, boot)?;
                    record_uncertainty(
                        &mut uncertainty,
                        MetricKey::Kid,
                        kid.mean,
                        &replicates,
                        samples.nrows(),
                        "samples",
                        boot,
                    )?;
                }
                values.insert(MetricKey::KidStd, kid.std);
            }
            Metric::FidInf | Metric::FdDinov2Inf => {
                let (samples, stats_ref, key, detail) = if *metric == Metric::FidInf {
                    (
                        need(sample.pool.as_ref(), "sample pool features")?,
                        need(
                            reference.and_then(|r| r.stats.pool.as_ref()),
                            "reference statistics",
                        )?,
                        MetricKey::FidInf,
                        "fid_inf_fit",
                    )
                } else {
                    (
                        need(sample.dinov2.as_ref(), "sample DINOv2 features")?,
                        need(
                            reference.and_then(|r| r.dinov2_stats.as_ref()),
                            "reference DINOv2 statistics",
                        )?,
                        MetricKey::FdDinov2Inf,
                        "fd_dinov2_inf_fit",
                    )
                };
                let fit = frechet_distance_infinity(samples.view(), stats_ref, &options.infinity)?;
                values.insert(key, fit.value);
                details.push((detail, fit_record(&fit, &options.infinity)));
            }
            Metric::Cmmd => {
                let (samples, refs) = both(
                    sample.clip.as_ref(),
                    reference.and_then(|r| r.features_named("clip")),
                    "CLIP embeddings",
                )?;
                values.insert(MetricKey::Cmmd, cmmd(refs.view(), samples.view())?);
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
    Ok(Computed {
        values,
        details,
        uncertainty,
    })
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

/// Which metrics to compute, and their settings.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MetricRequest {
    /// `None`: every metric the inputs allow (explicitly asked-for metrics that cannot be
    /// computed are errors).
    pub metrics: Option<Vec<Metric>>,
    /// Splits, distances, subsets.
    pub options: MetricOptions,
}

impl MetricRequest {
    /// Whether the reference's features themselves (not only its statistics) are needed.
    pub fn needs_reference_features(&self) -> bool {
        self.metrics.as_ref().is_none_or(|m| {
            m.iter().any(|m| {
                m.needs().iter().any(|n| {
                    matches!(
                        n,
                        Need::ReferencePoolFeatures
                            | Need::ReferenceDinov2Features
                            | Need::ReferenceClip
                    )
                })
            })
        })
    }

    /// Run-record fields describing these settings.
    pub fn record(&self) -> Vec<(&'static str, Value)> {
        let o = &self.options;
        let mut fields = vec![
            (
                "is_splits",
                Value::from(match o.is_splits {
                    Splits::Adm { .. } => "adm",
                    Splits::Equal { .. } => "torchfidelity",
                }),
            ),
            (
                "pr_distance",
                Value::from(match o.manifold.precision {
                    DistancePrecision::Exact => "exact",
                    DistancePrecision::AdmFp16 => "admfp16",
                }),
            ),
            ("pr_k", Value::from(o.manifold.k)),
            ("kid_subsets", Value::from(o.kid.subsets)),
            ("kid_subset_size", Value::from(o.kid.subset_size)),
            ("kid_seed", Value::from(o.kid.seed)),
        ];
        if let Splits::Equal {
            shuffle: Some(seed),
            ..
        } = o.is_splits
        {
            fields.push(("is_seed", Value::from(seed)));
        }
        fields
    }
}

/// The `run` object every record starts with: the tool version and the command line.
pub fn run_info(fields: impl IntoIterator<Item = (&'static str, Value)>) -> Map<String, Value> {
    let mut run = Map::new();
    run.insert(
        "tool_version".into(),
        Value::from(env!("CARGO_PKG_VERSION")),
    );
    run.insert(
        "command_line".into(),
        // Lossy: a non-UTF-8 argument must not fail a finished run at its last step.
        Value::from(
            std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
        ),
    );
    // The thread counts are recorded because on the CPU they change the rounding of the
    // networks' and the metrics' arithmetic (see the README's Determinism notes).
    run.insert(
        "threads".into(),
        serde_json::json!({
            "libtorch": tch::get_num_threads(),
            "rayon": rayon::current_num_threads(),
        }),
    );
    for (key, value) in fields {
        run.insert(key.into(), value);
    }
    run
}

/// Computes the requested metrics of `sample` (consumed: its arrays are freed as soon as no
/// metric needs them) against `reference`; `captions`: row i the CLIP text embedding of sample
/// i's caption, for the CLIP score of text-to-image runs; `run` describes the run.
pub fn evaluate(
    mut sample: FeatureSet,
    captions: Option<&ndarray::Array2<f32>>,
    reference: Option<&Reference>,
    request: &MetricRequest,
    run: Map<String, Value>,
) -> Result<RunRecord> {
    let plan = plan(
        request.metrics.as_deref(),
        &sample,
        captions,
        reference,
        &request.options,
    )?;
    let planned = &plan.metrics;
    let sample_stats = sample_statistics(planned, &sample)?;
    let mut notes = caveats(&plan, &sample, &sample_stats);
    let n_samples = sample.len();
    // Feature arrays no later metric reads are freed before the metrics allocate their own
    // matrices (50,000 x 2048 pool features are 400 MB).
    if !needed(planned, Need::SamplePool) && request.options.bootstrap.resamples == 0 {
        sample.pool = None;
    }
    // The bootstrap resamples the features behind each Fréchet distance.
    if request.options.bootstrap.resamples == 0 {
        sample.spatial = None;
    }
    let computed = compute(
        planned,
        &sample,
        captions,
        &sample_stats,
        reference,
        &request.options,
    )?;
    let asked = request.options.kid.subset_size;
    let detail = |key: &str| computed.details.iter().find(|(k, _)| *k == key);
    if detail("is_splits_used").and_then(|(_, used)| used.as_u64()) == Some(1) {
        notes.push(format!(
            "`is`: one split of {n_samples} samples, so inception_score_std is 0 by construction, not a measured spread"
        ));
    }
    if let Some(used) = detail("kid_subset_size").and_then(|(_, used)| used.as_u64()) {
        if used < asked as u64 {
            notes.push(format!(
                "`kid`: subsets of {used} rows (the smaller set's size), not the {asked} asked for"
            ));
        }
    }
    let mut run = run;
    if let Some(sha256) = reference.and_then(|r| r.sha256.as_ref()) {
        run.insert(REFERENCE_SHA256.into(), Value::from(sha256.as_str()));
    }
    run.extend(computed.details.into_iter().map(|(k, v)| (k.to_owned(), v)));
    if !notes.is_empty() {
        run.insert("notes".into(), Value::from(notes));
    }
    Ok(RunRecord {
        metrics: computed.values,
        uncertainty: computed.uncertainty,
        run,
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
        let planned = plan(None, &sample, None, None, &options).unwrap().metrics;
        assert_eq!(planned.into_iter().collect::<Vec<_>>(), [Metric::Is]);
        assert!(plan(Some(&[Metric::Fid]), &sample, None, None, &options).is_err());
    }
}
