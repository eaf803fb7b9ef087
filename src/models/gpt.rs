//! LlamaGen's generator (`autoregressive/models/gpt.py`, `Transformer`) in tch, for inference:
//! class-conditional (`model_type='c2i'`) and text-conditional (`model_type='t2i'`) models.
//!
//! The sequence is `[condition, image token 0, ..., image token L-1]`. For c2i the condition is one
//! class token (`cls_embedding.embedding_table`, `num_classes + 1` rows, the last one the null class
//! used for classifier-free guidance). For t2i it is `cls_token_num` (120) caption positions: T5
//! caption embeddings `[cls_token_num, caption_dim]` projected by `cls_embedding.cap_proj` (an MLP
//! `fc2(gelu_tanh(fc1 x))`, no biases), with the learned null caption
//! `cls_embedding.uncond_embedding` `[cls_token_num, caption_dim]` for guidance. The logits at the
//! last condition position predict image token 0, those at image token `j - 1` image token `j`.
//!
//! Each block is pre-norm: `h = x + wo(attn(attention_norm(x)))`, `out = h + w2(silu(w1 y) * w3 y)`
//! with `y = ffn_norm(h)`; RMSNorm is computed in f32 (`x * rsqrt(mean(x^2) + eps) * weight`,
//! eps 1e-5); attention uses a fused `wqkv` projection (no bias), optional grouped key/value heads
//! and LlamaGen's 2D rotary embedding; the head (`output`) is untied from `tok_embeddings`.
//!
//! 2D RoPE as LlamaGen builds it (`precompute_freqs_cis_2d`): with `head_dim = dim / n_head` and
//! `half = head_dim / 2`, the frequencies are `base^(-2i/half)` for `i < half / 2`; for the image
//! token at grid row `r`, column `c` the `half` rotation pairs (interleaved: elements `2p, 2p+1`)
//! use angles `r * f_0.. r * f_{half/2-1}` then `c * f_0 .. c * f_{half/2-1}`. The condition
//! positions get an all-zero table (cos = sin = 0, as LlamaGen's `torch.zeros`), which zeroes their
//! queries and keys: the golden logits confirm this (cos = 1 would be a different model).
//!
//! Caption masks (t2i): LlamaGen's `generate()` multiplies the columns of the causal mask that hold
//! the caption by the caption's mask (`emb_masks`, the same for both halves of a guided batch) and
//! then sets the diagonal, so no position attends to a padded caption position but every position
//! (a padded one too) attends to itself. The cache keeps the masks for the decoding steps
//! ([`KvCache`]), which see the same columns.
//!
//! Inference keeps a preallocated key/value cache per layer ([`KvCache`]).

use std::path::{Path, PathBuf};

use tch::nn;
use tch::{Device, Kind, TchError, Tensor};

use crate::checkpoint::{self, Checkpoint, CheckpointError, TensorMeta};

/// LlamaGen's RMSNorm epsilon.
pub const NORM_EPS: f64 = 1e-5;
/// LlamaGen's RoPE base.
pub const ROPE_BASE: f64 = 10_000.0;

/// The GPT registry of `gpt.py`: (name, layers, heads, dim).
pub const REGISTRY: [(&str, i64, i64, i64); 8] = [
    ("GPT-B", 12, 12, 768),
    ("GPT-L", 24, 16, 1024),
    ("GPT-XL", 36, 20, 1280),
    ("GPT-XXL", 48, 24, 1536),
    ("GPT-XXXL", 48, 40, 2560),
    ("GPT-1B", 22, 32, 2048),
    ("GPT-3B", 24, 32, 3200),
    ("GPT-7B", 32, 32, 4096),
];

/// Looks a registry entry up by name (`GPT-L`, `gpt-l`, `L`).
pub fn registry_entry(name: &str) -> Option<(&'static str, i64, i64, i64)> {
    let wanted = name.to_ascii_uppercase();
    let wanted = wanted.strip_prefix("GPT-").unwrap_or(&wanted).to_owned();
    REGISTRY
        .iter()
        .copied()
        .find(|(n, ..)| n.strip_prefix("GPT-") == Some(wanted.as_str()))
}

/// The registry entry of model width `dim`, whose head count a checkpoint of that width gets when
/// neither flags nor the checkpoint name a model.
pub fn registry_of_width(dim: i64) -> Option<(&'static str, i64, i64, i64)> {
    REGISTRY.iter().copied().find(|r| r.3 == dim)
}

/// Why a generator could not be loaded or used. Always clear before any sampling starts.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// The checkpoint file could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint has caption-embedding parameters, but not LlamaGen's t2i caption embedder.
    #[error(
        "{}: a text-to-image (t2i) checkpoint (it has `{key}`) without LlamaGen's caption \
         embedder: {detail}",
        path.display()
    )]
    BadCaptionEmbedder {
        /// The checkpoint.
        path: PathBuf,
        /// The caption-embedding parameter that gave it away.
        key: String,
        /// What is missing or misshaped.
        detail: String,
    },
    /// The file passed as the generator is a VQ tokenizer (the two checkpoints were swapped?).
    #[error(
        "{}: looks like a VQ tokenizer (it has `{key}`), not a GPT; pass the generator \
         (e.g. c2i_L_384.pt) as the generator",
        path.display()
    )]
    VqCheckpoint {
        /// The checkpoint.
        path: PathBuf,
        /// The tokenizer parameter that gave it away (`quantize.*`, `decoder.conv_in.*`).
        key: String,
    },
    /// The state dict lacks or misshapes the parameters a LlamaGen GPT has.
    #[error("{}: not a LlamaGen GPT checkpoint: {detail}", path.display())]
    NotGpt {
        /// The checkpoint.
        path: PathBuf,
        /// Which parameter is missing or has the wrong shape.
        detail: String,
    },
    /// No head count or registry name was given and the width matches no registry model.
    #[error(
        "{}: model dim {dim} is not one of the registry's (GPT-B 768, L 1024, XL 1280, XXL 1536, \
         XXXL 2560, 1B 2048, 3B 3200, 7B 4096), so its head count is unknown: give the head count or \
         the registry model name",
        path.display()
    )]
    UnknownHeads {
        /// The checkpoint.
        path: PathBuf,
        /// Its model width.
        dim: i64,
    },
    /// Inconsistent architecture or sampling settings (heads, registry name, block size, CFG...).
    #[error("{0}")]
    BadConfig(String),
    /// A requested class label is negative or not below the model's class count.
    #[error("class label {label} is out of range: the model has {num_classes} classes (0..{num_classes})")]
    LabelOutOfRange {
        /// The offending label.
        label: i64,
        /// The model's class count (the null class excluded).
        num_classes: i64,
    },
    /// The requested image size does not suit the tokenizer or the size the GPT was trained at.
    #[error("image size {image_size} does not fit the generator: {detail}")]
    ImageSize {
        /// The requested side in pixels.
        image_size: i64,
        /// Why it does not fit.
        detail: String,
    },
    /// Class labels (or no captions) for a t2i model.
    #[error("{0}")]
    LabelsForTextToImage(String),
    /// Captions for a c2i model.
    #[error("{0}")]
    CaptionsForClassConditional(String),
    /// Caption embeddings or masks whose shape does not fit the t2i model.
    #[error("caption embeddings do not fit the generator: {0}")]
    CaptionShape(String),
    /// The VQ tokenizer's codebook size differs from the GPT's token vocabulary.
    #[error(
        "the tokenizer's codebook has {codebook} entries but the GPT's vocabulary is {vocab}: \
         they must be the same tokenizer the GPT was trained on"
    )]
    VocabMismatch {
        /// Entries in the tokenizer's codebook.
        codebook: i64,
        /// The GPT's vocabulary size.
        vocab: i64,
    },
    /// A libtorch operation failed (allocation, device, kernel).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// What a model is conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// c2i: one class token (`cls_embedding.embedding_table`).
    Class,
    /// t2i: `cls_token_num` caption-embedding rows of width `caption_dim` (2048 for FLAN-T5-XL),
    /// projected by `cls_embedding.cap_proj`; `cls_embedding.uncond_embedding` is the null caption.
    Caption {
        /// Width of the caption embeddings (T5's `d_model`).
        caption_dim: i64,
    },
}

