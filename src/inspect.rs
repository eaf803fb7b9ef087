//! What the tool makes of a checkpoint, for `inspect`: which network it would load it as and
//! with which configuration. Every field comes from the functions the loaders themselves call
//! (each model's `state_dict_shapes` / `vision_shapes` / `text_shapes` and `infer`, the
//! generator's trained size, the tokenizer's weight choice), so what `inspect` says is what a run
//! would do; nothing here infers a configuration on its own.
//!
//! The networks are tried from the cheapest detection to the dearest: the GPT, the VQ tokenizer,
//! DINOv2 and T5 from the tensor records alone, CLIP from its tensors (OpenAI's TorchScript
//! release names its parameters only through libtorch), Inception by loading it (its
//! architecture is fixed, so only a full load tells). The first that accepts the file wins; when
//! none does, each one's reason is kept.

use std::path::{Path, PathBuf};

use crate::checkpoint::{Checkpoint, STATE_DICT_KEYS};
use crate::feature_set::{is_released_inception, sha256_file};
use crate::models::clip::{self, ClipConfig};
use crate::models::clip_text::{self, ClipTextConfig};
use crate::models::dinov2::{self, Dinov2Config, Dinov2Error};
use crate::models::gpt::{self, GptConfig, GptError, HeadChoice};
use crate::models::hf_weights::WeightSet;
use crate::models::inception;
use crate::models::t5::T5Config;
use crate::models::vq::{self, VqConfig, VqWeights};
use crate::pipeline::generator::{trained_size, TrainedSize, DEFAULT_IMAGE_SIZE};
use crate::weight_files::INCEPTION_WEIGHTS_FILE;

/// Why a file could not be described (a file that is no network is described, not an error).
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The weights file could not be read to hash it.
    #[error("cannot read {} to hash it: {source}", path.display())]
    Hash {
        /// The file.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
}

/// What the tool makes of a checkpoint.
#[derive(Debug, Clone)]
pub enum Identity {
    /// A LlamaGen generator (`--gpt`).
    Gpt(GptFile),
    /// A LlamaGen VQ tokenizer (`--vq`).
    Vq(VqFile),
    /// A feature network's or text encoder's weights, with their checksum.
    Network {
        /// Which network, with its configuration.
        network: FeatureNetwork,
        /// The file's sha256 and whether it is the released file.
        checksum: Checksum,
    },
    /// None of the networks accepts it: each network tried and why it refused.
    NotANetwork(Vec<Attempt>),
}

/// One network's refusal of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The network tried.
    pub network: &'static str,
    /// Its loader's reason, without the file name it starts with.
    pub reason: String,
}

/// A generator as the GPT loader infers it, and the image size the generator holds it to.
#[derive(Debug, Clone)]
pub struct GptFile {
    /// The configuration; with [`HeadCount::Unknown`] its `n_head` (and `n_kv_head`) are those
    /// of the first candidate, every other field is the same for all of them.
    pub config: GptConfig,
    /// Where the head count comes from, or which counts are possible.
    pub heads: HeadCount,
    /// The generation size and token grid.
    pub size: GenerationSize,
    /// Which state dict the loader takes and which the file holds.
    pub weights: StateDicts,
}

/// The image size a GPT generates at and its token grid under a tokenizer of `factor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationSize {
    /// The size the checkpoint was trained at, when it or its name tells (a run at any other
    /// size is refused); `None`: any size, [`DEFAULT_IMAGE_SIZE`] unless a flag gives one.
    pub trained: Option<TrainedSize>,
    /// The size a run uses without a flag: the trained size, else [`DEFAULT_IMAGE_SIZE`].
    pub pixels: i64,
    /// The downsampling factor of the tokenizer assumed (LlamaGen's VQ-16 for every released GPT).
    pub factor: i64,
    /// Side of the token grid; `None` when `pixels` is not a multiple of `factor`.
    pub grid: Option<i64>,
}

/// A tokenizer as the VQ loader infers it.
#[derive(Debug, Clone)]
pub struct VqFile {
    /// The configuration.
    pub config: VqConfig,
    /// Which state dict the loader takes by default and which the file holds.
    pub weights: StateDicts,
}

