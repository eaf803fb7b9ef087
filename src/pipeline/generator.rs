//! A LlamaGen generator (class-conditional, or text-conditional on a caption set) and its
//! tokenizer as an image source: sample i is generated from `(seed, i, its label or caption)`
//! alone, decoded as LlamaGen's `sample_c2i_ddp.py` does
//! (`decode_code`, then, when the evaluated size differs, torch's bicubic interpolation
//! (`align_corners=False`, no antialiasing), then `clamp(127.5 x + 128, 0, 255)` truncated to u8),
//! and streamed into the same stages as images read from files.
//!
//! # Batches
//! Samples are generated `generation` at a time and decoded `decode` at a time ([`Batches`]). A
//! batch with fewer samples (the last one, or a decode chunk at the end of a batch) is padded to
//! full size by repeating its last sample, and the padding is thrown away: every sample is
//! computed in the same kernel configuration, so the generation batch size changes no token.
//! Convolution arithmetic does depend on the decode batch shape (a pixel value may move by 1), so
//! the decode batch is part of the resume fingerprint; within one shape, a row's pixels do not
//! depend on the other rows.
//!
//! # Overlap
//! With `overlap`, generation runs as a three-stage pipeline: the GPT half of the generator
//! ([`Sampler`]) moves to a sampling thread that samples batch b+2 while the tokenizer half
//! ([`Decoder`]) decodes batch b+1 on a decoding thread and the pass's thread runs the stages
//! (Inception, the npz writer) on batch b. Batches go through channels of capacity 1, so each
//! thread is at most one batch ahead of the next stage. tch tensors are `Send` but not `Sync`, so
//! the networks cannot be shared: each is moved into its thread and handed back when the thread
//! ends (dropping the source stops both threads after their current batches and takes the
//! networks back). Tokens are journaled per committed batch exactly as without overlap, and the
//! `sampled` and `decoded` crash points fire when the pass's thread takes a batch, in both
//! modes, so a killed run resumes the same way.
//!
//! On CUDA, tch exposes no stream API: the threads enqueue their kernels on the device's default
//! stream, where they run one after another, never concurrently. The overlap still pays on a GPU
//! because sampling is launch-bound: a token step is dozens of small kernels (a layer's worth of
//! matrix-vector products, then the filters and the draw), whose host-side launch and dispatch
//! cost leaves the device idle between them, and the decoder's and Inception's large kernels,
//! queued by the other threads, fill those gaps.
//!
//! On the CPU the threads share the cores: each thread that runs tensor work gets its own OpenMP
//! team of `tch::get_num_threads()` workers. `tch::set_num_threads` is per thread (it sizes the
//! calling thread's team, and sets the default of threads that start tensor work later), so the
//! sampling and decoding threads run with the count of the thread that created them, and
//! overlapped and sequential runs compute every token, pixel and feature with the same
//! arithmetic: identical results (the decoder's and Inception's arithmetic depends on their
//! thread count). What the pipeline gains on the CPU is the cores' idle time: each stage leaves
//! some (serial stretches between parallel regions, small operations the OpenMP team cannot
//! split), and with more teams than cores libgomp throttles its spin-waiting, so another stage's
//! work fills it. Decoding on the sampling thread instead (two stages) gained less: on the demo
//! models Inception is 90% of the work, and the decoder is what runs beside it.

use crate::choice::{choice_enum, Choice};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ndarray::Array4;
use serde_json::{json, Map, Value};
use tch::{nn, Device, Kind, Tensor};

use super::batch::{self, BatchSize};
use super::pass::crash_point;
use super::timing::{Batches, Timing};
use crate::captions::{CaptionEmbeddings, CaptionSet};
use crate::data::{DataError, ImageSource};
use crate::device::DeviceChoice;
use crate::journal::StreamSpec;
use crate::models::gpt::{Condition, Gpt, GptConfig, GptError, HeadChoice};
use crate::models::vq::{self, VqConfig, VqModel, VqWeights};
use crate::sampling::{self, Conditioning, Conditions, LabelSpec, SamplingParams};

choice_enum! {
    /// The dtype the generator runs in (the tokenizer runs in f32).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum Precision: "precision" {
        /// bf16 on CUDA (how LlamaGen samples), fp32 on the CPU (where bf16 matrix products are
        /// slow and reference runs are fp32).
        #[default]
        Auto => ("auto", "bf16 on CUDA (LlamaGen's sampling dtype), fp32 on the CPU"),
        /// float32.
        Fp32 => ("fp32", "float32"),
        /// bfloat16 (LlamaGen's sampling dtype).
        Bf16 => ("bf16", "bfloat16"),
        /// float16.
        Fp16 => ("fp16", "float16"),
    }
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
        self.choice_name()
    }
}

