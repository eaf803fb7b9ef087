//! What the commands print about finished work: tables, where the files went, throughput. Shared
//! by the commands and by `merge OUT_DIR`, which prints what the gathered command would have.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use llamagen_eval::feature_set::FeatureSet;
use llamagen_eval::metric::MetricKey;
use llamagen_eval::pipeline::jobs::fid::FidOutcome;
use llamagen_eval::pipeline::jobs::sweep::SweepOutcome;
use llamagen_eval::progress::Progress;
use llamagen_eval::record::RunRecord;

/// Prints a run's metric table, its notes (metrics left out and why, figures on a thin footing)
/// and where it was written.
pub fn print_record(record: &RunRecord, out_dir: &Path, progress: Progress) {
    print!("{}", record.table());
    let notes = record.run.get("notes").and_then(|n| n.as_array());
    for note in notes.into_iter().flatten().filter_map(|n| n.as_str()) {
        println!("note: {note}");
    }
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

/// Prints one finished scale of a sweep: which scale, then its run's table.
pub fn print_scale(scale: f64, dir: &Path, outcome: &FidOutcome, progress: Progress) {
    println!("CFG scale {scale} ({})", dir.display());
    print_outcome(outcome, dir, progress);
    println!();
}

/// Prints every scale of a gathered sweep, then its closing table and report.
pub fn print_sweep(outcome: &SweepOutcome, progress: Progress) {
    for (scale, dir, run) in &outcome.runs {
        print_scale(*scale, dir, run, progress);
    }
    print_sweep_summary(outcome, progress);
}

/// The headline metrics a sweep's closing table shows, those that some scale computed.
const SWEEP_COLUMNS: [MetricKey; 5] = [
    MetricKey::Fid,
    MetricKey::Sfid,
    MetricKey::InceptionScore,
    MetricKey::Precision,
    MetricKey::Recall,
];

/// Prints a sweep's closing table (one row per scale, in the sweep's order, with its headline
/// metrics and run folder) and where the report went.
pub fn print_sweep_summary(outcome: &SweepOutcome, progress: Progress) {
    print!("{}", sweep_table(&outcome.runs));
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

fn sweep_table(runs: &[(f64, PathBuf, FidOutcome)]) -> String {
    let columns: Vec<MetricKey> = SWEEP_COLUMNS
        .into_iter()
        .filter(|&key| {
            runs.iter()
                .any(|(.., run)| run.record.metrics.get(key).is_some())
        })
        .collect();
    let mut table = format!("{:>9}", "cfg_scale");
    for key in &columns {
        let _ = write!(table, " {:>15}", key.name());
    }
    table.push_str("  run folder\n");
    for (scale, dir, run) in runs {
        let _ = write!(table, "{scale:>9}");
        for &key in &columns {
            match run.record.metrics.get(key) {
                Some(value) => {
                    let _ = write!(table, " {value:>15.6}");
                }
                None => {
                    let _ = write!(table, " {:>15}", "-");
                }
            }
        }
        let _ = writeln!(table, "  {}", dir.display());
    }
    table
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
