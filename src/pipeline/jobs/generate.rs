//! Generation jobs: `sample` (samples into an ADM/LlamaGen npz, sharded) and the generated side
//! of `fid --gpt` (samples into Inception features, optionally also into an npz), both one
//! journaled pass over the generator as an image source, so both resume after a kill.

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use ndarray::{Array1, Array3};
use serde_json::{json, Map, Value};

use crate::captions::CAPTION_INDICES;
use crate::data::npz_writer::ImageNpzWriter;
use crate::dist::part::PartReport;
use crate::dist::{Distribution, JobRun, Part, RankPart, ShardedJob};
use crate::feature_set::{Extractor, FeatureSet};
use crate::journal;
use crate::layout::RunLayout;
use crate::partition::Shard;
use crate::pipeline::batch::{self, BatchSize};
use crate::pipeline::generator::Generator;
use crate::pipeline::parts::{
    join_part_grids, join_part_samples, write_features_part, write_grid_part,
};
use crate::pipeline::pass::{self, JournalConfig, PassConfig, PassOutcome, Stage};
use crate::pipeline::stages::features::FeatureStage;
use crate::pipeline::stages::sinks::{write_grid, GridStage, NpzStage, GRID_IMAGES};
use crate::pipeline::timing::{Batches, Timing};
use crate::progress::Progress;

use super::settings::JobDescription;

/// How generated samples are produced and where they go.
#[derive(Debug, Clone)]
pub struct GenerationPlan {
    /// Total samples of the run (all shards).
    pub samples: usize,
    /// This process's part.
    pub shard: Shard,
    /// Samples generated together (results do not depend on it): a number, or `auto`.
    pub batch_size: BatchSize,
    /// Sample and decode the next batches on two more threads while the current one is
    /// evaluated (results do not depend on it).
    pub overlap: bool,
    /// Also (or only) write the images as an ADM/LlamaGen npz.
    pub save_samples: Option<PathBuf>,
    /// Where the run's output, journal and (in a launched job) parts go.
    pub layout: RunLayout,
    /// Continue an interrupted run.
    pub resume: bool,
    /// Testing aid: stop with an error after this many new samples.
    pub stop_after: Option<usize>,
    /// Bars or none.
    pub progress: Progress,
    /// This process's rank in a launched job (one process: [`Distribution::single`]).
    pub distribution: Distribution,
}

impl GenerationPlan {
    /// This process's samples: `--shard` when given, else rank r of N's (r, r+N, ...).
    pub fn partition(&self) -> Shard {
        let world = &self.distribution.world;
        if self.shard == Shard::ALL && world.is_distributed() {
            Shard {
                index: world.rank,
                count: world.size,
            }
        } else {
            self.shard
        }
    }

    /// Whether to continue a journal: asked for, or the launcher restarted the job.
    pub fn resuming(&self) -> bool {
        self.resume || self.distribution.world.restarts > 0
    }

    /// This process's journal folder (one per rank in a launched job).
    pub fn journal(&self) -> PathBuf {
        let world = &self.distribution.world;
        self.layout.rank_journal(world.rank, world.size)
    }

    /// Refuses a plan that leaves this process, or any rank of its job, without samples (checked
    /// on every rank alike, so no rank waits for a part that will never come).
    pub fn check(&self) -> Result<()> {
        crate::sampling::check_sample_count(self.samples)?;
        let world = &self.distribution.world;
        if world.is_distributed() && self.shard == Shard::ALL && self.samples < world.size {
            bail!(
                "{} samples cannot be split over the {} ranks of this job ({world}): ask for at least {} samples, or start fewer processes",
                self.samples,
                world.size,
                world.size
            );
        }
        let shard = self.partition();
        if shard.indices(self.samples).is_empty() {
            bail!(
                "shard {}/{} of {} samples is empty: ask for at least {} samples, or fewer shards",
                shard.index,
                shard.count,
                self.samples,
                shard.index + 1
            );
        }
        if let Some(out) = &self.save_samples {
            crate::io::check_output_file(out)?;
        }
        Ok(())
    }

    /// Whether this process is one rank of several.
    pub fn is_distributed(&self) -> bool {
        self.distribution.world.is_distributed()
    }
}