/// Everything that defines a generator and how it samples.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// LlamaGen GPT checkpoint (c2i or t2i).
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
    /// Sample i depends only on (seed, i, its label or caption).
    pub seed: u64,
    /// Class labels (c2i) or captions (t2i) of the samples.
    pub conditioning: Conditioning,
    /// The generator's dtype.
    pub precision: Precision,
    /// Head count when the checkpoint does not fix it.
    pub heads: HeadChoice,
    /// Images the tokenizer decodes at once; `None`: the generation batch size (or, when
    /// resuming, the interrupted run's decode batch).
    pub decode_batch_size: Option<usize>,
    /// Where the models run.
    pub device: DeviceChoice,
}

/// The largest evaluated image side ([`GeneratorConfig::image_size_eval`]).
pub const MAX_IMAGE_SIZE: i64 = 8192;

impl GeneratorConfig {
    /// Checks what can be checked without loading anything: the evaluated size is between 1 and
    /// [`MAX_IMAGE_SIZE`]. [`Generator::new`] checks it too.
    pub fn check(&self) -> Result<()> {
        if let Some(size) = self.image_size_eval {
            if !(1..=MAX_IMAGE_SIZE).contains(&size) {
                bail!(
                    "--image-size-eval {size}: the evaluated size must be between 1 and {MAX_IMAGE_SIZE} pixels (LlamaGen evaluates at 256)"
                );
            }
        }
        Ok(())
    }

    /// The evaluated (output) image size.
    pub fn eval_size(&self) -> i64 {
        self.image_size_eval.unwrap_or(self.image_size)
    }

