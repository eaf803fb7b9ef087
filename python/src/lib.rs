//! `llamagen_metrics`: the metric core of llamagen-eval (the `llamagen-metrics` crate) as a Python
//! module, numpy arrays in, numbers out, for training loops and notebooks.
//!
//! Each function checks its arguments, releases the GIL and runs the crate's kernel on views of
//! the caller's arrays. Every error the crate reports becomes a `ValueError` with the crate's
//! message (`numpy.linalg.LinAlgError`, itself a `ValueError`, for a failed factorisation); no
//! input makes the module panic.

mod budget;
mod input;
mod streaming;

use metrics::codebook::codebook_usage as usage_of;
use metrics::error::ensure_same_dim;
use metrics::frechet;
use metrics::image_quality::{self, SsimMode};
use metrics::inception_score::{inception_score as score_of, Splits, TORCH_FIDELITY_SEED};
use metrics::kid::{
    kernel_inception_distance, KidConfig, DEFAULT_SEED, DEFAULT_SUBSETS, DEFAULT_SUBSET_SIZE,
};
use metrics::manifold::{self, DistancePrecision, ManifoldConfig};
use metrics::stats::GaussianStats;
use metrics::MetricsError;
use ndarray::{Array2, ArrayView2};
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyDict};

use budget::{bytes_of, ensure_fits, guarded, total};
use input::{f64_matrix, f64_vector, float_matrix, image_view, images, FloatPair, FloatView};

pyo3::import_exception!(numpy.linalg, LinAlgError);

/// `(mu, sigma)` as numpy arrays.
pub(crate) type MeanCov<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray2<f64>>);

/// The crate's error as the Python exception a numpy user expects, with the crate's message.
pub(crate) fn to_py(err: MetricsError) -> PyErr {
    match err {
        MetricsError::Linalg(_) => LinAlgError::new_err(err.to_string()),
        _ => PyValueError::new_err(err.to_string()),
    }
}

/// Fréchet distance between two Gaussians, ``||mu1 - mu2||² + tr(S1 + S2 - 2 sqrt(S1 S2))``:
/// the FID of two sets' statistics.
///
/// Equals pytorch-fid's ``calculate_frechet_distance(mu1, sigma1, mu2, sigma2)`` and the ADM
/// evaluator's ``FIDStatistics.frechet_distance`` (to 1e-6 relative or better), computed through a
/// Cholesky factor and a symmetric eigensolve instead of scipy's ``sqrtm``. Inputs are read as
/// float64; a covariance that is not symmetric (beyond float32 round-off) is a ``ValueError``.
#[pyfunction]
#[pyo3(signature = (mu1, sigma1, mu2, sigma2))]
fn frechet_distance(
    py: Python<'_>,
    mu1: &Bound<'_, PyAny>,
    sigma1: &Bound<'_, PyAny>,
    mu2: &Bound<'_, PyAny>,
    sigma2: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    guarded("frechet_distance", || {
        let a = GaussianStats::new(f64_vector("mu1", mu1)?, covariance("sigma1", sigma1)?)
            .map_err(to_py)?;
        let b = GaussianStats::new(f64_vector("mu2", mu2)?, covariance("sigma2", sigma2)?)
            .map_err(to_py)?;
        ensure_fits(
            "sigma1",
            "the Fréchet distance's working matrices",
            bytes_of(&[FRECHET_MATRICES, a.dim(), a.dim()], 8),
            "",
        )?;
        py.detach(|| frechet::frechet_distance(&a, &b))
            .map_err(to_py)
    })
}

/// How many dim x dim float64 matrices the Fréchet distance holds at its peak besides the two
/// covariances (Cholesky factor, congruence, eigensolver copy and workspace).
const FRECHET_MATRICES: usize = 5;

/// How many dim x dim float64 matrices the statistics of one feature set hold at their peak (the
/// sum of outer products and the covariance).
const STATISTICS_MATRICES: usize = 2;

/// Fails with `MemoryError` when the covariances of `features` (`rows` x `dim`) and the
/// `matrices` dim x dim working matrices exceed the budget; the hint names a width far above
/// the sample count.
fn ensure_covariance_fits(what: &str, rows: usize, dim: usize, matrices: usize) -> PyResult<()> {
    let hint = if dim > rows {
        format!(
            "the {dim} columns are far more than the {rows} rows: such a covariance is singular \
             and still needs {dim} x {dim} floats; reduce the width (e.g. a projection) or \
             give more samples"
        )
    } else {
        String::new()
    };
    ensure_fits(
        what,
        &format!("{matrices} covariance-sized matrices of {dim} x {dim} float64"),
        bytes_of(&[matrices, dim, dim], 8),
        &hint,
    )
}

