//! The one resume mechanism: a journal folder beside a long run's output that lets a killed run
//! continue where it stopped and end with exactly the result an uninterrupted run gives.
//!
//! A journal holds
//! - `settings.json`: the fingerprint of everything that decides the result (checkpoints and
//!   their sizes, sampling settings, batch partition where it changes rounding, ...), written once;
//! - one append-only stream per kind of per-image record (`<name>.bin`: a fixed number of bytes
//!   per image, e.g. a sample's tokens or an image's Inception features);
//! - `progress.json`: how many images are complete, with the completed sample-index ranges and
//!   each committed batch's size and checksum, rewritten atomically after every committed batch.
//!
//! A commit appends the batch's records, flushes them to disk, and only then advances
//! `progress.json`, so a kill at any instant leaves a journal whose progress names only records
//! that are on disk; streams are cut back to the committed length when the journal is reopened.
//! A batch's checksum covers the settings, the batch's sample indices and its records in every
//! stream, so records edited, damaged, or copied from a run with other settings (and settings
//! edited to match a new run) are refused when the journal is reopened, before any is used.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::io::{write_atomically, FileError};

/// Why a journal could not be opened, extended or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The interrupted run was made with other settings.
    #[error("{}: the interrupted run was made with other settings: {}; rerun with the interrupted run's settings to resume, or without resuming to start over", dir.display(), describe_changes(changes))]
    SettingsChanged {
        /// The journal folder.
        dir: PathBuf,
        /// `(setting, then, now)` for every setting that differs.
        changes: Vec<(String, Value, Value)>,
    },
    /// A journal file is unreadable or does not fit the run.
    #[error(transparent)]
    File(#[from] FileError),
}

