//! `llamagen-eval report`: many runs' `metrics.json` in one table (`summary.csv`, `report.md`)
//! and PNG charts (FID/IS against CFG scale, precision against recall, one bar chart per metric,
//! and each run's sample grid).
//!
//! A run is a folder holding the `metrics.json` that `fid`, `metrics` or `recon` wrote:
//! `{"metrics": {"fid": ..., ...}, "run": {"tool_version": ..., ...}}`. Runs made from sampled
//! images also carry the sampling settings in `run` (`gpt`, `vq`, `cfg_scale`, `cfg_interval`,
//! `temperature`, `top_k`, `top_p`, `seed`, `n_samples`); every one of them is optional here.

pub mod charts;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use crate::io::write_atomically;
use crate::metric::MetricKey;
use crate::record::{metrics_path, reference_sha256, MetricValues, RunRecord};

/// Sampling settings read from a run record, in their column order.
pub const SAMPLING_FIELDS: [&str; 6] = [
    "cfg_scale",
    "cfg_interval",
    "temperature",
    "top_k",
    "top_p",
    "seed",
];

/// The columns of `summary.csv`, in order: `run` (the run folder's name), `baseline` (`true` for
/// the `--baseline` run), `checkpoint` (`run.gpt`, else `run.vq`, else the sample batch or
/// feature file), `vq`, the [`SAMPLING_FIELDS`], every metric of [`MetricKey::ALL`] (empty when
/// the run did not compute it), `n_samples`, `n_reference` and `tool_version`.
pub fn summary_columns() -> Vec<&'static str> {
    let mut columns = vec!["run", "baseline", "checkpoint", "vq"];
    columns.extend(SAMPLING_FIELDS);
    columns.extend(MetricKey::ALL.map(MetricKey::name));
    columns.extend(["n_samples", "n_reference", "tool_version"]);
    columns
}

/// One run of the report.
#[derive(Debug, Clone)]
pub struct RunData {
    /// Display name: the folder's name (with its parent's when two runs share a name).
    pub name: String,
    /// The run folder (the folder of `source`).
    pub dir: PathBuf,
    /// The metrics file read: `dir/metrics.json`, or a JSON file given directly (a baseline).
    pub source: PathBuf,
    /// Metric values; values that are not finite numbers are left out.
    pub metrics: MetricValues,
    /// The record's `run` object: how the figures were made.
    pub run: Map<String, Value>,
    /// `grid.png` in the run folder, when the run saved one.
    pub grid: Option<PathBuf>,
    /// Whether this is the `--baseline` run.
    pub is_baseline: bool,
}

impl RunData {
    /// Reads the record of a run folder (or a JSON file given directly).
    pub fn load(dir: &Path) -> Result<Self> {
        let record = RunRecord::read(dir)?;
        let source = metrics_path(dir);
        let metrics = record
            .metrics
            .iter()
            .filter(|(metric, value)| {
                let finite = value.is_finite();
                if !finite {
                    tracing::warn!("{}: `{metric}` is not finite", source.display());
                }
                finite
            })
            .collect();
        let folder = source.parent().unwrap_or(Path::new(".")).to_path_buf();
        // A run folder is named after the folder; a JSON file given directly after the file.
        let run_folder = source.file_name().is_some_and(|n| n == "metrics.json");
        let (name, grid) = if run_folder {
            (
                folder_name(&folder),
                Some(folder.join("grid.png")).filter(|p| p.is_file()),
            )
        } else {
            let stem = source.file_stem().unwrap_or_default();
            (stem.to_string_lossy().into_owned(), None)
        };
        Ok(RunData {
            name,
            dir: folder,
            source,
            metrics,
            run: record.run,
            grid,
            is_baseline: false,
        })
    }

    /// The (finite) value of `metric`, when the run has one.
    pub fn metric(&self, metric: MetricKey) -> Option<f64> {
        self.metrics.get(metric)
    }

    /// A run field as a number (numbers, and strings that parse as numbers).
    pub fn number(&self, field: &str) -> Option<f64> {
        match self.run.get(field)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|v: &f64| v.is_finite())
    }

    /// What was evaluated: the generator, else the tokenizer, else the sample batch or features.
    pub fn checkpoint(&self) -> String {
        ["gpt", "vq", "sample_batch", "sample_features"]
            .iter()
            .find_map(|k| match self.run.get(*k) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The checkpoint's file name (for chart legends).
    pub fn checkpoint_short(&self) -> String {
        short_path(&self.checkpoint())
    }

    /// A run field as CSV text: strings and numbers as they are, null as empty, lists and
    /// objects as compact JSON.
    pub fn field_text(&self, field: &str) -> String {
        value_text(self.run.get(field))
    }
}

/// The file name of a path (the text itself when it has none).
fn short_path(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

fn value_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => other.to_string(),
    }
}