    /// The sampling settings, as both the fingerprint and the run record name them (one list,
    /// so the two cannot drift apart).
    fn sampling_fields(&self) -> [(&'static str, Value); 9] {
        [
            ("image_size", json!(self.image_size)),
            ("image_size_eval", json!(self.eval_size())),
            ("cfg_scale", json!(self.sampling.cfg_scale)),
            ("cfg_interval", json!(self.sampling.cfg_interval)),
            ("temperature", json!(self.sampling.temperature)),
            ("top_k", json!(self.sampling.top_k)),
            ("top_p", json!(self.sampling.top_p)),
            ("seed", json!(self.seed)),
            ("labels", json!(self.conditioning.name())),
        ]
    }

    /// The settings that decide the samples, for run records and resume fingerprints (the
    /// checkpoints by path, size and content sha256, hashed once per process; the effective
    /// `decode_batch`, whose shape changes the decoder's rounding; the generation batch size and
    /// the device do not change the tokens).
    pub fn fingerprint(&self, decode_batch: usize) -> Map<String, Value> {
        let file = |p: &Path| {
            let bytes = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            // An unreadable file fails its load, with the reason, before any work.
            let sha256 = crate::io::content_sha256(p).unwrap_or_default();
            json!({"path": p.display().to_string(), "bytes": bytes, "sha256": sha256})
        };
        let mut m = Map::new();
        m.insert("gpt".into(), file(&self.gpt));
        m.insert("vq".into(), file(&self.vq));
        m.insert("vq_weights".into(), json!(format!("{:?}", self.vq_weights)));
        m.extend(self.sampling_fields().map(|(k, v)| (k.to_owned(), v)));
        if let Some(captions) = self.conditioning.captions() {
            m.insert("caption_embeddings".into(), captions.fingerprint());
        }
        m.insert("precision".into(), json!(self.precision.name()));
        m.insert("decode_batch_size".into(), json!(decode_batch));
        // Whether the decode batch was asked for: then every rank of a job must share it (see
        // `dist::job_settings`); otherwise it follows each rank's own batch choice.
        m.insert(
            "decode_batch_size_given".into(),
            json!(self.decode_batch_size.is_some()),
        );
        m.insert("gpt_model".into(), json!(self.heads.model_name));
        m.insert("n_head".into(), json!(self.heads.n_head));
        m
    }

    /// Run-record fields (as `fid --gpt` has always written them; with captions also the caption
    /// file, the caption count, how many were embedded and the texts when known).
    pub fn record(&self) -> Vec<(&'static str, Value)> {
        let mut fields = vec![
            ("gpt", Value::from(self.gpt.display().to_string())),
            ("vq", Value::from(self.vq.display().to_string())),
        ];
        fields.extend(self.sampling_fields());
        fields.push(("precision", Value::from(self.precision.name())));
        if let Some(captions) = self.conditioning.captions() {
            fields.push((
                "captions_file",
                Value::from(captions.source().display().to_string()),
            ));
            fields.push(("n_captions", Value::from(captions.len())));
            fields.push(("captions_embedded", Value::from(captions.embedded_count())));
            if let Some(texts) = captions.texts() {
                fields.push(("captions", json!(texts)));
            }
        }
        fields
    }
}

/// The GPT half of a generator: the network and its weights, and the caption embeddings of a t2i
/// run.
struct Sampler {
    _vs: nn::VarStore,
    gpt: Gpt,
    captions: Option<CaptionEmbeddings>,
}

/// The tokenizer half of a generator: token grids to u8 images at the evaluated size.
struct Decoder {
    _vs: nn::VarStore,
    vq: VqModel,
    /// Token grid side.
    grid: i64,
    image_size: i64,
    eval_size: i64,
}

/// Both networks of a generator. While a run overlaps, each moves to its own thread, and they
/// come back when the run ends.
struct Networks {
    sampler: Sampler,
    decoder: Decoder,
}

/// One generation batch, padded to the batch size by repeating its last sample; the first `real`
/// rows are kept. `conditions[b]`: the class label, or the caption index, of sample `indices[b]`.
struct Batch {
    indices: Vec<u64>,
    conditions: Vec<i64>,
    real: usize,
}

impl Batch {
    fn padded(indices: &[u64], conditions: &[i64], size: usize) -> Self {
        let real = indices.len();
        let pad = size.saturating_sub(real);
        let mut batch = Batch {
            indices: indices.to_vec(),
            conditions: conditions.to_vec(),
            real,
        };
        if let (Some(&index), Some(&condition)) = (indices.last(), conditions.last()) {
            batch.indices.extend(std::iter::repeat_n(index, pad));
            batch.conditions.extend(std::iter::repeat_n(condition, pad));
        }
        batch
    }
}

/// A generated batch: its real samples' tokens and images, and how long each half took.
struct Produced {
    tokens: Vec<Vec<i64>>,
    images: Array4<u8>,
    sampling: Duration,
    decoding: Duration,
}

impl Sampler {
    /// The real samples' tokens of one batch.
    fn sample(&self, batch: &Batch, params: &SamplingParams, seed: u64) -> Result<Vec<Vec<i64>>> {
        let generated = match &self.captions {
            None => sampling::generate(
                &self.gpt,
                &batch.conditions,
                &batch.indices,
                params,
                seed,
                false,
            ),
            Some(captions) => {
                let chosen: Vec<usize> = batch.conditions.iter().map(|&c| c as usize).collect();
                let (embeddings, masks) = captions.batch(&chosen)?;
                sampling::generate_conditioned(
                    &self.gpt,
                    Conditions::Captions {
                        embeddings: &embeddings,
                        masks: &masks,
                    },
                    &batch.indices,
                    params,
                    seed,
                    false,
                )
            }
        };
        let mut out = generated.with_context(|| {
            format!(
                "sampling samples {}..={}",
                batch.indices.first().copied().unwrap_or_default(),
                batch.indices[..batch.real]
                    .last()
                    .copied()
                    .unwrap_or_default()
            )
        })?;
        out.tokens.truncate(batch.real);
        Ok(out.tokens)
    }
}

impl Decoder {
    /// Decoded u8 NHWC images (at the evaluated size) of token sequences, `decode` at a time; a
    /// short chunk is padded to the full decode batch with copies of its last sequence.
    fn images(&self, tokens: &[Vec<i64>], decode: usize) -> Result<Array4<u8>> {
        let s = self.eval_size as usize;
        let mut data = Vec::with_capacity(tokens.len() * s * s * 3);
        for chunk in tokens.chunks(decode) {
            let mut flat: Vec<i64> = chunk.concat();
            if let Some(last) = chunk.last() {
                for _ in chunk.len()..decode {
                    flat.extend_from_slice(last);
                }
            }
            let indices = Tensor::from_slice(&flat).view([decode as i64, self.grid, self.grid]);
            let pixels = tch::no_grad(|| {
                let decoded = self
                    .vq
                    .decode_code(&indices)
                    .narrow(0, 0, chunk.len() as i64);
                let decoded = if self.eval_size != self.image_size {
                    decoded.upsample_bicubic2d([self.eval_size, self.eval_size], false, None, None)
                } else {
                    decoded
                };
                vq::to_pixels(&decoded)
            });
            data.extend(Vec::<u8>::try_from(pixels.to_kind(Kind::Uint8).view([-1]))?);
        }
        Ok(Array4::from_shape_vec((tokens.len(), s, s, 3), data)?)
    }
}

/// A sampled batch on its way to the decoder.
struct Sampled {
    tokens: Vec<Vec<i64>>,
    elapsed: Duration,
}

impl Sampled {
    /// Samples one batch, timed.
    fn sample(
        sampler: &Sampler,
        batch: &Batch,
        params: &SamplingParams,
        seed: u64,
    ) -> Result<Self> {
        let start = Instant::now();
        let tokens = sampler.sample(batch, params, seed)?;
        Ok(Sampled {
            tokens,
            elapsed: start.elapsed(),
        })
    }