/// Which of a checkpoint's state dicts a loader takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDicts {
    /// The entry taken; `None`: the top level is the state dict (bare and safetensors files).
    pub used: Option<String>,
    /// The entries that hold tensors among `ema` and [`STATE_DICT_KEYS`], in that order.
    pub held: Vec<String>,
}

/// An attention head count no tensor shape tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadCount {
    /// Known without any flag.
    Known {
        /// The head count.
        heads: i64,
        /// What tells it.
        source: HeadSource,
    },
    /// Nothing tells it: these are the counts the loader accepts for the file's shapes, one of
    /// which has to be given.
    Unknown {
        /// The accepted head counts, smallest first.
        candidates: Vec<i64>,
    },
}

/// What tells a head count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadSource {
    /// The registry model the checkpoint records (`args.gpt_model`).
    RecordedModel(String),
    /// The registry model of the file's width.
    RegistryWidth(&'static str),
    /// A released model of the file's width.
    ReleasedWidth,
    /// The Hugging Face config file beside the weights.
    ConfigFile(PathBuf),
}

/// A feature network or text encoder, as its loader infers it.
#[derive(Debug, Clone)]
pub enum FeatureNetwork {
    /// pytorch-fid's FID Inception-V3 (fixed architecture).
    Inception,
    /// A DINOv2 ViT (FD_DINOv2).
    Dinov2 {
        /// The configuration (`num_heads` that of the first candidate when unknown).
        config: Dinov2Config,
        /// Where the head count comes from, or which counts are possible.
        heads: HeadCount,
    },
    /// CLIP towers (CMMD: vision; CLIP score: both); at least one is there.
    Clip {
        /// The vision tower, when the file has one.
        vision: Option<(ClipConfig, HeadSource)>,
        /// The text tower, when the file has one.
        text: Option<(ClipTextConfig, HeadSource)>,
    },
    /// A T5 encoder (t2i captions).
    T5 {
        /// The configuration.
        config: T5Config,
        /// The config file it comes from; `None`: from the shapes alone.
        config_file: Option<PathBuf>,
    },
}

/// A weights file's sha256 and whether it is the released file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The file's sha256.
    pub sha256: String,
    /// The released file the tool knows the checksum of, and whether this is it; `None`: no
    /// released checksum is known for this network.
    pub release: Option<(&'static str, bool)>,
}

/// What the tool makes of the checkpoint `ck`.
pub fn identify(ck: &Checkpoint) -> Result<Identity, InspectError> {
    let path = ck.path();
    let mut attempts = Vec::new();
    let mut refused = |network: &'static str, error: String| {
        let reason = error
            .strip_prefix(&format!("{}: ", path.display()))
            .map_or(error.clone(), str::to_owned);
        attempts.push(Attempt { network, reason });
    };
    match gpt_file(ck) {
        Ok(file) => return Ok(Identity::Gpt(file)),
        Err(e) => refused("GPT", e),
    }
    match vq_file(ck) {
        Ok(file) => return Ok(Identity::Vq(file)),
        Err(e) => refused("VQ tokenizer", e),
    }
    let detections: [(&'static str, Detect); 4] = [
        ("DINOv2", dinov2_network),
        ("T5 encoder", t5_network),
        ("CLIP", clip_network),
        ("Inception", inception_network),
    ];
    for (name, detect) in detections {
        match detect(ck) {
            Ok(network) => {
                let checksum = checksum(path, &network)?;
                return Ok(Identity::Network { network, checksum });
            }
            Err(e) => refused(name, e),
        }
    }
    Ok(Identity::NotANetwork(attempts))
}

/// A feature network's detection: its configuration as its loader infers it, or the loader's
/// reason for refusing the file.
type Detect = fn(&Checkpoint) -> Result<FeatureNetwork, String>;

/// The head counts from 1 to `width` that `infer` accepts, with the first one's result: what the
/// file allows when it does not tell its heads (the loader's own checks decide, not a rule here).
fn head_candidates<C>(width: i64, infer: impl Fn(i64) -> Option<C>) -> Option<(C, Vec<i64>)> {
    let mut first = None;
    let mut candidates = Vec::new();
    for heads in 1..=width.max(0) {
        if let Some(config) = infer(heads) {
            first.get_or_insert(config);
            candidates.push(heads);
        }
    }
    first.map(|config| (config, candidates))
}

