//! Generation jobs: `sample` (samples into an ADM/LlamaGen npz, sharded) and the generated side
//! of `fid --gpt` (samples into Inception features, optionally also into an npz), both one
//! journaled pass over the generator as an image source, so both resume after a kill.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use ndarray::{Array1, Array3};
use serde_json::{json, Map, Value};

use super::batch::{self, BatchSize};
use super::features::{sibling, FeatureStage};
use super::gather::{
    check_parts, finished_part, join_part_grids, join_part_samples, keep_part, part_file_name,
    rank_record, remove_journals_folder, remove_part, remove_parts, wait_for_parts_of,
    write_grid_part, write_manifest, Distribution, Manifest, Part,
};
use super::generator::{Batches, Generator, Timing};
use super::journal;
use super::pass::{self, JournalConfig, PassConfig, PassOutcome, Stage};
use super::sinks::{write_grid, GridStage, NpzStage};
use crate::captions::TEXT_KEY;
use crate::data::npz_writer::ImageNpzWriter;
use crate::features::{Extractor, FeatureSet};
use crate::progress::Progress;

/// Images kept for the grid of a run.
pub const GRID_IMAGES: usize = 64;

/// The entry of a t2i sample npz that says which caption of the set each sample shows (the
/// caption texts, when known, are in `captions`); c2i samples have their labels in `arr_1`.
pub const CAPTION_INDICES: &str = "caption_indices";

/// Shard `index` of `count`: sample indices `index`, `index + count`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// K, from 0.
    pub index: usize,
    /// N.
    pub count: usize,
}

impl Shard {
    /// The whole run.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// This shard's sample indices among `total`.
    pub fn indices(self, total: usize) -> Vec<u64> {
        (self.index..total)
            .step_by(self.count)
            .map(|i| i as u64)
            .collect()
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `K/N` with 0 <= K < N.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: write the shard as K/N, e.g. 0/4"))?;
        let index: usize = k
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: K is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: N is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("`{s}`: need 0 <= K < N"));
        }
        Ok(Shard { index, count })
    }
}

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
    /// The journal folder.
    pub journal_dir: PathBuf,
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
        if world.is_distributed() {
            self.journal_dir.join(format!("rank-{}", world.rank))
        } else {
            self.journal_dir.clone()
        }
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

