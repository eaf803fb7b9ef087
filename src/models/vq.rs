//! LlamaGen's image tokenizer (`tokenizer/tokenizer_image/vq_model.py`, `VQModel`) in tch.
//!
//! Encoder: `conv_in` (3x3), then one level per entry of `ch_mult`, each with `num_res_blocks`
//! ResnetBlocks (`conv_blocks.{i}.res.{j}`), an AttnBlock after each of them at the last (lowest
//! resolution) level only (`conv_blocks.{i}.attn.{j}`), and a Downsample (`conv_blocks.{i}.
//! downsample.conv`: zero pad right and bottom by one, then a 3x3 stride-2 convolution) at every
//! level but the last; then `mid` (ResnetBlock, AttnBlock, ResnetBlock), GroupNorm, swish and
//! `conv_out` to `z_channels`. The decoder mirrors it: `conv_in`, `mid`, one level per `ch_mult`
//! entry from the widest, each with `num_res_blocks + 1` ResnetBlocks, AttnBlocks at the first level
//! only, and an Upsample (nearest x2, then a 3x3 convolution) at every level but the last; then
//! GroupNorm, swish and `conv_out` to RGB. Every GroupNorm has 32 groups and eps 1e-6.
//!
//! The quantizer l2-normalises the latent vectors (`quant_conv` output, per position over channels)
//! and the codebook rows at lookup time, picks the code with the smallest
//! `|z|^2 + |e|^2 - 2 z.e` (as LlamaGen computes it) and passes on the normalised code vectors.
//!
//! The configuration is read from the checkpoint's tensor shapes ([`VqConfig::infer`]), so the
//! released `vq_ds16_c2i.pt` (ch 128, ch_mult [1,1,2,2,4], z 256, codebook 16384 x 8),
//! `vq_ds8_c2i.pt` (ch_mult [1,2,2,4]) and custom widths load without flags.

use crate::choice::choice_enum;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tch::nn;
use tch::{Device, Kind, Tensor};

use super::shapes;
use crate::checkpoint::{self, Checkpoint, CheckpointError, LoadOptions, TensorMeta};

/// Name of LlamaGen's training-time usage queue, which is not a model parameter.
pub const CODEBOOK_USED_KEY: &str = "quantize.codebook_used";
/// Name of the codebook.
pub const CODEBOOK_KEY: &str = "quantize.embedding.weight";
const GROUPS: i64 = 32;
const NORM_EPS: f64 = 1e-6;
/// Latent vectors looked up per chunk (bounds the distance matrix to chunk x codebook_size).
const LOOKUP_CHUNK: i64 = 2048;

/// The architecture of a LlamaGen VQ tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VqConfig {
    /// Base channel width (`encoder.conv_in` output).
    pub ch: i64,
    /// Width multiplier of each resolution level.
    pub ch_mult: Vec<i64>,
    /// Channels of the encoder output / decoder input.
    pub z_channels: i64,
    /// Codebook entries.
    pub codebook_size: i64,
    /// Codebook vector length (= `quant_conv` output channels).
    pub embed_dim: i64,
    /// ResnetBlocks per encoder level (the decoder has one more).
    pub num_res_blocks: i64,
}

impl VqConfig {
    /// LlamaGen's VQ-16 (`vq_ds16_c2i.pt`).
    pub fn vq_16() -> Self {
        VqConfig {
            ch: 128,
            ch_mult: vec![1, 1, 2, 2, 4],
            z_channels: 256,
            codebook_size: 16384,
            embed_dim: 8,
            num_res_blocks: 2,
        }
    }

    /// How much smaller the token grid is than the image: 2^(levels - 1).
    pub fn downsample_factor(&self) -> i64 {
        1 << (self.ch_mult.len().max(1) - 1)
    }

