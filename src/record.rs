//! The run record: the figures of one run and how they were made, as `fid`, `metrics` and
//! `recon` write them into a run folder and as `check` and `report` read them back.
//!
//! On disk a record is `metrics.json`, `{"metrics": {"fid": ..., ...}, "run": {...}}`, with the
//! metrics in registry order ([`MetricKey::ALL`]), and `metrics.csv`, one header line and one
//! row: every registry metric (empty when not computed), then the run's scalar fields.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::Error as _;
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::io::write_atomically;
use crate::metric::MetricKey;

/// Metric values keyed by [`MetricKey`], kept in registry order.
///
/// As JSON, an object from metric name to number. JSON has no NaN or infinity, so a value that
/// is not finite is written as `null` and read back as NaN: readers such as `check` must test
/// finiteness. Reading accepts any case and `check`'s aliases (`is`); a string or any other
/// non-number is an error naming the metric; names outside the registry are skipped
/// ([`MetricValues::from_json`] warns about them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricValues(BTreeMap<MetricKey, f64>);

impl MetricValues {
    /// Sets the value of `key`, replacing an earlier one.
    pub fn insert(&mut self, key: MetricKey, value: f64) {
        self.0.insert(key, value);
    }

    /// The value of `key`, when recorded (possibly not finite).
    pub fn get(&self, key: MetricKey) -> Option<f64> {
        self.0.get(&key).copied()
    }

    /// The recorded values in registry order.
    pub fn iter(&self) -> impl Iterator<Item = (MetricKey, f64)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }

    /// How many metrics are recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no metric is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A two-column table for the terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (key, value) in self.iter() {
            let _ = writeln!(out, "{:<20} {value:>14.6}", key.name());
        }
        out
    }

    /// The values of a `metrics` object read from `file`; errors name the file and the metric,
    /// and names outside the registry are left out with a warning naming the file.
    pub fn from_json(metrics: &Map<String, Value>, file: &Path) -> Result<Self> {
        let (values, unknown) =
            parse_metrics(metrics).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        // One line however many there are: a file of millions of foreign keys must not become
        // a log of hundreds of megabytes.
        if !unknown.is_empty() {
            const SHOWN: usize = 5;
            let shown: Vec<String> = unknown
                .iter()
                .take(SHOWN)
                .map(|n| format!("`{n}`"))
                .collect();
            let more = match unknown.len().saturating_sub(SHOWN) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            tracing::warn!(
                "{}: {} unknown metric{} ignored: {}{more}",
                file.display(),
                unknown.len(),
                if unknown.len() == 1 { "" } else { "s" },
                shown.join(", ")
            );
        }
        Ok(values)
    }
}

impl FromIterator<(MetricKey, f64)> for MetricValues {
    fn from_iter<I: IntoIterator<Item = (MetricKey, f64)>>(iter: I) -> Self {
        MetricValues(iter.into_iter().collect())
    }
}

/// The values of a `metrics` object and the names in it outside the registry.
fn parse_metrics(metrics: &Map<String, Value>) -> Result<(MetricValues, Vec<&str>), String> {
    let mut values = MetricValues::default();
    let mut unknown = Vec::new();
    for (name, value) in metrics {
        let Some(key) = MetricKey::from_name(name) else {
            unknown.push(name.as_str());
            continue;
        };
        if values.get(key).is_some() {
            return Err(format!("`{name}` and `{key}` are the same metric"));
        }
        let value = match value {
            // Every JSON number has an f64 value (serde_json is built without arbitrary
            // precision), so the fallback only guards against that changing.
            Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
            // How serde_json writes NaN and infinity; kept as NaN so that readers that need a
            // finite value say which metric was not.
            Value::Null => f64::NAN,
            Value::String(s) => {
                return Err(format!(
                    "`{name}` is the string {s:?} (NaN or not a number), not a finite number"
                ))
            }
            other => return Err(format!("`{name}` is {other}, not a number")),
        };
        values.insert(key, value);
    }
    Ok((values, unknown))
}

impl Serialize for MetricValues {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (key, value) in self.iter() {
            map.serialize_entry(key.name(), &value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for MetricValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let metrics = Map::<String, Value>::deserialize(deserializer)?;
        parse_metrics(&metrics)
            .map(|(values, _unknown)| values)
            .map_err(D::Error::custom)
    }
}

/// The bootstrap uncertainty of one figure, as `metrics.json`'s `uncertainty` object holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricUncertainty {
    /// Standard error.
    pub se: f64,
    /// 95% interval `[low, high]`.
    pub ci95: [f64; 2],
    /// How they were obtained (`bootstrap over 50000 samples, 100 resamples, seed 0`).
    pub method: String,
}