/// What a generation pass produced.
pub struct Generated {
    /// Inception features of the samples (when an extractor was given).
    pub features: Option<FeatureSet>,
    /// The first samples, for the grid.
    pub grid: Vec<Array3<u8>>,
    /// Their captions, for a t2i run with caption texts.
    pub grid_captions: Option<Vec<String>>,
    /// Where the time went (this process's new work).
    pub timing: Timing,
    /// Samples restored from an interrupted run's journal instead of generated.
    pub resumed: usize,
    /// The pass, whose journal is removed by [`PassOutcome::finish`] once every output is written.
    pub pass: PassOutcome,
    /// The shard's sample indices.
    pub indices: Vec<u64>,
}

/// Inception features of generated samples: the network, and how many images go through it at
/// once (the pass commits that many samples at a time, so the features' batch partition does not
/// depend on the generation batch).
#[derive(Clone, Copy)]
pub struct FeatureRequest<'e> {
    /// The network.
    pub extractor: &'e Extractor,
    /// Images per forward pass.
    pub batch_size: usize,
}

/// Fixes the batch sizes of a run of `plan` on `generator` and says what `auto` chose.
/// `inception_batch`: the images per Inception pass that will share the device; `recorded`: the
/// decode batch of the run being resumed, which a resume keeps unless one is configured.
pub fn plan_batches(
    generator: &Generator,
    plan: &GenerationPlan,
    inception_batch: Option<usize>,
    recorded: Option<usize>,
) -> Batches {
    let device = generator.device();
    let free = match plan.batch_size {
        BatchSize::Auto => crate::device::free_memory(device),
        BatchSize::Fixed(_) => None,
    };
    let samples = plan.partition().indices(plan.samples).len();
    let batches = generator.plan_batches(samples, plan.batch_size, free, inception_batch, recorded);
    if batches.auto {
        let memory = match free {
            Some(bytes) => format!(
                "{:.1} GiB free on {}, about {:.0} MiB per sample, at most {}",
                bytes as f64 / f64::from(1 << 30),
                crate::device::name(device),
                generator
                    .bytes_per_sample(generator.config().decode_batch_size.or(recorded).is_none())
                    as f64
                    / f64::from(1 << 20),
                batch::cap_for(device)
            ),
            None => format!(
                "free memory of {} unknown: {} (capped at {})",
                crate::device::name(device),
                batch::UNKNOWN_MEMORY_BATCH,
                batch::cap_for(device)
            ),
        };
        let choice = format!(
            "batch size auto: {} samples ({memory}); decode batch {}",
            batches.generation, batches.decode
        );
        tracing::info!("{choice}");
        plan.progress.say(choice);
    }
    batches
}

/// The decode batch recorded in a fingerprint.
pub fn recorded_decode_batch(settings: &Map<String, Value>) -> Option<usize> {
    settings
        .get("decode_batch_size")?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
}

