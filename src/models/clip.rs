//! OpenAI CLIP's vision tower, as Hugging Face's `CLIPVisionModelWithProjection` computes it, in tch:
//! the image embedding CMMD (Jayasumana et al. 2024, google-research `cmmd`) compares.
//!
//! Architecture: a patch convolution without bias (`vision_model.embeddings.patch_embedding`,
//! kernel and stride = patch), the class embedding prepended to the patch tokens, learned position
//! embeddings (one per token, no interpolation: the input must be `image_size` square), then
//! `pre_layrnorm`, pre-LN transformer blocks (`vision_model.encoder.layers.{i}`: `layer_norm1`,
//! multi-head self-attention with separate `self_attn.{q,k,v}_proj` and `out_proj`, scaled by
//! `head_dim^-0.5`; `layer_norm2`, `mlp.fc1`, quick GELU `x·σ(1.702x)`, `mlp.fc2`), `post_layernorm`
//! on the class token and `visual_projection` without bias. Every LayerNorm has eps 1e-5.
//!
//! Parameters carry Hugging Face's names (as in `openai/clip-vit-large-patch14-336`), so its
//! `model.safetensors` (a whole `CLIPModel`, whose text tower is skipped, or the vision tower alone)
//! loads unchanged. OpenAI's own release (`ViT-L-14-336px.pt`, a TorchScript archive of the whole
//! model in float16) loads too: its `visual.*` parameters are renamed ([`openai_to_hf`]), the fused
//! attention projection `in_proj_weight` split into q, k, v and `visual.proj` ([width, proj])
//! transposed.
//!
//! The configuration comes from the tensors' shapes (width, depth, patch, image size from the number
//! of position embeddings, MLP width, projection) except the number of attention heads, which no
//! shape reveals: it is given explicitly, or read from the Hugging Face `config.json` beside the
//! weights (`num_attention_heads`, at the top level or under `vision_config`), or taken from the
//! released widths (ViT-B 768: 12 heads, ViT-L 1024: 16).
//!
//! [`preprocess`] reproduces CMMD's image preparation from u8 pixels: centre crop to the short side,
//! Pillow's bicubic resize to the input size, /255, CLIP's mean and standard deviation.

use std::path::{Path, PathBuf};

use ndarray::{ArrayView4, Axis};
use rayon::prelude::*;
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::shapes;
use crate::checkpoint::{self, Checkpoint, CheckpointError, LoadOptions};
use crate::data::pil_resize::{resize_rgb8, Filter};

/// CLIP's per-channel input mean (RGB), as published (applied in float32, as Hugging Face does).
pub const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel input standard deviation (RGB), as published (applied in float32).
pub const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// Input side of `openai/clip-vit-large-patch14-336`, the CMMD network.
pub const CMMD_IMAGE_SIZE: usize = 336;
const LAYER_NORM_EPS: f64 = 1e-5;
/// Attention heads of OpenAI's released vision widths (ViT-B/32, ViT-B/16: 768; ViT-L/14: 1024).
pub const RELEASED_HEADS: [(i64, i64); 2] = [(768, 12), (1024, 16)];

const PREFIX: &str = "vision_model.";
const PROJECTION: &str = "visual_projection.weight";
const CLASS_EMBEDDING: &str = "vision_model.embeddings.class_embedding";
const PATCH_EMBEDDING: &str = "vision_model.embeddings.patch_embedding.weight";
const POSITION_EMBEDDING: &str = "vision_model.embeddings.position_embedding.weight";
const LAYERS: &str = "vision_model.encoder.layers.";

/// The architecture of a CLIP vision tower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipConfig {
    /// Token width (`hidden_size`).
    pub hidden: i64,
    /// Transformer blocks (`num_hidden_layers`).
    pub layers: i64,
    /// Attention heads (`num_attention_heads`).
    pub heads: i64,
    /// MLP width (`intermediate_size`).
    pub intermediate: i64,
    /// Side of the square patches (and the convolution stride).
    pub patch_size: i64,
    /// Side of the square input image.
    pub image_size: i64,
    /// Width of the image embedding (`projection_dim`).
    pub projection_dim: i64,
}

impl ClipConfig {
    /// OpenAI's ViT-L/14 at 336 pixels (`openai/clip-vit-large-patch14-336`, `ViT-L-14-336px.pt`),
    /// the network of CMMD.
    pub fn vit_l14_336() -> Self {
        ClipConfig {
            hidden: 1024,
            layers: 24,
            heads: 16,
            intermediate: 4096,
            patch_size: 14,
            image_size: 336,
            projection_dim: 768,
        }
    }

