//! `llamagen-eval recon`: how well a tokenizer reconstructs a set of images — rFID, PSNR, SSIM
//! (standard and LlamaGen-compatible) and codebook usage — from a LlamaGen VQ checkpoint (`--vq`)
//! or from reconstructions made elsewhere (`--recon-batch`).
//!
//! Images stream through batch by batch: the tokenizer, the pixel metrics, the Inception pool
//! statistics (accumulated, not stored) and the code counts never need the whole set in memory.
//! Every 30 seconds (and when stopped on purpose) the running state — images done, per-image
//! PSNR/SSIM, code counts, the Gaussian accumulators — is written atomically to
//! `recon_state.npz` in the output folder, beside `recon_state.json` (the settings it belongs to);
//! `--resume` continues from there with the same batch boundaries, so the result is the same as
//! an uninterrupted run's.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, ValueEnum};
use llamagen_metrics::codebook::{CodebookUsage, LLAMAGEN_USAGE_WINDOW};
use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::image_quality::{self, SsimMode};
use llamagen_metrics::stats::{GaussianAccumulator, GaussianStats};
use ndarray::{Array1, Array4, ArrayView3};
use ndarray_npy::{NpzReader, NpzWriter};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

use super::metrics::OutputArgs;
use super::{FeatureCache, InceptionArgs};
use crate::data::ImageSource;
use crate::features::Extractor;
use crate::io::write_atomically;
use crate::metric::MetricKey;
use crate::models::inception::POOL_DIM;
use crate::models::vq::{images_to_input, to_pixels, VqModel, VqWeights};
use crate::record::{MetricValues, RunRecord};

const STATE_FILE: &str = "recon_state.npz";
const SETTINGS_FILE: &str = "recon_state.json";
const PARTIAL_RECON: &str = ".recon_partial.u8";
const SAVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default side for folders of images (ADM centre crop), as LlamaGen evaluates at 256.
const FOLDER_IMAGE_SIZE: usize = 256;

/// The figures `recon` can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ReconMetric {
    /// Fréchet distance of the reconstructions' Inception pool features to the reference's.
    Rfid,
    /// Peak signal-to-noise ratio (data range 255).
    Psnr,
    /// SSIM, both the standard (Gaussian window) and the LlamaGen-compatible figure.
    Ssim,
    /// Codebook usage and perplexity over the set (needs --vq).
    Codebook,
}

