//! Flag groups shared by several commands, and their conversion into the library's plain
//! configuration types.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use llamagen_eval::captions::{read_prompts, CaptionSet, PromptSource};
use llamagen_eval::choice::Choice;
use llamagen_eval::device::DeviceChoice;
use llamagen_eval::dist::Distribution;
use llamagen_eval::evaluate::MetricRequest;
use llamagen_eval::evaluate::{IsSplits, Metric, MetricOptions};
use llamagen_eval::feature_set::Network;
use llamagen_eval::launcher::World;
use llamagen_eval::layout::RunLayout;
use llamagen_eval::models::gpt::HeadChoice;
use llamagen_eval::models::inception::Resize;
use llamagen_eval::models::t5::T5Precision;
use llamagen_eval::models::vq::VqWeights;
use llamagen_eval::partition::Shard;
use llamagen_eval::pipeline::generator::DEFAULT_IMAGE_SIZE;
use llamagen_eval::pipeline::inception::ExtraNetwork;
use llamagen_eval::pipeline::{
    BatchSize, FidConfig, GenerationPlan, GeneratorConfig, InceptionConfig, Precision,
};
use llamagen_eval::progress::Progress;
use llamagen_eval::sampling::{check_sample_count, Conditioning, LabelSpec, SamplingParams};
use llamagen_metrics::bootstrap::{self, BootstrapConfig};
use llamagen_metrics::frechet_infinity::InfinityConfig;
use llamagen_metrics::inception_score::TORCH_FIDELITY_SEED;
use llamagen_metrics::kid::{self, KidConfig};
use llamagen_metrics::manifold::{self, DistancePrecision, ManifoldConfig};

use super::choice::choice;

/// Flags shared by every command that runs Inception.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Feature networks and device")]
pub struct InceptionArgs {
    /// FID Inception-V3 weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth); default:
    /// $LLAMAGEN_EVAL_INCEPTION, else the cache directory.
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Preprocessing: `adm` (TF1 bilinear resize; the numbers papers report) or `pytorch-fid`.
    #[arg(long, value_parser = choice::<Resize>(), default_value_t = Resize::Adm)]
    pub resize: Resize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Images per feature-network forward pass (Inception, and DINOv2 and CLIP when asked for).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub feature_batch_size: u64,
    /// pytorch-fid's spelling of --feature-batch-size, kept for its users' scripts; hidden, so
    /// that no command shows a `--batch-size` meaning another batch than `sample`'s used to.
    #[arg(
        long = "batch-size",
        value_name = "N",
        hide = true,
        conflicts_with = "feature_batch_size",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub batch_size_alias: Option<u64>,
    /// Feature networks, comma-separated, all run in the same pass over the images: inception
    /// (FID, sFID, IS, precision/recall, KID; always), dinov2 (FD_DINOv2 and its
    /// precision/recall), clip (CMMD).
    #[arg(
        long = "features",
        value_name = "inception,dinov2,clip",
        value_delimiter = ',',
        default_value = "inception"
    )]
    pub networks: Vec<Network>,
    /// DINOv2 weights (facebookresearch/dinov2's dinov2_vitl14_pretrain.pth; implies
    /// `--features ...,dinov2`); default: $LLAMAGEN_EVAL_DINOV2, else the cache directory.
    #[arg(long, value_name = "FILE")]
    pub dinov2: Option<PathBuf>,
    /// DINOv2 attention heads, for widths the released ViT-S/B/L/g files do not have.
    #[arg(long, value_name = "N")]
    pub dinov2_heads: Option<i64>,
    /// CLIP weights (OpenAI's ViT-L-14-336px.pt, or Hugging Face's
    /// openai/clip-vit-large-patch14-336 model.safetensors; implies `--features ...,clip`);
    /// default: $LLAMAGEN_EVAL_CLIP, else the cache directory.
    #[arg(long, value_name = "FILE")]
    pub clip: Option<PathBuf>,
}