    /// Patch tokens plus the class token.
    pub fn tokens(&self) -> i64 {
        let grid = self.image_size / self.patch_size;
        grid * grid + 1
    }

    /// Reads the configuration from the shapes of a state dict in Hugging Face's names (see
    /// [`openai_to_hf`] for OpenAI's). `heads` comes from [`Heads`]. `path` names the checkpoint
    /// in errors.
    pub fn infer(
        path: &Path,
        tensors: &[(String, Vec<i64>)],
        heads: Heads,
    ) -> Result<Self, ClipError> {
        check_is_vision(path, tensors.iter().map(|(n, _)| n.as_str()))?;
        let not_clip = |detail: String| ClipError::NotClip {
            path: path.to_path_buf(),
            detail,
        };
        let dims = |name: &str, rank: usize| shapes::dims(tensors, name, rank).map_err(not_clip);
        let hidden = dims(CLASS_EMBEDDING, 1)?[0];
        let patch = dims(PATCH_EMBEDDING, 4)?;
        if patch[0] != hidden || patch[1] != 3 || patch[2] != patch[3] || patch[2] <= 0 {
            return Err(not_clip(format!(
                "`{PATCH_EMBEDDING}` has shape {patch:?}, expected [{hidden}, 3, p, p]"
            )));
        }
        let patch_size = patch[2];
        let positions = dims(POSITION_EMBEDDING, 2)?;
        let grid = (positions[0] - 1).max(0).isqrt();
        if positions[1] != hidden || grid == 0 || grid * grid + 1 != positions[0] {
            return Err(not_clip(format!(
                "`{POSITION_EMBEDDING}` has shape {positions:?}, expected [g² + 1, {hidden}]"
            )));
        }
        let layers = super::numbered_children(tensors.iter().map(|(n, _)| n.as_str()), LAYERS);
        if layers == 0 {
            return Err(not_clip(format!("no `{LAYERS}*` tensors")));
        }
        let intermediate = dims(&format!("{LAYERS}0.mlp.fc1.weight"), 2)?[0];
        let projection = dims(PROJECTION, 2).map_err(|e| match e {
            ClipError::NotClip { path, detail } => ClipError::NotClip {
                path,
                detail: format!(
                    "{detail} (a CLIPVisionModel without the projection? CMMD needs \
                     CLIPVisionModelWithProjection or a whole CLIPModel)"
                ),
            },
            e => e,
        })?;
        if projection[1] != hidden {
            return Err(not_clip(format!(
                "`{PROJECTION}` has shape {projection:?}, expected [proj, {hidden}]"
            )));
        }
        let heads = heads.resolve(path, hidden)?;
        if heads <= 0 || hidden % heads != 0 {
            return Err(ClipError::Heads {
                path: path.to_path_buf(),
                hidden,
                detail: format!("{heads} heads do not divide the width"),
            });
        }
        Ok(ClipConfig {
            hidden,
            layers,
            heads,
            intermediate,
            patch_size,
            image_size: grid * patch_size,
            projection_dim: projection[0],
        })
    }
}

/// Where the number of attention heads comes from (no tensor shape tells it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Heads {
    /// The Hugging Face config beside the weights (`<stem>_config.json`, else `config.json` in the
    /// same folder), else the released widths ([`RELEASED_HEADS`]).
    #[default]
    Auto,
    /// This many heads.
    Explicit(i64),
    /// `num_attention_heads` of this Hugging Face config file (top level or `vision_config`).
    ConfigFile(PathBuf),
}

impl Heads {
    fn resolve(&self, path: &Path, hidden: i64) -> Result<i64, ClipError> {
        match self {
            Heads::Explicit(h) => Ok(*h),
            Heads::ConfigFile(config) => heads_from_config(config, hidden),
            Heads::Auto => {
                if let Some(config) = config_beside(path) {
                    return heads_from_config(&config, hidden);
                }
                RELEASED_HEADS
                    .iter()
                    .find(|(w, _)| *w == hidden)
                    .map(|(_, h)| *h)
                    .ok_or_else(|| ClipError::Heads {
                        path: path.to_path_buf(),
                        hidden,
                        detail: "no config.json beside the weights and not a released width \
                                 (768: 12 heads, 1024: 16); give the number of heads"
                            .to_owned(),
                    })
            }
        }
    }
}

