//! The T5 text encoder that conditions LlamaGen's text-to-image GPT (FLAN-T5-XL in LlamaGen's
//! `language/t5.py` T5Embedder), as Hugging Face's `T5EncoderModel` computes it, in tch.
//!
//! Architecture: token embeddings (no scaling, no absolute positions), then `num_layers` pre-norm
//! blocks (`encoder.block.{i}`): `layer.0` is T5 RMS `layer_norm` then self-attention with
//! `SelfAttention.{q,k,v,o}` projections without bias and *no* `1/sqrt(d_kv)` scaling, plus a
//! relative position bias; `layer.1` is `layer_norm` then the feed-forward `DenseReluDense`, gated
//! in the T5 v1.1 / FLAN layout (`act(wi_0 x) * wi_1 x`, then `wo`) or plain in the original T5
//! (`wo act(wi x)`). `encoder.final_layer_norm` closes the stack. The output is
//! `last_hidden_state`, one row per token, padded positions included.
//!
//! The relative position bias (`relative_attention_bias`, [buckets, heads]) exists in the first
//! block only and is shared by all; the bucket of key position j for query position i follows
//! Hugging Face's bidirectional `_relative_position_bucket` (half the buckets for each sign, exact
//! buckets for small distances, logarithmic ones up to `relative_attention_max_distance`), computed
//! in float32 with the same operations so that boundary distances fall in the same buckets. The
//! attention mask adds the dtype's most negative value to padded keys (Hugging Face's extended
//! mask), so a padded query still attends to the valid keys, as in the reference.
//!
//! T5's layer norm is RMS normalisation without mean subtraction or bias, the variance always taken
//! in float32. In bfloat16 (LlamaGen's default, [`T5Encoder::load`] with `Kind::BFloat16`) every
//! step follows Hugging Face's `from_pretrained(torch_dtype=torch.bfloat16)`: all weights in
//! bfloat16 (T5's `_keep_in_fp32_modules = ["wo"]` applies to float16 only, in transformers 4.x as
//! in 5.x), the layer norms' variance and scaling in float32 rounded back to bfloat16, the attention
//! softmax in float32 as transformers 4.x's eager T5 attention (the one of LlamaGen's time: our
//! bfloat16 output equals transformers 4.42.4's bit for bit on the CPU), everything else in
//! bfloat16, bfloat16 hidden states out. transformers 5 runs T5 through SDPA with a bfloat16
//! softmax by default, which moves bfloat16 results by a few bfloat16 steps.
//!
//! Weights carry Hugging Face's names (`encoder.block.{i}.layer.0.SelfAttention.q.weight`, ...);
//! the token embedding is `encoder.embed_tokens.weight` or the tied `shared.weight`. A whole
//! `T5ForConditionalGeneration` loads too: its decoder and `lm_head` are skipped unread. Files:
//! a model folder (safetensors, sharded or not, or `pytorch_model.bin`, see [`super::hf_weights`])
//! or one weights file. The configuration comes from the Hugging Face `config.json` in the folder
//! (beside a file: `<stem>_config.json`, else `config.json`), checked against the weights, or from
//! the tensor shapes alone (the heads are the relative bias's columns; the maximum distance, which
//! no shape shows, is then Hugging Face's default 128).
//!
//! [`T5Embedder`] joins the encoder and the caption tokenizer as LlamaGen's T5Embedder does:
//! captions padded or truncated to 120 tokens, `</s>` appended, then the encoder.

use std::path::{Path, PathBuf};

use tch::nn;
use tch::{Device, Kind, Tensor};

use super::clip::config_beside;
use super::hf_weights::{WeightSet, WeightsError};
use super::shapes::{self, first_names};
use super::tokenizer::{check_vocab, CaptionTokenizer, TokenizerError};
use crate::choice::choice_enum;

/// Caption length of LlamaGen's T5Embedder (`--t5-feature-max-len`, `model_max_length=120`).
pub const T5_MAX_LENGTH: usize = 120;

const EMBED: &str = "encoder.embed_tokens.weight";
const SHARED: &str = "shared.weight";
const BLOCKS: &str = "encoder.block.";
const RELATIVE_BIAS: &str = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";