/// The architecture of a LlamaGen GPT.
#[derive(Debug, Clone, PartialEq)]
pub struct GptConfig {
    /// Model width (embedding size).
    pub dim: i64,
    /// Number of transformer blocks.
    pub n_layer: i64,
    /// Query heads per attention layer.
    pub n_head: i64,
    /// Key/value heads (= `n_head` for plain multi-head attention).
    pub n_kv_head: i64,
    /// Image-token vocabulary: must equal the VQ tokenizer's codebook size.
    pub vocab_size: i64,
    /// Classes, not counting the null class row (0 for t2i models).
    pub num_classes: i64,
    /// Class or caption conditioning.
    pub condition: Condition,
    /// SwiGLU hidden width.
    pub ffn_hidden: i64,
    /// Image tokens per sample (a square grid).
    pub block_size: i64,
    /// Conditioning positions before the image tokens (1 for c2i: the class token; for t2i the
    /// null caption's rows, 120 in LlamaGen).
    pub cls_token_num: i64,
    /// Base of the 2D rotary embedding's frequencies ([`ROPE_BASE`]).
    pub rope_base: f64,
    /// RMSNorm epsilon ([`NORM_EPS`]).
    pub norm_eps: f64,
}

/// How the head count is chosen when the checkpoint does not say.
#[derive(Debug, Clone, Default)]
pub struct HeadChoice {
    /// `--gpt-model NAME`.
    pub model_name: Option<String>,
    /// `--n-head N` (wins over the name).
    pub n_head: Option<i64>,
}

impl HeadChoice {
    /// These choices, or when neither is made the registry name the checkpoint records as
    /// `args.gpt_model` (LlamaGen's training checkpoints do, e.g. "GPT-L"); an unknown name there
    /// is passed over, so the head count then comes from the model width.
    pub fn with_recorded(&self, ck: &Checkpoint) -> HeadChoice {
        let mut heads = self.clone();
        if heads.n_head.is_none() && heads.model_name.is_none() {
            if let Some(name) = ck
                .get("args")
                .and_then(|a| a.get("gpt_model"))
                .and_then(|v| v.as_str())
            {
                if registry_entry(name).is_some() {
                    heads.model_name = Some(name.to_owned());
                }
            }
        }
        heads
    }
}

impl GptConfig {
    /// A config for a registry model with the released LlamaGen hyper-parameters (FFN hidden the
    /// multiple of 256 at or above 8·dim/3, 1000 classes, VQ-16 vocabulary).
    pub fn registry(name: &str, block_size: i64) -> Option<Self> {
        let (_, n_layer, n_head, dim) = registry_entry(name)?;
        let hidden = 2 * (4 * dim) / 3;
        let ffn_hidden = 256 * ((hidden + 255) / 256);
        Some(GptConfig {
            dim,
            n_layer,
            n_head,
            n_kv_head: n_head,
            vocab_size: 16384,
            num_classes: 1000,
            condition: Condition::Class,
            ffn_hidden,
            block_size,
            cls_token_num: 1,
            rope_base: ROPE_BASE,
            norm_eps: NORM_EPS,
        })
    }

    /// Width of one attention head (`dim / n_head`).
    pub fn head_dim(&self) -> i64 {
        self.dim / self.n_head
    }

    /// Side of the square token grid.
    pub fn grid_size(&self) -> i64 {
        (self.block_size as f64).sqrt().round() as i64
    }

    /// Infers the configuration from tensor shapes (names as in LlamaGen's state dicts).
    pub fn infer(
        path: &Path,
        shapes: &[(String, Vec<i64>)],
        heads: &HeadChoice,
        block_size: i64,
    ) -> Result<Self, GptError> {
        let find = |name: &str| shapes.iter().find(|(n, _)| n == name).map(|(_, s)| s);
        if let Some((key, _)) = shapes
            .iter()
            .find(|(n, _)| n.starts_with("quantize.") || n.starts_with("decoder.conv_in"))
        {
            return Err(GptError::VqCheckpoint {
                path: path.to_path_buf(),
                key: key.clone(),
            });
        }
        let not_gpt = |detail: String| GptError::NotGpt {
            path: path.to_path_buf(),
            detail,
        };
        let two = |name: &str| -> Result<(i64, i64), GptError> {
            match find(name) {
                Some(s) if s.len() == 2 => Ok((s[0], s[1])),
                Some(s) => Err(not_gpt(format!("`{name}` has shape {s:?}, expected 2-D"))),
                None => Err(not_gpt(format!("no `{name}`{}", first_names(shapes)))),
            }
        };
        let caption_key = shapes.iter().map(|(n, _)| n).find(|n| {
            n.starts_with("cls_embedding.cap_proj")
                || n.starts_with("cls_embedding.uncond_embedding")
                || n.starts_with("cls_embedding.y_embedding")
        });
        let (condition, num_classes, cls_token_num, dim) =
            match caption_key {
                None => {
                    let (cls_rows, dim) = two("cls_embedding.embedding_table.weight")?;
                    (Condition::Class, cls_rows - 1, 1, dim)
                }
                Some(key) => {
                    let (caption_dim, cls_token_num, dim) = caption_embedder_shapes(shapes)
                        .map_err(|detail| GptError::BadCaptionEmbedder {
                            path: path.to_path_buf(),
                            key: key.clone(),
                            detail,
                        })?;
                    (Condition::Caption { caption_dim }, 0, cls_token_num, dim)
                }
            };
        let (vocab_size, tok_dim) = two("tok_embeddings.weight")?;
        let (out_vocab, out_dim) = two("output.weight")?;
        if tok_dim != dim || out_dim != dim || out_vocab != vocab_size {
            return Err(not_gpt(format!(
                "inconsistent shapes: condition embedding dim {dim}, tok_embeddings \
                 [{vocab_size}, {tok_dim}], output [{out_vocab}, {out_dim}]"
            )));
        }
        let n_layer = (0..)
            .take_while(|i| find(&format!("layers.{i}.attention.wqkv.weight")).is_some())
            .count() as i64;
        if n_layer == 0 {
            return Err(not_gpt("no `layers.0.attention.wqkv.weight`".to_owned()));
        }
        let (qkv_out, _) = two("layers.0.attention.wqkv.weight")?;
        let (ffn_hidden, _) = two("layers.0.feed_forward.w1.weight")?;
        let n_head = match (heads.n_head, heads.model_name.as_deref()) {
            (Some(n), _) => n,
            (None, Some(name)) => {
                let (reg_name, _, n, reg_dim) = registry_entry(name).ok_or_else(|| {
                    GptError::BadConfig(format!(
                        "unknown registry model `{name}`: use one of {}",
                        REGISTRY.map(|r| r.0).join(", ")
                    ))
                })?;
                if reg_dim != dim {
                    return Err(GptError::BadConfig(format!(
                        "registry model {reg_name} has dim {reg_dim} but {} has dim {dim}",
                        path.display()
                    )));
                }
                n
            }
            (None, None) => {
                registry_of_width(dim)
                    .map(|r| r.2)
                    .ok_or_else(|| GptError::UnknownHeads {
                        path: path.to_path_buf(),
                        dim,
                    })?
            }
        };
        if n_head <= 0 || dim % n_head != 0 || (dim / n_head) % 4 != 0 {
            return Err(GptError::BadConfig(format!(
                "{}: {n_head} heads do not divide dim {dim} into head dims that are multiples of 4 \
                 (2D RoPE)",
                path.display()
            )));
        }
        let head_dim = dim / n_head;
        let kv_size = (qkv_out - dim) / 2;
        if qkv_out <= dim || (qkv_out - dim) % 2 != 0 || kv_size % head_dim != 0 {
            return Err(not_gpt(format!(
                "`layers.0.attention.wqkv.weight` has {qkv_out} outputs, which does not split into \
                 dim {dim} + 2 x key/value width with head dim {head_dim}"
            )));
        }
        let n_kv_head = kv_size / head_dim;
        if n_head % n_kv_head != 0 {
            return Err(GptError::BadConfig(format!(
                "{}: {n_head} query heads are not a multiple of {n_kv_head} key/value heads",
                path.display()
            )));
        }
        let config = GptConfig {
            dim,
            n_layer,
            n_head,
            n_kv_head,
            vocab_size,
            num_classes,
            condition,
            ffn_hidden,
            block_size,
            cls_token_num,
            rope_base: ROPE_BASE,
            norm_eps: NORM_EPS,
        };
        config.check_block_size()?;
        Ok(config)
    }

