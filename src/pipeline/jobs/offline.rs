//! `merge OUT_DIR`: finishing the gather of a launched job that rank 0 did not finish, from the
//! [`JobDescription`] its parts' manifests keep.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::fid::{gather_offline, FidOutcome};
use super::generate::gather_samples_offline;
use super::recon::gather_recon_offline;
use super::settings::JobDescription;
use super::stats::gather_stats_offline;
use super::sweep::{gather_sweep_offline, SweepOutcome};
use crate::device::DeviceChoice;
use crate::dist::manifest::present_parts;
use crate::dist::Part;
use crate::feature_set::FeatureSet;
use crate::layout::{RunLayout, MANIFEST_PATTERN};
use crate::pipeline::feature_cache::FeatureCache;
use crate::pipeline::inception::InceptionConfig;
use crate::progress::Progress;
use crate::record::RunRecord;

/// What `merge OUT_DIR` finished, for the printout.
pub enum Gathered {
    /// A `fid --gpt` run folder.
    Fid {
        /// The run folder.
        run_dir: PathBuf,
        /// Its record.
        outcome: FidOutcome,
    },
    /// A sweep folder.
    Sweep(SweepOutcome),
    /// A `sample` output.
    Sample {
        /// The joined npz.
        out: PathBuf,
        /// The parts joined.
        parts: Vec<Part>,
    },
    /// A `features` output.
    Features {
        /// The joined file.
        out: PathBuf,
        /// Its features.
        features: FeatureSet,
    },
    /// A `stats` reference batch.
    Stats {
        /// The reference batch.
        out: PathBuf,
        /// (images, kept).
        counts: (usize, usize),
    },
    /// A `recon` run folder.
    Recon {
        /// The run folder.
        run_dir: PathBuf,
        /// Its record.
        record: RunRecord,
    },
}

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

/// The feature networks of a gather offline run where `merge` runs, not on the device rank 0 had
/// (which this machine may lack): on the CPU when the job asked for it, else as `--device auto`.
fn runs_here(inception: InceptionConfig) -> InceptionConfig {
    let device = match inception.device {
        DeviceChoice::Cpu => DeviceChoice::Cpu,
        DeviceChoice::Auto | DeviceChoice::Cuda(_) => DeviceChoice::Auto,
    };
    InceptionConfig {
        device,
        ..inception
    }
}

/// `merge OUT_DIR`: finishes the gather of the launched job whose output (or parts folder, or
/// sweep folder) is `target`, from the description its parts' manifests keep.
pub fn finish_gather(target: &Path, progress: Progress) -> Result<Gathered> {
    let target = crate::io::absolute(target);
    let Some(layout) = layouts_with_parts(&target).into_iter().next() else {
        bail!(
            "{}: no parts of a launched job ({MANIFEST_PATTERN}) here, in its parts folder or in its sweep's run folders; to join shard files, give them with --out ALL.npz",
            target.display()
        );
    };
    let parts = present_parts(layout.parts())?;
    let first = &parts[0];
    let description: JobDescription = serde_json::from_value(first.manifest.job.clone())
        .with_context(|| {
            format!(
                "{}: the part's job description is not one this version reads; finish the gather with the version that ran the job",
                first.path.display()
            )
        })?;
    progress.say(format!(
        "gathering the parts of a launched job ({} ranks) in {}",
        first.manifest.world_size,
        layout.parts().display()
    ));
    let output = layout.output().to_path_buf();
    Ok(match description {
        JobDescription::Fid {
            mut config,
            save_samples,
            sweep_scales,
        } => {
            config.progress = progress;
            config.inception = runs_here(config.inception);
            match sweep_scales {
                // The sweep folder itself: every scale, then the report.
                Some(scales) if output.parent() == Some(target.as_path()) => Gathered::Sweep(
                    gather_sweep_offline(&config, &scales, save_samples.as_deref(), &target)?,
                ),
                _ => Gathered::Fid {
                    outcome: gather_offline(
                        &config,
                        &output,
                        FeatureCache::dir_for(&output),
                        save_samples.as_deref(),
                    )?,
                    run_dir: output,
                },
            }
        }
        JobDescription::Sample { grid } => Gathered::Sample {
            parts: gather_samples_offline(&output, grid.as_deref(), progress)?,
            out: output,
        },
        JobDescription::Features { images } => Gathered::Features {
            features: super::features::gather_features_offline(&images, &output, progress)?,
            out: output,
        },
        JobDescription::Stats { mut config } => {
            config.progress = progress;
            config.inception = runs_here(config.inception);
            Gathered::Stats {
                counts: gather_stats_offline(&output, &config)?,
                out: output,
            }
        }
        JobDescription::Recon { mut config } => {
            config.progress = progress;
            config.inception = runs_here(config.inception);
            config.out_dir = output.clone();
            Gathered::Recon {
                record: gather_recon_offline(&config)?,
                run_dir: output,
            }
        }
    })
}
