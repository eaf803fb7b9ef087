"""Image-generation metrics of llamagen-eval on numpy arrays, equal to the reference evaluators.

Feature matrices are ``(samples, dimensions)``; float32 and float64 arrays are read in place, other
real dtypes (and array-likes such as lists or CPU torch tensors) are converted to float64 first,
and arrays that are not C-contiguous are copied once. Images are uint8 ``(N, H, W, C)`` batches.
The GIL is released while a metric computes; do not write to an input array from another thread
meanwhile. Bad input (wrong shape, NaN or infinite values, mismatched dimensions, too few samples)
raises ``ValueError`` with the message of the Rust crate, and a non-numeric dtype ``TypeError``.
"""

from typing import Literal, Tuple, TypedDict, overload

import numpy as np
import numpy.typing as npt

__version__: str

ArrayLike = npt.ArrayLike
Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]

def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance ``||mu1 - mu2||² + tr(S1 + S2 - 2 sqrt(S1 S2))`` of two Gaussians.

    Equals pytorch-fid's ``calculate_frechet_distance`` and ADM's
    ``FIDStatistics.frechet_distance`` (1e-6 relative or better). Inputs are read as float64.
    """

def statistics(features: ArrayLike) -> Tuple[Vector, Matrix]:
    """``(mu, sigma)``: ``numpy.mean(x, 0)`` and ``numpy.cov(x, rowvar=False)`` in float64."""

def fid(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """FID of two feature sets: ``frechet_distance`` of their ``statistics``."""

@overload
def inception_score(
    logits: ArrayLike, splits: Literal["adm"] = "adm", *, split_size: int | None = None
) -> Tuple[float, float]: ...
@overload
def inception_score(
    logits: ArrayLike,
    splits: Literal["torch-fidelity"],
    *,
    num_splits: int | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
) -> Tuple[float, float]:
    """Inception Score ``(mean, std)`` from Inception logits (rows are samples).

    ``"adm"``: ADM's ``compute_inception_score``, consecutive splits of ``split_size`` (5000) rows,
    the last one possibly shorter. ``"torch-fidelity"``: torch-fidelity's
    ``isc_features_to_metric``, rows shuffled with ``RandomState(seed)`` (``shuffle=True``,
    ``seed=2020``) then ``num_splits`` (10) equal splits. Logits are used as float32.
    """

class ManifoldMetrics(TypedDict):
    precision: float
    recall: float
    density: float
    coverage: float

def precision_recall(
    samples: ArrayLike,
    reference: ArrayLike,
    k: int = 3,
    distance: Literal["exact", "adm-fp16"] = "exact",
) -> ManifoldMetrics:
    """Precision/recall (Kynkäänniemi et al.) and density/coverage (Naeem et al.).

    ADM's ``ManifoldEstimator`` semantics; ``"exact"`` decides as float64 distances (the same
    precision and recall as torch-fidelity's ``prc``), ``"adm-fp16"`` reproduces ADM's float16
    distance arithmetic (published ADM numbers).
    """

def kid(
    samples: ArrayLike,
    reference: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
) -> Tuple[float, float]:
    """KID ``(mean, std)`` as torch-fidelity 0.4.0's ``kid_features_to_metric(samples, reference)``.

    Same subsets from ``numpy.random.RandomState(seed)``; ``subset_size`` is capped at the smaller
    set's size (torch-fidelity refuses instead).
    """

@overload
def psnr(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], *, per_image: Literal[False] = False) -> float: ...
@overload
def psnr(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], *, per_image: Literal[True]) -> Vector:
    """PSNR (dB) per ``(H, W, C)`` image as scikit-image's ``peak_signal_noise_ratio(data_range=255)``.

    The mean over images (identical pairs, whose PSNR is infinite, left out), or per image.
    """

SsimConvention = Literal["skimage", "skimage-uniform", "llamagen"]

@overload
def ssim(
    a: npt.NDArray[np.uint8],
    b: npt.NDArray[np.uint8],
    convention: SsimConvention = "skimage",
    *,
    per_image: Literal[False] = False,
) -> float: ...
@overload
def ssim(
    a: npt.NDArray[np.uint8],
    b: npt.NDArray[np.uint8],
    convention: SsimConvention = "skimage",
    *,
    per_image: Literal[True],
) -> Vector:
    """SSIM per ``(H, W, C)`` image as scikit-image 0.25's ``structural_similarity``.

    ``"skimage"``: ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=255, channel_axis=-1``; ``"skimage-uniform"``: ``data_range=255, channel_axis=-1``
    (7x7 uniform window); ``"llamagen"``: LlamaGen's call on float32 images in [0, 1] with
    ``data_range=2.0``. The mean over images, or per image.
    """

class CodebookUsage(TypedDict):
    codebook_size: int
    num_indices: int
    used_entries: int
    usage: float
    entropy_nats: float
    entropy_bits: float
    perplexity: float
    llamagen_usage: float

def codebook_usage(indices: ArrayLike, codebook_size: int) -> CodebookUsage:
    """Usage, entropy and perplexity of token indices (any integer dtype and shape).

    ``llamagen_usage`` is LlamaGen's training-time figure: distinct entries among the last 65536
    indices (entry 0 counted while fewer were given) over ``codebook_size``.
    """

class FrechetStatistics:
    """Streaming mean and covariance of features, for FID over batches and processes.

    ``update`` in any batching or ``merge`` of instances gives ``statistics`` of the whole set
    (float64 sums). Pickles, for ``torch.distributed.all_gather_object``; or ``all_reduce`` the
    parts of ``state()`` (all sums) and rebuild with ``from_state``.
    """

    def __init__(self, dim: int) -> None: ...
    @property
    def dim(self) -> int: ...
    @property
    def count(self) -> int: ...
    def update(self, batch: ArrayLike) -> None:
        """Adds rows; NaN/infinite values or another dimension raise ``ValueError``, changing nothing."""
    def merge(self, other: FrechetStatistics) -> None:
        """Adds ``other``'s rows (``other`` is unchanged)."""
    def compute(self) -> Tuple[Vector, Matrix]:
        """``(mu, sigma)`` of all rows added, N-1 covariance; needs at least two rows."""
    def state(self) -> Tuple[int, Vector, Matrix]:
        """``(count, sum, outer)``: row count, row sum, sum of outer products (upper triangle)."""
    @staticmethod
    def from_state(count: int, sum: ArrayLike, outer: ArrayLike) -> FrechetStatistics:
        """An instance from ``state()`` parts, or their sums across processes."""
