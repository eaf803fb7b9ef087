//! Kernel Inception Distance (Bińkowski et al. 2018) as torch-fidelity 0.4.0 computes it: the
//! unbiased MMD² estimate with the cubic polynomial kernel `k(x, y) = (x·y / d + 1)³`, averaged over
//! random subsets of both sets, with the mean and the population standard deviation (`np.std`)
//! across subsets.
//!
//! Subsets are drawn exactly as torch-fidelity draws them: `numpy.random.RandomState(seed)` and, for
//! each subset, `choice(n_samples, m, replace=False)` then `choice(n_reference, m, replace=False)`.
//! [`LegacyRandomState`] reimplements the parts of NumPy's legacy generator that this needs (MT19937
//! seeding and output, the bounded-integer rejection sampler and the Fisher–Yates permutation), so
//! the same seed selects the same rows.
//!
//! The kernel sums are computed in float64 (f32 features are widened a block of rows at a time;
//! no f64 copy of a feature set is made), without recomputing kernel values that subsets share.
//! For each of the three terms (samples × samples, references × references, samples ×
//! references) either the kernel matrix of the union of the subsets' rows is formed once, in
//! blocks, and each subset's sum is read off it as `aᵀ K b` with the subsets' 0/1 membership
//! vectors (one GEMM of every kernel block with the membership matrix), or, when the union is so
//! large that this costs more, each subset's own kernel matrix is formed in blocks. Within-set
//! blocks use one triangle (`dsyrk` on the diagonal, each off-diagonal block once, counted twice).
//! Blocks run in parallel on rayon with single-threaded BLAS; partial sums are added in a fixed
//! order, so the result does not depend on the thread count.

use std::ops::Range;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, CowArray, Ix2};
use rayon::prelude::*;

use crate::error::{ensure_two_sets, MetricsError, Result, TwoSets};
use crate::linalg::{even_blocks, gather_rows_f64, gram_symmetric, Element, SerialBlas};

/// Rows per kernel block: 512 x 2048 f64 = 8 MiB per gathered block.
const KERNEL_BLOCK_ROWS: usize = 512;

/// torch-fidelity's `kid_subsets`.
pub const DEFAULT_SUBSETS: usize = 100;
/// torch-fidelity's `kid_subset_size`.
pub const DEFAULT_SUBSET_SIZE: usize = 1000;
/// torch-fidelity's `rng_seed`.
pub const DEFAULT_SEED: u32 = 2020;

/// Settings of [`kernel_inception_distance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KidConfig {
    /// Number of random subset pairs averaged.
    pub subsets: usize,
    /// Rows per subset; capped at the size of the smaller set (torch-fidelity refuses instead).
    pub subset_size: usize,
    /// Seed of NumPy's legacy `RandomState`.
    pub seed: u32,
}

impl Default for KidConfig {
    fn default() -> Self {
        Self {
            subsets: DEFAULT_SUBSETS,
            subset_size: DEFAULT_SUBSET_SIZE,
            seed: DEFAULT_SEED,
        }
    }
}

/// KID over the subsets: mean and population standard deviation of the per-subset MMD².
#[derive(Clone, Debug, PartialEq)]
pub struct KidResult {
    pub mean: f64,
    pub std: f64,
    /// Rows per subset actually used.
    pub subset_size: usize,
    /// MMD² of each subset, in drawing order.
    pub per_subset: Vec<f64>,
}