    /// Checks that an image of `height` x `width` can be tokenized; `what` names the images.
    pub fn check_image_size(&self, what: &str, height: i64, width: i64) -> Result<(), VqError> {
        let factor = self.downsample_factor();
        if height <= 0 || width <= 0 || height % factor != 0 || width % factor != 0 {
            return Err(VqError::ImageSize {
                what: what.to_owned(),
                height,
                width,
                factor,
            });
        }
        Ok(())
    }

    /// Reads the configuration from the shapes of a state dict's tensors (names without wrapper
    /// prefixes). `path` names the checkpoint in errors.
    pub fn infer(path: &Path, tensors: &[(String, Vec<i64>)]) -> Result<Self, VqError> {
        let shape = |name: &str| shapes::find(tensors, name);
        let not_vq = |detail: String| VqError::NotVq {
            path: path.to_path_buf(),
            detail,
        };
        if let Some((name, _)) = tensors.iter().find(|(n, _)| {
            n.starts_with("tok_embeddings")
                || n.starts_with("cls_embedding")
                || (n.starts_with("layers.") && n.contains(".attention"))
        }) {
            return Err(VqError::GptCheckpoint {
                path: path.to_path_buf(),
                key: name.clone(),
            });
        }
        let dims = |name: &str, rank: usize| shapes::dims(tensors, name, rank).map_err(not_vq);
        let ch = dims("encoder.conv_in.weight", 4)?[0];
        let levels: BTreeSet<usize> = tensors
            .iter()
            .filter_map(|(n, _)| {
                n.strip_prefix("encoder.conv_blocks.")?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        if levels.is_empty() || levels.iter().copied().ne(0..levels.len()) {
            return Err(not_vq(format!(
                "encoder.conv_blocks levels are {levels:?}, expected 0..n"
            )));
        }
        let num_res_blocks = super::numbered_children(
            tensors.iter().map(|(n, _)| n.as_str()),
            "encoder.conv_blocks.0.res.",
        );
        if num_res_blocks == 0 {
            return Err(not_vq("no encoder.conv_blocks.0.res.* tensors".into()));
        }
        let mut ch_mult = Vec::with_capacity(levels.len());
        for i in 0..levels.len() {
            let out = dims(&format!("encoder.conv_blocks.{i}.res.0.conv1.weight"), 4)?[0];
            if ch <= 0 || out % ch != 0 {
                return Err(not_vq(format!(
                    "level {i} has {out} channels, not a multiple of the base width {ch}"
                )));
            }
            ch_mult.push(out / ch);
        }
        let z_channels = dims("encoder.conv_out.weight", 4)?[0];
        let codebook = dims(CODEBOOK_KEY, 2)?;
        let (codebook_size, embed_dim) = (codebook[0], codebook[1]);
        let quant_conv = dims("quant_conv.weight", 4)?;
        if quant_conv[0] != embed_dim || quant_conv[1] != z_channels {
            return Err(VqError::CodebookMismatch {
                path: path.to_path_buf(),
                codebook: codebook.to_vec(),
                quant_conv: quant_conv.to_vec(),
                z_channels,
            });
        }
        if let Some(post) = shape("post_quant_conv.weight") {
            if post.len() != 4 || post[1] != embed_dim {
                return Err(VqError::CodebookMismatch {
                    path: path.to_path_buf(),
                    codebook: codebook.to_vec(),
                    quant_conv: post.to_vec(),
                    z_channels,
                });
            }
        }
        Ok(VqConfig {
            ch,
            ch_mult,
            z_channels,
            codebook_size,
            embed_dim,
            num_res_blocks,
        })
    }
}

choice_enum! {
    /// Which weights of a training checkpoint to use.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum VqWeights: "tokenizer weights" {
        /// `ema` when the checkpoint has it, else `model` (or the bare state dict).
        #[default]
        Auto => ("auto", "`ema` when the checkpoint has it, else `model`"),
        /// The exponential moving average (`ema`); an error when absent.
        Ema => ("ema", "The exponential moving average; an error when absent"),
        /// The trained weights (`model`, `module`, `state_dict` or a bare state dict).
        Model => ("model", "The trained weights"),
    }
}

impl VqWeights {
    /// The entry of `ck` that holds these weights (`None`: the top level is the state dict).
    pub fn state_dict_key(self, ck: &Checkpoint) -> Result<Option<String>, CheckpointError> {
        match self {
            VqWeights::Ema => ck.state_dict_key(true),
            VqWeights::Model => ck.state_dict_key(false),
            VqWeights::Auto => match ck.state_dict_key(true) {
                Ok(key) => Ok(key),
                Err(_) => ck.state_dict_key(false),
            },
        }
    }
}

/// The tokenizer tensors of `ck` that [`VqModel::load`] reads: the state dict `weights` picks,
/// wrapper prefixes stripped.
fn state_dict_metas(
    ck: &Checkpoint,
    weights: VqWeights,
) -> Result<super::StateDictMetas<'_>, CheckpointError> {
    let key = weights.state_dict_key(ck)?;
    let mut metas: Vec<(String, &TensorMeta)> = ck.tensor_metas_at(key.as_deref())?;
    checkpoint::strip_wrapper_prefixes(&mut metas);
    Ok((key, metas))
}