/// Precision the tokenizer runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["vq", "recon_batch"])))]
pub struct ReconCommand {
    /// Tokenizer checkpoint (LlamaGen VQ: vq_ds16_c2i.pt, vq_ds8_c2i.pt, or a training
    /// checkpoint); its configuration is read from the tensor shapes.
    #[arg(long, value_name = "CKPT")]
    pub vq: Option<PathBuf>,
    /// Reconstructions made elsewhere (npz `arr_0`, same order and shape as --data), scored
    /// instead of running a tokenizer.
    #[arg(long, value_name = "R.npz")]
    pub recon_batch: Option<PathBuf>,
    /// Original images: an npz with `arr_0` u8 N x H x W x 3, or a folder of PNG/JPEG files.
    #[arg(long, value_name = "IMAGES")]
    pub data: PathBuf,
    /// Centre-crop the originals to this square size (ADM's center_crop_arr). Default: npz images
    /// at their own size, folders at 256.
    #[arg(long, value_name = "N")]
    pub image_size: Option<usize>,
    /// rFID reference: an ADM reference batch or stats file (mu/sigma), a feature file, or images;
    /// default: the input images themselves (LlamaGen's protocol).
    #[arg(long = "ref", value_name = "REF.npz")]
    pub reference: Option<PathBuf>,
    /// Also write the reconstructions as an npz (`arr_0`).
    #[arg(long, value_name = "R.npz", requires = "vq")]
    pub save_recon: Option<PathBuf>,
    /// Precision of the tokenizer.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Which weights of a training checkpoint: `ema` when present (auto), `ema`, or `model`.
    #[arg(long, value_enum, default_value_t = VqWeights::Auto)]
    pub vq_weights: VqWeights,
    /// Figures to compute (comma-separated); default: all that the inputs allow.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub metrics: Option<Vec<ReconMetric>>,
    /// Continue an interrupted run in the same output folder.
    #[arg(long)]
    pub resume: bool,
    /// Testing aid: save the state and stop with an error after this many batches.
    #[arg(long, hide = true, value_name = "K")]
    pub stop_after_batches: Option<usize>,
    #[command(flatten)]
    pub inception: InceptionArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Where reconstructions come from.
enum ReconSource {
    Vq {
        _vs: tch::nn::VarStore,
        model: Box<VqModel>,
    },
    Batch(Box<dyn ImageSource + Send>),
}

/// Everything accumulated so far; what `recon_state.npz` holds.
#[derive(Debug, Clone, PartialEq)]
struct RunState {
    processed: usize,
    psnr: Vec<f64>,
    ssim: Vec<f64>,
    ssim_llamagen: Vec<f64>,
    counts: Vec<u64>,
    window: Vec<i64>,
    num_indices: u64,
    recon_pool: Option<GaussianAccumulator>,
    input_pool: Option<GaussianAccumulator>,
}

impl RunState {
    fn new(codebook_size: usize, recon_pool: bool, input_pool: bool) -> Self {
        let acc = |on: bool| on.then(|| GaussianAccumulator::new(POOL_DIM as usize));
        RunState {
            processed: 0,
            psnr: Vec::new(),
            ssim: Vec::new(),
            ssim_llamagen: Vec::new(),
            counts: vec![0; codebook_size],
            window: Vec::new(),
            num_indices: 0,
            recon_pool: acc(recon_pool),
            input_pool: acc(input_pool),
        }
    }

    fn add_indices(&mut self, indices: &[i64]) -> Result<()> {
        for &i in indices {
            let slot = usize::try_from(i)
                .ok()
                .and_then(|i| self.counts.get_mut(i))
                .with_context(|| format!("token index {i} outside the codebook"))?;
            *slot += 1;
        }
        self.num_indices += indices.len() as u64;
        self.window.extend_from_slice(indices);
        if self.window.len() > LLAMAGEN_USAGE_WINDOW {
            self.window
                .drain(..self.window.len() - LLAMAGEN_USAGE_WINDOW);
        }
        Ok(())
    }

    fn save(&self, path: &Path) -> Result<()> {
        let tmp = llamagen_metrics::stats::temporary_sibling(path);
        let write = || -> Result<()> {
            let mut npz = NpzWriter::new(BufWriter::new(File::create(&tmp)?));
            npz.add_array(
                "scalars",
                &Array1::from(vec![self.processed as u64, self.num_indices]),
            )?;
            npz.add_array("psnr", &Array1::from(self.psnr.clone()))?;
            npz.add_array("ssim", &Array1::from(self.ssim.clone()))?;
            npz.add_array("ssim_llamagen", &Array1::from(self.ssim_llamagen.clone()))?;
            npz.add_array("counts", &Array1::from(self.counts.clone()))?;
            npz.add_array("window", &Array1::from(self.window.clone()))?;
            for (name, acc) in [("recon", &self.recon_pool), ("input", &self.input_pool)] {
                if let Some(acc) = acc {
                    let (count, sum, outer) = acc.parts();
                    npz.add_array(format!("{name}_count"), &Array1::from(vec![count as u64]))?;
                    npz.add_array(format!("{name}_sum"), sum)?;
                    npz.add_array(format!("{name}_outer"), outer)?;
                }
            }
            npz.finish()?.flush()?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            e.context(format!("cannot write the run state {}", path.display()))
        })
    }