/// `<stem>_config.json` or `config.json` beside `weights`, whichever exists first.
pub(crate) fn config_beside(weights: &Path) -> Option<PathBuf> {
    let dir = weights.parent().unwrap_or(Path::new("."));
    let stem = weights.file_stem()?.to_string_lossy();
    [
        dir.join(format!("{stem}_config.json")),
        dir.join("config.json"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// `num_attention_heads` of a Hugging Face CLIP config (a `CLIPVisionConfig` at the top level, or a
/// `CLIPConfig` with `vision_config`), after checking its `hidden_size` against the weights.
fn heads_from_config(config: &Path, hidden: i64) -> Result<i64, ClipError> {
    let bad = |message: String| ClipError::Config {
        path: config.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(config).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let vision = json.get("vision_config").unwrap_or(&json);
    let heads = vision
        .get("num_attention_heads")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| bad("no integer `num_attention_heads`".to_owned()))?;
    if let Some(width) = vision
        .get("hidden_size")
        .and_then(serde_json::Value::as_i64)
    {
        if width != hidden {
            return Err(bad(format!(
                "its hidden_size is {width} but the weights are {hidden} wide: the config of \
                 another model?"
            )));
        }
    }
    Ok(heads)
}

/// Tells a CLIP text tower (Hugging Face `text_model.*` or OpenAI's `token_embedding`) without any
/// vision parameters apart from other files.
fn check_is_vision<'a>(
    path: &Path,
    names: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), ClipError> {
    let vision = names
        .clone()
        .any(|n| n.starts_with(PREFIX) || n.starts_with("visual.") || n == PROJECTION);
    if !vision {
        if let Some(key) = names.clone().find(|n| {
            n.starts_with("text_model.")
                || n.starts_with("text_projection")
                || n.starts_with("token_embedding.")
        }) {
            return Err(ClipError::TextOnly {
                path: path.to_path_buf(),
                key: key.to_owned(),
            });
        }
    }
    Ok(())
}

/// Why a CLIP vision tower could not be loaded or used. Names the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// The checkpoint file could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A TorchScript archive (OpenAI's release format) that libtorch could not load.
    #[error("{}: cannot read it as a TorchScript archive: {message}", path.display())]
    TorchScript {
        /// The archive.
        path: PathBuf,
        /// libtorch's message.
        message: String,
    },
    /// The file holds only CLIP's text tower.
    #[error(
        "{}: a CLIP text model (it has `{key}` and no vision parameters), not the vision tower; \
         pass the image encoder (CLIPVisionModelWithProjection, a whole CLIPModel, or OpenAI's \
         ViT-L-14-336px.pt)",
        path.display()
    )]
    TextOnly {
        /// The checkpoint.
        path: PathBuf,
        /// The text-tower parameter that gave it away.
        key: String,
    },
    /// The file lacks or misshapes the parameters of a CLIP vision tower.
    #[error("{}: not a CLIP vision model: {detail}", path.display())]
    NotClip {
        /// The checkpoint.
        path: PathBuf,
        /// Which parameter is missing or has the wrong shape.
        detail: String,
    },
    /// The number of attention heads is unknown or impossible.
    #[error("{}: cannot tell the attention heads of a {hidden}-wide CLIP vision model: {detail}", path.display())]
    Heads {
        /// The checkpoint.
        path: PathBuf,
        /// The model width.
        hidden: i64,
        /// Why.
        detail: String,
    },
    /// The Hugging Face config file is unreadable or disagrees with the weights.
    #[error("{}: {message}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Images or network input of the wrong shape.
    #[error("CLIP input: {0}")]
    Input(String),
}

