//! `llamagen-eval check`: a run's metrics against a recorded baseline, with per-metric tolerances
//! and the right direction for each metric, for CI.
//!
//! When both records carry a metric's bootstrap uncertainty (`--bootstrap N`), a difference
//! beyond the tolerance is a regression only when it is also significant: a one-sided z test of
//! the difference over `sqrt(se_run² + se_baseline²)` at `--confidence`. Two runs against
//! different references (`reference_sha256`) are not compared at all.
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
use crate::record::{reference_sha256, MetricValues, RunRecord, Uncertainties};

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

/// A baseline: metric values, their uncertainty, the reference they were computed against, and
/// tolerances recorded with it.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The recorded values, every one finite.
    pub metrics: MetricValues,
    /// Their bootstrap uncertainty, when the baseline's run had `--bootstrap N`.
    pub uncertainty: Uncertainties,
    /// The run's `reference_sha256`, when recorded.
    pub reference_sha256: Option<String>,
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
        let mut doc: Value = serde_json::from_str(&text)
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
        let reference_sha256 = match doc.get("run") {
            Some(Value::Object(run)) => reference_sha256(run).map(str::to_owned),
            _ => None,
        };
        let uncertainty = Uncertainties::from_json(
            doc.as_object_mut().and_then(|d| d.remove("uncertainty")),
            path,
        )?;
        Ok(Baseline {
            metrics: values,
            uncertainty,
            reference_sha256,
            tolerances,
        })
    }
}

/// Fails when the run and the baseline were evaluated against different references (both
/// records carry `reference_sha256` and they differ): their figures measure distances to
/// different sets, so no tolerance makes them comparable. Older records without the field pass.
pub fn same_reference(
    baseline: &Baseline,
    baseline_file: &Path,
    run: &RunRecord,
    run_file: &Path,
) -> Result<()> {
    if let (Some(base), Some(current)) = (
        baseline.reference_sha256.as_deref(),
        reference_sha256(&run.run),
    ) {
        if base != current {
            bail!(
                "{} and {} were evaluated against different references (reference_sha256 {} and {}): their figures do not compare; check the run against a baseline made with the same reference",
                run_file.display(),
                baseline_file.display(),
                short_sha(current),
                short_sha(base)
            );
        }
    }
    Ok(())
}

/// The first 12 hex digits, enough to tell two fingerprints apart in a message.
fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The critical value of a one-sided z test at `confidence` (0.95: 1.645), for
/// `0.5 <= confidence < 1`.
pub fn one_sided_z(confidence: f64) -> Result<f64> {
    if !(0.5..1.0).contains(&confidence) {
        bail!("--confidence {confidence}: must be at least 0.5 and below 1 (e.g. 0.95)");
    }
    Ok(normal_quantile(confidence))
}

/// The standard normal quantile for `0.5 <= p < 1`: Acklam's rational approximation (relative
/// error below 1.2e-9), its central and upper regions; the lower tail is never asked for.
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 6] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
        1.0,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 5] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
        1.0,
    ];
    let horner = |coefficients: &[f64], x: f64| coefficients.iter().fold(0.0, |acc, c| acc * x + c);
    if p <= 1.0 - 0.02425 {
        let q = p - 0.5;
        let r = q * q;
        horner(&A, r) * q / horner(&B, r)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -horner(&C, q) / horner(&D, q)
    }
}

/// The outcome for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within tolerance.
    Ok,
    /// Beyond the tolerance, but not significantly different at the chosen confidence: within
    /// the two runs' sampling noise.
    Noise,
    /// Better than the baseline by more than the tolerance (and significantly, when both
    /// records carry the uncertainty).
    Better,
    /// Worse than the baseline by more than the tolerance (and significantly, when both
    /// records carry the uncertainty).
    Regressed,
    /// Not checked (a spread, or tolerance `off`).
    Info,
}

impl Verdict {
    /// The verdict column of the table.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Noise => "ok (noise)",
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
    /// The standard error of the difference, `sqrt(se_run² + se_baseline²)`, when both records
    /// carry the metric's uncertainty.
    pub se: Option<f64>,
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

    /// The difference in standard errors, when known and the standard error is not zero.
    pub fn z(&self) -> Option<f64> {
        self.se.filter(|se| *se > 0.0).map(|se| self.delta() / se)
    }