/// Uncertainties keyed by [`MetricKey`], in registry order; as JSON an object from metric name
/// to [`MetricUncertainty`] (names outside the registry are skipped when read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Uncertainties(BTreeMap<MetricKey, MetricUncertainty>);

impl Uncertainties {
    /// Sets the uncertainty of `key`.
    pub fn insert(&mut self, key: MetricKey, value: MetricUncertainty) {
        self.0.insert(key, value);
    }

    /// The uncertainty of `key`, when recorded.
    pub fn get(&self, key: MetricKey) -> Option<&MetricUncertainty> {
        self.0.get(&key)
    }

    /// The recorded uncertainties in registry order.
    pub fn iter(&self) -> impl Iterator<Item = (MetricKey, &MetricUncertainty)> + '_ {
        self.0.iter().map(|(k, v)| (*k, v))
    }

    /// Whether none is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `uncertainty` object of a document read from `file`; absent or null is none.
    pub fn from_json(value: Option<Value>, file: &Path) -> Result<Self> {
        match value {
            None | Some(Value::Null) => Ok(Uncertainties::default()),
            Some(u) => serde_json::from_value(u)
                .with_context(|| format!("{}: invalid `uncertainty`", file.display())),
        }
    }
}

impl Serialize for Uncertainties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.iter() {
            map.serialize_entry(key.name(), value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Uncertainties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Map::<String, Value>::deserialize(deserializer)?;
        let mut out = Uncertainties::default();
        for (name, value) in entries {
            let Some(key) = MetricKey::from_name(&name) else {
                continue;
            };
            let value = MetricUncertainty::deserialize(value)
                .map_err(|e| D::Error::custom(format!("uncertainty of `{name}`: {e}")))?;
            out.insert(key, value);
        }
        Ok(out)
    }
}

/// The `run` field that identifies the reference the figures were computed against: the sha256
/// of the reference file's content, or for a folder the fingerprint of its files' paths, sizes
/// and times (the feature cache's key). Figures against different references do not compare.
pub const REFERENCE_SHA256: &str = "reference_sha256";

/// The reference fingerprint a record's `run` object holds ([`REFERENCE_SHA256`]); `None` for
/// records written before it was recorded, or without a reference (IS alone).
pub fn reference_sha256(run: &Map<String, Value>) -> Option<&str> {
    run.get(REFERENCE_SHA256).and_then(Value::as_str)
}

/// One run: its metric values and the free-form description of how they were made (tool
/// version, command line, checkpoints, sampling settings, counts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The figures.
    pub metrics: MetricValues,
    /// The figures' bootstrap uncertainty (`--bootstrap N`); absent from `metrics.json` when
    /// none was computed.
    #[serde(default, skip_serializing_if = "Uncertainties::is_empty")]
    pub uncertainty: Uncertainties,
    /// How the figures were made; fields in the order they were recorded.
    #[serde(default)]
    pub run: Map<String, Value>,
}

