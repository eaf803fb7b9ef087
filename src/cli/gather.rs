//! `merge OUT_DIR`: finishes the gather of a launched job offline (rank 0 died, or the ranks
//! wrote to local disks and their parts were copied together). The parts' manifests carry the
//! job's command line; it is parsed again here, so the gather computes exactly what rank 0
//! would have.

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use llamagen_eval::dist::manifest::present_parts;
use llamagen_eval::dist::split_summary;
use llamagen_eval::launcher::World;
use llamagen_eval::layout::{RunLayout, MANIFEST_PATTERN};
use llamagen_eval::pipeline::features::gather_features_offline;
use llamagen_eval::pipeline::fid::gather_offline;
use llamagen_eval::pipeline::generate::gather_samples_offline;
use llamagen_eval::pipeline::recon::gather_recon_offline;
use llamagen_eval::pipeline::stats::gather_stats_offline;
use llamagen_eval::pipeline::sweep::gather_sweep_offline;
use llamagen_eval::pipeline::FeatureCache;
use llamagen_eval::progress::Progress;

use super::output::{print_features, print_outcome, print_record, print_stats, print_sweep};
use super::{Cli, Command};

/// The layouts `target` may mean: a parts folder itself, a run folder or output file with its
/// parts, or a sweep folder whose scales' run folders hold parts.
fn layouts_with_parts(target: &Path) -> Vec<RunLayout> {
    let sweep = RunLayout::folder(target);
    let mut candidates: Vec<RunLayout> = RunLayout::of_parts(target).into_iter().collect();
    candidates.push(sweep.clone());
    candidates.push(RunLayout::file(target));
    candidates.extend(sweep.scale_runs());
    candidates
        .into_iter()
        .filter(|layout| present_parts(layout.parts()).is_ok())
        .collect()
}

/// Finishes the gather of the launched job whose output is `target`.
pub fn finish(target: &Path, progress: Progress) -> Result<ExitCode> {
    let layouts = layouts_with_parts(target);
    let Some(layout) = layouts.first() else {
        bail!(
            "{}: no parts of a launched job ({MANIFEST_PATTERN}) here, in its parts folder or in its sweep's run folders; to join shard files, give them with --out ALL.npz",
            target.display()
        );
    };
    let parts = present_parts(layout.parts())?;
    let job = parts[0].manifest.job.clone();
    let target = std::path::absolute(target)
        .with_context(|| format!("{}: cannot resolve", target.display()))?;
    let layout = RunLayout::of_parts(&std::path::absolute(layout.parts())?)
        .context("the parts folder's output")?;
    let first = layout.parts().to_path_buf();
    // The command line's relative paths are relative to where the job ran.
    if Path::new(&job.cwd).is_dir() {
        std::env::set_current_dir(&job.cwd)
            .with_context(|| format!("cannot enter the job's folder {}", job.cwd))?;
    }
    let cli = Cli::try_parse_from(job.argv.iter().map(OsStr::new)).with_context(|| {
        format!(
            "{}: the job's command line no longer parses",
            parts[0].path.display()
        )
    })?;
    progress.say(format!(
        "gathering the parts of `{}` ({} ranks) in {}",
        job.command,
        parts[0].manifest.world_size,
        first.display()
    ));
    match cli.command {
        Command::Fid(args) => {
            let run_dir = layout.output().to_path_buf();
            let config = args.fid_config(progress, &World::SINGLE)?;
            let outcome = gather_offline(
                &config,
                &run_dir,
                FeatureCache::dir_for(&run_dir),
                args.save_samples.as_deref(),
            )?;
            print_outcome(&outcome, &run_dir, progress);
        }
        Command::Sweep(args) => {
            let config = args.fid.fid_config(progress, &World::SINGLE)?;
            let outcome = gather_sweep_offline(
                &config,
                &args.cfg_scales,
                args.fid.save_samples.as_deref(),
                &target,
            )?;
            print_sweep(&outcome, progress);
        }
        Command::Sample(args) => {
            let out = layout.output().to_path_buf();
            let parts = gather_samples_offline(&out, args.grid.as_deref(), progress)?;
            progress.say(format!("wrote {}", out.display()));
            if progress == Progress::Shown {
                eprint!("{}", split_summary(&parts));
            }
        }
        Command::Features(args) => {
            let out = layout.output().to_path_buf();
            let features = gather_features_offline(&args.images, &out, progress)?;
            print_features(&features, &out, progress);
        }
        Command::Stats(args) => {
            let out = layout.output().to_path_buf();
            let config = args.config(progress, &World::SINGLE)?;
            let counts = gather_stats_offline(&out, &config)?;
            print_stats(counts, &out, progress);
        }
        Command::Recon(args) => {
            let mut config = args.config(progress, &World::SINGLE)?;
            config.out_dir = layout.output().to_path_buf();
            let record = gather_recon_offline(&config)?;
            print_record(&record, &config.out_dir, progress);
        }
        _ => bail!(
            "{}: parts of `{}`, which does not split over ranks",
            first.display(),
            job.command
        ),
    }
    Ok(ExitCode::SUCCESS)
}
