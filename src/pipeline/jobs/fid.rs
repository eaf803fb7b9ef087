//! `fid` as library calls: a sample batch, or samples generated on the fly, against a reference,
//! into a run record. Generated evaluations keep their generator, Inception and reference loaded
//! in an [`GeneratedEvaluation`], so a CFG sweep loads each checkpoint once.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use super::generate::{
    add_generation_settings, generate, plan_batches, recorded_decode_batch, write_part,
    FeatureRequest, GenerationPlan,
};
use crate::dist::{
    clean_up, job_settings, parts_in, split_record, split_summary, JobRun, Part, RankPart,
    ShardedJob,
};
use crate::evaluate::{evaluate, run_info};
use crate::evaluate::{Metric, Reference};
use crate::feature_set::FeatureSet;
use crate::io::write_atomically;
use crate::journal;
use crate::layout::RunLayout;
use crate::models::clip::Heads;
use crate::models::clip_text::ClipTextEmbedder;
use crate::pipeline::feature_cache::{content_fingerprint, FeatureCache};
use crate::pipeline::generator::{Generator, GeneratorConfig};
use crate::pipeline::parts::{join_part_features, join_part_grids, join_part_samples};
use crate::pipeline::reference::ReferenceNeeds;
use crate::pipeline::stages::sinks::write_grid;
use crate::pipeline::timing::{Batches, Timing};
use crate::record::RunRecord;
use ndarray::Array2;

use super::settings::{FidConfig, JobDescription};

/// A finished `fid` run.
pub struct FidOutcome {
    /// What was written to `metrics.json`.
    pub record: RunRecord,
    /// Throughput of generation, for generated samples (this process's).
    pub timing: Option<Timing>,
    /// For a launched job: one line per rank and the total.
    pub split: Option<String>,
}

fn common_fields(
    sample: &FeatureSet,
    reference: &Reference,
    cache: &FeatureCache,
    source: String,
    config: &FidConfig,
) -> Vec<(&'static str, Value)> {
    vec![
        ("n_samples", Value::from(sample.len())),
        (
            "n_reference",
            reference
                .features
                .as_ref()
                .map(|f| Value::from(f.len()))
                .unwrap_or(Value::Null),
        ),
        ("resize", Value::from(config.inception.resize.name())),
        (
            "inception_sha256",
            Value::from(cache.weights().sha256.clone()),
        ),
        ("sample_batch", Value::from(source)),
        (
            "reference",
            Value::from(config.reference.display().to_string()),
        ),
        // The centre crop a reference folder was read with (`--crop`).
        ("crop", json!(config.reference_crop)),
    ]
    .into_iter()
    .chain(cache.weights().extra_fields())
    .collect()
}

/// `fid --sample-batch`: the metrics of the images in `samples` (features cached by content),
/// written into `out_dir`.
pub fn evaluate_sample_batch(
    config: &FidConfig,
    samples: &Path,
    out_dir: &Path,
) -> Result<FidOutcome> {
    Reference::check(&config.reference)?;
    crate::io::check_output_dir(out_dir)?;
    let mut cache = FeatureCache::new(
        FeatureCache::dir_for(out_dir),
        config.inception.clone(),
        config.progress,
    )?;
    RunRecord::remove_stale(out_dir)?;
    let sample = cache
        .features_of(samples, None)
        .with_context(|| format!("sample batch {}", samples.display()))?;
    let reference = resolve_reference(config, &mut cache)?;
    let mut fields = common_fields(
        &sample,
        &reference,
        &cache,
        samples.display().to_string(),
        config,
    );
    // Inception is done with: release the network before the metrics need their memory.
    drop(cache);
    fields.extend(config.metrics.record());
    let record = evaluate(
        sample,
        None,
        Some(&reference),
        &config.metrics,
        run_info(fields),
    )?;
    record.write(out_dir)?;
    Ok(FidOutcome {
        record,
        timing: None,
        split: None,
    })
}