    fn load(path: &Path, recon_pool: bool, input_pool: bool) -> Result<Self> {
        let read = || -> Result<Self> {
            let mut npz = NpzReader::new(File::open(path)?)?;
            let v1 = |npz: &mut NpzReader<File>, name: &str| -> Result<Vec<f64>> {
                Ok(npz
                    .by_name::<ndarray::OwnedRepr<f64>, ndarray::Ix1>(name)?
                    .to_vec())
            };
            let u1 = |npz: &mut NpzReader<File>, name: &str| -> Result<Vec<u64>> {
                Ok(npz
                    .by_name::<ndarray::OwnedRepr<u64>, ndarray::Ix1>(name)?
                    .to_vec())
            };
            let scalars = u1(&mut npz, "scalars")?;
            anyhow::ensure!(scalars.len() == 2, "bad `scalars`");
            let mut acc = |name: &str, on: bool| -> Result<Option<GaussianAccumulator>> {
                if !on {
                    return Ok(None);
                }
                let count = u1(&mut npz, &format!("{name}_count"))?;
                let sum = v1(&mut npz, &format!("{name}_sum"))?;
                let outer =
                    npz.by_name::<ndarray::OwnedRepr<f64>, ndarray::Ix2>(&format!("{name}_outer"))?;
                Ok(Some(GaussianAccumulator::from_parts(
                    count.first().copied().unwrap_or(0) as usize,
                    Array1::from(sum),
                    outer,
                )?))
            };
            let recon = acc("recon", recon_pool)?;
            let input = acc("input", input_pool)?;
            Ok(RunState {
                processed: scalars[0] as usize,
                num_indices: scalars[1],
                psnr: v1(&mut npz, "psnr")?,
                ssim: v1(&mut npz, "ssim")?,
                ssim_llamagen: v1(&mut npz, "ssim_llamagen")?,
                counts: u1(&mut npz, "counts")?,
                window: npz
                    .by_name::<ndarray::OwnedRepr<i64>, ndarray::Ix1>("window")?
                    .to_vec(),
                recon_pool: recon,
                input_pool: input,
            })
        };
        read().with_context(|| {
            format!(
                "cannot read the run state {} (delete it to start over)",
                path.display()
            )
        })
    }
}

/// Codebook usage of the run so far, from its incremental counts.
pub fn usage_from_counts(counts: &[u64], window: &[i64], num_indices: u64) -> CodebookUsage {
    let window: Vec<usize> = window
        .iter()
        .filter_map(|&i| usize::try_from(i).ok())
        .collect();
    llamagen_metrics::codebook::usage_from_counts(counts, &window, num_indices as usize)
}

fn path_value(p: Option<&PathBuf>) -> Value {
    p.map(|p| Value::from(p.display().to_string()))
        .unwrap_or(Value::Null)
}

/// Pool statistics of the rFID reference given with `--ref`.
fn reference_pool_stats(
    path: &Path,
    cache: &mut FeatureCache<'_>,
    image_size: Option<usize>,
) -> Result<GaussianStats> {
    if !path.is_dir() {
        let names = super::npz_entry_names(path)?;
        let has = |key: &str| names.iter().any(|n| n == key);
        if has("pool") || has("mu") {
            let reference = super::metrics::reference_from_file(path)?;
            return reference.stats.pool.with_context(|| {
                format!(
                    "{}: no pool statistics (mu/sigma) or pool features for rFID",
                    path.display()
                )
            });
        }
    }
    let features = cache
        .features_of(path, image_size)
        .with_context(|| format!("reference images {}", path.display()))?;
    let pool = features
        .pool
        .with_context(|| format!("{}: no pool features", path.display()))?;
    Ok(GaussianStats::from_features_f32(pool.view())?)
}

/// Reads and drops `count` images from `source` (to continue after them).
fn skip(source: &mut dyn ImageSource, count: usize, batch: usize) -> Result<()> {
    let mut left = count;
    while left > 0 {
        let got = source
            .next_batch(left.min(batch))?
            .with_context(|| format!("{} ended early", source.describe()))?;
        left -= got.dim().0;
    }
    Ok(())
}

fn tensor_to_u8(t: &Tensor) -> Result<Vec<u8>> {
    Ok(Vec::<u8>::try_from(t.contiguous().flatten(0, -1))?)
}

