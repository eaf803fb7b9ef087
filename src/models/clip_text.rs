//! CLIP's text tower, as Hugging Face's `CLIPTextModelWithProjection` computes it, in tch: the
//! caption embedding of the CLIP score (torchmetrics' `CLIPScore`, Hessel et al. 2021).
//!
//! Architecture: token embeddings plus learned position embeddings (`text_model.embeddings.*`),
//! the pre-LN transformer blocks of the vision tower (`text_model.encoder.layers.{i}`, the same
//! code: [`super::clip`]) under a causal mask, `text_model.final_layer_norm`, then the hidden state
//! of one token per caption projected by `text_projection` (no bias). The pooled token follows
//! Hugging Face: the first `eos_token_id` of the ids, except for configurations written before
//! transformers fixed that id (`eos_token_id` 2, as in `openai/clip-vit-large-patch14`), where it
//! is the position of the largest id (OpenAI's `argmax`, the end token being the last of the
//! vocabulary). Padding after the end token never reaches it through the causal mask, so no
//! padding mask is needed.
//!
//! Parameters carry Hugging Face's names; the text tower of a whole `CLIPModel` file (the one CMMD
//! reads its vision tower from) loads as well, its vision parameters skipped. The configuration
//! comes from the tensor shapes plus, for what shapes do not show (heads, activation, end token),
//! the Hugging Face config: `text_config` of a `CLIPConfig` or a `CLIPTextConfig` at the top level,
//! beside the weights as for the vision tower (`<stem>_config.json`, else `config.json`), or given.
//! Without one: heads from OpenAI's released widths (64-wide heads), `quick_gelu`, end token 49407
//! (Hugging Face's defaults). Weights are kept in float32 whatever the file holds.
//!
//! [`ClipTextEmbedder`] tokenizes captions with the model folder's `tokenizer.json` as torchmetrics
//! does ([`super::tokenizer::ClipTokenizer`]) and embeds them.

use std::path::{Path, PathBuf};

use tch::nn;
use tch::{Device, Kind, Tensor};

use super::clip::{
    config_beside, layer_norm, projection, read_all, Block, BlockShape, ClipActivation, ClipError,
    Heads,
};
use super::shapes::{self, first_names};
use super::tokenizer::{check_vocab, ClipTokenizer, TokenizerError};
use crate::checkpoint::{CheckpointError, LoadOptions};

/// The `eos_token_id` of configurations written before transformers' fix (PR #24773): pooled at
/// the largest id instead.
pub const LEGACY_EOS_TOKEN_ID: i64 = 2;
/// `eos_token_id` of Hugging Face's `CLIPTextConfig` when the config does not say
/// (`<|endoftext|>` of OpenAI's vocabulary).
pub const DEFAULT_EOS_TOKEN_ID: i64 = 49407;
/// Attention heads of OpenAI's released text widths (64 channels per head: ViT-B 512, ViT-L 768,
/// ViT-H 1024).
pub const RELEASED_TEXT_HEADS: [(i64, i64); 3] = [(512, 8), (768, 12), (1024, 16)];

const PREFIX: &str = "text_model.";
const TOKEN_EMBEDDING: &str = "text_model.embeddings.token_embedding.weight";
const POSITION_EMBEDDING: &str = "text_model.embeddings.position_embedding.weight";
const LAYERS: &str = "text_model.encoder.layers.";
const PROJECTION: &str = "text_projection.weight";

/// The architecture of a CLIP text tower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipTextConfig {
    /// Token embeddings (`vocab_size`).
    pub vocab_size: i64,
    /// Token width (`hidden_size`).
    pub hidden: i64,
    /// Transformer blocks (`num_hidden_layers`).
    pub layers: i64,
    /// Attention heads (`num_attention_heads`).
    pub heads: i64,
    /// MLP width (`intermediate_size`).
    pub intermediate: i64,
    /// Longest token sequence, start and end tokens included (`max_position_embeddings`, 77).
    pub context: i64,
    /// Width of the text embedding (`projection_dim`).
    pub projection_dim: i64,
    /// The MLP activation (`hidden_act`).
    pub activation: ClipActivation,
    /// The end token whose hidden state is pooled ([`LEGACY_EOS_TOKEN_ID`]: the largest id).
    pub eos_token_id: i64,
}

/// What a Hugging Face config says about the text tower.
struct TextConfigFile {
    path: PathBuf,
    json: serde_json::Value,
}