/// The feed-forward activation (`dense_act_fn` of Hugging Face's T5Config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Activation {
    /// `relu`: the original T5.
    Relu,
    /// `gelu_new`: the tanh approximation of GELU, T5 v1.1 and FLAN-T5 (`gated-gelu`).
    GeluNew,
    /// `gelu`: exact (erf) GELU.
    Gelu,
    /// `silu` / `swish`.
    Silu,
}

impl T5Activation {
    /// The activation assumed where only the weights are known: `gelu_new` for a gated
    /// feed-forward (T5 v1.1, FLAN-T5), `relu` for the original T5's.
    fn default_for(gated: bool) -> Self {
        if gated {
            T5Activation::GeluNew
        } else {
            T5Activation::Relu
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "relu" => T5Activation::Relu,
            "gelu_new" => T5Activation::GeluNew,
            "gelu" => T5Activation::Gelu,
            "silu" | "swish" => T5Activation::Silu,
            _ => return None,
        })
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            T5Activation::Relu => x.relu(),
            // Hugging Face's NewGELUActivation, operation by operation (each rounded in bfloat16).
            T5Activation::GeluNew => {
                let inner = (x + x.pow_tensor_scalar(3.0) * 0.044_715)
                    * (2.0 / std::f64::consts::PI).sqrt();
                x * 0.5 * (inner.tanh() + 1.0)
            }
            T5Activation::Gelu => x.gelu("none"),
            T5Activation::Silu => x.silu(),
        }
    }
}

/// The architecture of a T5 encoder (the fields of Hugging Face's T5Config that the encoder uses).
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    /// Rows of the token embedding (`vocab_size`).
    pub vocab_size: i64,
    /// Token width (`d_model`).
    pub d_model: i64,
    /// Width of one attention head (`d_kv`).
    pub d_kv: i64,
    /// Feed-forward width (`d_ff`).
    pub d_ff: i64,
    /// Encoder blocks (`num_layers`).
    pub num_layers: i64,
    /// Attention heads (`num_heads`).
    pub num_heads: i64,
    /// Relative position buckets (`relative_attention_num_buckets`).
    pub relative_attention_num_buckets: i64,
    /// Distance beyond which all positions share the last bucket (`relative_attention_max_distance`).
    pub relative_attention_max_distance: i64,
    /// RMS norm epsilon (`layer_norm_epsilon`).
    pub layer_norm_epsilon: f64,
    /// Whether the feed-forward is gated (`wi_0`, `wi_1`) rather than plain (`wi`).
    pub gated: bool,
    /// The feed-forward activation.
    pub activation: T5Activation,
}

impl T5Config {
    /// FLAN-T5-XL's encoder (`google/flan-t5-xl`), LlamaGen's text encoder.
    pub fn flan_t5_xl() -> Self {
        T5Config {
            vocab_size: 32128,
            d_model: 2048,
            d_kv: 64,
            d_ff: 5120,
            num_layers: 24,
            num_heads: 32,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            gated: true,
            activation: T5Activation::GeluNew,
        }
    }

