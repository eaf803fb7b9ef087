//! `merge OUT_DIR`: finishes the gather of a launched job offline (rank 0 died, or the ranks
//! wrote to local disks and their parts were copied together), from the job description the
//! parts' manifests keep ([`llamagen_eval::pipeline::jobs::offline`]), and prints what it wrote.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use llamagen_eval::dist::split_summary;
use llamagen_eval::pipeline::jobs::offline::{finish_gather, Gathered};
use llamagen_eval::progress::Progress;

use super::output::{print_features, print_outcome, print_record, print_stats, print_sweep};

/// Finishes the gather of the launched job whose output is `target`.
pub fn finish(target: &Path, progress: Progress) -> Result<ExitCode> {
    match finish_gather(target, progress)? {
        Gathered::Fid { run_dir, outcome } => print_outcome(&outcome, &run_dir, progress),
        Gathered::Sweep(outcome) => print_sweep(&outcome, progress),
        Gathered::Sample { out, parts } => {
            progress.say(format!("wrote {}", out.display()));
            if progress == Progress::Shown {
                eprint!("{}", split_summary(&parts));
            }
        }
        Gathered::Features { out, features } => print_features(&features, &out, progress),
        Gathered::Stats { out, counts } => print_stats(counts, &out, progress),
        Gathered::Recon { run_dir, record } => print_record(&record, &run_dir, progress),
    }
    Ok(ExitCode::SUCCESS)
}