/// The settings every rank of a job must share: a run's fingerprint without what differs
/// between ranks (the partition, and the decode batch that `auto` may choose per device), with
/// the world size, which decides how Inception's batches fall.
pub fn job_settings(settings: &Map<String, Value>, world_size: usize) -> Map<String, Value> {
    let mut job = settings.clone();
    job.remove("shard");
    job.remove("decode_batch_size");
    job.insert("world_size".into(), json!(world_size));
    job
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
    generator: &mut Generator,
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
                batch::device_name(device),
                generator
                    .bytes_per_sample(generator.config().decode_batch_size.or(recorded).is_none())
                    as f64
                    / f64::from(1 << 20),
                batch::cap_for(device)
            ),
            None => format!(
                "free memory of {} unknown: {} (capped at {})",
                batch::device_name(device),
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
/// (if given), journaled under `plan.journal_dir`; `settings` are the fingerprint of everything
/// else that decides the result (the generator's own settings are added here). The batch sizes
/// must have been fixed with [`plan_batches`].
pub fn generate(
    generator: &mut Generator,
    features: Option<FeatureRequest<'_>>,
    plan: &GenerationPlan,
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
    add_generation_settings(&mut settings, generator, plan)?;
    let size = generator.eval_size();
    let mut writer = plan
        .save_samples
        .as_deref()
        .map(|p| ImageNpzWriter::create(p, indices.len(), size, size).map(NpzStage::new))
        .transpose()?;
    let mut feature_stage = features.map(|f| FeatureStage::new(f.extractor, indices.len()));
    let mut grid = GridStage::new(GRID_IMAGES);
    let inception_batch = features.map(|f| f.batch_size);
    generator.start_timing(inception_batch, plan.overlap);
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
            None => generator.timing.batches.map_or(1, |b| b.generation),
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
    let outcome = {
        let mut source = generator.source(indices.clone(), plan.overlap)?;
        let mut stages: Vec<&mut dyn Stage> = vec![&mut grid];
        if let Some(f) = feature_stage.as_mut() {
            stages.push(f);
        }
        if let Some(w) = writer.as_mut() {
            stages.push(w);
        }
        pass::run(&config, &mut source, &mut stages)?
    };
    let mut timing = generator.timing.clone();
    timing.wall = start.elapsed();
    if let Some(f) = &feature_stage {
        timing.inception = f.elapsed;
    }
    if let Some(mut writer) = writer.and_then(NpzStage::into_writer) {
        if generator.captions().is_some() {
            // Which caption of the set each sample shows, and its text when known.
            writer.add_array(CAPTION_INDICES, &conditions)?;
            if let Some(texts) = generator.caption_texts(&indices) {
                writer.add_strings(TEXT_KEY, &texts)?;
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

/// Adds the generator's settings and the sample range to a fingerprint.
pub fn add_generation_settings(
    settings: &mut Map<String, Value>,
    generator: &Generator,
    plan: &GenerationPlan,
) -> Result<()> {
    settings.extend(generator.fingerprint()?);
    settings.insert("samples".into(), json!(plan.samples));
    let shard = plan.partition();
    settings.insert(
        "shard".into(),
        json!(format!("{}/{}", shard.index, shard.count)),
    );
    Ok(())
}

/// What `sample` did in this process.
pub struct Sampled {
    /// This process's own generation (none when a restarted rank kept the part it had finished).
    pub generated: Option<Generated>,
    /// In a launched job, this rank's part manifest.
    pub part: Option<PathBuf>,
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
    let out = plan
        .save_samples
        .clone()
        .context("sample needs an output npz")?;
    let recorded = if plan.resuming() {
        journal::recorded_settings(&plan.journal()).and_then(|s| recorded_decode_batch(&s))
    } else {
        None
    };
    plan_batches(generator, plan, None, recorded);
    if !plan.is_distributed() {
        let mut generated = generate(generator, None, plan, Map::new())?;
        if let Some(path) = grid {
            write_grid(path, &generated.grid, generated.grid_captions.as_deref())?;
        }
        let pass = std::mem::replace(&mut generated.pass, PassOutcome::done());
        pass.finish()?;
        return Ok(Sampled {
            generated: Some(generated),
            part: None,
            gathered: Vec::new(),
        });
    }
    let world = plan.distribution.world;
    let dir = sibling(&out, ".parts");
    let mut fingerprint = Map::new();
    add_generation_settings(&mut fingerprint, generator, plan)?;
    let settings = job_settings(&fingerprint, world.size);
    let kept = plan
        .resuming()
        .then(|| finished_part(&dir, world.rank, world.size, &settings))
        .flatten();
    let (generated, part) = match kept {
        Some(part) => {
            plan.progress.say(format!(
                "rank {}: its part {} is already complete: keeping it",
                world.rank,
                part.path.display()
            ));
            (
                None,
                keep_part(part, plan.distribution.launch.as_deref())?.path,
            )
        }
        None => {
            let mut rank_plan = start_part(&dir, plan)?;
            rank_plan.save_samples = Some(dir.join(part_file_name(world.rank, "samples")));
            let mut generated = generate(generator, None, &rank_plan, Map::new())?;
            let part = write_part(&dir, &rank_plan, &mut generated, settings, generator)?;
            let pass = std::mem::replace(&mut generated.pass, PassOutcome::done());
            pass.finish()?;
            (Some(generated), part)
        }
    };
    if world.rank != 0 {
        return Ok(Sampled {
            generated,
            part: Some(part),
            gathered: Vec::new(),
        });
    }
    let parts = wait_for_parts_of(
        plan.distribution.launch.as_deref(),
        &dir,
        world.size,
        plan.distribution.gather_timeout,
        &out,
        plan.progress,
    )?;
    check_parts(&dir, &parts)?;
    gather_samples(&dir, &parts, &out, grid, plan.progress)?;
    Ok(Sampled {
        generated,
        part: Some(part),
        gathered: parts,
    })
}

/// `merge OUT` for a launched `sample` whose rank 0 did not finish: every rank's part in `dir`
/// joined into `out` (and the `grid` PNG); returns the parts, for the printout.
pub fn gather_samples_offline(
    dir: &Path,
    out: &Path,
    grid: Option<&Path>,
    progress: Progress,
) -> Result<Vec<Part>> {
    let parts = super::gather::parts_in(dir, out, progress)?;
    gather_samples(dir, &parts, out, grid, progress)?;
    Ok(parts)
}

/// Rank 0's (or `merge`'s) last step of a launched `sample`: joins the checked parts' samples
/// in `dir` into `out` (and the first ones into the `grid` PNG), and removes the parts.
fn gather_samples(
    dir: &Path,
    parts: &[Part],
    out: &Path,
    grid: Option<&Path>,
    progress: Progress,
) -> Result<()> {
    join_part_samples(parts, out, progress)?;
    if let Some(path) = grid {
        let grid = join_part_grids(parts)?;
        write_grid(path, &grid.images, grid.captions.as_deref())?;
    }
    remove_parts(dir)?;
    remove_journals_folder(&sibling(out, ".journal"));
    Ok(())
}

/// Makes room for this rank's part in `dir` (a new run replaces its old part) and returns the
/// plan of its generation.
pub fn start_part(dir: &Path, plan: &GenerationPlan) -> Result<GenerationPlan> {
    let rank = plan.distribution.world.rank;
    if !plan.resuming() {
        remove_part(dir, rank)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(plan.clone())
}

/// Writes this rank's part of a generated run into `dir`: its features (with their sample
/// indices) when it has them, its grid images, and last the manifest naming them and its samples
/// file (already written by the pass, when `plan.save_samples` is set).
pub fn write_part(
    dir: &Path,
    plan: &GenerationPlan,
    generated: &mut Generated,
    settings: Map<String, Value>,
    generator: &Generator,
) -> Result<PathBuf> {
    let world = plan.distribution.world;
    let mut files = BTreeMap::new();
    if let Some(features) = generated.features.as_mut() {
        let name = part_file_name(world.rank, "features");
        features.indices = Some(generated.indices.iter().map(|&i| i as i64).collect());
        features.save(&dir.join(&name))?;
        features.indices = None;
        files.insert("features".to_owned(), name);
    }
    if let Some(samples) = &plan.save_samples {
        let name = samples
            .file_name()
            .context("samples file name")?
            .to_string_lossy()
            .into_owned();
        files.insert("samples".to_owned(), name);
    }
    if !generated.grid.is_empty() {
        let name = part_file_name(world.rank, "grid");
        write_grid_part(
            &dir.join(&name),
            &generated.grid,
            &generated.indices,
            generated.grid_captions.as_deref(),
        )?;
        files.insert("grid".to_owned(), name);
    }
    let shard = plan.partition();
    let mut rank = rank_record(
        &world,
        &generated.timing,
        generated.indices.len(),
        generated.resumed,
    );
    if let (Some(object), Some(batches)) = (rank.as_object_mut(), generated.timing.batches) {
        object.insert("decode_batch_size".into(), json!(batches.decode));
    }
    let manifest = Manifest {
        rank: world.rank,
        world_size: world.size,
        launcher: world.launcher.name().to_owned(),
        shard: format!("{}/{}", shard.index, shard.count),
        samples: plan.samples,
        settings,
        run_fields: generator
            .config()
            .record()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        rank_record: rank,
        timing: generated.timing.record(),
        files,
        job: plan.distribution.job.clone(),
        launch: plan.distribution.launch.clone(),
    };
    let path = write_manifest(dir, &manifest)?;
    plan.progress.say(format!(
        "rank {} of {}: part written to {}",
        world.rank,
        world.size,
        path.display()
    ));
    Ok(path)
}