impl TextConfigFile {
    fn read(path: &Path) -> Result<Self, ClipTextError> {
        let bad = |message: String| ClipTextError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let mut json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        if let Some(text_config) = json.get_mut("text_config") {
            json = text_config.take();
        }
        if !json.is_object() {
            return Err(bad("no text configuration object".to_owned()));
        }
        Ok(TextConfigFile {
            path: path.to_path_buf(),
            json,
        })
    }

    fn error(&self, message: String) -> ClipTextError {
        ClipTextError::Config {
            path: self.path.clone(),
            message,
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>, ClipTextError> {
        match self.json.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.error(format!("`{key}` is {v}, not an integer"))),
        }
    }
}

impl ClipTextConfig {
    /// OpenAI's ViT-L/14 text tower (`openai/clip-vit-large-patch14`, torchmetrics' default CLIP).
    pub fn vit_l14() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden: 768,
            layers: 12,
            heads: 12,
            intermediate: 3072,
            context: 77,
            projection_dim: 768,
            activation: ClipActivation::QuickGelu,
            eos_token_id: LEGACY_EOS_TOKEN_ID,
        }
    }

    /// Reads the configuration from the shapes of a text tower's state dict (Hugging Face names)
    /// and, for heads, activation and end token, the config file `heads` names or the one beside
    /// `path` (an explicit head count overrides the file's). Sizes the config states are checked
    /// against the shapes.
    pub fn infer(
        path: &Path,
        tensors: &[(String, Vec<i64>)],
        heads: Heads,
    ) -> Result<Self, ClipTextError> {
        let not_text = |detail: String| ClipTextError::NotClipText {
            path: path.to_path_buf(),
            detail,
        };
        let matrix = |name: &str| shapes::matrix(tensors, name).map_err(not_text);
        let (vocab_size, hidden) = matrix(TOKEN_EMBEDDING)?;
        let (context, width) = matrix(POSITION_EMBEDDING)?;
        if width != hidden {
            return Err(not_text(format!(
                "`{POSITION_EMBEDDING}` is {width} wide but the token embeddings {hidden}"
            )));
        }
        let layers = super::numbered_children(tensors.iter().map(|(n, _)| n.as_str()), LAYERS);
        if layers == 0 {
            return Err(not_text(format!("no `{LAYERS}*` tensors")));
        }
        let (intermediate, _) = matrix(&format!("{LAYERS}0.mlp.fc1.weight"))?;
        let (projection_dim, projected) = matrix(PROJECTION).map_err(|e| match e {
            ClipTextError::NotClipText { path, detail } => ClipTextError::NotClipText {
                path,
                detail: format!(
                    "{detail} (a CLIPTextModel without the projection? the CLIP score needs \
                     CLIPTextModelWithProjection or a whole CLIPModel)"
                ),
            },
            e => e,
        })?;
        if projected != hidden {
            return Err(not_text(format!(
                "`{PROJECTION}` has shape [{projection_dim}, {projected}], expected [proj, {hidden}]"
            )));
        }
        let file = match &heads {
            Heads::ConfigFile(file) => Some(file.clone()),
            Heads::Auto | Heads::Explicit(_) => config_beside(path),
        }
        .map(|f| TextConfigFile::read(&f))
        .transpose()?;
        if let Some(file) = &file {
            for (key, ours) in [
                ("vocab_size", vocab_size),
                ("hidden_size", hidden),
                ("num_hidden_layers", layers),
                ("intermediate_size", intermediate),
                ("max_position_embeddings", context),
            ] {
                if let Some(theirs) = file.int(key)? {
                    if theirs != ours {
                        return Err(file.error(format!(
                            "its text {key} is {theirs} but the weights in {} have {ours}: the \
                             config of another model?",
                            path.display()
                        )));
                    }
                }
            }
        }
        let from_file = file
            .as_ref()
            .map(|f| f.int("num_attention_heads"))
            .transpose()?
            .flatten();
        let heads = match (heads, from_file) {
            (Heads::Explicit(h), _) => h,
            (_, Some(h)) => h,
            (Heads::ConfigFile(f), None) => {
                return Err(ClipTextError::Config {
                    path: f,
                    message: "no integer `num_attention_heads` for the text tower".to_owned(),
                })
            }
            (Heads::Auto, None) => RELEASED_TEXT_HEADS
                .iter()
                .find(|(w, _)| *w == hidden)
                .map(|(_, h)| *h)
                .ok_or_else(|| ClipTextError::Heads {
                    path: path.to_path_buf(),
                    hidden,
                    detail: "no config.json beside the weights and not a released width (512: 8 \
                             heads, 768: 12, 1024: 16); give the number of heads"
                        .to_owned(),
                })?,
        };
        if heads <= 0 || hidden % heads != 0 {
            return Err(ClipTextError::Heads {
                path: path.to_path_buf(),
                hidden,
                detail: format!("{heads} heads do not divide the width"),
            });
        }
        let activation = match file.as_ref().and_then(|f| f.json.get("hidden_act")) {
            None => ClipActivation::QuickGelu,
            Some(v) => match v.as_str() {
                Some("quick_gelu") => ClipActivation::QuickGelu,
                Some("gelu") => ClipActivation::Gelu,
                _ => {
                    let f = file.as_ref().expect("read above");
                    return Err(f.error(format!("unsupported hidden_act {v} (quick_gelu or gelu)")));
                }
            },
        };
        let eos_token_id = match &file {
            Some(f) => f.int("eos_token_id")?.unwrap_or(DEFAULT_EOS_TOKEN_ID),
            None => DEFAULT_EOS_TOKEN_ID,
        };
        Ok(ClipTextConfig {
            vocab_size,
            hidden,
            layers,
            heads,
            intermediate,
            context,
            projection_dim,
            activation,
            eos_token_id,
        })
    }

    /// The position of the pooled token in each row of `ids` ([N * len], row-major): the first
    /// `eos_token_id` (position 0 when there is none, as Hugging Face's `argmax` of an all-false
    /// row), or, for [`LEGACY_EOS_TOKEN_ID`], the first position of the row's largest id.
    pub fn pooled_positions(&self, ids: &[i64], len: usize) -> Vec<i64> {
        ids.chunks(len.max(1))
            .map(|row| {
                let position = if self.eos_token_id == LEGACY_EOS_TOKEN_ID {
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&id| id == max)
                } else {
                    row.iter().position(|&id| id == self.eos_token_id)
                };
                position.unwrap_or(0) as i64
            })
            .collect()
    }
}