    /// Decodes the batch, timed.
    fn decode(self, decoder: &Decoder, decode: usize) -> Result<Produced> {
        let start = Instant::now();
        let images = decoder.images(&self.tokens, decode)?;
        Ok(Produced {
            tokens: self.tokens,
            images,
            sampling: self.elapsed,
            decoding: start.elapsed(),
        })
    }
}

/// The two threads of an overlapped run: one samples, one decodes, each at most one batch ahead
/// of the next stage. They own the networks until they end.
struct GenerationThreads {
    receiver: Receiver<Result<Produced>>,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<Sampler>,
    decoder: JoinHandle<Decoder>,
}

impl GenerationThreads {
    fn spawn(
        networks: Networks,
        batches: VecDeque<Batch>,
        params: SamplingParams,
        seed: u64,
        decode: usize,
    ) -> std::io::Result<Self> {
        let Networks { sampler, decoder } = networks;
        // Capacity 1: each thread runs at most one batch ahead of the next stage.
        let (token_sender, token_receiver) = mpsc::sync_channel(1);
        let (image_sender, receiver) = mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        // Each thread sizes its own OpenMP team before its first tensor operation: a thread's
        // team otherwise starts at the process default (every core, or OMP_NUM_THREADS), and
        // libtorch resizes it only at its first parallel loop — a oneDNN convolution before that
        // runs wide, with other rounding than the same count set through the launcher.
        let threads = tch::get_num_threads();
        let sampler = std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                tch::set_num_threads(threads);
                sample_all(&sampler, batches, &params, seed, &token_sender, &stopped);
                sampler
            })?;
        let decoder = std::thread::Builder::new()
            .name("decoder".into())
            .spawn(move || {
                tch::set_num_threads(threads);
                decode_all(&decoder, decode, &token_receiver, &image_sender);
                decoder
            })?;
        Ok(GenerationThreads {
            receiver,
            stop,
            sampler,
            decoder,
        })
    }

    /// Stops the threads after their current batches and takes the networks back; the panic
    /// messages if a thread panicked.
    fn finish(self) -> Result<Networks, String> {
        self.stop.store(true, Ordering::Relaxed);
        // A thread blocked on a full channel wakes up with an error once its receiver is gone:
        // the decoder's ends first, and the sampler's with it.
        drop(self.receiver);
        let decoder = self.decoder.join().map_err(panic_message);
        let sampler = self.sampler.join().map_err(panic_message);
        match (sampler, decoder) {
            (Ok(sampler), Ok(decoder)) => Ok(Networks { sampler, decoder }),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// The sampling thread's loop: samples each batch and sends its tokens, until the batches run
/// out, a batch fails (its error is sent), the receiver is dropped, or `stop` is set.
fn sample_all(
    sampler: &Sampler,
    batches: VecDeque<Batch>,
    params: &SamplingParams,
    seed: u64,
    sender: &SyncSender<Result<Sampled>>,
    stop: &AtomicBool,
) {
    for batch in batches {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let result = Sampled::sample(sampler, &batch, params, seed);
        let failed = result.is_err();
        if sender.send(result).is_err() || failed {
            return;
        }
    }
}

/// The decoding thread's loop: decodes each sampled batch and sends it on with its images, until
/// the sampler stops, a batch fails (its error is passed on), or the receiver is dropped.
fn decode_all(
    decoder: &Decoder,
    decode: usize,
    receiver: &Receiver<Result<Sampled>>,
    sender: &SyncSender<Result<Produced>>,
) {
    for sampled in receiver {
        let result = sampled.and_then(|sampled| sampled.decode(decoder, decode));
        let failed = result.is_err();
        if sender.send(result).is_err() || failed {
            return;
        }
    }
}

/// Where a source's batches come from.
enum Feed {
    /// Generated on the pass's thread when needed.
    Inline(VecDeque<Batch>),
    /// Generated ahead on the sampling and decoding threads.
    Threads(GenerationThreads),
}

/// A loaded generator and tokenizer, checked against each other, with the sampling settings.
pub struct Generator {
    /// `None` only while the generation threads hold them (or after one of them panicked).
    networks: Option<Networks>,
    config: GeneratorConfig,
    /// The networks' architectures and the GPT's dtype, kept here while the networks are away.
    gpt_config: GptConfig,
    vq_config: VqConfig,
    gpt_kind: Kind,
    device: Device,
    /// Token grid side.
    grid: i64,
}

/// The generation size when no flag gives one (`--image-size`).
pub const DEFAULT_IMAGE_SIZE: i64 = 256;

/// The size a GPT checkpoint was trained at, which the generator holds a run to, and where it was
/// read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainedSize {
    /// `args.image_size` of a LlamaGen training checkpoint.
    Recorded(i64),
    /// `_256` / `_384` / `_512` at the end of a released checkpoint's file name.
    FileName(i64),
}

impl TrainedSize {
    /// The image side in pixels.
    pub fn pixels(self) -> i64 {
        match self {
            TrainedSize::Recorded(size) | TrainedSize::FileName(size) => size,
        }
    }

    fn how(self) -> &'static str {
        match self {
            TrainedSize::Recorded(_) => "was trained at",
            TrainedSize::FileName(_) => "is named for",
        }
    }
}

