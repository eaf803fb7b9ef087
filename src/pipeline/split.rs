//! `features`, `stats` and `recon` split over the ranks of a launcher: rank r of N reads only the
//! images r, r+N, ... of the input (a strided view of the npz or folder, whose indices are the
//! images' own, so journals record real indices), runs its own journaled pass
//! (`<journal>/rank-<r>`), and writes its part — per-image results with their image indices —
//! into the output's parts folder, manifest last. Rank 0 waits for every part, checks that they
//! belong to one job, and computes from them, in image order and over the batches one process
//! would have used, what one process would have written.
//!
//! Each command's part files and join live with the command; this module holds what they share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::Array1;
use serde_json::{json, Map, Value};

use super::gather::{
    check_parts, finished_part, host_name, keep_part, part_file_name, remove_journals_folder,
    remove_part, remove_parts, wait_for_parts_of, write_manifest, Distribution, Manifest, Part,
};
use super::generate::{job_settings, Shard};
use crate::progress::Progress;

/// This rank's share of a launched image job and the part it writes.
pub struct RankPart<'d> {
    distribution: &'d Distribution,
    /// The parts folder.
    pub dir: PathBuf,
    /// Images of the whole job.
    pub total: usize,
    /// Whether the rank continues its journal (asked for, or the launcher restarted the job).
    pub resuming: bool,
    /// The job's settings (the run's fingerprint and the world size), equal on every rank.
    pub settings: Map<String, Value>,
    start: Instant,
}