/// Why a CLIP text tower could not be loaded or used. Names the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ClipTextError {
    /// The file could not be read (see [`ClipError`]).
    #[error(transparent)]
    Clip(#[from] ClipError),
    /// The tensors do not match the model built from the configuration.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The file lacks or misshapes the parameters of a CLIP text tower.
    #[error("{}: not a CLIP text model (Hugging Face CLIPTextModelWithProjection or CLIPModel): {detail}", path.display())]
    NotClipText {
        /// The checkpoint.
        path: PathBuf,
        /// What is missing or misshapen.
        detail: String,
    },
    /// The number of attention heads is unknown or impossible.
    #[error("{}: cannot tell the attention heads of a {hidden}-wide CLIP text model: {detail}", path.display())]
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
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The text tower's tensors of a checkpoint: `text_model.*` (without the `position_ids` buffer)
/// and `text_projection.weight`.
fn text_tensors(
    path: &Path,
    all: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>, ClipTextError> {
    let (text, other): (Vec<_>, Vec<_>) = all.into_iter().partition(|(n, _)| {
        (n.starts_with(PREFIX) && !n.ends_with("embeddings.position_ids")) || n == PROJECTION
    });
    if !text.is_empty() {
        return Ok(text);
    }
    let names = super::tensor_shapes(&other);
    let detail = if names.iter().any(|(n, _)| n.starts_with("vision_model.")) {
        "it holds a CLIP vision tower only (CLIPVisionModel); the CLIP score needs the text tower \
         too: pass a whole CLIPModel or CLIPTextModelWithProjection"
            .to_owned()
    } else if names.iter().any(|(n, _)| n == "token_embedding.weight") {
        "OpenAI's own CLIP format is read for the vision tower only; for the text tower use the \
         Hugging Face release of the same model (e.g. openai/clip-vit-large-patch14)"
            .to_owned()
    } else {
        format!(
            "no `{PREFIX}*` tensors among its {}{}",
            names.len(),
            first_names(&names)
        )
    };
    Err(ClipTextError::NotClipText {
        path: path.to_path_buf(),
        detail,
    })
}

/// The (name, shape) pairs of the text tower that [`ClipTextModel::load`] infers the
/// configuration from ([`ClipTextConfig::infer`]).
pub fn text_shapes(path: &Path) -> Result<Vec<(String, Vec<i64>)>, ClipTextError> {
    Ok(super::tensor_shapes(&text_tensors(path, read_all(path)?)?))
}

/// CLIP's text tower with its projection (Hugging Face's `CLIPTextModelWithProjection`), in eval
/// mode.
#[derive(Debug)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Block>,
    final_layer_norm: nn::LayerNorm,
    text_projection: nn::Linear,
}

impl ClipTextModel {
    /// A model with freshly initialised (random) weights under `p`, named as Hugging Face's.
    pub fn new(p: &nn::Path, config: &ClipTextConfig) -> Self {
        assert!(
            config.heads > 0 && config.hidden % config.heads == 0,
            "the heads must divide the width"
        );
        let text = p / "text_model";
        let emb = &text / "embeddings";
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        ClipTextModel {
            config: config.clone(),
            token_embedding: (&emb / "token_embedding").var(
                "weight",
                &[config.vocab_size, config.hidden],
                init,
            ),
            position_embedding: (&emb / "position_embedding").var(
                "weight",
                &[config.context, config.hidden],
                init,
            ),
            layers: Block::stack(
                &text / "encoder",
                config.layers,
                BlockShape {
                    hidden: config.hidden,
                    heads: config.heads,
                    intermediate: config.intermediate,
                    activation: config.activation,
                },
            ),
            final_layer_norm: layer_norm(&text / "final_layer_norm", config.hidden),
            text_projection: projection(
                p / "text_projection",
                config.hidden,
                config.projection_dim,
            ),
        }
    }

    /// Loads a CLIP text tower onto `device`: a Hugging Face `.safetensors` (or torch.save state
    /// dict) of `CLIPTextModelWithProjection` or a whole `CLIPModel` (see the module documentation
    /// for the configuration and `heads`). Weights are kept in float32.
    pub fn load(
        path: &Path,
        device: Device,
        heads: Heads,
    ) -> Result<(nn::VarStore, ClipTextModel), ClipTextError> {
        let tensors = text_tensors(path, read_all(path)?)?;
        let config = ClipTextConfig::infer(path, &super::tensor_shapes(&tensors), heads)?;
        let (vs, model, loaded) =
            super::build_loaded(device, &tensors, path, &LoadOptions::default(), |p| {
                ClipTextModel::new(p, &config)
            })?;
        tracing::info!(
            "CLIP text model {} ({loaded} tensors): {config:?}",
            path.display()
        );
        Ok((vs, model))
    }

    /// The architecture.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.token_embedding.device()
    }

    /// `text_embeds` [N, projection_dim] (float32, not normalised, on the model's device) of token
    /// ids [N, L] with L at most the context, start and end tokens included (see
    /// [`ClipTokenizer::encode`]).
    ///
    /// # Panics
    /// When the ids are not [N, L] with 0 < L <= context, or an id is out of the vocabulary
    /// (libtorch's index error); [`ClipTextEmbedder::embed`] checks its ids first.
    pub fn embed_ids(&self, ids: &Tensor) -> Tensor {
        let (n, len) = ids.size2().expect("CLIP text input: ids must be [N, L]");
        assert!(
            len > 0 && len <= self.config.context,
            "CLIP text input: {len} tokens, the model takes 1 to {}",
            self.config.context
        );
        let host = Vec::<i64>::try_from(ids.to_kind(Kind::Int64).flatten(0, -1))
            .expect("int64 ids to the host");
        let pooled_at = self.config.pooled_positions(&host, len as usize);
        tch::no_grad(|| {
            let device = self.device();
            let ids = ids.to_device(device).to_kind(Kind::Int64);
            let mut h = Tensor::embedding(&self.token_embedding, &ids, -1, false, false)
                + self.position_embedding.narrow(0, 0, len);
            // Hugging Face's causal mask: finfo(float32).min above the diagonal.
            let causal = (Tensor::ones([len, len], (Kind::Float, device)).triu(1)
                * f64::from(f32::MIN))
            .view([1, 1, len, len]);
            for layer in &self.layers {
                h = layer.forward(&h, Some(&causal));
            }
            let h = h.apply(&self.final_layer_norm);
            let rows = Tensor::arange(n, (Kind::Int64, device));
            let at = Tensor::from_slice(&pooled_at).to_device(device);
            h.index(&[Some(rows), Some(at)])
                .apply(&self.text_projection)
                .to_kind(Kind::Float)
        })
    }
}

