//! A job split over the ranks of a launcher (torchrun, Slurm, MPI): every rank writes its part
//! into the shared output folder's `.parts/` — its features, its samples, its first images for the
//! grid, and last, atomically, `rank-<r>.json`, the manifest that says the part is complete —
//! and rank 0 waits for every rank's manifest, checks that the parts belong to one job, and joins
//! them in sample-index order into the outputs one process would have written. `merge OUT_DIR`
//! does the same gather offline, from the manifests alone.
//!
//! The sample partition is the one of `--shard r/N`, so rank r's samples are exactly the samples
//! r, r+N, ... of a single-process run (sample i depends only on seed, i and label).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ndarray::{Array1, Array3, Axis};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::generate::{Shard, GRID_IMAGES};
use super::generator::Timing;
use super::merge::{join_features, merge};
use crate::captions::TEXT_KEY;
use crate::data::npz::NpzImages;
use crate::data::npz_writer::ImageNpzWriter;
use crate::data::ImageSource;
use crate::features::FeatureSet;
use crate::io::{read_i64, read_strings, write_atomically, FileError};
use crate::launcher::World;
use crate::progress::Progress;

/// How this process takes part in a job.
#[derive(Debug, Clone)]
pub struct Distribution {
    /// Its rank among the job's processes.
    pub world: World,
    /// How long rank 0 waits for the other ranks' parts.
    pub gather_timeout: Duration,
    /// The command line, for `merge OUT_DIR` to redo the gather offline.
    pub job: Job,
    /// This launch of the job ([`crate::launcher::launch_id`]): rank 0 gathers only parts of its
    /// own launch, so a part left by an earlier launch is never taken for a new one.
    pub launch: Option<String>,
}

impl Distribution {
    /// One process on its own.
    pub fn single() -> Self {
        Distribution {
            world: World::SINGLE,
            gather_timeout: Duration::ZERO,
            job: Job::default(),
            launch: None,
        }
    }
}

/// The command that made a part: what `merge OUT_DIR` re-reads to finish the gather.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// The subcommand (`fid`, `sample`, `sweep`).
    pub command: String,
    /// The whole command line.
    pub argv: Vec<String>,
    /// The working directory it ran in (relative paths of the command line are relative to it).
    pub cwd: String,
}

impl Job {
    /// This process's command line as `command`.
    pub fn current(command: &str) -> Self {
        Job {
            command: command.to_owned(),
            argv: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            cwd: std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        }
    }
}

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
    /// How the rank ran: host, device, samples, images/s, tokens/s, wall time.
    pub rank_record: Value,
    /// The rank's throughput record.
    pub timing: Value,
    /// The part's files in the parts folder, by kind (`features`, `samples`, `grid`).
    pub files: BTreeMap<String, String>,
    /// The command line.
    pub job: Job,
    /// The launch that wrote it (see [`Distribution::launch`]).
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

    /// Its sample indices.
    pub fn indices(&self) -> Result<Vec<u64>, GatherError> {
        let shard: Shard = self
            .manifest
            .shard
            .parse()
            .map_err(|e: String| FileError::new(&self.path, format!("bad `shard`: {e}")))?;
        Ok(shard.indices(self.manifest.samples))
    }
}

/// The parts folder of a run folder.
pub fn parts_dir(out_dir: &Path) -> PathBuf {
    out_dir.join(".parts")
}

/// The manifest of `rank` in `dir`.
pub fn manifest_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}.json"))
}

/// The name of `rank`'s file of `kind` in a parts folder.
pub fn part_file_name(rank: usize, kind: &str) -> String {
    format!("rank-{rank}.{kind}.npz")
}

/// Removes `rank`'s part (a new run replaces it); other ranks' parts are theirs to replace.
pub fn remove_part(dir: &Path, rank: usize) -> Result<(), FileError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let prefix = format!("rank-{rank}.");
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|e| FileError::new(&path, format!("cannot remove: {e}")))?;
        }
    }
    Ok(())
}

/// Writes `manifest` as `rank-<r>.json` in `dir`: the part is complete once this returns.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<PathBuf, FileError> {
    let path = manifest_path(dir, manifest.rank);
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

/// `rank`'s complete part in `dir` made with exactly `settings` in a job of `world_size`, if
/// there is one (a restarted rank whose part was written keeps it).
pub fn finished_part(
    dir: &Path,
    rank: usize,
    world_size: usize,
    settings: &Map<String, Value>,
) -> Option<Part> {
    let part = read_manifest(&manifest_path(dir, rank)).ok()?;
    let complete = part.manifest.world_size == world_size
        && part.manifest.settings == *settings
        && part
            .manifest
            .files
            .keys()
            .all(|kind| part.file(kind).is_some_and(|p| p.is_file()));
    complete.then_some(part)
}