    /// Reads a Hugging Face T5 `config.json`; missing fields take T5Config's defaults, as
    /// `from_pretrained` does. The activation is `dense_act_fn` when given, else derived from
    /// `feed_forward_proj` (`gated-gelu` meaning `gelu_new`).
    pub fn from_json(path: impl AsRef<Path>) -> Result<Self, T5Error> {
        let path = path.as_ref();
        let bad = |message: String| T5Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        if !json.is_object() {
            return Err(bad("not a JSON object".to_owned()));
        }
        let int = |key: &str, default: i64| -> Result<i64, T5Error> {
            match json.get(key) {
                None => Ok(default),
                Some(v) => v
                    .as_i64()
                    .filter(|&v| v > 0)
                    .ok_or_else(|| bad(format!("`{key}` is {v}, not a positive integer"))),
            }
        };
        let proj = match json.get("feed_forward_proj") {
            None => "relu",
            Some(v) => v
                .as_str()
                .ok_or_else(|| bad(format!("`feed_forward_proj` is {v}, not a string")))?,
        };
        let parts: Vec<&str> = proj.split('-').collect();
        let derived_gated = match parts.as_slice() {
            [_] => false,
            ["gated", _] => true,
            _ => {
                return Err(bad(format!(
                    "`feed_forward_proj` is `{proj}`; expected ACT or gated-ACT"
                )))
            }
        };
        let derived_act = if proj == "gated-gelu" {
            "gelu_new"
        } else {
            parts[parts.len() - 1]
        };
        let act_name = match json.get("dense_act_fn") {
            None => derived_act,
            Some(v) => v
                .as_str()
                .ok_or_else(|| bad(format!("`dense_act_fn` is {v}, not a string")))?,
        };
        let activation = T5Activation::from_name(act_name).ok_or_else(|| {
            bad(format!(
                "unsupported activation `{act_name}` (relu, gelu_new, gelu, silu)"
            ))
        })?;
        let gated = match json.get("is_gated_act") {
            None => derived_gated,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(format!("`is_gated_act` is {v}, not a boolean")))?,
        };
        let layer_norm_epsilon = match json.get("layer_norm_epsilon") {
            None => 1e-6,
            Some(v) => v.as_f64().filter(|e| *e > 0.0).ok_or_else(|| {
                bad(format!(
                    "`layer_norm_epsilon` is {v}, not a positive number"
                ))
            })?,
        };
        Ok(T5Config {
            vocab_size: int("vocab_size", 32128)?,
            d_model: int("d_model", 512)?,
            d_kv: int("d_kv", 64)?,
            d_ff: int("d_ff", 2048)?,
            num_layers: int("num_layers", 6)?,
            num_heads: int("num_heads", 8)?,
            relative_attention_num_buckets: int("relative_attention_num_buckets", 32)?,
            relative_attention_max_distance: int("relative_attention_max_distance", 128)?,
            layer_norm_epsilon,
            gated,
            activation,
        })
    }

    /// The configuration [`T5Encoder::load`] builds for the weights at `path` whose tensors have
    /// `shapes` ([`WeightSet::shapes`]): that of the Hugging Face config file beside them (also
    /// returned), checked against the shapes, else the shapes' ([`Self::infer`]).
    pub fn of_weights(
        path: &Path,
        shapes: &[(String, Vec<i64>)],
    ) -> Result<(Self, Option<PathBuf>), T5Error> {
        if !shapes.iter().any(|(n, _)| n.starts_with(BLOCKS)) {
            return Err(T5Error::NotT5 {
                path: path.to_path_buf(),
                detail: format!(
                    "no `{BLOCKS}*` tensors among its {}{}",
                    shapes.len(),
                    first_names(shapes)
                ),
            });
        }
        let from_shapes = T5Config::infer(path, shapes)?;
        match config_file(path) {
            Some(file) => {
                let config = T5Config::from_json(&file)?;
                config.check_against(&from_shapes, &file, path)?;
                Ok((config, Some(file)))
            }
            None => Ok((from_shapes, None)),
        }
    }

    /// Reads the configuration from the shapes of an encoder state dict (Hugging Face names).
    /// Shapes do not tell the maximum relative distance (taken as 128), the epsilon (1e-6) nor the
    /// activation (`gelu_new` when gated, as in T5 v1.1 and FLAN-T5; `relu` otherwise, as in the
    /// original T5). `path` names the weights in errors.
    pub fn infer(path: &Path, tensors: &[(String, Vec<i64>)]) -> Result<Self, T5Error> {
        let not_t5 = |detail: String| T5Error::NotT5 {
            path: path.to_path_buf(),
            detail,
        };
        let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, s)| s);
        let matrix = |name: &str| shapes::matrix(tensors, name).map_err(not_t5);
        let embed = if find(EMBED).is_some() { EMBED } else { SHARED };
        let (vocab_size, d_model) = matrix(embed)?;
        let num_layers = super::numbered_children(tensors.iter().map(|(n, _)| n.as_str()), BLOCKS);
        let (buckets, num_heads) = matrix(RELATIVE_BIAS)?;
        let (inner, _) = matrix(&format!("{BLOCKS}0.layer.0.SelfAttention.q.weight"))?;
        if num_heads <= 0 || inner % num_heads != 0 {
            return Err(not_t5(format!(
                "{num_heads} heads (columns of `{RELATIVE_BIAS}`) do not divide the attention \
                 width {inner}"
            )));
        }
        let ff = format!("{BLOCKS}0.layer.1.DenseReluDense.");
        let gated = find(&format!("{ff}wi_0.weight")).is_some();
        let (d_ff, _) = matrix(&format!("{ff}{}.weight", if gated { "wi_0" } else { "wi" }))?;
        Ok(T5Config {
            vocab_size,
            d_model,
            d_kv: inner / num_heads,
            d_ff,
            num_layers,
            num_heads,
            relative_attention_num_buckets: buckets,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            gated,
            activation: T5Activation::default_for(gated),
        })
    }

    /// Fails with [`T5Error::Config`] naming `config` and `weights` where this configuration and
    /// the one the shapes show (`from_shapes`) disagree.
    fn check_against(
        &self,
        from_shapes: &T5Config,
        config: &Path,
        weights: &Path,
    ) -> Result<(), T5Error> {
        let pairs = [
            ("vocab_size", self.vocab_size, from_shapes.vocab_size),
            ("d_model", self.d_model, from_shapes.d_model),
            ("num_layers", self.num_layers, from_shapes.num_layers),
            ("num_heads", self.num_heads, from_shapes.num_heads),
            ("d_kv", self.d_kv, from_shapes.d_kv),
            ("d_ff", self.d_ff, from_shapes.d_ff),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
                from_shapes.relative_attention_num_buckets,
            ),
        ];
        let mut diffs: Vec<String> = pairs
            .iter()
            .filter(|(_, a, b)| a != b)
            .map(|(k, a, b)| format!("{k} {a} vs {b}"))
            .collect();
        if self.gated != from_shapes.gated {
            diffs.push(format!(
                "a {} feed-forward vs {} weights",
                if self.gated { "gated" } else { "plain" },
                if from_shapes.gated {
                    "gated (wi_0, wi_1)"
                } else {
                    "plain (wi)"
                }
            ));
        }
        if diffs.is_empty() {
            return Ok(());
        }
        Err(T5Error::Config {
            path: config.to_path_buf(),
            message: format!(
                "disagrees with the weights in {} ({}): the config of another model?",
                weights.display(),
                diffs.join(", ")
            ),
        })
    }
}