/// The trained size of the GPT checkpoint at `path` whose `args.image_size` is `recorded`
/// ([`crate::models::gpt::recorded_image_size`]): that, else the size its file name ends with;
/// `None` when neither tells, and any size a multiple of the tokenizer's factor is taken.
pub fn trained_size(path: &Path, recorded: Option<i64>) -> Option<TrainedSize> {
    recorded
        .map(TrainedSize::Recorded)
        .or_else(|| size_from_file_name(path).map(TrainedSize::FileName))
}

/// `_256` / `_384` / `_512` at the end of a released checkpoint's file name.
fn size_from_file_name(path: &Path) -> Option<i64> {
    let stem = path.file_stem()?.to_str()?;
    let last = stem.rsplit('_').next()?;
    last.parse::<i64>()
        .ok()
        .filter(|s| [256, 384, 512].contains(s))
}

/// Checks the run's conditioning against the model type before anything is sampled; for a t2i
/// run, the caption embeddings the sampler takes.
fn check_conditioning(
    conditioning: &Conditioning,
    gpt: &Gpt,
    gpt_path: &Path,
) -> Result<Option<CaptionEmbeddings>> {
    let config = gpt.config();
    match (conditioning, config.condition) {
        (Conditioning::Prompts(source), _) => bail!(
            "the prompts of {} are not embedded yet",
            source.prompts.display()
        ),
        (Conditioning::Classes(labels), Condition::Class) => {
            if let LabelSpec::Explicit(labels) = labels {
                if labels.is_empty() {
                    bail!("the list of class labels is empty");
                }
                gpt.check_labels(labels)?;
            }
            Ok(None)
        }
        (Conditioning::Classes(_), Condition::Caption { .. }) => {
            Err(GptError::LabelsForTextToImage(format!(
                "{} is a text-to-image (t2i) generator: it samples from captions (caption \
                 embeddings), not class labels",
                gpt_path.display()
            ))
            .into())
        }
        (Conditioning::Captions(captions), Condition::Class) => {
            Err(GptError::CaptionsForClassConditional(format!(
                "captions ({}) for {}, a class-conditional (c2i) generator: captions need a \
                 text-to-image (t2i) checkpoint",
                captions.source().display(),
                gpt_path.display()
            ))
            .into())
        }
        (Conditioning::Captions(captions), Condition::Caption { caption_dim }) => {
            let embeddings = captions.embeddings();
            let (tokens, dim) = (embeddings.tokens(), embeddings.dim());
            if dim != caption_dim || tokens != config.cls_token_num {
                return Err(GptError::CaptionShape(format!(
                    "{} holds {} captions of {tokens} positions of width {dim}, but {} takes \
                     {} positions of width {caption_dim} (its T5 encoder's hidden size)",
                    captions.source().display(),
                    captions.len(),
                    gpt_path.display(),
                    config.cls_token_num
                ))
                .into());
            }
            Ok(Some(embeddings.share()))
        }
    }
}

impl Generator {
    /// Loads both models and checks everything that can be checked before sampling: the
    /// conditioning against the model type (labels in range for c2i; captions of the model's
    /// length and width for t2i), image size against the tokenizer and the checkpoint, codebook
    /// size against the vocabulary.
    pub fn new(config: &GeneratorConfig) -> Result<Self> {
        let device = config.device.resolve().map_err(anyhow::Error::msg)?;
        Self::on(config, device)
    }

