//! CMMD (Jayasumana et al. 2024, "Rethinking FID"), as google-research `cmmd/distance.py` computes
//! it: the biased (V-statistic) MMD² between two sets of CLIP embeddings under the Gaussian RBF
//! kernel `k(x, y) = exp(-‖x − y‖² / (2σ²))` with σ = 10, times 1000:
//!
//! `1000 · (mean k(xᵢ, xⱼ) + mean k(yᵢ, yⱼ) − 2 mean k(xᵢ, yⱼ))`,
//!
//! each mean over all pairs, the diagonal included. The two sets may differ in size.
//!
//! The reference forms the three kernel matrices whole (in float32); here the sums are computed in
//! float64 from `‖x‖² + ‖y‖² − 2 x·y`, a block of 512 x 512 kernel values at a time (f32 rows are
//! widened a block at a time, no f64 copy of a set is made), so 50,000 x 50,000 pairs need a few
//! MiB per thread. Within-set sums visit each off-diagonal block once and count it twice. Blocks run
//! in parallel on rayon with single-threaded BLAS; partial sums are added in a fixed order, so the
//! result does not depend on the thread count.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{ensure_two_sets, MetricsError, Result, TwoSets};
use crate::linalg::{even_blocks, Element, SerialBlas};

/// The RBF bandwidth of `cmmd/distance.py` (`_SIGMA`).
pub const SIGMA: f64 = 10.0;
/// The factor `cmmd/distance.py` multiplies the MMD² by (`_SCALE`).
pub const SCALE: f64 = 1000.0;
/// Rows per kernel block.
const BLOCK_ROWS: usize = 512;

/// CMMD between two sets of embeddings (rows; CMMD's are L2-normalised CLIP image embeddings):
/// [`SCALE`] · the biased MMD² under the RBF kernel with σ = [`SIGMA`]; float32 or float64
/// embeddings, computed in float64.
pub fn cmmd<T: Element>(x: ArrayView2<'_, T>, y: ArrayView2<'_, T>) -> Result<f64> {
    Ok(SCALE * mmd2_rbf(x, y, SIGMA)?)
}

/// The biased MMD² of `x` and `y` under `exp(-‖a − b‖² / (2 sigma²))`: the means over all pairs
/// (diagonal included) of the two within-set kernels, minus twice the mean of the cross kernel.
pub fn mmd2_rbf<T: Element>(x: ArrayView2<'_, T>, y: ArrayView2<'_, T>, sigma: f64) -> Result<f64> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(MetricsError::InvalidArgument(format!(
            "CMMD: the RBF bandwidth must be positive and finite, got {sigma}"
        )));
    }
    let names = TwoSets {
        metric: "CMMD",
        sets: ["CMMD (first set)", "CMMD (second set)"],
        rows: "embeddings",
    };
    ensure_two_sets(&names, 1, x, y)?;
    let gamma = 1.0 / (2.0 * sigma * sigma);
    let _serial = SerialBlas::enter();
    let (nx, ny) = (x.nrows() as f64, y.nrows() as f64);
    let k_xx = kernel_sum(x, None, gamma) / (nx * nx);
    let k_yy = kernel_sum(y, None, gamma) / (ny * ny);
    let k_xy = kernel_sum(x.view(), Some(y.view()), gamma) / (nx * ny);
    let mmd2 = k_xx + k_yy - 2.0 * k_xy;
    if !mmd2.is_finite() {
        return Err(MetricsError::InvalidArgument(
            "CMMD: the kernel sums are not finite; embedding magnitudes are far too large".into(),
        ));
    }
    Ok(mmd2)
}

/// Squared norms of the rows, in float64.
fn squared_norms<T: Element>(x: ArrayView2<'_, T>) -> Array1<f64> {
    x.axis_iter(Axis(0))
        .map(|row| {
            row.iter()
                .map(|&v| {
                    let v: f64 = v.into();
                    v * v
                })
                .sum()
        })
        .collect()
}