/// Keeps a finished part for this launch: its manifest is written again with `launch`.
pub fn keep_part(part: Part, launch: Option<&str>) -> Result<Part, FileError> {
    let dir = part.path.parent().unwrap_or(Path::new("."));
    let mut manifest = part.manifest;
    manifest.launch = launch.map(str::to_owned);
    let path = write_manifest(dir, &manifest)?;
    Ok(Part { path, manifest })
}

/// The manifests in `dir`, by rank (a gather offline: whatever is there).
pub fn present_parts(dir: &Path) -> Result<Vec<Part>, FileError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| FileError::new(dir, format!("cannot list: {e}")))?;
    let mut parts = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_manifest = name
            .strip_prefix("rank-")
            .and_then(|rest| rest.strip_suffix(".json"))
            .is_some_and(|n| n.parse::<usize>().is_ok());
        if is_manifest {
            parts.push(read_manifest(&entry.path())?);
        }
    }
    parts.sort_by_key(|p| p.manifest.rank);
    if parts.is_empty() {
        return Err(FileError::new(
            dir,
            "holds no part manifests (rank-<r>.json)",
        ));
    }
    Ok(parts)
}

/// Waits until the manifests of ranks `0..world_size` are all in `dir`, saying which ranks are
/// still missing; after `timeout`, [`GatherError::Missing`] (`out` names the output for the
/// `merge` hint). Any manifest counts (a gather offline).
pub fn wait_for_parts(
    dir: &Path,
    world_size: usize,
    timeout: Duration,
    out: &Path,
    progress: Progress,
) -> Result<Vec<Part>, GatherError> {
    wait_for_parts_of(None, dir, world_size, timeout, out, progress)
}