pub fn run(cmd: &ReconCommand, quiet: bool) -> Result<()> {
    let batch_size = cmd.inception.batch_size();
    // 1. Inputs, all checked before anything is written.
    let image_size = cmd
        .image_size
        .or_else(|| cmd.data.is_dir().then_some(FOLDER_IMAGE_SIZE));
    let mut data = crate::data::open_images(&cmd.data, image_size, batch_size)?;
    let total = data.len();
    anyhow::ensure!(total > 0, "{}: no images", cmd.data.display());
    let (height, width) = data.image_size();

    let mut source = match (&cmd.vq, &cmd.recon_batch) {
        (Some(vq), _) => {
            let device = cmd.inception.device.resolve().map_err(anyhow::Error::msg)?;
            let (mut vs, model) = VqModel::load(vq, device, cmd.vq_weights)?;
            model
                .config()
                .check_image_size(&data.describe(), height as i64, width as i64)?;
            if cmd.precision == Precision::Bf16 {
                vs.bfloat16();
            }
            ReconSource::Vq {
                _vs: vs,
                model: Box::new(model),
            }
        }
        (None, Some(batch)) => {
            let recon = crate::data::open_images(batch, None, batch_size)?;
            if recon.len() != total || recon.image_size() != (height, width) {
                bail!(
                    "{}: {} reconstructions of {:?} do not match the {total} originals of {:?} in {}",
                    batch.display(),
                    recon.len(),
                    recon.image_size(),
                    (height, width),
                    data.describe()
                );
            }
            ReconSource::Batch(recon)
        }
        (None, None) => bail!("give --vq CKPT or --recon-batch R.npz"),
    };
    let vq = match &source {
        ReconSource::Vq { model, .. } => Some(model.as_ref()),
        ReconSource::Batch(_) => None,
    };
    let explicit = cmd.metrics.is_some();
    let mut wanted: BTreeSet<ReconMetric> = cmd
        .metrics
        .clone()
        .unwrap_or_else(|| ReconMetric::value_variants().to_vec())
        .into_iter()
        .collect();
    if vq.is_none() && wanted.remove(&ReconMetric::Codebook) && explicit {
        bail!("`codebook` needs the tokenizer (--vq); --recon-batch has no token indices");
    }
    let codebook_size = vq.map_or(0, |m| m.config().codebook_size as usize);
    let training_usage = vq.and_then(VqModel::training_codebook_usage);
    let vq_config = vq.map(|m| m.config().clone());
    let vq_device = vq.map(|m| format!("{:?}", m.device()));

    let out_dir = cmd.output.dir();
    let rfid = wanted.contains(&ReconMetric::Rfid);
    let (extractor, reference, inception_sha): (Option<Extractor>, Option<GaussianStats>, _) =
        if rfid {
            let cache_dir = out_dir
                .parent()
                .map(|p| p.join(".feature-cache"))
                .unwrap_or_else(|| PathBuf::from(".feature-cache"));
            let mut cache = FeatureCache::new(cache_dir, &cmd.inception, quiet)?;
            let reference = cmd
                .reference
                .as_deref()
                .map(|r| reference_pool_stats(r, &mut cache, cmd.image_size))
                .transpose()?;
            let weights = cache.weights().clone();
            (
                Some(cmd.inception.load(&weights)?),
                reference,
                Some(weights.sha256),
            )
        } else {
            (None, None, None)
        };

    // 2. Settings and state.
    let settings = json!({
        "data": cmd.data.display().to_string(),
        "n_images": total,
        "image_size": [height, width],
        "vq": path_value(cmd.vq.as_ref()),
        "vq_weights": format!("{:?}", cmd.vq_weights),
        "recon_batch": path_value(cmd.recon_batch.as_ref()),
        "precision": format!("{:?}", cmd.precision),
        "batch_size": batch_size,
        "metrics": wanted.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>(),
        "reference": path_value(cmd.reference.as_ref()),
        "inception_sha256": inception_sha,
        "resize": cmd.inception.resize.name(),
        "save_recon": path_value(cmd.save_recon.as_ref()),
    });
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create output folder {}", out_dir.display()))?;
    let state_path = out_dir.join(STATE_FILE);
    let settings_path = out_dir.join(SETTINGS_FILE);
    let partial_path = out_dir.join(PARTIAL_RECON);
    let (input_pool, recon_pool) = (rfid && reference.is_none(), rfid);
    let mut state = None;
    if cmd.resume && state_path.is_file() {
        let saved: Value = serde_json::from_slice(
            &std::fs::read(&settings_path)
                .with_context(|| format!("cannot read {}", settings_path.display()))?,
        )
        .with_context(|| format!("{}: not JSON", settings_path.display()))?;
        if saved != settings {
            bail!(
                "cannot resume in {}: the interrupted run had other settings\n  then: {saved}\n  now:  {settings}",
                out_dir.display()
            );
        }
        let loaded = RunState::load(&state_path, recon_pool, input_pool)?;
        anyhow::ensure!(
            loaded.processed <= total && loaded.counts.len() == codebook_size,
            "{}: does not fit these inputs",
            state_path.display()
        );
        state = Some(loaded);
    } else if cmd.resume && !quiet {
        eprintln!(
            "nothing to resume in {}: starting from the beginning",
            out_dir.display()
        );
    }
    let resumed = state.is_some();
    let mut state = state.unwrap_or_else(|| RunState::new(codebook_size, recon_pool, input_pool));
    if !resumed {
        write_atomically(
            &settings_path,
            serde_json::to_string_pretty(&settings)?.as_bytes(),
        )?;
        let _ = std::fs::remove_file(&state_path);
    }
    let image_bytes = height * width * 3;
    let mut partial = match &cmd.save_recon {
        None => None,
        Some(_) => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&partial_path)
                .with_context(|| format!("cannot open {}", partial_path.display()))?;
            let keep = (state.processed * image_bytes) as u64;
            anyhow::ensure!(
                file.metadata()?.len() >= keep,
                "{}: holds fewer reconstructions than the saved state; delete {} to start over",
                partial_path.display(),
                state_path.display()
            );
            file.set_len(keep)?;
            file.seek(std::io::SeekFrom::End(0))?;
            Some(BufWriter::new(file))
        }
    };
    if state.processed > 0 {
        skip(data.as_mut(), state.processed, batch_size)?;
        if let ReconSource::Batch(recon) = &mut source {
            skip(recon.as_mut(), state.processed, batch_size)?;
        }
        if !quiet {
            eprintln!("resuming after {} of {total} images", state.processed);
        }
    }

    // 3. The pass over the images.
    let bar = crate::progress::bar(total, "recon", "img", quiet);
    bar.set_position(state.processed as u64);
    let mut last_save = Instant::now();
    let mut batches = 0;
    while state.processed < total {
        let originals = data
            .next_batch(batch_size)?
            .with_context(|| format!("{} ended early", data.describe()))?;
        let n = originals.dim().0;
        let recons: Array4<u8> = match &mut source {
            ReconSource::Vq { model, .. } => {
                let slice = originals
                    .as_slice()
                    .context("image batches are contiguous")?;
                let images = Tensor::from_slice(slice)
                    .view([n as i64, height as i64, width as i64, 3])
                    .to_device(model.device());
                let (indices, recon) = model.reconstruct(&images_to_input(&images));
                let indices = Vec::<i64>::try_from(
                    indices
                        .to_device(tch::Device::Cpu)
                        .to_kind(Kind::Int64)
                        .flatten(0, -1),
                )?;
                state.add_indices(&indices)?;
                Array4::from_shape_vec((n, height, width, 3), tensor_to_u8(&to_pixels(&recon))?)?
            }
            ReconSource::Batch(recon) => {
                let batch = recon
                    .next_batch(n)?
                    .with_context(|| format!("{} ended early", recon.describe()))?;
                anyhow::ensure!(batch.dim() == originals.dim(), "reconstruction batch shape");
                batch
            }
        };
        if wanted.contains(&ReconMetric::Psnr) {
            let report = image_quality::psnr(originals.view(), recons.view())?;
            state.psnr.extend(report.per_image);
        }
        if wanted.contains(&ReconMetric::Ssim) {
            let std = image_quality::ssim(originals.view(), recons.view(), SsimMode::default())?;
            state.ssim.extend(std.per_image);
            let compat =
                image_quality::ssim(originals.view(), recons.view(), SsimMode::LlamagenCompat)?;
            state.ssim_llamagen.extend(compat.per_image);
        }
        if let Some(extractor) = &extractor {
            let [pool, _, _] = extractor.extract_batch(&recons)?;
            if let Some(acc) = &mut state.recon_pool {
                acc.add_batch_f32(pool.view())?;
            }
            if let Some(acc) = &mut state.input_pool {
                let [pool, _, _] = extractor.extract_batch(&originals)?;
                acc.add_batch_f32(pool.view())?;
            }
        }
        if let Some(file) = &mut partial {
            file.write_all(recons.as_slice().context("contiguous reconstructions")?)?;
        }
        state.processed += n;
        batches += 1;
        bar.inc(n as u64);
        let stop = cmd.stop_after_batches == Some(batches) && state.processed < total;
        if stop || last_save.elapsed() >= SAVE_INTERVAL {
            if let Some(file) = &mut partial {
                file.flush()?;
            }
            state.save(&state_path)?;
            last_save = Instant::now();
        }
        if stop {
            bar.abandon();
            bail!(
                "stopped after {batches} batches ({} of {total} images) as asked; continue with --resume",
                state.processed
            );
        }
    }
    bar.finish_and_clear();

    // 4. Figures and outputs.
    let mut values = MetricValues::default();
    let mut record = vec![
        ("n_images", Value::from(total)),
        ("image_size", json!([height, width])),
        ("data", Value::from(data.describe())),
        ("tokenizer", path_value(cmd.vq.as_ref())),
        ("recon_batch", path_value(cmd.recon_batch.as_ref())),
        ("batch_size", Value::from(batch_size)),
        ("resumed", Value::from(resumed)),
    ];
    if let Some(config) = &vq_config {
        record.push((
            "vq_config",
            json!({
                "ch": config.ch,
                "ch_mult": config.ch_mult,
                "z_channels": config.z_channels,
                "codebook_size": config.codebook_size,
                "embed_dim": config.embed_dim,
                "num_res_blocks": config.num_res_blocks,
                "downsample_factor": config.downsample_factor(),
            }),
        ));
        record.push((
            "vq_weights",
            Value::from(format!("{:?}", cmd.vq_weights).to_lowercase()),
        ));
        record.push((
            "precision",
            Value::from(format!("{:?}", cmd.precision).to_lowercase()),
        ));
        record.push(("device", Value::from(vq_device.clone())));
    }
    if rfid {
        let recon_stats = state
            .recon_pool
            .as_ref()
            .context("reconstruction statistics")?
            .finalize()
            .context("rFID needs at least 2 images")?;
        let reference_stats = match (&reference, &state.input_pool) {
            (Some(r), _) => r.clone(),
            (None, Some(acc)) => acc.finalize().context("rFID needs at least 2 images")?,
            (None, None) => bail!("no rFID reference"),
        };
        values.insert(
            MetricKey::Rfid,
            frechet_distance(&recon_stats, &reference_stats)?,
        );
        record.push((
            "rfid_reference",
            cmd.reference
                .as_ref()
                .map(|p| Value::from(p.display().to_string()))
                .unwrap_or_else(|| Value::from("inputs")),
        ));
        record.push(("resize", Value::from(cmd.inception.resize.name())));
        record.push(("inception_sha256", Value::from(inception_sha.clone())));
    }
    if wanted.contains(&ReconMetric::Psnr) {
        let finite: Vec<f64> = state
            .psnr
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        if finite.is_empty() {
            values.insert(MetricKey::Psnr, f64::INFINITY);
        } else {
            values.insert(
                MetricKey::Psnr,
                finite.iter().sum::<f64>() / finite.len() as f64,
            );
        }
        record.push((
            "psnr_identical_images",
            Value::from(state.psnr.len() - finite.len()),
        ));
    }
    if wanted.contains(&ReconMetric::Ssim) {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        values.insert(MetricKey::Ssim, mean(&state.ssim));
        values.insert(MetricKey::SsimLlamagen, mean(&state.ssim_llamagen));
        record.push((
            "ssim_window",
            Value::from("gaussian 11x11, sigma 1.5, data range 255"),
        ));
        record.push((
            "ssim_llamagen_definition",
            Value::from("LlamaGen's call: uniform 7x7, float32 [0,1] inputs, data_range 2.0"),
        ));
    }
    if wanted.contains(&ReconMetric::Codebook) {
        let usage = usage_from_counts(&state.counts, &state.window, state.num_indices);
        values.insert(MetricKey::CodebookUsage, usage.usage);
        values.insert(MetricKey::CodebookPerplexity, usage.perplexity);
        record.push(("codebook_size", Value::from(usage.codebook_size)));
        record.push(("codebook_used_entries", Value::from(usage.used_entries)));
        record.push(("codebook_tokens", Value::from(usage.num_indices)));
        record.push(("codebook_entropy_bits", Value::from(usage.entropy_bits)));
        record.push((
            "codebook_usage_last_65536",
            Value::from(usage.llamagen_usage),
        ));
    }
    if let Some(training) = training_usage {
        record.push(("training_codebook_usage", Value::from(training)));
    }
    if let (Some(path), Some(file)) = (&cmd.save_recon, partial.take()) {
        let file = file.into_inner().map_err(|e| e.into_error())?;
        write_recon_npz(path, file, total, height, width)?;
        record.push(("saved_recon", Value::from(path.display().to_string())));
    }
    let run = super::run_record(record);
    let record = RunRecord {
        metrics: values,
        run,
    };
    record.write(&out_dir)?;
    let _ = std::fs::remove_file(&state_path);
    let _ = std::fs::remove_file(&settings_path);
    let _ = std::fs::remove_file(&partial_path);
    print!("{}", record.metrics.table());
    if !quiet {
        eprintln!("wrote {}/metrics.json and metrics.csv", out_dir.display());
    }
    Ok(())
}

