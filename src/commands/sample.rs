//! `llamagen-eval sample`: images from a LlamaGen c2i generator and its tokenizer, written as the
//! ADM / LlamaGen sample npz (`arr_0` u8 N x H x W x 3, `arr_1` the class labels), sharded and
//! resumable; `llamagen-eval merge`: shards joined into one npz in sample-index order.
//!
//! Decoding follows LlamaGen's `sample_c2i_ddp.py`: `decode_code`, then (when `--image-size-eval`
//! differs) torch's bicubic interpolation of the float images (`F.interpolate(mode='bicubic')`:
//! align_corners=False, no antialiasing), then `clamp(127.5 x + 128, 0, 255)` truncated to u8.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use ndarray::{Array1, Array2, Array4, Axis};
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};

use crate::data::npz::NpzImages;
use crate::data::npz_writer::ImageNpzWriter;
use crate::data::ImageSource;
use crate::device::DeviceChoice;
use crate::features::FeatureSet;
use crate::models::gpt::{Gpt, GptError, HeadChoice};
use crate::models::vq::{self, VqModel, VqWeights};
use crate::sampling::{self, LabelSpec, SamplingParams};

/// The dtype the generator runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
}

/// Generation flags shared by `sample` and `fid --gpt` (each command has its own `--image-size`:
/// in `fid` it also sets the crop of folder references).
#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// LlamaGen class-conditional GPT checkpoint (c2i_*.pt, or an FSDP consolidated.pth).
    #[arg(long, value_name = "CKPT")]
    pub gpt: Option<PathBuf>,
    /// The LlamaGen VQ tokenizer the GPT was trained with (vq_ds16_c2i.pt).
    #[arg(long, value_name = "CKPT")]
    pub vq: Option<PathBuf>,
    /// Which tokenizer weights: auto (ema when present), ema or model.
    #[arg(long, value_enum, default_value_t = VqWeights::Auto)]
    pub vq_weights: VqWeights,
    /// Number of images (default with --labels: one per label).
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Resolution of the written images (bicubic resize, as LlamaGen does 384 -> 256);
    /// default: --image-size.
    #[arg(long)]
    pub image_size_eval: Option<i64>,
    /// Classifier-free guidance scale (guidance only above 1.0, as LlamaGen).
    #[arg(long, default_value_t = 1.5)]
    pub cfg_scale: f64,
    /// Image tokens j >= I + 2 use the conditional logits only; -1: guide every token.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub cfg_interval: i64,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Keep the smallest set of tokens with this much probability (1.0: all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sample i depends only on (seed, i, its label).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class labels, comma-separated, cycled over the samples (default: uniform random per sample).
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "class_balanced",
        allow_hyphen_values = true
    )]
    pub labels: Option<Vec<i64>>,
    /// Label i % num_classes for sample i (N / num_classes per class).
    #[arg(long)]
    pub class_balanced: bool,
    /// The generator's dtype (the tokenizer runs in f32).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Registry name (GPT-B, L, XL, XXL, XXXL, 1B, 3B, 7B) fixing the head count.
    #[arg(long, value_name = "NAME")]
    pub gpt_model: Option<String>,
    /// Attention heads (wins over the registry).
    #[arg(long, value_name = "N")]
    pub n_head: Option<i64>,
    /// Images the tokenizer decodes at once. 1 (the default) makes every image independent of
    /// how samples are batched; larger is faster on a GPU, but convolution arithmetic then varies
    /// with the batch, which can move rare pixels by 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub decode_batch_size: u64,
}