/// One generated run of a [`GeneratedEvaluation`].
#[derive(Debug, Clone)]
pub struct GeneratedRun {
    /// Where `metrics.json`, `metrics.csv`, `grid.png` and the journal go.
    pub out_dir: PathBuf,
    /// Samples, batch size, npz output, resume.
    pub plan: GenerationPlan,
    /// The CFG scales of the sweep this run is one of (`None`: a run on its own).
    pub sweep_scales: Option<Vec<f64>>,
}

/// A generator, Inception and a reference, loaded and checked once, for one or many generated
/// evaluations (a sweep changes only the CFG scale between them).
pub struct GeneratedEvaluation {
    config: FidConfig,
    generator: Generator,
    cache: FeatureCache,
    /// Resolved by the process that computes the metrics: one process, or rank 0 of a job.
    reference: Option<Reference>,
}

impl GeneratedEvaluation {
    /// Opens everything in the order that fails fastest: the reference file's contents, the
    /// Inception weights, the generator and tokenizer (checked against each other), and only
    /// then the reference features, which may take minutes to compute — only in the process that
    /// computes the metrics (`gathers`: one process, or rank 0 of a launched job).
    pub fn open(
        config: &FidConfig,
        generator: &GeneratorConfig,
        cache_dir: PathBuf,
        gathers: bool,
    ) -> Result<Self> {
        Reference::check(&config.reference)?;
        let mut cache = FeatureCache::new(cache_dir, config.inception.clone(), config.progress)?;
        let generator = Generator::new(generator)?;
        let reference = if gathers {
            Some(resolve_reference(config, &mut cache)?)
        } else {
            None
        };
        Ok(GeneratedEvaluation {
            config: config.clone(),
            generator,
            cache,
            reference,
        })
    }

    /// The loaded generator (e.g. to change its CFG scale between runs).
    pub fn generator_mut(&mut self) -> &mut Generator {
        &mut self.generator
    }

    /// Generates the samples of `run`, extracts their features, computes the metrics and writes
    /// the run folder. With `release_inception`, the network is unloaded before the metric stage
    /// (the last run of a job). In a launched job, every rank writes its part and only rank 0
    /// gathers the parts and computes the metrics; the other ranks return `None`.
    pub fn run(
        &mut self,
        run: &GeneratedRun,
        release_inception: bool,
    ) -> Result<Option<FidOutcome>> {
        crate::io::check_output_dir(&run.out_dir)?;
        let inception_batch = self.config.inception.batch_size.max(1);
        let marker = run.out_dir.join(COMPLETE);
        // A resume keeps the decode batch of the interrupted (or finished) run unless one is
        // configured: with an automatic batch, free memory may choose another generation batch.
        let recorded = if run.plan.resuming() {
            journal::recorded_settings(&run.plan.journal())
                .or_else(|| read_settings(&marker))
                .and_then(|s| recorded_decode_batch(&s))
        } else {
            None
        };
        let batches = plan_batches(&self.generator, &run.plan, Some(inception_batch), recorded);
        let mut settings = Map::new();
        settings.insert(
            "inception_sha256".into(),
            json!(self.cache.weights().sha256.clone()),
        );
        settings.insert("resize".into(), json!(self.config.inception.resize.name()));
        settings.extend(
            self.cache
                .weights()
                .extra_fields()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v)),
        );
        // Inception's batch partition decides the features' rounding.
        settings.insert("batch_size".into(), json!(inception_batch));
        let mut complete = settings.clone();
        add_generation_settings(&mut complete, &self.generator, &run.plan, batches);
        complete.insert(
            "metrics".into(),
            json!(format!("{:?}", self.config.metrics)),
        );
        // By content: a scale kept by `sweep --resume` must have been scored against these very
        // reference images, not merely a file at the same path.
        complete.insert(
            "reference".into(),
            json!({
                "path": self.config.reference.display().to_string(),
                "sha256": content_fingerprint(&self.config.reference)?,
            }),
        );
        let world = run.plan.distribution.world;
        if world.is_distributed() {
            complete = job_settings(&complete, world.size);
        }
        if run.plan.resuming() {
            if let Some(record) = finished_run(&marker, &complete, &run.out_dir) {
                self.config.progress.say(format!(
                    "{} is already complete with these settings: keeping it",
                    run.out_dir.display()
                ));
                return Ok(Some(FidOutcome {
                    record,
                    timing: None,
                    split: None,
                }));
            }
        }
        // Not finished with these settings: whatever result the folder holds is not this run's
        // (also when resuming), so it goes before the long work.
        if world.rank == 0 {
            RunRecord::remove_stale(&run.out_dir)?;
        }
        let layout = run.plan.layout.clone();
        let total = run.plan.samples;
        let shard = run.plan.partition();
        let progress = self.config.progress;
        let distribution = run.plan.distribution.clone();
        let description = JobDescription::Fid {
            config: self.config.with_absolute_paths(),
            save_samples: run.plan.save_samples.as_deref().map(crate::io::absolute),
            sweep_scales: run.sweep_scales.clone(),
        }
        .to_value();
        let mut job = GeneratedRunJob {
            evaluation: self,
            run,
            batches,
            settings,
            complete: complete.clone(),
            inception_batch,
            release_inception,
            timing: None,
        };
        let job_run = JobRun {
            distribution: &distribution,
            layout,
            total,
            shard: Some(shard),
            resume: run.plan.resume,
            settings: complete,
            progress,
            description,
        };
        crate::dist::job::run(&mut job, job_run)
    }
}