/// [`wait_for_parts`] counting only the manifests of `launch` (when it is known): a part an
/// earlier launch left behind waits to be replaced by its rank.
pub fn wait_for_parts_of(
    launch: Option<&str>,
    dir: &Path,
    world_size: usize,
    timeout: Duration,
    out: &Path,
    progress: Progress,
) -> Result<Vec<Part>, GatherError> {
    let start = Instant::now();
    let mut last_said: Option<(Vec<usize>, Instant)> = None;
    loop {
        let mut parts = Vec::with_capacity(world_size);
        let mut missing = Vec::new();
        for rank in 0..world_size {
            let path = manifest_path(dir, rank);
            if !path.is_file() {
                missing.push(rank);
                continue;
            }
            let part = read_manifest(&path)?;
            match launch {
                Some(id) if part.manifest.launch.as_deref() != Some(id) => missing.push(rank),
                _ => parts.push(part),
            }
        }
        if missing.is_empty() {
            return Ok(parts);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(GatherError::Missing {
                dir: dir.to_path_buf(),
                ranks: join(&missing),
                expected: missing
                    .iter()
                    .map(|&r| format!("rank-{r}.json"))
                    .collect::<Vec<_>>()
                    .join(", "),
                waited_s: waited.as_secs(),
                out: out.to_path_buf(),
            });
        }
        let say = last_said
            .as_ref()
            .is_none_or(|(ranks, at)| *ranks != missing || at.elapsed() >= Duration::from_secs(60));
        if say {
            let line = format!(
                "gather: waiting for rank {} ({} s of at most {} s)",
                join(&missing),
                waited.as_secs(),
                timeout.as_secs()
            );
            tracing::info!("{line}");
            progress.say(line);
            last_said = Some((missing, Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(200).min(timeout.saturating_sub(waited)));
    }
}

fn join(ranks: &[usize]) -> String {
    ranks
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every part of the job whose parts are in `dir`, checked (a gather offline: `merge OUT`).
pub fn parts_in(dir: &Path, out: &Path, progress: Progress) -> Result<Vec<Part>, GatherError> {
    let present = present_parts(dir)?;
    let world_size = present[0].manifest.world_size;
    let parts = wait_for_parts(dir, world_size, Duration::ZERO, out, progress)?;
    check_parts(dir, &parts)?;
    Ok(parts)
}

/// Checks that `parts` are one job's: the same world size and settings, and between them every
/// sample exactly once. `dir` is their folder.
pub fn check_parts(dir: &Path, parts: &[Part]) -> Result<(), GatherError> {
    let Some(first) = parts.first() else {
        return Err(FileError::new(dir, "holds no part manifests").into());
    };
    let m0 = &first.manifest;
    for part in &parts[1..] {
        let m = &part.manifest;
        if m.world_size != m0.world_size {
            return Err(GatherError::WorldSize {
                rank: m.rank,
                path: part.path.clone(),
                theirs: m.world_size,
                first_rank: m0.rank,
                ours: m0.world_size,
            });
        }
        if m.settings != m0.settings || m.samples != m0.samples {
            let mut changes = differences(&m0.settings, &m.settings);
            if m.samples != m0.samples {
                changes.push(format!("`samples` was {}, here {}", m0.samples, m.samples));
            }
            return Err(GatherError::Settings {
                rank: m.rank,
                path: part.path.clone(),
                first_rank: m0.rank,
                first: first.path.clone(),
                changes: changes.join("; "),
            });
        }
    }
    // The part (position in `parts`) holding each sample; u32::MAX: none yet.
    const NONE: u32 = u32::MAX;
    let mut owner: Vec<u32> = vec![NONE; m0.samples];
    for (k, part) in parts.iter().enumerate() {
        for index in part.indices()? {
            let slot = &mut owner[index as usize];
            if *slot != NONE {
                let other = &parts[*slot as usize];
                return Err(GatherError::DuplicateIndex {
                    index,
                    first_rank: other.manifest.rank,
                    first: other.path.clone(),
                    first_shard: other.manifest.shard.clone(),
                    second_rank: part.manifest.rank,
                    second: part.path.clone(),
                    second_shard: part.manifest.shard.clone(),
                });
            }
            *slot = k as u32;
        }
    }
    if let Some(missing) = owner.iter().position(|&o| o == NONE) {
        return Err(GatherError::Incomplete {
            dir: dir.to_path_buf(),
            covered: owner.iter().filter(|&&o| o != NONE).count(),
            total: m0.samples,
            first_missing: missing as u64,
        });
    }
    Ok(())
}

fn differences(first: &Map<String, Value>, other: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<&String> = first.keys().chain(other.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| first.get(*k) != other.get(*k))
        .map(|k| {
            format!(
                "`{k}` was {}, here {}",
                first.get(k).unwrap_or(&Value::Null),
                other.get(k).unwrap_or(&Value::Null)
            )
        })
        .collect()
}

/// The parts' features as one set in sample order.
pub fn join_part_features(parts: &[Part]) -> Result<FeatureSet> {
    let mut sets = Vec::with_capacity(parts.len());
    let mut paths = Vec::with_capacity(parts.len());
    for part in parts {
        let path = part
            .file("features")
            .with_context(|| format!("{}: names no features file", part.path.display()))?;
        let set = FeatureSet::load(&path)
            .with_context(|| format!("features of rank {}", part.manifest.rank))?;
        anyhow::ensure!(
            set.indices.is_some(),
            "{}: features without `indices`",
            path.display()
        );
        sets.push(set);
        paths.push(path);
    }
    let mut joined = join_features(&sets, &paths)?;
    joined.indices = None;
    Ok(joined)
}

/// Joins the parts' sample files into the npz `out`, in sample order.
pub fn join_part_samples(parts: &[Part], out: &Path, progress: Progress) -> Result<()> {
    let files: Vec<PathBuf> = parts
        .iter()
        .map(|p| {
            p.file("samples")
                .with_context(|| format!("{}: names no samples file", p.path.display()))
        })
        .collect::<Result<_>>()?;
    merge(&files, out, progress)
}

/// The images of a grid, and their captions (t2i runs with caption texts).
pub struct GridImages {
    /// The images, in sample order.
    pub images: Vec<Array3<u8>>,
    /// One caption per image.
    pub captions: Option<Vec<String>>,
}

/// The first [`GRID_IMAGES`] samples of the job, from the parts' grid files, with their captions
/// when every part has them.
pub fn join_part_grids(parts: &[Part]) -> Result<GridImages> {
    let mut images: Vec<(i64, Array3<u8>, Option<String>)> = Vec::new();
    let mut captioned = true;
    for part in parts {
        let Some(path) = part.file("grid") else {
            continue;
        };
        let indices = read_i64(&path, "indices")?
            .with_context(|| format!("{}: no `indices`", path.display()))?;
        let captions = read_strings(&path, TEXT_KEY)?;
        if let Some(c) = &captions {
            anyhow::ensure!(
                c.len() == indices.len(),
                "{}: {} captions for {} indices",
                path.display(),
                c.len(),
                indices.len()
            );
        }
        captioned &= captions.is_some();
        let mut npz = NpzImages::open(&path, GRID_IMAGES)?;
        let mut position = 0;
        while let Some(batch) = npz.next_batch(GRID_IMAGES)? {
            for image in batch.axis_iter(Axis(0)) {
                let index = *indices
                    .get(position)
                    .with_context(|| format!("{}: more images than indices", path.display()))?;
                let caption = captions.as_ref().map(|c| c[position].clone());
                images.push((index, image.to_owned(), caption));
                position += 1;
            }
        }
    }
    images.sort_by_key(|(i, _, _)| *i);
    images.truncate(GRID_IMAGES);
    let captions = (captioned && !images.is_empty()).then(|| {
        images
            .iter()
            .map(|(_, _, c)| c.clone().unwrap_or_default())
            .collect()
    });
    Ok(GridImages {
        images: images.into_iter().map(|(_, image, _)| image).collect(),
        captions,
    })
}

/// Writes a rank's grid images (its first samples) with their sample indices, and their captions
/// (t2i runs with caption texts).
pub fn write_grid_part(
    path: &Path,
    images: &[Array3<u8>],
    indices: &[u64],
    captions: Option<&[String]>,
) -> Result<()> {
    let Some(first) = images.first() else {
        anyhow::bail!("no images for the grid part");
    };
    let (h, w, _) = first.dim();
    let mut writer = ImageNpzWriter::create(path, images.len(), h, w)?;
    for image in images {
        writer.push(image.view())?;
    }
    let idx: Array1<i64> = indices[..images.len()].iter().map(|&i| i as i64).collect();
    writer.add_array("indices", &idx)?;
    if let Some(captions) = captions {
        writer.add_strings(TEXT_KEY, &captions[..images.len()])?;
    }
    writer.finish()?;
    Ok(())
}

/// How the job was split, for the run record: `world_size`, `launcher`, `ranks` (one entry per
/// rank) and the total throughput (all ranks' images over the slowest rank's wall time).
pub fn split_record(parts: &[Part]) -> Vec<(&'static str, Value)> {
    let ranks: Vec<Value> = parts
        .iter()
        .map(|p| p.manifest.rank_record.clone())
        .collect();
    let number = |p: &Part, key: &str| p.manifest.timing[key].as_f64().unwrap_or(0.0);
    let images: f64 = parts.iter().map(|p| number(p, "images")).sum();
    let tokens: f64 = parts.iter().map(|p| number(p, "tokens")).sum();
    let wall = parts
        .iter()
        .map(|p| number(p, "wall_s"))
        .fold(0.0, f64::max)
        .max(1e-9);
    let launcher = parts
        .first()
        .map_or_else(String::new, |p| p.manifest.launcher.clone());
    vec![
        ("world_size", json!(parts.len())),
        ("launcher", json!(launcher)),
        ("ranks", Value::Array(ranks)),
        (
            "throughput",
            json!({
                "images": images,
                "tokens": tokens,
                "wall_s": wall,
                "images_per_s": images / wall,
                "tokens_per_s": parts.iter().map(|p| number(p, "tokens_per_s")).sum::<f64>(),
            }),
        ),
    ]
}

/// A rank's entry in `ranks`.
pub fn rank_record(world: &World, timing: &Timing, samples: usize, resumed: usize) -> Value {
    json!({
        "rank": world.rank,
        "local_rank": world.local_rank,
        "host": host_name(),
        "device": timing.device,
        "device_name": timing.device_name,
        "samples": samples,
        "resumed_samples": resumed,
        "images_per_s": timing.images_per_s(),
        "tokens_per_s": timing.tokens_per_s(),
        "wall_s": timing.wall.as_secs_f64(),
    })
}

/// The printed summary of a gathered job: one line per rank and the total.
pub fn split_summary(parts: &[Part]) -> String {
    let mut text = String::new();
    for part in parts {
        let r = &part.manifest.rank_record;
        text.push_str(&format!(
            "rank {}: {} samples on {} ({}), {:.2} images/s, {:.1} tokens/s, {:.1} s\n",
            r["rank"],
            r["samples"],
            r["host"].as_str().unwrap_or("?"),
            r["device_name"].as_str().unwrap_or("?"),
            r["images_per_s"].as_f64().unwrap_or(0.0),
            r["tokens_per_s"].as_f64().unwrap_or(0.0),
            r["wall_s"].as_f64().unwrap_or(0.0),
        ));
    }
    for (key, value) in split_record(parts) {
        if key == "throughput" {
            text.push_str(&format!(
                "total: {} images in {:.1} s over {} ranks ({}): {:.2} images/s, {:.1} tokens/s\n",
                value["images"],
                value["wall_s"].as_f64().unwrap_or(0.0),
                parts.len(),
                parts.first().map_or("", |p| p.manifest.launcher.as_str()),
                value["images_per_s"].as_f64().unwrap_or(0.0),
                value["tokens_per_s"].as_f64().unwrap_or(0.0),
            ));
        }
    }
    text
}

/// Removes the parts folder once the gathered outputs are written.
pub fn remove_parts(dir: &Path) -> Result<(), FileError> {
    std::fs::remove_dir_all(dir).map_err(|e| FileError::new(dir, format!("cannot remove: {e}")))
}

/// Removes the folder that held the ranks' journals, once each rank has removed its own.
pub fn remove_journals_folder(dir: &Path) {
    if let Err(e) = std::fs::remove_dir(dir) {
        if dir.exists() {
            tracing::warn!("{}: not removed: {e}", dir.display());
        }
    }
}

/// This machine's host name.
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what we pass.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}