/// Why a T5 encoder could not be loaded or run. Names the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum T5Error {
    /// The weight files could not be opened or read, or do not match the model.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The weights are not those of a T5 encoder.
    #[error("{}: not a T5 encoder (Hugging Face T5EncoderModel or T5ForConditionalGeneration): {detail}", path.display())]
    NotT5 {
        /// The weights (folder or file).
        path: PathBuf,
        /// Which parameter is missing or misshapen.
        detail: String,
    },
    /// The configuration file is unreadable, unsupported or disagrees with the weights.
    #[error("{}: {message}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A dtype the encoder does not run in.
    #[error("the T5 encoder runs in float32 or bfloat16, not {0:?}")]
    Kind(Kind),
    /// The caption tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The encoder gave NaN or infinite embeddings: its weights are damaged, not the captions.
    #[error("{}: the T5 encoder gave NaN or infinite embeddings; its weights are damaged or not a T5 encoder's: download them again", path.display())]
    NonFinite {
        /// The encoder's folder or weights file.
        path: PathBuf,
    },
}

/// A linear map without bias.
#[derive(Debug)]
struct Linear {
    weight: Tensor,
}

impl Linear {
    fn new(p: &nn::Path, out: i64, input: i64, kind: Kind) -> Self {
        Linear {
            weight: var(p, "weight", &[out, input], kind),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear::<&Tensor>(&self.weight, None)
    }
}

/// A zero-initialised variable of `kind` (every one is overwritten by the checkpoint).
fn var(p: &nn::Path, name: &str, dims: &[i64], kind: Kind) -> Tensor {
    p.add(name, Tensor::zeros(dims, (kind, p.device())), false)
}

/// T5's RMS layer norm.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(p: &nn::Path, width: i64, eps: f64, kind: Kind) -> Self {
        LayerNorm {
            weight: var(p, "weight", &[width], kind),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let variance =
            x.to_kind(Kind::Float)
                .pow_tensor_scalar(2.0)
                .mean_dim(-1, true, Kind::Float);
        // `x * rsqrt(...)` promotes to float32; the result takes the weight's half precision.
        let mut normed = x * (variance + self.eps).rsqrt();
        if matches!(self.weight.kind(), Kind::BFloat16 | Kind::Half) {
            normed = normed.to_kind(self.weight.kind());
        }
        &self.weight * normed
    }
}

