//! The DINOv2 ViT feature network of FD_DINOv2 (facebookresearch/dinov2's `DinoVisionTransformer`,
//! as `torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")` builds it) in tch.
//!
//! Architecture: a patch embedding (`patch_embed.proj`, a 14x14 stride-14 convolution), a class
//! token (`cls_token`), optional register tokens (`register_tokens`, the `_reg4` releases,
//! inserted after the class token, after the position embedding is added), a learned position
//! embedding (`pos_embed`) for 518x518 inputs (a 37x37 patch grid plus the class token), then
//! `depth` pre-norm blocks `blocks.{i}`: `norm1`, fused `attn.qkv`, `attn.proj`, LayerScale
//! `ls1.gamma`; `norm2`, the FFN (`mlp.fc1`, exact GELU, `mlp.fc2`; or, for ViT-g, the fused SwiGLU
//! `mlp.w12`, SiLU gate, `mlp.w3`), LayerScale `ls2.gamma`; and the final `norm`. Every LayerNorm
//! has eps 1e-6. The feature is the final-norm class token ([N, embed_dim]). `mask_token` is in
//! the released checkpoints but plays no part in inference; it is skipped when loading.
//!
//! At other input sizes the 37x37 position grid is resized as the hub model does it: bicubic
//! (align_corners=False, no antialiasing) with scale factors `(grid + 0.1) / 37` handed to the
//! kernel, and an output size of `floor(37 * scale)`: the sampling positions follow the scale
//! factor, not the output size.
//!
//! The configuration comes from the state dict's shapes ([`Dinov2Config::infer`]), so
//! `dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth` load without flags. The head count is not in the
//! shapes: it is taken from the released widths (384: 6, 768: 12, 1024: 16, 1536: 24) or must be
//! given.
//!
//! Preprocessing ([`preprocess`]) is dgm-eval's: Pillow's antialiased bicubic resize of the u8
//! image to 224x224, `/ 255`, then ImageNet mean and std.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ndarray::ArrayView4;
use rayon::prelude::*;
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::shapes;
use crate::checkpoint::{self, Checkpoint, CheckpointError, LoadOptions, TensorMeta};
use crate::data::pil_resize::{self, Filter};

/// Side of the square input FD_DINOv2 feeds the network (dgm-eval's resize).
pub const INPUT_SIZE: i64 = 224;
/// The only patch size supported (every released DINOv2 is a ViT-*/14).
pub const PATCH_SIZE: i64 = 14;
/// ImageNet channel means (torchvision `Normalize`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (torchvision `Normalize`).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The hub model's `interpolate_offset`, added to the target grid side before computing the
/// position-embedding scale factor.
pub const INTERPOLATE_OFFSET: f64 = 0.1;
/// Head counts of the released widths (embed_dim, heads): ViT-S, B, L, g; all head dim 64.
pub const RELEASED_HEADS: [(i64, i64); 4] = [(384, 6), (768, 12), (1024, 16), (1536, 24)];
/// Checkpoint entry that exists in the released files but is unused at inference.
pub const MASK_TOKEN_KEY: &str = "mask_token";
const NORM_EPS: f64 = 1e-6;

/// The feed-forward network of each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ffn {
    /// `mlp.fc1` (embed_dim -> hidden), exact GELU, `mlp.fc2` (ViT-S/B/L).
    Mlp {
        /// Hidden width (4 x embed_dim in the releases).
        hidden: i64,
    },
    /// dinov2's `SwiGLUFFNFused` (ViT-g): `mlp.w12` (embed_dim -> 2 x hidden), `silu(x1) * x2`,
    /// `mlp.w3` (hidden -> embed_dim).
    SwiGlu {
        /// Hidden width: [`swiglu_hidden`] of 4 x embed_dim in the releases (4096 for ViT-g).
        hidden: i64,
    },
}

