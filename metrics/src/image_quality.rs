//! Reconstruction quality of a tokenizer: PSNR and SSIM between original and reconstructed u8
//! images, as scikit-image 0.25 computes them, image by image, averaged over the set.
//!
//! Images are `(N, H, W, C)` u8 arrays (any memory layout); per-image figures are computed in
//! parallel over images with rayon and returned alongside their mean.
//!
//! # SSIM variants ([`SsimMode`])
//! - [`SsimMode::Gaussian`] (the default) is Wang et al. (2004) as scikit-image spells it:
//!   `structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//!   data_range=255, channel_axis=-1)` — an 11×11 Gaussian window (truncate 3.5), population
//!   covariance, on the images converted to float64.
//! - [`SsimMode::Uniform`] is scikit-image's own default window: `structural_similarity(a, b,
//!   data_range=255, channel_axis=-1)` — a 7×7 uniform window with sample covariance (N−1).
//! - [`SsimMode::LlamagenCompat`] reproduces LlamaGen's tokenizer evaluation
//!   (`tokenizer/*/reconstruction_*_ddp.py`):
//!   `structural_similarity(rgb_restored, rgb_gt, multichannel=True, data_range=2.0,
//!   channel_axis=-1)` where `rgb_restored = recon.astype(float32) / 255` and `rgb_gt` is the
//!   original after torchvision's `ToTensor` + `Normalize(0.5, 0.5)` and `(x + 1) / 2`, both in
//!   [0, 1] and float32. Everything else is scikit-image's default, so the window is the uniform
//!   7×7 one with sample covariance (not the Gaussian of Wang et al.), `multichannel` is ignored,
//!   and `data_range=2.0` on [0, 1] data makes C1 and C2 four times what they should be, which
//!   raises SSIM; that is how the paper's SSIM of 0.675 came out (LlamaGen issue #72). Because the
//!   inputs are float32, scikit-image computes in float32; this mode follows the same float32
//!   arithmetic step by step, so it gives LlamaGen's per-image numbers to float32 rounding.
//!
//! Every variant computes each channel separately and averages the channels, and averages the SSIM
//! map only over pixels whose window lies inside the image (scikit-image crops `(win_size-1)/2` on
//! each side); there the filters' border mode never matters. Images smaller than the window in
//! height or width are an error, as in scikit-image.
//!
//! # PSNR
//! [`psnr`] is `peak_signal_noise_ratio(a, b, data_range=255)` per image. An identical pair has
//! infinite PSNR (as in scikit-image); such images keep `f64::INFINITY` in `per_image` but are
//! left out of the mean and counted in [`PsnrReport::identical`], so one perfect reconstruction
//! does not turn the set's mean into infinity.

use ndarray::{ArrayView3, ArrayView4, Axis};
use rayon::prelude::*;

use crate::error::{MetricsError, Result};

/// Which SSIM definition to compute; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SsimMode {
    /// 11×11 Gaussian window (σ = 1.5), population covariance, data range 255 (Wang et al.).
    #[default]
    Gaussian,
    /// 7×7 uniform window, sample covariance, data range 255 (scikit-image's default window).
    Uniform,
    /// LlamaGen's call: 7×7 uniform window, sample covariance, data in [0, 1] as float32,
    /// `data_range = 2.0`.
    LlamagenCompat,
}

impl SsimMode {
    /// Side of the square window, which is also the smallest image height and width accepted.
    pub fn window_size(self) -> usize {
        match self {
            SsimMode::Gaussian => 2 * GAUSS_RADIUS + 1,
            SsimMode::Uniform | SsimMode::LlamagenCompat => 2 * UNIFORM_RADIUS + 1,
        }
    }
}

/// PSNR of each image pair and their mean.
#[derive(Debug, Clone, PartialEq)]
pub struct PsnrReport {
    /// PSNR in dB per image, in input order; `f64::INFINITY` where the pair is identical.
    pub per_image: Vec<f64>,
    /// Mean over the images with finite PSNR; `None` when every pair is identical.
    pub mean: Option<f64>,
    /// How many pairs are identical (infinite PSNR) and left out of `mean`.
    pub identical: usize,
}

/// SSIM of each image pair and their mean.
#[derive(Debug, Clone, PartialEq)]
pub struct SsimReport {
    pub mode: SsimMode,
    /// SSIM per image (mean over channels), in input order.
    pub per_image: Vec<f64>,
    pub mean: f64,
}

const GAUSS_RADIUS: usize = 5;
const GAUSS_SIGMA: f64 = 1.5;
const UNIFORM_RADIUS: usize = 3;
const K1: f64 = 0.01;
const K2: f64 = 0.03;