impl GenArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            cfg_scale: self.cfg_scale,
            cfg_interval: self.cfg_interval,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        }
    }

    pub fn label_spec(&self) -> Result<LabelSpec> {
        Ok(match (&self.labels, self.class_balanced) {
            (Some(l), _) if l.is_empty() => bail!("--labels is empty"),
            (Some(l), _) => LabelSpec::Explicit(l.clone()),
            (None, true) => LabelSpec::Balanced,
            (None, false) => LabelSpec::Uniform,
        })
    }

    /// The number of samples: `--samples`, else one per `--labels` entry.
    pub fn sample_count(&self) -> Result<usize> {
        match (self.samples, &self.labels) {
            (Some(n), _) => Ok(n),
            (None, Some(l)) => Ok(l.len()),
            (None, None) => bail!("--samples N is required (or --labels, one sample per label)"),
        }
    }

    fn paths(&self) -> Result<(&Path, &Path)> {
        let gpt = self.gpt.as_deref().context("--gpt CKPT is required")?;
        let vq = self.vq.as_deref().context("--vq CKPT is required")?;
        Ok((gpt, vq))
    }

    /// Run-record fields.
    pub fn record(&self, image_size: i64) -> Vec<(&'static str, Value)> {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| Value::from(p.display().to_string()))
                .unwrap_or(Value::Null)
        };
        vec![
            ("gpt", path(&self.gpt)),
            ("vq", path(&self.vq)),
            ("image_size", Value::from(image_size)),
            (
                "image_size_eval",
                Value::from(self.image_size_eval.unwrap_or(image_size)),
            ),
            ("cfg_scale", Value::from(self.cfg_scale)),
            ("cfg_interval", Value::from(self.cfg_interval)),
            ("temperature", Value::from(self.temperature)),
            ("top_k", Value::from(self.top_k)),
            ("top_p", Value::from(self.top_p)),
            ("seed", Value::from(self.seed)),
            (
                "labels",
                Value::from(self.label_spec().map(|l| l.name()).unwrap_or_default()),
            ),
            (
                "precision",
                Value::from(format!("{:?}", self.precision).to_lowercase()),
            ),
        ]
    }
}

/// Where time went, for the throughput report.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub sampling: Duration,
    pub decoding: Duration,
    pub inception: Duration,
    pub tokens: u64,
    pub images: u64,
}

impl Timing {
    pub fn total(&self) -> Duration {
        self.sampling + self.decoding + self.inception
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.sampling.as_secs_f64().max(1e-9)
    }

    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.total().as_secs_f64().max(1e-9)
    }

    /// One paragraph for the terminal.
    pub fn report(&self) -> String {
        let total = self.total().as_secs_f64().max(1e-9);
        let share = |d: Duration| 100.0 * d.as_secs_f64() / total;
        let mut text = format!(
            "throughput: {} images, {} tokens in {:.1} s: {:.1} tokens/s (sampling), {:.2} images/s\n\
             time: sampling {:.1} s ({:.0}%), decoding {:.1} s ({:.0}%)",
            self.images,
            self.tokens,
            total,
            self.tokens_per_s(),
            self.images_per_s(),
            self.sampling.as_secs_f64(),
            share(self.sampling),
            self.decoding.as_secs_f64(),
            share(self.decoding),
        );
        if !self.inception.is_zero() {
            text.push_str(&format!(
                ", Inception {:.1} s ({:.0}%)",
                self.inception.as_secs_f64(),
                share(self.inception)
            ));
        }
        text.push('\n');
        text
    }

    pub fn record(&self) -> Value {
        json!({
            "images": self.images,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s(),
            "images_per_s": self.images_per_s(),
            "sampling_s": self.sampling.as_secs_f64(),
            "decoding_s": self.decoding.as_secs_f64(),
            "inception_s": self.inception.as_secs_f64(),
        })
    }
}

/// A loaded generator and tokenizer, checked against each other, with the sampling settings.
pub struct Generator {
    _gpt_vs: nn::VarStore,
    pub gpt: Gpt,
    _vq_vs: nn::VarStore,
    pub vq: VqModel,
    pub params: SamplingParams,
    pub seed: u64,
    pub labels: LabelSpec,
    /// Token grid side.
    pub grid: i64,
    pub image_size: i64,
    pub eval_size: i64,
    pub decode_batch: usize,
    pub timing: Timing,
}

