//! `recon`: how well a tokenizer reconstructs a set of images — rFID, PSNR, SSIM (standard and
//! LlamaGen-compatible), codebook usage, and with `--features inception,dinov2,clip` FD_DINOv2 and
//! CMMD of the reconstructions against the originals — from a LlamaGen VQ checkpoint or from
//! reconstructions made elsewhere, in one journaled pass over the originals.
//!
//! Per image, the journal keeps the scores, the code indices, the feature rows of the
//! reconstruction (and of the original when the inputs are the reference) and, when
//! they are to be saved, the reconstructed pixels; a resumed run rebuilds every accumulator from
//! them with the same batch boundaries, so its figures equal an uninterrupted run's. Under a
//! launcher the images are split over the ranks and rank 0 accumulates every rank's per-image
//! values in image order, over the same batches (see [`crate::dist`]).
//!
//! The parts: [`config`] (what a run asks for), [`stage`] (the per-batch work and accumulators),
//! [`figures`] (the figures from the accumulators), [`gather`] (a launched job's parts), and
//! here the job itself, [`reconstruct`].

pub mod config;
mod figures;
mod gather;
mod stage;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llamagen_metrics::stats::GaussianStats;
use serde_json::{json, Map, Value};

pub use self::config::{ReconConfig, ReconPrecision, Reconstructions};
pub use self::gather::gather_recon_offline;
pub use self::stage::usage_from_counts;
pub use crate::metric::ReconMetric;

use self::config::wanted_metrics;
use self::gather::{gather_recon, write_part, write_pixels};
use self::stage::{ExtraDims, ReconStage, Source, Totals};
use super::settings::JobDescription;
use crate::data::ImageSource;
use crate::dist::{Distribution, JobRun, Part, RankPart, ShardedJob};
use crate::evaluate::run_info;
use crate::evaluate::Reference;
use crate::feature_set::Network;
use crate::layout::RunLayout;
use crate::models::vq::VqModel;
use crate::partition::Shard;
use crate::pipeline::feature_cache::{content_fingerprint, FeatureCache};
use crate::pipeline::pass::{self, JournalConfig, PassConfig, PassOutcome};
use crate::record::{RunRecord, REFERENCE_SHA256};

fn path_value(p: Option<&Path>) -> Value {
    p.map(|p| Value::from(p.display().to_string()))
        .unwrap_or(Value::Null)
}