/// Σ exp(-γ ‖aᵢ − bⱼ‖²) over all pairs of rows of `a` and `b` (`b = None`: `a` with itself, on
/// one triangle of blocks).
fn kernel_sum<'v, T: Element>(
    a: ArrayView2<'v, T>,
    b: Option<ArrayView2<'v, T>>,
    gamma: f64,
) -> f64 {
    let within = b.is_none();
    let b = b.unwrap_or(a);
    let (norms_a, norms_b) = (squared_norms(a), squared_norms(b));
    let (blocks_a, blocks_b) = (
        even_blocks(a.nrows(), BLOCK_ROWS),
        even_blocks(b.nrows(), BLOCK_ROWS),
    );
    let pairs: Vec<(usize, usize)> = (0..blocks_a.len())
        .flat_map(|i| (if within { i } else { 0 }..blocks_b.len()).map(move |j| (i, j)))
        .collect();
    let partials: Vec<f64> = pairs
        .par_iter()
        .map(|&(i, j)| {
            let (ri, rj) = (blocks_a[i].clone(), blocks_b[j].clone());
            let ai = T::rows_f64(a.slice(s![ri.clone(), ..]));
            let bj = T::rows_f64(b.slice(s![rj.clone(), ..]));
            let mut gram = Array2::zeros((ri.len(), rj.len()));
            general_mat_mul(1.0, &ai, &bj.t(), 0.0, &mut gram);
            let (na, nb) = (norms_a.slice(s![ri]), norms_b.slice(s![rj]));
            let mut sum = 0.0;
            for (row, &n_i) in gram.rows().into_iter().zip(na) {
                for (&g, &n_j) in row.iter().zip(nb) {
                    sum += (-gamma * (n_i + n_j - 2.0 * g)).exp();
                }
            }
            // An off-diagonal block of a within-set sum stands for its mirror image too.
            if within && i != j {
                2.0 * sum
            } else {
                sum
            }
        })
        .collect();
    partials.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: usize, cols: usize, offset: f64) -> Array2<f64> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            ((i * 7 + j * 13) % 11) as f64 / 11.0 + offset + (i as f64 * 0.37).sin()
        })
    }

    /// The reference's formula, whole matrices at once.
    fn direct(x: &Array2<f64>, y: &Array2<f64>, sigma: f64) -> f64 {
        let k = |a: &Array2<f64>, b: &Array2<f64>| -> f64 {
            let mut total = 0.0;
            for ra in a.rows() {
                for rb in b.rows() {
                    let d2: f64 = ra.iter().zip(rb).map(|(p, q)| (p - q) * (p - q)).sum();
                    total += (-d2 / (2.0 * sigma * sigma)).exp();
                }
            }
            total / (a.nrows() * b.nrows()) as f64
        };
        k(x, x) + k(y, y) - 2.0 * k(x, y)
    }

    #[test]
    fn matches_the_direct_sum_across_blocks() {
        // More than one block per set, sets of different sizes.
        let x = grid(1100, 5, 0.0) * 4.0;
        let y = grid(600, 5, 0.5) * 4.0;
        for sigma in [SIGMA, 1.5] {
            let expected = direct(&x, &y, sigma);
            let got = mmd2_rbf(x.view(), y.view(), sigma).unwrap();
            assert!(
                (got - expected).abs() <= 1e-12 * expected.abs().max(1e-3),
                "sigma {sigma}: {got} vs {expected}"
            );
        }
        let got32 = cmmd(x.mapv(|v| v as f32).view(), y.mapv(|v| v as f32).view()).unwrap();
        let expected = SCALE
            * direct(
                &x.mapv(|v| f64::from(v as f32)),
                &y.mapv(|v| f64::from(v as f32)),
                SIGMA,
            );
        assert!((got32 - expected).abs() <= 1e-10 * expected.abs());
    }

    #[test]
    fn identical_sets_give_zero_and_one_row_sets_work() {
        let x = grid(30, 4, 0.0);
        assert!(cmmd(x.view(), x.view()).unwrap().abs() < 1e-12);
        let one = grid(1, 4, 0.2);
        let got = cmmd(one.view(), x.view()).unwrap();
        assert!((got - SCALE * direct(&one, &x, SIGMA)).abs() < 1e-9);
    }

    #[test]
    fn errors_are_typed() {
        let good = grid(10, 3, 0.0);
        assert!(matches!(
            cmmd(good.view(), grid(10, 2, 0.0).view()),
            Err(MetricsError::DimensionMismatch {
                left: 3,
                right: 2,
                ..
            })
        ));
        assert!(matches!(
            cmmd(good.view(), Array2::<f64>::zeros((0, 3)).view()),
            Err(MetricsError::TooFewSamples { got: 0, .. })
        ));
        assert!(matches!(
            cmmd(
                Array2::<f64>::zeros((4, 0)).view(),
                Array2::<f64>::zeros((4, 0)).view()
            ),
            Err(MetricsError::InvalidArgument(_))
        ));
        let mut bad = good.mapv(|v| v as f32);
        bad[[3, 2]] = f32::NAN;
        assert!(matches!(
            cmmd(good.mapv(|v| v as f32).view(), bad.view()),
            Err(MetricsError::NonFinite { rows: 1, .. })
        ));
        assert!(matches!(
            mmd2_rbf(good.view(), good.view(), 0.0),
            Err(MetricsError::InvalidArgument(_))
        ));
    }
}