impl InceptionArgs {
    /// The note for a renamed flag given in its old spelling.
    pub fn notes(&self) -> Vec<&'static str> {
        self.batch_size_alias
            .map(|_| "--batch-size is now --feature-batch-size (the feature networks' batch)")
            .into_iter()
            .collect()
    }

    /// The library's feature-network configuration.
    pub fn config(&self) -> Result<InceptionConfig> {
        if !self.networks.contains(&Network::Inception) {
            bail!("--features must include inception (the FID network every run computes)");
        }
        let wants = |network: Network, weights: &Option<PathBuf>| {
            self.networks.contains(&network) || weights.is_some()
        };
        Ok(InceptionConfig {
            weights: self.inception.clone(),
            resize: self.resize,
            device: self.device,
            batch_size: usize::try_from(self.batch_size_alias.unwrap_or(self.feature_batch_size))
                .unwrap_or(usize::MAX),
            dinov2: wants(Network::Dinov2, &self.dinov2).then(|| ExtraNetwork {
                weights: self.dinov2.clone(),
                heads: self.dinov2_heads,
            }),
            clip: wants(Network::Clip, &self.clip).then(|| ExtraNetwork {
                weights: self.clip.clone(),
                heads: None,
            }),
        })
    }
}

/// The centre crop of the images a command reads (shared by `features`, `stats` and `recon`).
#[derive(Args, Debug, Clone)]
pub struct CropArgs {
    /// Centre-crop every image to this square size first (ADM's `center_crop_arr`: BOX halving,
    /// BICUBIC resize, centre crop); needed for a folder of differently sized images. Default:
    /// the images' own size.
    #[arg(long, value_name = "N", help_heading = "Input")]
    pub crop: Option<usize>,
    /// The spelling --crop had before `--image-size` came to mean the generation resolution
    /// only; hidden, kept for existing scripts.
    #[arg(
        long = "image-size",
        value_name = "N",
        hide = true,
        conflicts_with = "crop"
    )]
    pub image_size_alias: Option<usize>,
}

impl CropArgs {
    /// The crop asked for, in either spelling.
    pub fn crop(&self) -> Option<usize> {
        self.crop.or(self.image_size_alias)
    }

    /// The note for the old spelling.
    pub fn notes(&self) -> Vec<&'static str> {
        self.image_size_alias
            .map(|_| "--image-size is now --crop (the centre crop of the images read)")
            .into_iter()
            .collect()
    }
}

/// Which metrics, and their settings (shared by `fid`, `metrics` and `sweep`).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Metrics")]
pub struct MetricArgs {
    /// Metrics to compute, comma-separated (default: every one the inputs allow).
    #[arg(long, value_parser = choice::<Metric>(), value_delimiter = ',')]
    pub metrics: Option<Vec<Metric>>,
    /// Inception Score splits: `adm` (consecutive splits of 5000, partial last) or
    /// `torch-fidelity` (the samples shuffled with `--is-seed`, then 10 equal splits, as
    /// torch-fidelity's defaults).
    #[arg(long, value_parser = choice::<IsSplits>(), default_value_t = IsSplits::default())]
    pub is_splits: IsSplits,
    /// Seed of the Inception Score's shuffle with `--is-splits torch-fidelity` (NumPy
    /// RandomState-compatible, torch-fidelity's `rng_seed`).
    #[arg(long, default_value_t = TORCH_FIDELITY_SEED)]
    pub is_seed: u32,
    /// Arithmetic of precision/recall distances: `exact` (f64) or `adm-fp16` (ADM's float16
    /// rounding, reproducing its published figures).
    #[arg(
        long,
        value_parser = choice::<DistancePrecision>(),
        default_value = DistancePrecision::default().choice_name()
    )]
    pub pr_distance: DistancePrecision,
    /// Neighbourhood size k of precision/recall/density/coverage.
    #[arg(long, default_value_t = manifold::DEFAULT_K)]
    pub pr_k: usize,
    /// KID: number of random subsets.
    #[arg(long, default_value_t = kid::DEFAULT_SUBSETS)]
    pub kid_subsets: usize,
    /// KID: rows per subset (capped at the smaller set's size).
    #[arg(long, default_value_t = kid::DEFAULT_SUBSET_SIZE)]
    pub kid_subset_size: usize,
    /// Seed of the KID subsets (NumPy RandomState-compatible, as torch-fidelity).
    #[arg(long, default_value_t = kid::DEFAULT_SEED)]
    pub kid_seed: u32,
    /// Bootstrap resamples for each figure's standard error and 95% interval (the record's
    /// `uncertainty`); 0 turns it off. Each FID/sFID resample costs about 0.6x the statistics
    /// pass plus one Fréchet distance; precision/recall/density/coverage resamples are nearly free.
    #[arg(long, default_value_t = 0, value_parser = parse_resamples)]
    pub bootstrap: usize,
    /// Seed of the bootstrap resamples.
    #[arg(long, default_value_t = bootstrap::DEFAULT_SEED)]
    pub bootstrap_seed: u32,
}

