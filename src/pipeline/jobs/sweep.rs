//! A CFG sweep: the generated evaluation at several guidance scales with one loaded generator,
//! Inception and reference, one run folder per scale (`cfg-<scale>/`), then the report over them
//! (`report/`) — the FID-vs-CFG curve of LlamaGen's figures in one call.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::fid::{gather_offline, FidOutcome, GeneratedEvaluation, GeneratedRun};
use super::generate::GenerationPlan;
use super::settings::FidConfig;
use crate::layout::RunLayout;
use crate::pipeline::feature_cache::FeatureCache;
use crate::pipeline::generator::GeneratorConfig;
use crate::record::RunRecord;
use crate::report;

/// A sweep's runs, in the order of its scales.
pub struct SweepOutcome {
    /// `(scale, run folder, outcome)`.
    pub runs: Vec<(f64, PathBuf, FidOutcome)>,
    /// The report folder and the files written there (not by the ranks of a launched job that
    /// leave the gather to rank 0).
    pub report: Option<(PathBuf, report::Written)>,
}

/// Runs the generated evaluation at each of `scales` into `out_dir/cfg-<scale>/`, then the
/// report into `out_dir/report/`. `plan.save_samples`, when given, names the npz written in each
/// run folder (its file name is kept, its folder replaced). `finished` is told of each scale's
/// outcome as soon as it is written, so a caller can show it before the next scale starts.
pub fn sweep(
    fid: &FidConfig,
    generator: &GeneratorConfig,
    scales: &[f64],
    plan: &GenerationPlan,
    out_dir: &Path,
    finished: &mut dyn FnMut(f64, &Path, &FidOutcome),
) -> Result<SweepOutcome> {
    check_scales(scales)?;
    let gathers = plan.distribution.world.rank == 0;
    let mut evaluation = GeneratedEvaluation::open(fid, generator, cache_dir(out_dir), gathers)?;
    let mut runs = Vec::with_capacity(scales.len());
    for (i, &scale) in scales.iter().enumerate() {
        evaluation.generator_mut().set_cfg_scale(scale)?;
        let run_layout = RunLayout::folder(out_dir).scale_run(scale);
        let run_dir = run_layout.output().to_path_buf();
        let mut run_plan = plan.clone();
        run_plan.layout = run_layout;
        run_plan.save_samples = plan
            .save_samples
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|name| run_dir.join(name));
        fid.progress
            .say(format!("sweep: CFG scale {scale} -> {}", run_dir.display()));
        let run = GeneratedRun {
            out_dir: run_dir.clone(),
            plan: run_plan,
            sweep_scales: Some(scales.to_vec()),
        };
        let last = i + 1 == scales.len();
        let outcome = evaluation
            .run(&run, last)
            .with_context(|| format!("CFG scale {scale}"))?;
        if let Some(outcome) = outcome {
            finished(scale, &run_dir, &outcome);
            runs.push((scale, run_dir, outcome));
        }
    }
    let report = if gathers {
        Some(write_sweep_report(&runs, out_dir)?)
    } else {
        None
    };
    Ok(SweepOutcome { runs, report })
}

fn check_scales(scales: &[f64]) -> Result<()> {
    if scales.is_empty() {
        bail!("no CFG scales to sweep");
    }
    if let Some(bad) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
        bail!("CFG scale {bad} is not usable: scales must be finite and at least 0");
    }
    Ok(())
}

fn cache_dir(out_dir: &Path) -> PathBuf {
    FeatureCache::dir_for(&out_dir.join("cfg"))
}

fn write_sweep_report(
    runs: &[(f64, PathBuf, FidOutcome)],
    out_dir: &Path,
) -> Result<(PathBuf, report::Written)> {
    let dirs: Vec<PathBuf> = runs.iter().map(|(_, dir, _)| dir.clone()).collect();
    let loaded = report::load_runs(&dirs, None)?;
    let report_dir = out_dir.join("report");
    let written = report::write_report(&loaded, &report_dir)?;
    Ok((report_dir, written))
}

/// `merge OUT_DIR` for a launched sweep whose rank 0 did not finish: the gather of every scale
/// whose parts are in its run folder (scales already gathered are kept), then the report.
pub fn gather_sweep_offline(
    fid: &FidConfig,
    scales: &[f64],
    save_samples: Option<&Path>,
    out_dir: &Path,
) -> Result<SweepOutcome> {
    check_scales(scales)?;
    let mut runs = Vec::with_capacity(scales.len());
    for &scale in scales {
        let run_layout = RunLayout::folder(out_dir).scale_run(scale);
        let dir = run_layout.output().to_path_buf();
        let outcome = if run_layout.parts().is_dir() {
            let save = save_samples
                .and_then(|p| p.file_name())
                .map(|name| dir.join(name));
            gather_offline(fid, &dir, cache_dir(out_dir), save.as_deref())
                .with_context(|| format!("CFG scale {scale}"))?
        } else {
            let record = RunRecord::read(&dir).with_context(|| {
                format!("CFG scale {scale}: neither parts to gather nor a finished run")
            })?;
            FidOutcome {
                record,
                timing: None,
                split: None,
            }
        };
        runs.push((scale, dir, outcome));
    }
    let report = Some(write_sweep_report(&runs, out_dir)?);
    Ok(SweepOutcome { runs, report })
}
