//! The one distribution layer: every job runs as a world of ranks — one process is a world of
//! size one on the same path — and a launched job (torchrun, Slurm, MPI) splits its samples over
//! the ranks with the partition of `--shard r/N` ([`crate::partition`]), so rank r's samples are
//! exactly the samples r, r+N, ... of a single-process run.
//!
//! In a world of several ranks every rank writes its part into the output's parts folder
//! ([`crate::layout::RunLayout::parts`]): its files, and last, atomically, its [`Manifest`] —
//! the part is complete once the manifest is there. Rank 0 waits for every rank's manifest
//! ([`gather`]), checks that the parts belong to one job (the same world size and settings, every
//! sample exactly once), and the job joins them, in sample-index order, into the outputs one
//! process would have written. `merge OUT_DIR` does the same gather offline, from the manifests
//! alone. A job's side of this is [`RankPart`]: start, keep a finished part, write files and the
//! manifest, gather.
//!
//! - [`manifest`]: the manifest (with its typed [`RankRecord`]), reading and writing parts, and
//!   [`GatherError`], what a gather refuses and what to do about it;
//! - [`gather`]: waiting for the parts, checking them, and the split's record;
//! - [`part`]: [`RankPart`], a rank's share of a job;
//! - [`job`]: [`ShardedJob`], the contract every such job implements, and the one driver that
//!   runs it.

pub mod gather;
pub mod job;
pub mod manifest;
pub mod part;

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::launcher::World;

pub use gather::{clean_up, parts_in, split_record, split_summary};
pub use job::{JobRun, ShardedJob};
pub use manifest::{GatherError, Manifest, Part, RankRecord};
pub use part::RankPart;

/// How this process takes part in a job.
#[derive(Debug, Clone)]
pub struct Distribution {
    /// Its rank among the job's processes.
    pub world: World,
    /// How long rank 0 waits for the other ranks' parts.
    pub gather_timeout: Duration,
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
            launch: None,
        }
    }
}

/// The settings every rank of a job must share: a run's fingerprint without what differs
/// between ranks (the partition, and a decode batch not asked for, which follows each rank's
/// batch choice on its own device), with the world size, which decides how Inception's batches
/// fall. A decode batch asked for stays: its shape changes the decoder's rounding.
pub fn job_settings(settings: &Map<String, Value>, world_size: usize) -> Map<String, Value> {
    let mut job = settings.clone();
    job.remove("shard");
    if job.get("decode_batch_size_given") != Some(&Value::Bool(true)) {
        job.remove("decode_batch_size");
    }
    job.insert("world_size".into(), json!(world_size));
    job
}

pub use crate::layout::host_name;