    /// The normal 95% interval of the difference, when its standard error is known.
    pub fn interval95(&self) -> Option<[f64; 2]> {
        let half = normal_quantile(0.975) * self.se?;
        Some([self.delta() - half, self.delta() + half])
    }
}

/// Compares every baseline metric with the run's (after [`same_reference`]): a metric regresses
/// when it is worse than its tolerance allows and, when both records carry its uncertainty,
/// the difference is significant in a one-sided z test at `confidence`. A baseline metric the
/// run lacks, a value that is not a finite number, or an `se` tolerance without the uncertainty
/// on both sides, is an error.
pub fn compare(
    baseline: &Baseline,
    baseline_file: &Path,
    run: &RunRecord,
    run_file: &Path,
    overrides: &[(MetricKey, Tolerance)],
    confidence: f64,
) -> Result<Vec<Row>> {
    same_reference(baseline, baseline_file, run, run_file)?;
    let critical = one_sided_z(confidence)?;
    let mut rows = Vec::new();
    for (metric, base) in baseline.metrics.iter() {
        if run.metrics.get(metric).is_none() {
            bail!(
                "{}: the baseline has `{metric}` but the run does not (it was not computed; run with the same --metrics)",
                run_file.display()
            );
        }
        let current = finite_metric(&run.metrics, metric, run_file)?;
        let direction = metric.direction();
        // `--tolerance` wins over the baseline file's tolerances, which win over the defaults.
        let tolerance = overrides
            .iter()
            .rev()
            .find(|(m, _)| *m == metric)
            .or_else(|| baseline.tolerances.iter().rev().find(|(m, _)| *m == metric))
            .map(|(_, t)| *t)
            .unwrap_or_else(|| metric.default_tolerance());
        let (run_se, base_se) = (
            run.uncertainty.get(metric).map(|u| u.se),
            baseline.uncertainty.get(metric).map(|u| u.se),
        );
        let se = run_se.zip(base_se).map(|(a, b)| a.hypot(b));
        let verdict = match (direction, tolerance) {
            (Direction::Informational, _) | (_, Tolerance::Off) => Verdict::Info,
            (direction, tolerance) => {
                let Some(allowed) = tolerance.allowed(base, se) else {
                    let lacking: Vec<String> = [(run_se, run_file), (base_se, baseline_file)]
                        .iter()
                        .filter(|(se, _)| se.is_none())
                        .map(|(_, file)| file.display().to_string())
                        .collect();
                    bail!(
                        "tolerance `{metric}={tolerance}` needs the standard error of `{metric}` in both the run and the baseline, and {} {} none: rerun with --bootstrap N (and write the baseline from such a run)",
                        lacking.join(" and "),
                        if lacking.len() == 1 { "has" } else { "have" }
                    );
                };
                let worse_by = match direction {
                    Direction::LowerIsBetter => current - base,
                    _ => base - current,
                };
                // Round-off slack so that a value exactly at the tolerance passes.
                let slack = 1e-9 * (1.0 + base.abs());
                // Without the uncertainty of both, every difference counts as real, as before.
                let significant = |by: f64| se.is_none_or(|se| by > critical * se);
                if worse_by > allowed + slack {
                    if significant(worse_by) {
                        Verdict::Regressed
                    } else {
                        Verdict::Noise
                    }
                } else if -worse_by > allowed + slack {
                    if significant(-worse_by) {
                        Verdict::Better
                    } else {
                        Verdict::Noise
                    }
                } else {
                    Verdict::Ok
                }
            }
        };
        rows.push(Row {
            metric,
            baseline: base,
            current,
            se,
            tolerance,
            direction,
            verdict,
        });
    }
    Ok(rows)
}