/// PSNR (data range 255) of every reconstruction against its original.
pub fn psnr(
    originals: ArrayView4<'_, u8>,
    reconstructions: ArrayView4<'_, u8>,
) -> Result<PsnrReport> {
    check_sets(&originals, &reconstructions)?;
    let (_, h, w, c) = originals.dim();
    if h * w * c == 0 {
        return Err(MetricsError::InvalidArgument(format!(
            "PSNR of empty images (shape {:?})",
            originals.shape()
        )));
    }
    let per_image: Vec<f64> = (0..originals.len_of(Axis(0)))
        .into_par_iter()
        .map(|i| {
            psnr_pair(
                originals.index_axis(Axis(0), i),
                reconstructions.index_axis(Axis(0), i),
            )
        })
        .collect();
    let finite: Vec<f64> = per_image
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let identical = per_image.len() - finite.len();
    let mean = (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64);
    Ok(PsnrReport {
        per_image,
        mean,
        identical,
    })
}

/// PSNR (data range 255) of one `(H, W, C)` image pair; `f64::INFINITY` when they are identical.
pub fn psnr_image(original: ArrayView3<'_, u8>, reconstruction: ArrayView3<'_, u8>) -> Result<f64> {
    check_shapes(original.shape(), reconstruction.shape())?;
    if original.is_empty() {
        return Err(MetricsError::InvalidArgument(format!(
            "PSNR of an empty image (shape {:?})",
            original.shape()
        )));
    }
    Ok(psnr_pair(original, reconstruction))
}

fn psnr_pair(a: ArrayView3<'_, u8>, b: ArrayView3<'_, u8>) -> f64 {
    let a = a.as_standard_layout();
    let b = b.as_standard_layout();
    let (a, b) = (a.as_slice().unwrap(), b.as_slice().unwrap());
    // Squared differences of u8 are exact integers; u32 partial sums over 32768 elements cannot
    // overflow (32768 * 255^2 < 2^32), so the total is exact, like numpy's float64 sum here.
    let sse: u64 = a
        .chunks(32768)
        .zip(b.chunks(32768))
        .map(|(ca, cb)| {
            ca.iter()
                .zip(cb)
                .map(|(&p, &q)| {
                    let d = p.abs_diff(q) as u32;
                    d * d
                })
                .sum::<u32>() as u64
        })
        .sum();
    if sse == 0 {
        return f64::INFINITY;
    }
    let mse = sse as f64 / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// SSIM of every reconstruction against its original.
pub fn ssim(
    originals: ArrayView4<'_, u8>,
    reconstructions: ArrayView4<'_, u8>,
    mode: SsimMode,
) -> Result<SsimReport> {
    check_sets(&originals, &reconstructions)?;
    let (_, h, w, c) = originals.dim();
    check_ssim_size(h, w, c, mode)?;
    let kernel = gaussian_kernel();
    let per_image: Vec<f64> = (0..originals.len_of(Axis(0)))
        .into_par_iter()
        .map_init(Scratch::default, |scratch, i| {
            ssim_pair(
                originals.index_axis(Axis(0), i),
                reconstructions.index_axis(Axis(0), i),
                mode,
                &kernel,
                scratch,
            )
        })
        .collect();
    let mean = per_image.iter().sum::<f64>() / per_image.len() as f64;
    Ok(SsimReport {
        mode,
        per_image,
        mean,
    })
}

/// SSIM of one `(H, W, C)` image pair.
pub fn ssim_image(
    original: ArrayView3<'_, u8>,
    reconstruction: ArrayView3<'_, u8>,
    mode: SsimMode,
) -> Result<f64> {
    check_shapes(original.shape(), reconstruction.shape())?;
    let (h, w, c) = original.dim();
    check_ssim_size(h, w, c, mode)?;
    Ok(ssim_pair(
        original,
        reconstruction,
        mode,
        &gaussian_kernel(),
        &mut Scratch::default(),
    ))
}

fn check_shapes(left: &[usize], right: &[usize]) -> Result<()> {
    if left != right {
        return Err(MetricsError::ShapeMismatch {
            left: left.to_vec(),
            right: right.to_vec(),
        });
    }
    Ok(())
}

fn check_sets(a: &ArrayView4<'_, u8>, b: &ArrayView4<'_, u8>) -> Result<()> {
    check_shapes(a.shape(), b.shape())?;
    if a.len_of(Axis(0)) == 0 {
        return Err(MetricsError::TooFewSamples {
            what: "image quality",
            need: 1,
            got: 0,
        });
    }
    Ok(())
}

fn check_ssim_size(h: usize, w: usize, c: usize, mode: SsimMode) -> Result<()> {
    let win = mode.window_size();
    if h < win || w < win || c == 0 {
        return Err(MetricsError::InvalidArgument(format!(
            "SSIM ({mode:?}) needs images of at least {win}x{win} pixels and one channel, got {h}x{w}x{c}"
        )));
    }
    Ok(())
}

/// scipy's `_gaussian_kernel1d(1.5, 0, 5)`: center weight first, then the weight at distance k.
fn gaussian_kernel() -> [f64; GAUSS_RADIUS + 1] {
    let r = GAUSS_RADIUS as i32;
    let phi = |x: i32| (-0.5 / (GAUSS_SIGMA * GAUSS_SIGMA) * f64::from(x * x)).exp();
    let total: f64 = (-r..=r).map(phi).sum();
    std::array::from_fn(|k| phi(k as i32) / total)
}

/// Per-thread buffers, reused across images so that no pixel loop allocates.
#[derive(Default)]
struct Scratch {
    /// The two images as f64 (in LlamaGen mode: their float32 values), row-major `H x (W*C)`.
    x: Vec<f64>,
    y: Vec<f64>,
    /// Five rows (x, y, xx, yy, xy) after the vertical pass, each `W*C` long; for the uniform
    /// window these are running column sums.
    vert: Vec<f64>,
    /// LlamaGen mode: the vertical means rounded to float32, as scipy stores them.
    vert32: Vec<f64>,
    /// The same five rows after the horizontal pass, cropped to `(W - 2r) * C` columns.
    horiz: Vec<f64>,
    /// Per cropped column: SSIM summed over the rows done so far.
    acc: Vec<f64>,
}

/// One image pair in row-major `(H, W, C)` order.
#[derive(Clone, Copy)]
struct Pair<'a> {
    a: &'a [u8],
    b: &'a [u8],
    h: usize,
    w: usize,
    c: usize,
}