/// dinov2's `SwiGLUFFNFused` hidden width for a nominal `hidden`: `(int(hidden * 2 / 3) + 7) // 8
/// * 8`.
pub fn swiglu_hidden(hidden: i64) -> i64 {
    ((hidden as f64 * 2.0 / 3.0) as i64 + 7) / 8 * 8
}

/// The architecture of a DINOv2 ViT.
#[derive(Debug, Clone, PartialEq)]
pub struct Dinov2Config {
    /// Token width.
    pub embed_dim: i64,
    /// Number of blocks.
    pub depth: i64,
    /// Attention heads per block.
    pub num_heads: i64,
    /// Patch side in pixels (always [`PATCH_SIZE`]).
    pub patch_size: i64,
    /// Side of the learned position-embedding grid (37: img_size 518 / 14).
    pub pos_grid: i64,
    /// Register tokens (0, or 4 for the `_reg4` releases).
    pub num_register_tokens: i64,
    /// The feed-forward network.
    pub ffn: Ffn,
    /// Whether blocks have LayerScale (`ls1.gamma`, `ls2.gamma`); the hub models do.
    pub layer_scale: bool,
}

impl Dinov2Config {
    fn released(embed_dim: i64, depth: i64, ffn: Ffn) -> Self {
        Dinov2Config {
            embed_dim,
            depth,
            num_heads: embed_dim / 64,
            patch_size: PATCH_SIZE,
            pos_grid: 37,
            num_register_tokens: 0,
            ffn,
            layer_scale: true,
        }
    }

    /// `dinov2_vits14`: 384 wide, 12 blocks, 6 heads.
    pub fn vit_s14() -> Self {
        Self::released(384, 12, Ffn::Mlp { hidden: 1536 })
    }

    /// `dinov2_vitb14`: 768 wide, 12 blocks, 12 heads.
    pub fn vit_b14() -> Self {
        Self::released(768, 12, Ffn::Mlp { hidden: 3072 })
    }

    /// `dinov2_vitl14` (the FD_DINOv2 network): 1024 wide, 24 blocks, 16 heads.
    pub fn vit_l14() -> Self {
        Self::released(1024, 24, Ffn::Mlp { hidden: 4096 })
    }

    /// `dinov2_vitg14`: 1536 wide, 40 blocks, 24 heads, SwiGLU FFN.
    pub fn vit_g14() -> Self {
        Self::released(
            1536,
            40,
            Ffn::SwiGlu {
                hidden: swiglu_hidden(4 * 1536),
            },
        )
    }

    /// The head count of a released width ([`RELEASED_HEADS`]).
    pub fn released_heads(embed_dim: i64) -> Option<i64> {
        RELEASED_HEADS
            .iter()
            .find(|(d, _)| *d == embed_dim)
            .map(|(_, h)| *h)
    }