/// `_256` / `_384` / `_512` at the end of a released checkpoint's file name.
fn size_from_file_name(path: &Path) -> Option<i64> {
    let stem = path.file_stem()?.to_str()?;
    let last = stem.rsplit('_').next()?;
    last.parse::<i64>()
        .ok()
        .filter(|s| [256, 384, 512].contains(s))
}

impl Generator {
    /// Loads both models and checks everything that can be checked before sampling: label range,
    /// image size against the tokenizer and the checkpoint, codebook size against the vocabulary.
    /// `image_size` is the generation resolution (`--image-size`).
    pub fn new(args: &GenArgs, image_size: i64, device: Device) -> Result<Self> {
        let (gpt_path, vq_path) = args.paths()?;
        let params = args.params();
        params.validate().map_err(anyhow::Error::msg)?;
        let labels = args.label_spec()?;
        let (vq_vs, vq) = VqModel::load(vq_path, device, args.vq_weights)
            .with_context(|| format!("tokenizer {}", vq_path.display()))?;
        let factor = vq.config().downsample_factor();
        if image_size <= 0 || image_size % factor != 0 {
            return Err(GptError::ImageSize {
                image_size,
                detail: format!(
                    "it must be a multiple of the tokenizer's downsampling factor {factor}"
                ),
            }
            .into());
        }
        if let Some(trained) = Gpt::checkpoint_image_size(gpt_path)? {
            if trained != image_size {
                return Err(GptError::ImageSize {
                    image_size,
                    detail: format!(
                        "{} was trained at {trained} px (args.image_size), a {}x{} token grid; \
                         pass --image-size {trained}",
                        gpt_path.display(),
                        trained / factor,
                        trained / factor
                    ),
                }
                .into());
            }
        } else if let Some(named) = size_from_file_name(gpt_path) {
            if named != image_size {
                return Err(GptError::ImageSize {
                    image_size,
                    detail: format!(
                        "{} is named for {named} px ({}x{} tokens); pass --image-size {named} \
                         (and --image-size-eval for the evaluation resolution)",
                        gpt_path.display(),
                        named / factor,
                        named / factor
                    ),
                }
                .into());
            }
        }
        let grid = image_size / factor;
        let heads = HeadChoice {
            model_name: args.gpt_model.clone(),
            n_head: args.n_head,
        };
        let (mut gpt_vs, gpt) = Gpt::load(gpt_path, device, &heads, grid * grid)
            .with_context(|| format!("generator {}", gpt_path.display()))?;
        match args.precision {
            Precision::Fp32 => {}
            Precision::Bf16 => gpt_vs.bfloat16(),
            Precision::Fp16 => gpt_vs.half(),
        }
        let codebook = vq.config().codebook_size;
        if codebook != gpt.config().vocab_size {
            return Err(GptError::VocabMismatch {
                codebook,
                vocab: gpt.config().vocab_size,
            }
            .into());
        }
        if let LabelSpec::Explicit(l) = &labels {
            gpt.check_labels(l)?;
        }
        if params.uses_cfg() && gpt.config().num_classes < 1 {
            bail!(
                "the class embedding has no null-class row: classifier-free guidance is impossible"
            );
        }
        let eval_size = args.image_size_eval.unwrap_or(image_size);
        if eval_size <= 0 {
            bail!("--image-size-eval must be positive");
        }
        Ok(Generator {
            _gpt_vs: gpt_vs,
            gpt,
            _vq_vs: vq_vs,
            vq,
            params,
            seed: args.seed,
            labels,
            grid,
            image_size,
            eval_size,
            decode_batch: usize::try_from(args.decode_batch_size).unwrap_or(1),
            timing: Timing::default(),
        })
    }

    pub fn label(&self, index: u64) -> i64 {
        self.labels
            .label(self.seed, index, self.gpt.config().num_classes)
    }