/// The Hugging Face names (and values) of an OpenAI CLIP parameter: `visual.*` renamed, the fused
/// `attn.in_proj_{weight,bias}` split into q, k, v, `visual.proj` transposed. Empty for the text
/// tower's and other non-vision parameters (`logit_scale`, `token_embedding`, ...).
pub fn openai_to_hf(name: &str, t: &Tensor) -> Vec<(String, Tensor)> {
    let Some(rest) = name.strip_prefix("visual.") else {
        return Vec::new();
    };
    let one = |hf: String, t: Tensor| vec![(hf, t)];
    let emb = "vision_model.embeddings";
    match rest {
        "conv1.weight" => return one(format!("{emb}.patch_embedding.weight"), t.shallow_clone()),
        "class_embedding" => return one(format!("{emb}.class_embedding"), t.shallow_clone()),
        "positional_embedding" => {
            return one(
                format!("{emb}.position_embedding.weight"),
                t.shallow_clone(),
            )
        }
        "proj" => return one(PROJECTION.to_owned(), t.transpose(0, 1).contiguous()),
        _ => {}
    }
    for (ours, theirs) in [
        ("ln_pre.", "pre_layrnorm."),
        ("ln_post.", "post_layernorm."),
    ] {
        if let Some(p) = rest.strip_prefix(ours) {
            return one(format!("vision_model.{theirs}{p}"), t.shallow_clone());
        }
    }
    let Some(block) = rest.strip_prefix("transformer.resblocks.") else {
        return Vec::new();
    };
    let Some((index, param)) = block.split_once('.') else {
        return Vec::new();
    };
    let layer = format!("{LAYERS}{index}.");
    if let Some(kind) = param.strip_prefix("attn.in_proj_") {
        let parts = t.chunk(3, 0);
        return ["q", "k", "v"]
            .iter()
            .zip(parts)
            .map(|(n, p)| (format!("{layer}self_attn.{n}_proj.{kind}"), p.contiguous()))
            .collect();
    }
    let renamed = [
        ("attn.out_proj.", "self_attn.out_proj."),
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    for (ours, theirs) in renamed {
        if let Some(p) = param.strip_prefix(ours) {
            return one(format!("{layer}{theirs}{p}"), t.shallow_clone());
        }
    }
    Vec::new()
}

/// The vision tower's tensors of a checkpoint, in Hugging Face's names: Hugging Face files as they
/// are (text tower, `logit_scale` and the `position_ids` buffer dropped), OpenAI's renamed.
fn vision_tensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let openai = tensors.iter().any(|(n, _)| n.starts_with("visual."));
    if openai {
        tracing::debug!("{}: OpenAI CLIP names", path.display());
        return tensors
            .iter()
            .flat_map(|(n, t)| openai_to_hf(n, t))
            .collect();
    }
    tensors
        .into_iter()
        .filter(|(n, _)| {
            !(n.starts_with("text_model.")
                || n.starts_with("text_projection.")
                || n == "logit_scale"
                || n.ends_with("embeddings.position_ids"))
        })
        .collect()
}

/// The vision tower's tensors of the file at `path` as [`ClipVisionModel::load`] reads them (see
/// [`vision_tensors`]); a text tower alone is refused.
fn vision_tower(path: &Path) -> Result<Vec<(String, Tensor)>, ClipError> {
    let all = read_all(path)?;
    check_is_vision(path, all.iter().map(|(n, _)| n.as_str()))?;
    Ok(vision_tensors(path, all))
}

/// The (name, shape) pairs of the vision tower that [`ClipVisionModel::load`] infers the
/// configuration from ([`ClipConfig::infer`]). Reads the tensors: OpenAI's TorchScript release
/// tells its parameters only through libtorch.
pub fn vision_shapes(path: &Path) -> Result<Vec<(String, Vec<i64>)>, ClipError> {
    Ok(super::tensor_shapes(&vision_tower(path)?))
}

/// All tensors of a checkpoint: through our reader (safetensors, torch.save state dicts), else, for
/// a TorchScript archive (OpenAI's release), libtorch's parameters of the scripted module.
pub(crate) fn read_all(path: &Path) -> Result<Vec<(String, Tensor)>, ClipError> {
    let from_reader = Checkpoint::open(path).and_then(|ck| ck.state_dict(false));
    match from_reader {
        Ok(tensors) if !tensors.is_empty() => Ok(tensors),
        other => {
            let zip = std::fs::File::open(path).and_then(|mut f| {
                let mut head = [0u8; 4];
                std::io::Read::read_exact(&mut f, &mut head).map(|()| head == *b"PK\x03\x04")
            });
            if !matches!(zip, Ok(true)) {
                return match other {
                    Ok(_) => Err(ClipError::NotClip {
                        path: path.to_path_buf(),
                        detail: "it holds no tensors".to_owned(),
                    }),
                    Err(e) => Err(e.into()),
                };
            }
            let module = match tch::CModule::load_on_device(path, Device::Cpu) {
                Ok(module) => module,
                // A damaged torch.save file: our reader's account says more than libtorch's.
                Err(_) if other.is_err() => return Err(other.unwrap_err().into()),
                Err(e) => {
                    return Err(ClipError::TorchScript {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })
                }
            };
            let mut tensors = module
                .named_parameters()
                .map_err(|e| ClipError::TorchScript {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            checkpoint::strip_wrapper_prefixes(&mut tensors);
            Ok(tensors)
        }
    }
}

/// The MLP activation of a CLIP tower (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `quick_gelu`: x·σ(1.702x), OpenAI's.
    QuickGelu,
    /// `gelu`: exact (erf) GELU.
    Gelu,
}

impl ClipActivation {
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            ClipActivation::QuickGelu => x * (x * 1.702).sigmoid(),
            ClipActivation::Gelu => x.gelu("none"),
        }
    }
}

