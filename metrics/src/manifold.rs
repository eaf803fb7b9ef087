//! Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al.
//! 2020) of a sample set against a reference set, with the semantics of the ADM evaluator's
//! `ManifoldEstimator` (openai/guided-diffusion `evaluations/evaluator.py`).
//!
//! Each point's radius is the squared Euclidean distance to its k-th nearest neighbour in its own
//! set, itself excluded. A sample counts towards precision when it lies in some reference ball
//! (`d(sample, ref_j) <= radius_j`); a reference counts towards recall when it lies in some sample
//! ball. Density is `(1 / (k M)) Σ_j #{i : d(sample_j, ref_i) < radius_i}` and coverage the fraction
//! of references whose nearest sample is closer than the reference's own radius; both use the strict
//! inequality of Naeem et al.'s definition.
//!
//! Distances come from blocked GEMM (`‖u‖² − 2 u·v + ‖v‖²`), one block of `block_size × block_size`
//! at a time per worker, so memory stays bounded for any set size; the k smallest distances of each
//! row are kept in a small sorted buffer instead of sorting rows.
//! In the default exact mode the GEMMs run in float32 with a rigorous bound on the difference from
//! the float64 distance, and only pairs the bound cannot decide are recomputed in float64 (see
//! `filtered`): the same decisions as float64 distances, at float32 GEMM speed. Within-set passes
//! compute one triangle of blocks.
//!
//! torch-fidelity's `prc` gives the same precision and recall: it compares Euclidean rather than
//! squared distances and takes `kthvalue(k + 1)` with the self-distance included, which selects the
//! same neighbour for distinct points.
//!
//! [`DistancePrecision::AdmFp16`] reproduces the float16 arithmetic of ADM's TensorFlow
//! `DistanceBlock`, which is what published ADM precision/recall numbers were computed with.

use std::collections::HashSet;
use std::ops::Range;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView2, Axis, CowArray, Ix2, Zip};
use rayon::prelude::*;

use crate::error::{ensure_finite_rows, ensure_same_dim, MetricsError, Result};
use crate::linalg::{Element, SerialBlas};

/// Neighbourhood size used by ADM and by Kynkäänniemi et al.
pub const DEFAULT_K: usize = 3;
/// Rows (and columns) per distance block: 1024 × 1024 f64 = 8 MiB per worker.
pub const DEFAULT_BLOCK_SIZE: usize = 1024;
/// ADM's `row_batch_size` / `col_batch_size`. The float16 → float32 fallback is decided per tile
/// of this size, so `AdmFp16` blocks never straddle a tile boundary.
pub const ADM_BATCH_SIZE: usize = 10_000;

/// Arithmetic of the pairwise distances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DistancePrecision {
    /// Float64 throughout (f32 inputs are promoted); the mathematically intended metric.
    #[default]
    Exact,
    /// ADM's evaluator: features cast to float32 then float16; squared norms, `u·v` and the
    /// distance combined in float16 with TensorFlow's CPU rounding; any 10 000 × 10 000 tile with
    /// a non-finite float16 distance is recomputed in float32, as ADM's `tf.cond` does.
    AdmFp16,
}

/// Settings of [`manifold_metrics`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifoldConfig {
    /// Neighbourhood size k (the radius is the distance to the k-th nearest other point).
    pub k: usize,
    /// Rows and columns per distance block; bounds memory to about `8 · block_size²` bytes per
    /// worker thread.
    pub block_size: usize,
    pub precision: DistancePrecision,
}

impl Default for ManifoldConfig {
    fn default() -> Self {
        Self {
            k: DEFAULT_K,
            block_size: DEFAULT_BLOCK_SIZE,
            precision: DistancePrecision::Exact,
        }
    }
}

/// Precision, recall, density and coverage of a sample set against a reference set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ManifoldMetrics {
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
}

/// What each sample and each reference row contributes to [`ManifoldMetrics`]: precision and
/// density are means over the samples, recall and coverage means over the reference rows, so these
/// vectors are what a bootstrap resamples (no neighbourhood is recomputed).
#[derive(Clone, Debug, PartialEq)]
pub struct ManifoldContributions {
    /// Neighbourhood size the radii were taken at.
    pub k: usize,
    /// Per sample: inside some reference ball (`<=`, ADM) — precision.
    pub in_reference_ball: Vec<bool>,
    /// Per sample: number of reference balls strictly containing it — density (divided by k).
    pub ball_count: Vec<u64>,
    /// Per reference row: inside some sample ball (`<=`) — recall.
    pub in_sample_ball: Vec<bool>,
    /// Per reference row: its nearest sample strictly inside its own ball — coverage.
    pub covered: Vec<bool>,
}

impl ManifoldContributions {
    /// The four figures these contributions average to.
    pub fn metrics(&self) -> ManifoldMetrics {
        let (n, m) = (self.in_sample_ball.len(), self.in_reference_ball.len());
        let count = |v: &[bool]| v.iter().filter(|&&b| b).count() as f64;
        let ball_total: u64 = self.ball_count.iter().sum();
        ManifoldMetrics {
            precision: count(&self.in_reference_ball) / m as f64,
            recall: count(&self.in_sample_ball) / n as f64,
            density: ball_total as f64 / (self.k as f64 * m as f64),
            coverage: count(&self.covered) / n as f64,
        }
    }
}

/// Precision, recall, density and coverage of `samples` against `reference` (rows are feature
/// vectors, float32 or float64), in one pass over each of the three distance matrices.
pub fn manifold_metrics<T: Element>(
    reference: ArrayView2<'_, T>,
    samples: ArrayView2<'_, T>,
    config: &ManifoldConfig,
) -> Result<ManifoldMetrics> {
    Ok(manifold_contributions(reference, samples, config)?.metrics())
}

/// [`manifold_metrics`] with each row's contribution (the same values, before averaging).
pub fn manifold_contributions<T: Element>(
    reference: ArrayView2<'_, T>,
    samples: ArrayView2<'_, T>,
    config: &ManifoldConfig,
) -> Result<ManifoldContributions> {
    validate_config(config)?;
    validate_set("manifold metrics (reference)", reference, config.k)?;
    validate_set("manifold metrics (samples)", samples, config.k)?;
    ensure_same_dim("manifold metrics", reference.ncols(), samples.ncols())?;
    ensure_finite_rows("manifold metrics (reference)", reference)?;
    ensure_finite_rows("manifold metrics (samples)", samples)?;
    if config.precision == DistancePrecision::Exact {
        if let (Some(reference), Some(samples)) =
            (filtered::Set::new(reference), filtered::Set::new(samples))
        {
            let _serial = SerialBlas::enter();
            let ref_radii = filtered::radii(&reference, config);
            let sample_radii = filtered::radii(&samples, config);
            return Ok(filtered::cross(
                &reference,
                &ref_radii,
                &samples,
                &sample_radii,
                config,
            ));
        }
    }
    let (reference, samples) = (widen(reference), widen(samples));
    let reference = Prepared::new(reference.view(), config.precision);
    let samples = Prepared::new(samples.view(), config.precision);
    let _serial = SerialBlas::enter();
    let ref_radii = radii_of(&reference, config);
    let sample_radii = radii_of(&samples, config);
    Ok(cross_metrics(
        &reference,
        &ref_radii,
        &samples,
        &sample_radii,
        config,
    ))
}

