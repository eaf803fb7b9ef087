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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::part::PartReport;
    use crate::launcher::{Launcher, World};
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// A job whose "samples" are their indices: its output is the list of indices it holds, in
    /// the order it joined them; parts write theirs into a JSON file.
    #[derive(Default)]
    struct Indices {
        outputs_written: usize,
        parts_written: usize,
    }

    impl ShardedJob for Indices {
        type Output = Vec<u64>;

        fn write_output(&mut self, rank: &RankPart<'_>) -> Result<Vec<u64>> {
            self.outputs_written += 1;
            Ok(rank.indices())
        }

        fn write_part(&mut self, rank: &RankPart<'_>) -> Result<()> {
            self.parts_written += 1;
            let (name, path) = rank.file("indices");
            std::fs::write(&path, serde_json::to_vec(&rank.indices())?)?;
            let (rank_record, timing) = rank.image_job_record(tch::Device::Cpu, 0);
            rank.write_manifest(
                PartReport {
                    files: BTreeMap::from([("indices".to_owned(), name)]),
                    rank_record,
                    timing,
                    run_fields: Map::new(),
                },
                Progress::Hidden,
            )?;
            Ok(())
        }

        fn join_parts(&mut self, parts: &[Part], _layout: &RunLayout) -> Result<Vec<u64>> {
            let mut all = Vec::new();
            for part in parts {
                let bytes = std::fs::read(part.require_file("indices")?)?;
                all.extend(serde_json::from_slice::<Vec<u64>>(&bytes)?);
            }
            all.sort_unstable();
            Ok(all)
        }
    }

    fn run_as(world: World, layout: &RunLayout, job: &mut Indices) -> Result<Option<Vec<u64>>> {
        let distribution = Distribution {
            world,
            gather_timeout: Duration::from_secs(5),
            launch: None,
        };
        run(
            job,
            JobRun {
                distribution: &distribution,
                layout: layout.clone(),
                total: 7,
                shard: None,
                resume: false,
                settings: Map::from_iter([("seed".to_owned(), Value::from(3))]),
                progress: Progress::Hidden,
                description: Value::Null,
            },
        )
    }

    #[test]
    fn a_world_of_one_writes_its_outputs_and_no_part() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let layout = RunLayout::folder(dir.path());
        let mut job = Indices::default();
        let output = run_as(World::SINGLE, &layout, &mut job).expect("the job runs");
        assert_eq!(output, Some((0..7).collect()));
        assert_eq!((job.outputs_written, job.parts_written), (1, 0));
        assert!(!layout.parts().exists());
    }

    #[test]
    fn ranks_write_parts_and_rank_0_joins_what_one_process_would_have() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let layout = RunLayout::folder(dir.path());
        let world = |rank| World {
            launcher: Launcher::Slurm,
            rank,
            size: 3,
            local_rank: rank,
            local_size: 3,
            restarts: 0,
        };
        // The other ranks finish first; they return nothing and leave their parts.
        for rank in [2, 1] {
            let mut job = Indices::default();
            assert_eq!(
                run_as(world(rank), &layout, &mut job).expect("rank runs"),
                None
            );
            assert_eq!((job.outputs_written, job.parts_written), (0, 1));
        }
        let mut job = Indices::default();
        let joined = run_as(world(0), &layout, &mut job).expect("rank 0 gathers");
        assert_eq!(joined, Some((0..7).collect()));
        assert_eq!((job.outputs_written, job.parts_written), (0, 1));
        assert!(!layout.parts().exists(), "the parts go once joined");
    }
}