pub(crate) fn layer_norm(p: nn::Path, width: i64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![width],
        nn::LayerNormConfig {
            eps: LAYER_NORM_EPS,
            ..Default::default()
        },
    )
}

/// A linear map without bias: each tower's final projection to the shared embedding space.
pub(crate) fn projection(p: nn::Path, input: i64, output: i64) -> nn::Linear {
    nn::linear(
        p,
        input,
        output,
        nn::LinearConfig {
            bias: false,
            ..Default::default()
        },
    )
}

/// The widths and activation of a CLIP tower's transformer blocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockShape {
    /// Token width.
    pub(crate) hidden: i64,
    /// Attention heads.
    pub(crate) heads: i64,
    /// MLP width.
    pub(crate) intermediate: i64,
    /// MLP activation.
    pub(crate) activation: ClipActivation,
}

/// A pre-LN transformer block of either CLIP tower (`encoder.layers.{i}`).
#[derive(Debug)]
pub(crate) struct Block {
    layer_norm1: nn::LayerNorm,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    layer_norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
    activation: ClipActivation,
}

impl Block {
    /// The `layers` blocks `layers.{i}` under `encoder`.
    pub(crate) fn stack(encoder: nn::Path, layers: i64, shape: BlockShape) -> Vec<Block> {
        (0..layers)
            .map(|i| Block::new(&encoder / "layers" / i, shape))
            .collect()
    }

    fn new(p: nn::Path, shape: BlockShape) -> Self {
        let BlockShape {
            hidden,
            heads,
            intermediate,
            activation,
        } = shape;
        let attn = &p / "self_attn";
        let linear = |p: nn::Path, i, o| nn::linear(p, i, o, Default::default());
        Block {
            layer_norm1: layer_norm(&p / "layer_norm1", hidden),
            q_proj: linear(&attn / "q_proj", hidden, hidden),
            k_proj: linear(&attn / "k_proj", hidden, hidden),
            v_proj: linear(&attn / "v_proj", hidden, hidden),
            out_proj: linear(&attn / "out_proj", hidden, hidden),
            layer_norm2: layer_norm(&p / "layer_norm2", hidden),
            fc1: linear(&p / "mlp" / "fc1", hidden, intermediate),
            fc2: linear(&p / "mlp" / "fc2", intermediate, hidden),
            heads,
            activation,
        }
    }

    /// Multi-head self-attention scaled by `head_dim^-0.5`; `mask` (additive, broadcast to
    /// [N, heads, L, L]) is added to the scaled scores, as Hugging Face does.
    fn attention(&self, x: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (n, l, width) = x.size3().expect("[N, L, C] tokens");
        let head_dim = width / self.heads;
        let split = |t: Tensor| t.view([n, l, self.heads, head_dim]).transpose(1, 2);
        let q = split(x.apply(&self.q_proj));
        let k = split(x.apply(&self.k_proj));
        let v = split(x.apply(&self.v_proj));
        let mut scores = q.matmul(&k.transpose(-2, -1)) * (head_dim as f64).powf(-0.5);
        if let Some(mask) = mask {
            scores += mask;
        }
        let weights = scores.softmax(-1, Kind::Float).to_kind(v.kind());
        weights
            .matmul(&v)
            .transpose(1, 2)
            .reshape([n, l, width])
            .apply(&self.out_proj)
    }

    pub(crate) fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let x = x + self.attention(&x.apply(&self.layer_norm1), mask);
        let h = self
            .activation
            .apply(&x.apply(&self.layer_norm2).apply(&self.fc1))
            .apply(&self.fc2);
        x + h
    }
}

/// The two embeddings of a batch, f32 on the model's device.
#[derive(Debug)]
pub struct ClipEmbeddings {
    /// `image_embeds` [N, projection_dim]: the projected, post-LayerNorm class token.
    pub image_embeds: Tensor,
    /// `image_embeds` L2-normalised per row: the CMMD embedding.
    pub normalized: Tensor,
}