    fn check_block_size(&self) -> Result<(), GptError> {
        let g = self.grid_size();
        if self.block_size <= 0 || g * g != self.block_size {
            return Err(GptError::BadConfig(format!(
                "block size {} is not a square token grid",
                self.block_size
            )));
        }
        Ok(())
    }

    /// Whether classifier-free guidance has a null condition to guide against: the null class
    /// row of a c2i model (absent when it has no class at all), the null caption of a t2i model.
    pub fn has_null_condition(&self) -> bool {
        match self.condition {
            Condition::Class => self.num_classes >= 1,
            Condition::Caption { .. } => true,
        }
    }

    /// Parameters of the model.
    pub fn parameters(&self) -> i64 {
        let kv = self.n_kv_head * self.head_dim();
        let per_layer = self.dim * (self.dim + 2 * kv)
            + self.dim * self.dim
            + 3 * self.dim * self.ffn_hidden
            + 2 * self.dim;
        let condition = match self.condition {
            Condition::Class => (self.num_classes + 1) * self.dim,
            Condition::Caption { caption_dim } => {
                caption_dim * self.dim + self.dim * self.dim + self.cls_token_num * caption_dim
            }
        };
        condition + 2 * self.vocab_size * self.dim + self.n_layer * per_layer + self.dim
    }
}

/// `(caption_dim, cls_token_num, dim)` of LlamaGen's `CaptionEmbedder`: `cap_proj.fc1`
/// `[dim, caption_dim]`, `cap_proj.fc2` `[dim, dim]` (its hidden width is the model's) and the null
/// caption `uncond_embedding` `[cls_token_num, caption_dim]`; else what is missing or misshaped.
fn caption_embedder_shapes(shapes: &[(String, Vec<i64>)]) -> Result<(i64, i64, i64), String> {
    let two = |name: &str| -> Result<(i64, i64), String> {
        match shapes.iter().find(|(n, _)| n == name).map(|(_, s)| s) {
            Some(s) if s.len() == 2 && s.iter().all(|&d| d > 0) => Ok((s[0], s[1])),
            Some(s) => Err(format!("`{name}` has shape {s:?}, expected 2-D")),
            None => Err(format!("no `{name}`")),
        }
    };
    let (dim, caption_dim) = two("cls_embedding.cap_proj.fc1.weight")?;
    let (fc2_out, fc2_in) = two("cls_embedding.cap_proj.fc2.weight")?;
    let (cls_token_num, uncond_dim) = two("cls_embedding.uncond_embedding")?;
    if (fc2_out, fc2_in) != (dim, dim) {
        return Err(format!(
            "`cls_embedding.cap_proj.fc2.weight` is [{fc2_out}, {fc2_in}], expected [{dim}, {dim}] \
             after `fc1` [{dim}, {caption_dim}]"
        ));
    }
    if uncond_dim != caption_dim {
        return Err(format!(
            "the null caption `cls_embedding.uncond_embedding` has width {uncond_dim}, the caption \
             projection takes {caption_dim}"
        ));
    }
    Ok((caption_dim, cls_token_num, dim))
}

/// The GPT parameters of a checkpoint as [`Gpt::load`] reads them: the state dict
/// [`Checkpoint::state_dict_key`] picks (`model`, `module`, `state_dict` or the top level; never
/// `ema`, as LlamaGen's sampling scripts), wrapper prefixes stripped, saved buffers left out.
fn state_dict_metas(ck: &Checkpoint) -> Result<super::StateDictMetas<'_>, GptError> {
    let key = ck.state_dict_key(false)?;
    let mut metas: Vec<(String, &TensorMeta)> = ck.tensor_metas_at(key.as_deref())?;
    checkpoint::strip_wrapper_prefixes(&mut metas);
    // Non-parameter buffers some versions save (RoPE tables, causal masks, caches).
    metas.retain(|(n, _)| !(n == "freqs_cis" || n == "causal_mask" || n.contains("kv_cache")));
    Ok((key, metas))
}

/// The entry [`Gpt::load`] takes the weights from (`None`: the top level) and the (name, shape)
/// pairs it infers the configuration from ([`GptConfig::infer`]), before any tensor is read.
pub fn state_dict_shapes(ck: &Checkpoint) -> Result<super::StateDictShapes, GptError> {
    let (key, metas) = state_dict_metas(ck)?;
    Ok((key, super::meta_shapes(&metas)))
}

/// The `args.image_size` a LlamaGen training checkpoint records, if any.
pub fn recorded_image_size(ck: &Checkpoint) -> Option<i64> {
    ck.get("args")
        .and_then(|a| a.get("image_size"))
        .and_then(|v| v.as_i64())
}

fn first_names(shapes: &[(String, Vec<i64>)]) -> String {
    if shapes.is_empty() {
        return " (the state dict is empty)".to_owned();
    }
    let names: Vec<&str> = shapes.iter().take(4).map(|(n, _)| n.as_str()).collect();
    format!(" (first tensors: {})", names.join(", "))
}

fn captions_for_c2i() -> GptError {
    GptError::CaptionsForClassConditional(
        "a class-conditional (c2i) generator is conditioned on class labels, not captions"
            .to_owned(),
    )
}

/// A bias-free linear layer with LlamaGen's parameter name (`<name>.weight`, [out, in]).
#[derive(Debug)]
struct Linear {
    ws: Tensor,
}

impl Linear {
    fn new(p: nn::Path, input: i64, output: i64) -> Self {
        let bound = 1.0 / (input as f64).sqrt();
        Linear {
            ws: p.var(
                "weight",
                &[output, input],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.ws.tr())
    }
}

#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    dim: i64,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        RmsNorm {
            weight: p.var("weight", &[dim], nn::Init::Const(1.0)),
            dim,
            eps,
        }
    }

    /// LlamaGen's `_norm(x.float()).type_as(x) * weight`: `x * rsqrt(mean(x^2) + eps)` in f32,
    /// back to x's dtype, times the weight in that dtype.
    fn forward(&self, x: &Tensor) -> Tensor {
        if x.kind() == Kind::Float {
            // Nothing is rounded in between: libtorch's kernel with the weight.
            x.rms_norm([self.dim], Some(&self.weight), self.eps)
        } else {
            // libtorch normalises a bf16 or f16 input in f32 and rounds the result once, which is
            // `_norm(x.float()).type_as(x)`; the weight multiplies after that rounding, as in
            // LlamaGen. Passed to the kernel it would be applied before the single rounding: on the
            // golden model in bf16 that is 0.875 off LlamaGen's logits, against bit-exact this way.
            x.rms_norm([self.dim], None::<Tensor>, self.eps) * &self.weight
        }
    }
}

