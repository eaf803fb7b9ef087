//! `llamagen-eval metrics`: the metrics from feature files, no Inception run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use llamagen_metrics::inception_score::Splits;
use llamagen_metrics::kid::KidConfig;
use llamagen_metrics::manifold::{DistancePrecision, ManifoldConfig};
use llamagen_metrics::stats::ReferenceStats;
use serde_json::Value;

use crate::evaluate::{self, Metric, MetricOptions, Reference};
use crate::features::FeatureSet;
use crate::record::{MetricValues, RunRecord};

/// Which metrics, and their settings (shared by `fid`, `metrics` and `recon`).
#[derive(Args, Debug, Clone)]
pub struct MetricArgs {
    /// Metrics to compute, comma-separated (default: every one the inputs allow).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub metrics: Option<Vec<Metric>>,
    /// Inception Score splits: `adm` (consecutive splits of 5000, partial last) or
    /// `torch-fidelity` (10 equal splits, unshuffled).
    #[arg(long, value_enum, default_value_t = IsConvention::Adm)]
    pub is_splits: IsConvention,
    /// Arithmetic of precision/recall distances: `exact` (f64) or `adm-fp16` (ADM's float16
    /// rounding, reproducing its published figures).
    #[arg(long, value_enum, default_value_t = PrDistance::Exact)]
    pub pr_distance: PrDistance,
    /// Neighbourhood size k of precision/recall/density/coverage.
    #[arg(long, default_value_t = 3)]
    pub pr_k: usize,
    /// KID: number of random subsets.
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    /// KID: rows per subset (capped at the smaller set's size).
    #[arg(long, default_value_t = 1000)]
    pub kid_subset_size: usize,
    /// Seed of the KID subsets (NumPy RandomState-compatible, as torch-fidelity).
    #[arg(long, default_value_t = 2020)]
    pub kid_seed: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsConvention {
    Adm,
    TorchFidelity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrDistance {
    Exact,
    AdmFp16,
}

impl MetricArgs {
    pub fn options(&self) -> MetricOptions {
        MetricOptions {
            is_splits: match self.is_splits {
                IsConvention::Adm => Splits::default(),
                IsConvention::TorchFidelity => Splits::Equal { splits: 10 },
            },
            manifold: ManifoldConfig {
                k: self.pr_k,
                precision: match self.pr_distance {
                    PrDistance::Exact => DistancePrecision::Exact,
                    PrDistance::AdmFp16 => DistancePrecision::AdmFp16,
                },
                ..Default::default()
            },
            kid: KidConfig {
                subsets: self.kid_subsets,
                subset_size: self.kid_subset_size,
                seed: self.kid_seed,
            },
        }
    }

    /// Run-record fields describing these settings.
    pub fn record(&self) -> Vec<(&'static str, Value)> {
        vec![
            (
                "is_splits",
                Value::from(format!("{:?}", self.is_splits).to_lowercase()),
            ),
            (
                "pr_distance",
                Value::from(format!("{:?}", self.pr_distance).to_lowercase()),
            ),
            ("pr_k", Value::from(self.pr_k)),
            ("kid_subsets", Value::from(self.kid_subsets)),
            ("kid_subset_size", Value::from(self.kid_subset_size)),
        ]
    }
}

/// Where the run's outputs go.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Output folder (default: reports/<--name or UTC timestamp>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run name, used for the default output folder.
    #[arg(long)]
    pub name: Option<String>,
}

impl OutputArgs {
    pub fn dir(&self) -> PathBuf {
        super::output_dir(self.out.as_deref(), self.name.as_deref())
    }
}

#[derive(Args, Debug)]
pub struct MetricsCommand {
    /// Sample features (`pool`, `spatial`, `logits`; any subset) from `llamagen-eval features`.
    #[arg(long, value_name = "F.npz")]
    pub sample_features: PathBuf,
    /// Reference features, or an ADM reference batch / `stats` file (mu, sigma, mu_s, sigma_s).
    /// May be left out when only IS is asked for.
    #[arg(long, value_name = "R.npz")]
    pub ref_features: Option<PathBuf>,
    #[command(flatten)]
    pub metric: MetricArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Reads a reference given as features or as statistics (whichever the file holds).
pub fn reference_from_file(path: &Path) -> Result<Reference> {
    let names = super::npz_entry_names(path)?;
    if names
        .iter()
        .any(|n| matches!(n.as_str(), "pool" | "spatial" | "logits"))
    {
        let features = FeatureSet::load(path)?;
        return Reference::from_features(features)
            .with_context(|| format!("reference features {}", path.display()));
    }
    let stats = ReferenceStats::load(path)?;
    if stats.pool.is_none() && stats.spatial.is_none() {
        anyhow::bail!(
            "{}: holds neither features (pool/spatial/logits) nor statistics (mu/sigma, mu_s/sigma_s); entries: {}",
            path.display(),
            names.join(", ")
        );
    }
    Ok(Reference {
        stats,
        features: None,
    })
}

/// Computes, prints and writes the metrics of one run.
pub fn evaluate_and_write(
    metric_args: &MetricArgs,
    sample: &FeatureSet,
    reference: Option<&Reference>,
    out_dir: &Path,
    run: serde_json::Map<String, Value>,
    quiet: bool,
) -> Result<MetricValues> {
    let planned = evaluate::plan(metric_args.metrics.as_deref(), sample, reference)?;
    let metrics = evaluate::compute(&planned, sample, reference, &metric_args.options())?;
    let record = RunRecord { metrics, run };
    record.write(out_dir)?;
    print!("{}", record.metrics.table());
    if !quiet {
        eprintln!("wrote {}/metrics.json and metrics.csv", out_dir.display());
    }
    Ok(record.metrics)
}

pub fn run(cmd: &MetricsCommand, quiet: bool) -> Result<()> {
    let sample = FeatureSet::load(&cmd.sample_features)?;
    let reference = cmd
        .ref_features
        .as_deref()
        .map(reference_from_file)
        .transpose()?;
    let n_reference = reference
        .as_ref()
        .and_then(|r| r.features.as_ref())
        .map(FeatureSet::len);
    let mut record = vec![
        ("n_samples", Value::from(sample.len())),
        (
            "n_reference",
            n_reference.map(Value::from).unwrap_or(Value::Null),
        ),
        (
            "sample_features",
            Value::from(cmd.sample_features.display().to_string()),
        ),
        (
            "ref_features",
            cmd.ref_features
                .as_ref()
                .map(|p| Value::from(p.display().to_string()))
                .unwrap_or(Value::Null),
        ),
    ];
    record.extend(cmd.metric.record());
    let run = super::run_record(record);
    evaluate_and_write(
        &cmd.metric,
        &sample,
        reference.as_ref(),
        &cmd.output.dir(),
        run,
        quiet,
    )?;
    Ok(())
}
