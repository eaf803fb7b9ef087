//! A LlamaGen class-conditional generator and its tokenizer as an image source: sample i is
//! generated from `(seed, i, its label)` alone, decoded as LlamaGen's `sample_c2i_ddp.py` does
//! (`decode_code`, then, when the evaluated size differs, torch's bicubic interpolation
//! (`align_corners=False`, no antialiasing), then `clamp(127.5 x + 128, 0, 255)` truncated to u8),
//! and streamed into the same stages as images read from files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ndarray::Array4;
use serde_json::{json, Map, Value};
use tch::{nn, Device, Kind, Tensor};

use super::journal::StreamSpec;
use super::pass::crash_point;
use crate::data::{DataError, ImageSource};
use crate::device::DeviceChoice;
use crate::models::gpt::{Gpt, GptError, HeadChoice};
use crate::models::vq::{self, VqModel, VqWeights};
use crate::sampling::{self, LabelSpec, SamplingParams};

/// The dtype the generator runs in (the tokenizer runs in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// bf16 on CUDA (how LlamaGen samples), fp32 on the CPU (where bf16 matrix products are slow
    /// and reference runs are fp32).
    #[default]
    Auto,
    /// float32.
    Fp32,
    /// bfloat16 (LlamaGen's sampling dtype).
    Bf16,
    /// float16.
    Fp16,
}

impl Precision {
    /// The dtype `Auto` stands for on `device`; the others stand for themselves.
    pub fn resolve(self, device: Device) -> Precision {
        match self {
            Precision::Auto if device.is_cuda() => Precision::Bf16,
            Precision::Auto => Precision::Fp32,
            other => other,
        }
    }

    /// The name used in run records (`fp32`, `bf16`, `fp16`; `auto` before it is resolved).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

/// Everything that defines a generator and how it samples.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// LlamaGen c2i GPT checkpoint.
    pub gpt: PathBuf,
    /// The VQ tokenizer the GPT was trained with.
    pub vq: PathBuf,
    /// Which tokenizer weights of a training checkpoint.
    pub vq_weights: VqWeights,
    /// Generation resolution: the token grid is this over the tokenizer's downsampling factor.
    pub image_size: i64,
    /// Resolution of the produced images (bicubic resize); `None`: `image_size`.
    pub image_size_eval: Option<i64>,
    /// CFG, temperature, top-k, top-p.
    pub sampling: SamplingParams,
    /// Sample i depends only on (seed, i, its label).
    pub seed: u64,
    /// Class labels of the samples.
    pub labels: LabelSpec,
    /// The generator's dtype.
    pub precision: Precision,
    /// Head count when the checkpoint does not fix it.
    pub heads: HeadChoice,
    /// Images the tokenizer decodes at once (1 makes every image independent of batching).
    pub decode_batch_size: usize,
    /// Where the models run.
    pub device: DeviceChoice,
}

impl GeneratorConfig {
    /// The evaluated (output) image size.
    pub fn eval_size(&self) -> i64 {
        self.image_size_eval.unwrap_or(self.image_size)
    }

    /// The settings that decide the samples, for run records and resume fingerprints (the
    /// checkpoints by path and size; batch sizes and device do not change the tokens).
    pub fn fingerprint(&self) -> Map<String, Value> {
        let file = |p: &Path| {
            let bytes = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            json!({"path": p.display().to_string(), "bytes": bytes})
        };
        let mut m = Map::new();
        m.insert("gpt".into(), file(&self.gpt));
        m.insert("vq".into(), file(&self.vq));
        m.insert("vq_weights".into(), json!(format!("{:?}", self.vq_weights)));
        m.insert("image_size".into(), json!(self.image_size));
        m.insert("image_size_eval".into(), json!(self.eval_size()));
        m.insert("cfg_scale".into(), json!(self.sampling.cfg_scale));
        m.insert("cfg_interval".into(), json!(self.sampling.cfg_interval));
        m.insert("temperature".into(), json!(self.sampling.temperature));
        m.insert("top_k".into(), json!(self.sampling.top_k));
        m.insert("top_p".into(), json!(self.sampling.top_p));
        m.insert("seed".into(), json!(self.seed));
        m.insert("labels".into(), json!(self.labels.name()));
        m.insert("precision".into(), json!(self.precision.name()));
        m.insert("decode_batch_size".into(), json!(self.decode_batch_size));
        m.insert("gpt_model".into(), json!(self.heads.model_name));
        m.insert("n_head".into(), json!(self.heads.n_head));
        m
    }

    /// Run-record fields (as `fid --gpt` has always written them).
    pub fn record(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("gpt", Value::from(self.gpt.display().to_string())),
            ("vq", Value::from(self.vq.display().to_string())),
            ("image_size", Value::from(self.image_size)),
            ("image_size_eval", Value::from(self.eval_size())),
            ("cfg_scale", Value::from(self.sampling.cfg_scale)),
            ("cfg_interval", Value::from(self.sampling.cfg_interval)),
            ("temperature", Value::from(self.sampling.temperature)),
            ("top_k", Value::from(self.sampling.top_k)),
            ("top_p", Value::from(self.sampling.top_p)),
            ("seed", Value::from(self.seed)),
            ("labels", Value::from(self.labels.name())),
            ("precision", Value::from(self.precision.name())),
        ]
    }
}