#[derive(Debug)]
struct Block {
    attention_norm: RmsNorm,
    ffn_norm: RmsNorm,
    wqkv: Linear,
    wo: Linear,
    w1: Linear,
    w2: Linear,
    w3: Linear,
}

/// The per-layer key/value cache: `[batch, n_kv_head, max_len, head_dim]` per layer, filled from
/// position 0 on. For a t2i model it also holds which key positions may be attended to (the
/// caption masks of the prefill, every image position).
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    batch: i64,
    max_len: i64,
    /// Bool `[batch, 1, 1, max_len]`: key position k is visible (t2i only).
    visible: Option<Tensor>,
}

impl KvCache {
    /// Number of sequences the cache holds.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// Positions it can hold per sequence (`cls_token_num + block_size` when sampling).
    pub fn max_len(&self) -> i64 {
        self.max_len
    }
}

/// LlamaGen's `CaptionEmbedder` at inference: `cap_proj` and the null caption.
#[derive(Debug)]
struct CaptionEmbedder {
    fc1: Linear,
    fc2: Linear,
    /// `[cls_token_num, caption_dim]`.
    uncond: Tensor,
}

/// The condition embedding of either model type.
#[derive(Debug)]
enum ConditionEmbedding {
    /// `[num_classes + 1, dim]`.
    Class(Tensor),
    Caption(CaptionEmbedder),
}

/// The generator.
#[derive(Debug)]
pub struct Gpt {
    config: GptConfig,
    cls_embedding: ConditionEmbedding,
    tok_embeddings: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    output: Linear,
    /// The rotations `cos + i sin` of [`rope_2d_tables`] as complex64
    /// `[cls_token_num + block_size, 1, head_dim / 2]`: one complex product rotates every query and
    /// key head of a position (the 1 broadcasts over heads).
    rope: Tensor,
    /// `causal[q][k]`: key position k is visible from query position q (k <= q), for the chunks
    /// of several positions that follow cached ones.
    causal: Tensor,
    device: Device,
}

/// LlamaGen's `precompute_freqs_cis_2d`: (cos, sin), each f32 `[cls + grid^2, head_dim / 2]`,
/// zero (cos and sin) at the class positions.
pub fn rope_2d_tables(grid: i64, head_dim: i64, base: f64, cls_token_num: i64) -> (Tensor, Tensor) {
    let half = head_dim / 2;
    let quarter = half / 2;
    // libtorch's own f32 ops in LlamaGen's order give its table bit for bit; Rust's correctly
    // rounded `cos` differs from libtorch's by an ulp at about 1 angle in 13 (GPT-B at 256 px).
    // freqs = 1 / base^(arange(0, half, 2) / half) (Python's `1.0 / t` is `t.reciprocal()`),
    // angles = outer(arange(grid), freqs).
    let exponents = Tensor::arange_start_step(0, half, 2, (Kind::Int64, Device::Cpu))
        .narrow(0, 0, quarter)
        .to_kind(Kind::Float)
        / half as f64;
    let freqs = Tensor::pow_scalar(base, &exponents).reciprocal();
    let angles = Tensor::arange(grid, (Kind::Int64, Device::Cpu)).outer(&freqs);
    // [row, column, half]: the row's angles, then the column's.
    let grid_angles = Tensor::cat(
        &[
            angles.unsqueeze(1).expand([grid, grid, quarter], false),
            angles.unsqueeze(0).expand([grid, grid, quarter], false),
        ],
        -1,
    );
    let class_rows = Tensor::zeros([cls_token_num, half], (Kind::Float, Device::Cpu));
    let table = |values: Tensor| Tensor::cat(&[&class_rows, &values.flatten(0, 1)], 0);
    (table(grid_angles.cos()), table(grid_angles.sin()))
}

/// `sample_t2i.py`'s left padding of T5 caption embeddings: embeddings `[N, L, D]` and masks
/// `[N, L]` as T5 returns them (right-padded: a row's `v` valid positions first) become
/// `(embeddings, masks)` with the valid rows moved to the end, the padded rows zeroed and the masks
/// flipped. LlamaGen's own operations: per row `cat([emb[v:], emb[:v]])` with `v = mask.sum()`,
/// `flip(masks)`, then the embeddings times the flipped masks (the `c_indices` it samples from).
/// The masks keep their dtype.
pub fn left_pad_captions(
    embeddings: &Tensor,
    masks: &Tensor,
) -> Result<(Tensor, Tensor), TchError> {
    let (n, l) = masks.size2()?;
    let device = embeddings.device();
    let valid = masks
        .f_ne(0)?
        .f_sum_dim_intlist(1, true, Kind::Int64)?
        .f_to_device(device)?;
    // Row n's position j takes old position (j + v_n) mod L: the rotation `cat([x[v:], x[:v]])`.
    let positions = Tensor::f_arange(l, (Kind::Int64, device))?
        .f_unsqueeze(0)?
        .f_add(&valid)?
        .f_remainder(l)?;
    let d = embeddings.size().last().copied().unwrap_or(0);
    let index = positions.f_unsqueeze(-1)?.f_expand([n, l, d], false)?;
    let rotated = embeddings.f_gather(1, &index, false)?;
    let flipped = masks.f_flip([1])?;
    let zeroed = rotated.f_mul(
        &flipped
            .f_to_device(device)?
            .f_unsqueeze(-1)?
            .f_to_kind(rotated.kind())?,
    )?;
    Ok((zeroed, flipped))
}

impl Gpt {
    /// Creates the variables under `p` with LlamaGen's names (random initialisation).
    pub fn new(p: &nn::Path, config: &GptConfig) -> Self {
        let dim = config.dim;
        let kv = config.n_kv_head * config.head_dim();
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let cls_embedding = match config.condition {
            Condition::Class => {
                ConditionEmbedding::Class((p / "cls_embedding" / "embedding_table").var(
                    "weight",
                    &[config.num_classes + 1, dim],
                    init,
                ))
            }
            Condition::Caption { caption_dim } => {
                let e = p / "cls_embedding";
                ConditionEmbedding::Caption(CaptionEmbedder {
                    fc1: Linear::new(&e / "cap_proj" / "fc1", caption_dim, dim),
                    fc2: Linear::new(&e / "cap_proj" / "fc2", dim, dim),
                    uncond: e.var(
                        "uncond_embedding",
                        &[config.cls_token_num, caption_dim],
                        nn::Init::Randn {
                            mean: 0.0,
                            stdev: 1.0 / (caption_dim as f64).sqrt(),
                        },
                    ),
                })
            }
        };
        let tok_embeddings = (p / "tok_embeddings").var("weight", &[config.vocab_size, dim], init);
        let layers = (0..config.n_layer)
            .map(|i| {
                let l = p / "layers" / i;
                Block {
                    attention_norm: RmsNorm::new(&l / "attention_norm", dim, config.norm_eps),
                    ffn_norm: RmsNorm::new(&l / "ffn_norm", dim, config.norm_eps),
                    wqkv: Linear::new(&l / "attention" / "wqkv", dim, dim + 2 * kv),
                    wo: Linear::new(&l / "attention" / "wo", dim, dim),
                    w1: Linear::new(&l / "feed_forward" / "w1", dim, config.ffn_hidden),
                    w3: Linear::new(&l / "feed_forward" / "w3", dim, config.ffn_hidden),
                    w2: Linear::new(&l / "feed_forward" / "w2", config.ffn_hidden, dim),
                }
            })
            .collect();
        let (cos, sin) = rope_2d_tables(
            config.grid_size(),
            config.head_dim(),
            config.rope_base,
            config.cls_token_num,
        );
        let positions = config.cls_token_num + config.block_size;
        Gpt {
            config: config.clone(),
            cls_embedding,
            tok_embeddings,
            layers,
            norm: RmsNorm::new(p / "norm", dim, config.norm_eps),
            output: Linear::new(p / "output", dim, config.vocab_size),
            rope: Tensor::complex(&cos, &sin)
                .unsqueeze(1)
                .to_device(p.device()),
            causal: Tensor::ones([positions, positions], (Kind::Bool, p.device())).tril(0),
            device: p.device(),
        }
    }

