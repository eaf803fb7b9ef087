//! `llamagen-eval check`: a run's metrics against a recorded baseline, with per-metric tolerances
//! and the right direction for each metric, for CI.
//!
//! A baseline file is JSON with a `metrics` object (a run's `metrics.json` is itself a valid
//! baseline); `check --write-baseline` writes `{"metrics": ..., "run": ..., "baseline": {...}}`.
//! It may also hold a `tolerances` object (`{"fid": "5%", "precision": 0.02}`), which overrides
//! the defaults and is overridden by `--tolerance`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::metric::{Direction, MetricKey, Tolerance};
use crate::record::{MetricValues, RunRecord};

/// Parses `fid=0.05,is=2%,precision=off` into (metric, tolerance) pairs.
pub fn parse_tolerances(spec: &str) -> Result<Vec<(MetricKey, Tolerance)>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = item.split_once('=').with_context(|| {
            format!("tolerance `{item}` is not METRIC=VALUE (e.g. fid=0.05 or is=2%)")
        })?;
        let metric = MetricKey::from_name(name).with_context(|| {
            format!(
                "tolerance `{item}`: unknown metric `{}` (known: is, {})",
                name.trim(),
                MetricKey::ALL.map(MetricKey::name).join(", ")
            )
        })?;
        let tolerance = Tolerance::parse(value).with_context(|| format!("tolerance `{item}`"))?;
        if metric.direction() == Direction::Informational && tolerance != Tolerance::Off {
            bail!("tolerance `{item}`: `{metric}` is a spread, shown but never checked");
        }
        out.push((metric, tolerance));
    }
    Ok(out)
}

/// The value of `metric` as a finite number; errors name the file and metric. (A record read
/// from JSON holds NaN where the file has `null`, which is how NaN and infinity are written.)
pub fn finite_metric(metrics: &MetricValues, metric: MetricKey, file: &Path) -> Result<f64> {
    match metrics.get(metric) {
        None => bail!("{}: no `{metric}`", file.display()),
        Some(v) if v.is_finite() => Ok(v),
        Some(_) => bail!(
            "{}: `{metric}` is not a finite number (null: NaN or infinite when it was computed)",
            file.display()
        ),
    }
}

/// A baseline: metric values, and tolerances recorded with it.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The recorded values, every one finite.
    pub metrics: MetricValues,
    /// Tolerances recorded with the baseline, in file order (later entries win).
    pub tolerances: Vec<(MetricKey, Tolerance)>,
}

impl Baseline {
    /// Reads a baseline file; metrics outside the registry are left out with a warning, and a
    /// metric that is not a finite number is an error.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("baseline {} not found", path.display());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read baseline {}", path.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("baseline {}: invalid JSON", path.display()))?;
        let metrics = match doc.get("metrics") {
            Some(Value::Object(m)) => m,
            _ => bail!("baseline {}: no `metrics` object", path.display()),
        };
        if metrics.is_empty() {
            bail!("baseline {}: `metrics` is empty", path.display());
        }
        let values = MetricValues::from_json(metrics, path)?;
        for (metric, _) in values.iter() {
            finite_metric(&values, metric, path)?;
        }
        if values.is_empty() {
            bail!("baseline {}: no known metric in `metrics`", path.display());
        }
        let mut tolerances = Vec::new();
        match doc.get("tolerances") {
            None | Some(Value::Null) => {}
            Some(Value::Object(t)) => {
                for (name, value) in t {
                    let text = match value {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        other => bail!(
                            "baseline {}: tolerance of `{name}` is {other}, not a number or string",
                            path.display()
                        ),
                    };
                    tolerances.extend(
                        parse_tolerances(&format!("{name}={text}"))
                            .with_context(|| format!("baseline {}", path.display()))?,
                    );
                }
            }
            Some(_) => bail!("baseline {}: `tolerances` is not an object", path.display()),
        }
        Ok(Baseline {
            metrics: values,
            tolerances,
        })
    }
}

/// The outcome for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within tolerance.
    Ok,
    /// Better than the baseline by more than the tolerance.
    Better,
    /// Worse than the baseline by more than the tolerance.
    Regressed,
    /// Not checked (a spread, or tolerance `off`).
    Info,
}

