//! `metrics`: flags and printing; the work is `evaluate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use llamagen_eval::evaluate::Reference;
use llamagen_eval::evaluate::{evaluate, run_info};
use llamagen_eval::feature_set::FeatureSet;
use llamagen_eval::progress::Progress;
use llamagen_eval::record::RunRecord;
use serde_json::Value;

use super::args::{MetricArgs, OutputArgs};
use super::output::print_record;

/// `metrics` flags.
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

/// Runs `metrics`.
pub fn run(cmd: &MetricsCommand, progress: Progress) -> Result<ExitCode> {
    let sample = FeatureSet::load(&cmd.sample_features)?;
    let mut reference = cmd
        .ref_features
        .as_deref()
        .map(Reference::from_file)
        .transpose()?;
    let n_reference = reference
        .as_ref()
        .and_then(|r| r.features.as_ref())
        .map(FeatureSet::len);
    let path = |p: Option<&PathBuf>| {
        p.map(|p| Value::from(p.display().to_string()))
            .unwrap_or(Value::Null)
    };
    let request = cmd.metric.request();
    let mut fields = vec![
        ("n_samples", Value::from(sample.len())),
        (
            "n_reference",
            n_reference.map(Value::from).unwrap_or(Value::Null),
        ),
        ("sample_features", path(Some(&cmd.sample_features))),
        ("ref_features", path(cmd.ref_features.as_ref())),
    ];
    fields.extend(request.record());
    if !request.needs_reference_features() {
        // Statistics were computed when it was read; the arrays are not needed any more.
        if let Some(r) = reference.as_mut() {
            r.features = None;
        }
    }
    let out_dir = cmd.output.dir();
    RunRecord::remove_stale(&out_dir)?;
    let record = evaluate(sample, None, reference.as_ref(), &request, run_info(fields))?;
    record.write(&out_dir)?;
    print_record(&record, &out_dir, progress);
    Ok(ExitCode::SUCCESS)
}