    /// Loads a LlamaGen c2i or t2i checkpoint: a training checkpoint (`model`, `module` or
    /// `state_dict`) or an FSDP `consolidated.pth` bare state dict. `image_tokens` is the number of image tokens
    /// per sample (grid side squared). The configuration comes from the tensor shapes and `heads`.
    pub fn load(
        path: &Path,
        device: Device,
        heads: &HeadChoice,
        image_tokens: i64,
    ) -> Result<(nn::VarStore, Gpt), GptError> {
        let ck = Checkpoint::open(path)?;
        let (key, metas) = state_dict_metas(&ck)?;
        let config = GptConfig::infer(
            path,
            &super::meta_shapes(&metas),
            &heads.with_recorded(&ck),
            image_tokens,
        )?;
        let tensors = ck.read_tensors(&metas)?;
        let (vs, model, loaded) =
            super::build_loaded(device, &tensors, path, &Default::default(), |p| {
                Gpt::new(p, &config)
            })?;
        tracing::info!(
            "GPT {} ({loaded} tensors{}): {config:?}",
            path.display(),
            key.map(|k| format!(" from `{k}`")).unwrap_or_default()
        );
        Ok((vs, model))
    }

    /// The `args.image_size` a LlamaGen training checkpoint records, if any.
    pub fn checkpoint_image_size(path: &Path) -> Result<Option<i64>, GptError> {
        Ok(recorded_image_size(&Checkpoint::open(path)?))
    }

    /// The architecture the model was built with.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// Where the weights live and sampling runs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype the network runs in (its weights').
    pub fn kind(&self) -> Kind {
        self.tok_embeddings.kind()
    }

    /// Checks that every label is a real class (not the null class, not beyond) of a c2i model.
    pub fn check_labels(&self, labels: &[i64]) -> Result<(), GptError> {
        if let Condition::Caption { .. } = self.config.condition {
            return Err(GptError::LabelsForTextToImage(
                "a text-to-image (t2i) generator is conditioned on captions, not class labels"
                    .to_owned(),
            ));
        }
        match labels
            .iter()
            .find(|&&l| l < 0 || l >= self.config.num_classes)
        {
            Some(&label) => Err(GptError::LabelOutOfRange {
                label,
                num_classes: self.config.num_classes,
            }),
            None => Ok(()),
        }
    }

    /// A zeroed key/value cache for `batch` sequences of up to `max_len` positions.
    pub fn new_cache(&self, batch: i64, max_len: i64) -> KvCache {
        let hd = self.config.head_dim();
        let shape = [batch, self.config.n_kv_head, max_len, hd];
        let make = || {
            (0..self.config.n_layer)
                .map(|_| Tensor::zeros(shape, (self.kind(), self.device)))
                .collect::<Vec<_>>()
        };
        KvCache {
            keys: make(),
            values: make(),
            batch,
            max_len,
            visible: None,
        }
    }

    /// Embeddings of class labels (`num_classes` = the null class): `[B, 1, dim]`.
    ///
    /// # Panics
    /// For a t2i model (whose condition is captions: [`Gpt::caption_embeddings`]).
    pub fn class_embeddings(&self, labels: &Tensor) -> Tensor {
        let ConditionEmbedding::Class(table) = &self.cls_embedding else {
            panic!("class embeddings of a text-to-image model");
        };
        Tensor::embedding(table, &labels.to_device(self.device), -1, false, false).unsqueeze(1)
    }

    fn caption_embedder(&self) -> Result<&CaptionEmbedder, GptError> {
        match &self.cls_embedding {
            ConditionEmbedding::Caption(embedder) => Ok(embedder),
            ConditionEmbedding::Class(_) => Err(captions_for_c2i()),
        }
    }

    /// Checks caption embeddings `[B, cls_token_num, caption_dim]` and masks `[B, cls_token_num]`
    /// against a t2i model.
    pub fn check_captions(&self, captions: &Tensor, masks: &Tensor) -> Result<(), GptError> {
        let Condition::Caption { caption_dim } = self.config.condition else {
            return Err(captions_for_c2i());
        };
        let l = self.config.cls_token_num;
        let size = captions.size();
        if size.len() != 3 || size[1] != l || size[2] != caption_dim {
            return Err(GptError::CaptionShape(format!(
                "embeddings of shape {size:?}, the generator takes [N, {l}, {caption_dim}] \
                 ({l} caption positions of width {caption_dim})"
            )));
        }
        if masks.size() != [size[0], l] {
            return Err(GptError::CaptionShape(format!(
                "masks of shape {:?} for embeddings of shape {size:?}: expected [{}, {l}]",
                masks.size(),
                size[0]
            )));
        }
        Ok(())
    }

    /// LlamaGen's `CaptionEmbedder` at inference, `cap_proj(captions)`: caption embeddings
    /// `[B, cls_token_num, caption_dim]` (any float dtype) -> `[B, cls_token_num, dim]` in the
    /// model's dtype.
    pub fn caption_embeddings(&self, captions: &Tensor) -> Result<Tensor, GptError> {
        let embedder = self.caption_embedder()?;
        let x = captions.to_device(self.device).to_kind(self.kind());
        Ok(embedder.fc2.forward(&embedder.fc1.forward(&x).gelu("tanh")))
    }

    /// The null caption `uncond_embedding` for `batch` rows, `[batch, cls_token_num,
    /// caption_dim]`: LlamaGen's `cond_null` (`zeros_like(cond) + uncond_embedding`, not masked).
    pub fn null_captions(&self, batch: i64) -> Result<Tensor, GptError> {
        let uncond = &self.caption_embedder()?.uncond;
        let size = uncond.size();
        Ok(uncond.unsqueeze(0).expand([batch, size[0], size[1]], false))
    }

    /// Embeddings of image tokens `[B, T]` -> `[B, T, dim]`.
    pub fn token_embeddings(&self, tokens: &Tensor) -> Tensor {
        Tensor::embedding(
            &self.tok_embeddings,
            &tokens.to_device(self.device),
            -1,
            false,
            false,
        )
    }

    /// LlamaGen's `apply_rotary_emb` on the query and key heads of positions `start..start + T`
    /// at once: `qk` `[B, T, (n_head + n_kv_head) * head_dim]` (the q|k part of the fused
    /// projection) -> `[B, T, n_head + n_kv_head, head_dim]` in qk's dtype. Pairs `(2p, 2p + 1)`
    /// are complex numbers multiplied by the table's `cos + i sin`, in f32 as LlamaGen computes
    /// them: its `x0 cos - x1 sin`, `x1 cos + x0 sin` to within one f32 ulp (libtorch's scalar
    /// loop may fuse a multiply-add; see the `rotation_is_llamagens_f32_formula` test).
    fn rotate(&self, qk: &Tensor, start: i64) -> Tensor {
        let size = qk.size();
        let (b, t) = (size[0], size[1]);
        let heads = self.config.n_head + self.config.n_kv_head;
        let hd = self.config.head_dim();
        let table = self.rope.narrow(0, start, t);
        (qk.to_kind(Kind::Float)
            .view([b, t, heads, hd / 2, 2])
            .view_as_complex()
            * table)
            .view_as_real()
            .view([b, t, heads, hd])
            .to_kind(qk.kind())
    }

