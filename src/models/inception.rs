//! The FID Inception-V3 (the TF 2015-12-05 graph as pytorch-fid and torch-fidelity port it) in tch.
//!
//! Architecture of pytorch-fid's `fid_inception_v3`: torchvision's Inception3 with 1008 classes,
//! TF-style average pools that ignore padding in Mixed_5*, Mixed_6b-e and Mixed_7b, and a max pool
//! in Mixed_7c. Parameters carry torchvision's names (`Mixed_6d.branch1x1.conv.weight`, ...), so
//! the released `pt_inception-2015-12-05-6726825d.pth` loads unchanged.
//!
//! Per image it yields the three feature sets every metric needs, from one forward pass:
//! `pool` (2048, pool_3), `spatial` (2023: ADM's `mixed_6/conv`, the ReLU output of
//! `Mixed_6d.branch1x1`, first 7 channels, flattened in H, W, C order) and `logits`
//! (1008, unbiased: `pool @ fc.weightᵀ`, no bias).

use crate::choice::{choice_enum, Choice};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// Side of the square input the network expects.
pub const INPUT_SIZE: i64 = 299;
/// Width of the pool_3 features.
pub const POOL_DIM: i64 = 2048;
/// Width of ADM's spatial features (17 x 17 x 7).
pub const SPATIAL_DIM: i64 = 2023;
/// Number of logits (the 2015 graph's 1008 classes).
pub const LOGITS_DIM: i64 = 1008;
const SPATIAL_CHANNELS: i64 = 7;

choice_enum! {
    /// How images are resized and scaled before the network.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum Resize: "resize" {
        /// ADM evaluator / torch-fidelity: TF1 `ResizeBilinear` (align_corners=False, no
        /// half-pixel centres) to 299, then (x - 128) / 128. The numbers papers report.
        #[default]
        Adm => ("adm", "TF1 bilinear resize (the numbers papers report)"),
        /// pytorch-fid: x / 255, torch bilinear (half-pixel centres) to 299, then 2x - 1.
        PytorchFid => ("pytorch-fid", "pytorch-fid's preprocessing"),
    }
}

impl Resize {
    /// The name written in run records and feature-cache keys (`adm`, `pytorch-fid`).
    pub fn name(self) -> &'static str {
        self.choice_name()
    }
}

/// Features of one batch, all f32 on the model's device.
pub struct Features {
    /// `pool_3` activations [N, 2048].
    pub pool: Tensor,
    /// ADM's `mixed_6/conv` features [N, 2023] (7 channels of `Mixed_6d.branch1x1`, HWC order).
    pub spatial: Tensor,
    /// Unbiased logits [N, 1008] (`pool @ fc.weightᵀ`).
    pub logits: Tensor,
}

/// Convolution without bias, batch norm (eps 0.001), ReLU.
#[derive(Debug)]
struct BasicConv {
    conv: nn::Conv<[i64; 2]>,
    bn: nn::BatchNorm,
}

impl BasicConv {
    fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: [i64; 2],
        stride: i64,
        padding: [i64; 2],
    ) -> Self {
        let config = nn::ConvConfigND {
            stride: [stride, stride],
            padding,
            bias: false,
            ..Default::default()
        };
        BasicConv {
            conv: nn::conv(&p / "conv", c_in, c_out, kernel, config),
            bn: nn::batch_norm2d(
                &p / "bn",
                c_out,
                nn::BatchNormConfig {
                    eps: 0.001,
                    ..Default::default()
                },
            ),
        }
    }

    fn square(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> Self {
        Self::new(p, c_in, c_out, [k, k], stride, [padding, padding])
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.bn.forward_t(&x.apply(&self.conv), false).relu()
    }
}

fn tf_avg_pool(x: &Tensor) -> Tensor {
    // TF's average pool leaves padded zeros out of the average.
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>)
}