#[derive(Debug)]
enum FeedForward {
    Gated {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
    Plain {
        wi: Linear,
        wo: Linear,
    },
}

#[derive(Debug)]
struct Block {
    attn_norm: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ff_norm: LayerNorm,
    ff: FeedForward,
    activation: T5Activation,
    heads: i64,
    d_kv: i64,
}

impl Block {
    fn new(p: &nn::Path, c: &T5Config, kind: Kind) -> Self {
        let attn = p / "layer" / 0;
        let sa = &attn / "SelfAttention";
        let inner = c.num_heads * c.d_kv;
        let ffl = p / "layer" / 1;
        let dense = &ffl / "DenseReluDense";
        let wo = Linear::new(&(&dense / "wo"), c.d_model, c.d_ff, kind);
        let ff = if c.gated {
            FeedForward::Gated {
                wi_0: Linear::new(&(&dense / "wi_0"), c.d_ff, c.d_model, kind),
                wi_1: Linear::new(&(&dense / "wi_1"), c.d_ff, c.d_model, kind),
                wo,
            }
        } else {
            FeedForward::Plain {
                wi: Linear::new(&(&dense / "wi"), c.d_ff, c.d_model, kind),
                wo,
            }
        };
        Block {
            attn_norm: LayerNorm::new(
                &(&attn / "layer_norm"),
                c.d_model,
                c.layer_norm_epsilon,
                kind,
            ),
            q: Linear::new(&(&sa / "q"), inner, c.d_model, kind),
            k: Linear::new(&(&sa / "k"), inner, c.d_model, kind),
            v: Linear::new(&(&sa / "v"), inner, c.d_model, kind),
            o: Linear::new(&(&sa / "o"), c.d_model, inner, kind),
            ff_norm: LayerNorm::new(
                &(&ffl / "layer_norm"),
                c.d_model,
                c.layer_norm_epsilon,
                kind,
            ),
            ff,
            activation: c.activation,
            heads: c.num_heads,
            d_kv: c.d_kv,
        }
    }

    /// Self-attention without scaling; `bias` [1 or N, H, L, L] holds the relative position bias
    /// plus the padding mask.
    fn attention(&self, x: &Tensor, bias: &Tensor) -> Tensor {
        let (n, l, _) = x.size3().expect("[N, L, C] tokens");
        let split = |t: Tensor| t.view([n, l, self.heads, self.d_kv]).transpose(1, 2);
        let q = split(self.q.forward(x));
        let k = split(self.k.forward(x));
        let v = split(self.v.forward(x));
        let scores = q.matmul(&k.transpose(-2, -1)) + bias;
        let weights = scores.softmax(-1, Kind::Float).to_kind(scores.kind());
        let out = weights
            .matmul(&v)
            .transpose(1, 2)
            .reshape([n, l, self.heads * self.d_kv]);
        self.o.forward(&out)
    }

    fn feed_forward(&self, x: &Tensor) -> Tensor {
        match &self.ff {
            FeedForward::Gated { wi_0, wi_1, wo } => {
                wo.forward(&(self.activation.apply(&wi_0.forward(x)) * wi_1.forward(x)))
            }
            FeedForward::Plain { wi, wo } => wo.forward(&self.activation.apply(&wi.forward(x))),
        }
    }