impl<'d> RankPart<'d> {
    /// Makes room for this rank's part of a job of `total` images in `dir` (a new run replaces
    /// the rank's old part; a resumed one keeps it). `fingerprint`: everything that decides the
    /// result.
    pub fn start(
        distribution: &'d Distribution,
        dir: PathBuf,
        total: usize,
        resume: bool,
        fingerprint: &Map<String, Value>,
    ) -> Result<Self> {
        let world = distribution.world;
        anyhow::ensure!(
            total >= world.size,
            "{total} images for {} ranks: rank {} would have none; start at most {total} processes",
            world.size,
            world.size - 1
        );
        let resuming = resume || world.restarts > 0;
        if !resuming {
            remove_part(&dir, world.rank)?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(RankPart {
            distribution,
            dir,
            total,
            resuming,
            settings: job_settings(fingerprint, world.size),
            start: Instant::now(),
        })
    }

    /// This rank's images: r, r+N, ...
    pub fn shard(&self) -> Shard {
        let world = &self.distribution.world;
        Shard {
            index: world.rank,
            count: world.size,
        }
    }

    /// This rank's image indices.
    pub fn indices(&self) -> Array1<i64> {
        self.shard()
            .indices(self.total)
            .into_iter()
            .map(|i| i as i64)
            .collect()
    }

    /// This rank's journal folder under the run's journal folder `base`.
    pub fn journal(&self, base: &Path) -> PathBuf {
        base.join(format!("rank-{}", self.distribution.world.rank))
    }

    /// The name and path of this rank's part file of `kind`.
    pub fn file(&self, kind: &str) -> (String, PathBuf) {
        let name = part_file_name(self.distribution.world.rank, kind);
        let path = self.dir.join(&name);
        (name, path)
    }

    /// This rank's finished part with these settings, when a restarted or resumed rank has one.
    pub fn kept(&self, progress: Progress) -> Option<Part> {
        if !self.resuming {
            return None;
        }
        let world = &self.distribution.world;
        let part = finished_part(&self.dir, world.rank, world.size, &self.settings)?;
        progress.say(format!(
            "rank {}: its part {} is already complete: keeping it",
            world.rank,
            part.path.display()
        ));
        match keep_part(part, self.distribution.launch.as_deref()) {
            Ok(part) => Some(part),
            Err(e) => {
                tracing::warn!("{e}: generating the part again");
                None
            }
        }
    }

    /// Writes the manifest that completes this rank's part: its `files` (kind to name in the
    /// parts folder), how it ran (on `device`, images `resumed` from its journal) and the
    /// `run_fields` the gathered record takes over.
    pub fn write_manifest(
        &self,
        files: BTreeMap<String, String>,
        device: tch::Device,
        resumed: usize,
        run_fields: Map<String, Value>,
        progress: Progress,
    ) -> Result<PathBuf> {
        let world = self.distribution.world;
        let shard = self.shard();
        let images = shard.indices(self.total).len();
        let wall = self.start.elapsed().as_secs_f64();
        let images_per_s = (images - resumed.min(images)) as f64 / wall.max(1e-9);
        let manifest = Manifest {
            rank: world.rank,
            world_size: world.size,
            launcher: world.launcher.name().to_owned(),
            shard: format!("{}/{}", shard.index, shard.count),
            samples: self.total,
            settings: self.settings.clone(),
            run_fields,
            rank_record: json!({
                "rank": world.rank,
                "local_rank": world.local_rank,
                "host": host_name(),
                "device": super::batch::device_name(device),
                "device_name": crate::device::describe(device),
                "samples": images,
                "resumed_samples": resumed,
                "images_per_s": images_per_s,
                "tokens_per_s": 0.0,
                "wall_s": wall,
            }),
            timing: json!({
                "images": images,
                "wall_s": wall,
                "images_per_s": images_per_s,
            }),
            files,
            job: self.distribution.job.clone(),
            launch: self.distribution.launch.clone(),
        };
        let path = write_manifest(&self.dir, &manifest)?;
        progress.say(format!(
            "rank {} of {}: part written to {}",
            world.rank,
            world.size,
            path.display()
        ));
        Ok(path)
    }

    /// On rank 0, every rank's part once all are there, checked to be one job's (waiting at most
    /// the gather timeout; `out` names the output in the `merge` hint). `None` on the other
    /// ranks, which say that rank 0 gathers their parts into `out`.
    pub fn gather(&self, out: &Path, progress: Progress) -> Result<Option<Vec<Part>>> {
        let world = self.distribution.world;
        if world.rank != 0 {
            progress.say(format!(
                "rank {} of {}: done; rank 0 gathers the parts into {}",
                world.rank,
                world.size,
                out.display()
            ));
            return Ok(None);
        }
        let parts = wait_for_parts_of(
            self.distribution.launch.as_deref(),
            &self.dir,
            world.size,
            self.distribution.gather_timeout,
            out,
            progress,
        )?;
        check_parts(&self.dir, &parts)?;
        Ok(Some(parts))
    }
}

/// Removes the parts folder `dir` and the (emptied) journals folder `journals` once the gathered
/// output is written.
pub fn clean_up(dir: &Path, journals: &Path) -> Result<()> {
    remove_parts(dir)?;
    remove_journals_folder(journals);
    Ok(())
}

/// The path of `part`'s file of `kind`, or an error naming its manifest.
pub fn part_file(part: &Part, kind: &str) -> Result<PathBuf> {
    part.file(kind)
        .with_context(|| format!("{}: names no {kind} file", part.path.display()))
}

/// The order in which rows of the parts make the whole job: for each image index 0.., the part
/// and its row. `indices[k]` are part k's image indices; every index below `total` must be in
/// exactly one part (as [`check_parts`] ensures for the manifests).
pub fn row_order(
    indices: &[Vec<i64>],
    total: usize,
    files: &[PathBuf],
) -> Result<Vec<(usize, usize)>> {
    let mut order: Vec<Option<(usize, usize)>> = vec![None; total];
    for (k, (part, path)) in indices.iter().zip(files).enumerate() {
        for (row, &index) in part.iter().enumerate() {
            let slot = usize::try_from(index)
                .ok()
                .and_then(|i| order.get_mut(i))
                .with_context(|| {
                    format!("{}: image index {index} outside 0..{total}", path.display())
                })?;
            anyhow::ensure!(
                slot.is_none(),
                "{}: image index {index} is in another part too",
                path.display()
            );
            *slot = Some((k, row));
        }
    }
    order
        .into_iter()
        .enumerate()
        .map(|(i, slot)| slot.with_context(|| format!("no part holds image {i}")))
        .collect()
}