/// Where time went, for the throughput report.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    /// Token sampling.
    pub sampling: Duration,
    /// Tokenizer decoding (and the resize).
    pub decoding: Duration,
    /// Inception features of the generated images.
    pub inception: Duration,
    /// Tokens sampled.
    pub tokens: u64,
    /// Images decoded.
    pub images: u64,
}

impl Timing {
    /// Sampling + decoding + Inception.
    pub fn total(&self) -> Duration {
        self.sampling + self.decoding + self.inception
    }

    /// Tokens per second of sampling.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.sampling.as_secs_f64().max(1e-9)
    }

    /// Images per second overall.
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

    /// The `throughput` object of the run record.
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
    gpt: Gpt,
    _vq_vs: nn::VarStore,
    vq: VqModel,
    config: GeneratorConfig,
    /// Token grid side.
    grid: i64,
    /// Time spent so far.
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
    pub fn new(config: &GeneratorConfig) -> Result<Self> {
        let device = config.device.resolve().map_err(anyhow::Error::msg)?;
        Self::on(config, device)
    }

    fn on(config: &GeneratorConfig, device: Device) -> Result<Self> {
        let (gpt_path, vq_path) = (config.gpt.as_path(), config.vq.as_path());
        let image_size = config.image_size;
        config
            .sampling
            .validate()
            .map_err(GptError::BadConfig)
            .context("sampling settings")?;
        let (vq_vs, vq) = VqModel::load(vq_path, device, config.vq_weights)
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
        let trained = match Gpt::checkpoint_image_size(gpt_path)? {
            Some(trained) => Some((trained, "was trained at")),
            None => size_from_file_name(gpt_path).map(|named| (named, "is named for")),
        };
        if let Some((size, how)) = trained.filter(|(size, _)| *size != image_size) {
            return Err(GptError::ImageSize {
                image_size,
                detail: format!(
                    "{} {how} {size} px ({}x{} tokens); generate at {size} px (and resize to the \
                     evaluation size with the evaluated-size setting)",
                    gpt_path.display(),
                    size / factor,
                    size / factor
                ),
            }
            .into());
        }
        let grid = image_size / factor;
        let (mut gpt_vs, gpt) = Gpt::load(gpt_path, device, &config.heads, grid * grid)
            .with_context(|| format!("generator {}", gpt_path.display()))?;
        // Resume fingerprints and run records hold the dtype the samples were made in.
        let precision = config.precision.resolve(device);
        match precision {
            Precision::Auto | Precision::Fp32 => {}
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
        if let LabelSpec::Explicit(labels) = &config.labels {
            if labels.is_empty() {
                bail!("the list of class labels is empty");
            }
            gpt.check_labels(labels)?;
        }
        if config.sampling.uses_cfg() && gpt.config().num_classes < 1 {
            bail!(
                "the class embedding has no null-class row: classifier-free guidance is impossible"
            );
        }
        if config.eval_size() <= 0 {
            bail!(
                "the evaluated image size must be positive, got {}",
                config.eval_size()
            );
        }
        tracing::info!(
            "generator {} ({}) and tokenizer {} loaded on {}",
            gpt_path.display(),
            precision.name(),
            vq_path.display(),
            crate::device::describe(device)
        );
        Ok(Generator {
            _gpt_vs: gpt_vs,
            gpt,
            _vq_vs: vq_vs,
            vq,
            config: GeneratorConfig {
                precision,
                ..config.clone()
            },
            grid,
            timing: Timing::default(),
        })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Changes the CFG scale of later samples (a sweep reuses the loaded models).
    pub fn set_cfg_scale(&mut self, scale: f64) -> Result<()> {
        let mut sampling = self.config.sampling;
        sampling.cfg_scale = scale;
        sampling.validate().map_err(GptError::BadConfig)?;
        if sampling.uses_cfg() && self.gpt.config().num_classes < 1 {
            bail!(
                "the class embedding has no null-class row: classifier-free guidance is impossible"
            );
        }
        self.config.sampling = sampling;
        Ok(())
    }

    /// The class label of sample `index`.
    pub fn label(&self, index: u64) -> i64 {
        self.config
            .labels
            .label(self.config.seed, index, self.gpt.config().num_classes)
    }

    /// Image tokens per sample.
    pub fn tokens_per_sample(&self) -> usize {
        (self.grid * self.grid) as usize
    }

    /// Side of the produced images.
    pub fn eval_size(&self) -> usize {
        self.config.eval_size() as usize
    }

    /// The image tokens of the given samples.
    pub fn tokens(&mut self, indices: &[u64]) -> Result<Vec<Vec<i64>>> {
        let start = Instant::now();
        let labels: Vec<i64> = indices.iter().map(|&i| self.label(i)).collect();
        let out = sampling::generate(
            &self.gpt,
            &labels,
            indices,
            &self.config.sampling,
            self.config.seed,
            false,
        )?;
        self.timing.sampling += start.elapsed();
        self.timing.tokens += (indices.len() * self.tokens_per_sample()) as u64;
        Ok(out.tokens)
    }

    /// Decoded u8 NHWC images (at the evaluated size) of token sequences, `decode_batch_size` at
    /// a time.
    pub fn images(&mut self, tokens: &[Vec<i64>]) -> Result<Array4<u8>> {
        let start = Instant::now();
        let s = self.eval_size();
        let (image_size, eval_size) = (self.config.image_size, self.config.eval_size());
        let mut data = Vec::with_capacity(tokens.len() * s * s * 3);
        for chunk in tokens.chunks(self.config.decode_batch_size.max(1)) {
            let flat: Vec<i64> = chunk.concat();
            let indices =
                Tensor::from_slice(&flat).view([chunk.len() as i64, self.grid, self.grid]);
            let pixels = tch::no_grad(|| {
                let decoded = self.vq.decode_code(&indices);
                let decoded = if eval_size != image_size {
                    decoded.upsample_bicubic2d([eval_size, eval_size], false, None, None)
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

    /// The samples with `indices` as an image source (sampling batch by batch as it is read).
    pub fn source(&mut self, indices: Vec<u64>) -> GeneratedImages<'_> {
        GeneratedImages {
            generator: self,
            indices,
            position: 0,
            last_tokens: Vec::new(),
        }
    }
}

/// Generated samples as an [`ImageSource`]: each batch read is sampled and decoded; its tokens are
/// journaled, so a resumed run decodes finished samples again instead of sampling them.
pub struct GeneratedImages<'g> {
    generator: &'g mut Generator,
    indices: Vec<u64>,
    position: usize,
    last_tokens: Vec<Vec<i64>>,
}

impl GeneratedImages<'_> {
    fn tokens_from_records(&self, count: usize, records: &[Vec<u8>]) -> Result<Vec<Vec<i64>>> {
        let per = self.generator.tokens_per_sample();
        let bytes = records.first().context("journaled tokens")?;
        anyhow::ensure!(
            bytes.len() == count * per * 4,
            "journaled tokens: wrong length"
        );
        let tokens: Vec<Vec<i64>> = bytes
            .chunks_exact(per * 4)
            .map(|sample| {
                sample
                    .chunks_exact(4)
                    .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect()
            })
            .collect();
        // A damaged journal must not reach libtorch's indexing (which aborts the process).
        let vocab = self.generator.gpt.config().vocab_size;
        if let Some(bad) = tokens.iter().flatten().find(|&&t| t < 0 || t >= vocab) {
            bail!(
                "the journal holds token {bad}, outside the codebook (0..{vocab}): it is damaged; \
                 start over without resuming"
            );
        }
        Ok(tokens)
    }

    fn data_error(&self, e: anyhow::Error) -> DataError {
        DataError::invalid(self.describe(), format!("{e:#}"))
    }
}

impl ImageSource for GeneratedImages<'_> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn image_size(&self) -> (usize, usize) {
        let s = self.generator.eval_size();
        (s, s)
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<Array4<u8>>, DataError> {
        let end = (self.position + max).min(self.indices.len());
        if end == self.position {
            return Ok(None);
        }
        let chunk = self.indices[self.position..end].to_vec();
        let tokens = self
            .generator
            .tokens(&chunk)
            .map_err(|e| self.data_error(e))?;
        crash_point("sampled");
        let images = self
            .generator
            .images(&tokens)
            .map_err(|e| self.data_error(e))?;
        crash_point("decoded");
        self.last_tokens = tokens;
        self.position = end;
        Ok(Some(images))
    }

    fn describe(&self) -> String {
        format!("samples of {}", self.generator.config.gpt.display())
    }

    fn index_of(&self, position: usize) -> u64 {
        self.indices[position]
    }

    fn journal_streams(&self) -> Vec<StreamSpec> {
        vec![StreamSpec::new(
            "tokens",
            self.generator.tokens_per_sample() * 4,
        )]
    }

    fn batch_records(&mut self) -> Vec<Vec<u8>> {
        let mut bytes = Vec::new();
        for &t in self.last_tokens.iter().flatten() {
            bytes.extend_from_slice(&(t as i32).to_le_bytes());
        }
        vec![bytes]
    }

    fn replay(&mut self, count: usize, records: &[Vec<u8>]) -> Result<Array4<u8>, DataError> {
        let tokens = self
            .tokens_from_records(count, records)
            .map_err(|e| self.data_error(e))?;
        let images = self
            .generator
            .images(&tokens)
            .map_err(|e| self.data_error(e))?;
        self.position += count;
        Ok(images)
    }

    fn skip(&mut self, count: usize, _records: &[Vec<u8>]) -> Result<(), DataError> {
        self.position += count;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