/// The entries of `ck` that hold a state dict.
fn held_state_dicts(ck: &Checkpoint) -> Vec<String> {
    std::iter::once("ema")
        .chain(STATE_DICT_KEYS)
        .filter(|k| ck.get(k).is_some_and(|v| v.contains_tensor()))
        .map(str::to_owned)
        .collect()
}

fn gpt_file(ck: &Checkpoint) -> Result<GptFile, String> {
    let path = ck.path();
    let (used, shapes) = gpt::state_dict_shapes(ck).map_err(|e| e.to_string())?;
    let trained = trained_size(path, gpt::recorded_image_size(ck));
    // Every released GPT was trained on LlamaGen's VQ-16 tokens; the grid is the tokenizer's to
    // set, so the factor is that tokenizer's.
    let factor = VqConfig::vq_16().downsample_factor();
    let pixels = trained.map_or(DEFAULT_IMAGE_SIZE, TrainedSize::pixels);
    let grid = (pixels > 0 && pixels % factor == 0).then_some(pixels / factor);
    // The checkpoint does not hold the token count (it is the run's choice); one token stands in
    // where the size gives no grid, which changes no other field.
    let tokens = grid.unwrap_or(1).pow(2);
    let chosen = HeadChoice::default().with_recorded(ck);
    let (config, heads) = match GptConfig::infer(path, &shapes, &chosen, tokens) {
        Ok(config) => {
            // `infer` takes the heads of the recorded registry model, else of the width's.
            let source = match chosen.model_name {
                Some(name) => HeadSource::RecordedModel(name),
                None => gpt::registry_of_width(config.dim).map_or(HeadSource::ReleasedWidth, |r| {
                    HeadSource::RegistryWidth(r.0)
                }),
            };
            let heads = HeadCount::Known {
                heads: config.n_head,
                source,
            };
            (config, heads)
        }
        Err(GptError::UnknownHeads { dim, .. }) => {
            let (config, candidates) = head_candidates(dim, |n| {
                let choice = HeadChoice {
                    n_head: Some(n),
                    model_name: None,
                };
                GptConfig::infer(path, &shapes, &choice, tokens).ok()
            })
            .ok_or_else(|| {
                format!("model dim {dim}: no head count splits it into heads LlamaGen's 2D RoPE can use")
            })?;
            (config, HeadCount::Unknown { candidates })
        }
        Err(e) => return Err(e.to_string()),
    };
    Ok(GptFile {
        config,
        heads,
        size: GenerationSize {
            trained,
            pixels,
            factor,
            grid,
        },
        weights: StateDicts {
            used,
            held: held_state_dicts(ck),
        },
    })
}

fn vq_file(ck: &Checkpoint) -> Result<VqFile, String> {
    let (used, shapes) =
        vq::state_dict_shapes(ck, VqWeights::default()).map_err(|e| e.to_string())?;
    let config = VqConfig::infer(ck.path(), &shapes).map_err(|e| e.to_string())?;
    Ok(VqFile {
        config,
        weights: StateDicts {
            used,
            held: held_state_dicts(ck),
        },
    })
}

fn dinov2_network(ck: &Checkpoint) -> Result<FeatureNetwork, String> {
    let path = ck.path();
    let shapes = dinov2::state_dict_shapes(ck).map_err(|e| e.to_string())?;
    match Dinov2Config::infer(path, &shapes, None) {
        Ok(config) => Ok(FeatureNetwork::Dinov2 {
            heads: HeadCount::Known {
                heads: config.num_heads,
                source: HeadSource::ReleasedWidth,
            },
            config,
        }),
        Err(Dinov2Error::UnknownHeads { embed_dim, .. }) => {
            let (config, candidates) = head_candidates(embed_dim, |n| {
                Dinov2Config::infer(path, &shapes, Some(n)).ok()
            })
            .ok_or_else(|| format!("no head count divides the DINOv2 width {embed_dim}"))?;
            Ok(FeatureNetwork::Dinov2 {
                config,
                heads: HeadCount::Unknown { candidates },
            })
        }
        Err(e) => Err(e.to_string()),
    }
}

fn t5_network(ck: &Checkpoint) -> Result<FeatureNetwork, String> {
    let path = ck.path();
    let shapes = WeightSet::open(path)
        .and_then(|weights| weights.shapes())
        .map_err(|e| e.to_string())?;
    let (config, config_file) = T5Config::of_weights(path, &shapes).map_err(|e| e.to_string())?;
    Ok(FeatureNetwork::T5 {
        config,
        config_file,
    })
}