fn max_pool_stride2(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

#[derive(Debug)]
struct InceptionA {
    b1: BasicConv,
    b5_1: BasicConv,
    b5_2: BasicConv,
    b3_1: BasicConv,
    b3_2: BasicConv,
    b3_3: BasicConv,
    pool: BasicConv,
}

impl InceptionA {
    fn new(p: nn::Path, c_in: i64, pool_features: i64) -> Self {
        InceptionA {
            b1: BasicConv::square(&p / "branch1x1", c_in, 64, 1, 1, 0),
            b5_1: BasicConv::square(&p / "branch5x5_1", c_in, 48, 1, 1, 0),
            b5_2: BasicConv::square(&p / "branch5x5_2", 48, 64, 5, 1, 2),
            b3_1: BasicConv::square(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
            b3_2: BasicConv::square(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
            b3_3: BasicConv::square(&p / "branch3x3dbl_3", 96, 96, 3, 1, 1),
            pool: BasicConv::square(&p / "branch_pool", c_in, pool_features, 1, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.b1.forward(x),
                self.b5_2.forward(&self.b5_1.forward(x)),
                self.b3_3.forward(&self.b3_2.forward(&self.b3_1.forward(x))),
                self.pool.forward(&tf_avg_pool(x)),
            ],
            1,
        )
    }
}

#[derive(Debug)]
struct InceptionB {
    b3: BasicConv,
    b3d_1: BasicConv,
    b3d_2: BasicConv,
    b3d_3: BasicConv,
}

impl InceptionB {
    fn new(p: nn::Path, c_in: i64) -> Self {
        InceptionB {
            b3: BasicConv::square(&p / "branch3x3", c_in, 384, 3, 2, 0),
            b3d_1: BasicConv::square(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
            b3d_2: BasicConv::square(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
            b3d_3: BasicConv::square(&p / "branch3x3dbl_3", 96, 96, 3, 2, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.b3.forward(x),
                self.b3d_3
                    .forward(&self.b3d_2.forward(&self.b3d_1.forward(x))),
                max_pool_stride2(x),
            ],
            1,
        )
    }
}

#[derive(Debug)]
struct InceptionC {
    b1: BasicConv,
    b7: [BasicConv; 3],
    b7d: [BasicConv; 5],
    pool: BasicConv,
}

impl InceptionC {
    fn new(p: nn::Path, c_in: i64, c7: i64) -> Self {
        let row = |name: &str, a: i64, b: i64| BasicConv::new(&p / name, a, b, [1, 7], 1, [0, 3]);
        let col = |name: &str, a: i64, b: i64| BasicConv::new(&p / name, a, b, [7, 1], 1, [3, 0]);
        InceptionC {
            b1: BasicConv::square(&p / "branch1x1", c_in, 192, 1, 1, 0),
            b7: [
                BasicConv::square(&p / "branch7x7_1", c_in, c7, 1, 1, 0),
                row("branch7x7_2", c7, c7),
                col("branch7x7_3", c7, 192),
            ],
            b7d: [
                BasicConv::square(&p / "branch7x7dbl_1", c_in, c7, 1, 1, 0),
                col("branch7x7dbl_2", c7, c7),
                row("branch7x7dbl_3", c7, c7),
                col("branch7x7dbl_4", c7, c7),
                row("branch7x7dbl_5", c7, 192),
            ],
            pool: BasicConv::square(&p / "branch_pool", c_in, 192, 1, 1, 0),
        }
    }

    /// The block's output and the ReLU output of its `branch1x1` (ADM's spatial features for Mixed_6d).
    fn forward_with_branch1x1(&self, x: &Tensor) -> (Tensor, Tensor) {
        let b1 = self.b1.forward(x);
        let chain =
            |convs: &[BasicConv]| convs.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        let out = Tensor::cat(
            &[
                b1.shallow_clone(),
                chain(&self.b7),
                chain(&self.b7d),
                self.pool.forward(&tf_avg_pool(x)),
            ],
            1,
        );
        (out, b1)
    }
}

#[derive(Debug)]
struct InceptionD {
    b3_1: BasicConv,
    b3_2: BasicConv,
    b7: [BasicConv; 4],
}

impl InceptionD {
    fn new(p: nn::Path, c_in: i64) -> Self {
        InceptionD {
            b3_1: BasicConv::square(&p / "branch3x3_1", c_in, 192, 1, 1, 0),
            b3_2: BasicConv::square(&p / "branch3x3_2", 192, 320, 3, 2, 0),
            b7: [
                BasicConv::square(&p / "branch7x7x3_1", c_in, 192, 1, 1, 0),
                BasicConv::new(&p / "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
                BasicConv::new(&p / "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
                BasicConv::square(&p / "branch7x7x3_4", 192, 192, 3, 2, 0),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b7 = self.b7.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        Tensor::cat(
            &[
                self.b3_2.forward(&self.b3_1.forward(x)),
                b7,
                max_pool_stride2(x),
            ],
            1,
        )
    }
}

#[derive(Debug)]
struct InceptionE {
    b1: BasicConv,
    b3_1: BasicConv,
    b3_2a: BasicConv,
    b3_2b: BasicConv,
    b3d_1: BasicConv,
    b3d_2: BasicConv,
    b3d_3a: BasicConv,
    b3d_3b: BasicConv,
    pool: BasicConv,
    /// Mixed_7c (FIDInceptionE_2) pools with max, Mixed_7b (FIDInceptionE_1) with a TF average.
    max_pool: bool,
}

impl InceptionE {
    fn new(p: nn::Path, c_in: i64, max_pool: bool) -> Self {
        let row = |name: &str, a: i64, b: i64| BasicConv::new(&p / name, a, b, [1, 3], 1, [0, 1]);
        let col = |name: &str, a: i64, b: i64| BasicConv::new(&p / name, a, b, [3, 1], 1, [1, 0]);
        InceptionE {
            b1: BasicConv::square(&p / "branch1x1", c_in, 320, 1, 1, 0),
            b3_1: BasicConv::square(&p / "branch3x3_1", c_in, 384, 1, 1, 0),
            b3_2a: row("branch3x3_2a", 384, 384),
            b3_2b: col("branch3x3_2b", 384, 384),
            b3d_1: BasicConv::square(&p / "branch3x3dbl_1", c_in, 448, 1, 1, 0),
            b3d_2: BasicConv::square(&p / "branch3x3dbl_2", 448, 384, 3, 1, 1),
            b3d_3a: row("branch3x3dbl_3a", 384, 384),
            b3d_3b: col("branch3x3dbl_3b", 384, 384),
            pool: BasicConv::square(&p / "branch_pool", c_in, 192, 1, 1, 0),
            max_pool,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b3 = self.b3_1.forward(x);
        let b3 = Tensor::cat(&[self.b3_2a.forward(&b3), self.b3_2b.forward(&b3)], 1);
        let b3d = self.b3d_2.forward(&self.b3d_1.forward(x));
        let b3d = Tensor::cat(&[self.b3d_3a.forward(&b3d), self.b3d_3b.forward(&b3d)], 1);
        let pooled = if self.max_pool {
            x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
        } else {
            tf_avg_pool(x)
        };
        Tensor::cat(
            &[self.b1.forward(x), b3, b3d, self.pool.forward(&pooled)],
            1,
        )
    }
}

/// The FID Inception-V3 network.
#[derive(Debug)]
pub struct InceptionV3 {
    stem: [BasicConv; 5],
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6b: InceptionC,
    mixed_6c: InceptionC,
    mixed_6d: InceptionC,
    mixed_6e: InceptionC,
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
    fc: nn::Linear,
    /// The TF1 resize's index and weight tables per input size and device, built on first use:
    /// every batch of a run has the same size, and building them costs host work and uploads.
    resize_tables: Mutex<HashMap<ResizeKey, ResizeTables>>,
}

/// Input height and width, output height and width, and the device of a resize.
type ResizeKey = (i64, i64, i64, i64, Device);

impl InceptionV3 {
    /// Creates the network's variables under `p` with torchvision's names.
    pub fn new(p: &nn::Path) -> Self {
        InceptionV3 {
            stem: [
                BasicConv::square(p / "Conv2d_1a_3x3", 3, 32, 3, 2, 0),
                BasicConv::square(p / "Conv2d_2a_3x3", 32, 32, 3, 1, 0),
                BasicConv::square(p / "Conv2d_2b_3x3", 32, 64, 3, 1, 1),
                BasicConv::square(p / "Conv2d_3b_1x1", 64, 80, 1, 1, 0),
                BasicConv::square(p / "Conv2d_4a_3x3", 80, 192, 3, 1, 0),
            ],
            mixed_5: [
                InceptionA::new(p / "Mixed_5b", 192, 32),
                InceptionA::new(p / "Mixed_5c", 256, 64),
                InceptionA::new(p / "Mixed_5d", 288, 64),
            ],
            mixed_6a: InceptionB::new(p / "Mixed_6a", 288),
            mixed_6b: InceptionC::new(p / "Mixed_6b", 768, 128),
            mixed_6c: InceptionC::new(p / "Mixed_6c", 768, 160),
            mixed_6d: InceptionC::new(p / "Mixed_6d", 768, 160),
            mixed_6e: InceptionC::new(p / "Mixed_6e", 768, 192),
            mixed_7a: InceptionD::new(p / "Mixed_7a", 768),
            mixed_7b: InceptionE::new(p / "Mixed_7b", 1280, false),
            mixed_7c: InceptionE::new(p / "Mixed_7c", 2048, true),
            fc: nn::linear(p / "fc", POOL_DIM, LOGITS_DIM, Default::default()),
            resize_tables: Mutex::new(HashMap::new()),
        }
    }

    /// Features of a batch of u8 images in NCHW layout (any size), preprocessed by `resize`.
    pub fn features(&self, images_nchw_u8: &Tensor, resize: Resize) -> Features {
        let x = self.preprocess(images_nchw_u8, resize);
        let [c1, c2, c3, c4, c5] = &self.stem;
        let x = max_pool_stride2(&c3.forward(&c2.forward(&c1.forward(&x))));
        let x = max_pool_stride2(&c5.forward(&c4.forward(&x)));
        let x = self.mixed_5.iter().fold(x, |h, block| block.forward(&h));
        let x = self.mixed_6a.forward(&x);
        let (x, _) = self.mixed_6b.forward_with_branch1x1(&x);
        let (x, _) = self.mixed_6c.forward_with_branch1x1(&x);
        let (x, branch1x1) = self.mixed_6d.forward_with_branch1x1(&x);
        let (x, _) = self.mixed_6e.forward_with_branch1x1(&x);
        let x = self
            .mixed_7c
            .forward(&self.mixed_7b.forward(&self.mixed_7a.forward(&x)));
        let pool = x.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let logits = pool.matmul(&self.fc.ws.tr());
        let spatial = branch1x1
            .narrow(1, 0, SPATIAL_CHANNELS)
            .permute([0, 2, 3, 1])
            .flatten(1, -1);
        Features {
            pool,
            spatial,
            logits,
        }
    }
}

impl InceptionV3 {
    /// Resizes u8 NCHW images to 299x299 and scales them as `mode` prescribes.
    pub fn preprocess(&self, images_nchw_u8: &Tensor, mode: Resize) -> Tensor {
        let x = images_nchw_u8.to_kind(Kind::Float);
        match mode {
            Resize::Adm => (self.tf1_resize_bilinear(&x, INPUT_SIZE, INPUT_SIZE) - 128.0) / 128.0,
            Resize::PytorchFid => {
                let x = x / 255.0;
                let x = if x.size()[2..] == [INPUT_SIZE, INPUT_SIZE] {
                    x
                } else {
                    x.upsample_bilinear2d([INPUT_SIZE, INPUT_SIZE], false, None, None)
                };
                x * 2.0 - 1.0
            }
        }
    }

    /// [`ResizeTables::apply`] with the tables of `x`'s size and device, built once.
    fn tf1_resize_bilinear(&self, x: &Tensor, out_h: i64, out_w: i64) -> Tensor {
        let size = x.size();
        let key = (size[2], size[3], out_h, out_w, x.device());
        let tables = {
            let mut cache = self
                .resize_tables
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            cache
                .entry(key)
                .or_insert_with(|| ResizeTables::new(key.0, key.1, out_h, out_w, key.4))
                .shallow_clone()
        };
        tables.apply(x)
    }
}

/// TensorFlow 1.x `ResizeBilinear` with align_corners=False from one input size to one output
/// size: source coordinate `dst * in/out` (no half-pixel offset), computed in f32 as TF does,
/// clamped at the far edge; per axis, the lower and upper source rows (columns) and the weight of
/// the upper one.
#[derive(Debug)]
struct ResizeTables {
    y_lo: Tensor,
    y_hi: Tensor,
    dy: Tensor,
    x_lo: Tensor,
    x_hi: Tensor,
    dx: Tensor,
}

impl ResizeTables {
    /// The tables from `in_h` x `in_w` to `out_h` x `out_w` on `device`.
    fn new(in_h: i64, in_w: i64, out_h: i64, out_w: i64, device: Device) -> Self {
        let axis = |in_len: i64, out_len: i64| {
            let scale = (in_len as f64 / out_len as f64) as f32;
            let mut lo = Vec::with_capacity(out_len as usize);
            let mut hi = Vec::with_capacity(out_len as usize);
            let mut frac = Vec::with_capacity(out_len as usize);
            for i in 0..out_len {
                let src = i as f32 * scale;
                let l = src.floor() as i64;
                lo.push(l.min(in_len - 1));
                hi.push((l + 1).min(in_len - 1));
                frac.push(src - l as f32);
            }
            (
                Tensor::from_slice(&lo).to_device(device),
                Tensor::from_slice(&hi).to_device(device),
                Tensor::from_slice(&frac).to_device(device),
            )
        };
        let (y_lo, y_hi, dy) = axis(in_h, out_h);
        let (x_lo, x_hi, dx) = axis(in_w, out_w);
        ResizeTables {
            y_lo,
            y_hi,
            dy: dy.view([1, 1, out_h, 1]),
            x_lo,
            x_hi,
            dx: dx.view([1, 1, 1, out_w]),
        }
    }

    /// Handles sharing the tables' storage.
    fn shallow_clone(&self) -> Self {
        ResizeTables {
            y_lo: self.y_lo.shallow_clone(),
            y_hi: self.y_hi.shallow_clone(),
            dy: self.dy.shallow_clone(),
            x_lo: self.x_lo.shallow_clone(),
            x_hi: self.x_hi.shallow_clone(),
            dx: self.dx.shallow_clone(),
        }
    }

    /// Resizes f32 NCHW images of the tables' input size (on their device).
    fn apply(&self, x: &Tensor) -> Tensor {
        let top = x.index_select(2, &self.y_lo);
        let bottom = x.index_select(2, &self.y_hi);
        let lerp_x = |rows: &Tensor| {
            let left = rows.index_select(3, &self.x_lo);
            let right = rows.index_select(3, &self.x_hi);
            &left + (&right - &left) * &self.dx
        };
        let top = lerp_x(&top);
        let bottom = lerp_x(&bottom);
        &top + (&bottom - &top) * &self.dy
    }
}

/// Creates the network on `device` and fills it from a checkpoint (`torch.save` file of any
/// format, or safetensors) holding torchvision-named weights, such as pytorch-fid's release.
pub fn load(
    path: &std::path::Path,
    device: tch::Device,
) -> Result<(nn::VarStore, InceptionV3), crate::checkpoint::CheckpointError> {
    let checkpoint = crate::checkpoint::Checkpoint::open(path)?;
    let mut tensors = checkpoint.state_dict(false)?;
    // BatchNorm step counters exist in torchvision state dicts but play no part in inference.
    tensors.retain(|(name, _)| !name.ends_with("num_batches_tracked"));
    let mut vs = nn::VarStore::new(device);
    let model = InceptionV3::new(&vs.root());
    crate::checkpoint::load_into(&mut vs, &tensors, path, &Default::default())?;
    Ok((vs, model))
}