fn describe_changes(changes: &[(String, Value, Value)]) -> String {
    changes
        .iter()
        .map(|(key, then, now)| format!("`{key}` was {then}, now {now}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One kind of per-image record and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// File stem inside the journal (`<name>.bin`).
    pub name: String,
    /// Bytes per image.
    pub record_bytes: usize,
}

impl StreamSpec {
    /// A stream of `record_bytes` bytes per image.
    pub fn new(name: impl Into<String>, record_bytes: usize) -> Self {
        StreamSpec {
            name: name.into(),
            record_bytes,
        }
    }
}

struct Stream {
    spec: StreamSpec,
    path: PathBuf,
    file: File,
}

/// An open journal (see the module docs).
pub struct Journal {
    dir: PathBuf,
    streams: Vec<Stream>,
    completed: usize,
    ranges: Vec<Range<u64>>,
    resumed: usize,
    /// The sha256 of the settings fingerprint, the start of every batch checksum.
    settings_digest: String,
    /// Each committed batch: its image count and checksum ([`batch_checksum`]).
    batches: Vec<(usize, String)>,
}

const SETTINGS: &str = "settings.json";
const PROGRESS: &str = "progress.json";

impl Journal {
    /// Opens the journal in `dir` of a run of `total` images. With `resume` and a journal there,
    /// its settings must equal `settings` (else [`JournalError::SettingsChanged`] names each
    /// difference) and its counts must fit the run (at most `total` images, as many as its index
    /// ranges hold: checked before any arithmetic) and the run continues after its completed
    /// images; otherwise any old journal is discarded and a new one started.
    pub fn open(
        dir: &Path,
        settings: &Map<String, Value>,
        streams: &[StreamSpec],
        total: usize,
        resume: bool,
    ) -> Result<Self, JournalError> {
        let settings_path = dir.join(SETTINGS);
        let progress_path = dir.join(PROGRESS);
        let fingerprint = json!({ "settings": settings, "streams": stream_list(streams) });
        let settings_digest = sha256_hex(fingerprint.to_string().as_bytes());
        let mut completed = 0;
        let mut ranges = Vec::new();
        let mut batches = Vec::new();
        let existing = resume && settings_path.is_file() && progress_path.is_file();
        if existing {
            let then = read_json(&settings_path)?;
            if then != fingerprint {
                return Err(JournalError::SettingsChanged {
                    dir: dir.to_path_buf(),
                    changes: differences(&then, &fingerprint),
                });
            }
            let progress = read_json(&progress_path)?;
            let start_over = format!(
                "the journal does not belong to this run or was edited; delete {} to start over, or run without --resume",
                dir.display()
            );
            let claimed = progress["completed_images"]
                .as_u64()
                .ok_or_else(|| FileError::new(&progress_path, "no `completed_images`"))?;
            completed = usize::try_from(claimed)
                .ok()
                .filter(|&c| c <= total)
                .ok_or_else(|| {
                    FileError::new(
                        &progress_path,
                        format!("`completed_images` is {claimed}, more than the {total} images of this run: {start_over}"),
                    )
                })?;
            ranges = parse_ranges(&progress["completed_indices"])
                .ok_or_else(|| FileError::new(&progress_path, "bad `completed_indices`"))?;
            let held = ranges.iter().try_fold(0u64, |sum, r| {
                r.end.checked_sub(r.start).and_then(|n| sum.checked_add(n))
            });
            if held != Some(claimed) {
                let held = held.map_or_else(|| "overflowing".to_owned(), |h| h.to_string());
                return Err(FileError::new(
                    &progress_path,
                    format!("`completed_indices` hold {held} samples but `completed_images` is {claimed}: {start_over}"),
                )
                .into());
            }
            batches = parse_batches(&progress["batches"])
                .filter(|b| b.iter().map(|(n, _)| n).sum::<usize>() == completed)
                .ok_or_else(|| {
                    FileError::new(
                        &progress_path,
                        format!("no batch checksums for its {completed} images: {start_over}"),
                    )
                })?;
        } else {
            if resume {
                // Not a warning: the feature cache always asks to resume its extraction.
                tracing::info!(
                    "nothing to resume in {}: starting from the beginning",
                    dir.display()
                );
            } else if settings_path.is_file() {
                tracing::warn!(
                    "starting over: an interrupted run's journal is in {} (resume to continue it)",
                    dir.display()
                );
            }
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .map_err(|e| FileError::new(dir, format!("cannot remove: {e}")))?;
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| FileError::new(dir, format!("cannot create: {e}")))?;
            write_json(&settings_path, &fingerprint)?;
        }
        let mut open = Vec::with_capacity(streams.len());
        for spec in streams {
            let path = dir.join(format!("{}.bin", spec.name));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| FileError::new(&path, format!("cannot open: {e}")))?;
            let keep = completed
                .checked_mul(spec.record_bytes)
                .and_then(|bytes| u64::try_from(bytes).ok())
                .ok_or_else(|| {
                    FileError::new(
                        &path,
                        format!(
                            "{completed} records of {} bytes overflow; delete {} to start over",
                            spec.record_bytes,
                            dir.display()
                        ),
                    )
                })?;
            let len = file
                .metadata()
                .map_err(|e| FileError::new(&path, e.to_string()))?
                .len();
            if len < keep {
                return Err(FileError::new(
                    &path,
                    format!(
                        "holds {} records but the journal says {completed} are complete; delete {} to start over",
                        len / spec.record_bytes.max(1) as u64,
                        dir.display()
                    ),
                )
                .into());
            }
            // Records appended after the last commit belong to a batch that did not finish.
            file.set_len(keep)
                .map_err(|e| FileError::new(&path, e.to_string()))?;
            let mut stream = Stream {
                spec: spec.clone(),
                path,
                file,
            };
            stream
                .file
                .seek(SeekFrom::End(0))
                .map_err(|e| FileError::new(&stream.path, e.to_string()))?;
            open.push(stream);
        }
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            streams: open,
            completed,
            ranges,
            resumed: completed,
            settings_digest,
            batches,
        };
        if existing {
            journal.verify()?;
        } else {
            journal.write_progress()?;
        }
        Ok(journal)
    }

    /// Checks every committed batch against its checksum (one read of the committed records),
    /// naming the first batch that differs.
    fn verify(&mut self) -> Result<(), JournalError> {
        let indices: Vec<u64> = self.ranges.iter().flat_map(|r| r.clone()).collect();
        let mut start = 0;
        for (count, expected) in self.batches.clone() {
            let range = start..start + count;
            let mut records = Vec::with_capacity(self.streams.len());
            for name in self
                .streams
                .iter()
                .map(|s| s.spec.name.clone())
                .collect::<Vec<_>>()
            {
                records.push(self.read(&name, range.clone())?);
            }
            if batch_checksum(&self.settings_digest, &indices[range.clone()], &records) != expected
            {
                return Err(FileError::new(
                    &self.dir,
                    format!(
                        "the records of its images {}..{} do not match their checksum: the journal was edited, damaged, or made by another run; delete it to start over, or run without --resume",
                        range.start, range.end
                    ),
                )
                .into());
            }
            start = range.end;
        }
        Ok(())
    }

    /// The journal folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Images completed so far (including those of earlier, interrupted runs).
    pub fn completed(&self) -> usize {
        self.completed
    }

    /// Images that were already complete when the journal was opened.
    pub fn resumed(&self) -> usize {
        self.resumed
    }

    /// The records of completed images `range` (positions in the run's order) of `stream`.
    pub fn read(&mut self, stream: &str, range: Range<usize>) -> Result<Vec<u8>, JournalError> {
        let completed = self.completed;
        let stream = self.stream_mut(stream)?;
        if range.end > completed {
            return Err(FileError::new(
                &stream.path,
                format!("records {range:?} asked for, {completed} complete"),
            )
            .into());
        }
        let size = stream.spec.record_bytes;
        let mut bytes = vec![0u8; range.len() * size];
        let read = (|| {
            stream
                .file
                .seek(SeekFrom::Start((range.start * size) as u64))?;
            stream.file.read_exact(&mut bytes)?;
            stream.file.seek(SeekFrom::End(0)).map(|_| ())
        })();
        read.map_err(|e| FileError::new(&stream.path, format!("cannot read: {e}")))?;
        Ok(bytes)
    }

    /// Appends one batch: `records[k]` holds the batch's records of stream k (in the order the
    /// streams were given), `indices` the batch's sample indices. Durable when this returns.
    pub fn commit(&mut self, indices: &[u64], records: &[Vec<u8>]) -> Result<(), JournalError> {
        if records.len() != self.streams.len() {
            return Err(FileError::new(
                &self.dir,
                format!(
                    "{} record sets for {} streams",
                    records.len(),
                    self.streams.len()
                ),
            )
            .into());
        }
        for (stream, bytes) in self.streams.iter_mut().zip(records) {
            if bytes.len() != indices.len() * stream.spec.record_bytes {
                return Err(FileError::new(
                    &stream.path,
                    format!(
                        "{} bytes for {} records of {}",
                        bytes.len(),
                        indices.len(),
                        stream.spec.record_bytes
                    ),
                )
                .into());
            }
            stream
                .file
                .write_all(bytes)
                .and_then(|()| stream.file.sync_data())
                .map_err(|e| FileError::new(&stream.path, format!("cannot write: {e}")))?;
        }
        self.completed += indices.len();
        self.batches.push((
            indices.len(),
            batch_checksum(&self.settings_digest, indices, records),
        ));
        for &index in indices {
            match self.ranges.last_mut() {
                Some(last) if last.end == index => last.end = index + 1,
                _ => self.ranges.push(index..index + 1),
            }
        }
        self.write_progress()
    }

    /// Removes the journal: the run is complete and its outputs are written.
    pub fn finish(self) -> Result<(), JournalError> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| FileError::new(&dir, format!("cannot remove: {e}")).into())
    }

    fn stream_mut(&mut self, name: &str) -> Result<&mut Stream, JournalError> {
        let dir = self.dir.clone();
        self.streams
            .iter_mut()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| FileError::new(&dir, format!("no journal stream `{name}`")).into())
    }

    fn write_progress(&mut self) -> Result<(), JournalError> {
        let ranges: Vec<Value> = self
            .ranges
            .iter()
            .map(|r| json!([r.start, r.end]))
            .collect();
        write_json(
            &self.dir.join(PROGRESS),
            &json!({
                "completed_images": self.completed,
                "completed_indices": ranges,
                "batches": self.batches.iter().map(|(n, sha)| json!([n, sha])).collect::<Vec<_>>(),
            }),
        )
    }
}