/// A CLIP file's towers, or the vision loader's reason for refusing it (the text loader's when
/// the vision loader saw a text tower alone).
fn clip_network(ck: &Checkpoint) -> Result<FeatureNetwork, String> {
    let path = ck.path();
    // Both loaders take the heads from the config beside the weights, else the released widths.
    let source =
        || clip::config_beside(path).map_or(HeadSource::ReleasedWidth, HeadSource::ConfigFile);
    let vision = clip::vision_shapes(path)
        .and_then(|shapes| ClipConfig::infer(path, &shapes, clip::Heads::Auto));
    let text_only = matches!(vision, Err(clip::ClipError::TextOnly { .. }));
    let vision = match vision {
        Ok(config) => Some((config, source())),
        // Neither tower: the text loader would read the tensors again only to refuse them too.
        Err(e) if !text_only => return Err(e.to_string()),
        Err(_) => None,
    };
    let text = clip_text::text_shapes(path)
        .and_then(|shapes| ClipTextConfig::infer(path, &shapes, clip::Heads::Auto));
    match text {
        Ok(config) => Ok(FeatureNetwork::Clip {
            vision,
            text: Some((config, source())),
        }),
        Err(_) if vision.is_some() => Ok(FeatureNetwork::Clip { vision, text: None }),
        Err(e) => Err(e.to_string()),
    }
}

/// Inception's architecture is fixed: the file is its weights when they load into it.
fn inception_network(ck: &Checkpoint) -> Result<FeatureNetwork, String> {
    inception::load(ck.path(), tch::Device::Cpu)
        .map(|_| FeatureNetwork::Inception)
        .map_err(|e| e.to_string())
}

fn checksum(path: &Path, network: &FeatureNetwork) -> Result<Checksum, InspectError> {
    let sha256 = sha256_file(path).map_err(|source| InspectError::Hash {
        path: path.to_path_buf(),
        source,
    })?;
    // Only pytorch-fid's Inception release has a checksum the tool knows (its file name carries
    // the first hex digits); the other releases are identified by their shapes alone.
    let release = matches!(network, FeatureNetwork::Inception)
        .then(|| (INCEPTION_WEIGHTS_FILE, is_released_inception(&sha256)));
    Ok(Checksum { sha256, release })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// A one-layer GPT of GPT-B's width under a released file name: heads from the registry,
    /// size from the name, as `sample` would take them.
    #[test]
    fn a_registry_width_and_a_released_name_tell_heads_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c2i_B_384.safetensors");
        let (dim, vocab) = (768, 16);
        let tensors: Vec<(&str, Tensor)> = [
            ("cls_embedding.embedding_table.weight", [1001, dim]),
            ("tok_embeddings.weight", [vocab, dim]),
            ("output.weight", [vocab, dim]),
            ("layers.0.attention.wqkv.weight", [3 * dim, dim]),
            ("layers.0.feed_forward.w1.weight", [2048, dim]),
        ]
        .map(|(name, shape)| (name, Tensor::zeros(shape, (Kind::Half, tch::Device::Cpu))))
        .into();
        Tensor::write_safetensors(&tensors, &path).unwrap();
        let Identity::Gpt(file) = identify(&Checkpoint::open(&path).unwrap()).unwrap() else {
            panic!("not taken for a GPT");
        };
        assert_eq!(
            file.heads,
            HeadCount::Known {
                heads: 12,
                source: HeadSource::RegistryWidth("GPT-B")
            }
        );
        assert_eq!(file.size.trained, Some(TrainedSize::FileName(384)));
        assert_eq!((file.size.pixels, file.size.grid), (384, Some(24)));
        assert_eq!(file.config.num_classes, 1000);
        assert_eq!(file.weights.used, None);
    }

    #[test]
    fn head_candidates_are_the_accepted_counts() {
        let found = head_candidates(12, |h| (12 % h == 0 && h % 2 == 0).then_some(h * 10));
        assert_eq!(found, Some((20, vec![2, 4, 6, 12])));
        assert_eq!(head_candidates(5, |_| None::<i64>), None);
    }
}
