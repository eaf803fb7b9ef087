//! A rank's share of a job, the one lifecycle every job follows (a process on its own is a world
//! of one, which writes its outputs instead of a part): [`RankPart::start`] makes room for the part (a new run replaces the rank's old part; a resumed or restarted one
//! keeps it), [`RankPart::kept`] finds a part the rank already finished with the same settings,
//! the job writes its files ([`RankPart::file`]) and then the manifest that completes the part
//! ([`RankPart::write_manifest`]), and [`RankPart::gather`] hands rank 0 every rank's checked
//! part.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::gather::{check_parts, wait_for_parts};
use super::manifest::{
    finished_part, keep_part, remove_part, write_manifest, Manifest, Part, RankRecord,
};
use super::{host_name, job_settings, Distribution};
use crate::io::{sha256_file, FileError};
use crate::layout::RunLayout;
use crate::partition::Shard;
use crate::progress::Progress;

/// Why a rank cannot take part.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// The job has fewer samples than ranks.
    #[error("{total} images for {ranks} ranks: rank {last} would have none; start at most {total} processes")]
    TooFewSamples {
        /// Samples of the job.
        total: usize,
        /// Ranks of the job.
        ranks: usize,
        /// The last rank.
        last: usize,
    },
    /// The parts folder cannot be made, or a part file cannot be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The gather failed.
    #[error(transparent)]
    Gather(#[from] super::GatherError),
}

/// This rank's share of a launched job and the part it writes.
pub struct RankPart<'d> {
    distribution: &'d Distribution,
    /// Where the job's outputs, journals and parts go.
    pub layout: RunLayout,
    /// Samples (or images) of the whole job.
    pub total: usize,
    /// Whether the rank continues its journal (asked for, or the launcher restarted the job).
    pub resuming: bool,
    /// The job's settings (the run's fingerprint and the world size), equal on every rank.
    pub settings: Map<String, Value>,
    shard: Shard,
    description: Value,
    start: Instant,
}

/// What a rank says about its finished part, besides its files.
pub struct PartReport {
    /// The part's files in the parts folder, by kind.
    pub files: BTreeMap<String, String>,
    /// How the rank ran.
    pub rank_record: RankRecord,
    /// The rank's throughput record.
    pub timing: Value,
    /// Run-record fields the gathered record takes over.
    pub run_fields: Map<String, Value>,
}

impl<'d> RankPart<'d> {
    /// Makes room for this rank's part of a job of `total` samples in `layout`. `fingerprint`:
    /// everything that decides the result; `description`: the job as its manifest keeps it for
    /// `merge OUT_DIR`.
    pub fn start(
        distribution: &'d Distribution,
        layout: RunLayout,
        total: usize,
        resume: bool,
        fingerprint: &Map<String, Value>,
        description: Value,
    ) -> Result<Self, PartError> {
        let world = distribution.world;
        let resuming = resume || world.restarts > 0;
        if world.size > 1 {
            if total < world.size {
                return Err(PartError::TooFewSamples {
                    total,
                    ranks: world.size,
                    last: world.size - 1,
                });
            }
            if !resuming {
                remove_part(&layout, world.rank)?;
            }
            let dir = layout.parts();
            std::fs::create_dir_all(dir)
                .map_err(|e| FileError::new(dir, format!("cannot create: {e}")))?;
        }
        Ok(RankPart {
            distribution,
            layout,
            total,
            resuming,
            settings: job_settings(fingerprint, world.size),
            shard: Shard {
                index: world.rank,
                count: world.size,
            },
            description,
            start: Instant::now(),
        })
    }

    /// The part with the samples of `shard` instead of the rank's own (a `--shard` given by
    /// hand; the gather refuses parts that overlap).
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    /// Whether this process is a world of one: its outputs come from its own shard, and it
    /// writes no part.
    pub fn is_alone(&self) -> bool {
        self.distribution.world.size == 1
    }

    /// This rank's samples: r, r+N, ... (or the shard given by hand).
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// This rank's sample indices.
    pub fn indices(&self) -> Vec<u64> {
        self.shard().indices(self.total)
    }

    /// This rank's journal folder.
    pub fn journal(&self) -> PathBuf {
        let world = &self.distribution.world;
        self.layout.rank_journal(world.rank, world.size)
    }