impl Scratch {
    fn prepare(&mut self, p: Pair<'_>, lut_a: &[f64; 256], lut_b: &[f64; 256], radius: usize) {
        let l = p.w * p.c;
        let lo = (p.w - 2 * radius) * p.c;
        self.x.clear();
        self.x.extend(p.a.iter().map(|&v| lut_a[v as usize]));
        self.y.clear();
        self.y.extend(p.b.iter().map(|&v| lut_b[v as usize]));
        self.vert.clear();
        self.vert.resize(5 * l, 0.0);
        self.vert32.resize(5 * l, 0.0);
        self.horiz.resize(5 * lo, 0.0);
        self.acc.clear();
        self.acc.resize(lo, 0.0);
    }
}

fn ssim_pair(
    a: ArrayView3<'_, u8>,
    b: ArrayView3<'_, u8>,
    mode: SsimMode,
    kernel: &[f64; GAUSS_RADIUS + 1],
    s: &mut Scratch,
) -> f64 {
    let (h, w, c) = a.dim();
    let a = a.as_standard_layout();
    let b = b.as_standard_layout();
    let pair = Pair {
        a: a.as_slice().unwrap(),
        b: b.as_slice().unwrap(),
        h,
        w,
        c,
    };
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU has AVX2, checked just above.
            return unsafe { ssim_slices_avx2(pair, mode, kernel, s) };
        }
    }
    ssim_slices(pair, mode, kernel, s)
}

/// [`ssim_slices`] compiled for AVX2 (4-wide float64) where the CPU has it; the baseline x86-64
/// target only vectorizes 2-wide. Both give the same bits: Rust neither fuses nor reorders
/// floating-point operations, and all vector lanes are independent pixels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn ssim_slices_avx2(
    pair: Pair<'_>,
    mode: SsimMode,
    kernel: &[f64; GAUSS_RADIUS + 1],
    s: &mut Scratch,
) -> f64 {
    ssim_slices(pair, mode, kernel, s)
}