/// One generated run of an evaluation as a job over the ranks.
struct GeneratedRunJob<'e> {
    evaluation: &'e mut GeneratedEvaluation,
    run: &'e GeneratedRun,
    /// The run's batch sizes.
    batches: Batches,
    /// The fingerprint of the evaluation's own settings (the generator's are added by the pass).
    settings: Map<String, Value>,
    /// Everything that decides the finished run, kept beside its record.
    complete: Map<String, Value>,
    inception_batch: usize,
    release_inception: bool,
    /// This rank's throughput, when it generated.
    timing: Option<Timing>,
}

impl GeneratedRunJob<'_> {
    /// Generates the samples of `plan` through Inception.
    fn generate(&mut self, plan: &GenerationPlan) -> Result<super::generate::Generated> {
        let evaluation = &mut *self.evaluation;
        let features = FeatureRequest {
            extractor: evaluation.cache.extractor()?,
            batch_size: self.inception_batch,
        };
        generate(
            &mut evaluation.generator,
            Some(features),
            plan,
            self.batches,
            self.settings.clone(),
        )
    }
}

impl ShardedJob for GeneratedRunJob<'_> {
    type Output = FidOutcome;

    fn write_output(&mut self, _rank: &RankPart<'_>) -> Result<FidOutcome> {
        let run = self.run;
        let mut generated = self.generate(&run.plan)?;
        let evaluation = &mut *self.evaluation;
        let sample = generated
            .features
            .take()
            .context("features of the generated samples")?;
        let source = sample_source(run.plan.save_samples.as_deref());
        let reference = evaluation.reference.as_ref().context("the reference")?;
        let mut fields = common_fields(
            &sample,
            reference,
            &evaluation.cache,
            source,
            &evaluation.config,
        );
        if self.release_inception {
            evaluation.cache.release();
        }
        fields.extend(evaluation.config.metrics.record());
        fields.extend(evaluation.generator.config().record());
        let mut throughput = generated.timing.record();
        if let Some(object) = throughput.as_object_mut() {
            object.insert("resumed_samples".into(), json!(generated.resumed));
        }
        fields.push(("throughput", throughput));
        let captions = caption_clip_embeddings(
            &evaluation.generator,
            &evaluation.cache,
            &evaluation.config,
            &generated.indices,
        )?;
        let record = evaluate(
            sample,
            captions.as_ref(),
            Some(reference),
            &evaluation.config.metrics,
            run_info(fields),
        )?;
        record.write(&run.out_dir)?;
        if !generated.grid.is_empty() {
            // The first generated images, for `report`.
            write_grid(
                &run.out_dir.join("grid.png"),
                &generated.grid,
                generated.grid_captions.as_deref(),
            )?;
        }
        write_marker(&run.out_dir.join(COMPLETE), self.complete.clone())?;
        generated.pass.finish()?;
        Ok(FidOutcome {
            record,
            timing: Some(generated.timing),
            split: None,
        })
    }

    fn write_part(&mut self, rank: &RankPart<'_>) -> Result<()> {
        let mut rank_plan = self.run.plan.clone();
        rank_plan.save_samples = rank_plan
            .save_samples
            .as_ref()
            .map(|_| rank.file("samples").1);
        let mut generated = self.generate(&rank_plan)?;
        write_part(
            rank,
            &mut generated,
            &self.evaluation.generator,
            rank_plan.save_samples.is_some(),
            self.evaluation.config.progress,
        )?;
        generated.pass.finish()?;
        self.timing = Some(generated.timing);
        if self.release_inception {
            self.evaluation.cache.release();
        }
        Ok(())
    }

    fn join_parts(&mut self, parts: &[Part], _layout: &RunLayout) -> Result<FidOutcome> {
        let evaluation = &mut *self.evaluation;
        if self.release_inception {
            evaluation.cache.release();
        }
        let reference = evaluation.reference.as_ref().context("the reference")?;
        let every_sample: Vec<u64> = (0..self.run.plan.samples as u64).collect();
        let captions = caption_clip_embeddings(
            &evaluation.generator,
            &evaluation.cache,
            &evaluation.config,
            &every_sample,
        )?;
        let mut outcome = gather_run(
            &evaluation.config,
            &evaluation.cache,
            reference,
            captions.as_ref(),
            &self.run.out_dir,
            parts,
            self.run.plan.save_samples.as_deref(),
        )?;
        write_marker(&self.run.out_dir.join(COMPLETE), self.complete.clone())?;
        outcome.timing = self.timing.take();
        Ok(outcome)
    }
}

