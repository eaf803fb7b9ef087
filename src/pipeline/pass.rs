//! The one batch loop: images from an [`ImageSource`] (an npz, a folder, a generator) go batch by
//! batch through a list of [`Stage`]s (Inception features, statistics, an npz writer, the sample
//! grid, reconstruction scores), with every batch committed to a [`Journal`] so that a killed run
//! resumes exactly where it stopped.
//!
//! On resume, the batches completed before the interruption are not computed again: each stage
//! restores its part from its journal records (features, scores), and the images themselves are
//! reproduced only for stages that need them (an npz writer) — by reading the file again, or for
//! a generator by decoding its journaled tokens instead of sampling them.

use std::ops::Range;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ndarray::Array4;
use serde_json::{Map, Value};

use crate::data::ImageSource;
use crate::interrupt::Interrupted;
use crate::journal::{Journal, StreamSpec};
use crate::progress::Progress;

/// What a pass does with each batch of images.
pub trait Stage {
    /// The per-image journal streams this stage fills (names unique within a pass).
    fn streams(&self) -> Vec<StreamSpec> {
        Vec::new()
    }

    /// Handles a new batch (images at `positions` of the source); returns one byte vector per
    /// stream of [`Stage::streams`], in that order.
    fn process(&mut self, positions: Range<usize>, images: &Array4<u8>) -> Result<Vec<Vec<u8>>>;

    /// Whether restoring the completed batch at `positions` needs its images.
    fn wants_images(&self, _positions: Range<usize>) -> bool {
        false
    }

    /// Takes back a batch completed before an interruption, from its journal `records` (one per
    /// stream) and, when [`Stage::wants_images`] said so, its images.
    fn restore(
        &mut self,
        positions: Range<usize>,
        images: Option<&Array4<u8>>,
        records: &[Vec<u8>],
    ) -> Result<()>;
}

/// Where and how a pass keeps its journal.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The journal folder.
    pub dir: PathBuf,
    /// Everything that decides the result; a resume with other settings is refused.
    pub settings: Map<String, Value>,
    /// Continue an interrupted run's journal (else a new journal replaces any old one).
    pub resume: bool,
}

/// How a pass runs.
#[derive(Debug, Clone)]
pub struct PassConfig {
    /// Name of the progress bar.
    pub label: &'static str,
    /// Images per batch.
    pub batch_size: usize,
    /// Progress bars or none.
    pub progress: Progress,
    /// The journal, for work worth resuming.
    pub journal: Option<JournalConfig>,
    /// Testing aid: stop with an error once this many new images are done (a simulated crash
    /// that leaves the journal behind).
    pub stop_after_new: Option<usize>,
}

/// A finished pass: its journal (to be finished once the outputs are written) and how many
/// images came from an interrupted run.
pub struct PassOutcome {
    /// Remove it with [`Journal::finish`] after the outputs are in place.
    pub journal: Option<Journal>,
    /// Images restored from the journal instead of computed.
    pub resumed: usize,
}

impl PassOutcome {
    /// An outcome with nothing left to finish.
    pub fn done() -> Self {
        PassOutcome {
            journal: None,
            resumed: 0,
        }
    }

    /// Removes the journal: call once the run's outputs are written.
    pub fn finish(self) -> Result<()> {
        if let Some(journal) = self.journal {
            journal.finish()?;
        }
        Ok(())
    }
}

/// Runs every image of `source` through `stages`.
pub fn run(
    config: &PassConfig,
    source: &mut dyn ImageSource,
    stages: &mut [&mut dyn Stage],
) -> Result<PassOutcome> {
    let total = source.len();
    let source_streams = source.journal_streams();
    let stage_streams: Vec<Vec<StreamSpec>> = stages.iter().map(|s| s.streams()).collect();
    let all_streams: Vec<StreamSpec> = source_streams
        .iter()
        .chain(stage_streams.iter().flatten())
        .cloned()
        .collect();
    let mut journal = config
        .journal
        .as_ref()
        .map(|j| Journal::open(&j.dir, &j.settings, &all_streams, total, j.resume))
        .transpose()?;
    let done = journal.as_ref().map_or(0, Journal::completed).min(total);
    match run_batches(config, source, stages, &mut journal, done) {
        Ok(()) => Ok(PassOutcome {
            journal,
            resumed: done,
        }),
        Err(e) => {
            // A journal that holds nothing (the first batch failed: a bad image, a full disk)
            // has nothing to resume: it goes, so a failed run leaves no files behind.
            if let (Some(j), Some(config)) = (&journal, &config.journal) {
                if j.completed() == 0 {
                    drop(journal);
                    let _ = std::fs::remove_dir_all(&config.dir);
                }
            }
            Err(e)
        }
    }
}