    /// Reads the configuration from the shapes of a state dict's tensors (names without wrapper
    /// prefixes, blocks as `blocks.{i}.*`). `num_heads` overrides the head count, which is
    /// otherwise that of the released width; a width outside the releases needs it. `path` names
    /// the checkpoint in errors.
    pub fn infer(
        path: &Path,
        tensors: &[(String, Vec<i64>)],
        num_heads: Option<i64>,
    ) -> Result<Self, Dinov2Error> {
        let shape = |name: &str| shapes::find(tensors, name);
        let not_dinov2 = |detail: String| Dinov2Error::NotDinov2 {
            path: path.to_path_buf(),
            detail,
        };
        let dims = |name: &str, rank: usize| -> Result<&[i64], Dinov2Error> {
            match shape(name) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => Err(not_dinov2(format!(
                    "`{name}` has shape {s:?}, expected {rank} dimensions"
                ))),
                None => Err(not_dinov2(format!(
                    "no `{name}` among its {} tensors{}",
                    tensors.len(),
                    describe_names(tensors)
                ))),
            }
        };
        let embed_dim = dims("cls_token", 3)?[2];
        let proj = dims("patch_embed.proj.weight", 4)?;
        if proj[0] != embed_dim || proj[1] != 3 {
            return Err(not_dinov2(format!(
                "`patch_embed.proj.weight` is {proj:?}, expected [{embed_dim}, 3, 14, 14]"
            )));
        }
        if proj[2] != PATCH_SIZE || proj[3] != PATCH_SIZE {
            return Err(Dinov2Error::PatchSize {
                path: path.to_path_buf(),
                patch: [proj[2], proj[3]],
            });
        }
        let pos = dims("pos_embed", 3)?;
        let grid_tokens = pos[1] - 1;
        let pos_grid = (grid_tokens.max(0) as f64).sqrt().round() as i64;
        if pos[2] != embed_dim || grid_tokens <= 0 || pos_grid * pos_grid != grid_tokens {
            return Err(not_dinov2(format!(
                "`pos_embed` is {pos:?}, expected [1, 1 + side^2, {embed_dim}]"
            )));
        }
        let num_register_tokens = match shape("register_tokens") {
            None => 0,
            Some([1, r, d]) if *d == embed_dim => *r,
            Some(s) => {
                return Err(not_dinov2(format!(
                    "`register_tokens` is {s:?}, expected [1, count, {embed_dim}]"
                )))
            }
        };
        let blocks: BTreeSet<i64> = tensors
            .iter()
            .filter_map(|(n, _)| n.strip_prefix("blocks.")?.split('.').next()?.parse().ok())
            .collect();
        let depth = blocks.len() as i64;
        if depth == 0 || blocks.iter().copied().ne(0..depth) {
            return Err(not_dinov2(format!(
                "its blocks are {blocks:?}, expected blocks.0 .. blocks.n"
            )));
        }
        let ffn = if let Some(fc1) = shape("blocks.0.mlp.fc1.weight") {
            match fc1 {
                [hidden, d] if *d == embed_dim => Ffn::Mlp { hidden: *hidden },
                s => {
                    return Err(not_dinov2(format!(
                        "`blocks.0.mlp.fc1.weight` is {s:?}, expected [hidden, {embed_dim}]"
                    )))
                }
            }
        } else if let Some(w12) = shape("blocks.0.mlp.w12.weight") {
            match w12 {
                [h2, d] if *d == embed_dim && h2 % 2 == 0 => Ffn::SwiGlu { hidden: h2 / 2 },
                s => {
                    return Err(not_dinov2(format!(
                        "`blocks.0.mlp.w12.weight` is {s:?}, expected [2 x hidden, {embed_dim}]"
                    )))
                }
            }
        } else {
            return Err(not_dinov2(
                "block 0 has neither an MLP (`mlp.fc1`) nor a SwiGLU (`mlp.w12`) FFN".into(),
            ));
        };
        let layer_scale = shape("blocks.0.ls1.gamma").is_some();
        let num_heads = match num_heads.or_else(|| Self::released_heads(embed_dim)) {
            Some(h) if h > 0 && embed_dim % h == 0 => h,
            Some(h) => {
                return Err(Dinov2Error::Heads {
                    path: path.to_path_buf(),
                    embed_dim,
                    num_heads: h,
                })
            }
            None => {
                return Err(Dinov2Error::UnknownHeads {
                    path: path.to_path_buf(),
                    embed_dim,
                })
            }
        };
        Ok(Dinov2Config {
            embed_dim,
            depth,
            num_heads,
            patch_size: PATCH_SIZE,
            pos_grid,
            num_register_tokens,
            ffn,
            layer_scale,
        })
    }
}

/// The DINOv2 tensors of `ck` that [`Dinov2::load`] reads: the state dict (under `model` /
/// `state_dict`, else the top level), wrapper prefixes stripped, chunked block names unchunked.
fn state_dict_metas(ck: &Checkpoint) -> Result<Vec<(String, &TensorMeta)>, CheckpointError> {
    let key = ck.state_dict_key(false)?;
    let mut metas: Vec<(String, &TensorMeta)> = ck.tensor_metas_at(key.as_deref())?;
    checkpoint::strip_wrapper_prefixes(&mut metas);
    unchunk_block_names(&mut metas);
    Ok(metas)
}