/// Generates this shard's samples through `features` (if given) and into `plan.save_samples`
/// (if given), journaled in `plan.journal()`, `batches` at a time (from [`plan_batches`]);
/// `settings` are the fingerprint of everything else that decides the result (the generator's
/// own settings are added here).
pub fn generate(
    generator: &mut Generator,
    features: Option<FeatureRequest<'_>>,
    plan: &GenerationPlan,
    batches: Batches,
    mut settings: Map<String, Value>,
) -> Result<Generated> {
    let shard = plan.partition();
    let indices = shard.indices(plan.samples);
    if indices.is_empty() {
        bail!(
            "shard {}/{} of {} samples is empty",
            shard.index,
            shard.count,
            plan.samples
        );
    }
    add_generation_settings(&mut settings, generator, plan, batches);
    let size = generator.eval_size();
    let mut writer = plan
        .save_samples
        .as_deref()
        .map(|p| ImageNpzWriter::create(p, indices.len(), size, size).map(NpzStage::new))
        .transpose()?;
    let mut feature_stage = features.map(|f| FeatureStage::new(f.extractor, indices.len()));
    let mut grid = GridStage::new(GRID_IMAGES);
    let inception_batch = features.map(|f| f.batch_size);
    let config = PassConfig {
        label: if features.is_some() {
            "generate"
        } else {
            "sample"
        },
        // With Inception, a pass batch is an Inception batch: the features' partition is fixed
        // by the Inception batch size alone. Without it, commits follow the generation batches.
        batch_size: match inception_batch {
            Some(n) => n,
            None => batches.generation,
        },
        progress: plan.progress,
        journal: Some(JournalConfig {
            dir: plan.journal(),
            settings,
            resume: plan.resuming(),
        }),
        stop_after_new: plan.stop_after,
    };
    let conditions: Array1<i64> = indices.iter().map(|&i| generator.condition(i)).collect();
    let start = Instant::now();
    let (outcome, mut timing) = {
        let mut source = generator.source(indices.clone(), plan.overlap, batches, inception_batch);
        let mut stages: Vec<&mut dyn Stage> = vec![&mut grid];
        if let Some(f) = feature_stage.as_mut() {
            stages.push(f);
        }
        if let Some(w) = writer.as_mut() {
            stages.push(w);
        }
        let outcome = pass::run(&config, &mut source, &mut stages)?;
        (outcome, source.timing().clone())
    };
    timing.wall = start.elapsed();
    if let Some(f) = &feature_stage {
        timing.inception = f.elapsed;
    }
    if let Some(mut writer) = writer.and_then(NpzStage::into_writer) {
        if let Some(captions) = generator.captions() {
            // The texts, when known, as a table of the distinct ones and each sample's row in
            // it; otherwise which caption of the set each sample shows.
            match captions.table_of(&indices) {
                Some(table) => table.write(&mut writer)?,
                None => writer.add_array(CAPTION_INDICES, &conditions)?,
            }
        } else {
            writer.add_array("arr_1", &conditions)?;
        }
        if shard.count > 1 {
            let idx: Array1<i64> = indices.iter().map(|&i| i as i64).collect();
            writer.add_array("indices", &idx)?;
        }
        writer.finish()?;
    }
    let grid = grid.into_images();
    let grid_captions = generator.caption_texts(&indices[..grid.len()]);
    Ok(Generated {
        features: feature_stage.map(FeatureStage::into_features),
        grid,
        grid_captions,
        timing,
        resumed: outcome.resumed,
        pass: outcome,
        indices,
    })
}

/// Adds the generator's settings (in a run with `batches`) and the sample range to a fingerprint.
pub fn add_generation_settings(
    settings: &mut Map<String, Value>,
    generator: &Generator,
    plan: &GenerationPlan,
    batches: Batches,
) {
    settings.extend(generator.fingerprint(batches));
    settings.insert("samples".into(), json!(plan.samples));
    let shard = plan.partition();
    settings.insert(
        "shard".into(),
        json!(format!("{}/{}", shard.index, shard.count)),
    );
}

/// What `sample` did in this process.
pub struct Sampled {
    /// This process's own generation (none when a restarted rank kept the part it had finished).
    pub generated: Option<Generated>,
    /// The parts rank 0 gathered into the output (none for one process and the other ranks).
    pub gathered: Vec<Part>,
}

/// `sample`: this process's samples into the npz `plan.save_samples` (and a grid PNG when asked).
/// In a launched job every rank writes its part beside the output (`<out>.parts/`) and rank 0
/// gathers the parts into the output.
pub fn sample_to_npz(
    generator: &mut Generator,
    plan: &GenerationPlan,
    grid: Option<&Path>,
) -> Result<Sampled> {
    anyhow::ensure!(plan.save_samples.is_some(), "sample needs an output npz");
    let recorded = if plan.resuming() {
        journal::recorded_settings(&plan.journal()).and_then(|s| recorded_decode_batch(&s))
    } else {
        None
    };
    let batches = plan_batches(generator, plan, None, recorded);
    let mut settings = Map::new();
    add_generation_settings(&mut settings, generator, plan, batches);
    let mut job = SampleJob {
        generation: Some((generator, plan, batches)),
        grid,
        progress: plan.progress,
        generated: None,
    };
    let run = JobRun {
        distribution: &plan.distribution,
        layout: plan.layout.clone(),
        total: plan.samples,
        shard: Some(plan.partition()),
        resume: plan.resume,
        settings,
        progress: plan.progress,
        description: JobDescription::Sample {
            grid: grid.map(crate::io::absolute),
        }
        .to_value(),
    };
    let gathered = crate::dist::job::run(&mut job, run)?.unwrap_or_default();
    Ok(Sampled {
        generated: job.generated,
        gathered,
    })
}

