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

use crate::evaluate::METRIC_NAMES;

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    LowerIsBetter,
    HigherIsBetter,
    /// Shown, never a regression (spreads such as `inception_score_std`).
    Informational,
}

/// The direction of a metric of [`METRIC_NAMES`]; unknown names are informational.
pub fn direction(metric: &str) -> Direction {
    match metric {
        "fid" | "sfid" | "kid" | "rfid" => Direction::LowerIsBetter,
        "inception_score"
        | "precision"
        | "recall"
        | "density"
        | "coverage"
        | "psnr"
        | "ssim"
        | "ssim_llamagen"
        | "codebook_usage"
        | "codebook_perplexity" => Direction::HigherIsBetter,
        _ => Direction::Informational,
    }
}

/// How far a metric may move in the worse direction before it counts as a regression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// In the metric's own units.
    Absolute(f64),
    /// A fraction of the baseline's magnitude (`2%` is `Relative(0.02)`).
    Relative(f64),
    /// Not checked (`off`).
    Off,
}

impl Tolerance {
    /// `0.05` (absolute), `2%` (relative) or `off`.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Tolerance::Off);
        }
        let (number, relative) = match text.strip_suffix('%') {
            Some(n) => (n.trim(), true),
            None => (text, false),
        };
        let value: f64 = number.parse().map_err(|_| {
            anyhow::anyhow!("`{text}` is not a number, a percentage (`2%`) or `off`")
        })?;
        if !value.is_finite() || value < 0.0 {
            bail!("`{text}` must be a finite number at least 0");
        }
        Ok(if relative {
            Tolerance::Relative(value / 100.0)
        } else {
            Tolerance::Absolute(value)
        })
    }

    /// The allowed worsening from `baseline`.
    pub fn allowed(self, baseline: f64) -> f64 {
        match self {
            Tolerance::Absolute(a) => a,
            Tolerance::Relative(r) => r * baseline.abs(),
            Tolerance::Off => f64::INFINITY,
        }
    }
}

impl std::fmt::Display for Tolerance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tolerance::Absolute(a) => write!(f, "{a}"),
            Tolerance::Relative(r) => write!(f, "{}%", r * 100.0),
            Tolerance::Off => f.write_str("off"),
        }
    }
}

/// The default tolerance of a metric: loose enough for reruns on other hardware and thread
/// counts with the same samples and seed, tight enough to catch a worse checkpoint.
pub fn default_tolerance(metric: &str) -> Tolerance {
    match metric {
        "fid" | "sfid" | "rfid" => Tolerance::Relative(0.05),
        "kid" => Tolerance::Absolute(0.001),
        "inception_score" | "codebook_perplexity" => Tolerance::Relative(0.02),
        "precision" | "recall" | "coverage" => Tolerance::Absolute(0.02),
        "density" => Tolerance::Absolute(0.05),
        "psnr" => Tolerance::Absolute(0.1),
        "ssim" | "ssim_llamagen" => Tolerance::Absolute(0.005),
        "codebook_usage" => Tolerance::Absolute(0.01),
        _ => Tolerance::Off,
    }
}

/// A metric's canonical name: `is` means `inception_score`, `is_std` `inception_score_std`;
/// case is ignored. `None` for names outside [`METRIC_NAMES`].
pub fn canonical_metric(name: &str) -> Option<&'static str> {
    let lower = name.trim().to_ascii_lowercase();
    let lower = match lower.as_str() {
        "is" => "inception_score",
        "is_std" => "inception_score_std",
        other => other,
    };
    METRIC_NAMES.iter().copied().find(|m| *m == lower)
}

/// Parses `fid=0.05,is=2%,precision=off` into (metric, tolerance) pairs.
pub fn parse_tolerances(spec: &str) -> Result<Vec<(&'static str, Tolerance)>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = item.split_once('=').with_context(|| {
            format!("tolerance `{item}` is not METRIC=VALUE (e.g. fid=0.05 or is=2%)")
        })?;
        let metric = canonical_metric(name).with_context(|| {
            format!(
                "tolerance `{item}`: unknown metric `{}` (known: is, {})",
                name.trim(),
                METRIC_NAMES.join(", ")
            )
        })?;
        let tolerance = Tolerance::parse(value).with_context(|| format!("tolerance `{item}`"))?;
        if direction(metric) == Direction::Informational && tolerance != Tolerance::Off {
            bail!("tolerance `{item}`: `{metric}` is a spread, shown but never checked");
        }
        out.push((metric, tolerance));
    }
    Ok(out)
}

/// A value of a metrics object as a finite number; errors name the file and metric.
pub fn finite_metric(metrics: &Map<String, Value>, name: &str, file: &Path) -> Result<f64> {
    match metrics.get(name) {
        None => bail!("{}: no `{name}`", file.display()),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() => Ok(v),
            _ => bail!("{}: `{name}` is not a finite number", file.display()),
        },
        Some(Value::Null) => bail!(
            "{}: `{name}` is null (NaN or infinite when it was computed)",
            file.display()
        ),
        Some(Value::String(s)) => bail!(
            "{}: `{name}` is the string {s:?} (NaN or not a number), not a finite number",
            file.display()
        ),
        Some(other) => bail!("{}: `{name}` is {other}, not a number", file.display()),
    }
}