/// Streams the raw reconstructions of `file` into an npz `arr_0`.
fn write_recon_npz(path: &Path, mut file: File, n: usize, h: usize, w: usize) -> Result<()> {
    file.flush()?;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    let mut writer = crate::data::npz_writer::ImageNpzWriter::create(path, n, h, w)?;
    let mut image = vec![0u8; h * w * 3];
    for _ in 0..n {
        reader.read_exact(&mut image)?;
        writer.push(ArrayView3::from_shape((h, w, 3), &image)?)?;
    }
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamagen_metrics::codebook::codebook_usage;
    use ndarray::Array2;

    #[test]
    fn counts_give_the_metrics_crate_usage() {
        let indices: Vec<i64> = (0..70_000).map(|i| (i * 7 + i / 13) % 97).collect();
        let mut state = RunState::new(128, false, false);
        for chunk in indices.chunks(999) {
            state.add_indices(chunk).unwrap();
        }
        let ours = usage_from_counts(&state.counts, &state.window, state.num_indices);
        assert_eq!(ours, codebook_usage(&indices, 128).unwrap());
        let short = &indices[..500];
        let mut state = RunState::new(128, false, false);
        state.add_indices(short).unwrap();
        let ours = usage_from_counts(&state.counts, &state.window, state.num_indices);
        assert_eq!(ours, codebook_usage(short, 128).unwrap());
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = RunState::new(16, true, true);
        state.add_indices(&[1, 2, 3, 3]).unwrap();
        state.processed = 4;
        state.psnr = vec![20.5, f64::INFINITY];
        state.ssim = vec![0.25];
        let feats = Array2::from_shape_fn((3, POOL_DIM as usize), |(i, j)| (i * j) as f32 * 0.1);
        state
            .recon_pool
            .as_mut()
            .unwrap()
            .add_batch_f32(feats.view())
            .unwrap();
        let path = dir.path().join("s.npz");
        state.save(&path).unwrap();
        assert_eq!(RunState::load(&path, true, true).unwrap(), state);
    }
}