/// `merge OUT` for a launched `sample` whose rank 0 did not finish: every rank's part joined
/// into `out` (and the `grid` PNG); returns the parts, for the printout.
pub fn gather_samples_offline(
    out: &Path,
    grid: Option<&Path>,
    progress: Progress,
) -> Result<Vec<Part>> {
    let mut job = SampleJob {
        generation: None,
        grid,
        progress,
        generated: None,
    };
    let (parts, _) = crate::dist::job::gather_offline(&mut job, &RunLayout::file(out), progress)?;
    Ok(parts)
}

/// The `sample` job.
struct SampleJob<'a> {
    /// The generator, the plan and its batches (none for a gather offline, which generates
    /// nothing).
    generation: Option<(&'a mut Generator, &'a GenerationPlan, Batches)>,
    grid: Option<&'a Path>,
    progress: Progress,
    /// This process's own generation, once done.
    generated: Option<Generated>,
}

impl ShardedJob for SampleJob<'_> {
    /// The parts gathered (none for a process on its own).
    type Output = Vec<Part>;

    fn write_output(&mut self, _rank: &RankPart<'_>) -> Result<Vec<Part>> {
        let (generator, plan, batches) = self.generation.as_mut().context("the generator")?;
        let mut generated = generate(generator, None, plan, *batches, Map::new())?;
        if let Some(path) = self.grid {
            write_grid(path, &generated.grid, generated.grid_captions.as_deref())?;
        }
        let pass = std::mem::replace(&mut generated.pass, PassOutcome::done());
        pass.finish()?;
        self.generated = Some(generated);
        Ok(Vec::new())
    }

    fn write_part(&mut self, rank: &RankPart<'_>) -> Result<()> {
        let (generator, plan, batches) = self.generation.as_mut().context("the generator")?;
        let mut rank_plan = (*plan).clone();
        rank_plan.save_samples = Some(rank.file("samples").1);
        let mut generated = generate(generator, None, &rank_plan, *batches, Map::new())?;
        write_part(rank, &mut generated, generator, true, self.progress)?;
        let pass = std::mem::replace(&mut generated.pass, PassOutcome::done());
        pass.finish()?;
        self.generated = Some(generated);
        Ok(())
    }

    /// The parts' samples joined into the output (and the first ones into the grid PNG).
    fn join_parts(&mut self, parts: &[Part], layout: &RunLayout) -> Result<Vec<Part>> {
        join_part_samples(parts, layout.output(), self.progress)?;
        if let Some(path) = self.grid {
            let grid = join_part_grids(parts)?;
            write_grid(path, &grid.images, grid.captions.as_deref())?;
        }
        Ok(parts.to_vec())
    }
}

/// Writes this rank's part of a generated run: its features (with their sample indices) when it
/// has them, its grid images, and last the manifest naming them and, with `samples`, its samples
/// file (already written by the pass).
pub fn write_part(
    part: &RankPart<'_>,
    generated: &mut Generated,
    generator: &Generator,
    samples: bool,
    progress: Progress,
) -> Result<PathBuf> {
    let mut files = BTreeMap::new();
    if let Some(features) = generated.features.as_mut() {
        let (name, path) = part.file("features");
        write_features_part(features, &generated.indices, &path)?;
        files.insert("features".to_owned(), name);
    }
    if samples {
        files.insert("samples".to_owned(), part.file("samples").0);
    }
    if !generated.grid.is_empty() {
        let (name, path) = part.file("grid");
        write_grid_part(
            &path,
            &generated.grid,
            &generated.indices,
            generated.grid_captions.as_deref(),
        )?;
        files.insert("grid".to_owned(), name);
    }
    let timing = &generated.timing;
    let mut rank_record = part.rank_record(
        timing.device.clone(),
        timing.device_name.clone(),
        generated.resumed,
        timing.images_per_s(),
        timing.tokens_per_s(),
        timing.wall.as_secs_f64(),
    );
    rank_record.decode_batch_size = timing.batches.map(|b| b.decode);
    let run_fields = generator
        .config()
        .record()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Ok(part.write_manifest(
        PartReport {
            files,
            rank_record,
            timing: timing.record(),
            run_fields,
        },
        progress,
    )?)
}