/// Runs `recon` and writes its run folder; returns the record. In a launched job every rank
/// scores its images (r, r+N, ...) into `<out>/.parts/` and rank 0 computes the figures of all
/// of them, as one process would have; the other ranks return `None`.
pub fn reconstruct(config: &ReconConfig, distribution: &Distribution) -> Result<Option<RunRecord>> {
    let batch_size = config.inception.batch_size;
    let world = distribution.world;
    let shard = Shard {
        index: world.rank,
        count: world.size,
    };
    // 1. Inputs and the output folder, all checked before anything is written.
    crate::io::check_output_dir(&config.out_dir)?;
    // Never resized unasked: without a crop, images are scored at their own size.
    let crop = config.crop;
    let whole = crate::data::open_images(&config.data, crop, batch_size)?;
    let total = whole.len();
    anyhow::ensure!(total > 0, "{}: no images", config.data.display());
    let (height, width) = whole.image_size();
    let data_name = whole.describe();
    // The opened set serves a world of one as it is.
    let data = if shard == Shard::ALL {
        whole
    } else {
        drop(whole);
        crate::data::open_shard(&config.data, crop, batch_size, shard)?
    };
    let (source, save) = match &config.reconstructions {
        Reconstructions::Tokenizer {
            vq,
            weights,
            precision,
            save,
        } => {
            let device = config
                .inception
                .device
                .resolve()
                .map_err(anyhow::Error::msg)?;
            let (mut vs, model) = VqModel::load(vq, device, *weights)?;
            model
                .config()
                .check_image_size(&data_name, height as i64, width as i64)?;
            if *precision == ReconPrecision::Bf16 {
                vs.bfloat16();
            }
            (
                Source::Vq {
                    _vs: vs,
                    model: Box::new(model),
                },
                save.clone(),
            )
        }
        Reconstructions::Batch(batch) => {
            let recon = crate::data::open_images(batch, None, batch_size)?;
            if recon.len() != total || recon.image_size() != (height, width) {
                bail!(
                    "{}: {} reconstructions of {:?} do not match the {total} originals of {:?} in {}",
                    batch.display(),
                    recon.len(),
                    recon.image_size(),
                    (height, width),
                    data_name
                );
            }
            let recon = if shard == Shard::ALL {
                recon
            } else {
                drop(recon);
                crate::data::open_shard(batch, None, batch_size, shard)?
            };
            (Source::Batch(recon), None)
        }
    };
    let vq = match &source {
        Source::Vq { model, .. } => Some(model.as_ref()),
        Source::Batch(_) => None,
    };
    let wanted = wanted_metrics(config)?;
    let codebook_size = vq.map_or(0, |m| m.config().codebook_size as usize);
    let codes_per_image = match vq {
        Some(m) if wanted.contains(&ReconMetric::Codebook) => {
            let f = m.config().downsample_factor() as usize;
            (height / f) * (width / f)
        }
        _ => 0,
    };
    let training_usage = vq.and_then(VqModel::training_codebook_usage);
    let vq_config = vq.map(|m| m.config().clone());
    let vq_device = vq.map(|m| format!("{:?}", m.device()));
    let rank_device = match vq {
        Some(m) => m.device(),
        None => config
            .inception
            .device
            .resolve()
            .map_err(anyhow::Error::msg)?,
    };

    let out_dir = &config.out_dir;
    let rfid = wanted.contains(&ReconMetric::Rfid);
    let features_needed = wanted.iter().any(|m| m.network().is_some());
    // Only the process that computes the figures needs the reference.
    let gathers = world.rank == 0;
    let mut cache = None;
    let mut reference = None;
    if features_needed {
        let mut c = FeatureCache::new(
            FeatureCache::dir_for(out_dir),
            config.inception.clone(),
            config.progress,
        )?;
        if gathers && rfid {
            reference = config
                .reference
                .as_deref()
                .map(|r| Reference::pool_stats(r, config.crop, &mut c))
                .transpose()?;
        }
        c.extractor()?;
        cache = Some(c);
    }
    let inception_sha = cache.as_ref().map(|c| c.weights().sha256.clone());
    let extra_fields = cache
        .as_ref()
        .map(|c| c.weights().extra_fields())
        .unwrap_or_default();
    let extractor = match cache.as_mut() {
        Some(c) => Some(c.extractor()?),
        None => None,
    };
    let feature_width =
        |network: Network| extractor.and_then(|e| e.outputs(network).first().map(|(_, d)| *d));
    let dims = ExtraDims {
        dinov2: feature_width(Network::Dinov2),
        clip: feature_width(Network::Clip),
    };

    // 2. The journaled pass.
    let (vq_path, vq_weights, precision) = match &config.reconstructions {
        Reconstructions::Tokenizer {
            vq,
            weights,
            precision,
            ..
        } => (Some(vq.as_path()), Some(*weights), Some(*precision)),
        Reconstructions::Batch(_) => (None, None, None),
    };
    let recon_batch = match &config.reconstructions {
        Reconstructions::Batch(p) => Some(p.as_path()),
        Reconstructions::Tokenizer { .. } => None,
    };
    let mut settings = Map::new();
    settings.insert("data".into(), json!(config.data.display().to_string()));
    settings.insert("n_images".into(), json!(total));
    settings.insert("image_size".into(), json!([height, width]));
    settings.insert("vq".into(), path_value(vq_path));
    settings.insert(
        "vq_weights".into(),
        json!(vq_weights.map(|w| format!("{w:?}"))),
    );
    settings.insert("recon_batch".into(), path_value(recon_batch));
    settings.insert(
        "precision".into(),
        json!(precision.map(|p| format!("{p:?}"))),
    );
    settings.insert("batch_size".into(), json!(batch_size));
    settings.insert(
        "metrics".into(),
        json!(wanted.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>()),
    );
    settings.insert("reference".into(), path_value(config.reference.as_deref()));
    settings.insert("inception_sha256".into(), json!(inception_sha));
    settings.insert("resize".into(), json!(config.inception.resize.name()));
    settings.insert("save_recon".into(), path_value(save.as_deref()));
    settings.extend(
        extra_fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone())),
    );
    let stage = ReconStage {
        source,
        extractor,
        image_shape: (height, width),
        save_pixels: save.is_some(),
        totals: Totals::new(
            wanted,
            codes_per_image,
            codebook_size,
            config.reference.is_none(),
            dims,
        )?,
    };

    // What the run record says besides the figures.
    let mut record = vec![
        ("n_images", Value::from(total)),
        ("image_size", json!([height, width])),
        ("data", Value::from(data_name)),
        ("tokenizer", path_value(vq_path)),
        ("recon_batch", path_value(recon_batch)),
        ("crop", json!(config.crop)),
        // The batch of the tokenizer and the feature networks, named after its flag.
        ("feature_batch_size", Value::from(batch_size)),
        // What the figures are measured against: rFID's `--ref` when given, else the originals,
        // which every other figure (and rFID without `--ref`) compares with.
        (
            REFERENCE_SHA256,
            Value::from(content_fingerprint(
                config.reference.as_deref().unwrap_or(&config.data),
            )?),
        ),
    ];
    if let Some(vq_config) = &vq_config {
        record.push((
            "vq_config",
            json!({
                "ch": vq_config.ch,
                "ch_mult": vq_config.ch_mult,
                "z_channels": vq_config.z_channels,
                "codebook_size": vq_config.codebook_size,
                "embed_dim": vq_config.embed_dim,
                "num_res_blocks": vq_config.num_res_blocks,
                "downsample_factor": vq_config.downsample_factor(),
            }),
        ));
        record.push((
            "vq_weights",
            Value::from(format!("{:?}", vq_weights.unwrap_or_default()).to_lowercase()),
        ));
        record.push((
            "precision",
            Value::from(format!("{:?}", precision.unwrap_or_default()).to_lowercase()),
        ));
        record.push(("device", Value::from(vq_device.clone())));
    }
    if rfid {
        record.push((
            "rfid_reference",
            config
                .reference
                .as_ref()
                .map(|p| Value::from(p.display().to_string()))
                .unwrap_or_else(|| Value::from("inputs")),
        ));
        record.push(("resize", Value::from(config.inception.resize.name())));
        record.push(("inception_sha256", Value::from(inception_sha.clone())));
    }
    record.extend(extra_fields);
    if let Some(training) = training_usage {
        record.push(("training_codebook_usage", Value::from(training)));
    }

    let layout = RunLayout::folder(out_dir);
    if !config.resume && world.restarts == 0 && gathers {
        RunRecord::remove_stale(out_dir)?;
    }
    let pass_config = PassConfig {
        label: "recon",
        batch_size,
        progress: config.progress,
        journal: None,
        stop_after_new: config.stop_after_batches.map(|b| b * batch_size),
    };
    let mut job = ReconJob {
        config,
        data,
        stage,
        record,
        pass_config,
        settings: settings.clone(),
        save,
        reference,
        rank_device,
    };
    let run = JobRun {
        distribution,
        layout,
        total,
        shard: None,
        resume: config.resume,
        settings,
        progress: config.progress,
        description: JobDescription::Recon {
            config: config.with_absolute_paths(),
        }
        .to_value(),
    };
    crate::dist::job::run(&mut job, run)
}