/// The (name, shape) pairs [`Dinov2::load`] infers the configuration from
/// ([`Dinov2Config::infer`]), before any tensor is read.
pub fn state_dict_shapes(ck: &Checkpoint) -> Result<Vec<(String, Vec<i64>)>, CheckpointError> {
    Ok(super::meta_shapes(&state_dict_metas(ck)?))
}

/// The first few names of a state dict, and what the file looks like when it is a known other
/// network.
fn describe_names(tensors: &[(String, Vec<i64>)]) -> String {
    if tensors.is_empty() {
        return String::new();
    }
    let has = |prefix: &str| tensors.iter().any(|(n, _)| n.starts_with(prefix));
    let looks_like = if has("embeddings.cls_token") || has("embeddings.patch_embeddings") {
        "; it looks like a Hugging Face Transformers DINOv2, pass facebookresearch/dinov2's release \
         (dinov2_vitl14_pretrain.pth) instead"
    } else if has("vision_model.") || has("text_model.") || has("visual.") {
        "; it looks like a CLIP model"
    } else if has("Mixed_") || has("Conv2d_1a_3x3") {
        "; it looks like the Inception network"
    } else if has("encoder.conv_in") || has("quantize.") {
        "; it looks like a VQ tokenizer"
    } else if has("tok_embeddings") || has("layers.") {
        "; it looks like a GPT generator"
    } else if has("teacher.") || has("student.") {
        "; it looks like a DINOv2 training checkpoint, extract the teacher backbone first"
    } else {
        ""
    };
    let names: Vec<&str> = tensors.iter().take(4).map(|(n, _)| n.as_str()).collect();
    format!(" (first: {}){looks_like}", names.join(", "))
}

/// Why a DINOv2 network could not be loaded. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum Dinov2Error {
    /// The checkpoint file could not be read, or its tensors do not fit the inferred model.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The state dict lacks or misshapes the parameters a DINOv2 ViT has.
    #[error(
        "{}: not a DINOv2 ViT state dict (facebookresearch/dinov2's DinoVisionTransformer, e.g. \
         dinov2_vitl14_pretrain.pth): {detail}",
        path.display()
    )]
    NotDinov2 {
        /// The checkpoint.
        path: PathBuf,
        /// Which parameter is missing or has the wrong shape.
        detail: String,
    },
    /// A DINOv2 with a patch size other than 14.
    #[error(
        "{}: the DINOv2 patch embedding `patch_embed.proj.weight` has {}x{} patches; only patch \
         size 14 (the released ViT-S/B/L/g-14 models) is supported",
        path.display(),
        patch[0],
        patch[1]
    )]
    PatchSize {
        /// The checkpoint.
        path: PathBuf,
        /// Patch height and width.
        patch: [i64; 2],
    },
    /// The width is not a released one and no head count was given.
    #[error(
        "{}: DINOv2 embed_dim {embed_dim} is not a released width (384, 768, 1024, 1536), so the \
         number of attention heads is unknown; give it explicitly",
        path.display()
    )]
    UnknownHeads {
        /// The checkpoint.
        path: PathBuf,
        /// The token width read from `cls_token`.
        embed_dim: i64,
    },
    /// The head count given does not divide the width.
    #[error(
        "{}: {num_heads} attention heads do not divide the DINOv2 embed_dim {embed_dim}",
        path.display()
    )]
    Heads {
        /// The checkpoint.
        path: PathBuf,
        /// The token width.
        embed_dim: i64,
        /// The head count asked for.
        num_heads: i64,
    },
}

fn layer_norm(p: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps: NORM_EPS,
            ..Default::default()
        },
    )
}

#[derive(Debug)]
enum FfnLayers {
    Mlp { fc1: nn::Linear, fc2: nn::Linear },
    SwiGlu { w12: nn::Linear, w3: nn::Linear },
}