/// The note printed under the table when some checked metric lacks the uncertainty of either
/// record, so it was compared on its tolerance alone: which metrics, and which file lacks it.
pub fn uncertainty_note(
    rows: &[Row],
    baseline: &Baseline,
    baseline_file: &Path,
    run: &RunRecord,
    run_file: &Path,
) -> Option<String> {
    let unchecked: Vec<MetricKey> = rows
        .iter()
        .filter(|r| r.verdict != Verdict::Info && r.se.is_none())
        .map(|r| r.metric)
        .collect();
    if unchecked.is_empty() {
        return None;
    }
    let lacking: Vec<String> = [
        (&baseline.uncertainty, baseline_file),
        (&run.uncertainty, run_file),
    ]
    .iter()
    .filter(|(u, _)| unchecked.iter().any(|m| u.get(*m).is_none()))
    .map(|(_, file)| file.display().to_string())
    .collect();
    let names: Vec<&str> = unchecked.iter().map(|m| m.name()).collect();
    Some(format!(
        "note: no standard error in {} for {}: compared on the tolerance alone, without the significance test (record both with --bootstrap N)",
        lacking.join(" and "),
        names.join(", ")
    ))
}

/// Writes `record` (read from `file`) as a baseline to `target`, atomically:
/// `{"metrics", "uncertainty" (when recorded), "run", "baseline"}`, the last saying where and when it came from. Every metric must
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
    // Kept so that checks against this baseline can tell noise from a regression.
    if !record.uncertainty.is_empty() {
        doc.insert(
            "uncertainty".into(),
            serde_json::to_value(&record.uncertainty)?,
        );
    }
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