/// `recon`'s pass and figures, once everything is loaded and checked.
struct ReconJob<'a> {
    config: &'a ReconConfig,
    /// This rank's originals.
    data: Box<dyn ImageSource + Send>,
    stage: ReconStage<'a>,
    /// What the run record says besides the figures.
    record: Vec<(&'static str, Value)>,
    /// The pass, but for its journal (the rank's).
    pass_config: PassConfig,
    settings: Map<String, Value>,
    save: Option<PathBuf>,
    reference: Option<GaussianStats>,
    rank_device: tch::Device,
}

impl ReconJob<'_> {
    fn run_pass(&mut self, rank: &RankPart<'_>) -> Result<PassOutcome> {
        let mut config = self.pass_config.clone();
        config.journal = Some(JournalConfig {
            dir: rank.journal(),
            settings: self.settings.clone(),
            resume: rank.resuming,
        });
        pass::run(&config, self.data.as_mut(), &mut [&mut self.stage])
    }
}

impl ShardedJob for ReconJob<'_> {
    type Output = RunRecord;

    fn write_output(&mut self, rank: &RankPart<'_>) -> Result<RunRecord> {
        let mut outcome = self.run_pass(rank)?;
        let mut record = std::mem::take(&mut self.record);
        record.push(("resumed", Value::from(outcome.resumed > 0)));
        let (values, fields) = self.stage.totals.figures(self.reference.as_ref())?;
        record.extend(fields);
        if let Some(path) = &self.save {
            let journal = outcome
                .journal
                .as_mut()
                .context("the journal of reconstructed pixels")?;
            write_pixels(
                journal,
                path,
                rank.total,
                self.stage.image_shape,
                self.pass_config.batch_size,
                None,
            )?;
            record.push(("saved_recon", Value::from(path.display().to_string())));
        }
        let run = RunRecord {
            metrics: values,
            run: run_info(record),
            ..Default::default()
        };
        run.write(rank.layout.output())?;
        outcome.finish()?;
        Ok(run)
    }

    fn write_part(&mut self, rank: &RankPart<'_>) -> Result<()> {
        let mut outcome = self.run_pass(rank)?;
        let run_fields = std::mem::take(&mut self.record)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        write_part(
            rank,
            &mut outcome,
            &self.stage,
            run_fields,
            self.rank_device,
            self.config.progress,
        )?;
        outcome.finish()?;
        Ok(())
    }

    fn join_parts(&mut self, parts: &[Part], _layout: &RunLayout) -> Result<RunRecord> {
        gather_recon(self.config, parts, self.reference.as_ref())
    }
}
