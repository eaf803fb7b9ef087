//! `llamagen_metrics`: the metric core of llamagen-eval (the `llamagen-metrics` crate) as a Python
//! module, numpy arrays in, numbers out, for training loops and notebooks.
//!
//! Each function checks its arguments, releases the GIL and runs the crate's kernel on views of
//! the caller's arrays. Every error the crate reports becomes a `ValueError` with the crate's
//! message (`numpy.linalg.LinAlgError`, itself a `ValueError`, for a failed factorisation); no
//! input makes the module panic.

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
    let a = GaussianStats::new(f64_vector("mu1", mu1)?, covariance("sigma1", sigma1)?)
        .map_err(to_py)?;
    let b = GaussianStats::new(f64_vector("mu2", mu2)?, covariance("sigma2", sigma2)?)
        .map_err(to_py)?;
    py.detach(|| frechet::frechet_distance(&a, &b))
        .map_err(to_py)
}

/// A covariance matrix as float64, refused when it is not symmetric: the kernel reads one triangle,
/// so a matrix that is not a covariance would otherwise give a number without complaint. The
/// tolerance admits float32 round-off.
fn covariance(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Array2<f64>> {
    let sigma = f64_matrix(what, obj)?;
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
    let features = float_matrix("features", features)?;
    let stats = stats_of(py, &features.view())?;
    Ok((stats.mu.into_pyarray(py), stats.sigma.into_pyarray(py)))
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
    let a = float_matrix("features_a", features_a)?;
    let b = float_matrix("features_b", features_b)?;
    let (a, b) = (a.view(), b.view());
    let dim = |v: &FloatView<'_>| match v {
        FloatView::F32(v) => v.ncols(),
        FloatView::F64(v) => v.ncols(),
    };
    ensure_same_dim("FID", dim(&a), dim(&b)).map_err(to_py)?;
    let (a, b) = (stats_of(py, &a)?, stats_of(py, &b)?);
    py.detach(|| frechet::frechet_distance(&a, &b))
        .map_err(to_py)
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
    let logits = logits.view_f32();
    let score = py.detach(|| score_of(logits.view(), mode)).map_err(to_py)?;
    Ok((score.mean, score.std))
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
    let config = KidConfig {
        subsets,
        subset_size,
        seed,
    };
    let result = samples_against_reference(
        py,
        samples,
        reference,
        |r, s| kernel_inception_distance(r, s, &config),
        |r, s| kernel_inception_distance(r, s, &config),
    )?;
    Ok((result.mean, result.std))
}

/// A feature metric of `samples` against `reference`, computed without the GIL: its float32
/// entry point `on_f32` when both are float32, else `on_f64` (a float32 set widened).
fn samples_against_reference<T: Send>(
    py: Python<'_>,
    samples: &Bound<'_, PyAny>,
    reference: &Bound<'_, PyAny>,
    on_f32: impl FnOnce(ArrayView2<'_, f32>, ArrayView2<'_, f32>) -> metrics::Result<T> + Send,
    on_f64: impl FnOnce(ArrayView2<'_, f64>, ArrayView2<'_, f64>) -> metrics::Result<T> + Send,
) -> PyResult<T> {
    let samples = float_matrix("samples", samples)?;
    let reference = float_matrix("reference", reference)?;
    let pair = FloatPair::of(&reference, &samples);
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
    let (a, b) = (image_view(&a), image_view(&b));
    let report = py
        .detach(|| image_quality::ssim(a.view(), b.view(), mode))
        .map_err(to_py)?;
    batch_result(py, report.mean, report.per_image, per_image)
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
    m.add_class::<streaming::FrechetStatistics>()?;
    Ok(())
}
