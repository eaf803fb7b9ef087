//! A rank's part on disk: the manifest that completes it (with the typed record of how the rank
//! ran), reading and writing it, and what a gather refuses ([`GatherError`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::io::{sha256_file, write_atomically, FileError};
use crate::layout::{is_rank_file, manifest_rank, RunLayout, MANIFEST_PATTERN};
use crate::partition::Shard;

/// Why a gather cannot join the parts.
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    /// A rank ran with another world size.
    #[error("{}: rank {rank} ran in a job of {theirs} processes, rank {first_rank}'s job has {ours}; start every rank with the same world size", path.display())]
    WorldSize {
        /// The odd rank.
        rank: usize,
        /// Its manifest.
        path: PathBuf,
        /// Its world size.
        theirs: usize,
        /// The first part's rank.
        first_rank: usize,
        /// The first part's world size.
        ours: usize,
    },
    /// A rank ran with other settings.
    #[error("{}: rank {rank} was run with another command line than rank {first_rank} ({}): {changes}; run every rank with the same flags, or delete the part and rerun that rank", path.display(), first.display())]
    Settings {
        /// The odd rank.
        rank: usize,
        /// Its manifest.
        path: PathBuf,
        /// The rank it was compared with.
        first_rank: usize,
        /// That rank's manifest.
        first: PathBuf,
        /// `setting was X, here Y` for each difference.
        changes: String,
    },
    /// Two ranks produced the same sample.
    #[error("sample index {index} is claimed by rank {first_rank} ({}, shard {first_shard}) and by rank {second_rank} ({}, shard {second_shard}); give every rank its own indices (no --shard under a launcher)", first.display(), second.display())]
    DuplicateIndex {
        /// The sample.
        index: u64,
        /// One rank.
        first_rank: usize,
        /// Its manifest.
        first: PathBuf,
        /// Its partition.
        first_shard: String,
        /// The other rank.
        second_rank: usize,
        /// Its manifest.
        second: PathBuf,
        /// Its partition.
        second_shard: String,
    },
    /// The parts leave samples out.
    #[error("{}: the parts hold {covered} of the {total} samples (sample {first_missing} is in none); rerun the rank that produces it", dir.display())]
    Incomplete {
        /// The parts folder.
        dir: PathBuf,
        /// Samples the parts hold.
        covered: usize,
        /// Samples of the job.
        total: usize,
        /// The first sample no part holds.
        first_missing: u64,
    },
    /// Ranks did not deliver their parts in time.
    #[error("{}: no part from rank {ranks} after {waited_s} s (expected {expected}); when they have finished, run `llamagen-eval merge {}` to finish the gather, or raise --gather-timeout", dir.display(), out.display())]
    Missing {
        /// The parts folder.
        dir: PathBuf,
        /// The missing ranks, comma-separated.
        ranks: String,
        /// The manifest names expected.
        expected: String,
        /// Seconds waited.
        waited_s: u64,
        /// The output to name in the `merge` hint.
        out: PathBuf,
    },
    /// A part's file is unreadable.
    #[error(transparent)]
    File(#[from] FileError),
}

/// How one rank ran, as the gathered run record lists it under `ranks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankRecord {
    /// Its rank.
    pub rank: usize,
    /// Its rank on its node.
    pub local_rank: usize,
    /// The machine it ran on.
    pub host: String,
    /// Its device (`cpu`, `cuda:0`).
    pub device: String,
    /// The device as [`crate::device::describe`] names it.
    pub device_name: String,
    /// Samples (or images) of its part.
    pub samples: usize,
    /// Of those, restored from its journal instead of computed.
    pub resumed_samples: usize,
    /// Images per second of its wall time.
    pub images_per_s: f64,
    /// Tokens per second of sampling (0 for jobs that sample nothing).
    pub tokens_per_s: f64,
    /// Its wall time.
    pub wall_s: f64,
    /// The decode batch it used (generation jobs: `auto` may choose it per device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_batch_size: Option<usize>,
}

/// What a rank's manifest says about its part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The rank that wrote it.
    pub rank: usize,
    /// Processes in its job.
    pub world_size: usize,
    /// The launcher it read its rank from.
    pub launcher: String,
    /// The samples it produced: `K/N` as `--shard`.
    pub shard: String,
    /// Samples of the whole job.
    pub samples: usize,
    /// Everything that decides the result and must be equal on every rank.
    pub settings: Map<String, Value>,
    /// Run-record fields of the generator (checkpoints, sampling settings).
    pub run_fields: Map<String, Value>,
    /// How the rank ran.
    pub rank_record: RankRecord,
    /// The rank's throughput record.
    pub timing: Value,
    /// The part's files in the parts folder, by kind (`features`, `samples`, `grid`).
    pub files: BTreeMap<String, String>,
    /// The sha256 of each of `files`, by kind, taken once the rank had written them: the gather
    /// (and a resume that keeps the part) verifies every file against it.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
    /// The job's description, in the job's own serde form: what `merge OUT_DIR` rebuilds the
    /// job from to finish the gather (with every path from the filesystem root).
    pub job: Value,
    /// The launch that wrote it (see [`super::Distribution::launch`]).
    #[serde(default)]
    pub launch: Option<String>,
}

/// A manifest read from the parts folder.
#[derive(Debug, Clone)]
pub struct Part {
    /// The manifest file.
    pub path: PathBuf,
    /// Its contents.
    pub manifest: Manifest,
}

impl Part {
    /// The part's file of `kind`, if it has one.
    pub fn file(&self, kind: &str) -> Option<PathBuf> {
        let name = self.manifest.files.get(kind)?;
        Some(self.path.parent().unwrap_or(Path::new(".")).join(name))
    }