    /// The name and path of this rank's part file of `kind`.
    pub fn file(&self, kind: &str) -> (String, PathBuf) {
        let rank = self.distribution.world.rank;
        (
            RunLayout::part_file_name(rank, kind),
            self.layout.part_file(rank, kind),
        )
    }

    /// This rank's finished part with these settings, when a restarted or resumed rank has one.
    pub fn kept(&self, progress: Progress) -> Option<Part> {
        if !self.resuming {
            return None;
        }
        let world = &self.distribution.world;
        let part = finished_part(&self.layout, world.rank, world.size, &self.settings)?;
        progress.say(format!(
            "rank {}: its part {} is already complete: keeping it",
            world.rank,
            part.path.display()
        ));
        match keep_part(part, &self.layout, self.distribution.launch.as_deref()) {
            Ok(part) => Some(part),
            Err(e) => {
                tracing::warn!("{e}: making the part again");
                None
            }
        }
    }

    /// The record of how this rank ran a job without sampling: `images` of its part on `device`,
    /// `resumed` of them from its journal, over the time since [`RankPart::start`]; and the
    /// matching throughput record.
    pub fn image_job_record(&self, device: tch::Device, resumed: usize) -> (RankRecord, Value) {
        let images = self.indices().len();
        let wall = self.start.elapsed().as_secs_f64();
        let images_per_s = (images - resumed.min(images)) as f64 / wall.max(1e-9);
        let record = self.rank_record(
            crate::device::name(device),
            crate::device::describe(device),
            resumed,
            images_per_s,
            0.0,
            wall,
        );
        let timing = json!({
            "images": images,
            "wall_s": wall,
            "images_per_s": images_per_s,
        });
        (record, timing)
    }

    /// The rank record's fields that identify this rank and its machine, for a job that fills
    /// in the rest from its own timing.
    pub fn rank_record(
        &self,
        device: String,
        device_name: String,
        resumed: usize,
        images_per_s: f64,
        tokens_per_s: f64,
        wall_s: f64,
    ) -> RankRecord {
        let world = self.distribution.world;
        RankRecord {
            rank: world.rank,
            local_rank: world.local_rank,
            host: host_name(),
            device,
            device_name,
            samples: self.indices().len(),
            resumed_samples: resumed,
            images_per_s,
            tokens_per_s,
            wall_s,
            decode_batch_size: None,
        }
    }

    /// Writes the manifest that completes this rank's part.
    pub fn write_manifest(
        &self,
        report: PartReport,
        progress: Progress,
    ) -> Result<PathBuf, PartError> {
        let world = self.distribution.world;
        let mut checksums = BTreeMap::new();
        for (kind, name) in &report.files {
            let path = self.layout.parts().join(name);
            let sum = sha256_file(&path)
                .map_err(|e| FileError::new(&path, format!("cannot read back: {e}")))?;
            checksums.insert(kind.clone(), sum);
        }
        let manifest = Manifest {
            rank: world.rank,
            world_size: world.size,
            launcher: world.launcher.name().to_owned(),
            shard: self.shard.to_string(),
            samples: self.total,
            settings: self.settings.clone(),
            run_fields: report.run_fields,
            rank_record: report.rank_record,
            timing: report.timing,
            files: report.files,
            checksums,
            job: self.description.clone(),
            launch: self.distribution.launch.clone(),
        };
        let path = write_manifest(&self.layout, &manifest)?;
        progress.say(format!(
            "rank {} of {}: part written to {}",
            world.rank,
            world.size,
            path.display()
        ));
        Ok(path)
    }

    /// On rank 0, every rank's part once all are there, checked to be one job's (waiting at most
    /// the gather timeout). `None` on the other ranks, which say that rank 0 gathers their parts
    /// into the output.
    pub fn gather(&self, progress: Progress) -> Result<Option<Vec<Part>>, PartError> {
        let world = self.distribution.world;
        if world.rank != 0 {
            progress.say(format!(
                "rank {} of {}: done; rank 0 gathers the parts into {}",
                world.rank,
                world.size,
                self.layout.output().display()
            ));
            return Ok(None);
        }
        let parts = wait_for_parts(
            &self.layout,
            self.distribution.launch.as_deref(),
            world.size,
            self.distribution.gather_timeout,
            progress,
        )?;
        check_parts(&self.layout, &parts)?;
        Ok(Some(parts))
    }
}