/// The batch loop of [`run`]: replays the `done` images a journal holds, then processes the rest.
fn run_batches(
    config: &PassConfig,
    source: &mut dyn ImageSource,
    stages: &mut [&mut dyn Stage],
    journal: &mut Option<Journal>,
    done: usize,
) -> Result<()> {
    let total = source.len();
    let batch = config.batch_size.max(1);
    let source_streams = source.journal_streams();
    let stage_streams: Vec<Vec<StreamSpec>> = stages.iter().map(|s| s.streams()).collect();
    if done > 0 {
        tracing::info!("{}: resuming after {done} of {total} images", config.label);
        config
            .progress
            .say(format!("resuming after {done} of {total} images"));
    }
    let bar = config.progress.bar(total, config.label, "img");

    let mut position = 0;
    while position < done {
        let n = batch.min(done - position);
        let range = position..position + n;
        let journal = journal.as_mut().context("journal of a resumed pass")?;
        let read = |journal: &mut Journal, specs: &[StreamSpec]| -> Result<Vec<Vec<u8>>> {
            specs
                .iter()
                .map(|s| Ok(journal.read(&s.name, range.clone())?))
                .collect()
        };
        let source_records = read(journal, &source_streams)?;
        let images = if stages.iter().any(|s| s.wants_images(range.clone())) {
            Some(source.replay(n, &source_records)?)
        } else {
            source.skip(n, &source_records)?;
            None
        };
        for (stage, specs) in stages.iter_mut().zip(&stage_streams) {
            let records = read(journal, specs)?;
            stage.restore(range.clone(), images.as_ref(), &records)?;
        }
        position += n;
        bar.inc(n as u64);
    }

    let _signals = crate::interrupt::catch();
    while position < total {
        if let Some(signal) = crate::interrupt::requested() {
            bar.abandon();
            return Err(Interrupted {
                signal,
                done: position,
                total,
                kept: if journal.is_some() {
                    Interrupted::JOURNALED
                } else {
                    ""
                },
            }
            .into());
        }
        if let Some(limit) = config.stop_after_new {
            if position - done >= limit {
                bar.abandon();
                bail!(
                    "stopped after {} new images ({position} of {total} done) as asked; resume the run to continue",
                    position - done
                );
            }
        }
        let images = source
            .next_batch(batch.min(total - position))?
            .with_context(|| {
                format!(
                    "{} ended after {position} of {total} images",
                    source.describe()
                )
            })?;
        let n = images.dim().0;
        anyhow::ensure!(
            n > 0 && position + n <= total,
            "{}: more images than it announced",
            source.describe()
        );
        let range = position..position + n;
        let mut records = source.batch_records();
        for stage in stages.iter_mut() {
            records.extend(stage.process(range.clone(), &images)?);
        }
        if let Some(journal) = journal.as_mut() {
            let indices: Vec<u64> = range.clone().map(|p| source.index_of(p)).collect();
            journal.commit(&indices, &records)?;
            crash_point("committed");
        }
        position += n;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Testing aid for the resume tests: `LLAMAGEN_EVAL_CRASH_AT=<point>:<n>` kills the process with
/// SIGKILL the n-th time it reaches `point` (`sampled`, `decoded`, `features`, `committed`), the
/// way an out-of-memory kill or a lost node ends a run: no destructors, no flushing.
/// `<point>:<n>:INT` (or `:TERM`) sends SIGINT (SIGTERM) instead, as Ctrl-C (`kill`) would.
pub fn crash_point(point: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, usize, libc::c_int)>> = OnceLock::new();
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("LLAMAGEN_EVAL_CRASH_AT").ok()?;
        let mut fields = spec.split(':');
        let name = fields.next()?.to_string();
        let n = fields.next()?.parse().ok()?;
        let signal = match fields.next() {
            None | Some("KILL") => libc::SIGKILL,
            Some("INT") => libc::SIGINT,
            Some("TERM") => libc::SIGTERM,
            Some(_) => return None,
        };
        Some((name, n, signal))
    });
    if let Some((name, n, signal)) = target {
        if name == point && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            tracing::warn!(
                "LLAMAGEN_EVAL_CRASH_AT: signal {signal} to the process at {point} #{n}"
            );
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), *signal);
            }
        }
    }
}