    fn on(config: &GeneratorConfig, device: Device) -> Result<Self> {
        config.check()?;
        // A prompt file is embedded first (its errors before any model is loaded).
        let config = &GeneratorConfig {
            conditioning: config.conditioning.resolve(device)?,
            ..config.clone()
        };
        let (gpt_path, vq_path) = (config.gpt.as_path(), config.vq.as_path());
        let image_size = config.image_size;
        config
            .sampling
            .validate()
            .map_err(GptError::BadConfig)
            .context("sampling settings")?;
        if config.decode_batch_size == Some(0) {
            bail!("the decode batch size must be at least 1");
        }
        let (vq_vs, vq) = VqModel::load(vq_path, device, config.vq_weights)
            // The loaders' errors name the file; the context says which of the two it was.
            .context("tokenizer")?;
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
        let trained = trained_size(gpt_path, Gpt::checkpoint_image_size(gpt_path)?);
        if let Some(trained) = trained.filter(|t| t.pixels() != image_size) {
            let size = trained.pixels();
            return Err(GptError::ImageSize {
                image_size,
                detail: format!(
                    "{} {} {size} px ({}x{} tokens); generate at {size} px (and resize to the \
                     evaluation size with the evaluated-size setting)",
                    gpt_path.display(),
                    trained.how(),
                    size / factor,
                    size / factor
                ),
            }
            .into());
        }
        let grid = image_size / factor;
        let (mut gpt_vs, gpt) =
            Gpt::load(gpt_path, device, &config.heads, grid * grid).context("generator")?;
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
        let captions = check_conditioning(&config.conditioning, &gpt, gpt_path)?;
        if config.sampling.uses_cfg() && !gpt.config().has_null_condition() {
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
        batch::benchmark_fixed_shapes(device);
        tracing::info!(
            "generator {} ({}) and tokenizer {} loaded on {}",
            gpt_path.display(),
            precision.name(),
            vq_path.display(),
            crate::device::describe(device)
        );
        Ok(Generator {
            gpt_config: gpt.config().clone(),
            vq_config: vq.config().clone(),
            gpt_kind: gpt.kind(),
            networks: Some(Networks {
                sampler: Sampler {
                    _vs: gpt_vs,
                    gpt,
                    captions,
                },
                decoder: Decoder {
                    _vs: vq_vs,
                    vq,
                    grid,
                    image_size,
                    eval_size: config.eval_size(),
                },
            }),
            config: GeneratorConfig {
                precision,
                ..config.clone()
            },
            device,
            grid,
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
        if sampling.uses_cfg() && !self.gpt_config.has_null_condition() {
            bail!(
                "the class embedding has no null-class row: classifier-free guidance is impossible"
            );
        }
        self.config.sampling = sampling;
        Ok(())
    }

    /// The condition of sample `index`: its class label, or its caption's index in the set.
    pub fn condition(&self, index: u64) -> i64 {
        self.config
            .conditioning
            .condition(self.config.seed, index, self.gpt_config.num_classes)
    }

    /// The caption set of a t2i run.
    pub fn captions(&self) -> Option<&CaptionSet> {
        self.config.conditioning.captions()
    }

    /// The caption texts of the samples `indices`, when the run has captions with texts.
    pub fn caption_texts(&self, indices: &[u64]) -> Option<Vec<String>> {
        self.captions()?.texts_of(indices)
    }

    /// Image tokens per sample.
    pub fn tokens_per_sample(&self) -> usize {
        (self.grid * self.grid) as usize
    }

    /// Side of the produced images.
    pub fn eval_size(&self) -> usize {
        self.config.eval_size() as usize
    }

    /// Where the models run.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Device memory one sample needs while it is sampled and then decoded (the overlap keeps a
    /// batch's key/value cache alive while the previous batch decodes, so both count).
    pub fn bytes_per_sample(&self, decode_follows: bool) -> u64 {
        let sampling = batch::sampling_bytes_per_sample(
            &self.gpt_config,
            self.gpt_kind,
            self.config.sampling.uses_cfg(),
        );
        let decoding = batch::decode_bytes_per_image(&self.vq_config, self.config.image_size);
        sampling + if decode_follows { decoding } else { 0 }
    }

    /// The batch sizes of a run of `samples` samples: `generation` (a number, or
    /// `auto`: from `free_bytes` of device memory, keeping room for an Inception batch of
    /// `inception_batch` images, and no more than the run's samples), and the decode batch: the
    /// configured one, else `recorded` (the interrupted run's, when resuming), else the
    /// generation batch.
    pub fn plan_batches(
        &self,
        samples: usize,
        generation: BatchSize,
        free_bytes: Option<u64>,
        inception_batch: Option<usize>,
        recorded: Option<usize>,
    ) -> Batches {
        let explicit_decode = self.config.decode_batch_size.or(recorded);
        let (generation, auto) = match generation {
            BatchSize::Fixed(n) => (n.max(1), false),
            BatchSize::Auto => {
                let mut reserved =
                    inception_batch.unwrap_or(0) as u64 * batch::INCEPTION_BYTES_PER_IMAGE;
                if let Some(decode) = explicit_decode {
                    reserved += decode as u64
                        * batch::decode_bytes_per_image(&self.vq_config, self.config.image_size);
                }
                let n = batch::auto_batch_size(
                    free_bytes,
                    self.bytes_per_sample(explicit_decode.is_none()),
                    reserved,
                    batch::cap_for(self.device),
                    batch::UNKNOWN_MEMORY_BATCH,
                );
                (n.min(samples.max(1)), true)
            }
        };
        Batches {
            generation,
            auto,
            decode: explicit_decode.unwrap_or(generation).max(1),
        }
    }

    /// The settings that decide this generator's samples in a run with `batches` (see
    /// [`GeneratorConfig::fingerprint`]).
    pub fn fingerprint(&self, batches: Batches) -> Map<String, Value> {
        self.config.fingerprint(batches.decode)
    }

    /// Decoded u8 NHWC images (at the evaluated size) of token sequences, `decode` at a time
    /// (see [`Decoder::images`]).
    pub fn images(&self, tokens: &[Vec<i64>], decode: usize) -> Result<Array4<u8>> {
        self.networks()?.decoder.images(tokens, decode)
    }

    fn networks(&self) -> Result<&Networks> {
        self.networks
            .as_ref()
            .context("the generator's networks were lost when a generation thread panicked")
    }

    /// A run's empty timing record: the device, dtype and batch sizes it uses.
    fn timing_for(
        &self,
        batches: Batches,
        inception_batch: Option<usize>,
        overlap: bool,
    ) -> Timing {
        Timing {
            device: crate::device::name(self.device),
            device_name: crate::device::describe(self.device),
            tf32: {
                let (matmul, conv) = crate::device::tf32_state();
                matmul || conv
            },
            dtype: batch::dtype_name(self.gpt_kind),
            batches: Some(batches),
            inception_batch,
            overlap,
            ..Timing::default()
        }
    }

    /// The samples with `indices` as an image source, generated `batches.generation` at a time
    /// ([`Generator::plan_batches`]), with sampling and decoding on their own threads when
    /// `overlap`. The source keeps the run's timing ([`GeneratedImages::timing`]), with
    /// `inception_batch` images per Inception pass when Inception runs on them; the generator
    /// itself does not change.
    pub fn source(
        &mut self,
        indices: Vec<u64>,
        overlap: bool,
        batches: Batches,
        inception_batch: Option<usize>,
    ) -> GeneratedImages<'_> {
        let timing = self.timing_for(batches, inception_batch, overlap);
        GeneratedImages {
            generator: self,
            indices,
            position: 0,
            batches,
            timing,
            overlap,
            feed: None,
            ready_tokens: VecDeque::new(),
            ready_pixels: VecDeque::new(),
            last_tokens: Vec::new(),
        }
    }
}

/// Generated samples as an [`ImageSource`]: batches are sampled and decoded as they are read
/// (a read may span generation batches: decoded samples wait for the next read); their tokens are
/// journaled, so a resumed run decodes finished samples again instead of sampling them.
pub struct GeneratedImages<'g> {
    generator: &'g mut Generator,
    indices: Vec<u64>,
    /// Samples handed to the pass (returned, replayed or skipped).
    position: usize,
    /// The run's batch sizes.
    batches: Batches,
    /// Where the run's time went so far.
    timing: Timing,
    overlap: bool,
    /// Started at the first read, after the resumed samples are replayed or skipped.
    feed: Option<Feed>,
    /// Tokens and pixels of decoded samples not yet handed to the pass.
    ready_tokens: VecDeque<Vec<i64>>,
    ready_pixels: VecDeque<u8>,
    last_tokens: Vec<Vec<i64>>,
}

impl GeneratedImages<'_> {
    /// Where the run's time went so far (sampling, decoding, waiting; the caller adds the wall
    /// time and Inception's).
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

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
        let vocab = self.generator.gpt_config.vocab_size;
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