/// A covariance matrix as float64, refused when it is not symmetric: the kernel reads one triangle,
/// so a matrix that is not a covariance would otherwise give a number without complaint. The
/// tolerance admits float32 round-off.
fn covariance(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Array2<f64>> {
    let sigma = f64_matrix(what, obj)?;
    if let Some((i, v)) = sigma
        .diag()
        .iter()
        .enumerate()
        .find(|&(_, &v)| v < 0.0)
        .map(|(i, &v)| (i, v))
    {
        let scale = sigma.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // Round-off of a one-pass covariance of a constant feature may dip just below zero.
        if v < -1e-9 * scale {
            return Err(PyValueError::new_err(format!(
                "{what}: a covariance matrix has no negative variances, but {what}[{i}, {i}] is \
                 {v:e}; it is not positive semi-definite"
            )));
        }
    }
    if sigma.is_square() {
        let scale = sigma.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let asymmetry = asymmetry(&sigma);
        if asymmetry > 1e-5 * scale {
            return Err(PyValueError::new_err(format!(
                "{what}: a covariance matrix must be symmetric, but |S - Sᵀ| reaches {asymmetry:e} \
                 (largest |S| is {scale:e})"
            )));
        }
    }
    Ok(sigma)
}

/// Largest `|S[i, j] - S[j, i]|` of a square matrix, compared tile by tile so that the transposed
/// reads stay in cache.
fn asymmetry(s: &Array2<f64>) -> f64 {
    const TILE: usize = 64;
    let n = s.nrows();
    let mut worst = 0.0f64;
    for bi in (0..n).step_by(TILE) {
        for bj in (bi..n).step_by(TILE) {
            for i in bi..(bi + TILE).min(n) {
                for j in bj.max(i + 1)..(bj + TILE).min(n) {
                    worst = worst.max((s[[i, j]] - s[[j, i]]).abs());
                }
            }
        }
    }
    worst
}

fn stats_of(py: Python<'_>, view: &FloatView<'_>) -> PyResult<GaussianStats> {
    py.detach(|| match view {
        FloatView::F32(v) => GaussianStats::from_features_f32(v.view()),
        FloatView::F64(v) => GaussianStats::from_features(v.view()),
    })
    .map_err(to_py)
}

/// ``(mu, sigma)`` of a feature matrix (rows are samples): ``numpy.mean(x, axis=0)`` and
/// ``numpy.cov(x, rowvar=False)`` (N-1 denominator), in float64, as pytorch-fid's
/// ``calculate_activation_statistics`` and ADM's ``FIDStatistics`` compute them.
///
/// float32 features are widened a block of rows at a time; no float64 copy of the matrix is made.
#[pyfunction]
#[pyo3(signature = (features))]
fn statistics<'py>(py: Python<'py>, features: &Bound<'py, PyAny>) -> PyResult<MeanCov<'py>> {
    guarded("statistics", || {
        let features = float_matrix("features", features)?;
        let (rows, dim) = features.shape();
        ensure_covariance_fits("features", rows, dim, STATISTICS_MATRICES)?;
        let stats = stats_of(py, &features.view())?;
        Ok((stats.mu.into_pyarray(py), stats.sigma.into_pyarray(py)))
    })
}

/// FID between two feature sets (rows are samples): ``frechet_distance`` of their
/// ``statistics``. Equals pytorch-fid's ``calculate_frechet_distance`` on ``numpy.mean`` /
/// ``numpy.cov`` of the same features.
#[pyfunction]
#[pyo3(signature = (features_a, features_b))]
fn fid(
    py: Python<'_>,
    features_a: &Bound<'_, PyAny>,
    features_b: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    guarded("fid", || {
        let a = float_matrix("features_a", features_a)?;
        let b = float_matrix("features_b", features_b)?;
        let ((rows_a, dim_a), (rows_b, dim_b)) = (a.shape(), b.shape());
        ensure_same_dim("FID", dim_a, dim_b).map_err(to_py)?;
        // Both covariances, the second set's sum of outer products, then the distance's matrices.
        let matrices = 2 + STATISTICS_MATRICES + FRECHET_MATRICES;
        let (what, rows) = if rows_a <= rows_b {
            ("features_a", rows_a)
        } else {
            ("features_b", rows_b)
        };
        ensure_covariance_fits(what, rows, dim_a, matrices)?;
        let (a, b) = (a.view(), b.view());
        let (a, b) = (stats_of(py, &a)?, stats_of(py, &b)?);
        py.detach(|| frechet::frechet_distance(&a, &b))
            .map_err(to_py)
    })
}

/// Inception Score ``(mean, std)`` from Inception logits (rows are samples, columns classes).
///
/// ``splits="adm"`` is the ADM evaluator's ``compute_inception_score`` (the number papers report):
/// consecutive splits of ``split_size`` rows (default 5000), the last one possibly shorter.
/// ``splits="torch-fidelity"`` is torch-fidelity's ``isc_features_to_metric``: the rows shuffled
/// by ``numpy.random.RandomState(seed).permutation`` (``shuffle=True``, ``seed=2020`` by default),
/// then ``num_splits`` (default 10) equal splits. ``std`` is ``numpy.std`` over the splits.
///
/// Logits are used as float32 (float64 input is rounded), as the Inception network outputs them;
/// the softmax and the KL terms are computed in float64.
#[pyfunction]
#[pyo3(signature = (logits, splits = "adm", *, split_size = None, num_splits = None, shuffle = None, seed = None))]
fn inception_score(
    py: Python<'_>,
    logits: &Bound<'_, PyAny>,
    splits: &str,
    split_size: Option<usize>,
    num_splits: Option<usize>,
    shuffle: Option<bool>,
    seed: Option<u32>,
) -> PyResult<(f64, f64)> {
    guarded("inception_score", || {
        let mode = match splits {
            "adm" => {
                if num_splits.is_some() || shuffle.is_some() || seed.is_some() {
                    return Err(PyValueError::new_err(
                    "inception_score: num_splits, shuffle and seed belong to splits=\"torch-fidelity\"",
                ));
                }
                let split_size = split_size.unwrap_or(5000);
                Splits::Adm { split_size }
            }
            "torch-fidelity" => {
                if split_size.is_some() {
                    return Err(PyValueError::new_err(
                        "inception_score: split_size belongs to splits=\"adm\"",
                    ));
                }
                Splits::Equal {
                    splits: num_splits.unwrap_or(10),
                    shuffle: shuffle
                        .unwrap_or(true)
                        .then_some(seed.unwrap_or(TORCH_FIDELITY_SEED)),
                }
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "inception_score: splits must be \"adm\" or \"torch-fidelity\", got {other:?}"
                )))
            }
        };
        let logits = float_matrix("logits", logits)?;
        let (rows, classes) = logits.shape();
        // A float32 copy, the float64 log-probabilities and their shuffled copy.
        ensure_fits(
            "logits",
            "the log-probabilities",
            bytes_of(&[rows, classes], 4 + 8 + 8),
            "",
        )?;
        let logits = logits.view_f32();
        let score = py.detach(|| score_of(logits.view(), mode)).map_err(to_py)?;
        Ok((score.mean, score.std))
    })
}