    /// Runs the transformer on embeddings `h` `[B, T, dim]` at positions `start..start + T` and
    /// returns f32 logits `[B, T, vocab]`. With a cache, keys and values are written into it at
    /// those positions and attention covers positions `0..start + T` (those the cache's caption
    /// masks leave visible, for a t2i model); without, `start` must be 0 and attention is causal
    /// over the `T` positions (teacher forcing).
    pub fn forward_embeddings(
        &self,
        h: &Tensor,
        start: i64,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let visible = cache
            .as_deref_mut()
            .and_then(|c| c.visible.as_ref().map(Tensor::shallow_clone));
        let h = self.hidden(h, start, cache, visible.as_ref());
        self.logits(&h)
    }

    /// f32 logits of final hidden states.
    fn logits(&self, h: &Tensor) -> Tensor {
        self.output
            .forward(&self.norm.forward(h))
            .to_kind(Kind::Float)
    }

    /// The attention mask of positions `start..start + t` over keys `0..start + t`, and whether
    /// SDPA's own causal mask does the job instead. `visible` (t2i): bool `[B, 1, 1, >= start + t]`
    /// key positions that may be seen (LlamaGen's caption masks), to which the causal mask is
    /// restricted, except that every position sees itself.
    fn attention_mask(
        &self,
        start: i64,
        t: i64,
        visible: Option<&Tensor>,
    ) -> (Option<Tensor>, bool) {
        let total = start + t;
        let causal = || self.causal.narrow(0, start, t).narrow(1, 0, total);
        let Some(visible) = visible else {
            // Within the new positions the attention is causal; earlier cached positions are all
            // visible. A mask is needed when several new positions follow cached ones.
            return ((t > 1 && start > 0).then(causal), t > 1 && start == 0);
        };
        let mut mask = causal().logical_and(&visible.narrow(-1, 0, total));
        if start < self.config.cls_token_num {
            // Image positions are always visible, so only condition rows can lose their diagonal.
            let diagonal =
                Tensor::eye_m(total, total, (Kind::Bool, self.device)).narrow(0, start, t);
            mask = mask.logical_or(&diagonal);
        }
        (Some(mask), false)
    }

    /// The final hidden states (before the norm) of [`Gpt::forward_embeddings`], with the key
    /// positions `visible` (t2i) instead of all.
    // Residual additions stay out of place: `h` may be the caller's tensor.
    #[allow(clippy::assign_op_pattern)]
    fn hidden(
        &self,
        h: &Tensor,
        start: i64,
        mut cache: Option<&mut KvCache>,
        visible: Option<&Tensor>,
    ) -> Tensor {
        let size = h.size();
        let (b, t) = (size[0], size[1]);
        let c = &self.config;
        let hd = c.head_dim();
        let kv = c.n_kv_head * hd;
        let mut h = h.to_kind(self.kind());
        let total = start + t;
        let (mask, is_causal) = self.attention_mask(start, t, visible);
        for (i, layer) in self.layers.iter().enumerate() {
            let x = layer.attention_norm.forward(&h);
            let qkv = layer.wqkv.forward(&x);
            let qk = self.rotate(&qkv.narrow(-1, 0, c.dim + kv), start);
            let q = qk.narrow(2, 0, c.n_head).transpose(1, 2);
            let k = qk.narrow(2, c.n_head, c.n_kv_head).transpose(1, 2);
            let v = qkv
                .narrow(-1, c.dim + kv, kv)
                .view([b, t, c.n_kv_head, hd])
                .transpose(1, 2);
            let (keys, values) = match cache.as_deref_mut() {
                Some(cache) => {
                    let mut dst = cache.keys[i].narrow(2, start, t);
                    dst.copy_(&k);
                    let mut dst = cache.values[i].narrow(2, start, t);
                    dst.copy_(&v);
                    (
                        cache.keys[i].narrow(2, 0, total),
                        cache.values[i].narrow(2, 0, total),
                    )
                }
                None => (k, v),
            };
            // With grouped key/value heads SDPA maps query head h to key/value head
            // h / (n_head / n_kv_head), LlamaGen's `repeat_interleave`, without copying the cache.
            let attn = Tensor::scaled_dot_product_attention(
                &q,
                &keys,
                &values,
                mask.as_ref(),
                0.0,
                is_causal,
                None,
                c.n_kv_head != c.n_head,
            );
            let attn = attn.transpose(1, 2).reshape([b, t, c.dim]);
            h = h + layer.wo.forward(&attn);
            let y = layer.ffn_norm.forward(&h);
            let ffn = layer
                .w2
                .forward(&(layer.w1.forward(&y).silu() * layer.w3.forward(&y)));
            h = h + ffn;
        }
        h
    }

    /// Bool `[B, 1, 1, len]` visible key positions: the caption masks `[B, cls_token_num]` (any
    /// dtype, nonzero = valid) followed by `len - cls_token_num` image positions.
    fn visible_keys(&self, masks: &Tensor, len: i64) -> Tensor {
        let b = masks.size()[0];
        let images = Tensor::ones(
            [b, len - self.config.cls_token_num],
            (Kind::Bool, self.device),
        );
        Tensor::cat(&[masks.to_device(self.device).ne(0), images], 1).view([b, 1, 1, len])
    }