/// A baseline: metric values, and tolerances recorded with it.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub metrics: Vec<(String, f64)>,
    pub tolerances: Vec<(&'static str, Tolerance)>,
}

impl Baseline {
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
        let mut values = Vec::new();
        for name in metrics.keys() {
            let canonical = canonical_metric(name).map(str::to_string);
            let value = finite_metric(metrics, name, path)?;
            values.push((canonical.unwrap_or_else(|| name.clone()), value));
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
    /// Not checked (a spread, an unknown metric, or tolerance `off`).
    Info,
}

impl Verdict {
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
    pub metric: String,
    pub baseline: f64,
    pub current: f64,
    pub tolerance: Tolerance,
    pub direction: Direction,
    pub verdict: Verdict,
}

impl Row {
    pub fn delta(&self) -> f64 {
        self.current - self.baseline
    }
}

/// Compares every baseline metric with the run's; a baseline metric the run lacks, or a value
/// that is not a finite number, is an error.
pub fn compare(
    baseline: &Baseline,
    run_metrics: &Map<String, Value>,
    run_file: &Path,
    overrides: &[(&'static str, Tolerance)],
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (metric, base) in &baseline.metrics {
        if !run_metrics.contains_key(metric.as_str()) {
            bail!(
                "{}: the baseline has `{metric}` but the run does not (it was not computed; run with the same --metrics)",
                run_file.display()
            );
        }
        let current = finite_metric(run_metrics, metric, run_file)?;
        let direction = direction(metric);
        // `--tolerance` wins over the baseline file's tolerances, which win over the defaults.
        let tolerance = overrides
            .iter()
            .rev()
            .find(|(m, _)| m == metric)
            .or_else(|| baseline.tolerances.iter().rev().find(|(m, _)| m == metric))
            .map(|(_, t)| *t)
            .unwrap_or_else(|| default_tolerance(metric));
        let verdict = match (direction, tolerance) {
            (Direction::Informational, _) | (_, Tolerance::Off) => Verdict::Info,
            (direction, tolerance) => {
                let worse_by = match direction {
                    Direction::LowerIsBetter => current - base,
                    _ => base - current,
                };
                let allowed = tolerance.allowed(*base);
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
            metric: metric.clone(),
            baseline: *base,
            current,
            tolerance,
            direction,
            verdict,
        });
    }
    Ok(rows)
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
                r.metric.clone(),
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

    fn baseline(pairs: &[(&str, f64)]) -> Baseline {
        Baseline {
            metrics: pairs.iter().map(|(m, v)| (m.to_string(), *v)).collect(),
            tolerances: vec![],
        }
    }

    fn run(pairs: &[(&str, f64)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(m, v)| (m.to_string(), Value::from(*v)))
            .collect()
    }

    #[test]
    fn tolerances_parse() {
        let t = parse_tolerances("fid=0.05, is=2%,precision=off").unwrap();
        assert_eq!(
            t,
            [
                ("fid", Tolerance::Absolute(0.05)),
                ("inception_score", Tolerance::Relative(0.02)),
                ("precision", Tolerance::Off)
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
        // Exactly at the tolerance passes; beyond it fails, each in its own direction.
        let rows = compare(
            &b,
            &run(&[("fid", 10.5), ("precision", 0.78), ("kid_std", 9.0)]),
            file,
            &[],
        )
        .unwrap();
        assert!(rows
            .iter()
            .all(|r| matches!(r.verdict, Verdict::Ok | Verdict::Info)));
        let rows = compare(
            &b,
            &run(&[("fid", 10.6), ("precision", 0.9), ("kid_std", 0.0)]),
            file,
            &[],
        )
        .unwrap();
        assert_eq!(rows[0].verdict, Verdict::Regressed);
        assert_eq!(rows[1].verdict, Verdict::Better);
        assert_eq!(rows[2].verdict, Verdict::Info);
        let rows = compare(
            &b,
            &run(&[("fid", 9.0), ("precision", 0.7), ("kid_std", 0.0)]),
            file,
            &[],
        )
        .unwrap();
        assert_eq!(rows[0].verdict, Verdict::Better);
        assert_eq!(rows[1].verdict, Verdict::Regressed);
        let loose = [("precision", Tolerance::Absolute(0.2))];
        let rows = compare(
            &b,
            &run(&[("fid", 9.0), ("precision", 0.7), ("kid_std", 0.0)]),
            file,
            &loose,
        )
        .unwrap();
        assert_eq!(rows[1].verdict, Verdict::Ok);
        assert!(compare(&b, &run(&[("fid", 9.0)]), file, &[]).is_err());
        let mut nan = run(&[("fid", 9.0), ("kid_std", 0.0)]);
        nan.insert("precision".into(), Value::Null);
        assert!(compare(&b, &nan, file, &[]).is_err());
        assert!(table(&rows).contains("REGRESSED") || table(&rows).contains("ok"));
    }
}