    /// The generation batches of the samples not yet handed out, padded to full size.
    fn remaining_batches(&self) -> VecDeque<Batch> {
        self.indices[self.position..]
            .chunks(self.batches.generation)
            .map(|chunk| {
                let conditions: Vec<i64> =
                    chunk.iter().map(|&i| self.generator.condition(i)).collect();
                Batch::padded(chunk, &conditions, self.batches.generation)
            })
            .collect()
    }

    fn start_feed(&mut self) -> Result<Feed> {
        let batches = self.remaining_batches();
        if !self.overlap {
            return Ok(Feed::Inline(batches));
        }
        let decode = self.batches.decode;
        let networks = self
            .generator
            .networks
            .take()
            .context("the generator's networks were lost when a generation thread panicked")?;
        let (params, seed) = (self.generator.config.sampling, self.generator.config.seed);
        Ok(Feed::Threads(
            GenerationThreads::spawn(networks, batches, params, seed, decode)
                .context("cannot start the sampling and decoding threads")?,
        ))
    }

    /// The next generated batch, from this thread or the generation threads.
    fn next_produced(&mut self) -> Result<Produced> {
        if self.feed.is_none() {
            self.feed = Some(self.start_feed()?);
        }
        let generator = &mut *self.generator;
        let produced = match self.feed.as_mut() {
            Some(Feed::Inline(batches)) => {
                let batch = batches
                    .pop_front()
                    .context("no generation batch left for the samples asked for")?;
                let decode = self.batches.decode;
                let (params, seed) = (&generator.config.sampling, generator.config.seed);
                let networks = generator.networks()?;
                Sampled::sample(&networks.sampler, &batch, params, seed)?
                    .decode(&networks.decoder, decode)?
            }
            Some(Feed::Threads(thread)) => {
                let start = Instant::now();
                let received = thread.receiver.recv();
                self.timing.waiting += start.elapsed();
                match received {
                    Ok(result) => result?,
                    // The threads ended without a result: one panicked (or the sampler ran out
                    // of batches, which the pass never asks beyond).
                    Err(mpsc::RecvError) => {
                        let Some(Feed::Threads(thread)) = self.feed.take() else {
                            bail!("the generation threads' feed disappeared");
                        };
                        match thread.finish() {
                            Ok(networks) => {
                                self.generator.networks = Some(networks);
                                bail!("the sampling thread ran out of generation batches")
                            }
                            Err(panic) => bail!("a generation thread panicked: {panic}"),
                        }
                    }
                }
            }
            None => bail!("the batch feed was not started"),
        };
        let tokens = produced.tokens.len() * self.generator.tokens_per_sample();
        let timing = &mut self.timing;
        timing.sampling += produced.sampling;
        timing.decoding += produced.decoding;
        timing.tokens += tokens as u64;
        timing.images += produced.tokens.len() as u64;
        Ok(produced)
    }