/// The comparison as a terminal table; with the `95% interval` of each difference and its `z`
/// (difference over its standard error) when some metric carries the uncertainty of both records.
pub fn table(rows: &[Row]) -> String {
    let noise_aware = rows.iter().any(|r| r.se.is_some());
    let mut header = vec!["metric", "baseline", "current", "delta"];
    if noise_aware {
        header.extend(["95% interval", "z"]);
    }
    header.extend(["tolerance", "verdict"]);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let delta = r.delta();
            let relative = if r.baseline != 0.0 {
                format!(" ({:+.2}%)", 100.0 * delta / r.baseline.abs())
            } else {
                String::new()
            };
            let tolerance = match (r.direction, r.tolerance) {
                (Direction::Informational, _) | (_, Tolerance::Off) => "-".to_string(),
                (Direction::LowerIsBetter, t) => format!("+{t}"),
                (_, t) => format!("-{t}"),
            };
            let mut row = vec![
                r.metric.name().to_string(),
                number(r.baseline),
                number(r.current),
                format!("{}{relative}", signed(delta)),
            ];
            if noise_aware {
                row.push(match r.interval95() {
                    Some([lo, hi]) => format!("[{}, {}]", signed(lo), signed(hi)),
                    None => "-".to_string(),
                });
                row.push(
                    r.z()
                        .map_or_else(|| "-".to_string(), |z| format!("{z:+.2}")),
                );
            }
            row.extend([tolerance, r.verdict.label().to_string()]);
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[&str]| {
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
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

/// A number with its sign.
fn signed(v: f64) -> String {
    let sign = if v >= 0.0 { "+" } else { "" };
    format!("{sign}{}", number(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::REFERENCE_SHA256;

    fn values(pairs: &[(&str, f64)]) -> MetricValues {
        pairs
            .iter()
            .map(|(m, v)| (MetricKey::from_name(m).unwrap(), *v))
            .collect()
    }

    fn baseline(pairs: &[(&str, f64)]) -> Baseline {
        Baseline {
            metrics: values(pairs),
            uncertainty: Uncertainties::default(),
            reference_sha256: None,
            tolerances: vec![],
        }
    }

    fn run(pairs: &[(&str, f64)]) -> RunRecord {
        RunRecord {
            metrics: values(pairs),
            ..Default::default()
        }
    }

    fn with_se(mut uncertainty: Uncertainties, metric: MetricKey, se: f64) -> Uncertainties {
        uncertainty.insert(
            metric,
            crate::record::MetricUncertainty {
                se,
                ci95: [0.0, 0.0],
                method: "test".into(),
            },
        );
        uncertainty
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
            compare(&b, file, &run(pairs), file, tolerances, 0.95).unwrap()
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
        assert!(compare(&b, file, &run(&[("fid", 9.0)]), file, &[], 0.95).is_err());
        let mut nan = run(&[("fid", 9.0), ("kid_std", 0.0)]);
        // A null in the file is read as NaN.
        nan.metrics.insert(MetricKey::Precision, f64::NAN);
        let err = compare(&b, file, &nan, file, &[], 0.95)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.json: `precision` is not a finite number"),
            "{err}"
        );
        assert!(table(&rows).contains("REGRESSED") || table(&rows).contains("ok"));
    }

    #[test]
    fn normal_quantiles() {
        for (p, z) in [
            (0.5, 0.0),
            (0.95, 1.6448536269514715),
            (0.975, 1.9599639845400536),
            (0.999, 3.090232306167813),
        ] {
            assert!((normal_quantile(p) - z).abs() < 1e-8, "{p}");
        }
        for bad in [0.4, 1.0, f64::NAN] {
            assert!(one_sided_z(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn significance_and_standard_error_tolerances() {
        let mut b = baseline(&[("fid", 10.0)]);
        b.uncertainty = with_se(Uncertainties::default(), MetricKey::Fid, 1.2);
        let file = Path::new("m.json");
        let row = |fid: f64, tolerances: &[(MetricKey, Tolerance)], confidence: f64| {
            let mut r = run(&[("fid", fid)]);
            r.uncertainty = with_se(Uncertainties::default(), MetricKey::Fid, 1.6);
            compare(&b, file, &r, file, tolerances, confidence)
                .unwrap()
                .remove(0)
        };
        // Combined se sqrt(1.2² + 1.6²) = 2: +1 is beyond 5% but half a standard error.
        let half = row(11.0, &[], 0.95);
        assert_eq!(half.se, Some(2.0));
        assert_eq!(half.verdict, Verdict::Noise);
        assert_eq!(half.z(), Some(0.5));
        let [lo, hi] = half.interval95().unwrap();
        assert!((lo + 2.919928).abs() < 1e-6 && (hi - 4.919928).abs() < 1e-6);
        assert_eq!(row(20.0, &[], 0.95).verdict, Verdict::Regressed);
        assert_eq!(row(0.0, &[], 0.95).verdict, Verdict::Better);
        // z 2.5: significant at 95%, not at 99.9%.
        assert_eq!(row(15.0, &[], 0.95).verdict, Verdict::Regressed);
        assert_eq!(row(15.0, &[], 0.999).verdict, Verdict::Noise);
        let two_se = [(MetricKey::Fid, Tolerance::StandardErrors(2.0))];
        assert_eq!(row(13.0, &two_se, 0.95).verdict, Verdict::Ok);
        assert_eq!(row(15.0, &two_se, 0.95).verdict, Verdict::Regressed);
        // Without the baseline's uncertainty: fixed tolerances, and `se` ones are refused.
        let plain = baseline(&[("fid", 10.0)]);
        let mut r = run(&[("fid", 11.0)]);
        r.uncertainty = with_se(Uncertainties::default(), MetricKey::Fid, 1.6);
        let rows = compare(&plain, Path::new("b.json"), &r, file, &[], 0.95).unwrap();
        assert_eq!(rows[0].verdict, Verdict::Regressed);
        let note = uncertainty_note(&rows, &plain, Path::new("b.json"), &r, file).unwrap();
        assert!(
            note.contains("no standard error in b.json for fid"),
            "{note}"
        );
        let err = compare(&plain, Path::new("b.json"), &r, file, &two_se, 0.95)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`fid=2se`")
                && err.contains("b.json has none")
                && err.contains("--bootstrap"),
            "{err}"
        );
    }

    #[test]
    fn different_references_are_refused() {
        let mut b = baseline(&[("fid", 10.0)]);
        b.reference_sha256 = Some("a".repeat(64));
        let mut r = run(&[("fid", 10.0)]);
        let (bf, rf) = (Path::new("base.json"), Path::new("run/metrics.json"));
        // A record without the field (older) is compared.
        assert!(compare(&b, bf, &r, rf, &[], 0.95).is_ok());
        r.run
            .insert(REFERENCE_SHA256.into(), Value::from("a".repeat(64)));
        assert!(compare(&b, bf, &r, rf, &[], 0.95).is_ok());
        r.run
            .insert(REFERENCE_SHA256.into(), Value::from("b".repeat(64)));
        let err = compare(&b, bf, &r, rf, &[], 0.95).unwrap_err().to_string();
        assert!(
            err.contains(
                "run/metrics.json and base.json were evaluated against different references"
            ),
            "{err}"
        );
    }
}