/// `--bootstrap`: 0 (off) or at least 2 resamples, refused before any work.
fn parse_resamples(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(1) => Err("1 resample gives no spread: use 0 (off) or at least 2".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl MetricArgs {
    /// The library's metric request.
    pub fn request(&self) -> MetricRequest {
        MetricRequest {
            metrics: self.metrics.clone(),
            options: MetricOptions {
                is_splits: self.is_splits.splits(self.is_seed),
                manifold: ManifoldConfig {
                    k: self.pr_k,
                    precision: self.pr_distance,
                    ..Default::default()
                },
                kid: KidConfig {
                    subsets: self.kid_subsets,
                    subset_size: self.kid_subset_size,
                    seed: self.kid_seed,
                },
                infinity: InfinityConfig::default(),
                bootstrap: BootstrapConfig {
                    resamples: self.bootstrap,
                    seed: self.bootstrap_seed,
                },
            },
        }
    }
}

/// Where a run's outputs go.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Output folder (default: reports/<--name or UTC timestamp>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run name, used for the default output folder.
    #[arg(long)]
    pub name: Option<String>,
}

impl OutputArgs {
    /// `--out`, else `reports/<--name>`, else `reports/<UTC timestamp>`.
    pub fn dir(&self) -> PathBuf {
        output_dir(self.out.as_deref(), self.name.as_deref())
    }
}

/// Where a run writes: `out`, else `reports/<name>`, else `reports/<UTC timestamp>`.
pub fn output_dir(out: Option<&Path>, name: Option<&str>) -> PathBuf {
    match (out, name) {
        (Some(out), _) => out.to_path_buf(),
        (None, Some(name)) => Path::new("reports").join(name),
        (None, None) => Path::new("reports").join(llamagen_eval::record::utc_timestamp()),
    }
}

/// Generation flags shared by `sample`, `fid --gpt` and `sweep`.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Generation (with --gpt)")]
pub struct GenArgs {
    /// LlamaGen GPT checkpoint: class-conditional (c2i_*.pt, or an FSDP consolidated.pth) or
    /// text-to-image (t2i_*.pt, with --caption-embeddings).
    #[arg(long, value_name = "CKPT")]
    pub gpt: Option<PathBuf>,
    /// The LlamaGen VQ tokenizer the GPT was trained with (vq_ds16_c2i.pt).
    #[arg(long, value_name = "CKPT")]
    pub vq: Option<PathBuf>,
    /// Which tokenizer weights: auto (ema when present), ema or model.
    #[arg(long, value_parser = choice::<VqWeights>(), default_value_t = VqWeights::Auto)]
    pub vq_weights: VqWeights,
    /// Number of images (default with --labels: one per label; with --caption-embeddings: one
    /// per caption).
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
    /// Sampling temperature.
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
    /// For a text-to-image (t2i) --gpt: the captions' T5 embeddings, an npz with `caption_embs`
    /// [N, L, D] (float32/float16) and `emb_masks` [N, L] (ints or bools) right-padded as T5
    /// returns them, and optionally `captions`, the N texts; sample i takes caption i % N.
    #[arg(long, value_name = "FILE.npz", conflicts_with_all = ["labels", "class_balanced"])]
    pub caption_embeddings: Option<PathBuf>,
    /// For a text-to-image (t2i) --gpt: the captions, one per line, or JSON lines with `caption`
    /// (and an optional `image_id`); embedded with --t5 as LlamaGen's T5Embedder does (120
    /// tokens); sample i takes caption i % N.
    #[arg(
        long,
        value_name = "FILE",
        requires = "t5",
        conflicts_with_all = ["labels", "class_balanced", "caption_embeddings"]
    )]
    pub prompts: Option<PathBuf>,
    /// The T5 encoder folder for --prompts (LlamaGen's flan-t5-xl: config.json, tokenizer.json and
    /// model*.safetensors or pytorch_model*.bin).
    #[arg(long, value_name = "DIR", requires = "prompts")]
    pub t5: Option<PathBuf>,
    /// The T5 encoder's dtype: bf16 (LlamaGen's T5Embedder) or fp32.
    #[arg(long, value_parser = choice::<T5Precision>(), default_value_t = T5Precision::Bf16)]
    pub t5_precision: T5Precision,
    /// The generator's dtype (the tokenizer runs in f32); recorded in the run record.
    #[arg(long, value_parser = choice::<Precision>(), default_value_t = Precision::Auto)]
    pub precision: Precision,
    /// Registry name (GPT-B, L, XL, XXL, XXXL, 1B, 3B, 7B) fixing the head count.
    #[arg(long, value_name = "NAME")]
    pub gpt_model: Option<String>,
    /// Attention heads (wins over the registry).
    #[arg(long, value_name = "N")]
    pub n_head: Option<i64>,
    /// Images the tokenizer decodes at once (default: the generation batch size; a resumed run
    /// keeps the interrupted run's). Part of the resume settings: convolution arithmetic varies
    /// with the batch shape, which can move rare pixel values by 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub decode_batch_size: Option<u64>,
    /// Sample, decode and evaluate one batch after another on one thread, instead of sampling
    /// and decoding the next batches on two more threads meanwhile (results are identical either
    /// way).
    #[arg(long)]
    pub no_overlap: bool,
    /// Continue an interrupted run (its journal) with the same settings.
    #[arg(long)]
    pub resume: bool,
    /// Testing aid: stop with an error after this many new samples (simulates a crash).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