/// Row k: the CLIP text embedding of the caption of sample `indices[k]`, for the CLIP score of a
/// text-to-image run — when its captions' texts are known, the run computes CLIP image features,
/// and the CLIP weights hold a text tower (a `CLIPModel` file) with a `tokenizer.json` beside them.
/// Otherwise `None` (the CLIP score is then left out, or refused when asked for).
fn caption_clip_embeddings(
    generator: &Generator,
    cache: &FeatureCache,
    config: &FidConfig,
    indices: &[u64],
) -> Result<Option<Array2<f32>>> {
    let wanted = config
        .metrics
        .metrics
        .as_ref()
        .is_none_or(|m| m.contains(&Metric::ClipScore));
    let (Some(captions), Some(clip)) = (generator.captions(), cache.weights().clip.as_ref()) else {
        return Ok(None);
    };
    // Only the texts these samples show, each once.
    let Some(table) = captions.table_of(indices) else {
        tracing::info!(
            "no CLIP score: {} holds no caption texts",
            captions.source().display()
        );
        return Ok(None);
    };
    if !wanted {
        return Ok(None);
    }
    let device = config
        .inception
        .device
        .resolve()
        .map_err(anyhow::Error::msg)?;
    let heads = clip.heads.map_or(Heads::Auto, Heads::Explicit);
    let embedder = match ClipTextEmbedder::load(&clip.path, None, device, heads) {
        Ok(embedder) => embedder,
        Err(e) if config.metrics.metrics.is_none() => {
            tracing::info!("no CLIP score: {e}");
            return Ok(None);
        }
        Err(e) => return Err(e).context("the CLIP score's text tower"),
    };
    // Each distinct caption once, in chunks; then one row per sample.
    let mut embeddings = Vec::with_capacity(table.texts.len());
    for chunk in table.texts.chunks(256) {
        let batch = embedder
            .embed(chunk)?
            .to_device(tch::Device::Cpu)
            .to_kind(tch::Kind::Float);
        embeddings.push(batch);
    }
    let all = tch::Tensor::cat(&embeddings, 0);
    let per_sample = all.index_select(0, &tch::Tensor::from_slice(&table.rows));
    let (n, d) = per_sample.size2()?;
    let values = Vec::<f32>::try_from(per_sample.contiguous().view([-1]))?;
    Ok(Some(Array2::from_shape_vec(
        (n as usize, d as usize),
        values,
    )?))
}