    pub fn tokens_per_sample(&self) -> i64 {
        self.grid * self.grid
    }

    /// The image tokens of the given samples.
    pub fn tokens(&mut self, indices: &[u64]) -> Result<Vec<Vec<i64>>> {
        let start = Instant::now();
        let labels: Vec<i64> = indices.iter().map(|&i| self.label(i)).collect();
        let out = sampling::generate(&self.gpt, &labels, indices, &self.params, self.seed, false)?;
        self.timing.sampling += start.elapsed();
        self.timing.tokens += (indices.len() as i64 * self.tokens_per_sample()) as u64;
        Ok(out.tokens)
    }

    /// Decoded u8 NHWC images (at the evaluation size) of token sequences, `decode_batch` at a
    /// time.
    pub fn images(&mut self, tokens: &[Vec<i64>]) -> Result<Array4<u8>> {
        let start = Instant::now();
        let s = self.eval_size as usize;
        let mut data = Vec::with_capacity(tokens.len() * s * s * 3);
        for chunk in tokens.chunks(self.decode_batch.max(1)) {
            let flat: Vec<i64> = chunk.concat();
            let indices =
                Tensor::from_slice(&flat).view([chunk.len() as i64, self.grid, self.grid]);
            let pixels = tch::no_grad(|| {
                let decoded = self.vq.decode_code(&indices);
                let decoded = if self.eval_size != self.image_size {
                    decoded.upsample_bicubic2d([self.eval_size, self.eval_size], false, None, None)
                } else {
                    decoded
                };
                vq::to_pixels(&decoded)
            });
            data.extend(Vec::<u8>::try_from(pixels.to_kind(Kind::Uint8).view([-1]))?);
        }
        let images = Array4::from_shape_vec((tokens.len(), s, s, 3), data)?;
        self.timing.decoding += start.elapsed();
        self.timing.images += tokens.len() as u64;
        Ok(images)
    }
}

/// `--shard K/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

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