#[inline(always)]
fn ssim_slices(
    p: Pair<'_>,
    mode: SsimMode,
    kernel: &[f64; GAUSS_RADIUS + 1],
    s: &mut Scratch,
) -> f64 {
    let identity: [f64; 256] = std::array::from_fn(|v| v as f64);
    match mode {
        SsimMode::Gaussian => {
            s.prepare(p, &identity, &identity, GAUSS_RADIUS);
            match p.c {
                1 => gaussian_sums::<1>(p, kernel, s),
                3 => gaussian_sums::<3>(p, kernel, s),
                4 => gaussian_sums::<4>(p, kernel, s),
                _ => gaussian_sums::<0>(p, kernel, s),
            }
            let count = ((p.h - 2 * GAUSS_RADIUS) * (p.w - 2 * GAUSS_RADIUS)) as f64;
            mean_over_channels_f64(fold_channels(&s.acc, p.c).iter().map(|v| v / count))
        }
        SsimMode::Uniform => {
            s.prepare(p, &identity, &identity, UNIFORM_RADIUS);
            let count = uniform_windows::<false>(p, s);
            mean_over_channels_f64(fold_channels(&s.acc, p.c).iter().map(|v| v / count))
        }
        SsimMode::LlamagenCompat => {
            s.prepare(
                p,
                &llamagen_gt_lut(),
                &llamagen_restored_lut(),
                UNIFORM_RADIUS,
            );
            let count = uniform_windows::<true>(p, s);
            // scikit-image stores each channel's mean in a float32 array and numpy averages that
            // in float32, left to right.
            let mut total = 0.0f32;
            for v in fold_channels(&s.acc, p.c) {
                total += (v / count) as f32;
            }
            f64::from(total / p.c as f32)
        }
    }
}

/// The uniform-window sums of every channel ([`uniform_sums`], specialised for 1, 3 and 4
/// channels) into `s.acc`; returns the number of windows each channel's sum covers.
#[inline(always)]
fn uniform_windows<const F32: bool>(p: Pair<'_>, s: &mut Scratch) -> f64 {
    match p.c {
        1 => uniform_sums::<F32, 1>(p, s),
        3 => uniform_sums::<F32, 3>(p, s),
        4 => uniform_sums::<F32, 4>(p, s),
        _ => uniform_sums::<F32, 0>(p, s),
    }
    ((p.h - 2 * UNIFORM_RADIUS) * (p.w - 2 * UNIFORM_RADIUS)) as f64
}

/// numpy's mean of a short float64 array: left-to-right sum, then one division.
fn mean_over_channels_f64(values: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = values.len() as f64;
    values.fold(0.0, |acc, v| acc + v) / n
}

/// LlamaGen's reconstruction: `sample.astype(np.float32) / 255.`
fn llamagen_restored_lut() -> [f64; 256] {
    std::array::from_fn(|v| f64::from(v as f32 / 255.0f32))
}

/// LlamaGen's ground truth: `ToTensor` (u8 / 255 in float32), `Normalize(0.5, 0.5)`, then
/// `(x + 1.0) / 2.0`, all in float32. For about a quarter of the 256 values the round trip does
/// not come back to `u / 255` exactly.
fn llamagen_gt_lut() -> [f64; 256] {
    std::array::from_fn(|v| {
        let t = v as f32 / 255.0f32;
        let t = (t - 0.5f32) / 0.5f32;
        f64::from((t + 1.0f32) / 2.0f32)
    })
}

/// Splits a buffer into its five rows (x, y, xx, yy, xy) of length `l`.
#[inline(always)]
fn five_rows(buf: &mut [f64], l: usize) -> [&mut [f64]; 5] {
    let (vx, rest) = buf.split_at_mut(l);
    let (vy, rest) = rest.split_at_mut(l);
    let (vxx, rest) = rest.split_at_mut(l);
    let (vyy, vxy) = rest.split_at_mut(l);
    [vx, vy, vxx, vyy, &mut vxy[..l]]
}

/// SSIM summed over each cropped column of `s.acc`, 11×11 Gaussian window, float64.
///
/// `C` is the channel count when known at compile time (0: use `p.c`), so that the horizontal
/// taps, `C` apart in the interleaved row, are constant offsets.
#[inline(always)]
fn gaussian_sums<const C: usize>(p: Pair<'_>, wt: &[f64; GAUSS_RADIUS + 1], s: &mut Scratch) {
    const R: usize = GAUSS_RADIUS;
    let c = if C == 0 { p.c } else { C };
    let l = p.w * c;
    let lo = s.acc.len();
    for i in R..p.h - R {
        // scipy filters axis 0 (rows) first, then axis 1.
        gaussian_vertical(&s.x, &s.y, i, l, wt, &mut s.vert);
        for q in 0..5 {
            gaussian_horizontal::<0>(&s.vert[q * l..][..l], c, wt, &mut s.horiz[q * lo..][..lo]);
        }
        let [ux, uy, uxx, uyy, uxy] = five_rows(&mut s.horiz, lo);
        ssim_row_gaussian(ux, uy, uxx, uyy, uxy, &mut s.acc);
    }
}