impl FfnLayers {
    fn new(p: nn::Path, dim: i64, ffn: Ffn) -> Self {
        match ffn {
            Ffn::Mlp { hidden } => FfnLayers::Mlp {
                fc1: nn::linear(&p / "fc1", dim, hidden, Default::default()),
                fc2: nn::linear(&p / "fc2", hidden, dim, Default::default()),
            },
            Ffn::SwiGlu { hidden } => FfnLayers::SwiGlu {
                w12: nn::linear(&p / "w12", dim, 2 * hidden, Default::default()),
                w3: nn::linear(&p / "w3", hidden, dim, Default::default()),
            },
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            FfnLayers::Mlp { fc1, fc2 } => x.apply(fc1).gelu("none").apply(fc2),
            FfnLayers::SwiGlu { w12, w3 } => {
                let h = x.apply(w12);
                let parts = h.chunk(2, -1);
                (parts[0].silu() * &parts[1]).apply(w3)
            }
        }
    }
}

#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    ls1: Option<Tensor>,
    norm2: nn::LayerNorm,
    mlp: FfnLayers,
    ls2: Option<Tensor>,
    num_heads: i64,
}

impl Block {
    fn new(p: nn::Path, c: &Dinov2Config) -> Self {
        let d = c.embed_dim;
        let gamma = |name: &str| {
            c.layer_scale
                .then(|| (&p / name).var("gamma", &[d], nn::Init::Const(1.0)))
        };
        Block {
            norm1: layer_norm(&p / "norm1", d),
            qkv: nn::linear(&p / "attn" / "qkv", d, 3 * d, Default::default()),
            proj: nn::linear(&p / "attn" / "proj", d, d, Default::default()),
            ls1: gamma("ls1"),
            norm2: layer_norm(&p / "norm2", d),
            mlp: FfnLayers::new(&p / "mlp", d, c.ffn),
            ls2: gamma("ls2"),
            num_heads: c.num_heads,
        }
    }

    fn attention(&self, x: &Tensor) -> Tensor {
        let (b, n, c) = x.size3().expect("tokens are [B, N, C]");
        let qkv = x
            .apply(&self.qkv)
            .reshape([b, n, 3, self.num_heads, c / self.num_heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false)
            .transpose(1, 2)
            .reshape([b, n, c])
            .apply(&self.proj)
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let scale = |h: Tensor, gamma: &Option<Tensor>| match gamma {
            Some(g) => h * g,
            None => h,
        };
        let x = x + scale(self.attention(&x.apply(&self.norm1)), &self.ls1);
        let h = scale(self.mlp.forward(&x.apply(&self.norm2)), &self.ls2);
        x + h
    }
}

/// A DINOv2 ViT feature network.
#[derive(Debug)]
pub struct Dinov2 {
    config: Dinov2Config,
    patch_embed: nn::Conv2D,
    cls_token: Tensor,
    pos_embed: Tensor,
    register_tokens: Option<Tensor>,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
}

impl Dinov2 {
    /// A network with freshly initialised weights under `p`, named as dinov2's (no `mask_token`).
    pub fn new(p: &nn::Path, config: &Dinov2Config) -> Self {
        let d = config.embed_dim;
        let small = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let tokens = 1 + config.pos_grid * config.pos_grid;
        Dinov2 {
            config: config.clone(),
            patch_embed: nn::conv2d(
                p / "patch_embed" / "proj",
                3,
                d,
                config.patch_size,
                nn::ConvConfig {
                    stride: config.patch_size,
                    ..Default::default()
                },
            ),
            cls_token: p.var("cls_token", &[1, 1, d], small),
            pos_embed: p.var("pos_embed", &[1, tokens, d], small),
            register_tokens: (config.num_register_tokens > 0).then(|| {
                p.var(
                    "register_tokens",
                    &[1, config.num_register_tokens, d],
                    small,
                )
            }),
            blocks: (0..config.depth)
                .map(|i| Block::new(p / "blocks" / i, config))
                .collect(),
            norm: layer_norm(p / "norm", d),
        }
    }