/// CLIP's vision tower with its projection (Hugging Face's `CLIPVisionModelWithProjection`), in
/// eval mode.
#[derive(Debug)]
pub struct ClipVisionModel {
    config: ClipConfig,
    patch_embedding: nn::Conv2D,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: nn::LayerNorm,
    layers: Vec<Block>,
    post_layernorm: nn::LayerNorm,
    visual_projection: nn::Linear,
}

impl ClipVisionModel {
    /// A model with freshly initialised (random) weights under `p`, named as Hugging Face's.
    pub fn new(p: &nn::Path, config: &ClipConfig) -> Self {
        assert!(
            config.heads > 0 && config.hidden % config.heads == 0,
            "the heads must divide the width"
        );
        let vision = p / "vision_model";
        let emb = &vision / "embeddings";
        let patch_embedding = nn::conv2d(
            &emb / "patch_embedding",
            3,
            config.hidden,
            config.patch_size,
            nn::ConvConfig {
                stride: config.patch_size,
                bias: false,
                ..Default::default()
            },
        );
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: (config.hidden as f64).powf(-0.5),
        };
        let class_embedding = emb.var("class_embedding", &[config.hidden], init);
        let position_embedding =
            (&emb / "position_embedding").var("weight", &[config.tokens(), config.hidden], init);
        ClipVisionModel {
            config: config.clone(),
            patch_embedding,
            class_embedding,
            position_embedding,
            pre_layrnorm: layer_norm(&vision / "pre_layrnorm", config.hidden),
            layers: Block::stack(
                &vision / "encoder",
                config.layers,
                BlockShape {
                    hidden: config.hidden,
                    heads: config.heads,
                    intermediate: config.intermediate,
                    activation: ClipActivation::QuickGelu,
                },
            ),
            post_layernorm: layer_norm(&vision / "post_layernorm", config.hidden),
            visual_projection: projection(
                p / "visual_projection",
                config.hidden,
                config.projection_dim,
            ),
        }
    }

    /// Loads a CLIP vision tower onto `device`: a Hugging Face `.safetensors` (or torch.save state
    /// dict) of `CLIPVisionModelWithProjection` or `CLIPModel`, or OpenAI's TorchScript release
    /// (`ViT-L-14-336px.pt`), inferring the configuration from the tensor shapes and `heads`.
    /// Weights are kept in float32 whatever the file holds.
    pub fn load(
        path: &Path,
        device: Device,
        heads: Heads,
    ) -> Result<(nn::VarStore, ClipVisionModel), ClipError> {
        let tensors = vision_tower(path)?;
        let config = ClipConfig::infer(path, &super::tensor_shapes(&tensors), heads)?;
        let (vs, model, loaded) =
            super::build_loaded(device, &tensors, path, &LoadOptions::default(), |p| {
                ClipVisionModel::new(p, &config)
            })?;
        tracing::info!(
            "CLIP vision model {} ({loaded} tensors): {config:?}",
            path.display()
        );
        Ok((vs, model))
    }

    /// The architecture.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.class_embedding.device()
    }

    /// The dtype the network runs in (that of its weights).
    pub fn kind(&self) -> Kind {
        self.class_embedding.kind()
    }

    /// `image_embeds` and their L2-normalised form for normalised NCHW input [N, 3, S, S] with S the
    /// configured image size (see [`preprocess`]).
    pub fn embed(&self, input: &Tensor) -> Result<ClipEmbeddings, ClipError> {
        let side = self.config.image_size;
        let size = input.size();
        if size.len() != 4 || size[1] != 3 || size[2] != side || size[3] != side {
            return Err(ClipError::Input(format!(
                "the network takes [N, 3, {side}, {side}] input, got {size:?}"
            )));
        }
        Ok(tch::no_grad(|| {
            let x = input.to_device(self.device()).to_kind(self.kind());
            let n = size[0];
            let patches = x
                .apply(&self.patch_embedding)
                .flatten(2, -1)
                .transpose(1, 2);
            let class = self
                .class_embedding
                .view([1, 1, -1])
                .expand([n, 1, self.config.hidden], false);
            let mut h = (Tensor::cat(&[class, patches], 1) + &self.position_embedding)
                .apply(&self.pre_layrnorm);
            for layer in &self.layers {
                h = layer.forward(&h, None);
            }
            let pooled = h.select(1, 0).apply(&self.post_layernorm);
            let image_embeds = pooled.apply(&self.visual_projection).to_kind(Kind::Float);
            let normalized = &image_embeds
                / image_embeds
                    .norm_scalaropt_dim(2, [-1], true)
                    .clamp_min(1e-12);
            ClipEmbeddings {
                image_embeds,
                normalized,
            }
        }))
    }

    /// [`preprocess`] at the model's input size, then [`Self::embed`].
    pub fn embed_images(&self, images: ArrayView4<'_, u8>) -> Result<ClipEmbeddings, ClipError> {
        let side = usize::try_from(self.config.image_size).expect("a positive image size");
        self.embed(&preprocess(images, side)?)
    }
}