#[derive(Args, Debug)]
pub struct SampleCommand {
    #[command(flatten)]
    pub gen: GenArgs,
    /// Generation resolution: the token grid is image-size / the tokenizer's downsampling.
    #[arg(long, default_value_t = 256)]
    pub image_size: i64,
    /// Output npz (ADM/LlamaGen layout: arr_0 images, arr_1 labels; shards add `indices`).
    #[arg(long, value_name = "SAMPLES.npz")]
    pub out: PathBuf,
    /// Samples generated together (results do not depend on it).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Produce the samples with indices K, K+N, ... of the N-way split (join with `merge`).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Continue an interrupted run from its progress file (`<out>.progress.json` + `.tokens`).
    #[arg(long)]
    pub resume: bool,
    /// Also write a PNG grid of the first (up to 64) samples.
    #[arg(long, value_name = "grid.png")]
    pub grid: Option<PathBuf>,
    /// Testing aid: stop with an error after this many new samples (simulates a crash).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Settings that must be equal for `--resume` to continue a run (batch size and device are not
/// among them: they do not change the samples).
fn fingerprint(cmd: &SampleCommand, count: usize, tokens_per_sample: i64) -> Value {
    let g = &cmd.gen;
    let file = |p: &Option<PathBuf>| {
        p.as_ref().map(|p| {
            let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            json!({"path": p.display().to_string(), "bytes": len})
        })
    };
    json!({
        "gpt": file(&g.gpt),
        "vq": file(&g.vq),
        "vq_weights": format!("{:?}", g.vq_weights),
        "samples": count,
        "shard": cmd.shard.map(|s| format!("{}/{}", s.index, s.count)),
        "image_size": cmd.image_size,
        "image_size_eval": g.image_size_eval.unwrap_or(cmd.image_size),
        "tokens_per_sample": tokens_per_sample,
        "cfg_scale": g.cfg_scale,
        "cfg_interval": g.cfg_interval,
        "temperature": g.temperature,
        "top_k": g.top_k,
        "top_p": g.top_p,
        "seed": g.seed,
        "labels": g.label_spec().map(|l| l.name()).unwrap_or_default(),
        "precision": format!("{:?}", g.precision),
        "decode_batch_size": g.decode_batch_size,
        "gpt_model": g.gpt_model,
        "n_head": g.n_head,
    })
}

/// The progress of a run: the tokens of its completed samples, appended batch by batch.
struct Progress {
    tokens: File,
    per_sample: usize,
}

impl Progress {
    /// Opens (resume) or starts the progress files; returns the completed samples' tokens.
    fn open(
        out: &Path,
        fingerprint: &Value,
        per_sample: usize,
        resume: bool,
    ) -> Result<(Self, Vec<Vec<i64>>)> {
        let state_path = sibling(out, ".progress.json");
        let tokens_path = sibling(out, ".tokens");
        let mut done = Vec::new();
        if resume && state_path.is_file() && tokens_path.is_file() {
            let state: Value = serde_json::from_str(
                &std::fs::read_to_string(&state_path)
                    .with_context(|| format!("cannot read {}", state_path.display()))?,
            )
            .with_context(|| format!("{}: not a progress file", state_path.display()))?;
            if &state["settings"] != fingerprint {
                bail!(
                    "{} was written with other settings; rerun with the same flags to resume, \
                     or without --resume to start over\n  then: {}\n  now:  {}",
                    state_path.display(),
                    state["settings"],
                    fingerprint
                );
            }
            let mut bytes = Vec::new();
            File::open(&tokens_path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .with_context(|| format!("cannot read {}", tokens_path.display()))?;
            let record = per_sample * 4;
            let complete = bytes.len() / record;
            for chunk in bytes[..complete * record].chunks_exact(record) {
                done.push(
                    chunk
                        .chunks_exact(4)
                        .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                        .collect(),
                );
            }
            let mut tokens = OpenOptions::new()
                .write(true)
                .open(&tokens_path)
                .with_context(|| format!("cannot open {}", tokens_path.display()))?;
            tokens.set_len((complete * record) as u64)?;
            tokens.seek(SeekFrom::End(0))?;
            tracing::info!("resuming after {complete} completed samples");
            return Ok((Progress { tokens, per_sample }, done));
        }
        if resume {
            tracing::warn!(
                "--resume: no progress file {} found, starting from the beginning",
                state_path.display()
            );
        } else if state_path.is_file() {
            tracing::warn!(
                "starting over: {} exists (pass --resume to continue it)",
                state_path.display()
            );
        }
        std::fs::write(
            &state_path,
            serde_json::to_string_pretty(&json!({"settings": fingerprint}))?,
        )
        .with_context(|| format!("cannot write {}", state_path.display()))?;
        let tokens = File::create(&tokens_path)
            .with_context(|| format!("cannot create {}", tokens_path.display()))?;
        Ok((Progress { tokens, per_sample }, done))
    }

    fn append(&mut self, batch: &[Vec<i64>]) -> Result<()> {
        let mut bytes = Vec::with_capacity(batch.len() * self.per_sample * 4);
        for seq in batch {
            for &t in seq {
                bytes.extend_from_slice(&(t as i32).to_le_bytes());
            }
        }
        self.tokens.write_all(&bytes)?;
        self.tokens.sync_data()?;
        Ok(())
    }

    fn remove(out: &Path) {
        let _ = std::fs::remove_file(sibling(out, ".progress.json"));
        let _ = std::fs::remove_file(sibling(out, ".tokens"));
    }
}

/// Writes a PNG grid of u8 NHWC images (2 px black padding, as torchvision's `save_image`).
pub fn write_grid(path: &Path, images: &[ndarray::Array3<u8>]) -> Result<()> {
    if images.is_empty() {
        bail!("no images for the grid");
    }
    let (h, w, _) = images[0].dim();
    let n = images.len();
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let mut canvas = vec![0u8; gw * gh * 3];
    for (i, img) in images.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        let (y0, x0) = (pad + r * (h + pad), pad + c * (w + pad));
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    canvas[((y0 + y) * gw + x0 + x) * 3 + ch] = img[[y, x, ch]];
                }
            }
        }
    }
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), gw as u32, gh as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&canvas)?;
    writer.finish()?;
    Ok(())
}