impl RunRecord {
    /// Writes `metrics.csv` and then `metrics.json` into `dir` (created when missing), each
    /// atomically: `metrics.json`, which `check` and `report` read, exists only once the run's
    /// every output is written.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        write_atomically(&dir.join("metrics.csv"), &self.csv()?)?;
        write_atomically(&dir.join("metrics.json"), json.as_bytes())?;
        Ok(())
    }

    /// Removes the result of an earlier run in `dir` (`metrics.json`, `metrics.csv`), so that a
    /// new run that is killed or fails leaves nothing that looks like its result. Called once
    /// the new run's inputs are checked, before its long work.
    pub fn remove_stale(dir: &Path) -> Result<()> {
        for name in ["metrics.json", "metrics.csv"] {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!("removed the earlier run's {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("cannot remove the earlier result {}: {e}", path.display()),
            }
        }
        Ok(())
    }

    /// The metrics for the terminal, each with `± se` when its uncertainty is recorded.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (key, value) in self.metrics.iter() {
            let _ = match self.uncertainty.get(key) {
                Some(u) => writeln!(out, "{:<20} {value:>14.6} ± {:.6}", key.name(), u.se),
                None => writeln!(out, "{:<20} {value:>14.6}", key.name()),
            };
        }
        out
    }

    /// `metrics.csv`: a header and one row; lists and objects of `run` are left to the JSON.
    /// The metric columns are followed by a `<key>_se` column for each recorded uncertainty.
    fn csv(&self) -> Result<Vec<u8>> {
        let run_columns: Vec<(&str, String)> = self
            .run
            .iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k.as_str(), s.clone())),
                Value::Number(n) => Some((k.as_str(), n.to_string())),
                Value::Bool(b) => Some((k.as_str(), b.to_string())),
                _ => None,
            })
            .collect();
        let se_columns: Vec<(String, String)> = self
            .uncertainty
            .iter()
            .map(|(key, u)| (format!("{}_se", key.name()), u.se.to_string()))
            .collect();
        let header = MetricKey::ALL
            .map(MetricKey::name)
            .into_iter()
            .chain(se_columns.iter().map(|(k, _)| k.as_str()))
            .chain(run_columns.iter().map(|(k, _)| *k));
        let row = MetricKey::ALL
            .map(|key| {
                self.metrics
                    .get(key)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
            .into_iter()
            .chain(se_columns.iter().map(|(_, v)| v.clone()))
            .chain(run_columns.iter().map(|(_, v)| v.clone()));
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(header)?;
        writer.write_record(row)?;
        writer.into_inner().context("CSV buffer")
    }

    /// Reads the `metrics.json` of a run folder, or a `.json` file given directly (such as a
    /// `check` baseline, whose other top-level fields are ignored). `run` may be missing or
    /// null. Errors name the file; see [`MetricValues`] for how the metrics are read.
    pub fn read(run: &Path) -> Result<RunRecord> {
        let path = metrics_path(run);
        let journal = crate::layout::RunLayout::folder(run)
            .journal()
            .to_path_buf();
        if run.is_dir() && journal.exists() {
            bail!(
                "{} is incomplete: a run into it was interrupted or is still going (its journal {} is there); finish it with --resume, or rerun it",
                run.display(),
                journal.display()
            );
        }
        if !path.is_file() {
            if !run.exists() {
                bail!("run folder {} does not exist", run.display());
            }
            if run.join("metrics.csv").exists() {
                bail!(
                    "{} is incomplete: it has metrics.csv but no metrics.json (the run stopped before its end); rerun it",
                    run.display()
                );
            }
            bail!(
                "{} not found: {} is not a run folder written by `fid`, `metrics` or `recon`",
                path.display(),
                run.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        // Through a `Value` rather than straight into the struct, so that each shape error says
        // what is wrong in today's words instead of serde's.
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        let Value::Object(mut doc) = doc else {
            bail!("{}: expected a JSON object", path.display());
        };
        let metrics = match doc.remove("metrics") {
            Some(Value::Object(m)) => MetricValues::from_json(&m, &path)?,
            Some(_) => bail!("{}: `metrics` is not an object", path.display()),
            None => bail!("{}: no `metrics` object", path.display()),
        };
        let run = match doc.remove("run") {
            Some(Value::Object(r)) => r,
            None | Some(Value::Null) => Map::new(),
            Some(_) => bail!("{}: `run` is not an object", path.display()),
        };
        let uncertainty = Uncertainties::from_json(doc.remove("uncertainty"), &path)?;
        Ok(RunRecord {
            metrics,
            uncertainty,
            run,
        })
    }
}

/// `DIR/metrics.json` for a run folder, or the path itself when it names a `.json` file.
pub fn metrics_path(run: &Path) -> PathBuf {
    if run.extension().is_some_and(|e| e == "json") && !run.is_dir() {
        run.to_path_buf()
    } else {
        run.join("metrics.json")
    }
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
    use serde_json::json;

    fn record() -> RunRecord {
        let mut metrics = MetricValues::default();
        metrics.insert(MetricKey::Kid, 0.0125);
        metrics.insert(MetricKey::Fid, 3.5);
        metrics.insert(MetricKey::Psnr, f64::INFINITY);
        let run = json!({"tool_version": "0.1.0", "seed": 0, "image_size": [256, 256],
                         "resumed": false});
        RunRecord {
            metrics,
            run: run.as_object().cloned().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn uncertainty_is_a_separate_object_and_se_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut written = record();
        written.uncertainty.insert(
            MetricKey::Fid,
            MetricUncertainty {
                se: 0.25,
                ci95: [3.0, 4.0],
                method: "bootstrap over 10 samples, 50 resamples, seed 0".into(),
            },
        );
        written.write(dir.path()).unwrap();
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("metrics.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["metrics"]["fid"], 3.5);
        assert_eq!(json["uncertainty"]["fid"]["se"], 0.25);
        assert_eq!(
            json["uncertainty"]["fid"]["ci95"],
            serde_json::json!([3.0, 4.0])
        );
        let back = RunRecord::read(dir.path()).unwrap();
        assert_eq!(back.uncertainty, written.uncertainty);
        let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let fid_se = header.iter().position(|&h| h == "fid_se").unwrap();
        assert_eq!(fid_se, MetricKey::ALL.len());
        assert_eq!(
            csv.lines().nth(1).unwrap().split(',').nth(fid_se),
            Some("0.25")
        );
        assert!(written
            .table()
            .starts_with("fid                        3.500000 ± 0.250000\n"));
        assert!(!record().table().contains('±'));
    }

    #[test]
    fn values_keep_registry_order() {
        let keys: Vec<MetricKey> = record().metrics.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [MetricKey::Fid, MetricKey::Kid, MetricKey::Psnr]);
        assert_eq!(
            record().metrics.table().lines().next().unwrap(),
            "fid                        3.500000"
        );
    }

    #[test]
    fn written_files_have_the_documented_form() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        record().write(&out).unwrap();
        let json = std::fs::read_to_string(out.join("metrics.json")).unwrap();
        assert_eq!(
            json,
            "{\n  \"metrics\": {\n    \"fid\": 3.5,\n    \"kid\": 0.0125,\n    \"psnr\": null\n  },\n  \
             \"run\": {\n    \"tool_version\": \"0.1.0\",\n    \"seed\": 0,\n    \"image_size\": [\n      \
             256,\n      256\n    ],\n    \"resumed\": false\n  }\n}"
        );
        let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let mut expected: Vec<&str> = MetricKey::ALL.map(MetricKey::name).to_vec();
        expected.extend(["tool_version", "seed", "resumed"]);
        assert_eq!(header, expected);
        assert_eq!(
            lines.next().unwrap(),
            "3.5,,,,,,,,0.0125,,,inf,,,,,,,,,,,,,,,0.1.0,0,false"
        );
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2, "no leftovers");
    }

    #[test]
    fn records_read_back_with_null_as_nan() {
        let dir = tempfile::tempdir().unwrap();
        let written = record();
        written.write(dir.path()).unwrap();
        for path in [dir.path().to_path_buf(), dir.path().join("metrics.json")] {
            let back = RunRecord::read(&path).unwrap();
            assert_eq!(back.run, written.run);
            assert_eq!(back.metrics.get(MetricKey::Fid), Some(3.5));
            assert_eq!(back.metrics.get(MetricKey::Kid), Some(0.0125));
            assert!(back.metrics.get(MetricKey::Psnr).unwrap().is_nan());
            assert_eq!(back.metrics.len(), 3);
        }
        // The derived form reads what `write` wrote too.
        let text = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap();
        let derived: RunRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(derived.metrics.get(MetricKey::Kid), Some(0.0125));
        assert_eq!(derived.run, written.run);
    }

    fn read_doc(doc: &str) -> Result<RunRecord> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metrics.json"), doc).unwrap();
        RunRecord::read(dir.path())
    }

    #[test]
    fn reading_names_the_file_and_the_metric() {
        let record = read_doc(r#"{"metrics": {"IS": 2, "fid": null, "mystery": 1}}"#).unwrap();
        assert_eq!(record.metrics.get(MetricKey::InceptionScore), Some(2.0));
        assert!(!record.metrics.get(MetricKey::Fid).unwrap().is_finite());
        assert_eq!(record.metrics.len(), 2, "unknown names are left out");
        assert!(record.run.is_empty());
        let err = read_doc(r#"{"metrics": {"fid": "NaN"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metrics.json: `fid` is the string \"NaN\""),
            "{err}"
        );
        for (doc, expected) in [
            ("[1]", "metrics.json: expected a JSON object"),
            ("{", "metrics.json: invalid JSON"),
            (r#"{"run": {}}"#, "metrics.json: no `metrics` object"),
            (r#"{"metrics": 1}"#, "`metrics` is not an object"),
            (r#"{"metrics": {}, "run": 1}"#, "`run` is not an object"),
            (
                r#"{"metrics": {"is": 1, "inception_score": 2}}"#,
                "same metric",
            ),
            (r#"{"metrics": {"kid": [1]}}"#, "`kid` is [1], not a number"),
        ] {
            let err = format!("{:#}", read_doc(doc).unwrap_err());
            assert!(err.contains(expected), "{doc}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let err = RunRecord::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.json not found"), "{err}");
        let absent = dir.path().join("absent");
        let err = RunRecord::read(&absent).unwrap_err().to_string();
        assert!(err.contains("absent does not exist"), "{err}");
    }
}