/// CMMD's image preparation (`cmmd/io_util.py` then `embedding.py`): each u8 RGB image (NHWC) is
/// centre-cropped to its short side (offsets rounded down), resized to `size` x `size` with Pillow's
/// bicubic filter, divided by 255 and normalised with CLIP's mean and std. Returns f32 NCHW on the
/// CPU.
pub fn preprocess(images: ArrayView4<'_, u8>, size: usize) -> Result<Tensor, ClipError> {
    let (n, h, w, c) = images.dim();
    if c != 3 || h == 0 || w == 0 || size == 0 {
        return Err(ClipError::Input(format!(
            "expected non-empty RGB images [N, H, W, 3] and a positive size, got [{n}, {h}, {w}, \
             {c}] and size {size}"
        )));
    }
    let side = h.min(w);
    let (top, left) = ((h - side) / 2, (w - side) / 2);
    let plane = size * size;
    let mean = CLIP_MEAN.map(|v| v as f32);
    let std = CLIP_STD.map(|v| v as f32);
    let mut out = vec![0f32; n * 3 * plane];
    images
        .axis_iter(Axis(0))
        .into_par_iter()
        .zip(out.par_chunks_mut(3 * plane))
        .for_each(|(image, dst)| {
            let mut crop = Vec::with_capacity(side * side * 3);
            for y in top..top + side {
                for x in left..left + side {
                    crop.extend((0..3).map(|ch| image[[y, x, ch]]));
                }
            }
            let resized = resize_rgb8(&crop, side, side, size, size, Filter::Bicubic);
            for (i, px) in resized.chunks_exact(3).enumerate() {
                for ch in 0..3 {
                    dst[ch * plane + i] = (f32::from(px[ch]) / 255.0 - mean[ch]) / std[ch];
                }
            }
        });
    Ok(Tensor::from_slice(&out).view([n as i64, 3, size as i64, size as i64]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(config: &ClipConfig) -> Vec<(String, Vec<i64>)> {
        super::super::variable_shapes(|p| ClipVisionModel::new(p, config))
    }

    fn tiny() -> ClipConfig {
        ClipConfig {
            hidden: 64,
            layers: 2,
            heads: 4,
            intermediate: 256,
            patch_size: 14,
            image_size: 56,
            projection_dim: 32,
        }
    }

    #[test]
    fn configuration_is_inferred_back_from_shapes() {
        let path = Path::new("/nonexistent/clip.safetensors");
        let got = ClipConfig::infer(path, &shapes(&tiny()), Heads::Explicit(4)).unwrap();
        assert_eq!(got, tiny());
        let large = ClipConfig::vit_l14_336();
        let got = ClipConfig::infer(path, &shapes(&large), Heads::Auto).unwrap();
        assert_eq!(got, large);
        assert_eq!(large.tokens(), 577);
        let e = ClipConfig::infer(path, &shapes(&tiny()), Heads::Auto).unwrap_err();
        assert!(matches!(e, ClipError::Heads { hidden: 64, .. }), "{e}");
        let e = ClipConfig::infer(path, &shapes(&tiny()), Heads::Explicit(5)).unwrap_err();
        assert!(e.to_string().contains("do not divide"), "{e}");
    }

    #[test]
    fn heads_are_read_from_a_config_beside_the_weights() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("model.safetensors");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"vision_config": {"hidden_size": 64, "num_attention_heads": 8}}"#,
        )
        .unwrap();
        let got = ClipConfig::infer(&weights, &shapes(&tiny()), Heads::Auto).unwrap();
        assert_eq!(got.heads, 8);
        std::fs::write(
            dir.path().join("model_config.json"),
            r#"{"hidden_size": 128, "num_attention_heads": 2}"#,
        )
        .unwrap();
        let e = ClipConfig::infer(&weights, &shapes(&tiny()), Heads::Auto).unwrap_err();
        assert!(
            matches!(e, ClipError::Config { .. }) && e.to_string().contains("model_config.json"),
            "{e}"
        );
    }

    #[test]
    fn openai_names_map_onto_hugging_face_names() {
        let config = tiny();
        let w = config.hidden;
        let t = |shape: &[i64]| {
            Tensor::arange(shape.iter().product::<i64>(), (Kind::Float, Device::Cpu)).view(shape)
        };
        let names = |name: &str, shape: &[i64]| -> Vec<(String, Vec<i64>)> {
            openai_to_hf(name, &t(shape))
                .into_iter()
                .map(|(n, t)| (n, t.size()))
                .collect()
        };
        assert_eq!(
            names("visual.conv1.weight", &[w, 3, 14, 14]),
            [(PATCH_EMBEDDING.to_owned(), vec![w, 3, 14, 14])]
        );
        assert_eq!(
            names("visual.positional_embedding", &[17, w]),
            [(POSITION_EMBEDDING.to_owned(), vec![17, w])]
        );
        assert_eq!(
            names("visual.ln_pre.bias", &[w])[0].0,
            "vision_model.pre_layrnorm.bias"
        );
        assert_eq!(
            names("visual.ln_post.weight", &[w])[0].0,
            "vision_model.post_layernorm.weight"
        );
        assert_eq!(
            names(
                "visual.transformer.resblocks.1.mlp.c_proj.weight",
                &[w, 4 * w]
            )[0]
            .0,
            "vision_model.encoder.layers.1.mlp.fc2.weight"
        );
        assert_eq!(
            names("visual.transformer.resblocks.0.attn.out_proj.bias", &[w])[0].0,
            "vision_model.encoder.layers.0.self_attn.out_proj.bias"
        );
        // The fused projection splits row-wise into q, k, v.
        let fused = t(&[3 * w, w]);
        let split = openai_to_hf("visual.transformer.resblocks.0.attn.in_proj_weight", &fused);
        let got: Vec<&str> = split.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            got,
            [
                "vision_model.encoder.layers.0.self_attn.q_proj.weight",
                "vision_model.encoder.layers.0.self_attn.k_proj.weight",
                "vision_model.encoder.layers.0.self_attn.v_proj.weight"
            ]
        );
        assert!(split[1].1.equal(&fused.narrow(0, w, w)));
        let bias = openai_to_hf(
            "visual.transformer.resblocks.0.attn.in_proj_bias",
            &t(&[3 * w]),
        );
        assert_eq!(
            bias[2].0,
            "vision_model.encoder.layers.0.self_attn.v_proj.bias"
        );
        assert_eq!(bias[2].1.size(), [w]);
        // The projection is stored [width, proj] by OpenAI, [proj, width] by Hugging Face.
        let proj = t(&[w, 32]);
        let mapped = openai_to_hf("visual.proj", &proj);
        assert_eq!(mapped[0].0, PROJECTION);
        assert!(mapped[0].1.equal(&proj.transpose(0, 1)));
        for text in [
            "positional_embedding",
            "token_embedding.weight",
            "logit_scale",
        ] {
            assert!(openai_to_hf(text, &t(&[2])).is_empty(), "{text}");
        }
    }

    #[test]
    fn text_towers_are_told_apart() {
        let text = vec![(
            "text_model.embeddings.token_embedding.weight".to_owned(),
            vec![300, 64],
        )];
        let e = ClipConfig::infer(Path::new("text.safetensors"), &text, Heads::Explicit(4))
            .unwrap_err();
        assert!(matches!(e, ClipError::TextOnly { .. }), "{e}");
        let other = vec![("encoder.conv_in.weight".to_owned(), vec![1, 3, 3, 3])];
        let e = ClipConfig::infer(Path::new("vq.pt"), &other, Heads::Explicit(4)).unwrap_err();
        assert!(
            matches!(e, ClipError::NotClip { .. }) && e.to_string().contains("vq.pt"),
            "{e}"
        );
    }

    #[test]
    fn random_model_embeds_unit_vectors() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = ClipVisionModel::new(&vs.root(), &tiny());
        let images = ndarray::Array4::from_shape_fn((2, 40, 70, 3), |(n, y, x, c)| {
            ((n * 31 + y * 7 + x * 3 + c * 50) % 256) as u8
        });
        let out = model.embed_images(images.view()).unwrap();
        assert_eq!(out.image_embeds.size(), [2, 32]);
        let norms =
            Vec::<f32>::try_from(out.normalized.norm_scalaropt_dim(2, [-1], false)).unwrap();
        assert!(norms.iter().all(|v| (v - 1.0).abs() < 1e-5), "{norms:?}");
        let e = model
            .embed(&Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu)))
            .unwrap_err();
        assert!(matches!(e, ClipError::Input(_)), "{e}");
    }
}
