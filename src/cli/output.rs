//! What the commands print about finished work: tables, where the files went, throughput. Shared
//! by the commands and by `merge OUT_DIR`, which prints what the gathered command would have.

use std::path::Path;

use llamagen_eval::feature_set::FeatureSet;
use llamagen_eval::pipeline::jobs::fid::FidOutcome;
use llamagen_eval::pipeline::jobs::sweep::SweepOutcome;
use llamagen_eval::progress::Progress;
use llamagen_eval::record::RunRecord;

/// Prints a run's metric table and where it was written.
pub fn print_record(record: &RunRecord, out_dir: &Path, progress: Progress) {
    print!("{}", record.metrics.table());
    progress.say(format!(
        "wrote {}/metrics.json and metrics.csv",
        out_dir.display()
    ));
}

/// Prints a finished run's table and, for generated samples, its throughput.
pub fn print_outcome(outcome: &FidOutcome, out_dir: &Path, progress: Progress) {
    print_record(&outcome.record, out_dir, progress);
    if progress == Progress::Shown {
        if let Some(timing) = &outcome.timing {
            eprint!("{}", timing.report());
        }
        if let Some(split) = &outcome.split {
            eprint!("{split}");
        }
    }
}

/// Prints each run's table of a sweep and where the report went.
pub fn print_sweep(outcome: &SweepOutcome, progress: Progress) {
    for (_, dir, run) in &outcome.runs {
        print_outcome(run, dir, progress);
    }
    let Some((report_dir, written)) = &outcome.report else {
        return;
    };
    progress.say(format!(
        "report of {} runs in {}:",
        outcome.runs.len(),
        report_dir.display()
    ));
    for file in &written.files {
        progress.say(format!("  {}", file.display()));
    }
}

/// Says where a feature file went.
pub fn print_features(features: &FeatureSet, out: &Path, progress: Progress) {
    progress.say(format!(
        "wrote features of {} images to {}",
        features.len(),
        out.display()
    ));
}

/// Says what a reference batch holds.
pub fn print_stats((total, keep): (usize, usize), out: &Path, progress: Progress) {
    progress.say(format!(
        "wrote {}: statistics of {total} images, {keep} kept as arr_0",
        out.display()
    ));
}