/// The settings an interrupted run's journal in `dir` was made with, if there is a readable one
/// (a resume adopts settings the user left to be chosen, such as the decode batch).
pub fn recorded_settings(dir: &Path) -> Option<Map<String, Value>> {
    let mut fingerprint = read_json(&dir.join(SETTINGS)).ok()?;
    match fingerprint.get_mut("settings")?.take() {
        Value::Object(settings) => Some(settings),
        _ => None,
    }
}

fn stream_list(streams: &[StreamSpec]) -> Value {
    streams
        .iter()
        .map(|s| json!([s.name, s.record_bytes]))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// The checksum of one committed batch: the settings' digest, the batch's sample indices and its
/// records in every stream, in order.
fn batch_checksum(settings_digest: &str, indices: &[u64], records: &[Vec<u8>]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(settings_digest.as_bytes());
    for index in indices {
        hasher.update(index.to_le_bytes());
    }
    for stream in records {
        hasher.update((stream.len() as u64).to_le_bytes());
        hasher.update(stream);
    }
    format!("{:x}", hasher.finalize())
}

/// `[[count, sha256], ...]` of `progress.json`'s `batches`.
fn parse_batches(value: &Value) -> Option<Vec<(usize, String)>> {
    value
        .as_array()?
        .iter()
        .map(|batch| {
            let count = usize::try_from(batch.get(0)?.as_u64()?).ok()?;
            Some((count, batch.get(1)?.as_str()?.to_owned()))
        })
        .collect()
}

fn parse_ranges(value: &Value) -> Option<Vec<Range<u64>>> {
    value
        .as_array()?
        .iter()
        .map(|r| Some(r.get(0)?.as_u64()?..r.get(1)?.as_u64()?))
        .collect()
}

fn read_json(path: &Path) -> Result<Value, FileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::new(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| FileError::new(path, format!("invalid JSON: {e}")))
}