/// Adds the SSIM of one cropped row to `acc` from the Gaussian-weighted means, data range 255.
#[inline(always)]
fn ssim_row_gaussian(
    ux: &[f64],
    uy: &[f64],
    uxx: &[f64],
    uyy: &[f64],
    uxy: &[f64],
    acc: &mut [f64],
) {
    let c1 = (K1 * 255.0) * (K1 * 255.0);
    let c2 = (K2 * 255.0) * (K2 * 255.0);
    let lo = acc.len();
    let (ux, uy, uxx, uyy, uxy) = (&ux[..lo], &uy[..lo], &uxx[..lo], &uyy[..lo], &uxy[..lo]);
    for (j, a) in acc.iter_mut().enumerate() {
        let (mx, my) = (ux[j], uy[j]);
        let vx = uxx[j] - mx * mx;
        let vy = uyy[j] - my * my;
        let vxy = uxy[j] - mx * my;
        let num = (2.0 * mx * my + c1) * (2.0 * vxy + c2);
        let den = (mx * mx + my * my + c1) * (vx + vy + c2);
        *a += num / den;
    }
}

/// Horizontal Gaussian pass of one row over the cropped columns: taps `c` apart (interleaved
/// channels); `C` as in [`gaussian_sums`]. Like scipy's `correlate1d` for a symmetric kernel: the
/// center tap, then the pairs from the outermost inwards.
#[inline(always)]
fn gaussian_horizontal<const C: usize>(
    v: &[f64],
    c: usize,
    wt: &[f64; GAUSS_RADIUS + 1],
    out: &mut [f64],
) {
    const R: usize = GAUSS_RADIUS;
    let c = if C == 0 { c } else { C };
    let lo = out.len();
    let taps: [&[f64]; 2 * R + 1] = std::array::from_fn(|t| &v[t * c..][..lo]);
    for (j, o) in out.iter_mut().enumerate() {
        let mut t = taps[R][j] * wt[0];
        for k in (1..R + 1).rev() {
            t += (taps[R - k][j] + taps[R + k][j]) * wt[k];
        }
        *o = t;
    }
}

/// Vertical Gaussian pass for output row `i` of x, y and their products, all five at once so
/// that each input value is loaded once per tap.
#[inline(always)]
fn gaussian_vertical(
    x: &[f64],
    y: &[f64],
    i: usize,
    l: usize,
    wt: &[f64; GAUSS_RADIUS + 1],
    vert: &mut [f64],
) {
    const R: usize = GAUSS_RADIUS;
    const T: usize = 2 * R + 1;
    // Blocks of fixed width with local accumulators: LLVM vectorizes these without the runtime
    // aliasing checks that 22 input rows and 5 output rows would need (it gives up on those).
    const B: usize = 4;
    let xr: [&[f64]; T] = std::array::from_fn(|t| &x[(i + t - R) * l..][..l]);
    let yr: [&[f64]; T] = std::array::from_fn(|t| &y[(i + t - R) * l..][..l]);
    let [vx, vy, vxx, vyy, vxy] = five_rows(vert, l);
    let full = l / B * B;
    for j in (0..full).step_by(B) {
        let xs: [&[f64; B]; T] = std::array::from_fn(|t| xr[t][j..j + B].try_into().unwrap());
        let ys: [&[f64; B]; T] = std::array::from_fn(|t| yr[t][j..j + B].try_into().unwrap());
        let [ox, oy, oxx, oyy, oxy] = gaussian_vertical_block(&xs, &ys, wt);
        vx[j..j + B].copy_from_slice(&ox);
        vy[j..j + B].copy_from_slice(&oy);
        vxx[j..j + B].copy_from_slice(&oxx);
        vyy[j..j + B].copy_from_slice(&oyy);
        vxy[j..j + B].copy_from_slice(&oxy);
    }
    for j in full..l {
        let xs: [&[f64; 1]; T] = std::array::from_fn(|t| xr[t][j..j + 1].try_into().unwrap());
        let ys: [&[f64; 1]; T] = std::array::from_fn(|t| yr[t][j..j + 1].try_into().unwrap());
        let [ox, oy, oxx, oyy, oxy] = gaussian_vertical_block(&xs, &ys, wt);
        (vx[j], vy[j], vxx[j], vyy[j], vxy[j]) = (ox[0], oy[0], oxx[0], oyy[0], oxy[0]);
    }
}