/// The features as f64 (a view when they are), for the float16 emulation and the float64 GEMM
/// path.
fn widen<'a, T: Element>(features: ArrayView2<'a, T>) -> CowArray<'a, f64, Ix2> {
    T::rows_f64(features)
}

/// Squared distance of each row to its k-th nearest other row, in the configured arithmetic
/// (ADM's `manifold_radii`).
pub fn manifold_radii(
    features: ArrayView2<'_, f64>,
    config: &ManifoldConfig,
) -> Result<Array1<f64>> {
    validate_config(config)?;
    validate_set("manifold radii", features, config.k)?;
    ensure_finite_rows("manifold radii", features)?;
    let _serial = SerialBlas::enter();
    if config.precision == DistancePrecision::Exact {
        if let Some(set) = filtered::Set::new(features) {
            return Ok(filtered::radii(&set, config));
        }
    }
    Ok(radii_of(&Prepared::new(features, config.precision), config))
}

fn validate_config(config: &ManifoldConfig) -> Result<()> {
    if config.k == 0 {
        return Err(MetricsError::InvalidArgument(
            "manifold metrics: k must be at least 1".into(),
        ));
    }
    if config.block_size == 0 {
        return Err(MetricsError::InvalidArgument(
            "manifold metrics: block_size must be at least 1".into(),
        ));
    }
    Ok(())
}

fn validate_set<T>(what: &'static str, features: ArrayView2<'_, T>, k: usize) -> Result<()> {
    let n = features.nrows();
    if n < 2 {
        return Err(MetricsError::TooFewSamples {
            what,
            need: k + 1,
            got: n,
        });
    }
    if k >= n {
        return Err(MetricsError::KTooLarge { k, n });
    }
    if features.ncols() == 0 {
        return Err(MetricsError::InvalidArgument(format!(
            "{what}: feature vectors have no components"
        )));
    }
    Ok(())
}

/// A feature set as the distance kernel sees it.
struct Prepared<'a> {
    /// The caller's features (exact arithmetic reads them in place).
    source: ArrayView2<'a, f64>,
    /// `AdmFp16` only: the features rounded to float32 and then float16.
    half: Option<Array2<f64>>,
    /// Squared norms in the primary arithmetic (float16 in `AdmFp16` mode).
    norms: Array1<f64>,
    /// `AdmFp16` only: float32 squared norms for tiles that fall back to float32.
    norms32: Option<Array1<f64>>,
    precision: DistancePrecision,
}

