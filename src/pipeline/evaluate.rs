//! The last step of every evaluation: sample features and a reference in, the run record
//! (`{"metrics": ..., "run": ...}`) out.

use anyhow::Result;
use llamagen_metrics::inception_score::Splits;
use llamagen_metrics::manifold::DistancePrecision;
use serde_json::{Map, Value};

use crate::evaluate::{
    compute, needed, plan, sample_statistics, Metric, MetricOptions, Need, Reference,
};
use crate::features::FeatureSet;
use crate::record::RunRecord;

/// Which metrics to compute, and their settings.
#[derive(Debug, Clone, Default)]
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
    for (key, value) in fields {
        run.insert(key.into(), value);
    }
    run
}

/// `YYYYMMDD-HHMMSS` in UTC, for run folder names.
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
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
    let planned = plan(
        request.metrics.as_deref(),
        &sample,
        captions,
        reference,
        &request.options,
    )?;
    let sample_stats = sample_statistics(&planned, &sample)?;
    // Feature arrays no later metric reads are freed before the metrics allocate their own
    // matrices (50,000 x 2048 pool features are 400 MB).
    if !needed(&planned, Need::SamplePool) {
        sample.pool = None;
    }
    sample.spatial = None;
    let computed = compute(
        &planned,
        &sample,
        captions,
        &sample_stats,
        reference,
        &request.options,
    )?;
    let mut run = run;
    run.extend(computed.details.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Ok(RunRecord {
        metrics: computed.values,
        run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_right() {
        let t = utc_timestamp();
        assert_eq!(t.len(), 15);
        assert!(t.starts_with("20"));
        assert_eq!(&t[8..9], "-");
    }
}