/// The vertical pass for `B` adjacent columns: like scipy's `correlate1d` for a symmetric
/// kernel, the center tap, then the pairs from the outermost inwards.
#[inline(always)]
fn gaussian_vertical_block<const B: usize>(
    xs: &[&[f64; B]; 2 * GAUSS_RADIUS + 1],
    ys: &[&[f64; B]; 2 * GAUSS_RADIUS + 1],
    wt: &[f64; GAUSS_RADIUS + 1],
) -> [[f64; B]; 5] {
    const R: usize = GAUSS_RADIUS;
    let mut o = [[0.0; B]; 5];
    for u in 0..B {
        let (p, q) = (xs[R][u], ys[R][u]);
        o[0][u] = p * wt[0];
        o[1][u] = q * wt[0];
        o[2][u] = (p * p) * wt[0];
        o[3][u] = (q * q) * wt[0];
        o[4][u] = (p * q) * wt[0];
    }
    for k in (1..R + 1).rev() {
        let (xa, xb, ya, yb) = (xs[R - k], xs[R + k], ys[R - k], ys[R + k]);
        for u in 0..B {
            let (pa, pb, qa, qb) = (xa[u], xb[u], ya[u], yb[u]);
            o[0][u] += (pa + pb) * wt[k];
            o[1][u] += (qa + qb) * wt[k];
            o[2][u] += (pa * pa + pb * pb) * wt[k];
            o[3][u] += (qa * qa + qb * qb) * wt[k];
            o[4][u] += (pa * qa + pb * qb) * wt[k];
        }
    }
    o
}

/// SSIM summed over each cropped column of `s.acc`, 7×7 uniform window, sample covariance.
///
/// Box sums are exact: with u8 data they are sums of integers, and in LlamaGen mode sums of at
/// most seven float32 values in [0, 1] (products included), which fit float64's mantissa. So the
/// vertical pass keeps running column sums. In LlamaGen mode (`F32 = true`) each pass's result is
/// then divided by 7 and rounded to float32, as scipy's `uniform_filter` stores it in a float32
/// array after each axis, and the SSIM formula runs in float32 in numpy's order of operations.
/// `C` as in [`gaussian_sums`].
#[inline(always)]
fn uniform_sums<const F32: bool, const C: usize>(p: Pair<'_>, s: &mut Scratch) {
    const R: usize = UNIFORM_RADIUS;
    const T: usize = 2 * R + 1;
    let c = if C == 0 { p.c } else { C };
    let l = p.w * c;
    let lo = s.acc.len();
    for r in 0..T - 1 {
        add_row::<F32>(&s.x, &s.y, r, l, 1.0, &mut s.vert);
    }
    for i in R..p.h - R {
        add_row::<F32>(&s.x, &s.y, i + R, l, 1.0, &mut s.vert);
        let src = if F32 {
            for (r, v) in s.vert32.iter_mut().zip(&s.vert) {
                *r = f64::from((v / T as f64) as f32);
            }
            &s.vert32
        } else {
            &s.vert
        };
        for q in 0..5 {
            box_horizontal::<C>(&src[q * l..][..l], c, &mut s.horiz[q * lo..][..lo]);
        }
        let [sx, sy, sxx, syy, sxy] = five_rows(&mut s.horiz, lo);
        ssim_row_box::<F32>(sx, sy, sxx, syy, sxy, &mut s.acc);
        add_row::<F32>(&s.x, &s.y, i - R, l, -1.0, &mut s.vert);
    }
}

/// Horizontal 7-wide box sum of one row over the cropped columns (taps `c` apart); `C` as in
/// [`gaussian_sums`].
#[inline(always)]
fn box_horizontal<const C: usize>(v: &[f64], c: usize, out: &mut [f64]) {
    const T: usize = 2 * UNIFORM_RADIUS + 1;
    let c = if C == 0 { c } else { C };
    let lo = out.len();
    let taps: [&[f64]; T] = std::array::from_fn(|t| &v[t * c..][..lo]);
    for (j, o) in out.iter_mut().enumerate() {
        let mut t = taps[0][j];
        for tap in &taps[1..] {
            t += tap[j];
        }
        *o = t;
    }
}

/// Adds the SSIM of one cropped row to `acc` from the box sums: [`ssim_box`], or
/// [`ssim_llamagen`] when `F32`.
#[inline(always)]
fn ssim_row_box<const F32: bool>(
    sx: &[f64],
    sy: &[f64],
    sxx: &[f64],
    syy: &[f64],
    sxy: &[f64],
    acc: &mut [f64],
) {
    let lo = acc.len();
    let (sx, sy, sxx, syy, sxy) = (&sx[..lo], &sy[..lo], &sxx[..lo], &syy[..lo], &sxy[..lo]);
    for (j, a) in acc.iter_mut().enumerate() {
        let sums = [sx[j], sy[j], sxx[j], syy[j], sxy[j]];
        *a += if F32 {
            ssim_llamagen(sums)
        } else {
            ssim_box(sums)
        };
    }
}