    /// The part's file of `kind`, or an error naming its manifest.
    pub fn require_file(&self, kind: &str) -> Result<PathBuf, FileError> {
        self.file(kind)
            .ok_or_else(|| FileError::new(&self.path, format!("names no {kind} file")))
    }

    /// Verifies that every file the manifest names still holds what the rank wrote (its
    /// sha256), so that a part cut short, emptied, edited or swapped in from another run after
    /// the rank finished is refused, naming the file.
    pub fn verify_files(&self) -> Result<(), FileError> {
        let rank = self.manifest.rank;
        let again = format!(
            "rerun the job with --resume so that rank {rank} makes its part again (or delete {} and rerun rank {rank})",
            self.path.display()
        );
        for kind in self.manifest.files.keys() {
            let Some(path) = self.file(kind) else {
                continue;
            };
            let Some(expected) = self.manifest.checksums.get(kind) else {
                return Err(FileError::new(
                    &self.path,
                    format!("holds no sha256 of rank {rank}'s {kind} file, so it cannot be verified; {again}"),
                ));
            };
            let actual = sha256_file(&path).map_err(|e| {
                FileError::new(
                    &path,
                    format!("cannot read rank {rank}'s {kind} part: {e}; {again}"),
                )
            })?;
            if actual != *expected {
                return Err(FileError::new(
                    &path,
                    format!(
                        "does not hold what rank {rank} wrote (its sha256 is {}…, the manifest {} says {}…): the file was changed, cut short or swapped in from another run after the rank finished; {again}",
                        &actual[..12],
                        self.path.display(),
                        expected.get(..12).unwrap_or(expected),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Its partition of the job's samples.
    pub fn shard(&self) -> Result<Shard, FileError> {
        self.manifest
            .shard
            .parse()
            .map_err(|e: String| FileError::new(&self.path, format!("bad `shard`: {e}")))
    }

    /// Its sample indices (a count beyond any run's is refused before the list is made).
    pub fn indices(&self) -> Result<Vec<u64>, FileError> {
        let samples = self.manifest.samples;
        if samples > crate::partition::MAX_SAMPLES {
            return Err(FileError::new(
                &self.path,
                format!(
                    "claims a job of {samples} samples, more than any run has ({}): the manifest was edited or damaged",
                    crate::partition::MAX_SAMPLES
                ),
            ));
        }
        Ok(self.shard()?.indices(samples))
    }
}

/// Removes `rank`'s part (a new run replaces it); other ranks' parts are theirs to replace.
pub fn remove_part(layout: &RunLayout, rank: usize) -> Result<(), FileError> {
    let Ok(entries) = std::fs::read_dir(layout.parts()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if is_rank_file(&entry.file_name().to_string_lossy(), rank) {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|e| FileError::new(&path, format!("cannot remove: {e}")))?;
        }
    }
    Ok(())
}

/// Writes `manifest` into `layout`'s parts folder: the part is complete once this returns.
pub fn write_manifest(layout: &RunLayout, manifest: &Manifest) -> Result<PathBuf, FileError> {
    let path = layout.manifest(manifest.rank);
    let text =
        serde_json::to_string_pretty(manifest).map_err(|e| FileError::new(&path, e.to_string()))?;
    write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

/// Reads a manifest.
pub fn read_manifest(path: &Path) -> Result<Part, FileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::new(path, format!("cannot read: {e}")))?;
    let manifest = serde_json::from_str(&text)
        .map_err(|e| FileError::new(path, format!("not a part manifest: {e}")))?;
    Ok(Part {
        path: path.to_path_buf(),
        manifest,
    })
}

/// `rank`'s complete part in `layout` made with exactly `settings` in a job of `world_size`, if
/// there is one (a restarted rank whose part was written keeps it).
pub fn finished_part(
    layout: &RunLayout,
    rank: usize,
    world_size: usize,
    settings: &Map<String, Value>,
) -> Option<Part> {
    let part = read_manifest(&layout.manifest(rank)).ok()?;
    let complete = part.manifest.world_size == world_size
        && part.manifest.settings == *settings
        && part
            .manifest
            .files
            .keys()
            .all(|kind| part.file(kind).is_some_and(|p| p.is_file()));
    if !complete {
        return None;
    }
    match part.verify_files() {
        Ok(()) => Some(part),
        Err(e) => {
            tracing::warn!("{e}: making rank {rank}'s part again");
            None
        }
    }
}

/// Keeps a finished part for this launch: its manifest is written again with `launch`.
pub fn keep_part(part: Part, layout: &RunLayout, launch: Option<&str>) -> Result<Part, FileError> {
    let mut manifest = part.manifest;
    manifest.launch = launch.map(str::to_owned);
    let path = write_manifest(layout, &manifest)?;
    Ok(Part { path, manifest })
}

/// The manifests in the parts folder `dir`, by rank (a gather offline: whatever is there).
pub fn present_parts(dir: &Path) -> Result<Vec<Part>, FileError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| FileError::new(dir, format!("cannot list: {e}")))?;
    let mut parts = Vec::new();
    for entry in entries.flatten() {
        if manifest_rank(&entry.file_name().to_string_lossy()).is_some() {
            parts.push(read_manifest(&entry.path())?);
        }
    }
    parts.sort_by_key(|p| p.manifest.rank);
    if parts.is_empty() {
        return Err(FileError::new(
            dir,
            format!("holds no part manifests ({MANIFEST_PATTERN})"),
        ));
    }
    Ok(parts)
}