fn folder_name(dir: &Path) -> String {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    absolute
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| absolute.display().to_string())
}

/// Loads the runs (the baseline first when it is not among them) and makes their names unique.
pub fn load_runs(dirs: &[PathBuf], baseline: Option<&Path>) -> Result<Vec<RunData>> {
    let mut runs = Vec::new();
    for dir in dirs {
        runs.push(RunData::load(dir)?);
    }
    if let Some(baseline) = baseline {
        let wanted = RunData::load(baseline)?;
        let key =
            |r: &RunData| std::fs::canonicalize(&r.source).unwrap_or_else(|_| r.source.clone());
        let wanted_key = key(&wanted);
        match runs.iter_mut().find(|r| key(r) == wanted_key) {
            Some(run) => run.is_baseline = true,
            None => runs.insert(
                0,
                RunData {
                    is_baseline: true,
                    ..wanted
                },
            ),
        }
    }
    // Drop a folder given twice; qualify names that clash with their parent folder.
    let mut seen = BTreeSet::new();
    runs.retain(|r| {
        seen.insert(std::fs::canonicalize(&r.source).unwrap_or_else(|_| r.source.clone()))
    });
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    for run in &mut runs {
        if names.iter().filter(|n| **n == run.name).count() > 1 {
            let absolute = std::path::absolute(&run.dir).unwrap_or_else(|_| run.dir.clone());
            if let Some(parent) = absolute.parent().and_then(Path::file_name) {
                run.name = format!("{}/{}", parent.to_string_lossy(), run.name);
            }
        }
    }
    Ok(runs)
}

/// Checks that the runs were evaluated against one reference (their `reference_sha256`): runs
/// against different references measure distances to different sets, so a report that ranks
/// them misleads. With several references it fails naming each reference's runs, unless
/// `allow_mixed`. Returns the notes to show: runs whose records predate the field (accepted, not
/// checked), and the references mixed when allowed.
pub fn check_references(runs: &[RunData], allow_mixed: bool) -> Result<Vec<String>> {
    let mut by_reference: Vec<(&str, Vec<&RunData>)> = Vec::new();
    let mut unknown = Vec::new();
    for run in runs {
        match reference_sha256(&run.run) {
            Some(sha) => match by_reference.iter_mut().find(|(s, _)| *s == sha) {
                Some((_, group)) => group.push(run),
                None => by_reference.push((sha, vec![run])),
            },
            None => unknown.push(run.source.display().to_string()),
        }
    }
    let mut notes = Vec::new();
    if by_reference.len() > 1 {
        let groups: Vec<String> = by_reference
            .iter()
            .map(|(sha, group)| {
                let names: Vec<String> = group
                    .iter()
                    .map(|r| r.source.display().to_string())
                    .collect();
                format!(
                    "reference {} ({})",
                    sha.get(..12).unwrap_or(sha),
                    names.join(", ")
                )
            })
            .collect();
        let what = format!(
            "the runs were evaluated against {} different references, so their figures do not compare: {}",
            by_reference.len(),
            groups.join("; ")
        );
        if !allow_mixed {
            anyhow::bail!("{what} (pass --allow-mixed to report them together anyway)");
        }
        notes.push(format!("note: {what}"));
    }
    if !unknown.is_empty() {
        notes.push(format!(
            "note: {} record{} no reference_sha256 (written before it was recorded): {} reference is not checked",
            unknown.join(", "),
            if unknown.len() == 1 { "s" } else { "" },
            if unknown.len() == 1 { "its" } else { "their" }
        ));
    }
    Ok(notes)
}

/// `summary.csv`: one row per run, the columns of [`summary_columns`].
pub fn summary_csv(runs: &[RunData]) -> Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(summary_columns())?;
    for run in runs {
        let mut row = vec![
            run.name.clone(),
            run.is_baseline.to_string(),
            run.checkpoint(),
            run.field_text("vq"),
        ];
        row.extend(SAMPLING_FIELDS.iter().map(|f| run.field_text(f)));
        row.extend(
            MetricKey::ALL.map(|m| run.metric(m).map(|v| v.to_string()).unwrap_or_default()),
        );
        row.extend(["n_samples", "n_reference", "tool_version"].map(|f| run.field_text(f)));
        writer.write_record(&row)?;
    }
    writer.into_inner().context("CSV buffer")
}