    /// Generates batches until `count` samples are ready. The crash points fire when the
    /// pass's thread takes a batch, in both modes, so a killed run resumes the same way.
    fn fill(&mut self, count: usize) -> Result<()> {
        while self.ready_tokens.len() < count {
            let produced = self.next_produced()?;
            crash_point("sampled");
            crash_point("decoded");
            self.ready_pixels.extend(produced.images.iter());
            self.ready_tokens.extend(produced.tokens);
        }
        Ok(())
    }
}

impl Drop for GeneratedImages<'_> {
    /// Stops the generation threads (after their current batches) and gives the networks back.
    fn drop(&mut self) {
        if let Some(Feed::Threads(thread)) = self.feed.take() {
            match thread.finish() {
                Ok(networks) => self.generator.networks = Some(networks),
                Err(panic) => tracing::error!("a generation thread panicked: {panic}"),
            }
        }
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
        let count = end - self.position;
        self.fill(count).map_err(|e| self.data_error(e))?;
        let s = self.generator.eval_size();
        let pixels: Vec<u8> = self.ready_pixels.drain(..count * s * s * 3).collect();
        let images = Array4::from_shape_vec((count, s, s, 3), pixels)
            .map_err(|e| self.data_error(e.into()))?;
        self.last_tokens = self.ready_tokens.drain(..count).collect();
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
        let start = Instant::now();
        let images = self
            .generator
            .images(&tokens, self.batches.decode)
            .map_err(|e| self.data_error(e))?;
        self.timing.decoding += start.elapsed();
        self.timing.resumed += count as u64;
        self.position += count;
        Ok(images)
    }

    fn skip(&mut self, count: usize, _records: &[Vec<u8>]) -> Result<(), DataError> {
        self.timing.resumed += count as u64;
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

    #[test]
    fn short_batches_are_padded_with_their_last_sample() {
        let batch = Batch::padded(&[7, 9], &[3, 4], 5);
        assert_eq!(batch.indices, vec![7, 9, 9, 9, 9]);
        assert_eq!(batch.conditions, vec![3, 4, 4, 4, 4]);
        assert_eq!(batch.real, 2);
        let full = Batch::padded(&[1, 2], &[0, 0], 2);
        assert_eq!((full.indices.len(), full.real), (2, 2));
    }
}