    fn forward(&self, x: &Tensor, bias: &Tensor) -> Tensor {
        let x = x + self.attention(&self.attn_norm.forward(x), bias);
        &x + self.feed_forward(&self.ff_norm.forward(&x))
    }
}

/// Hugging Face's bidirectional relative position buckets [L, L] (int64, on `device`) for key
/// position j minus query position i.
fn relative_position_buckets(len: i64, buckets: i64, max_distance: i64, device: Device) -> Tensor {
    let positions = Tensor::arange(len, (Kind::Int64, device));
    let relative = positions.unsqueeze(0) - positions.unsqueeze(1);
    let half = buckets / 2;
    let sign = relative.gt(0).to_kind(Kind::Int64) * half;
    let distance = relative.abs();
    let max_exact = half / 2;
    let is_small = distance.lt(max_exact);
    let large = ((distance.to_kind(Kind::Float) / max_exact as f64).log()
        / (max_distance as f64 / max_exact as f64).ln()
        * (half - max_exact))
        .to_kind(Kind::Int64)
        + max_exact;
    let large = large.clamp_max(half - 1);
    sign + distance.where_self(&is_small, &large)
}

/// Hugging Face's `T5EncoderModel`, in eval mode (see the module documentation).
#[derive(Debug)]
pub struct T5Encoder {
    config: T5Config,
    embed_tokens: Tensor,
    relative_attention_bias: Tensor,
    blocks: Vec<Block>,
    final_layer_norm: LayerNorm,
}

impl T5Encoder {
    /// An encoder with zero weights under `p` (to be loaded), named as Hugging Face's, in `kind`.
    pub fn new(p: &nn::Path, config: &T5Config, kind: Kind) -> Self {
        let encoder = p / "encoder";
        let blocks: Vec<Block> = (0..config.num_layers)
            .map(|i| Block::new(&(&encoder / "block" / i), config, kind))
            .collect();
        let relative_attention_bias = var(
            &(&encoder / "block" / 0 / "layer" / 0 / "SelfAttention" / "relative_attention_bias"),
            "weight",
            &[config.relative_attention_num_buckets, config.num_heads],
            kind,
        );
        T5Encoder {
            config: config.clone(),
            embed_tokens: var(
                &(&encoder / "embed_tokens"),
                "weight",
                &[config.vocab_size, config.d_model],
                kind,
            ),
            relative_attention_bias,
            blocks,
            final_layer_norm: LayerNorm::new(
                &(&encoder / "final_layer_norm"),
                config.d_model,
                config.layer_norm_epsilon,
                kind,
            ),
        }
    }

    /// Loads a T5 encoder onto `device` in `kind` (`Kind::BFloat16` as LlamaGen's T5Embedder, or
    /// `Kind::Float`): `path` is a Hugging Face model folder, a shard index or one weights file
    /// (see the module documentation for the layouts and where the configuration comes from).
    pub fn load(
        path: &Path,
        device: Device,
        kind: Kind,
    ) -> Result<(nn::VarStore, T5Encoder), T5Error> {
        if !matches!(kind, Kind::Float | Kind::BFloat16) {
            return Err(T5Error::Kind(kind));
        }
        let weights = WeightSet::open(path)?;
        let shapes = weights.shapes()?;
        let (config, file) = T5Config::of_weights(path, &shapes)?;
        if file.is_none() {
            tracing::warn!(
                "{}: no config.json; T5 configuration from the tensor shapes (relative \
                 attention max distance 128, epsilon 1e-6, {:?})",
                path.display(),
                config.activation
            );
        }
        let has_embed = shapes.iter().any(|(n, _)| n == EMBED);
        let mut vs = nn::VarStore::new(device);
        let model = T5Encoder::new(&vs.root(), &config, kind);
        let pick = |name: &str| -> Option<String> {
            if name.starts_with("encoder.") {
                Some(name.to_owned())
            } else if name == SHARED && !has_embed {
                Some(EMBED.to_owned())
            } else {
                None
            }
        };
        let loaded = weights.load_into(&mut vs, pick)?;
        tracing::info!(
            "T5 encoder {} ({loaded} tensors, {kind:?}): {config:?}",
            path.display()
        );
        vs.freeze();
        Ok((vs, model))
    }