const GRID_MAX: usize = 64;

pub fn run(cmd: &SampleCommand, quiet: bool) -> Result<()> {
    let count = cmd.gen.sample_count()?;
    let shard = cmd.shard.unwrap_or(Shard { index: 0, count: 1 });
    let indices: Vec<u64> = (shard.index..count)
        .step_by(shard.count)
        .map(|i| i as u64)
        .collect();
    if indices.is_empty() {
        bail!(
            "shard {}/{} of {count} samples is empty",
            shard.index,
            shard.count
        );
    }
    let device = cmd.device.resolve().map_err(anyhow::Error::msg)?;
    let mut generator = Generator::new(&cmd.gen, cmd.image_size, device)?;
    let per_sample = generator.tokens_per_sample() as usize;
    let settings = fingerprint(cmd, count, per_sample as i64);
    let (mut progress, done) = Progress::open(&cmd.out, &settings, per_sample, cmd.resume)?;
    let size = generator.eval_size as usize;
    let mut writer = ImageNpzWriter::create(&cmd.out, indices.len(), size, size)?;
    let batch_size = usize::try_from(cmd.batch_size).unwrap_or(usize::MAX);
    let bar = crate::progress::bar(indices.len(), "sample", "img", quiet);
    let mut grid = Vec::new();
    let mut push = |images: &Array4<u8>, writer: &mut ImageNpzWriter| -> Result<()> {
        for image in images.axis_iter(Axis(0)) {
            writer.push(image)?;
            if grid.len() < GRID_MAX {
                grid.push(image.to_owned());
            }
        }
        bar.inc(images.dim().0 as u64);
        Ok(())
    };
    // Samples finished before an interruption: decoded again from their tokens.
    let resumed = done.len().min(indices.len());
    for chunk in done[..resumed].chunks(batch_size) {
        let images = generator.images(chunk)?;
        push(&images, &mut writer)?;
    }
    let mut new_samples = 0;
    for chunk in indices[resumed..].chunks(batch_size) {
        if let Some(limit) = cmd.stop_after {
            if new_samples >= limit {
                bail!("stopped after {new_samples} new samples (--stop-after)");
            }
        }
        let tokens = generator.tokens(chunk)?;
        progress.append(&tokens)?;
        let images = generator.images(&tokens)?;
        push(&images, &mut writer)?;
        new_samples += chunk.len();
    }
    bar.finish_and_clear();
    let labels: Array1<i64> = indices.iter().map(|&i| generator.label(i)).collect();
    writer.add_array("arr_1", &labels)?;
    if shard.count > 1 {
        let idx: Array1<i64> = indices.iter().map(|&i| i as i64).collect();
        writer.add_array("indices", &idx)?;
    }
    writer.finish()?;
    drop(progress);
    Progress::remove(&cmd.out);
    if let Some(path) = &cmd.grid {
        write_grid(path, &grid)?;
    }
    if !quiet {
        eprintln!(
            "wrote {} ({} images of {size}x{size}{})",
            cmd.out.display(),
            indices.len(),
            if shard.count > 1 {
                format!(", shard {}/{}", shard.index, shard.count)
            } else {
                String::new()
            }
        );
        eprint!("{}", generator.timing.report());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct MergeCommand {
    /// Shard npz files from `sample --shard K/N` (any order), or the feature files `features` made
    /// of them (merged into one feature file in sample order).
    #[arg(required = true, value_name = "SHARDS")]
    pub shards: Vec<PathBuf>,
    /// The joined npz, in sample-index order.
    #[arg(long, value_name = "ALL.npz")]
    pub out: PathBuf,
}

struct ShardReader {
    images: NpzImages,
    indices: Vec<i64>,
    labels: Option<Vec<i64>>,
    next: usize,
    buffer: Option<Array4<u8>>,
    buffer_pos: usize,
}

impl ShardReader {
    fn next_image(&mut self) -> Result<ndarray::Array3<u8>> {
        let exhausted = self
            .buffer
            .as_ref()
            .is_none_or(|b| self.buffer_pos >= b.dim().0);
        if exhausted {
            self.buffer = self.images.next_batch(64)?;
            self.buffer_pos = 0;
        }
        let buffer = self.buffer.as_ref().context("shard ended early")?;
        let image = buffer.index_axis(Axis(0), self.buffer_pos).to_owned();
        self.buffer_pos += 1;
        self.next += 1;
        Ok(image)
    }
}

/// Joins feature files (`features` of each shard) into one, rows in sample-index order when every
/// file carries `indices`, else in the order given. The merged rows are the shards' rows unchanged,
/// so statistics and every metric of the merged file equal those of the features of the merged
/// images.
fn merge_features(cmd: &MergeCommand, quiet: bool) -> Result<()> {
    let sets: Vec<FeatureSet> = cmd
        .shards
        .iter()
        .map(|p| FeatureSet::load(p).with_context(|| format!("feature shard {}", p.display())))
        .collect::<Result<_>>()?;
    let keys = |f: &FeatureSet| [f.pool.is_some(), f.spatial.is_some(), f.logits.is_some()];
    for (set, path) in sets.iter().zip(&cmd.shards).skip(1) {
        if keys(set) != keys(&sets[0]) {
            bail!(
                "{}: holds a different set of features (pool/spatial/logits) than {}",
                path.display(),
                cmd.shards[0].display()
            );
        }
    }
    let with_indices = sets.iter().filter(|s| s.indices.is_some()).count();
    if with_indices != 0 && with_indices != sets.len() {
        bail!("some feature shards carry `indices` and some do not: merge them all with or all without");
    }
    // (sample index, shard, row) in output order.
    let mut order: Vec<(i64, usize, usize)> = Vec::new();
    let mut running = 0i64;
    for (k, set) in sets.iter().enumerate() {
        for row in 0..set.len() {
            let index = set.indices.as_ref().map_or(running, |i| i[row]);
            order.push((index, k, row));
            running += 1;
        }
    }
    if with_indices > 0 {
        order.sort_unstable();
        if let Some(w) = order.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!("sample index {} is in more than one feature shard", w[0].0);
        }
    }
    let gather = |pick: fn(&FeatureSet) -> Option<&Array2<f32>>| -> Result<Option<Array2<f32>>> {
        let Some(first) = pick(&sets[0]) else {
            return Ok(None);
        };
        let dim = first.ncols();
        let mut out = Array2::<f32>::zeros((order.len(), dim));
        for (row_out, &(_, k, row)) in order.iter().enumerate() {
            let source = pick(&sets[k]).context("feature present in every shard")?;
            if source.ncols() != dim {
                bail!(
                    "{}: features of width {}, the first shard has {dim}",
                    cmd.shards[k].display(),
                    source.ncols()
                );
            }
            out.row_mut(row_out).assign(&source.row(row));
        }
        Ok(Some(out))
    };
    let merged = FeatureSet {
        pool: gather(|f| f.pool.as_ref())?,
        spatial: gather(|f| f.spatial.as_ref())?,
        logits: gather(|f| f.logits.as_ref())?,
        indices: (with_indices > 0).then(|| order.iter().map(|&(i, _, _)| i).collect()),
    };
    merged.save(&cmd.out)?;
    if !quiet {
        eprintln!(
            "merged features of {} samples into {}",
            merged.len(),
            cmd.out.display()
        );
    }
    Ok(())
}

pub fn run_merge(cmd: &MergeCommand, quiet: bool) -> Result<()> {
    let names = super::npz_entry_names(&cmd.shards[0])?;
    if !names.iter().any(|n| n == "arr_0")
        && names
            .iter()
            .any(|n| matches!(n.as_str(), "pool" | "spatial" | "logits"))
    {
        return merge_features(cmd, quiet);
    }
    let mut shards = Vec::new();
    let mut size = None;
    let mut offset = 0i64;
    for path in &cmd.shards {
        let images = NpzImages::open(path, 64)?;
        let n = images.len();
        let indices = match super::read_i64(path, "indices")? {
            Some(i) => i,
            None => {
                // An unsharded file: its samples are 0..n (or follow the previous file's).
                let i: Vec<i64> = (offset..offset + n as i64).collect();
                tracing::info!("{} has no `indices`: taking {offset}..", path.display());
                i
            }
        };
        offset = offset.max(indices.iter().copied().max().map_or(0, |m| m + 1));
        if indices.len() != n {
            bail!(
                "{}: {} indices for {n} images",
                path.display(),
                indices.len()
            );
        }
        if indices.windows(2).any(|w| w[0] >= w[1]) {
            bail!("{}: `indices` is not increasing", path.display());
        }
        let labels = super::read_i64(path, "arr_1")?;
        if let Some(l) = &labels {
            if l.len() != n {
                bail!("{}: {} labels for {n} images", path.display(), l.len());
            }
        }
        let s = images.image_size();
        if *size.get_or_insert(s) != s {
            bail!(
                "{}: images of {s:?}, the other shards have {:?}",
                path.display(),
                size.unwrap_or_default()
            );
        }
        shards.push(ShardReader {
            images,
            indices,
            labels,
            next: 0,
            buffer: None,
            buffer_pos: 0,
        });
    }
    let with_labels = shards.iter().all(|s| s.labels.is_some());
    let mut all: Vec<i64> = shards.iter().flat_map(|s| s.indices.clone()).collect();
    all.sort_unstable();
    if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
        bail!("sample index {} is in more than one shard", w[0]);
    }
    let total = all.len();
    let complete = all.iter().enumerate().all(|(i, &v)| v == i as i64);
    if !complete {
        tracing::warn!(
            "the shards do not cover 0..{total}: writing their samples in index order, with `indices`"
        );
    }
    let (h, w) = size.context("no shards")?;
    let mut writer = ImageNpzWriter::create(&cmd.out, total, h, w)?;
    let mut labels = Vec::with_capacity(total);
    let bar = crate::progress::bar(total, "merge", "img", quiet);
    for _ in 0..total {
        let (k, _) = shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.next < s.indices.len())
            .min_by_key(|(_, s)| s.indices[s.next])
            .context("shards ended early")?;
        let shard = &mut shards[k];
        if let Some(l) = &shard.labels {
            labels.push(l[shard.next]);
        }
        let image = shard.next_image()?;
        writer.push(image.view())?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if with_labels {
        writer.add_array("arr_1", &Array1::from(labels))?;
    }
    if !complete {
        writer.add_array("indices", &Array1::from(all))?;
    }
    writer.finish()?;
    if !quiet {
        eprintln!(
            "wrote {} ({total} images from {} shards)",
            cmd.out.display(),
            cmd.shards.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse() {
        assert_eq!("1/4".parse(), Ok(Shard { index: 1, count: 4 }));
        assert!("4/4".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
    }

    #[test]
    fn sizes_come_from_released_names() {
        assert_eq!(size_from_file_name(Path::new("c2i_L_384.pt")), Some(384));
        assert_eq!(
            size_from_file_name(Path::new("dir/c2i_B_256.pt")),
            Some(256)
        );
        assert_eq!(size_from_file_name(Path::new("gpt_public.pt")), None);
    }
}