/// Improved precision and recall (Kynkäänniemi et al.) with density and coverage (Naeem et al.)
/// of ``samples`` against ``reference`` (rows are feature vectors), as a dict with the keys
/// ``precision``, ``recall``, ``density`` and ``coverage``.
///
/// The ADM evaluator's ``ManifoldEstimator`` semantics with neighbourhood ``k``: radii are squared
/// distances to the k-th nearest other point. ``distance="exact"`` decides every comparison as
/// float64 distances would (torch-fidelity's ``prc`` gives the same precision and recall);
/// ``distance="adm-fp16"`` reproduces ADM's float16 distance arithmetic, which published ADM
/// numbers were computed with.
#[pyfunction]
#[pyo3(signature = (samples, reference, k = 3, distance = "exact"))]
fn precision_recall<'py>(
    py: Python<'py>,
    samples: &Bound<'py, PyAny>,
    reference: &Bound<'py, PyAny>,
    k: usize,
    distance: &str,
) -> PyResult<Bound<'py, PyDict>> {
    guarded("precision_recall", || {
        let precision = match distance {
            "exact" => DistancePrecision::Exact,
            "adm-fp16" => DistancePrecision::AdmFp16,
            other => {
                return Err(PyValueError::new_err(format!(
                    "precision_recall: distance must be \"exact\" or \"adm-fp16\", got {other:?}"
                )))
            }
        };
        let config = ManifoldConfig {
            k,
            precision,
            ..Default::default()
        };
        let m = samples_against_reference(
            py,
            samples,
            reference,
            |pair| {
                let (rows_r, rows_s, dim) = pair.shape();
                if k < rows_r.min(rows_s) {
                    // Radii and the k + 1 nearest distances of every row, twice over.
                    ensure_fits(
                        "k",
                        &format!("the {} nearest neighbours of every row", k + 1),
                        bytes_of(&[rows_r + rows_s, k + 2, 16], 1),
                        "",
                    )?;
                }
                ensure_distances_finite(pair, dim)
            },
            |r, s| manifold::manifold_metrics(r, s, &config),
            |r, s| manifold::manifold_metrics(r, s, &config),
        )?;
        [
            ("precision", m.precision),
            ("recall", m.recall),
            ("density", m.density),
            ("coverage", m.coverage),
        ]
        .into_py_dict(py)
    })
}