fn write_json(path: &Path, value: &Value) -> Result<(), JournalError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| FileError::new(path, e.to_string()))?;
    Ok(write_atomically(path, text.as_bytes())?)
}

/// Every setting whose value differs between two fingerprints, named by its key.
fn differences(then: &Value, now: &Value) -> Vec<(String, Value, Value)> {
    let mut changes = Vec::new();
    for part in ["settings", "streams"] {
        let (a, b) = (&then[part], &now[part]);
        match (a.as_object(), b.as_object()) {
            (Some(a_map), Some(b_map)) => {
                for (key, b_value) in b_map {
                    let a_value = a_map.get(key).unwrap_or(&Value::Null);
                    if a_value != b_value {
                        changes.push((key.clone(), a_value.clone(), b_value.clone()));
                    }
                }
                for (key, a_value) in a_map.iter().filter(|(k, _)| !b_map.contains_key(*k)) {
                    changes.push((key.clone(), a_value.clone(), Value::Null));
                }
            }
            _ if a != b => changes.push((part.to_string(), a.clone(), b.clone())),
            _ => {}
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(scale: f64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("cfg_scale".into(), json!(scale));
        m.insert("seed".into(), json!(0));
        m
    }

    /// A new journal of `streams` under `settings(1.5)`, at `j` in a fresh temporary directory
    /// that lives as long as the returned guard.
    fn new_journal(streams: &[StreamSpec]) -> (tempfile::TempDir, PathBuf, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = Journal::open(&path, &settings(1.5), streams, 8, false).unwrap();
        (dir, path, journal)
    }

    #[test]
    fn commits_survive_reopening_and_uncommitted_records_are_dropped() {
        let streams = [StreamSpec::new("tokens", 2)];
        let (_dir, path, mut journal) = new_journal(&streams);
        journal.commit(&[0, 1], &[vec![1, 2, 3, 4]]).unwrap();
        journal.commit(&[2], &[vec![5, 6]]).unwrap();
        // A batch appended but not committed, as a kill between the two steps leaves it.
        journal.streams[0].file.write_all(&[9, 9]).unwrap();
        drop(journal);
        let mut journal = Journal::open(&path, &settings(1.5), &streams, 8, true).unwrap();
        assert_eq!((journal.completed(), journal.resumed()), (3, 3));
        assert_eq!(journal.read("tokens", 1..3).unwrap(), [3, 4, 5, 6]);
        journal.commit(&[3], &[vec![7, 8]]).unwrap();
        assert_eq!(
            journal.read("tokens", 0..4).unwrap(),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        let progress = read_json(&path.join(PROGRESS)).unwrap();
        assert_eq!(progress["completed_indices"], json!([[0, 4]]));
        journal.finish().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn changed_settings_refuse_to_resume_naming_the_setting() {
        let streams = [StreamSpec::new("tokens", 2)];
        let (_dir, path, mut journal) = new_journal(&streams);
        journal.commit(&[0], &[vec![1, 2]]).unwrap();
        drop(journal);
        let err = match Journal::open(&path, &settings(2.0), &streams, 8, true) {
            Err(e) => e,
            Ok(_) => panic!("resumed with another CFG scale"),
        };
        let text = err.to_string();
        assert!(text.contains("`cfg_scale` was 1.5, now 2.0"), "{text}");
        // Without resuming, the old journal is replaced.
        let journal = Journal::open(&path, &settings(2.0), &streams, 8, false).unwrap();
        assert_eq!(journal.completed(), 0);
    }

    #[test]
    fn sharded_indices_are_recorded_as_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut journal = Journal::open(&path, &settings(1.0), &[], 8, false).unwrap();
        journal.commit(&[1, 3], &[]).unwrap();
        journal.commit(&[5], &[]).unwrap();
        let progress = read_json(&path.join(PROGRESS)).unwrap();
        assert_eq!(
            progress["completed_indices"],
            json!([[1, 2], [3, 4], [5, 6]])
        );
    }

    #[test]
    fn counts_that_do_not_fit_the_run_are_refused_naming_the_progress_file() {
        let streams = [StreamSpec::new("features", 64)];
        let (_dir, path, mut journal) = new_journal(&streams);
        journal.commit(&[0, 1], &[vec![7; 128]]).unwrap();
        drop(journal);
        let progress = path.join(PROGRESS);
        let batches = read_json(&progress).unwrap()["batches"].clone();
        let edit = |completed: u64, end: u64| {
            let text = json!({
                "completed_images": completed,
                "completed_indices": [[0, end]],
                "batches": batches,
            });
            std::fs::write(&progress, text.to_string()).unwrap();
        };
        let refused = |needle: &str| {
            let err = match Journal::open(&path, &settings(1.5), &streams, 8, true) {
                Err(e) => e.to_string(),
                Ok(j) => panic!("resumed with {} images complete", j.completed()),
            };
            assert!(err.contains("progress.json"), "{err}");
            assert!(err.contains(needle), "{err}");
        };
        // More images than the run has, with the records to match them.
        let mut records = OpenOptions::new()
            .append(true)
            .open(path.join("features.bin"))
            .unwrap();
        records.write_all(&[7; 64 * 8]).unwrap();
        drop(records);
        edit(10, 10);
        refused("`completed_images` is 10, more than the 8 images of this run");
        // So many that their bytes wrap a multiplication.
        edit(1 << 58, 1 << 58);
        refused(&format!("`completed_images` is {}", 1u64 << 58));
        // A count its index ranges do not hold.
        edit(3, 2);
        refused("`completed_indices` hold 2 samples but `completed_images` is 3");
        // The journal as it was resumes.
        edit(2, 2);
        let journal = Journal::open(&path, &settings(1.5), &streams, 8, true).unwrap();
        assert_eq!(journal.completed(), 2);
    }

    #[test]
    fn records_and_settings_edited_after_their_commit_are_refused() {
        let streams = [StreamSpec::new("tokens", 2)];
        let refused = |path: &Path, settings: &Map<String, Value>| {
            let err = match Journal::open(path, settings, &streams, 8, true) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("resumed an edited journal"),
            };
            assert!(err.contains("do not match their checksum"), "{err}");
        };
        // A token id edited in the records.
        let (_dir, path, mut journal) = new_journal(&streams);
        journal.commit(&[0, 1], &[vec![1, 2, 3, 4]]).unwrap();
        journal.commit(&[2], &[vec![5, 6]]).unwrap();
        drop(journal);
        let records = path.join("tokens.bin");
        std::fs::write(&records, [1, 2, 3, 9, 5, 6]).unwrap();
        refused(&path, &settings(1.5));
        // The settings edited to those of the run that resumes (the records are the old run's).
        std::fs::write(&records, [1, 2, 3, 4, 5, 6]).unwrap();
        let now = json!({ "settings": settings(2.0), "streams": stream_list(&streams) });
        std::fs::write(path.join(SETTINGS), now.to_string()).unwrap();
        refused(&path, &settings(2.0));
        // Records of another run with the same settings but other samples (indices differ).
        let (_other_dir, other, mut journal) = new_journal(&streams);
        journal.commit(&[5, 6], &[vec![1, 2, 3, 4]]).unwrap();
        drop(journal);
        let (_dir, path, mut journal) = new_journal(&streams);
        journal.commit(&[0, 1], &[vec![1, 2, 3, 4]]).unwrap();
        drop(journal);
        std::fs::copy(other.join(PROGRESS), path.join(PROGRESS)).unwrap();
        let mut progress = read_json(&path.join(PROGRESS)).unwrap();
        progress["completed_indices"] = json!([[0, 2]]);
        std::fs::write(path.join(PROGRESS), progress.to_string()).unwrap();
        refused(&path, &settings(1.5));
    }
}