impl Verdict {
    /// The verdict column of the table.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Better => "better",
            Verdict::Regressed => "REGRESSED",
            Verdict::Info => "-",
        }
    }
}

/// One line of the comparison.
#[derive(Debug, Clone)]
pub struct Row {
    /// The metric compared.
    pub metric: MetricKey,
    /// Its baseline value.
    pub baseline: f64,
    /// Its value in the run.
    pub current: f64,
    /// The tolerance applied (`--tolerance`, else the baseline's, else the default).
    pub tolerance: Tolerance,
    /// Which way the metric improves.
    pub direction: Direction,
    /// The outcome.
    pub verdict: Verdict,
}

impl Row {
    /// Current minus baseline.
    pub fn delta(&self) -> f64 {
        self.current - self.baseline
    }
}

/// Compares every baseline metric with the run's; a baseline metric the run lacks, or a value
/// that is not a finite number, is an error.
pub fn compare(
    baseline: &Baseline,
    run_metrics: &MetricValues,
    run_file: &Path,
    overrides: &[(MetricKey, Tolerance)],
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (metric, base) in baseline.metrics.iter() {
        if run_metrics.get(metric).is_none() {
            bail!(
                "{}: the baseline has `{metric}` but the run does not (it was not computed; run with the same --metrics)",
                run_file.display()
            );
        }
        let current = finite_metric(run_metrics, metric, run_file)?;
        let direction = metric.direction();
        // `--tolerance` wins over the baseline file's tolerances, which win over the defaults.
        let tolerance = overrides
            .iter()
            .rev()
            .find(|(m, _)| *m == metric)
            .or_else(|| baseline.tolerances.iter().rev().find(|(m, _)| *m == metric))
            .map(|(_, t)| *t)
            .unwrap_or_else(|| metric.default_tolerance());
        let verdict = match (direction, tolerance) {
            (Direction::Informational, _) | (_, Tolerance::Off) => Verdict::Info,
            (direction, tolerance) => {
                let worse_by = match direction {
                    Direction::LowerIsBetter => current - base,
                    _ => base - current,
                };
                let allowed = tolerance.allowed(base);
                // Round-off slack so that a value exactly at the tolerance passes.
                let slack = 1e-9 * (1.0 + base.abs());
                if worse_by > allowed + slack {
                    Verdict::Regressed
                } else if -worse_by > allowed + slack {
                    Verdict::Better
                } else {
                    Verdict::Ok
                }
            }
        };
        rows.push(Row {
            metric,
            baseline: base,
            current,
            tolerance,
            direction,
            verdict,
        });
    }
    Ok(rows)
}

/// Writes `record` (read from `file`) as a baseline to `target`, atomically:
/// `{"metrics", "run", "baseline"}`, the last saying where and when it came from. Every metric must
/// be a finite number: a NaN run cannot become a baseline.
pub fn write_baseline(record: &RunRecord, file: &Path, target: &Path) -> Result<()> {
    for (metric, _) in record.metrics.iter() {
        finite_metric(&record.metrics, metric, file)?;
    }
    if record.metrics.is_empty() {
        bail!("{}: no metrics to record", file.display());
    }
    let mut about = Map::new();
    about.insert("source".into(), Value::from(file.display().to_string()));
    about.insert(
        "written_by".into(),
        Value::from(format!("llamagen-eval {}", env!("CARGO_PKG_VERSION"))),
    );
    about.insert(
        "written_at_utc".into(),
        Value::from(crate::record::utc_timestamp()),
    );
    let mut doc = Map::new();
    doc.insert("metrics".into(), serde_json::to_value(&record.metrics)?);
    doc.insert("run".into(), Value::Object(record.run.clone()));
    doc.insert("baseline".into(), Value::Object(about));
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let json = serde_json::to_string_pretty(&Value::Object(doc))?;
    Ok(crate::io::write_atomically(target, json.as_bytes())?)
}

fn number(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e6).contains(&a) {
        format!("{v:.4e}")
    } else {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0');
        s.strip_suffix('.').unwrap_or(s).to_string()
    }
}