/// The entry [`VqModel::load`] takes `weights` from (`None`: the top level) and the (name, shape)
/// pairs it infers the configuration from ([`VqConfig::infer`]), before any tensor is read.
pub fn state_dict_shapes(
    ck: &Checkpoint,
    weights: VqWeights,
) -> Result<super::StateDictShapes, CheckpointError> {
    let (key, metas) = state_dict_metas(ck, weights)?;
    Ok((key, super::meta_shapes(&metas)))
}

/// Why a tokenizer could not be loaded or used. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum VqError {
    /// The checkpoint file could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The file passed as the tokenizer is a GPT generator (the two checkpoints were swapped?).
    #[error(
        "{}: looks like a GPT checkpoint (it has `{key}`), not a VQ tokenizer; pass the tokenizer \
         (e.g. vq_ds16_c2i.pt) as the tokenizer",
        path.display()
    )]
    GptCheckpoint {
        /// The checkpoint.
        path: PathBuf,
        /// The GPT parameter that gave it away (`tok_embeddings.*`, `cls_embedding.*`, attention).
        key: String,
    },
    /// The state dict lacks or misshapes the parameters a LlamaGen VQ tokenizer has.
    #[error("{}: not a LlamaGen VQ tokenizer checkpoint: {detail}", path.display())]
    NotVq {
        /// The checkpoint.
        path: PathBuf,
        /// Which parameter is missing or has the wrong shape.
        detail: String,
    },
    /// The codebook's dimension disagrees with the convolutions around the quantizer.
    #[error(
        "{}: the codebook `quantize.embedding.weight` is {codebook:?} (entries x dim) but the \
         quantizer convolution is {quant_conv:?} with z_channels {z_channels}: the codebook \
         dimension must equal quant_conv's output channels (and post_quant_conv's input)",
        path.display()
    )]
    CodebookMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// Shape of `quantize.embedding.weight`: [entries, dim].
        codebook: Vec<i64>,
        /// Shape of the disagreeing `quant_conv.weight` (or `post_quant_conv.weight`).
        quant_conv: Vec<i64>,
        /// The encoder's output channels, which `quant_conv` must take in.
        z_channels: i64,
    },
    /// Images whose sides are not multiples of the tokenizer's downsampling factor.
    #[error(
        "{what}: images of {height}x{width} pixels cannot be tokenized: the tokenizer downsamples \
         by {factor}, so height and width must be multiples of {factor} (centre-crop them to such a size)"
    )]
    ImageSize {
        /// Where the images come from (the image source's description).
        what: String,
        /// Image height in pixels.
        height: i64,
        /// Image width in pixels.
        width: i64,
        /// The downsampling factor both sides must be multiples of.
        factor: i64,
    },
    /// The tokenizer weights in the file are unusable.
    #[error("{}: {message}", path.display())]
    Weights {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong with the weights.
        message: String,
    },
}

