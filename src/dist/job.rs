//! The job contract every job that splits over ranks implements (`features`, `stats`, `recon`,
//! `sample`, `fid --gpt` and with it `sweep`), and the one driver that runs it: one process is a
//! world of size one on the same path as a launched job of many.
//!
//! A job says what decides its result (its settings, checked on every rank and on resume) and
//! runs its shard of the samples into either its outputs (a world of one: nothing to join, so no
//! part is written and read back) or its part; rank 0 — or `merge OUT_DIR`, offline — joins the
//! parts into the outputs one process would have written.

use anyhow::Result;
use serde_json::{Map, Value};

use super::gather::{clean_up, parts_in};
use super::part::RankPart;
use super::{Distribution, Part};
use crate::layout::RunLayout;
use crate::partition::Shard;
use crate::progress::Progress;

/// A job split over the ranks of a world.
pub trait ShardedJob {
    /// What the job returns once its outputs are written.
    type Output;

    /// A world of one: runs the process's shard ([`RankPart::shard`], journaled in
    /// [`RankPart::journal`]) straight into the outputs.
    fn write_output(&mut self, rank: &RankPart<'_>) -> Result<Self::Output>;

    /// A world of several: runs this rank's shard into its part files and writes, last, its
    /// manifest ([`RankPart::write_manifest`]).
    fn write_part(&mut self, rank: &RankPart<'_>) -> Result<()>;

    /// Rank 0 (or `merge OUT_DIR`): writes the outputs from every rank's checked part.
    fn join_parts(&mut self, parts: &[Part], layout: &RunLayout) -> Result<Self::Output>;
}

/// What a run of a job needs besides the job: where its outputs go, its size and partition,
/// whether it resumes, and everything that decides its result.
pub struct JobRun<'d> {
    /// This process's place in the world.
    pub distribution: &'d Distribution,
    /// Where the outputs, the journal and the parts go.
    pub layout: RunLayout,
    /// Samples (or images) of the whole job.
    pub total: usize,
    /// Samples by hand (`sample --shard K/N`) instead of the rank's own.
    pub shard: Option<Shard>,
    /// Continue an interrupted run.
    pub resume: bool,
    /// Everything that decides the result.
    pub settings: Map<String, Value>,
    /// The job as the parts' manifests keep it for `merge OUT_DIR`.
    pub description: Value,
    /// Bars or none.
    pub progress: Progress,
}

/// Runs `job` as this process's rank: its outputs (a world of one, or rank 0 once every part is
/// there), or `None` on the other ranks of a launched job.
pub fn run<J: ShardedJob>(job: &mut J, run: JobRun<'_>) -> Result<Option<J::Output>> {
    let mut rank = RankPart::start(
        run.distribution,
        run.layout,
        run.total,
        run.resume,
        &run.settings,
        run.description,
    )?;
    if let Some(shard) = run.shard {
        rank = rank.with_shard(shard);
    }
    if rank.is_alone() {
        return job.write_output(&rank).map(Some);
    }
    if rank.kept(run.progress).is_none() {
        job.write_part(&rank)?;
    }
    let Some(parts) = rank.gather(run.progress)? else {
        return Ok(None);
    };
    let output = job.join_parts(&parts, &rank.layout)?;
    clean_up(&rank.layout)?;
    Ok(Some(output))
}

/// `merge OUT_DIR`: the gather of a launched job whose rank 0 did not finish, from the parts in
/// `layout` alone.
pub fn gather_offline<J: ShardedJob>(
    job: &mut J,
    layout: &RunLayout,
    progress: Progress,
) -> Result<(J::Output, Vec<Part>)> {
    let parts = parts_in(layout, progress)?;
    let output = job.join_parts(&parts, layout)?;
    clean_up(layout)?;
    Ok((output, parts))
}