/// KID between `reference` (real) and `samples` (generated) features, rows being feature vectors
/// (float32 or float64, computed in float64).
pub fn kernel_inception_distance<T: Element>(
    reference: ArrayView2<'_, T>,
    samples: ArrayView2<'_, T>,
    config: &KidConfig,
) -> Result<KidResult> {
    if config.subsets == 0 {
        return Err(MetricsError::InvalidArgument(
            "KID: subsets must be at least 1".into(),
        ));
    }
    if config.subset_size < 2 {
        return Err(MetricsError::InvalidArgument(
            "KID: subset_size must be at least 2 (the unbiased estimate divides by m (m - 1))"
                .into(),
        ));
    }
    let names = TwoSets {
        metric: "KID",
        sets: ["KID (reference)", "KID (samples)"],
        rows: "feature vectors",
    };
    ensure_two_sets(&names, 2, reference, samples)?;

    let m = config
        .subset_size
        .min(reference.nrows())
        .min(samples.nrows());
    let mut rng = LegacyRandomState::new(config.seed);
    // torch-fidelity's features_1 is the generated set and is drawn first.
    let mut sample_subsets = Vec::with_capacity(config.subsets);
    let mut reference_subsets = Vec::with_capacity(config.subsets);
    for _ in 0..config.subsets {
        sample_subsets.push(rng.choice_without_replacement(samples.nrows(), m));
        reference_subsets.push(rng.choice_without_replacement(reference.nrows(), m));
    }
    let kernel = PolyKernel {
        gamma: 1.0 / reference.ncols() as f64,
    };
    let _serial = SerialBlas::enter();
    let within_samples = within_sums(samples, &sample_subsets, kernel);
    let within_reference = within_sums(reference, &reference_subsets, kernel);
    let cross = cross_sums(
        samples,
        &sample_subsets,
        reference,
        &reference_subsets,
        kernel,
    );
    let mf = m as f64;
    let per_subset: Vec<f64> = (0..config.subsets)
        .map(|s| {
            (within_samples[s] + within_reference[s]) / (mf * (mf - 1.0))
                - 2.0 * cross[s] / (mf * mf)
        })
        .collect();
    if per_subset.iter().any(|v| !v.is_finite()) {
        return Err(MetricsError::InvalidArgument(
            "KID: the polynomial kernel overflowed; feature magnitudes are far too large".into(),
        ));
    }
    let count = per_subset.len() as f64;
    let mean = per_subset.iter().sum::<f64>() / count;
    let variance = per_subset.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count;
    Ok(KidResult {
        mean,
        std: variance.sqrt(),
        subset_size: m,
        per_subset,
    })
}

/// torch-fidelity's kernel `(x·y γ + 1)³`, γ = 1 / dimension.
#[derive(Clone, Copy)]
struct PolyKernel {
    gamma: f64,
}

impl PolyKernel {
    fn apply(self, gram: &mut ndarray::ArrayViewMut2<'_, f64>) {
        let gamma = self.gamma;
        gram.mapv_inplace(|g| {
            let v = g * gamma + 1.0;
            v * v * v
        });
    }
}

/// Rows whose kernel values one computation shares, and which subsets each row belongs to.
struct Group {
    /// Rows of the feature set, ascending.
    rows: Vec<usize>,
    /// `rows.len() × subsets.len()` 0/1 membership.
    membership: Array2<f64>,
    /// Indices (into the caller's subset list) of the subsets this group serves.
    subsets: Vec<usize>,
}

impl Group {
    /// One group for all subsets, over the union of their rows.
    fn union(n: usize, subsets: &[Vec<usize>]) -> Self {
        let mut position = vec![usize::MAX; n];
        let mut rows: Vec<usize> = subsets.iter().flatten().copied().collect();
        rows.sort_unstable();
        rows.dedup();
        for (p, &r) in rows.iter().enumerate() {
            position[r] = p;
        }
        let mut membership = Array2::zeros((rows.len(), subsets.len()));
        for (s, subset) in subsets.iter().enumerate() {
            for &r in subset {
                membership[[position[r], s]] = 1.0;
            }
        }
        Group {
            rows,
            membership,
            subsets: (0..subsets.len()).collect(),
        }
    }

    /// One group per subset.
    fn each(subsets: &[Vec<usize>]) -> Vec<Self> {
        subsets
            .iter()
            .enumerate()
            .map(|(s, subset)| {
                let mut rows = subset.clone();
                rows.sort_unstable();
                Group {
                    membership: Array2::ones((rows.len(), 1)),
                    rows,
                    subsets: vec![s],
                }
            })
            .collect()
    }
}

fn distinct_rows(subsets: &[Vec<usize>]) -> usize {
    let mut rows: Vec<usize> = subsets.iter().flatten().copied().collect();
    rows.sort_unstable();
    rows.dedup();
    rows.len()
}

/// Splits `0..n` into about equal ranges of at most [`KERNEL_BLOCK_ROWS`].
fn kernel_blocks(n: usize) -> Vec<Range<usize>> {
    even_blocks(n, KERNEL_BLOCK_ROWS)
}