    /// Teacher-forced logits: `model(idx=tokens, cond_idx=labels)` of LlamaGen, f32
    /// `[B, 1 + T, vocab]` for tokens `[B, T]` (position j predicts image token j).
    pub fn teacher_forced(&self, labels: &Tensor, tokens: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let cls = self.class_embeddings(labels);
            let h = if tokens.size()[1] > 0 {
                Tensor::cat(&[cls, self.token_embeddings(tokens)], 1)
            } else {
                cls
            };
            self.forward_embeddings(&h, 0, None)
        })
    }

    /// Teacher-forced logits of a t2i model: caption embeddings `[B, cls_token_num,
    /// caption_dim]` (left-padded, as LlamaGen samples), their masks `[B, cls_token_num]` and
    /// image tokens `[B, T]` give f32 `[B, cls_token_num + T, vocab]`; position
    /// `cls_token_num - 1 + j` predicts image token j.
    pub fn teacher_forced_captions(
        &self,
        captions: &Tensor,
        masks: &Tensor,
        tokens: &Tensor,
    ) -> Result<Tensor, GptError> {
        self.check_captions(captions, masks)?;
        tch::no_grad(|| {
            let cond = self.caption_embeddings(captions)?;
            let h = if tokens.size()[1] > 0 {
                Tensor::cat(&[cond, self.token_embeddings(tokens)], 1)
            } else {
                cond
            };
            let visible = self.visible_keys(masks, h.size()[1]);
            Ok(self.logits(&self.hidden(&h, 0, None, Some(&visible))))
        })
    }

    /// Prefill of a t2i model: caption embeddings `[B, cls_token_num, caption_dim]` (any float
    /// dtype) and their masks `[B, cls_token_num]` (nonzero = valid) fill the cache at the caption
    /// positions and keep the masks for the decoding steps; returns the logits `[B, vocab]` for
    /// image token 0 (those of the last caption position).
    pub fn prefill_captions(
        &self,
        captions: &Tensor,
        masks: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, GptError> {
        self.check_captions(captions, masks)?;
        let l = self.config.cls_token_num;
        if captions.size()[0] != cache.batch || cache.max_len < l {
            return Err(GptError::CaptionShape(format!(
                "{} captions for a cache of {} sequences of {} positions",
                captions.size()[0],
                cache.batch,
                cache.max_len
            )));
        }
        tch::no_grad(|| {
            let h = self.caption_embeddings(captions)?;
            let visible = self.visible_keys(masks, cache.max_len);
            cache.visible = Some(visible.shallow_clone());
            let h = self.hidden(&h, 0, Some(cache), Some(&visible));
            Ok(self.logits(&h.select(1, l - 1)))
        })
    }

    /// Prefill: logits `[B, vocab]` for image token 0 from class labels (`[B]`), filling the cache
    /// at position 0.
    pub fn prefill(&self, labels: &Tensor, cache: &mut KvCache) -> Tensor {
        tch::no_grad(|| {
            let h = self.class_embeddings(labels);
            self.forward_embeddings(&h, 0, Some(cache)).select(1, 0)
        })
    }

    /// One decoding step: the image token `j - 1` (`[B]`) goes in at position
    /// `cls_token_num + j - 1`; returns the logits `[B, vocab]` for image token `j`.
    pub fn decode_step(&self, tokens: &Tensor, j: i64, cache: &mut KvCache) -> Tensor {
        tch::no_grad(|| {
            let h = self.token_embeddings(&tokens.view([-1, 1]));
            let pos = self.config.cls_token_num + j - 1;
            self.forward_embeddings(&h, pos, Some(cache)).select(1, 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GptConfig {
        GptConfig {
            dim: 32,
            n_layer: 2,
            n_head: 4,
            n_kv_head: 4,
            vocab_size: 50,
            num_classes: 5,
            condition: Condition::Class,
            ffn_hidden: 96,
            block_size: 9,
            cls_token_num: 1,
            rope_base: ROPE_BASE,
            norm_eps: NORM_EPS,
        }
    }

    #[test]
    fn registry_ffn_widths_match_llamagen() {
        // GPT-B: 8*768/3 = 2048 -> 2048; GPT-L: 2730.67 -> 2816; GPT-XL: 3413 -> 3584.
        assert_eq!(GptConfig::registry("B", 256).unwrap().ffn_hidden, 2048);
        assert_eq!(GptConfig::registry("GPT-L", 256).unwrap().ffn_hidden, 2816);
        assert_eq!(GptConfig::registry("gpt-xl", 576).unwrap().ffn_hidden, 3584);
        assert!(registry_entry("GPT-Q").is_none());
    }

    #[test]
    fn cached_decoding_equals_teacher_forcing() {
        // Plain multi-head attention, and grouped key/value heads (two query heads per pair).
        for n_kv_head in [4, 2] {
            check_cached_decoding(&GptConfig {
                n_kv_head,
                ..tiny()
            });
        }
    }

    fn check_cached_decoding(config: &GptConfig) {
        tch::manual_seed(0);
        let config = config.clone();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gpt::new(&vs.root(), &config);
        let labels = Tensor::from_slice(&[1i64, 4]);
        let tokens = Tensor::from_slice(&[3i64, 7, 9, 11, 2, 40, 0, 1, 5, 6, 7, 8, 9, 10, 11, 12])
            .view([2, 8]);
        let full = model.teacher_forced(&labels, &tokens);
        let mut cache = model.new_cache(2, config.block_size);
        let mut steps = vec![model.prefill(&labels, &mut cache)];
        for j in 1..config.block_size {
            steps.push(model.decode_step(&tokens.select(1, j - 1), j, &mut cache));
        }
        let cached = Tensor::stack(&steps, 1);
        let diff = (&full - &cached).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        // A chunk of several positions after cached ones uses the explicit mask.
        let mut cache = model.new_cache(2, config.block_size);
        let _ = model.prefill(&labels, &mut cache);
        let h = model.token_embeddings(&tokens.narrow(1, 0, 4));
        let chunk = tch::no_grad(|| model.forward_embeddings(&h, 1, Some(&mut cache)));
        let diff = (full.narrow(1, 1, 4) - chunk).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn grouped_attention_equals_repeated_heads() {
        // SDPA's `enable_gqa` against LlamaGen's `repeat_interleave` of the key/value heads: 6
        // query heads on 2 key/value heads, causal, one decoding step over a longer cache, and an
        // explicit mask.
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let (b, h, kvh, hd) = (2, 6, 2, 16);
        let rep = |x: &Tensor| x.repeat_interleave_self_int(h / kvh, 1, None);
        let mask = Tensor::ones([3, 7], (Kind::Bool, Device::Cpu)).tril(4);
        for (t, s, mask, causal) in [
            (5, 5, None, true),
            (1, 9, None, false),
            (3, 7, Some(&mask), false),
        ] {
            let q = Tensor::randn([b, h, t, hd], opts);
            let k = Tensor::randn([b, kvh, s, hd], opts);
            let v = Tensor::randn([b, kvh, s, hd], opts);
            let grouped =
                Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, causal, None, true);
            let repeated = Tensor::scaled_dot_product_attention(
                &q,
                &rep(&k),
                &rep(&v),
                mask,
                0.0,
                causal,
                None,
                false,
            );
            let diff = (&grouped - &repeated).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "t={t} s={s}: {diff}");
        }
    }

    #[test]
    fn rotation_is_llamagens_f32_formula() {
        // The complex product is LlamaGen's `x0 cos - x1 sin`, `x1 cos + x0 sin` in f32, for the
        // query and key heads together, from the cache position `start` on.
        tch::manual_seed(5);
        let config = GptConfig {
            n_kv_head: 2,
            ..tiny()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gpt::new(&vs.root(), &config);
        let (hd, heads, start, t) = (config.head_dim(), 6, 2, 4);
        let qk = Tensor::randn([2, t, heads * hd], (Kind::Float, Device::Cpu));
        let ours = model.rotate(&qk, start);
        let (cos, sin) = rope_2d_tables(3, hd, ROPE_BASE, 1);
        let cos = cos.narrow(0, start, t).view([1, t, 1, hd / 2]);
        let sin = sin.narrow(0, start, t).view([1, t, 1, hd / 2]);
        let pairs = qk.view([2, t, heads, hd / 2, 2]);
        let (x0, x1) = (pairs.select(4, 0), pairs.select(4, 1));
        let expected = Tensor::stack(&[&x0 * &cos - &x1 * &sin, &x1 * &cos + &x0 * &sin], -1)
            .view([2, t, heads, hd]);
        // libtorch's vectorised complex product rounds each product before the sum, exactly as
        // LlamaGen; its scalar loop (the elements past the last full vector, here all of them with 4
        // pairs per head) may fuse a multiply-add: one f32 ulp.
        let diff = (&ours - &expected).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        // bf16 in, bf16 out: the rotation itself in f32, rounded once.
        let ours = model.rotate(&qk.to_kind(Kind::BFloat16), start);
        assert_eq!(ours.kind(), Kind::BFloat16);
    }

    #[test]
    fn class_positions_get_the_zero_table() {
        let (cos, sin) = rope_2d_tables(4, 16, ROPE_BASE, 1);
        assert_eq!(cos.size(), [17, 8]);
        assert_eq!(cos.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert_eq!(sin.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
        // Grid (0, 0): no rotation; grid (1, 2): row angle 1 * f0 in slot 0, column 2 * f0 in
        // slot 4.
        assert_eq!(cos.get(1).min().double_value(&[]), 1.0);
        let p = 1 + 4 + 2;
        assert!((sin.double_value(&[p, 0]) - 1f64.sin()).abs() < 1e-6);
        assert!((sin.double_value(&[p, 4]) - 2f64.sin()).abs() < 1e-6);
    }

    #[test]
    fn heads_come_from_the_registry_or_flags() {
        let shapes = |dim: i64| {
            vec![
                (
                    "cls_embedding.embedding_table.weight".to_owned(),
                    vec![1001, dim],
                ),
                ("tok_embeddings.weight".to_owned(), vec![16384, dim]),
                (
                    "layers.0.attention.wqkv.weight".to_owned(),
                    vec![3 * dim, dim],
                ),
                (
                    "layers.0.feed_forward.w1.weight".to_owned(),
                    vec![2816, dim],
                ),
                ("output.weight".to_owned(), vec![16384, dim]),
            ]
        };
        let p = Path::new("x.pt");
        let c = GptConfig::infer(p, &shapes(1024), &HeadChoice::default(), 256).unwrap();
        assert_eq!((c.n_head, c.n_layer, c.num_classes), (16, 1, 1000));
        assert!(matches!(
            GptConfig::infer(p, &shapes(64), &HeadChoice::default(), 16),
            Err(GptError::UnknownHeads { .. })
        ));
        let four = HeadChoice {
            n_head: Some(4),
            ..Default::default()
        };
        assert_eq!(
            GptConfig::infer(p, &shapes(64), &four, 16).unwrap().n_head,
            4
        );
        // A caption projection without the rest of LlamaGen's caption embedder.
        let mut t2i = shapes(1024);
        t2i[0].0 = "cls_embedding.cap_proj.fc1.weight".to_owned();
        let err = GptConfig::infer(p, &t2i, &HeadChoice::default(), 256).unwrap_err();
        assert!(
            matches!(&err, GptError::BadCaptionEmbedder { detail, .. }
                if detail.contains("cap_proj.fc2")),
            "{err}"
        );
        // The whole embedder: a t2i model, cls_token_num from the null caption's rows.
        let mut t2i = shapes(1024);
        t2i[0] = (
            "cls_embedding.cap_proj.fc1.weight".to_owned(),
            vec![1024, 2048],
        );
        t2i.push((
            "cls_embedding.cap_proj.fc2.weight".to_owned(),
            vec![1024, 1024],
        ));
        t2i.push(("cls_embedding.uncond_embedding".to_owned(), vec![120, 2048]));
        let c = GptConfig::infer(p, &t2i, &HeadChoice::default(), 256).unwrap();
        assert_eq!(c.condition, Condition::Caption { caption_dim: 2048 });
        assert_eq!((c.cls_token_num, c.num_classes, c.dim), (120, 0, 1024));
        // A null caption of another width than the projection's input.
        let last = t2i.len() - 1;
        t2i[last].1 = vec![120, 1024];
        assert!(matches!(
            GptConfig::infer(p, &t2i, &HeadChoice::default(), 256),
            Err(GptError::BadCaptionEmbedder { .. })
        ));
    }

    fn tiny_t2i() -> GptConfig {
        GptConfig {
            num_classes: 0,
            condition: Condition::Caption { caption_dim: 12 },
            cls_token_num: 6,
            ..tiny()
        }
    }

    /// Random left-padded captions: row b has `valid[b]` valid positions at the end.
    fn captions(valid: &[i64], config: &GptConfig) -> (Tensor, Tensor) {
        let Condition::Caption { caption_dim } = config.condition else {
            panic!("not t2i");
        };
        let l = config.cls_token_num;
        let b = valid.len() as i64;
        let masks = Tensor::from_slice(
            &valid
                .iter()
                .flat_map(|&v| (0..l).map(move |j| i64::from(j >= l - v)))
                .collect::<Vec<_>>(),
        )
        .view([b, l]);
        let embs = Tensor::randn([b, l, caption_dim], (Kind::Float, Device::Cpu))
            * masks.unsqueeze(-1).to_kind(Kind::Float);
        (embs, masks)
    }

    /// A random tiny t2i model with random captions and image tokens for them.
    struct T2iBatch {
        config: GptConfig,
        vs: nn::VarStore,
        model: Gpt,
        embs: Tensor,
        masks: Tensor,
        tokens: Tensor,
    }

    /// A [`T2iBatch`] drawn after seeding with `seed`: row b's caption has `valid[b]` valid
    /// positions (see [`captions`]), and 8 image tokens.
    fn t2i_batch(seed: i64, valid: &[i64]) -> T2iBatch {
        tch::manual_seed(seed);
        let config = tiny_t2i();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gpt::new(&vs.root(), &config);
        let (embs, masks) = captions(valid, &config);
        let tokens = Tensor::randint(
            config.vocab_size,
            [valid.len() as i64, 8],
            (Kind::Int64, Device::Cpu),
        );
        T2iBatch {
            config,
            vs,
            model,
            embs,
            masks,
            tokens,
        }
    }

    #[test]
    fn caption_cached_decoding_equals_teacher_forcing() {
        let T2iBatch {
            config,
            vs: _vs,
            model,
            embs,
            masks,
            tokens,
        } = t2i_batch(1, &[2, 6, 1]);
        let full = model
            .teacher_forced_captions(&embs, &masks, &tokens)
            .unwrap();
        assert_eq!(full.size(), [3, 6 + 8, 50]);
        let mut cache = model.new_cache(3, config.cls_token_num + config.block_size);
        let mut steps = vec![model.prefill_captions(&embs, &masks, &mut cache).unwrap()];
        for j in 1..config.block_size {
            steps.push(model.decode_step(&tokens.select(1, j - 1), j, &mut cache));
        }
        let cached = Tensor::stack(&steps, 1);
        let diff = (full.narrow(1, 5, 9) - &cached)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn padded_caption_positions_are_invisible() {
        // Whatever the padded positions hold (the null caption is not masked), no image token
        // sees them; a valid position does change the logits.
        let T2iBatch {
            vs: _vs,
            model,
            embs,
            masks,
            tokens,
            ..
        } = t2i_batch(2, &[3, 3]);
        let logits = |e: &Tensor| {
            model
                .teacher_forced_captions(e, &masks, &tokens)
                .unwrap()
                .narrow(1, 5, 9)
        };
        let base = logits(&embs);
        let noise = Tensor::randn_like(&embs);
        let padded = masks.eq(0).unsqueeze(-1).to_kind(Kind::Float);
        let moved = logits(&(&embs + &noise * &padded));
        assert_eq!((&base - &moved).abs().max().double_value(&[]), 0.0);
        let valid = masks.unsqueeze(-1).to_kind(Kind::Float);
        let changed = logits(&(&embs + &noise * &valid));
        assert!((&base - &changed).abs().max().double_value(&[]) > 1e-4);
    }

    #[test]
    fn left_padding_is_sample_t2is_flip() {
        // Lengths 2, 4 (all) and 0 of 4: valid rows to the end, padded rows zeroed.
        let embs = Tensor::arange(3 * 4 * 2, (Kind::Float, Device::Cpu)).view([3, 4, 2]) + 1.0;
        let masks = Tensor::from_slice(&[1i64, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]).view([3, 4]);
        let (left, flipped) = left_pad_captions(&embs, &masks).unwrap();
        let expected: Vec<f32> = vec![
            0., 0., 0., 0., 1., 2., 3., 4., // row 0: rows 0, 1 at the end
            9., 10., 11., 12., 13., 14., 15., 16., // row 1 unchanged
            0., 0., 0., 0., 0., 0., 0., 0., // row 2: nothing valid
        ];
        assert_eq!(Vec::<f32>::try_from(left.view([-1])).unwrap(), expected);
        assert_eq!(
            Vec::<i64>::try_from(flipped.view([-1])).unwrap(),
            vec![0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
        );
    }

    #[test]
    fn conditions_must_match_the_model_type() {
        let vs = nn::VarStore::new(Device::Cpu);
        let t2i = Gpt::new(&vs.root(), &tiny_t2i());
        assert!(matches!(
            t2i.check_labels(&[0]),
            Err(GptError::LabelsForTextToImage(_))
        ));
        let (embs, masks) = captions(&[1], &tiny_t2i());
        assert!(t2i.check_captions(&embs, &masks).is_ok());
        let wide = Tensor::zeros([1, 6, 13], (Kind::Float, Device::Cpu));
        assert!(matches!(
            t2i.check_captions(&wide, &masks),
            Err(GptError::CaptionShape(_))
        ));
        let short = Tensor::zeros([1, 5], (Kind::Int64, Device::Cpu));
        assert!(matches!(
            t2i.check_captions(&embs, &short),
            Err(GptError::CaptionShape(_))
        ));
        let vs = nn::VarStore::new(Device::Cpu);
        let c2i = Gpt::new(&vs.root(), &tiny());
        assert!(matches!(
            c2i.check_captions(&embs, &masks),
            Err(GptError::CaptionsForClassConditional(_))
        ));
    }
}