/// The comparison as a terminal table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "metric",
        "baseline",
        "current",
        "delta",
        "tolerance",
        "verdict",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let delta = r.delta();
            let relative = if r.baseline != 0.0 {
                format!(" ({:+.2}%)", 100.0 * delta / r.baseline.abs())
            } else {
                String::new()
            };
            let sign = if delta >= 0.0 { "+" } else { "" };
            let tolerance = match (r.direction, r.tolerance) {
                (Direction::Informational, _) | (_, Tolerance::Off) => "-".to_string(),
                (Direction::LowerIsBetter, t) => format!("+{t}"),
                (_, t) => format!("-{t}"),
            };
            [
                r.metric.name().to_string(),
                number(r.baseline),
                number(r.current),
                format!("{sign}{}{relative}", number(delta)),
                tolerance,
                r.verdict.label().to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[&str]| {
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i == 0 {
                let _ = write!(out, "{cell:<w$}");
            } else {
                let _ = write!(out, "  {cell:>w$}");
            }
        }
        out.push('\n');
    };
    line(&mut out, &header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(
        &mut out,
        &rule.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for row in &cells {
        line(
            &mut out,
            &row.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, f64)]) -> MetricValues {
        pairs
            .iter()
            .map(|(m, v)| (MetricKey::from_name(m).unwrap(), *v))
            .collect()
    }

    fn baseline(pairs: &[(&str, f64)]) -> Baseline {
        Baseline {
            metrics: values(pairs),
            tolerances: vec![],
        }
    }

    fn run(pairs: &[(&str, f64)]) -> MetricValues {
        values(pairs)
    }

    #[test]
    fn tolerances_parse() {
        let t = parse_tolerances("fid=0.05, is=2%,precision=off").unwrap();
        assert_eq!(
            t,
            [
                (MetricKey::Fid, Tolerance::Absolute(0.05)),
                (MetricKey::InceptionScore, Tolerance::Relative(0.02)),
                (MetricKey::Precision, Tolerance::Off)
            ]
        );
        for bad in ["fid", "fid=x", "fid=-1", "nope=1", "fid=1%%", "kid_std=1"] {
            assert!(parse_tolerances(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn directions_and_boundaries() {
        let b = baseline(&[("fid", 10.0), ("precision", 0.8), ("kid_std", 0.1)]);
        let file = Path::new("m.json");
        let verdicts = |pairs: &[(&str, f64)], tolerances: &[(MetricKey, Tolerance)]| {
            compare(&b, &run(pairs), file, tolerances).unwrap()
        };
        // Exactly at the tolerance passes; beyond it fails, each in its own direction.
        let rows = verdicts(&[("fid", 10.5), ("precision", 0.78), ("kid_std", 9.0)], &[]);
        assert!(rows
            .iter()
            .all(|r| matches!(r.verdict, Verdict::Ok | Verdict::Info)));
        let rows = verdicts(&[("fid", 10.6), ("precision", 0.9), ("kid_std", 0.0)], &[]);
        assert_eq!(rows[0].verdict, Verdict::Regressed);
        assert_eq!(rows[1].verdict, Verdict::Better);
        assert_eq!(rows[2].verdict, Verdict::Info);
        let worse_precision = [("fid", 9.0), ("precision", 0.7), ("kid_std", 0.0)];
        let rows = verdicts(&worse_precision, &[]);
        assert_eq!(rows[0].verdict, Verdict::Better);
        assert_eq!(rows[1].verdict, Verdict::Regressed);
        let loose = [(MetricKey::Precision, Tolerance::Absolute(0.2))];
        let rows = verdicts(&worse_precision, &loose);
        assert_eq!(rows[1].verdict, Verdict::Ok);
        assert!(compare(&b, &run(&[("fid", 9.0)]), file, &[]).is_err());
        let mut nan = run(&[("fid", 9.0), ("kid_std", 0.0)]);
        // A null in the file is read as NaN.
        nan.insert(MetricKey::Precision, f64::NAN);
        let err = compare(&b, &nan, file, &[]).unwrap_err().to_string();
        assert!(
            err.contains("m.json: `precision` is not a finite number"),
            "{err}"
        );
        assert!(table(&rows).contains("REGRESSED") || table(&rows).contains("ok"));
    }
}