fn resolve_reference(config: &FidConfig, cache: &mut FeatureCache) -> Result<Reference> {
    let needs = ReferenceNeeds {
        features: config.metrics.needs_reference_features(),
    };
    Reference::resolve(&config.reference, config.reference_crop, needs, cache)
}

fn sample_source(save_samples: Option<&Path>) -> String {
    match save_samples {
        Some(p) => format!("generated (saved to {})", p.display()),
        None => "generated".to_owned(),
    }
}

fn write_marker(marker: &Path, settings: Map<String, Value>) -> Result<()> {
    write_atomically(
        marker,
        serde_json::to_string_pretty(&Value::Object(settings))?.as_bytes(),
    )?;
    Ok(())
}

/// The gather of a launched generated run: joins the ranks' checked `parts` — their features (in
/// sample order) and samples (into `save_samples`), computes the metrics and writes the run
/// folder as one process would have, with how the work was split in the record.
fn gather_run(
    config: &FidConfig,
    cache: &FeatureCache,
    reference: &Reference,
    captions: Option<&Array2<f32>>,
    out_dir: &Path,
    parts: &[Part],
    save_samples: Option<&Path>,
) -> Result<FidOutcome> {
    let sample = join_part_features(parts)?;
    if let Some(out) = save_samples {
        join_part_samples(parts, out, config.progress)?;
    }
    let fields = common_fields(
        &sample,
        reference,
        cache,
        sample_source(save_samples),
        config,
    );
    let mut run = run_info(fields.into_iter().chain(config.metrics.record()));
    if let Some(first) = parts.first() {
        run.extend(first.manifest.run_fields.clone());
    }
    run.extend(
        split_record(parts)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    let record = evaluate(sample, captions, Some(reference), &config.metrics, run)?;
    record.write(out_dir)?;
    let grid = join_part_grids(parts)?;
    if !grid.images.is_empty() {
        write_grid(
            &out_dir.join("grid.png"),
            &grid.images,
            grid.captions.as_deref(),
        )?;
    }
    Ok(FidOutcome {
        record,
        timing: None,
        split: Some(split_summary(parts)),
    })
}

/// `merge OUT_DIR` for a launched `fid --gpt` run whose rank 0 did not finish the gather: every
/// rank's part must be in `<out_dir>/.parts/`; the reference is resolved through the feature
/// cache in `cache_dir`, as the run did.
pub fn gather_offline(
    config: &FidConfig,
    out_dir: &Path,
    cache_dir: PathBuf,
    save_samples: Option<&Path>,
) -> Result<FidOutcome> {
    let layout = RunLayout::folder(out_dir);
    let parts = parts_in(&layout, config.progress)?;
    Reference::check(&config.reference)?;
    let mut cache = FeatureCache::new(cache_dir, config.inception.clone(), config.progress)?;
    let reference = resolve_reference(config, &mut cache)?;
    // The captions live in the generator's configuration, which an offline gather does not
    // rebuild (it would mean embedding every prompt again): no CLIP score here.
    let outcome = gather_run(
        config,
        &cache,
        &reference,
        None,
        out_dir,
        &parts,
        save_samples,
    )?;
    write_marker(&out_dir.join(COMPLETE), parts[0].manifest.settings.clone())?;
    clean_up(&layout)?;
    Ok(outcome)
}

/// Beside a finished generated run's `metrics.json`: the settings it was made with, so that a
/// resumed sweep keeps finished scales instead of generating them again.
const COMPLETE: &str = ".complete.json";

/// The settings a finished run's `marker` holds, if it is readable.
fn read_settings(marker: &Path) -> Option<Map<String, Value>> {
    let text = std::fs::read_to_string(marker).ok()?;
    match serde_json::from_str(&text).ok()? {
        Value::Object(settings) => Some(settings),
        _ => None,
    }
}

/// The record of a finished run in `out_dir` made with exactly `settings`, if there is one.
fn finished_run(marker: &Path, settings: &Map<String, Value>, out_dir: &Path) -> Option<RunRecord> {
    if read_settings(marker)? != *settings {
        return None;
    }
    RunRecord::read(out_dir).ok()
}