    /// The architecture.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// The dtype the encoder runs in (that of its weights).
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// `last_hidden_state` [N, L, d_model] in the model's dtype, on its device, for token ids
    /// [N, L] (int64) and an attention mask [N, L] (1 for tokens, 0 for padding; any integer or
    /// float dtype). Padded positions get hidden states too, as in Hugging Face.
    ///
    /// # Panics
    /// When the ids are not [N, L] or the mask's shape differs, or an id is out of the
    /// vocabulary (libtorch's index error); [`T5Embedder::embed`] checks its ids first.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let size = input_ids.size();
        assert!(
            size.len() == 2 && attention_mask.size() == size,
            "T5 input: ids {size:?} and mask {:?} must both be [N, L]",
            attention_mask.size()
        );
        tch::no_grad(|| {
            let device = self.device();
            let kind = self.kind();
            let ids = input_ids.to_device(device).to_kind(Kind::Int64);
            let mut h = Tensor::embedding(&self.embed_tokens, &ids, -1, false, false);
            let len = size[1];
            let buckets = relative_position_buckets(
                len,
                self.config.relative_attention_num_buckets,
                self.config.relative_attention_max_distance,
                device,
            );
            let position_bias =
                Tensor::embedding(&self.relative_attention_bias, &buckets, -1, false, false)
                    .permute([2, 0, 1])
                    .unsqueeze(0);
            // Hugging Face's extended mask, (1 - mask) * finfo(dtype).min, in the model dtype.
            let keep = attention_mask.to_device(device).to_kind(kind);
            let padding = (keep.ones_like() - keep) * finfo_min(kind);
            let bias = position_bias + padding.view([size[0], 1, 1, len]);
            for block in &self.blocks {
                h = block.forward(&h, &bias);
            }
            self.final_layer_norm.forward(&h)
        })
    }
}

/// `torch.finfo(kind).min` of the float kinds the encoder runs in.
fn finfo_min(kind: Kind) -> f64 {
    match kind {
        // The largest finite bfloat16: (2 - 2^-7) * 2^127.
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        _ => f64::from(f32::MIN),
    }
}

/// The Hugging Face config of the weights at `path`: `config.json` in a folder, or beside a file
/// (`<stem>_config.json` first).
fn config_file(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        return Some(path.join("config.json")).filter(|p| p.is_file());
    }
    config_beside(path)
}

choice_enum! {
    /// The T5 encoder's dtype (`--t5-precision`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum T5Precision: "T5 precision" {
        /// bfloat16, as LlamaGen's T5Embedder runs.
        #[default]
        Bf16 => ("bf16", "bfloat16, as LlamaGen's T5Embedder runs"),
        /// float32.
        Fp32 => ("fp32", "float32"),
    }
}

impl T5Precision {
    /// Its libtorch dtype.
    pub fn kind(self) -> Kind {
        match self {
            T5Precision::Bf16 => Kind::BFloat16,
            T5Precision::Fp32 => Kind::Float,
        }
    }
}

/// LlamaGen's T5Embedder: the caption tokenizer of a model folder and its T5 encoder.
#[derive(Debug)]
pub struct T5Embedder {
    tokenizer: CaptionTokenizer,
    encoder: T5Encoder,
    _vs: nn::VarStore,
    max_length: usize,
    dir: PathBuf,
}