impl GenArgs {
    /// The number of samples: `--samples`, else one per `--labels` entry; at least 1 and at most
    /// `llamagen_eval::sampling::MAX_SAMPLES`, checked before anything is loaded.
    pub fn sample_count(&self) -> Result<usize> {
        let n = match (
            self.samples,
            &self.labels,
            &self.caption_embeddings,
            &self.prompts,
        ) {
            (Some(n), ..) => n,
            (None, Some(l), ..) => l.len(),
            (None, None, Some(captions), _) => CaptionSet::count_in_npz(captions)?,
            (None, None, None, Some(prompts)) => read_prompts(prompts)?.len(),
            (None, None, None, None) => bail!(
                "--samples N is required (or --labels, one sample per label; or \
                 --caption-embeddings or --prompts, one sample per caption)"
            ),
        };
        check_sample_count(n)
    }

    /// The library's generator configuration at generation size `image_size` (a prompt file is
    /// embedded by the generator as it loads: only the captions of `shard` of the job's
    /// `samples`).
    pub fn config(
        &self,
        image_size: i64,
        device: DeviceChoice,
        progress: Progress,
        (samples, shard): (usize, Shard),
    ) -> Result<GeneratorConfig> {
        let gpt = match &self.gpt {
            Some(p) => p.clone(),
            None => bail!("--gpt CKPT is required"),
        };
        let vq = match &self.vq {
            Some(p) => p.clone(),
            None => bail!("--vq CKPT is required"),
        };
        let labels = match (&self.labels, self.class_balanced) {
            (Some(l), _) if l.is_empty() => bail!("--labels is empty"),
            (Some(l), _) => LabelSpec::Explicit(l.clone()),
            (None, true) => LabelSpec::Balanced,
            (None, false) => LabelSpec::Uniform,
        };
        let conditioning = match (&self.caption_embeddings, &self.prompts, &self.t5) {
            (Some(path), ..) => {
                Conditioning::Captions(std::rc::Rc::new(CaptionSet::from_npz(path)?))
            }
            (None, Some(prompts), Some(t5)) => Conditioning::Prompts(PromptSource {
                prompts: prompts.clone(),
                t5: t5.clone(),
                precision: self.t5_precision,
                samples,
                shard,
                progress,
            }),
            _ => Conditioning::Classes(labels),
        };
        let config = GeneratorConfig {
            gpt,
            vq,
            vq_weights: self.vq_weights,
            image_size,
            image_size_eval: self.image_size_eval,
            sampling: SamplingParams {
                cfg_scale: self.cfg_scale,
                cfg_interval: self.cfg_interval,
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
            },
            seed: self.seed,
            conditioning,
            precision: self.precision,
            heads: HeadChoice {
                model_name: self.gpt_model.clone(),
                n_head: self.n_head,
            },
            decode_batch_size: self
                .decode_batch_size
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            device,
        };
        config.check()?;
        Ok(config)
    }
}