impl<'a> Prepared<'a> {
    fn new(source: ArrayView2<'a, f64>, precision: DistancePrecision) -> Self {
        match precision {
            DistancePrecision::Exact => Self {
                source,
                half: None,
                norms: source.map_axis(Axis(1), |row| row.dot(&row)),
                norms32: None,
                precision,
            },
            DistancePrecision::AdmFp16 => {
                // ADM feeds float32 placeholders, so f64 input is first rounded to float32.
                let half = source.mapv(|v| round_f16(round_f32(v)));
                let dim = half.ncols();
                let norms =
                    Array1::from_iter(half.axis_iter(Axis(0)).enumerate().map(|(i, row)| {
                        let squares: Vec<f64> = row.iter().map(|&v| round_f16(v * v)).collect();
                        // TensorFlow reduces each ADM batch as one contiguous [rows, dim] tensor.
                        eigen_half_sum(&squares, (i % ADM_BATCH_SIZE) * dim)
                    }));
                let norms32 = source.map_axis(Axis(1), |row| {
                    round_f32(row.iter().map(|&v| round_f32(v).powi(2)).sum())
                });
                Self {
                    source,
                    half: Some(half),
                    norms,
                    norms32: Some(norms32),
                    precision,
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.source.nrows()
    }
}

/// Which arithmetic a block is computed in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arith {
    Exact,
    Half,
    Single,
}

/// Squared distances between rows `rows` of `u` and rows `cols` of `v` into `out`
/// (`rows.len() × cols.len()`). Returns false when a float16 block holds a non-finite distance,
/// which makes ADM recompute the whole tile in float32.
fn distance_block(
    u: &Prepared<'_>,
    rows: Range<usize>,
    v: &Prepared<'_>,
    cols: Range<usize>,
    arith: Arith,
    out: &mut Array2<f64>,
) -> bool {
    match arith {
        Arith::Exact => general_mat_mul(
            1.0,
            &u.source.slice(s![rows.clone(), ..]),
            &v.source.slice(s![cols.clone(), ..]).t(),
            0.0,
            out,
        ),
        Arith::Half => {
            let (uh, vh) = (half_of(u), half_of(v));
            general_mat_mul(
                1.0,
                &uh.slice(s![rows.clone(), ..]),
                &vh.slice(s![cols.clone(), ..]).t(),
                0.0,
                out,
            )
        }
        // Rare (only tiles whose float16 distances overflow), so rounded on the fly.
        Arith::Single => general_mat_mul(
            1.0,
            &u.source.slice(s![rows.clone(), ..]).mapv(round_f32),
            &v.source.slice(s![cols.clone(), ..]).mapv(round_f32).t(),
            0.0,
            out,
        ),
    }
    let (un, vn) = if arith == Arith::Single {
        (norms32_of(u), norms32_of(v))
    } else {
        (&u.norms, &v.norms)
    };
    let nu = un.slice(s![rows]);
    let nv = vn.slice(s![cols]);
    let mut finite = true;
    match arith {
        Arith::Exact => {
            Zip::from(out.rows_mut()).and(&nu).for_each(|mut row, &nu| {
                Zip::from(&mut row).and(&nv).for_each(|d, &nv| {
                    *d = (nu - 2.0 * *d + nv).max(0.0);
                });
            });
        }
        Arith::Half | Arith::Single => {
            let round = if arith == Arith::Half {
                round_f16
            } else {
                round_f32
            };
            // TensorFlow evaluates `max(norm_u - 2 * matmul(U, V^T) + norm_v, 0)` one op at a
            // time, rounding each intermediate tensor to the working type.
            Zip::from(out.rows_mut()).and(&nu).for_each(|mut row, &nu| {
                Zip::from(&mut row).and(&nv).for_each(|d, &nv| {
                    let two_dot = round(2.0 * round(*d));
                    let value = round(round(nu - two_dot) + nv);
                    // Only float16 tiles fall back; float32 overflow is kept, as ADM keeps it.
                    if arith == Arith::Half && (value.is_nan() || value == f64::INFINITY) {
                        finite = false;
                    }
                    // TensorFlow's maximum propagates NaN and maps -inf to 0.
                    *d = if value.is_nan() {
                        value
                    } else {
                        value.max(0.0)
                    };
                });
            });
        }
    }
    finite
}

fn half_of<'p>(set: &'p Prepared<'_>) -> &'p Array2<f64> {
    set.half
        .as_ref()
        .expect("float16 features are prepared in AdmFp16 mode")
}

fn norms32_of<'p>(set: &'p Prepared<'_>) -> &'p Array1<f64> {
    set.norms32
        .as_ref()
        .expect("float32 norms are prepared in AdmFp16 mode")
}

/// Splits `0..n` into ranges of at most `block` that never cross a multiple of [`ADM_BATCH_SIZE`].
fn blocks(n: usize, block: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut tile_start = 0;
    while tile_start < n {
        let tile_end = (tile_start + ADM_BATCH_SIZE).min(n);
        let mut start = tile_start;
        while start < tile_end {
            let end = (start + block).min(tile_end);
            out.push(start..end);
            start = end;
        }
        tile_start = tile_end;
    }
    out
}

fn tile_of(range: &Range<usize>) -> usize {
    range.start / ADM_BATCH_SIZE
}

/// Tiles (row tile, column tile) that ADM computes in float32.
type FallbackTiles = HashSet<(usize, usize)>;

fn arith_for(
    precision: DistancePrecision,
    fallback: &FallbackTiles,
    rows: &Range<usize>,
    cols: &Range<usize>,
) -> Arith {
    match precision {
        DistancePrecision::Exact => Arith::Exact,
        DistancePrecision::AdmFp16 if fallback.contains(&(tile_of(rows), tile_of(cols))) => {
            Arith::Single
        }
        DistancePrecision::AdmFp16 => Arith::Half,
    }
}

/// Runs `pass` until no float16 tile produced a non-finite distance, moving each such tile to
/// float32 (exact mode never reruns).
fn with_fallback<T>(mut pass: impl FnMut(&FallbackTiles) -> (T, FallbackTiles)) -> T {
    let mut fallback = FallbackTiles::new();
    loop {
        let (result, failed) = pass(&fallback);
        if failed.is_empty() {
            return result;
        }
        fallback.extend(failed);
    }
}

fn radii_of(set: &Prepared<'_>, config: &ManifoldConfig) -> Array1<f64> {
    let k = config.k;
    let n = set.len();
    let row_blocks = blocks(n, config.block_size);
    with_fallback(|fallback| {
        let per_block: Vec<(Vec<f64>, FallbackTiles)> = row_blocks
            .par_iter()
            .map(|rows| {
                let mut smallest = vec![f64::INFINITY; rows.len() * (k + 1)];
                let mut failed = FallbackTiles::new();
                let mut dist = Array2::zeros((0, 0));
                for cols in &row_blocks {
                    let arith = arith_for(set.precision, fallback, rows, cols);
                    dist = reuse(dist, rows.len(), cols.len());
                    if !distance_block(set, rows.clone(), set, cols.clone(), arith, &mut dist) {
                        failed.insert((tile_of(rows), tile_of(cols)));
                    }
                    if arith == Arith::Exact {
                        // Self-distance is exactly 0, not GEMM round-off, so the (k+1)-th smallest
                        // including it is the k-th nearest other point.
                        for i in rows.start.max(cols.start)..rows.end.min(cols.end) {
                            dist[[i - rows.start, i - cols.start]] = 0.0;
                        }
                    }
                    for (r, row) in dist.rows().into_iter().enumerate() {
                        let best = &mut smallest[r * (k + 1)..(r + 1) * (k + 1)];
                        for &d in row {
                            push_smallest(best, d);
                        }
                    }
                }
                let radii = smallest.chunks(k + 1).map(|best| best[k]).collect();
                (radii, failed)
            })
            .collect();
        let mut failed = FallbackTiles::new();
        let mut radii = Vec::with_capacity(n);
        for (block_radii, block_failed) in per_block {
            radii.extend(block_radii);
            failed.extend(block_failed);
        }
        (Array1::from(radii), failed)
    })
}

/// Inserts `d` into the ascending buffer `best` of the smallest values seen, dropping the largest.
/// NaN (possible only in `AdmFp16` mode, and then discarded by the fallback) is ignored.
#[inline]
fn push_smallest(best: &mut [f64], d: f64) {
    let last = best.len() - 1;
    if d.is_nan() || d >= best[last] {
        return;
    }
    let mut pos = last;
    while pos > 0 && best[pos - 1] > d {
        best[pos] = best[pos - 1];
        pos -= 1;
    }
    best[pos] = d;
}

fn reuse(buffer: Array2<f64>, rows: usize, cols: usize) -> Array2<f64> {
    if buffer.dim() == (rows, cols) {
        buffer
    } else {
        Array2::zeros((rows, cols))
    }
}

/// Per-sample accumulators gathered over reference row blocks.
struct SampleAcc {
    /// Inside some reference ball (`<=`, ADM).
    in_ref_ball: Vec<bool>,
    /// Number of reference balls containing the sample (`<`, Naeem et al.).
    ball_count: Vec<u64>,
    failed: FallbackTiles,
}

impl SampleAcc {
    fn new(m: usize) -> Self {
        Self {
            in_ref_ball: vec![false; m],
            ball_count: vec![0; m],
            failed: FallbackTiles::new(),
        }
    }

    fn merge(mut self, other: Self) -> Self {
        for (a, b) in self.in_ref_ball.iter_mut().zip(other.in_ref_ball) {
            *a |= b;
        }
        for (a, b) in self.ball_count.iter_mut().zip(other.ball_count) {
            *a += b;
        }
        self.failed.extend(other.failed);
        self
    }
}

/// Per-reference results of one row block: (first row, inside some sample ball, nearest sample
/// distance).
type RefBlock = (usize, Vec<bool>, Vec<f64>);

fn cross_metrics(
    reference: &Prepared<'_>,
    ref_radii: &Array1<f64>,
    samples: &Prepared<'_>,
    sample_radii: &Array1<f64>,
    config: &ManifoldConfig,
) -> ManifoldContributions {
    let n = reference.len();
    let m = samples.len();
    let ref_blocks = blocks(n, config.block_size);
    let sample_blocks = blocks(m, config.block_size);
    // ADM's evaluate_pr puts the reference batch in the GEMM's rows (`U`), which fixes the
    // float16 rounding order of `norm_u - 2 u·v + norm_v`.
    let (samples_acc, ref_results) = with_fallback(|fallback| {
        let (acc, refs) = ref_blocks
            .par_iter()
            .fold(
                || (SampleAcc::new(m), Vec::<RefBlock>::new()),
                |(mut acc, mut refs), rows| {
                    let mut in_sample_ball = vec![false; rows.len()];
                    let mut nearest = vec![f64::INFINITY; rows.len()];
                    let mut dist = Array2::zeros((0, 0));
                    for cols in &sample_blocks {
                        let arith = arith_for(config.precision, fallback, rows, cols);
                        dist = reuse(dist, rows.len(), cols.len());
                        if !distance_block(
                            reference,
                            rows.clone(),
                            samples,
                            cols.clone(),
                            arith,
                            &mut dist,
                        ) {
                            acc.failed.insert((tile_of(rows), tile_of(cols)));
                        }
                        for (r, row) in dist.rows().into_iter().enumerate() {
                            let radius = ref_radii[rows.start + r];
                            for (c, &d) in row.iter().enumerate() {
                                let j = cols.start + c;
                                if d <= radius {
                                    acc.in_ref_ball[j] = true;
                                }
                                if d < radius {
                                    acc.ball_count[j] += 1;
                                }
                                if d <= sample_radii[j] {
                                    in_sample_ball[r] = true;
                                }
                                if d < nearest[r] {
                                    nearest[r] = d;
                                }
                            }
                        }
                    }
                    refs.push((rows.start, in_sample_ball, nearest));
                    (acc, refs)
                },
            )
            .reduce(
                || (SampleAcc::new(m), Vec::new()),
                |(a, mut ra), (b, rb)| {
                    ra.extend(rb);
                    (a.merge(b), ra)
                },
            );
        let failed = acc.failed.clone();
        ((acc, refs), failed)
    });

    let mut in_sample_ball = vec![false; n];
    let mut covered = vec![false; n];
    for (start, in_ball, nearest) in &ref_results {
        for (r, (&inside, &d)) in in_ball.iter().zip(nearest).enumerate() {
            in_sample_ball[start + r] = inside;
            covered[start + r] = d < ref_radii[start + r];
        }
    }
    ManifoldContributions {
        k: config.k,
        in_reference_ball: samples_acc.in_ref_ball,
        ball_count: samples_acc.ball_count,
        in_sample_ball,
        covered,
    }
}

/// Rounds to the nearest float32 (ties to even).
fn round_f32(x: f64) -> f64 {
    f64::from(x as f32)
}

/// Rounds to the nearest IEEE binary16 value (ties to even; overflow to ±inf), kept as f64.
/// Written out because a correctly rounded f64 → f16 step is needed: GEMM results carry more
/// bits than float32.
fn round_f16(x: f64) -> f64 {
    const MAX_FINITE_HALF: f64 = 65504.0;
    const MIN_NORMAL_HALF: f64 = 6.103_515_625e-5; // 2^-14
    if !x.is_finite() {
        return x;
    }
    let a = x.abs();
    // 65520 is halfway between 65504 and 2^16, and ties go to the even 2^16, i.e. infinity.
    if a >= MAX_FINITE_HALF + 16.0 {
        return f64::INFINITY.copysign(x);
    }
    let exponent = if a < MIN_NORMAL_HALF {
        -14
    } else {
        ((a.to_bits() >> 52) & 0x7ff) as i64 - 1023
    };
    // Power-of-two scalings are exact, so only round_ties_even rounds.
    let quantum = f64::from_bits(((exponent - 10 + 1023) as u64) << 52);
    ((a / quantum).round_ties_even() * quantum).copysign(x)
}

/// Float16 sum of float16 `values`, in the order of Eigen's vectorised inner-dimension reducer
/// that TensorFlow's CPU `reduce_sum` uses for half: for long rows a split in two halves at a
/// packet boundary of the flat index (leaf size 200 packets), then four interleaved 8-lane
/// accumulators, one 8-lane accumulator for the rest of whole packets, a scalar accumulator for the
/// tail, and a float32 horizontal sum of the packet lanes. `first` is the flat index of
/// `values[0]` in the reduced tensor.
fn eigen_half_sum(values: &[f64], first: usize) -> f64 {
    const PACKET: usize = 8;
    const LEAF: usize = 200;
    fn tree(values: &[f64], base: usize, first: usize, n: usize) -> f64 {
        if n > PACKET * LEAF {
            let split = PACKET * (first + n.div_ceil(2)).div_ceil(PACKET);
            let left = (split - first).min(n);
            let mut acc = round_f16(tree(values, base, first, left));
            if left < n {
                acc = round_f16(acc + tree(values, base, split, n - left));
            }
            acc
        } else {
            linear(&values[first - base..first - base + n])
        }
    }
    fn linear(v: &[f64]) -> f64 {
        let n = v.len();
        let add = |acc: &mut [f64; PACKET], chunk: &[f64]| {
            for (a, &x) in acc.iter_mut().zip(chunk) {
                *a = round_f16(*a + x);
            }
        };
        let mut p0 = [0.0; PACKET];
        let mut start = 0;
        if n >= 4 * PACKET {
            let (mut p1, mut p2, mut p3) = ([0.0; PACKET], [0.0; PACKET], [0.0; PACKET]);
            let end = n / (4 * PACKET) * (4 * PACKET);
            for j in (0..end).step_by(4 * PACKET) {
                add(&mut p0, &v[j..j + PACKET]);
                add(&mut p1, &v[j + PACKET..j + 2 * PACKET]);
                add(&mut p2, &v[j + 2 * PACKET..j + 3 * PACKET]);
                add(&mut p3, &v[j + 3 * PACKET..j + 4 * PACKET]);
            }
            add(&mut p0, &p1);
            add(&mut p0, &p2);
            add(&mut p0, &p3);
            start = end;
        }
        if start + PACKET <= n {
            let end = n / PACKET * PACKET;
            for j in (start..end).step_by(PACKET) {
                add(&mut p0, &v[j..j + PACKET]);
            }
            start = end;
        }
        let mut scalar = 0.0;
        for &x in &v[start..] {
            scalar = round_f16(scalar + x);
        }
        let f = p0.map(|x| x as f32);
        let lanes = [f[0] + f[4], f[1] + f[5], f[2] + f[6], f[3] + f[7]];
        let packet_sum = round_f16(f64::from((lanes[0] + lanes[2]) + (lanes[1] + lanes[3])));
        round_f16(scalar + packet_sum)
    }
    tree(values, first, first, values.len())
}

/// The exact-mode kernel: float32 GEMM distances, each with a rigorous bound on its difference
/// from the float64 value `max(0, (‖u‖² + ‖v‖²) − 2 u·v)` (norms and dot products summed in
/// float64), and float64 recomputation of just the pairs whose comparison that bound cannot
/// settle. Every decision is therefore the one the float64 distances give, at the cost of
/// float32 GEMMs.
///
/// The bound: for rows `u`, `v` of dimension `d`, a float32 dot product of (float32-rounded)
/// inputs in any summation order differs from the exact `u·v` by at most `γ(d+4) Σ|uᵢvᵢ|` with
/// `γ(n) = n u₃₂ / (1 − n u₃₂)`, the float64 one by at most `γ₆₄(d) Σ|uᵢvᵢ|`, and
/// `Σ|uᵢvᵢ| ≤ ‖u‖ ‖v‖`; the last float64 operations add a relative `2⁻⁵⁰` and float32 underflow
/// an absolute `d 2⁻⁸⁸`. Magnitudes are capped at 2⁴⁰ so nothing overflows float32; beyond
/// that the float64 GEMM path runs instead.
mod filtered {
    use std::ops::Range;
    use std::sync::Mutex;

    use ndarray::linalg::general_mat_mul;
    use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis, CowArray, Ix2};
    use rayon::prelude::*;

    use super::{push_smallest, ManifoldConfig, ManifoldContributions};
    use crate::linalg::{gram_symmetric, Element};

    const MAX_MAGNITUDE: f64 = 1_099_511_627_776.0; // 2^40

    /// A feature set with its float64 squared norms.
    pub(super) struct Set<'a, T: Element> {
        source: ArrayView2<'a, T>,
        norms: Vec<f64>,
        /// Upper bounds of the Euclidean norms.
        roots: Vec<f64>,
    }