    /// Loads a DINOv2 state dict (a bare `torch.save(model.state_dict())` as released, or one
    /// under `model` / `state_dict`, any torch.save format, or safetensors) onto `device`,
    /// inferring the configuration from its shapes ([`Dinov2Config::infer`]; `num_heads` as
    /// there). Block names `blocks.{chunk}.{i}.*` of block-chunked training models are accepted as
    /// `blocks.{i}.*`.
    pub fn load(
        path: &Path,
        device: Device,
        num_heads: Option<i64>,
    ) -> Result<(nn::VarStore, Dinov2), Dinov2Error> {
        let ck = Checkpoint::open(path)?;
        let metas = state_dict_metas(&ck)?;
        let config = Dinov2Config::infer(path, &super::meta_shapes(&metas), num_heads)?;
        let tensors = ck.read_tensors(&metas)?;
        let opts = LoadOptions {
            ignore: vec![MASK_TOKEN_KEY.to_owned()],
            ..Default::default()
        };
        let (vs, model, loaded) =
            super::build_loaded(device, &tensors, path, &opts, |p| Dinov2::new(p, &config))?;
        tracing::info!("DINOv2 {} ({loaded} tensors): {config:?}", path.display());
        Ok((vs, model))
    }

    /// The architecture read from the checkpoint.
    pub fn config(&self) -> &Dinov2Config {
        &self.config
    }

    /// Width of the features ([`Self::features`] gives [N, embed_dim]).
    pub fn feature_dim(&self) -> i64 {
        self.config.embed_dim
    }

    /// The dtype the network runs in (that of its weights).
    pub fn kind(&self) -> Kind {
        self.patch_embed.ws.kind()
    }

    /// Where the weights live and the forward pass runs.
    pub fn device(&self) -> Device {
        self.patch_embed.ws.device()
    }

    /// The position embedding for a `grid_h` x `grid_w` patch grid (with the class token's first),
    /// f32 [1, 1 + grid_h * grid_w, embed_dim]: the learned one when the grid is the learned
    /// square, else the patch part resized as dinov2's `interpolate_pos_encoding` does it with
    /// `interpolate_offset` 0.1 and no antialiasing.
    pub fn position_embedding(&self, grid_h: i64, grid_w: i64) -> Tensor {
        let m = self.config.pos_grid;
        let d = self.config.embed_dim;
        let pos = self.pos_embed.to_kind(Kind::Float);
        if grid_h == m && grid_w == m {
            return pos;
        }
        let cls = pos.narrow(1, 0, 1);
        let grid = pos
            .narrow(1, 1, m * m)
            .reshape([1, m, m, d])
            .permute([0, 3, 1, 2]);
        // `F.interpolate(scale_factor=(sh, sw), mode="bicubic")`: output size floor(in * scale),
        // and the scale factors themselves reach the kernel, which samples at
        // (dst + 0.5) / scale - 0.5.
        let scale_h = (grid_h as f64 + INTERPOLATE_OFFSET) / m as f64;
        let scale_w = (grid_w as f64 + INTERPOLATE_OFFSET) / m as f64;
        let out_h = (m as f64 * scale_h).floor() as i64;
        let out_w = (m as f64 * scale_w).floor() as i64;
        assert_eq!(
            (out_h, out_w),
            (grid_h, grid_w),
            "position grid resize lands on the patch grid"
        );
        let resized = grid
            .upsample_bicubic2d([out_h, out_w], false, scale_h, scale_w)
            .permute([0, 2, 3, 1])
            .reshape([1, grid_h * grid_w, d]);
        Tensor::cat(&[cls, resized], 1)
    }