/// A group's rows widened to f64: all at once when that takes at most [`GATHER_AT_ONCE_BYTES`],
/// else one block at a time.
enum Gathered<'v, 'r, T: Element> {
    Whole(Array2<f64>),
    ByBlock(ArrayView2<'v, T>, &'r [usize]),
}

/// 256 MiB: a union of 16,000 rows of 2048 (the cost model picks the union form only up to
/// about ten subsets' worth of rows).
const GATHER_AT_ONCE_BYTES: usize = 256 << 20;

impl<'v, 'r, T: Element> Gathered<'v, 'r, T> {
    fn new(x: ArrayView2<'v, T>, rows: &'r [usize]) -> Self {
        if rows.len() * x.ncols() * std::mem::size_of::<f64>() <= GATHER_AT_ONCE_BYTES {
            Gathered::Whole(gather_rows_f64(x, rows))
        } else {
            Gathered::ByBlock(x, rows)
        }
    }

    /// Rows `range` of the group, row-major.
    fn block(&self, range: Range<usize>) -> CowArray<'_, f64, Ix2> {
        match self {
            Gathered::Whole(all) => CowArray::from(all.slice(s![range, ..])),
            Gathered::ByBlock(x, rows) => CowArray::from(gather_rows_f64(*x, &rows[range])),
        }
    }
}

/// Block pairs `(i, j)` of `rows` rows: `i <= j` when `triangle`, else all.
fn block_pairs(rows_i: usize, rows_j: usize, triangle: bool) -> Vec<(usize, usize)> {
    let (bi, bj) = (kernel_blocks(rows_i).len(), kernel_blocks(rows_j).len());
    (0..bi)
        .flat_map(|i| (if triangle { i } else { 0 }..bj).map(move |j| (i, j)))
        .collect()
}

/// A group's per-subset sums computed by one thread: `block`'s contributions of the block
/// `pairs`, added element-wise in the order of `pairs`.
fn summed_over_blocks(
    pairs: Vec<(usize, usize)>,
    group: &Group,
    block: impl Fn(usize, usize) -> Vec<f64>,
) -> Vec<f64> {
    let mut sums = vec![0.0; group.subsets.len()];
    for (bi, bj) in pairs {
        for (s, v) in sums.iter_mut().zip(block(bi, bj)) {
            *s += v;
        }
    }
    sums
}

/// Whether one group over the union of the subsets' rows takes fewer multiply-adds than a group
/// per subset: each of the union's `union_pairs` row pairs costs a kernel entry (`d` wide) and a
/// membership GEMM column per subset (`count`); each of the subsets' `subset_pairs`, all subsets
/// together, a kernel entry and one column.
fn union_is_cheaper(d: usize, count: f64, union_pairs: f64, subset_pairs: f64) -> bool {
    let d = d as f64;
    union_pairs * (d + count) < subset_pairs * (d + 1.0)
}

/// For each subset, the sum of `k(x_i, x_j)` over ordered pairs `i ≠ j` of its rows.
fn within_sums<T: Element>(
    x: ArrayView2<'_, T>,
    subsets: &[Vec<usize>],
    kernel: PolyKernel,
) -> Vec<f64> {
    let m = subsets[0].len() as f64;
    let count = subsets.len() as f64;
    let union = distinct_rows(subsets) as f64;
    // Each set's pairs: a kernel triangle.
    if union_is_cheaper(x.ncols(), count, union * union / 2.0, count * m * m / 2.0) {
        // One group: parallel over its block pairs.
        let group = Group::union(x.nrows(), subsets);
        let rows = Gathered::new(x, &group.rows);
        let n = group.rows.len();
        let partials: Vec<(usize, Vec<f64>)> = block_pairs(n, n, true)
            .par_iter()
            .map(|&(bi, bj)| (0, within_block(&rows, &group, bi, bj, kernel)))
            .collect();
        drop(rows);
        gather_partials(&[group], partials, subsets.len())
    } else {
        // A group per subset: parallel over the groups.
        let groups = Group::each(subsets);
        let partials: Vec<(usize, Vec<f64>)> = groups
            .par_iter()
            .enumerate()
            .map(|(g, group)| {
                let rows = Gathered::new(x, &group.rows);
                let n = group.rows.len();
                let sums = summed_over_blocks(block_pairs(n, n, true), group, |bi, bj| {
                    within_block(&rows, group, bi, bj, kernel)
                });
                (g, sums)
            })
            .collect();
        gather_partials(&groups, partials, subsets.len())
    }
}