fn group_norm(p: nn::Path, channels: i64) -> nn::GroupNorm {
    nn::group_norm(
        p,
        GROUPS,
        channels,
        nn::GroupNormConfig {
            eps: NORM_EPS,
            ..Default::default()
        },
    )
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvConfig {
            stride,
            padding,
            ..Default::default()
        },
    )
}

/// LlamaGen's `nonlinearity`: x * sigmoid(x).
fn swish(x: &Tensor) -> Tensor {
    x * x.sigmoid()
}

#[derive(Debug)]
struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    nin_shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        ResnetBlock {
            norm1: group_norm(&p / "norm1", c_in),
            conv1: conv(&p / "conv1", c_in, c_out, 3, 1, 1),
            norm2: group_norm(&p / "norm2", c_out),
            conv2: conv(&p / "conv2", c_out, c_out, 3, 1, 1),
            nin_shortcut: (c_in != c_out).then(|| conv(&p / "nin_shortcut", c_in, c_out, 1, 1, 0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = swish(&x.apply(&self.norm1)).apply(&self.conv1);
        let h = swish(&h.apply(&self.norm2)).apply(&self.conv2);
        match &self.nin_shortcut {
            Some(nin) => x.apply(nin) + h,
            None => x + h,
        }
    }
}

#[derive(Debug)]
struct AttnBlock {
    norm: nn::GroupNorm,
    q: nn::Conv2D,
    k: nn::Conv2D,
    v: nn::Conv2D,
    proj_out: nn::Conv2D,
}

impl AttnBlock {
    fn new(p: nn::Path, c: i64) -> Self {
        AttnBlock {
            norm: group_norm(&p / "norm", c),
            q: conv(&p / "q", c, c, 1, 1, 0),
            k: conv(&p / "k", c, c, 1, 1, 0),
            v: conv(&p / "v", c, c, 1, 1, 0),
            proj_out: conv(&p / "proj_out", c, c, 1, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = x.apply(&self.norm);
        let (q, k, v) = (h.apply(&self.q), h.apply(&self.k), h.apply(&self.v));
        let (b, c, height, width) = q.size4().expect("NCHW activations");
        let n = height * width;
        let q = q.reshape([b, c, n]).permute([0, 2, 1]);
        let k = k.reshape([b, c, n]);
        let weights = (q.bmm(&k) * (c as f64).powf(-0.5)).softmax(2, None::<Kind>);
        let v = v.reshape([b, c, n]);
        let out = v
            .bmm(&weights.permute([0, 2, 1]))
            .reshape([b, c, height, width])
            .apply(&self.proj_out);
        x + out
    }
}

#[derive(Debug)]
struct Level {
    res: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    /// Downsample (encoder) or upsample (decoder) convolution.
    resample: Option<nn::Conv2D>,
}

impl Level {
    fn blocks(&self, mut h: Tensor) -> Tensor {
        for (j, res) in self.res.iter().enumerate() {
            h = res.forward(&h);
            if let Some(attn) = self.attn.get(j) {
                h = attn.forward(&h);
            }
        }
        h
    }
}

#[derive(Debug)]
struct Mid {
    res0: ResnetBlock,
    attn: AttnBlock,
    res2: ResnetBlock,
}

impl Mid {
    fn new(p: nn::Path, c: i64) -> Self {
        Mid {
            res0: ResnetBlock::new(&p / 0, c, c),
            attn: AttnBlock::new(&p / 1, c),
            res2: ResnetBlock::new(&p / 2, c, c),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.res2.forward(&self.attn.forward(&self.res0.forward(x)))
    }
}

#[derive(Debug)]
struct Encoder {
    conv_in: nn::Conv2D,
    levels: Vec<Level>,
    mid: Mid,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    fn new(p: nn::Path, c: &VqConfig) -> Self {
        let conv_in = conv(&p / "conv_in", 3, c.ch, 3, 1, 1);
        let n = c.ch_mult.len();
        let mut levels = Vec::with_capacity(n);
        let mut block_in = c.ch;
        for (i, mult) in c.ch_mult.iter().enumerate() {
            let lp = &p / "conv_blocks" / i;
            let block_out = c.ch * mult;
            let mut res = Vec::new();
            let mut attn = Vec::new();
            for j in 0..c.num_res_blocks {
                res.push(ResnetBlock::new(&lp / "res" / j, block_in, block_out));
                block_in = block_out;
                if i == n - 1 {
                    attn.push(AttnBlock::new(&lp / "attn" / j, block_in));
                }
            }
            let resample = (i != n - 1)
                .then(|| conv(&lp / "downsample" / "conv", block_in, block_in, 3, 2, 0));
            levels.push(Level {
                res,
                attn,
                resample,
            });
        }
        Encoder {
            conv_in,
            levels,
            mid: Mid::new(&p / "mid", block_in),
            norm_out: group_norm(&p / "norm_out", block_in),
            conv_out: conv(&p / "conv_out", block_in, c.z_channels, 3, 1, 1),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.apply(&self.conv_in);
        for level in &self.levels {
            h = level.blocks(h);
            if let Some(down) = &level.resample {
                h = h.constant_pad_nd([0, 1, 0, 1]).apply(down);
            }
        }
        let h = self.mid.forward(&h);
        swish(&h.apply(&self.norm_out)).apply(&self.conv_out)
    }
}

#[derive(Debug)]
struct Decoder {
    conv_in: nn::Conv2D,
    mid: Mid,
    levels: Vec<Level>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    fn new(p: nn::Path, c: &VqConfig) -> Self {
        let n = c.ch_mult.len();
        let mut block_in = c.ch * c.ch_mult[n - 1];
        let conv_in = conv(&p / "conv_in", c.z_channels, block_in, 3, 1, 1);
        let mid = Mid::new(&p / "mid", block_in);
        let mut levels = Vec::with_capacity(n);
        for i in 0..n {
            let lp = &p / "conv_blocks" / i;
            let block_out = c.ch * c.ch_mult[n - 1 - i];
            let mut res = Vec::new();
            let mut attn = Vec::new();
            for j in 0..=c.num_res_blocks {
                res.push(ResnetBlock::new(&lp / "res" / j, block_in, block_out));
                block_in = block_out;
                if i == 0 {
                    attn.push(AttnBlock::new(&lp / "attn" / j, block_in));
                }
            }
            let resample =
                (i != n - 1).then(|| conv(&lp / "upsample" / "conv", block_in, block_in, 3, 1, 1));
            levels.push(Level {
                res,
                attn,
                resample,
            });
        }
        Decoder {
            conv_in,
            mid,
            levels,
            norm_out: group_norm(&p / "norm_out", block_in),
            conv_out: conv(&p / "conv_out", block_in, 3, 3, 1, 1),
        }
    }

    fn forward(&self, z: &Tensor) -> Tensor {
        let h = self.mid.forward(&z.apply(&self.conv_in));
        let mut h = h;
        for level in &self.levels {
            h = level.blocks(h);
            if let Some(up) = &level.resample {
                let (_, _, height, width) = h.size4().expect("NCHW activations");
                // Nearest x2 is exact in any dtype (LlamaGen upsamples bf16 through float32).
                h = h
                    .upsample_nearest2d([height * 2, width * 2], 2.0, 2.0)
                    .apply(up);
            }
        }
        swish(&h.apply(&self.norm_out)).apply(&self.conv_out)
    }
}

/// F.normalize(x, p=2, dim=-1): x / max(|x|, 1e-12).
fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12)
}

/// LlamaGen's VQModel, in eval mode.
#[derive(Debug)]
pub struct VqModel {
    config: VqConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: nn::Conv2D,
    post_quant_conv: nn::Conv2D,
    embedding: Tensor,
    codebook_used: Option<Tensor>,
}

impl VqModel {
    /// A model with freshly initialised (random) weights under `p`, named as LlamaGen's.
    pub fn new(p: &nn::Path, config: &VqConfig) -> Self {
        assert!(
            !config.ch_mult.is_empty() && config.num_res_blocks > 0,
            "a VQ model needs at least one level and one ResnetBlock per level"
        );
        let embedding = (p / "quantize" / "embedding").var(
            "weight",
            &[config.codebook_size, config.embed_dim],
            nn::Init::Uniform {
                lo: -1.0 / config.codebook_size as f64,
                up: 1.0 / config.codebook_size as f64,
            },
        );
        VqModel {
            config: config.clone(),
            encoder: Encoder::new(p / "encoder", config),
            decoder: Decoder::new(p / "decoder", config),
            quant_conv: conv(
                p / "quant_conv",
                config.z_channels,
                config.embed_dim,
                1,
                1,
                0,
            ),
            post_quant_conv: conv(
                p / "post_quant_conv",
                config.embed_dim,
                config.z_channels,
                1,
                1,
                0,
            ),
            embedding,
            codebook_used: None,
        }
    }

    /// Loads a LlamaGen tokenizer checkpoint (training checkpoint with `model` and maybe `ema`,
    /// a bare state dict, legacy or zip format, or safetensors) onto `device`, inferring the
    /// configuration from its tensor shapes.
    pub fn load(
        path: &Path,
        device: Device,
        weights: VqWeights,
    ) -> Result<(nn::VarStore, VqModel), VqError> {
        let ck = Checkpoint::open(path)?;
        let (key, metas) = state_dict_metas(&ck, weights)?;
        let config = VqConfig::infer(path, &super::meta_shapes(&metas))?;
        let mut tensors = ck.read_tensors(&metas)?;
        let codebook_used = tensors
            .iter()
            .position(|(n, _)| n == CODEBOOK_USED_KEY)
            .map(|i| tensors.remove(i).1);
        let opts = LoadOptions {
            ignore: vec![CODEBOOK_USED_KEY.to_owned()],
            ..Default::default()
        };
        let (vs, model, loaded) =
            super::build_loaded(device, &tensors, path, &opts, |p| VqModel::new(p, &config))?;
        tracing::info!(
            "VQ tokenizer {} ({loaded} tensors{}): {config:?}",
            path.display(),
            key.map(|k| format!(" from `{k}`")).unwrap_or_default()
        );
        Ok((
            vs,
            VqModel {
                codebook_used,
                ..model
            },
        ))
    }

    /// The architecture inferred from the checkpoint.
    pub fn config(&self) -> &VqConfig {
        &self.config
    }

    /// The dtype the network runs in (that of its weights: f32, or bf16 after
    /// `VarStore::bfloat16`).
    pub fn kind(&self) -> Kind {
        self.quant_conv.ws.kind()
    }

    /// Where the weights live and encoding/decoding runs.
    pub fn device(&self) -> Device {
        self.quant_conv.ws.device()
    }

    /// `quant_conv(encoder(images))`, f32 [B, embed_dim, h, w], from f32 NCHW images in [-1, 1].
    pub fn pre_quant(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let x = images.to_device(self.device()).to_kind(self.kind());
            self.encoder
                .forward(&x)
                .apply(&self.quant_conv)
                .to_kind(Kind::Float)
        })
    }

    /// The l2-normalised codebook, f32 [codebook_size, embed_dim].
    pub fn normalized_codebook(&self) -> Tensor {
        tch::no_grad(|| l2_normalize(&self.embedding.to_kind(Kind::Float)))
    }

    /// Nearest codes of pre-quant latents [B, C, h, w]: i64 indices [B, h, w].
    pub fn quantize(&self, pre_quant: &Tensor) -> Tensor {
        self.lookup(pre_quant).0
    }

    /// Indices [B, h, w] and the l2-normalised latents, channel-last [B, h, w, C].
    fn lookup(&self, pre_quant: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let (b, c, h, w) = pre_quant.size4().expect("pre-quant latents are NCHW");
            let z = l2_normalize(
                &pre_quant
                    .to_kind(Kind::Float)
                    .permute([0, 2, 3, 1])
                    .contiguous(),
            );
            let flat = z.reshape([-1, c]);
            let codebook = self.normalized_codebook();
            let e_sq = codebook
                .pow_tensor_scalar(2)
                .sum_dim_intlist(1, false, None::<Kind>);
            let codebook_t = codebook.transpose(0, 1);
            let rows = flat.size()[0];
            let mut parts = Vec::new();
            let mut start = 0;
            while start < rows {
                let len = LOOKUP_CHUNK.min(rows - start);
                let chunk = flat.narrow(0, start, len);
                let z_sq = chunk
                    .pow_tensor_scalar(2)
                    .sum_dim_intlist(1, true, None::<Kind>);
                let d = z_sq + &e_sq - chunk.mm(&codebook_t) * 2.0;
                parts.push(d.argmin(1, false));
                start += len;
            }
            (Tensor::cat(&parts, 0).reshape([b, h, w]), z)
        })
    }

    /// LlamaGen's `quantize` output as its forward pass computes it: the straight-through
    /// `z + (z_q - z)` of the normalised latents and code vectors (equal to the code vectors up to
    /// float rounding), channel-first, with the indices.
    pub fn quantize_straight_through(&self, pre_quant: &Tensor) -> (Tensor, Tensor) {
        let (indices, z) = self.lookup(pre_quant);
        let quant = tch::no_grad(|| {
            let z_q = self
                .normalized_codebook()
                .index_select(0, &indices.flatten(0, -1))
                .view_as(&z);
            // A permuted (channels-last) view, as LlamaGen's einsum leaves it: convolutions then
            // keep that memory format, which changes their rounding.
            (&z + (z_q - &z)).permute([0, 3, 1, 2])
        });
        (indices, quant)
    }

    /// Token indices (i64 [B, h, w]) of f32 NCHW images in [-1, 1].
    pub fn encode(&self, images: &Tensor) -> Tensor {
        self.quantize(&self.pre_quant(images))
    }

    /// The normalised code vectors of `indices` [B, h, w], channel-first [B, embed_dim, h, w].
    pub fn codes_to_quant(&self, indices: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let codebook = self.normalized_codebook();
            let idx = indices.to_device(codebook.device()).to_kind(Kind::Int64);
            codebook
                .index_select(0, &idx.flatten(0, -1))
                .reshape([idx.size()[0], idx.size()[1], idx.size()[2], -1])
                .permute([0, 3, 1, 2])
                .contiguous()
        })
    }

    /// `decoder(post_quant_conv(quant))`, f32 NCHW.
    pub fn decode(&self, quant: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let q = quant.to_device(self.device()).to_kind(self.kind());
            self.decoder
                .forward(&q.apply(&self.post_quant_conv))
                .to_kind(Kind::Float)
        })
    }

    /// Images (f32 NCHW, about [-1, 1]) from token indices (i64 [B, h, w]).
    pub fn decode_code(&self, indices: &Tensor) -> Tensor {
        self.decode(&self.codes_to_quant(indices))
    }

    /// Encodes and decodes as LlamaGen's forward pass (`vq_model(x)`) does: (indices [B, h, w],
    /// reconstruction f32 NCHW).
    pub fn reconstruct(&self, images: &Tensor) -> (Tensor, Tensor) {
        let (indices, quant) = self.quantize_straight_through(&self.pre_quant(images));
        let recon = self.decode(&quant);
        (indices, recon)
    }

    /// LlamaGen's training-time queue of recent indices (float, 65536 long), when the checkpoint
    /// carried it.
    pub fn codebook_used(&self) -> Option<Tensor> {
        self.codebook_used.as_ref().map(Tensor::shallow_clone)
    }

    /// LlamaGen's training-time usage figure: distinct entries in `codebook_used` over the codebook
    /// size.
    pub fn training_codebook_usage(&self) -> Option<f64> {
        let used = self.codebook_used.as_ref()?;
        let values = Vec::<f64>::try_from(
            used.to_device(Device::Cpu)
                .to_kind(Kind::Double)
                .flatten(0, -1),
        )
        .ok()?;
        let distinct: BTreeSet<i64> = values.iter().map(|v| *v as i64).collect();
        Some(distinct.len() as f64 / self.config.codebook_size as f64)
    }
}