    /// The final-norm class token (the FD_DINOv2 feature), f32 [N, embed_dim], of normalised
    /// f32 NCHW images (see [`preprocess`]) whose sides are multiples of 14 (224 in FD_DINOv2;
    /// 518 needs no position interpolation).
    ///
    /// # Panics
    /// When the images are not [N, 3, H, W] with H and W multiples of the patch size.
    pub fn features(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let (b, c, h, w) = images.size4().expect("images are NCHW");
            let p = self.config.patch_size;
            assert!(
                c == 3 && h % p == 0 && w % p == 0 && h > 0 && w > 0,
                "DINOv2 input must be [N, 3, H, W] with H and W multiples of {p}, got {:?}",
                images.size()
            );
            let d = self.config.embed_dim;
            let kind = self.kind();
            let x = images.to_device(self.device()).to_kind(kind);
            let patches = x.apply(&self.patch_embed).flatten(2, 3).transpose(1, 2);
            let tokens = Tensor::cat(&[self.cls_token.expand([b, 1, d], false), patches], 1);
            let mut x = tokens + self.position_embedding(h / p, w / p).to_kind(kind);
            if let Some(reg) = &self.register_tokens {
                let n = x.size()[1];
                x = Tensor::cat(
                    &[
                        x.narrow(1, 0, 1),
                        reg.expand([b, self.config.num_register_tokens, d], false),
                        x.narrow(1, 1, n - 1),
                    ],
                    1,
                );
            }
            for block in &self.blocks {
                x = block.forward(&x);
            }
            // LayerNorm is per token: normalising the class token alone gives the same values.
            x.select(1, 0).apply(&self.norm).to_kind(Kind::Float)
        })
    }
}

/// `blocks.{chunk}.{i}.rest` (dinov2's `BlockChunk` layout with block_chunks > 0) to
/// `blocks.{i}.rest`; other names unchanged.
fn unchunk_block_names<T>(tensors: &mut [(String, T)]) {
    for (name, _) in tensors.iter_mut() {
        let Some(rest) = name.strip_prefix("blocks.") else {
            continue;
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(a), Some(b), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok() {
            *name = format!("blocks.{b}.{tail}");
        }
    }
}

/// dgm-eval's DINOv2 preprocessing of u8 RGB images [N, H, W, 3] (any size): Pillow's bicubic
/// resize (antialiased, as torchvision's `Resize((224, 224), BICUBIC)` on a PIL image) to 224x224,
/// then `x / 255` and `(x - mean) / std` with the ImageNet statistics, in f32. Returns f32
/// [N, 3, 224, 224] on the CPU.
///
/// # Panics
/// When the images do not have 3 channels.
pub fn preprocess(images_nhwc: ArrayView4<'_, u8>) -> Tensor {
    let (n, h, w, c) = images_nhwc.dim();
    assert_eq!(c, 3, "DINOv2 preprocessing takes RGB images [N, H, W, 3]");
    let side = INPUT_SIZE as usize;
    let resized: Vec<Vec<u8>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let image = images_nhwc.index_axis(ndarray::Axis(0), i);
            let image = image.as_standard_layout();
            let pixels = image.as_slice().expect("standard layout is contiguous");
            pil_resize::resize_rgb8(pixels, w, h, side, side, Filter::Bicubic)
        })
        .collect();
    let flat: Vec<u8> = resized.concat();
    normalize(
        &Tensor::from_slice(&flat)
            .view([n as i64, INPUT_SIZE, INPUT_SIZE, 3])
            .permute([0, 3, 1, 2]),
    )
}