/// A CLIP text tower with its tokenizer: caption text to `text_embeds`, as torchmetrics' CLIPScore
/// computes them.
#[derive(Debug)]
pub struct ClipTextEmbedder {
    tokenizer: ClipTokenizer,
    model: ClipTextModel,
    _vs: nn::VarStore,
}

impl ClipTextEmbedder {
    /// Loads the text tower at `weights` (see [`ClipTextModel::load`]) and a CLIP `tokenizer.json`:
    /// `tokenizer` (the file, or a folder holding it), by default the one beside the weights.
    pub fn load(
        weights: &Path,
        tokenizer: Option<&Path>,
        device: Device,
        heads: Heads,
    ) -> Result<Self, ClipTextError> {
        let tokenizer = match tokenizer {
            Some(p) if p.is_dir() => ClipTokenizer::from_folder(p)?,
            Some(p) => ClipTokenizer::from_file(p)?,
            None => ClipTokenizer::from_folder(weights.parent().unwrap_or(Path::new(".")))?,
        };
        let (vs, model) = ClipTextModel::load(weights, device, heads)?;
        Ok(ClipTextEmbedder {
            tokenizer,
            model,
            _vs: vs,
        })
    }

    /// The text tower.
    pub fn model(&self) -> &ClipTextModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// `text_embeds` [N, projection_dim] (float32, not normalised, on the model's device) of the
    /// captions.
    pub fn embed(&self, texts: &[String]) -> Result<Tensor, ClipTextError> {
        let context = self.model.config().context as usize;
        let ids = self.tokenizer.encode(texts, context)?;
        let vocab = self.model.config().vocab_size;
        check_vocab(&ids, vocab, self.tokenizer.path(), "CLIP text model")?;
        Ok(self
            .model
            .embed_ids(&Tensor::from_slice(&ids).view([texts.len() as i64, context as i64])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: 300,
            hidden: 64,
            layers: 2,
            heads: 4,
            intermediate: 256,
            context: 77,
            projection_dim: 32,
            activation: ClipActivation::QuickGelu,
            eos_token_id: DEFAULT_EOS_TOKEN_ID,
        }
    }

    fn shapes(config: &ClipTextConfig) -> Vec<(String, Vec<i64>)> {
        super::super::variable_shapes(|p| ClipTextModel::new(p, config))
    }

    #[test]
    fn configuration_is_inferred_back_from_shapes() {
        let path = Path::new("/nonexistent/clip_text.safetensors");
        assert_eq!(
            ClipTextConfig::infer(path, &shapes(&tiny()), Heads::Explicit(4)).unwrap(),
            tiny()
        );
        let e = ClipTextConfig::infer(path, &shapes(&tiny()), Heads::Auto).unwrap_err();
        assert!(matches!(e, ClipTextError::Heads { hidden: 64, .. }), "{e}");
        let large = ClipTextConfig {
            eos_token_id: DEFAULT_EOS_TOKEN_ID,
            ..ClipTextConfig::vit_l14()
        };
        assert_eq!(
            ClipTextConfig::infer(path, &shapes(&large), Heads::Auto).unwrap(),
            large
        );
        let mut no_projection = shapes(&tiny());
        no_projection.retain(|(n, _)| n != PROJECTION);
        let e = ClipTextConfig::infer(path, &no_projection, Heads::Explicit(4)).unwrap_err();
        assert!(e.to_string().contains("without the projection"), "{e}");
    }

    #[test]
    fn a_config_beside_the_weights_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("model.safetensors");
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"text_config": {"hidden_size": 64, "num_attention_heads": 8,
                "hidden_act": "gelu", "eos_token_id": 2},
                "vision_config": {"hidden_size": 1024, "num_attention_heads": 16}}"#,
        )
        .unwrap();
        let got = ClipTextConfig::infer(&weights, &shapes(&tiny()), Heads::Auto).unwrap();
        assert_eq!(
            (got.heads, got.activation, got.eos_token_id),
            (8, ClipActivation::Gelu, LEGACY_EOS_TOKEN_ID)
        );
        std::fs::write(
            &config,
            r#"{"num_hidden_layers": 12, "num_attention_heads": 4}"#,
        )
        .unwrap();
        let e = ClipTextConfig::infer(&weights, &shapes(&tiny()), Heads::Auto).unwrap_err();
        assert!(
            matches!(e, ClipTextError::Config { .. })
                && e.to_string().contains("config.json")
                && e.to_string().contains("num_hidden_layers is 12"),
            "{e}"
        );
    }

    #[test]
    fn pooled_positions_follow_hugging_face() {
        let first_eos = tiny();
        let ids = [5, 7, 299, 299, 5, 6, 7, 8];
        let c = ClipTextConfig {
            eos_token_id: 299,
            ..first_eos
        };
        // The first end token; none (a truncated caption): position 0.
        assert_eq!(c.pooled_positions(&ids, 4), [2, 0]);
        let legacy = ClipTextConfig {
            eos_token_id: LEGACY_EOS_TOKEN_ID,
            ..c
        };
        // The first largest id.
        assert_eq!(legacy.pooled_positions(&ids, 4), [2, 3]);
    }
}
