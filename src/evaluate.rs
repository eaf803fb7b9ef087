//! From feature sets to the table every paper prints: which metrics to compute, computing them
//! from sample and reference features, and writing `metrics.json` / `metrics.csv`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::inception_score::{inception_score, Splits};
use llamagen_metrics::kid::{kernel_inception_distance_f32, KidConfig};
use llamagen_metrics::manifold::{manifold_metrics_f32, DistancePrecision, ManifoldConfig};
use llamagen_metrics::stats::{GaussianStats, ReferenceStats};
use serde_json::{Map, Value};

use crate::features::FeatureSet;

/// A metric family the user can ask for with `--metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
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
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Metric::Fid => "fid",
            Metric::Sfid => "sfid",
            Metric::Is => "is",
            Metric::Pr => "pr",
            Metric::Kid => "kid",
        })
    }
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Fid,
        Metric::Sfid,
        Metric::Is,
        Metric::Pr,
        Metric::Kid,
    ];
}

/// The figures every report may hold, in their stable order (JSON keys and CSV columns).
pub const METRIC_NAMES: [&str; 16] = [
    "fid",
    "sfid",
    "inception_score",
    "inception_score_std",
    "precision",
    "recall",
    "density",
    "coverage",
    "kid",
    "kid_std",
    "rfid",
    "psnr",
    "ssim",
    "ssim_llamagen",
    "codebook_usage",
    "codebook_perplexity",
];

/// Options of the metric computations.
#[derive(Debug, Clone, Copy)]
pub struct MetricOptions {
    pub is_splits: Splits,
    pub manifold: ManifoldConfig,
    pub kid: KidConfig,
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
        }
    }
}

/// What is known about the reference set: its statistics and, when available, its pool features
/// (precision/recall and KID need the features themselves).
#[derive(Debug, Clone, Default)]
pub struct Reference {
    pub stats: ReferenceStats,
    pub features: Option<FeatureSet>,
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
        Ok(Reference {
            stats,
            features: Some(features),
        })
    }

    fn pool_features(&self) -> Option<&ndarray::Array2<f32>> {
        self.features.as_ref().and_then(|f| f.pool.as_ref())
    }
}

/// Metric values by name, in [`METRIC_NAMES`] order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricValues(pub Vec<(&'static str, f64)>);

impl MetricValues {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    pub fn insert(&mut self, name: &'static str, value: f64) {
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value));
        self.0.sort_by_key(|(n, _)| {
            METRIC_NAMES
                .iter()
                .position(|m| m == n)
                .unwrap_or(usize::MAX)
        });
    }

    /// A two-column table for the terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.0 {
            let _ = writeln!(out, "{name:<20} {value:>14.6}");
        }
        out
    }
}