impl T5Embedder {
    /// Loads the tokenizer (`tokenizer.json`) and the encoder of the Hugging Face T5 folder `dir`
    /// (e.g. `flan-t5-xl/`) onto `device` in `kind`, for captions of [`T5_MAX_LENGTH`] tokens.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<T5Embedder, T5Error> {
        let tokenizer = CaptionTokenizer::from_folder(dir)?;
        let (vs, encoder) = T5Encoder::load(dir, device, kind)?;
        Ok(T5Embedder {
            tokenizer,
            encoder,
            _vs: vs,
            max_length: T5_MAX_LENGTH,
            dir: dir.to_path_buf(),
        })
    }

    /// The content identity of what embeds the captions: the sha256 of the weight files the
    /// encoder was read from, its `config.json` and the tokenizer file, each hashed once per
    /// process ([`crate::io::content_sha256`]); a folder whose weights were replaced at the same
    /// path is another encoder.
    pub fn content_sha256(&self) -> Result<String, T5Error> {
        use sha2::{Digest, Sha256};
        let mut files = WeightSet::open(&self.dir)?.files();
        files.extend(config_file(&self.dir));
        files.push(self.tokenizer.path().to_path_buf());
        let mut hasher = Sha256::new();
        for file in files {
            let sha256 = crate::io::content_sha256(&file).map_err(|e| T5Error::Config {
                path: file.clone(),
                message: format!("cannot read: {e}"),
            })?;
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            hasher.update(format!("{name}\0{sha256}\n"));
        }
        Ok(format!("{:x}", hasher.finalize()))
    }

    /// The encoder.
    pub fn encoder(&self) -> &T5Encoder {
        &self.encoder
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &CaptionTokenizer {
        &self.tokenizer
    }

    /// Caption embeddings [N, 120, d_model] (float32, converted from the model's dtype) and their
    /// masks [N, 120] (int64, 1 for tokens), right-padded, on the model's device: LlamaGen's
    /// `T5Embedder.get_text_embeddings` after its caption cleaning (which is not applied here: the
    /// captions are tokenized as given).
    pub fn embed(&self, captions: &[String]) -> Result<(Tensor, Tensor), T5Error> {
        let (ids, mask) = self.tokenizer.encode(captions, self.max_length)?;
        let vocab = self.encoder.config().vocab_size;
        check_vocab(&ids, vocab, self.tokenizer.path(), "T5 encoder")?;
        let shape = [captions.len() as i64, self.max_length as i64];
        let device = self.encoder.device();
        let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
        let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
        let hidden = self.encoder.forward(&ids, &mask).to_kind(Kind::Float);
        // Checked here, where the weights can be named: downstream it looks like bad captions.
        if hidden.isfinite().all().int64_value(&[]) == 0 {
            return Err(T5Error::NonFinite {
                path: self.dir.clone(),
            });
        }
        Ok((hidden, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(gated: bool) -> T5Config {
        T5Config {
            vocab_size: 50,
            d_model: 16,
            d_kv: 6,
            d_ff: 24,
            num_layers: 2,
            num_heads: 3,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            gated,
            activation: T5Activation::default_for(gated),
        }
    }

    fn shapes(config: &T5Config) -> Vec<(String, Vec<i64>)> {
        super::super::variable_shapes(|p| T5Encoder::new(p, config, Kind::Float))
    }

    #[test]
    fn configuration_is_inferred_back_from_shapes() {
        let path = Path::new("/nonexistent/t5");
        for gated in [true, false] {
            assert_eq!(
                T5Config::infer(path, &shapes(&tiny(gated))).unwrap(),
                tiny(gated)
            );
        }
        let xl = T5Config::flan_t5_xl();
        assert_eq!(T5Config::infer(path, &shapes(&xl)).unwrap(), xl);
        // The tied embedding under its `shared` name.
        let mut renamed = shapes(&tiny(true));
        for (n, _) in &mut renamed {
            if n == EMBED {
                *n = SHARED.to_owned();
            }
        }
        assert_eq!(T5Config::infer(path, &renamed).unwrap(), tiny(true));
        let e = T5Config::infer(path, &[("x".to_owned(), vec![2, 2])]).unwrap_err();
        assert!(
            matches!(e, T5Error::NotT5 { .. }) && e.to_string().contains("/nonexistent/t5"),
            "{e}"
        );
    }

    #[test]
    fn config_json_follows_hugging_face_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"d_model": 16, "d_kv": 6, "d_ff": 24, "num_layers": 2, "num_heads": 3,
                "vocab_size": 50, "feed_forward_proj": "gated-gelu"}"#,
        )
        .unwrap();
        let config = T5Config::from_json(&file).unwrap();
        assert_eq!(config, tiny(true));
        // The original T5's plain relu feed-forward is the default.
        std::fs::write(&file, r#"{"d_model": 16}"#).unwrap();
        let plain = T5Config::from_json(&file).unwrap();
        assert!(!plain.gated && plain.activation == T5Activation::Relu);
        let e = plain
            .check_against(&tiny(true), &file, Path::new("w.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.json")
                && e.contains("w.safetensors")
                && e.contains("d_ff 2048 vs 24"),
            "{e}"
        );
        std::fs::write(&file, r#"{"feed_forward_proj": "gated-gelu-x"}"#).unwrap();
        assert!(matches!(
            T5Config::from_json(&file),
            Err(T5Error::Config { .. })
        ));
        std::fs::write(&file, r#"{"dense_act_fn": "mish"}"#).unwrap();
        let e = T5Config::from_json(&file).unwrap_err().to_string();
        assert!(e.contains("unsupported activation `mish`"), "{e}");
    }

    #[test]
    fn unsupported_dtypes_are_refused() {
        let e = T5Encoder::load(Path::new("/nonexistent"), Device::Cpu, Kind::Half).unwrap_err();
        assert!(matches!(e, T5Error::Kind(Kind::Half)), "{e}");
    }
}