/// u8 NHWC images to the tokenizer's input: f32 NCHW, x / 127.5 - 1.
pub fn images_to_input(images_nhwc_u8: &Tensor) -> Tensor {
    (images_nhwc_u8.to_kind(Kind::Float) / 127.5 - 1.0)
        .permute([0, 3, 1, 2])
        .contiguous()
}

/// Decoded images to pixels as LlamaGen writes them: clamp(127.5 x + 128, 0, 255) truncated to
/// u8, NHWC, on the CPU.
pub fn to_pixels(decoded_nchw: &Tensor) -> Tensor {
    (decoded_nchw.to_kind(Kind::Float) * 127.5 + 128.0)
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .to_device(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(config: &VqConfig) -> Vec<(String, Vec<i64>)> {
        super::super::variable_shapes(|p| VqModel::new(p, config))
    }

    #[test]
    fn configuration_is_inferred_back_from_shapes() {
        let small = VqConfig {
            ch: 32,
            ch_mult: vec![1, 2, 2, 4],
            z_channels: 16,
            codebook_size: 64,
            embed_dim: 4,
            num_res_blocks: 2,
        };
        for config in [small, VqConfig::vq_16()] {
            let got = VqConfig::infer(Path::new("x.pt"), &shapes(&config)).unwrap();
            assert_eq!(got, config);
        }
        assert_eq!(VqConfig::vq_16().downsample_factor(), 16);
    }

    #[test]
    fn wrong_inputs_are_named() {
        let config = VqConfig::vq_16();
        let mut s = shapes(&config);
        for (n, shape) in &mut s {
            if n == "quant_conv.weight" {
                shape[0] = 16;
            }
        }
        let e = VqConfig::infer(Path::new("doctored.pt"), &s).unwrap_err();
        assert!(matches!(e, VqError::CodebookMismatch { .. }), "{e}");
        assert!(e.to_string().contains("doctored.pt"));
        let gpt = vec![("tok_embeddings.weight".to_owned(), vec![1024, 64])];
        let e = VqConfig::infer(Path::new("gpt.pt"), &gpt).unwrap_err();
        assert!(e.to_string().contains("looks like a GPT checkpoint"), "{e}");
        let e = config.check_image_size("imgs.npz", 60, 64).unwrap_err();
        assert!(e.to_string().contains("multiples of 16"), "{e}");
    }

    #[test]
    fn random_model_round_trips_shapes() {
        tch::manual_seed(0);
        let config = VqConfig {
            ch: 32,
            ch_mult: vec![1, 2],
            z_channels: 8,
            codebook_size: 16,
            embed_dim: 4,
            num_res_blocks: 1,
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = VqModel::new(&vs.root(), &config);
        let images = Tensor::randint(256, [2, 8, 8, 3], (Kind::Uint8, Device::Cpu));
        let (indices, recon) = model.reconstruct(&images_to_input(&images));
        assert_eq!(indices.size(), [2, 4, 4]);
        assert_eq!(recon.size(), [2, 3, 8, 8]);
        assert_eq!(to_pixels(&recon).size(), [2, 8, 8, 3]);
    }
}