/// Which of `requested` can be computed from what the inputs hold; `explicit` requests that cannot
/// be met are errors, defaulted ones are dropped with a log line.
pub fn plan(
    requested: Option<&[Metric]>,
    sample: &FeatureSet,
    reference: Option<&Reference>,
) -> Result<BTreeSet<Metric>> {
    let explicit = requested.is_some();
    let wanted: BTreeSet<Metric> = requested.unwrap_or(&Metric::ALL).iter().copied().collect();
    let mut planned = BTreeSet::new();
    for metric in wanted {
        let missing = match metric {
            Metric::Fid if sample.pool.is_none() => Some("the samples' pool features"),
            Metric::Fid if reference.and_then(|r| r.stats.pool.as_ref()).is_none() => {
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

/// Computes the planned metrics.
pub fn compute(
    metrics: &BTreeSet<Metric>,
    sample: &FeatureSet,
    reference: Option<&Reference>,
    options: &MetricOptions,
) -> Result<MetricValues> {
    let mut values = MetricValues::default();
    for metric in metrics {
        match metric {
            Metric::Fid | Metric::Sfid => {
                let (features, stats, name) = if *metric == Metric::Fid {
                    (
                        &sample.pool,
                        reference.and_then(|r| r.stats.pool.as_ref()),
                        "fid",
                    )
                } else {
                    (
                        &sample.spatial,
                        reference.and_then(|r| r.stats.spatial.as_ref()),
                        "sfid",
                    )
                };
                let features = need(features.as_ref(), "sample features")?;
                let stats_ref = stats.context("missing reference statistics")?;
                let stats_sample = GaussianStats::from_features_f32(features.view())?;
                values.insert(name, frechet_distance(&stats_sample, stats_ref)?);
            }
            Metric::Is => {
                let logits = need(sample.logits.as_ref(), "sample logits")?;
                let score = inception_score(logits.view(), options.is_splits)?;
                values.insert("inception_score", score.mean);
                values.insert("inception_score_std", score.std);
            }
            Metric::Pr => {
                let samples = need(sample.pool.as_ref(), "sample pool features")?;
                let refs = need(
                    reference.and_then(Reference::pool_features),
                    "reference pool features",
                )?;
                let m = manifold_metrics_f32(refs.view(), samples.view(), &options.manifold)?;
                values.insert("precision", m.precision);
                values.insert("recall", m.recall);
                values.insert("density", m.density);
                values.insert("coverage", m.coverage);
            }
            Metric::Kid => {
                let samples = need(sample.pool.as_ref(), "sample pool features")?;
                let refs = need(
                    reference.and_then(Reference::pool_features),
                    "reference pool features",
                )?;
                let kid = kernel_inception_distance_f32(refs.view(), samples.view(), &options.kid)?;
                values.insert("kid", kid.mean);
                values.insert("kid_std", kid.std);
            }
        }
    }
    Ok(values)
}

/// Writes `metrics.json` (`{"metrics": {...}, "run": {...}}`) and `metrics.csv` (one row: every
/// metric column of [`METRIC_NAMES`], empty when not computed, then the run's scalar fields) into
/// `dir`, each atomically.
pub fn write_outputs(dir: &Path, values: &MetricValues, run: &Map<String, Value>) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let mut metrics = Map::new();
    for (name, value) in &values.0 {
        metrics.insert((*name).to_string(), Value::from(*value));
    }
    let mut doc = Map::new();
    doc.insert("metrics".into(), Value::Object(metrics));
    doc.insert("run".into(), Value::Object(run.clone()));
    let json = serde_json::to_string_pretty(&Value::Object(doc))?;
    write_atomically(&dir.join("metrics.json"), json.as_bytes())?;

    let mut writer = csv::Writer::from_writer(Vec::new());
    let run_columns: Vec<(&String, String)> = run
        .iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s.clone())),
            Value::Number(n) => Some((k, n.to_string())),
            Value::Bool(b) => Some((k, b.to_string())),
            _ => None,
        })
        .collect();
    let header: Vec<&str> = METRIC_NAMES
        .iter()
        .copied()
        .chain(run_columns.iter().map(|(k, _)| k.as_str()))
        .collect();
    writer.write_record(&header)?;
    let row: Vec<String> = METRIC_NAMES
        .iter()
        .map(|name| values.get(name).map(|v| v.to_string()).unwrap_or_default())
        .chain(run_columns.iter().map(|(_, v)| v.clone()))
        .collect();
    writer.write_record(&row)?;
    let bytes = writer.into_inner().context("CSV buffer")?;
    write_atomically(&dir.join("metrics.csv"), &bytes)
}

/// Writes `bytes` to a temporary sibling of `path`, then renames it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(crate::io::write_atomically(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn values_keep_the_documented_order() {
        let mut v = MetricValues::default();
        v.insert("kid", 0.1);
        v.insert("fid", 3.0);
        v.insert("inception_score", 100.0);
        let names: Vec<_> = v.0.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["fid", "inception_score", "kid"]);
    }

    #[test]
    fn plan_drops_defaulted_metrics_and_rejects_explicit_ones() {
        let sample = FeatureSet {
            logits: Some(Array2::zeros((4, 3))),
            ..Default::default()
        };
        let planned = plan(None, &sample, None).unwrap();
        assert_eq!(planned.into_iter().collect::<Vec<_>>(), [Metric::Is]);
        assert!(plan(Some(&[Metric::Fid]), &sample, None).is_err());
    }
}