/// torchvision's `ToTensor` and ImageNet `Normalize` of u8 NCHW images, as f32 on their device:
/// `(x / 255 - mean) / std`.
pub fn normalize(images_nchw_u8: &Tensor) -> Tensor {
    let device = images_nchw_u8.device();
    let mean = Tensor::from_slice(&IMAGENET_MEAN)
        .view([1, 3, 1, 1])
        .to_device(device);
    let std = Tensor::from_slice(&IMAGENET_STD)
        .view([1, 3, 1, 1])
        .to_device(device);
    ((images_nchw_u8.to_kind(Kind::Float) / 255.0) - mean) / std
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(config: &Dinov2Config) -> Vec<(String, Vec<i64>)> {
        let mut out = super::super::variable_shapes(|p| Dinov2::new(p, config));
        out.push((MASK_TOKEN_KEY.to_owned(), vec![1, config.embed_dim]));
        out.sort();
        out
    }

    fn tiny() -> Dinov2Config {
        Dinov2Config {
            embed_dim: 64,
            depth: 2,
            num_heads: 4,
            patch_size: 14,
            pos_grid: 37,
            num_register_tokens: 0,
            ffn: Ffn::Mlp { hidden: 256 },
            layer_scale: true,
        }
    }

    #[test]
    fn dinov2_configuration_is_inferred_back_from_shapes() {
        let mut reg = Dinov2Config::vit_s14();
        reg.num_register_tokens = 4;
        let mut g = Dinov2Config::vit_g14();
        g.depth = 2; // fewer blocks: the same inference, less memory
        for config in [Dinov2Config::vit_l14(), reg, g] {
            let got = Dinov2Config::infer(Path::new("x.pth"), &shapes(&config), None).unwrap();
            assert_eq!(got, config);
        }
        assert_eq!(swiglu_hidden(4 * 1536), 4096);
        let got = Dinov2Config::infer(Path::new("x.pth"), &shapes(&tiny()), Some(4)).unwrap();
        assert_eq!(got, tiny());
    }

    #[test]
    fn dinov2_wrong_inputs_are_named() {
        let e = Dinov2Config::infer(Path::new("tiny.pth"), &shapes(&tiny()), None).unwrap_err();
        assert!(matches!(e, Dinov2Error::UnknownHeads { .. }), "{e}");
        assert!(e.to_string().contains("tiny.pth"), "{e}");
        let e = Dinov2Config::infer(Path::new("tiny.pth"), &shapes(&tiny()), Some(5)).unwrap_err();
        assert!(matches!(e, Dinov2Error::Heads { .. }), "{e}");
        let mut s = shapes(&tiny());
        for (n, shape) in &mut s {
            if n == "patch_embed.proj.weight" {
                shape[2] = 16;
                shape[3] = 16;
            }
        }
        let e = Dinov2Config::infer(Path::new("p16.pth"), &s, Some(4)).unwrap_err();
        assert!(matches!(e, Dinov2Error::PatchSize { .. }), "{e}");
        assert!(e.to_string().contains("p16.pth"), "{e}");
        let hf = vec![("embeddings.cls_token".to_owned(), vec![1, 1, 64])];
        let e = Dinov2Config::infer(Path::new("hf.safetensors"), &hf, None).unwrap_err();
        assert!(e.to_string().contains("Hugging Face"), "{e}");
    }

    #[test]
    fn dinov2_chunked_block_names_are_flattened() {
        let mut names = vec![
            ("blocks.1.7.norm1.weight".to_owned(), ()),
            ("blocks.7.norm1.weight".to_owned(), ()),
            ("norm.weight".to_owned(), ()),
        ];
        unchunk_block_names(&mut names);
        assert_eq!(names[0].0, "blocks.7.norm1.weight");
        assert_eq!(names[1].0, "blocks.7.norm1.weight");
        assert_eq!(names[2].0, "norm.weight");
    }

    #[test]
    fn dinov2_random_model_gives_one_feature_per_image() {
        tch::manual_seed(0);
        let mut config = tiny();
        config.num_register_tokens = 4;
        config.ffn = Ffn::SwiGlu {
            hidden: swiglu_hidden(256),
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Dinov2::new(&vs.root(), &config);
        let images = ndarray::Array4::<u8>::from_elem((2, 40, 30, 3), 128);
        let input = preprocess(images.view());
        assert_eq!(input.size(), [2, 3, 224, 224]);
        let features = model.features(&input);
        assert_eq!(features.size(), [2, 64]);
        assert_eq!(model.position_embedding(16, 16).size(), [1, 257, 64]);
        assert_eq!(model.position_embedding(37, 37).size(), [1, 1370, 64]);
    }
}