/// Refuses feature values so large that a squared distance between two rows could overflow the
/// arithmetic it is computed in (float32 for float32 sets, else float64): `d (2 max|x|)²` must
/// stay finite. Precision, recall, density and coverage do not change when both sets are divided
/// by one power of two, which is the remedy the message suggests.
fn ensure_distances_finite(pair: &FloatPair<'_>, dim: usize) -> PyResult<()> {
    let largest =
        |values: &mut dyn Iterator<Item = f64>| values.fold(0.0f64, |m, v| m.max(v.abs()));
    let (max, kind, limit) = match pair {
        FloatPair::F32(r, s) => (
            [
                largest(&mut r.iter().map(|&v| f64::from(v))),
                largest(&mut s.iter().map(|&v| f64::from(v))),
            ],
            "float32",
            f64::from(f32::MAX),
        ),
        FloatPair::F64(r, s) => (
            [
                largest(&mut r.iter().copied()),
                largest(&mut s.iter().copied()),
            ],
            "float64",
            f64::MAX,
        ),
    };
    let bound = (limit / (4.0 * dim.max(1) as f64)).sqrt();
    for (what, value) in [("reference", max[0]), ("samples", max[1])] {
        // NaN and infinity are left to the kernel, which names the rows.
        if value.is_finite() && value > bound {
            return Err(PyValueError::new_err(format!(
                "{what}: values up to {value:e} make squared distances overflow {kind} (|x| must \
                 stay below {bound:e} with {dim} dimensions); precision, recall, density and \
                 coverage are unchanged when both sets are divided by one power of two"
            )));
        }
    }
    Ok(())
}

/// Kernel Inception Distance ``(mean, std)`` of ``samples`` (generated) against ``reference``
/// (real), as torch-fidelity 0.4.0's ``kid_features_to_metric(samples, reference, ...)``: the
/// unbiased MMD² with the kernel ``(x·y / d + 1)³`` over ``subsets`` random subset pairs of
/// ``subset_size`` rows, drawn with ``numpy.random.RandomState(seed)`` exactly as torch-fidelity
/// draws them (defaults 100, 1000, 2020). ``std`` is ``numpy.std`` over the subsets.
///
/// torch-fidelity refuses a ``subset_size`` larger than a set; here it is capped at the smaller
/// set's size. Sums are in float64.
#[pyfunction]
#[pyo3(signature = (samples, reference, subsets = DEFAULT_SUBSETS, subset_size = DEFAULT_SUBSET_SIZE, seed = DEFAULT_SEED))]
fn kid(
    py: Python<'_>,
    samples: &Bound<'_, PyAny>,
    reference: &Bound<'_, PyAny>,
    subsets: usize,
    subset_size: usize,
    seed: u32,
) -> PyResult<(f64, f64)> {
    guarded("kid", || {
        let config = KidConfig {
            subsets,
            subset_size,
            seed,
        };
        let result = samples_against_reference(
            py,
            samples,
            reference,
            |pair| {
                let (rows_r, rows_s, _) = pair.shape();
                let m = subset_size.min(rows_r).min(rows_s);
                // The drawn row indices of every subset of both sets, each set's subset membership
                // matrix (at most every row by every subset), and the per-subset sums.
                let union_rows = |rows: usize| m.saturating_mul(subsets).min(rows);
                let need = total(&[
                    bytes_of(&[2, subsets, m.saturating_add(3)], 8),
                    bytes_of(&[union_rows(rows_r) + union_rows(rows_s), subsets], 8),
                    bytes_of(&[8, subsets], 8),
                ]);
                ensure_fits(
                    "subsets",
                    &format!("{subsets} subsets of {m} rows"),
                    need,
                    "",
                )
            },
            |r, s| kernel_inception_distance(r, s, &config),
            |r, s| kernel_inception_distance(r, s, &config),
        )?;
        Ok((result.mean, result.std))
    })
}