/// The flags of `fid` (also every flag of `sweep`).
#[derive(Args, Debug, Clone)]
pub struct FidArgs {
    /// Generated images: an npz with `arr_0` u8 N x H x W x 3 (stored or compressed), or a
    /// folder of images.
    #[arg(
        long,
        value_name = "SAMPLES",
        conflicts_with = "gpt",
        help_heading = "Input"
    )]
    pub sample_batch: Option<PathBuf>,
    /// Generation instead of --sample-batch: `--gpt CKPT --vq CKPT --samples N` and the sampling
    /// flags of `sample`.
    #[command(flatten)]
    pub gen: GenArgs,
    /// Samples generated together with --gpt: a number, or `auto` (from the device's free memory
    /// and the generator's key/value cache per sample; results do not depend on it).
    #[arg(
        long,
        value_name = "N|auto",
        default_value = "auto",
        help_heading = "Generation (with --gpt)"
    )]
    pub gen_batch_size: BatchSize,
    /// With --gpt: also write the generated images as an ADM/LlamaGen npz.
    #[arg(
        long,
        value_name = "SAMPLES.npz",
        requires = "gpt",
        help_heading = "Output"
    )]
    pub save_samples: Option<PathBuf>,
    /// Reference: an ADM reference batch (its mu/sigma/mu_s/sigma_s, and its `arr_0` images for
    /// precision/recall/KID), a `stats` file, a feature file, an image npz, or a folder of images.
    #[arg(long = "ref", value_name = "REF", help_heading = "Input")]
    pub reference: Option<PathBuf>,
    /// Centre-crop the reference's images (a folder or an image npz) to this square size (ADM's
    /// `center_crop_arr`); default with --gpt: the evaluated size (--image-size-eval, else
    /// --image-size), without: the images' own size.
    #[arg(long, value_name = "N", help_heading = "Input")]
    pub crop: Option<usize>,
    /// Generation resolution with --gpt (default 256): the token grid is image-size / the
    /// tokenizer's downsampling. Without --gpt, the old spelling of --crop (still accepted, with
    /// a note).
    #[arg(long, value_name = "N", help_heading = "Generation (with --gpt)")]
    pub image_size: Option<usize>,
    #[command(flatten)]
    pub inception: InceptionArgs,
    #[command(flatten)]
    pub metric: MetricArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl FidArgs {
    /// The generation size with --gpt.
    pub fn generation_size(&self) -> i64 {
        self.image_size
            .map_or(DEFAULT_IMAGE_SIZE, |s| i64::try_from(s).unwrap_or(i64::MAX))
    }

    /// The centre crop of the reference's images. With --gpt it defaults to the evaluated size, so
    /// that the reference images are the samples' size. Without --gpt, `--image-size` is read as
    /// --crop: that is what it meant there before it came to mean the generation size only, and
    /// scripts written then still say it.
    pub fn reference_crop(&self) -> Result<Option<usize>> {
        if self.gen.gpt.is_some() {
            let eval = self
                .gen
                .image_size_eval
                .unwrap_or_else(|| self.generation_size());
            return Ok(self.crop.or(usize::try_from(eval).ok()));
        }
        match (self.crop, self.image_size) {
            (Some(crop), Some(size)) => bail!(
                "--crop {crop} and --image-size {size} given without --gpt: --image-size is the \
                 generation resolution (with --gpt) and only stands for --crop in old scripts; \
                 give --crop N alone"
            ),
            (crop, size) => Ok(crop.or(size)),
        }
    }

    /// The notes for renamed flags given in their old spelling.
    pub fn notes(&self) -> Vec<&'static str> {
        let mut notes = self.inception.notes();
        if self.gen.gpt.is_none() && self.image_size.is_some() {
            notes.push(
                "--image-size without --gpt is now --crop (the reference images' centre crop)",
            );
        }
        notes
    }

    /// The evaluation side; under a launcher, `--device auto` is this rank's device.
    pub fn fid_config(&self, progress: Progress, world: &World) -> Result<FidConfig> {
        let reference_crop = self.reference_crop()?;
        let mut inception = self.inception.config()?;
        inception.device = world.device(inception.device).map_err(anyhow::Error::msg)?;
        let Some(reference) = self.reference.clone() else {
            bail!("--ref REF is required: the reference batch the samples are compared with")
        };
        Ok(FidConfig {
            reference,
            reference_crop,
            inception,
            metrics: self.metric.request(),
            progress,
        })
    }

    /// How the samples are generated into `out_dir` by this process.
    pub fn plan(
        &self,
        out_dir: &std::path::Path,
        progress: Progress,
        distribution: Distribution,
    ) -> Result<GenerationPlan> {
        let plan = GenerationPlan {
            samples: self.gen.sample_count()?,
            shard: Shard::ALL,
            batch_size: self.gen_batch_size,
            overlap: !self.gen.no_overlap,
            save_samples: self.save_samples.clone(),
            layout: RunLayout::folder(out_dir),
            resume: self.gen.resume,
            stop_after: self.gen.stop_after,
            progress,
            distribution,
        };
        plan.check()?;
        Ok(plan)
    }
}