/// Adds (`sign = 1`) or removes (`sign = -1`) image row `r` to the running column sums; in
/// LlamaGen mode the products are rounded to float32 as numpy computes `im1 * im1` there.
#[inline(always)]
fn add_row<const F32: bool>(x: &[f64], y: &[f64], r: usize, l: usize, sign: f64, vert: &mut [f64]) {
    let prod = |a: f64, b: f64| {
        if F32 {
            f64::from(a as f32 * b as f32)
        } else {
            a * b
        }
    };
    let xr = &x[r * l..][..l];
    let yr = &y[r * l..][..l];
    let [vx, vy, vxx, vyy, vxy] = five_rows(vert, l);
    for j in 0..l {
        let (p, q) = (xr[j], yr[j]);
        vx[j] += sign * p;
        vy[j] += sign * q;
        vxx[j] += sign * prod(p, p);
        vyy[j] += sign * prod(q, q);
        vxy[j] += sign * prod(p, q);
    }
}

/// SSIM at one pixel from exact u8 box sums `[x, y, xx, yy, xy]` over 49 pixels, data range 255.
#[inline(always)]
fn ssim_box([sx, sy, sxx, syy, sxy]: [f64; 5]) -> f64 {
    // With NP = 49, mean = S / NP and sample (co)variance = (NP * Sxy - Sx * Sy) / (NP * (NP - 1)).
    // Scaling numerator and denominator of SSIM by NP^2 * NP * (NP - 1) leaves exact integers
    // everywhere except the scaled constants, and one division.
    const NP: f64 = 49.0;
    let c1 = (K1 * 255.0) * (K1 * 255.0) * (NP * NP);
    let c2 = (K2 * 255.0) * (K2 * 255.0) * (NP * (NP - 1.0));
    let varx = NP * sxx - sx * sx;
    let vary = NP * syy - sy * sy;
    let cov = NP * sxy - sx * sy;
    let num = (2.0 * sx * sy + c1) * (2.0 * cov + c2);
    let den = (sx * sx + sy * sy + c1) * (varx + vary + c2);
    num / den
}

/// SSIM at one pixel in LlamaGen mode from exact box sums of the float32 first-pass means, in
/// float32 as scikit-image computes it there.
#[inline(always)]
fn ssim_llamagen(sums: [f64; 5]) -> f64 {
    // scikit-image's constants are float64 Python scalars that numpy casts to float32.
    let data_range = 2.0f64;
    let c1 = ((K1 * data_range) * (K1 * data_range)) as f32;
    let c2 = ((K2 * data_range) * (K2 * data_range)) as f32;
    let cov_norm = (49.0f64 / 48.0) as f32;
    let [ux, uy, uxx, uyy, uxy] = sums.map(|v| (v / 7.0) as f32);
    let varx = cov_norm * (uxx - ux * ux);
    let vary = cov_norm * (uyy - uy * uy);
    let cov = cov_norm * (uxy - ux * uy);
    let a1 = 2.0f32 * ux * uy + c1;
    let a2 = 2.0f32 * cov + c2;
    let b1 = ux * ux + uy * uy + c1;
    let b2 = varx + vary + c2;
    f64::from((a1 * a2) / (b1 * b2))
}