/// One block pair's contribution to a group's within-set sums.
fn within_block<T: Element>(
    rows: &Gathered<'_, '_, T>,
    group: &Group,
    bi: usize,
    bj: usize,
    kernel: PolyKernel,
) -> Vec<f64> {
    let blocks = kernel_blocks(group.rows.len());
    let (ri, rj) = (blocks[bi].clone(), blocks[bj].clone());
    let mut gram = Array2::zeros((ri.len(), rj.len()));
    let xi = rows.block(ri.clone());
    if bi == bj {
        gram_symmetric(xi.view(), gram.view_mut()).expect("row-major blocks");
    } else {
        let xj = rows.block(rj.clone());
        general_mat_mul(1.0, &xi, &xj.t(), 0.0, &mut gram);
    }
    let mut k = gram.view_mut();
    kernel.apply(&mut k);
    if bi == bj {
        k.diag_mut().fill(0.0);
    }
    // Off-diagonal blocks stand for their mirror image too.
    let weight = if bi == bj { 1.0 } else { 2.0 };
    quadratic_forms(
        k.view(),
        group.membership.slice(s![ri, ..]),
        group.membership.slice(s![rj, ..]),
        weight,
    )
}

/// For each subset pair, the sum of `k(x_i, y_j)` over all rows `i` of the x subset and `j` of
/// the y subset.
fn cross_sums<T: Element>(
    x: ArrayView2<'_, T>,
    x_subsets: &[Vec<usize>],
    y: ArrayView2<'_, T>,
    y_subsets: &[Vec<usize>],
    kernel: PolyKernel,
) -> Vec<f64> {
    let m = x_subsets[0].len() as f64;
    let count = x_subsets.len() as f64;
    let union_pairs = distinct_rows(x_subsets) as f64 * distinct_rows(y_subsets) as f64;
    if union_is_cheaper(x.ncols(), count, union_pairs, count * m * m) {
        let (gx, gy) = (
            Group::union(x.nrows(), x_subsets),
            Group::union(y.nrows(), y_subsets),
        );
        let (rows_x, rows_y) = (Gathered::new(x, &gx.rows), Gathered::new(y, &gy.rows));
        let partials: Vec<(usize, Vec<f64>)> = block_pairs(gx.rows.len(), gy.rows.len(), false)
            .par_iter()
            .map(|&(bi, bj)| (0, cross_block(&rows_x, &gx, &rows_y, &gy, bi, bj, kernel)))
            .collect();
        drop((rows_x, rows_y));
        gather_partials(&[gx], partials, x_subsets.len())
    } else {
        let groups: Vec<(Group, Group)> = Group::each(x_subsets)
            .into_iter()
            .zip(Group::each(y_subsets))
            .collect();
        let partials: Vec<(usize, Vec<f64>)> = groups
            .par_iter()
            .enumerate()
            .map(|(g, (gx, gy))| {
                let (rows_x, rows_y) = (Gathered::new(x, &gx.rows), Gathered::new(y, &gy.rows));
                let pairs = block_pairs(gx.rows.len(), gy.rows.len(), false);
                let sums = summed_over_blocks(pairs, gx, |bi, bj| {
                    cross_block(&rows_x, gx, &rows_y, gy, bi, bj, kernel)
                });
                (g, sums)
            })
            .collect();
        let x_groups: Vec<Group> = groups.into_iter().map(|(gx, _)| gx).collect();
        gather_partials(&x_groups, partials, x_subsets.len())
    }
}