/// A figure for humans: about four significant digits, no exponent for usual magnitudes.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 1.0 {
        format!("{v:.3}")
    } else if a >= 1e-3 {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `report.md`: the table of the runs (columns that hold something) and the charts.
pub fn markdown(runs: &[RunData], charts: &[charts::Chart], grids: &[(String, String)]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Evaluation report\n");
    let _ = writeln!(
        md,
        "Made by llamagen-eval {} from {} run{}.{}\n",
        env!("CARGO_PKG_VERSION"),
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        runs.iter()
            .find(|r| r.is_baseline)
            .map(|b| format!(" Baseline: `{}` (marked ★).", b.name))
            .unwrap_or_default()
    );
    let fields: Vec<&str> = ["vq"]
        .into_iter()
        .chain(SAMPLING_FIELDS)
        .filter(|f| runs.iter().any(|r| !r.field_text(f).is_empty()))
        .collect();
    let metrics: Vec<MetricKey> = MetricKey::ALL
        .into_iter()
        .filter(|m| runs.iter().any(|r| r.metric(*m).is_some()))
        .collect();
    let mut header = vec!["run", "checkpoint"];
    header.extend(&fields);
    header.extend(metrics.iter().map(|m| m.name()));
    header.push("n_samples");
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let align: Vec<&str> = header
        .iter()
        .enumerate()
        .map(|(i, h)| if i < 2 || *h == "vq" { "---" } else { "---:" })
        .collect();
    let _ = writeln!(md, "|{}|", align.join("|"));
    for run in runs {
        let mut cells = vec![
            format!(
                "{}{}",
                md_cell(&run.name),
                if run.is_baseline { " ★" } else { "" }
            ),
            md_cell(&run.checkpoint_short()),
        ];
        cells.extend(fields.iter().map(|f| {
            if *f == "vq" {
                md_cell(&short_path(&run.field_text(f)))
            } else {
                md_cell(&run.field_text(f))
            }
        }));
        cells.extend(
            metrics
                .iter()
                .map(|m| run.metric(*m).map(format_value).unwrap_or_default()),
        );
        cells.push(run.field_text("n_samples"));
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    let _ = writeln!(
        md,
        "\nEvery column, at full precision: [summary.csv](summary.csv).\n"
    );
    if !charts.is_empty() {
        let _ = writeln!(md, "## Charts\n");
        for chart in charts {
            let _ = writeln!(md, "### {}\n", chart.title);
            let _ = writeln!(md, "![{}]({})\n", chart.title, chart.file);
        }
    }
    if !grids.is_empty() {
        let _ = writeln!(md, "## Samples\n");
        for (run, file) in grids {
            let _ = writeln!(md, "### {}\n\n![samples of {run}]({file})\n", md_cell(run));
        }
    }
    md
}

/// A file name made of the name's letters, digits, `-`, `_` and `.`.
pub fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a report wrote.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
}

/// Writes `summary.csv`, the charts, the sample grids and `report.md` into `out`.
pub fn write_report(runs: &[RunData], out: &Path) -> Result<Written> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let mut written = Written::default();
    let csv = summary_csv(runs)?;
    let path = out.join("summary.csv");
    write_atomically(&path, &csv)?;
    written.files.push(path);

    let charts = charts::render_all(runs, out)?;
    written
        .files
        .extend(charts.iter().map(|c| out.join(&c.file)));

    let mut grids = Vec::new();
    for run in runs {
        if let Some(grid) = &run.grid {
            let file = format!("grid_{}.png", file_stem(&run.name));
            let bytes =
                std::fs::read(grid).with_context(|| format!("cannot read {}", grid.display()))?;
            write_atomically(&out.join(&file), &bytes)?;
            written.files.push(out.join(&file));
            grids.push((run.name.clone(), file));
        }
    }

    let md = markdown(runs, &charts, &grids);
    let path = out.join("report.md");
    write_atomically(&path, md.as_bytes())?;
    written.files.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, metrics: &[(MetricKey, f64)], fields: Value) -> RunData {
        RunData {
            name: name.into(),
            dir: PathBuf::from(name),
            source: PathBuf::from(name).join("metrics.json"),
            metrics: metrics.iter().copied().collect(),
            run: fields.as_object().cloned().unwrap_or_default(),
            grid: None,
            is_baseline: false,
        }
    }

    #[test]
    fn csv_has_the_documented_columns_and_fields() {
        let runs = [run(
            "a",
            &[(MetricKey::Fid, 3.5)],
            serde_json::json!({"gpt": "/x/gpt.pt", "cfg_scale": 1.75, "top_k": 0, "n_samples": 50}),
        )];
        let csv = String::from_utf8(summary_csv(&runs).unwrap()).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header, summary_columns());
        let row: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |n: &str| row[header.iter().position(|h| *h == n).unwrap()];
        assert_eq!(col("checkpoint"), "/x/gpt.pt");
        assert_eq!(col("cfg_scale"), "1.75");
        assert_eq!(col("fid"), "3.5");
        assert_eq!(col("sfid"), "");
        assert_eq!(col("n_samples"), "50");
    }

    #[test]
    fn values_read_well() {
        assert_eq!(format_value(2.18321), "2.183");
        assert_eq!(format_value(263.333), "263.33");
        assert_eq!(format_value(0.81234), "0.8123");
        assert_eq!(format_value(0.00012), "1.200e-4");
        assert_eq!(file_stem("a b/c"), "a_b_c");
    }
}