/// Adds the per-column sums of an interleaved `(W', C)` row into one total per channel.
fn fold_channels(acc: &[f64], c: usize) -> Vec<f64> {
    let mut sums = vec![0.0; c];
    for px in acc.chunks_exact(c) {
        for (s, v) in sums.iter_mut().zip(px) {
            *s += v;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn gaussian_kernel_matches_scipy() {
        // scipy.ndimage._filters._gaussian_kernel1d(1.5, 0, 5)[5:]
        let expected = [
            0.26601172486179436,
            0.2130055377112537,
            0.10936068950970002,
            0.03600077212843083,
            0.007598758135239185,
            0.00102838008447911,
        ];
        for (got, want) in gaussian_kernel().iter().zip(expected) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
    }

    #[test]
    fn identical_images() {
        let a = Array4::from_shape_fn((2, 16, 16, 3), |(n, i, j, c)| {
            ((n * 7 + i * 13 + j * 5 + c) % 256) as u8
        });
        for mode in [
            SsimMode::Gaussian,
            SsimMode::Uniform,
            SsimMode::LlamagenCompat,
        ] {
            let r = ssim(a.view(), a.view(), mode).unwrap();
            assert!(
                r.per_image.iter().all(|&v| (v - 1.0).abs() < 1e-6),
                "{mode:?}: {r:?}"
            );
        }
        let p = psnr(a.view(), a.view()).unwrap();
        assert_eq!(p.identical, 2);
        assert_eq!(p.mean, None);
        assert!(p.per_image.iter().all(|v| v.is_infinite()));
    }

    #[test]
    fn psnr_of_constant_error() {
        let a = Array4::<u8>::zeros((1, 4, 4, 1));
        let b = Array4::<u8>::from_elem((1, 4, 4, 1), 1);
        let p = psnr(a.view(), b.view()).unwrap();
        let want = 10.0 * (255.0f64 * 255.0).log10();
        assert!((p.mean.unwrap() - want).abs() < 1e-12);
        assert_eq!(p.identical, 0);
    }

    /// The errors of PSNR and of SSIM (`mode`) on the same images.
    fn both_errors(a: &Array4<u8>, b: &Array4<u8>, mode: SsimMode) -> [MetricsError; 2] {
        [
            psnr(a.view(), b.view()).unwrap_err(),
            ssim(a.view(), b.view(), mode).unwrap_err(),
        ]
    }

    #[test]
    fn bad_input_is_an_error() {
        let a = Array4::<u8>::zeros((2, 16, 16, 3));
        let b = Array4::<u8>::zeros((2, 16, 15, 3));
        for err in both_errors(&a, &b, SsimMode::Gaussian) {
            assert!(matches!(err, MetricsError::ShapeMismatch { .. }), "{err}");
        }
        let e = Array4::<u8>::zeros((0, 16, 16, 3));
        for err in both_errors(&e, &e, SsimMode::Uniform) {
            assert!(matches!(err, MetricsError::TooFewSamples { .. }), "{err}");
        }
        let small = Array4::<u8>::zeros((1, 10, 30, 3));
        assert!(matches!(
            ssim(small.view(), small.view(), SsimMode::Gaussian),
            Err(MetricsError::InvalidArgument(_))
        ));
        assert!(ssim(small.view(), small.view(), SsimMode::Uniform).is_ok());
        let no_channels = Array4::<u8>::zeros((1, 16, 16, 0));
        assert!(psnr(no_channels.view(), no_channels.view()).is_err());
        assert!(ssim(no_channels.view(), no_channels.view(), SsimMode::Uniform).is_err());
    }

    #[test]
    fn vector_widths_give_the_same_bits() {
        let a = Array4::from_shape_fn((1, 29, 31, 3), |(_, i, j, c)| {
            ((i * 37 + j * j * 11 + c * 90) % 256) as u8
        });
        let b = Array4::from_shape_fn((1, 29, 31, 3), |(_, i, j, c)| {
            ((i * i * 7 + j * 19 + c * 40) % 256) as u8
        });
        let (a3, b3) = (a.index_axis(Axis(0), 0), b.index_axis(Axis(0), 0));
        let pair = Pair {
            a: a3.to_slice().unwrap(),
            b: b3.to_slice().unwrap(),
            h: 29,
            w: 31,
            c: 3,
        };
        for mode in [
            SsimMode::Gaussian,
            SsimMode::Uniform,
            SsimMode::LlamagenCompat,
        ] {
            let baseline = ssim_slices(pair, mode, &gaussian_kernel(), &mut Scratch::default());
            let dispatched = ssim_image(a3, b3, mode).unwrap();
            assert_eq!(baseline.to_bits(), dispatched.to_bits(), "{mode:?}");
        }
    }

    #[test]
    fn layout_does_not_matter() {
        let a = Array4::from_shape_fn((3, 20, 24, 3), |(n, i, j, c)| {
            ((n * 31 + i * i + j * 3 + c * 50) % 256) as u8
        });
        let b = Array4::from_shape_fn((3, 20, 24, 3), |(n, i, j, c)| {
            ((n * 17 + i * 5 + j * j + c * 20) % 256) as u8
        });
        // Same logical images stored channel-first, viewed back as (N, H, W, C).
        let a_t = a.view().permuted_axes([0, 3, 1, 2]).to_owned();
        let a_t = a_t.view().permuted_axes([0, 2, 3, 1]);
        for mode in [
            SsimMode::Gaussian,
            SsimMode::Uniform,
            SsimMode::LlamagenCompat,
        ] {
            let r1 = ssim(a.view(), b.view(), mode).unwrap();
            let r2 = ssim(a_t, b.view(), mode).unwrap();
            assert_eq!(r1, r2);
        }
        assert_eq!(
            psnr(a.view(), b.view()).unwrap(),
            psnr(a_t, b.view()).unwrap()
        );
    }
}