    impl<'a, T: Element> Set<'a, T> {
        /// `None` when some magnitude exceeds the float32-safe range.
        pub(super) fn new(source: ArrayView2<'a, T>) -> Option<Self> {
            if source.iter().any(|&v| v.into().abs() > MAX_MAGNITUDE) {
                return None;
            }
            let norms: Vec<f64> = source
                .axis_iter(Axis(0))
                .into_par_iter()
                .map(|row| dot(row, row))
                .collect();
            let roots = norms.iter().map(|n| n.sqrt() * (1.0 + 1e-12)).collect();
            Some(Set {
                source,
                norms,
                roots,
            })
        }

        fn len(&self) -> usize {
            self.source.nrows()
        }

        /// Rows `rows` as row-major float32 (a view of row-major float32 input).
        fn block(&self, rows: Range<usize>) -> CowArray<'_, f32, Ix2> {
            let block = T::rows_f32(self.source.slice(s![rows, ..]));
            if block.is_standard_layout() {
                block
            } else {
                CowArray::from(block.as_standard_layout().into_owned())
            }
        }

        /// The float64 distance every decision is made against.
        fn exact(&self, i: usize, other: &Set<'_, T>, j: usize) -> f64 {
            ((self.norms[i] + other.norms[j]) - 2.0 * dot(self.source.row(i), other.source.row(j)))
                .max(0.0)
        }
    }

    /// `Σ aᵢbᵢ` in float64 in a fixed order (eight interleaved partial sums), so the value for a
    /// pair of rows never depends on where or when it is computed.
    fn dot<T: Element>(a: ArrayView1<'_, T>, b: ArrayView1<'_, T>) -> f64 {
        match (a.as_slice(), b.as_slice()) {
            (Some(a), Some(b)) => {
                let mut acc = [0.0f64; 8];
                let whole = a.len() / 8 * 8;
                for (ca, cb) in a[..whole].chunks_exact(8).zip(b[..whole].chunks_exact(8)) {
                    for l in 0..8 {
                        acc[l] += ca[l].into() * cb[l].into();
                    }
                }
                let mut tail = 0.0;
                for (&x, &y) in a[whole..].iter().zip(&b[whole..]) {
                    tail += x.into() * y.into();
                }
                ((acc[0] + acc[4]) + (acc[1] + acc[5]))
                    + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
                    + tail
            }
            _ => a
                .iter()
                .zip(b.iter())
                .fold(0.0, |sum, (&x, &y)| sum + x.into() * y.into()),
        }
    }

    /// Coefficients of the distance error bound for one feature dimension.
    #[derive(Clone, Copy)]
    struct Bound {
        relative: f64,
        rounding: f64,
        absolute: f64,
    }

    impl Bound {
        fn new(dim: usize) -> Self {
            let d = dim as f64;
            let gamma = |n: f64, unit: f64| n * unit / (1.0 - n * unit);
            Bound {
                relative: 2.0
                    * (gamma(d + 4.0, 2f64.powi(-24)) + gamma(d, 2f64.powi(-53)))
                    * (1.0 + 1e-6),
                rounding: 2f64.powi(-50),
                absolute: d * 2f64.powi(-88),
            }
        }

        /// Bounds `(lo, hi)` of the exact distance of rows with squared norms `ni`, `nj` and norm
        /// bounds `ri`, `rj`, given their float32 dot product `g`.
        #[inline]
        fn interval(self, ni: f64, nj: f64, ri: f64, rj: f64, g: f32) -> (f64, f64) {
            let sum = ni + nj;
            let estimate = sum - 2.0 * f64::from(g);
            let rr = ri * rj;
            let e = self.relative * rr + self.rounding * (sum + 2.0 * rr) + self.absolute;
            ((estimate - e).max(0.0), (estimate + e).max(0.0))
        }
    }

    fn ranges(n: usize, block: usize) -> Vec<Range<usize>> {
        (0..n.div_ceil(block))
            .map(|b| b * block..((b + 1) * block).min(n))
            .collect()
    }

    /// For one row: the k+1 smallest distance upper bounds seen, and every pair whose lower bound
    /// does not exceed the largest of them (the exact k+1 smallest are among those).
    #[derive(Clone)]
    struct Nearest {
        upper: Vec<f64>,
        candidates: Vec<(u32, f64)>,
        prune_at: usize,
    }

    impl Nearest {
        fn new(k: usize) -> Self {
            Nearest {
                upper: vec![f64::INFINITY; k + 1],
                candidates: Vec::new(),
                prune_at: 4 * (k + 1) + 16,
            }
        }

        fn threshold(&self) -> f64 {
            self.upper[self.upper.len() - 1]
        }

        #[inline]
        fn push(&mut self, j: usize, lo: f64, hi: f64) {
            push_smallest(&mut self.upper, hi);
            if lo <= self.threshold() {
                self.candidates.push((j as u32, lo));
                if self.candidates.len() >= self.prune_at {
                    self.prune();
                    self.prune_at = self.prune_at.max(2 * self.candidates.len());
                }
            }
        }

        fn prune(&mut self) {
            let t = self.threshold();
            self.candidates.retain(|&(_, lo)| lo <= t);
        }

        fn absorb(&mut self, other: Nearest) {
            for h in other.upper {
                push_smallest(&mut self.upper, h);
            }
            let t = self.threshold();
            self.candidates
                .extend(other.candidates.into_iter().filter(|&(_, lo)| lo <= t));
            if self.candidates.len() >= self.prune_at {
                self.prune();
                self.prune_at = self.prune_at.max(2 * self.candidates.len());
            }
        }

        /// The (k+1)-th smallest exact distance among the candidates.
        fn kth(mut self, exact: impl Fn(usize) -> f64) -> f64 {
            self.prune();
            let mut best = vec![f64::INFINITY; self.upper.len()];
            for &(j, _) in &self.candidates {
                push_smallest(&mut best, exact(j as usize));
            }
            best[best.len() - 1]
        }
    }

    /// Squared distance of each row to its k-th nearest other row (the (k+1)-th smallest with
    /// itself at distance 0), from one triangle of block pairs.
    pub(super) fn radii<T: Element>(set: &Set<'_, T>, config: &ManifoldConfig) -> Array1<f64> {
        let n = set.len();
        let k = config.k;
        let blocks = ranges(n, config.block_size);
        let bound = Bound::new(set.source.ncols());
        let tasks: Vec<(usize, usize)> = (0..blocks.len())
            .flat_map(|i| (i..blocks.len()).map(move |j| (i, j)))
            .collect();
        // Each block pair's findings are folded into its two row blocks' selections as soon as
        // it finishes, so memory stays one selection per row (the merged result does not depend
        // on the order of folding).
        let nearest: Vec<Mutex<Vec<Nearest>>> = blocks
            .iter()
            .map(|r| Mutex::new(vec![Nearest::new(k); r.len()]))
            .collect();
        let absorb = |block: usize, parts: Vec<Nearest>| {
            let mut selections = nearest[block].lock().unwrap_or_else(|e| e.into_inner());
            for (sel, part) in selections.iter_mut().zip(parts) {
                sel.absorb(part);
            }
        };
        tasks.par_iter().for_each(|&(bi, bj)| {
            let (ri, rj) = (blocks[bi].clone(), blocks[bj].clone());
            let xi = set.block(ri.clone());
            let mut g = Array2::<f32>::zeros((ri.len(), rj.len()));
            if bi == bj {
                gram_symmetric(xi.view(), g.view_mut()).expect("contiguous blocks");
            } else {
                let xj = set.block(rj.clone());
                general_mat_mul(1.0, &xi, &xj.t(), 0.0, &mut g);
            }
            let mut row_side = vec![Nearest::new(k); ri.len()];
            let mut col_side = if bi == bj {
                Vec::new()
            } else {
                vec![Nearest::new(k); rj.len()]
            };
            for (r, g_row) in g.rows().into_iter().enumerate() {
                let i = ri.start + r;
                let (ni, rti) = (set.norms[i], set.roots[i]);
                for (c, &gv) in g_row.iter().enumerate() {
                    let j = rj.start + c;
                    let (lo, hi) = if i == j {
                        (0.0, 0.0)
                    } else {
                        bound.interval(ni, set.norms[j], rti, set.roots[j], gv)
                    };
                    row_side[r].push(j, lo, hi);
                    if bi != bj {
                        col_side[c].push(i, lo, hi);
                    }
                }
            }
            drop(g);
            absorb(bi, row_side);
            if bi != bj {
                absorb(bj, col_side);
            }
        });
        let nearest: Vec<Nearest> = nearest
            .into_iter()
            .flat_map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let radii: Vec<f64> = nearest
            .into_par_iter()
            .enumerate()
            .map(|(i, sel)| sel.kth(|j| if j == i { 0.0 } else { set.exact(i, set, j) }))
            .collect();
        Array1::from(radii)
    }

    /// `Some(d <= t)` when the bounds settle it.
    #[inline]
    fn at_most(lo: f64, hi: f64, t: f64) -> Option<bool> {
        if hi <= t {
            Some(true)
        } else if lo > t {
            Some(false)
        } else {
            None
        }
    }

    /// `Some(d < t)` when the bounds settle it.
    #[inline]
    fn below(lo: f64, hi: f64, t: f64) -> Option<bool> {
        if hi < t {
            Some(true)
        } else if lo >= t {
            Some(false)
        } else {
            None
        }
    }

    /// One block pair's findings: per reference row (inside some sample ball, some sample
    /// strictly inside its own ball) and per sample (inside some reference ball, number of
    /// reference balls strictly containing it).
    struct CrossBlock {
        bi: usize,
        bj: usize,
        in_sample_ball: Vec<bool>,
        covered: Vec<bool>,
        in_ref_ball: Vec<bool>,
        ball_count: Vec<u32>,
    }

    /// Precision, recall, density and coverage from the reference × sample distances.
    pub(super) fn cross<T: Element>(
        reference: &Set<'_, T>,
        ref_radii: &Array1<f64>,
        samples: &Set<'_, T>,
        sample_radii: &Array1<f64>,
        config: &ManifoldConfig,
    ) -> ManifoldContributions {
        let (n, m) = (reference.len(), samples.len());
        let ref_blocks = ranges(n, config.block_size);
        let sample_blocks = ranges(m, config.block_size);
        let bound = Bound::new(reference.source.ncols());
        let tasks: Vec<(usize, usize)> = (0..ref_blocks.len())
            .flat_map(|i| (0..sample_blocks.len()).map(move |j| (i, j)))
            .collect();
        let blocks: Vec<CrossBlock> = tasks
            .par_iter()
            .map(|&(bi, bj)| {
                let (ri, rj) = (ref_blocks[bi].clone(), sample_blocks[bj].clone());
                let xi = reference.block(ri.clone());
                let yj = samples.block(rj.clone());
                let mut g = Array2::<f32>::zeros((ri.len(), rj.len()));
                general_mat_mul(1.0, &xi, &yj.t(), 0.0, &mut g);
                let mut out = CrossBlock {
                    bi,
                    bj,
                    in_sample_ball: vec![false; ri.len()],
                    covered: vec![false; ri.len()],
                    in_ref_ball: vec![false; rj.len()],
                    ball_count: vec![0; rj.len()],
                };
                for (r, g_row) in g.rows().into_iter().enumerate() {
                    let i = ri.start + r;
                    let (ni, rti, radius) = (reference.norms[i], reference.roots[i], ref_radii[i]);
                    for (c, &gv) in g_row.iter().enumerate() {
                        let j = rj.start + c;
                        let sample_radius = sample_radii[j];
                        let (lo, hi) =
                            bound.interval(ni, samples.norms[j], rti, samples.roots[j], gv);
                        if lo > radius && lo > sample_radius {
                            continue;
                        }
                        let (in_ref, strictly_in_ref, in_sample) = match (
                            at_most(lo, hi, radius),
                            below(lo, hi, radius),
                            at_most(lo, hi, sample_radius),
                        ) {
                            (Some(a), Some(b), Some(c)) => (a, b, c),
                            _ => {
                                let d = reference.exact(i, samples, j);
                                (d <= radius, d < radius, d <= sample_radius)
                            }
                        };
                        out.in_ref_ball[c] |= in_ref;
                        out.ball_count[c] += u32::from(strictly_in_ref);
                        out.covered[r] |= strictly_in_ref;
                        out.in_sample_ball[r] |= in_sample;
                    }
                }
                out
            })
            .collect();
        let mut in_sample_ball = vec![false; n];
        let mut covered = vec![false; n];
        let mut in_ref_ball = vec![false; m];
        let mut ball_count = vec![0u64; m];
        for b in blocks {
            let (r0, c0) = (ref_blocks[b.bi].start, sample_blocks[b.bj].start);
            for (r, (&inside, &cov)) in b.in_sample_ball.iter().zip(&b.covered).enumerate() {
                in_sample_ball[r0 + r] |= inside;
                covered[r0 + r] |= cov;
            }
            for (c, (&inside, &count)) in b.in_ref_ball.iter().zip(&b.ball_count).enumerate() {
                in_ref_ball[c0 + c] |= inside;
                ball_count[c0 + c] += u64::from(count);
            }
        }
        ManifoldContributions {
            k: config.k,
            in_reference_ball: in_ref_ball,
            ball_count,
            in_sample_ball,
            covered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, ShapeBuilder};

    fn brute_force(
        reference: &Array2<f64>,
        samples: &Array2<f64>,
        k: usize,
    ) -> (ManifoldMetrics, Array1<f64>) {
        let d = |a: ndarray::ArrayView1<f64>, b: ndarray::ArrayView1<f64>| {
            a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>()
        };
        let radii = |set: &Array2<f64>| {
            Array1::from_iter(set.rows().into_iter().enumerate().map(|(i, u)| {
                let mut ds: Vec<f64> = set
                    .rows()
                    .into_iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, v)| d(u, v))
                    .collect();
                ds.sort_by(f64::total_cmp);
                ds[k - 1]
            }))
        };
        let rr = radii(reference);
        let rs = radii(samples);
        let (n, m) = (reference.nrows(), samples.nrows());
        let dist = Array2::from_shape_fn((n, m), |(i, j)| d(reference.row(i), samples.row(j)));
        let precision = (0..m)
            .filter(|&j| (0..n).any(|i| dist[[i, j]] <= rr[i]))
            .count() as f64
            / m as f64;
        let recall = (0..n)
            .filter(|&i| (0..m).any(|j| dist[[i, j]] <= rs[j]))
            .count() as f64
            / n as f64;
        let density = (0..m)
            .map(|j| (0..n).filter(|&i| dist[[i, j]] < rr[i]).count())
            .sum::<usize>() as f64
            / (k * m) as f64;
        let coverage = (0..n)
            .filter(|&i| (0..m).map(|j| dist[[i, j]]).fold(f64::INFINITY, f64::min) < rr[i])
            .count() as f64
            / n as f64;
        (
            ManifoldMetrics {
                precision,
                recall,
                density,
                coverage,
            },
            rr,
        )
    }

    fn pseudo_random(rows: usize, cols: usize, seed: u64, shift: f64) -> Array2<f64> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Array2::from_shape_fn((rows, cols), |_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) + shift
        })
    }

    #[test]
    fn matches_brute_force_for_any_block_size() {
        let reference = pseudo_random(70, 5, 1, 0.0);
        let samples = pseudo_random(90, 5, 2, 0.15);
        let radii_agree = |radii: &Array1<f64>, expected: &Array1<f64>| {
            for (a, b) in radii.iter().zip(expected) {
                assert!((a - b).abs() <= 1e-12 * b.max(1.0));
            }
        };
        assert_matches_brute_force(
            &reference,
            &samples,
            &[1, 3, 5],
            &[1, 7, 64, 1000],
            radii_agree,
        );
    }

    /// Checks the metrics (exactly) and the radii (with `radii_agree`) of every `k` and block
    /// size against [`brute_force`].
    fn assert_matches_brute_force(
        reference: &Array2<f64>,
        samples: &Array2<f64>,
        ks: &[usize],
        block_sizes: &[usize],
        radii_agree: impl Fn(&Array1<f64>, &Array1<f64>),
    ) {
        for &k in ks {
            let (expected, expected_radii) = brute_force(reference, samples, k);
            for &block_size in block_sizes {
                let config = ManifoldConfig {
                    k,
                    block_size,
                    ..Default::default()
                };
                let got = manifold_metrics(reference.view(), samples.view(), &config).unwrap();
                assert_eq!(got, expected, "k={k} block_size={block_size}");
                let radii = manifold_radii(reference.view(), &config).unwrap();
                radii_agree(&radii, &expected_radii);
            }
        }
    }

    #[test]
    fn exact_ties_follow_the_float64_comparisons() {
        // Small integers: every distance is an exact integer, so radii tie with many distances
        // and the float32 bounds can settle none of those comparisons on their own.
        let lattice = |rows: usize, seed: u64| {
            let mut state = seed;
            Array2::from_shape_fn((rows, 16), |_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 3) as f64
            })
        };
        let reference = lattice(120, 11);
        let samples = lattice(100, 12);
        assert_matches_brute_force(
            &reference,
            &samples,
            &[1, 3],
            &[7, 1024],
            |radii, expected| assert_eq!(radii, expected),
        );
    }

    #[test]
    fn float64_fallback_for_large_magnitudes_agrees() {
        // Beyond 2^40 the float32 filter is not used; scaling by a power of two scales every
        // squared distance exactly, so both paths must make the same decisions.
        let reference = pseudo_random(60, 6, 21, 0.0);
        let samples = pseudo_random(50, 6, 22, 0.1);
        let config = ManifoldConfig::default();
        let filtered = manifold_metrics(reference.view(), samples.view(), &config).unwrap();
        let scale = 2f64.powi(45);
        let fallback = manifold_metrics(
            (&reference * scale).view(),
            (&samples * scale).view(),
            &config,
        )
        .unwrap();
        assert_eq!(filtered, fallback);
    }

    #[test]
    fn contributions_are_each_rows_decision() {
        let reference = pseudo_random(40, 4, 5, 0.0);
        let samples = pseudo_random(50, 4, 6, 0.2);
        let d = |a: ndarray::ArrayView1<f64>, b: ndarray::ArrayView1<f64>| {
            a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>()
        };
        let (_, ref_radii) = brute_force(&reference, &samples, 3);
        let (_, sample_radii) = brute_force(&samples, &reference, 3);
        for precision in [DistancePrecision::Exact, DistancePrecision::AdmFp16] {
            for block_size in [7, 1000] {
                let config = ManifoldConfig {
                    k: 3,
                    block_size,
                    precision,
                };
                let parts =
                    manifold_contributions(reference.view(), samples.view(), &config).unwrap();
                assert_eq!(
                    parts.metrics(),
                    manifold_metrics(reference.view(), samples.view(), &config).unwrap()
                );
                if precision == DistancePrecision::AdmFp16 {
                    continue;
                }
                for (j, s) in samples.rows().into_iter().enumerate() {
                    let dist: Vec<f64> = reference.rows().into_iter().map(|r| d(r, s)).collect();
                    let inside = (0..40).any(|i| dist[i] <= ref_radii[i]);
                    let count = (0..40).filter(|&i| dist[i] < ref_radii[i]).count() as u64;
                    assert_eq!(parts.in_reference_ball[j], inside);
                    assert_eq!(parts.ball_count[j], count);
                }
                for (i, r) in reference.rows().into_iter().enumerate() {
                    let dist: Vec<f64> = samples.rows().into_iter().map(|s| d(r, s)).collect();
                    let inside = (0..50).any(|j| dist[j] <= sample_radii[j]);
                    let nearest = dist.iter().copied().fold(f64::INFINITY, f64::min);
                    assert_eq!(parts.in_sample_ball[i], inside);
                    assert_eq!(parts.covered[i], nearest < ref_radii[i]);
                }
            }
        }
    }

    #[test]
    fn column_major_input_gives_the_same_result() {
        let reference = pseudo_random(50, 7, 31, 0.0);
        let samples = pseudo_random(40, 7, 32, 0.1);
        let config = ManifoldConfig {
            block_size: 16,
            ..Default::default()
        };
        let expected = manifold_metrics(reference.view(), samples.view(), &config).unwrap();
        let mut reference_f = Array2::<f32>::zeros((50, 7).f());
        reference_f.assign(&reference.mapv(|v| v as f32));
        let mut samples_f = Array2::<f32>::zeros((40, 7).f());
        samples_f.assign(&samples.mapv(|v| v as f32));
        let expected32 = manifold_metrics(
            reference.mapv(|v| v as f32).view(),
            samples.mapv(|v| v as f32).view(),
            &config,
        )
        .unwrap();
        let got32 = manifold_metrics(reference_f.view(), samples_f.view(), &config).unwrap();
        assert_eq!(got32, expected32);
        let mut reference_f64 = Array2::<f64>::zeros((50, 7).f());
        reference_f64.assign(&reference);
        let got = manifold_metrics(reference_f64.view(), samples.view(), &config).unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn identical_sets_are_perfect() {
        let x = pseudo_random(40, 3, 9, 0.0);
        let got = manifold_metrics(x.view(), x.view(), &ManifoldConfig::default()).unwrap();
        assert_eq!(got.precision, 1.0);
        assert_eq!(got.recall, 1.0);
        assert_eq!(got.coverage, 1.0);
    }

    #[test]
    fn f16_rounding() {
        assert_eq!(round_f16(1.0), 1.0);
        assert_eq!(round_f16(1.0 + 1.0 / 2048.0), 1.0); // tie to even
        assert_eq!(round_f16(1.0 + 3.0 / 2048.0), 1.0 + 2.0 / 1024.0); // tie to even (up)
        assert_eq!(round_f16(1.0 + 1.0 / 2048.0 + 1e-12), 1.0 + 1.0 / 1024.0);
        assert_eq!(round_f16(-163.4), -163.375);
        assert_eq!(round_f16(65504.0), 65504.0);
        assert_eq!(round_f16(65519.9), 65504.0);
        assert_eq!(round_f16(65520.0), f64::INFINITY);
        assert_eq!(round_f16(-1e6), f64::NEG_INFINITY);
        assert_eq!(round_f16(2f64.powi(-24)), 2f64.powi(-24));
        assert_eq!(round_f16(2f64.powi(-26)), 0.0);
        assert_eq!(round_f16(3.0 * 2f64.powi(-26)), 2f64.powi(-24));
        assert_eq!(round_f16(0.0), 0.0);
    }

    #[test]
    fn half_sum_of_small_integers_is_exact() {
        let v: Vec<f64> = (0..301).map(|i| f64::from(i % 5)).collect();
        let exact: f64 = v.iter().sum();
        assert_eq!(eigen_half_sum(&v, 0), exact);
        let long: Vec<f64> = vec![1.0; 2048];
        // 1024 per half fits the float16 integer range; the final 2048 is representable.
        assert_eq!(eigen_half_sum(&long, 0), 2048.0);
    }

    #[test]
    fn fp16_overflow_falls_back_to_float32() {
        // Squared norms of ~1e5 overflow float16; ADM recomputes such tiles in float32.
        let reference = pseudo_random(30, 4, 3, 0.0).mapv(|v| v * 200.0);
        let samples = pseudo_random(30, 4, 4, 0.1).mapv(|v| v * 200.0);
        let config = ManifoldConfig {
            precision: DistancePrecision::AdmFp16,
            ..Default::default()
        };
        let got = manifold_metrics(reference.view(), samples.view(), &config).unwrap();
        let exact =
            manifold_metrics(reference.view(), samples.view(), &ManifoldConfig::default()).unwrap();
        assert!(got.precision.is_finite() && got.recall.is_finite());
        assert!((got.precision - exact.precision).abs() <= 2.0 / 30.0);
        assert!((got.recall - exact.recall).abs() <= 2.0 / 30.0);

        // Beyond float32 range the fallback overflows too; the result stays a finite fraction.
        let mut huge = reference.clone();
        huge[[0, 0]] = 1e200;
        let got = manifold_metrics(huge.view(), samples.view(), &config).unwrap();
        assert!(got.precision.is_finite() && got.recall.is_finite());
        assert!(got.density.is_finite() && got.coverage.is_finite());
    }

    #[test]
    fn errors_are_typed() {
        let good = pseudo_random(10, 3, 5, 0.0);
        let config = ManifoldConfig::default();
        let narrow = pseudo_random(10, 2, 6, 0.0);
        assert!(matches!(
            manifold_metrics(good.view(), narrow.view(), &config),
            Err(MetricsError::DimensionMismatch {
                left: 3,
                right: 2,
                ..
            })
        ));
        let few = pseudo_random(3, 3, 7, 0.0);
        assert!(matches!(
            manifold_metrics(good.view(), few.view(), &config),
            Err(MetricsError::KTooLarge { k: 3, n: 3 })
        ));
        let one = array![[1.0, 2.0, 3.0]];
        assert!(matches!(
            manifold_metrics(one.view(), good.view(), &config),
            Err(MetricsError::TooFewSamples { got: 1, .. })
        ));
        let mut bad = good.clone();
        bad[[4, 1]] = f64::NAN;
        bad[[6, 0]] = f64::INFINITY;
        assert!(matches!(
            manifold_metrics(good.view(), bad.view(), &config),
            Err(MetricsError::NonFinite { rows: 2, .. })
        ));
        let zero_k = ManifoldConfig { k: 0, ..config };
        assert!(matches!(
            manifold_radii(good.view(), &zero_k),
            Err(MetricsError::InvalidArgument(_))
        ));
        let zero_block = ManifoldConfig {
            block_size: 0,
            ..config
        };
        assert!(matches!(
            manifold_metrics(good.view(), good.view(), &zero_block),
            Err(MetricsError::InvalidArgument(_))
        ));
        let mut bad32 = good.mapv(|v| v as f32);
        bad32[[0, 0]] = f32::NAN;
        assert!(matches!(
            manifold_metrics(bad32.view(), bad32.view(), &config),
            Err(MetricsError::NonFinite { rows: 1, .. })
        ));
    }
}