/// A feature metric of `samples` against `reference`, computed without the GIL: its float32
/// entry point `on_f32` when both are float32, else `on_f64` (a float32 set widened).
fn samples_against_reference<T: Send>(
    py: Python<'_>,
    samples: &Bound<'_, PyAny>,
    reference: &Bound<'_, PyAny>,
    check: impl FnOnce(&FloatPair<'_>) -> PyResult<()>,
    on_f32: impl FnOnce(ArrayView2<'_, f32>, ArrayView2<'_, f32>) -> metrics::Result<T> + Send,
    on_f64: impl FnOnce(ArrayView2<'_, f64>, ArrayView2<'_, f64>) -> metrics::Result<T> + Send,
) -> PyResult<T> {
    let samples = float_matrix("samples", samples)?;
    let reference = float_matrix("reference", reference)?;
    // A float32 set next to a float64 one is widened (a copy).
    for (what, set, other) in [
        ("samples", &samples, &reference),
        ("reference", &reference, &samples),
    ] {
        if set.is_f32() && !other.is_f32() {
            let (rows, dim) = set.shape();
            ensure_fits(
                what,
                "a float64 copy of the float32 set",
                bytes_of(&[rows, dim], 8),
                "",
            )?;
        }
    }
    let pair = FloatPair::of(&reference, &samples);
    check(&pair)?;
    py.detach(|| match &pair {
        FloatPair::F32(r, s) => on_f32(r.view(), s.view()),
        FloatPair::F64(r, s) => on_f64(r.view(), s.view()),
    })
    .map_err(to_py)
}

/// The mean over the batch, or the per-image values as a float64 array.
fn batch_result(
    py: Python<'_>,
    mean: f64,
    per_image: Vec<f64>,
    want_per_image: bool,
) -> PyResult<Py<PyAny>> {
    Ok(if want_per_image {
        per_image.into_pyarray(py).into_any().unbind()
    } else {
        mean.into_pyobject(py)?.into_any().unbind()
    })
}

/// PSNR in dB of uint8 image batches ``a`` and ``b`` of shape ``(N, H, W, C)``, image by image, as
/// scikit-image's ``peak_signal_noise_ratio(a[i], b[i], data_range=255)``.
///
/// Returns the mean over the images, or with ``per_image=True`` the array of per-image values.
/// An identical pair has infinite PSNR; such pairs are left out of the mean (which is ``inf``
/// only when every pair is identical).
#[pyfunction]
#[pyo3(signature = (a, b, *, per_image = false))]
fn psnr(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    per_image: bool,
) -> PyResult<Py<PyAny>> {
    guarded("psnr", || {
        let (a, b) = (images("a", a)?, images("b", b)?);
        let (a, b) = (image_view(&a), image_view(&b));
        let report = py
            .detach(|| image_quality::psnr(a.view(), b.view()))
            .map_err(to_py)?;
        batch_result(
            py,
            report.mean.unwrap_or(f64::INFINITY),
            report.per_image,
            per_image,
        )
    })
}

/// SSIM of uint8 image batches ``a`` and ``b`` of shape ``(N, H, W, C)``, image by image, each
/// channel separately and averaged, as scikit-image 0.25's ``structural_similarity``:
///
/// - ``"skimage"``: ``structural_similarity(a[i], b[i], gaussian_weights=True, sigma=1.5,
///   use_sample_covariance=False, data_range=255, channel_axis=-1)`` (Wang et al.'s SSIM);
/// - ``"skimage-uniform"``: ``structural_similarity(a[i], b[i], data_range=255, channel_axis=-1)``
///   (scikit-image's default 7x7 uniform window);
/// - ``"llamagen"``: LlamaGen's tokenizer evaluation, ``structural_similarity`` on the images as
///   float32 in [0, 1] with ``data_range=2.0`` (how the paper's SSIM 0.675 was computed).
///
/// Returns the mean over the images, or with ``per_image=True`` the array of per-image values.
#[pyfunction]
#[pyo3(signature = (a, b, convention = "skimage", *, per_image = false))]
fn ssim(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    convention: &str,
    per_image: bool,
) -> PyResult<Py<PyAny>> {
    guarded("ssim", || {
        let mode = match convention {
        "skimage" => SsimMode::Gaussian,
        "skimage-uniform" => SsimMode::Uniform,
        "llamagen" => SsimMode::LlamagenCompat,
        other => {
            return Err(PyValueError::new_err(format!(
                "ssim: convention must be \"skimage\", \"skimage-uniform\" or \"llamagen\", got {other:?}"
            )))
        }
    };
        let (a, b) = (images("a", a)?, images("b", b)?);
        let shape = a.as_array().shape().to_vec();
        // Each worker thread holds both images of a pair as float64 and a few rows of sums.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (h, w, c) = (shape[1], shape[2], shape[3]);
        ensure_fits(
            "a",
            &format!("SSIM's float64 planes of {h} x {w} x {c} images"),
            bytes_of(&[threads, w, c, h.saturating_add(16), 2], 8),
            "",
        )?;
        let (a, b) = (image_view(&a), image_view(&b));
        let report = py
            .detach(|| image_quality::ssim(a.view(), b.view(), mode))
            .map_err(to_py)?;
        batch_result(py, report.mean, report.per_image, per_image)
    })
}

/// Codebook usage of a VQ tokenizer from the token indices it produced (any integer dtype and
/// shape), as a dict: ``codebook_size``, ``num_indices``, ``used_entries``, ``usage``
/// (``used_entries / codebook_size``), ``entropy_nats``, ``entropy_bits``, ``perplexity``
/// (``exp(entropy_nats)``) and ``llamagen_usage``: LlamaGen's training-time figure, the distinct
/// entries among the last 65536 indices (entry 0 counted while fewer were given, as LlamaGen's
/// zero-initialised buffer does) over ``codebook_size``.
#[pyfunction]
#[pyo3(signature = (indices, codebook_size))]
fn codebook_usage<'py>(
    py: Python<'py>,
    indices: &Bound<'py, PyAny>,
    codebook_size: usize,
) -> PyResult<Bound<'py, PyDict>> {
    guarded("codebook_usage", || {
        // A counter and a seen flag per entry.
        ensure_fits(
            "codebook_size",
            &format!("counters for {codebook_size} codebook entries"),
            bytes_of(&[codebook_size], 9),
            "",
        )?;
        let indices = input::indices("indices", indices)?;
        let usage = py
            .detach(|| usage_of(&indices, codebook_size))
            .map_err(to_py)?;
        let out = PyDict::new(py);
        out.set_item("codebook_size", usage.codebook_size)?;
        out.set_item("num_indices", usage.num_indices)?;
        out.set_item("used_entries", usage.used_entries)?;
        out.set_item("usage", usage.usage)?;
        out.set_item("entropy_nats", usage.entropy_nats)?;
        out.set_item("entropy_bits", usage.entropy_bits)?;
        out.set_item("perplexity", usage.perplexity)?;
        out.set_item("llamagen_usage", usage.llamagen_usage)?;
        Ok(out)
    })
}

#[pymodule]
fn llamagen_metrics(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(frechet_distance, m)?)?;
    m.add_function(wrap_pyfunction!(statistics, m)?)?;
    m.add_function(wrap_pyfunction!(fid, m)?)?;
    m.add_function(wrap_pyfunction!(inception_score, m)?)?;
    m.add_function(wrap_pyfunction!(precision_recall, m)?)?;
    m.add_function(wrap_pyfunction!(kid, m)?)?;
    m.add_function(wrap_pyfunction!(psnr, m)?)?;
    m.add_function(wrap_pyfunction!(ssim, m)?)?;
    m.add_function(wrap_pyfunction!(codebook_usage, m)?)?;
    m.add_function(wrap_pyfunction!(budget::set_max_memory, m)?)?;
    m.add_function(wrap_pyfunction!(budget::max_memory, m)?)?;
    m.add_class::<streaming::FrechetStatistics>()?;
    Ok(())
}