/// One block pair's contribution to a group pair's cross sums.
fn cross_block<T: Element>(
    rows_x: &Gathered<'_, '_, T>,
    gx: &Group,
    rows_y: &Gathered<'_, '_, T>,
    gy: &Group,
    bi: usize,
    bj: usize,
    kernel: PolyKernel,
) -> Vec<f64> {
    let ri = kernel_blocks(gx.rows.len())[bi].clone();
    let rj = kernel_blocks(gy.rows.len())[bj].clone();
    let xi = rows_x.block(ri.clone());
    let yj = rows_y.block(rj.clone());
    let mut gram = Array2::zeros((ri.len(), rj.len()));
    general_mat_mul(1.0, &xi, &yj.t(), 0.0, &mut gram);
    let mut k = gram.view_mut();
    kernel.apply(&mut k);
    quadratic_forms(
        k.view(),
        gx.membership.slice(s![ri, ..]),
        gy.membership.slice(s![rj, ..]),
        1.0,
    )
}

/// `weight · aₛᵀ K bₛ` for every membership column `s`: `K B` by GEMM, then row-wise dot
/// products with `A`.
fn quadratic_forms(
    k: ArrayView2<'_, f64>,
    a: ArrayView2<'_, f64>,
    b: ArrayView2<'_, f64>,
    weight: f64,
) -> Vec<f64> {
    let mut kb = Array2::zeros((k.nrows(), b.ncols()));
    general_mat_mul(1.0, &k, &b, 0.0, &mut kb);
    let mut sums = vec![0.0; b.ncols()];
    for (a_row, kb_row) in a.rows().into_iter().zip(kb.rows()) {
        for ((sum, &av), &v) in sums.iter_mut().zip(a_row).zip(kb_row) {
            *sum += av * v;
        }
    }
    sums.iter_mut().for_each(|v| *v *= weight);
    sums
}

/// Adds the blocks' partial sums, in task order (deterministic for any thread count), into one
/// total per subset.
fn gather_partials(groups: &[Group], partials: Vec<(usize, Vec<f64>)>, subsets: usize) -> Vec<f64> {
    let mut totals = vec![0.0; subsets];
    for (g, sums) in partials {
        for (&s, v) in groups[g].subsets.iter().zip(sums) {
            totals[s] += v;
        }
    }
    totals
}

/// Unbiased MMD² of two equally sized sets under `(x·y / d + 1)³`: off-diagonal means of the
/// within-set kernels minus twice the full mean of the cross kernel.
pub fn mmd2_unbiased_poly(x: ArrayView2<'_, f64>, y: ArrayView2<'_, f64>) -> f64 {
    let m = x.nrows() as f64;
    let gamma = 1.0 / x.ncols() as f64;
    let kernel = |a: ArrayView2<'_, f64>, b: ArrayView2<'_, f64>| -> Array2<f64> {
        a.dot(&b.t()).mapv_into(|v| (v * gamma + 1.0).powi(3))
    };
    let off_diagonal_sum = |k: &Array2<f64>| k.sum() - k.diag().sum();
    let kxx = kernel(x, x);
    let kyy = kernel(y, y);
    let kxy = kernel(x, y);
    (off_diagonal_sum(&kxx) + off_diagonal_sum(&kyy)) / (m * (m - 1.0)) - 2.0 * kxy.sum() / (m * m)
}

/// The parts of NumPy's legacy `numpy.random.RandomState` (MT19937) that subset drawing uses.
pub struct LegacyRandomState {
    state: [u32; 624],
    pos: usize,
}

impl LegacyRandomState {
    /// `RandomState(seed)` for an integer seed (MT19937's `init_genrand`).
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, pos: 624 }
    }

    /// The next 32-bit MT19937 output.
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= 624 {
            self.twist();
        }
        let mut y = self.state[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[i] = self.state[(i + 397) % 624] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    fn next_u64(&mut self) -> u64 {
        let high = u64::from(self.next_u32());
        (high << 32) | u64::from(self.next_u32())
    }

    /// Uniform integer in `0..=max` by masked rejection (NumPy's legacy `random_interval`).
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        if max <= u64::from(u32::MAX) {
            loop {
                let value = u64::from(self.next_u32()) & mask;
                if value <= max {
                    return value;
                }
            }
        }
        loop {
            let value = self.next_u64() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `permutation(n)`: Fisher–Yates from the last position down, as NumPy's legacy `shuffle`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut values: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u64) as usize;
            values.swap(i, j);
        }
        values
    }

    /// `choice(n, m, replace=False)`: the first `m` entries of `permutation(n)`.
    pub fn choice_without_replacement(&mut self, n: usize, m: usize) -> Vec<usize> {
        let mut values = self.permutation(n);
        values.truncate(m);
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn mt19937_reference_output() {
        // The 10000th output for the reference seed 5489 is MT19937's published check value.
        let mut rng = LegacyRandomState::new(5489);
        assert_eq!(rng.next_u32(), 3_499_211_612);
        let mut rng = LegacyRandomState::new(5489);
        let last = (0..10_000).map(|_| rng.next_u32()).last().unwrap();
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn matches_numpy_legacy_permutation_and_choice() {
        // np.random.RandomState(2020).permutation(10)
        assert_eq!(
            LegacyRandomState::new(2020).permutation(10),
            vec![2, 4, 9, 1, 5, 7, 6, 3, 8, 0]
        );
        // np.random.RandomState(0).choice(7, 3, replace=False)
        assert_eq!(
            LegacyRandomState::new(0).choice_without_replacement(7, 3),
            vec![6, 2, 1]
        );
    }

    fn grid(rows: usize, cols: usize, offset: f64) -> Array2<f64> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            ((i * 7 + j * 13) % 11) as f64 / 11.0 + offset
        })
    }

    #[test]
    fn mmd_matches_direct_sum() {
        let x = grid(6, 3, 0.0);
        let y = grid(6, 3, 0.3);
        let k = |a: ndarray::ArrayView1<f64>, b: ndarray::ArrayView1<f64>| {
            (a.dot(&b) / 3.0 + 1.0).powi(3)
        };
        let mut xx = 0.0;
        let mut yy = 0.0;
        let mut xy = 0.0;
        for i in 0..6 {
            for j in 0..6 {
                if i != j {
                    xx += k(x.row(i), x.row(j));
                    yy += k(y.row(i), y.row(j));
                }
                xy += k(x.row(i), y.row(j));
            }
        }
        let expected = (xx + yy) / 30.0 - 2.0 * xy / 36.0;
        let got = mmd2_unbiased_poly(x.view(), y.view());
        assert!((got - expected).abs() < 1e-12 * expected.abs().max(1.0));
    }

    #[test]
    fn caps_subset_size_and_reports_std() {
        let x = grid(20, 4, 0.0);
        let y = grid(15, 4, 0.2);
        let config = KidConfig {
            subsets: 5,
            ..Default::default()
        };
        let got = kernel_inception_distance(x.view(), y.view(), &config).unwrap();
        assert_eq!(got.subset_size, 15);
        assert_eq!(got.per_subset.len(), 5);
        assert!(got.mean.is_finite() && got.std >= 0.0);
    }

    #[test]
    fn errors_are_typed() {
        let good = grid(10, 3, 0.0);
        let config = KidConfig::default();
        assert!(matches!(
            kernel_inception_distance(good.view(), grid(10, 2, 0.0).view(), &config),
            Err(MetricsError::DimensionMismatch {
                left: 3,
                right: 2,
                ..
            })
        ));
        assert!(matches!(
            kernel_inception_distance(good.view(), grid(1, 3, 0.0).view(), &config),
            Err(MetricsError::TooFewSamples { got: 1, .. })
        ));
        let mut bad = good.clone();
        bad[[3, 2]] = f64::NAN;
        assert!(matches!(
            kernel_inception_distance(bad.view(), good.view(), &config),
            Err(MetricsError::NonFinite { rows: 1, .. })
        ));
        for bad_config in [
            KidConfig {
                subsets: 0,
                ..config
            },
            KidConfig {
                subset_size: 1,
                ..config
            },
        ] {
            assert!(matches!(
                kernel_inception_distance(good.view(), good.view(), &bad_config),
                Err(MetricsError::InvalidArgument(_))
            ));
        }
        let mut huge = good.clone();
        huge[[0, 0]] = 1e200;
        assert!(matches!(
            kernel_inception_distance(huge.view(), good.view(), &config),
            Err(MetricsError::InvalidArgument(_))
        ));
        let mut bad32 = good.mapv(|v| v as f32);
        bad32[[0, 0]] = f32::INFINITY;
        assert!(matches!(
            kernel_inception_distance(good.mapv(|v| v as f32).view(), bad32.view(), &config),
            Err(MetricsError::NonFinite { rows: 1, .. })
        ));
    }
}
