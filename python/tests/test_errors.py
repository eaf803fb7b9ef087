"""Bad input raises a clear Python exception (never a panic), and any memory layout is accepted."""

import numpy as np
import pytest

import llamagen_metrics as m


@pytest.fixture
def features():
    rng = np.random.default_rng(15)
    return rng.standard_normal((200, 8)), rng.standard_normal((150, 8)) + 0.3


def test_nan_feature_is_a_value_error(features):
    a, b = features
    a = a.copy()
    a[17, 3] = np.nan
    a[40, 0] = np.inf
    for call in (
        lambda: m.fid(a, b),
        lambda: m.statistics(a),
        lambda: m.kid(a, b),
        lambda: m.precision_recall(a, b),
        lambda: m.inception_score(a),
    ):
        with pytest.raises(ValueError, match="2 row\\(s\\) contain NaN or infinite values"):
            call()
    mu, sigma = m.statistics(b)
    sigma[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        m.frechet_distance(mu, sigma, mu, m.statistics(b)[1])


def test_mismatched_dimensions_are_a_value_error(features):
    a, b = features
    for call in (
        lambda: m.fid(a, b[:, :5]),
        lambda: m.kid(a, b[:, :5]),
        lambda: m.precision_recall(a, b[:, :5]),
    ):
        with pytest.raises(ValueError, match=r"feature dimensions differ \((8 vs 5|5 vs 8)\)"):
            call()
    mu, sigma = m.statistics(a)
    with pytest.raises(ValueError, match="dimensions differ"):
        m.frechet_distance(mu, sigma, mu[:5], sigma[:5, :5])
    with pytest.raises(ValueError, match="dimensions differ"):
        m.frechet_distance(mu, sigma[:5], mu, sigma)
    lopsided = sigma.copy()
    lopsided[5, 1] += 1.0
    with pytest.raises(ValueError, match="sigma2: a covariance matrix must be symmetric"):
        m.frechet_distance(mu, sigma, mu, lopsided)


def test_one_dimensional_arrays_are_a_value_error(features):
    a, _ = features
    with pytest.raises(ValueError, match="features_a: expected a 2-D array .* got a 1-D array of shape \\[200\\]"):
        m.fid(a[:, 0], a)
    with pytest.raises(ValueError, match="2-D array"):
        m.statistics(a[0])
    with pytest.raises(ValueError, match="mu1: expected a 1-D array"):
        m.frechet_distance(np.eye(2), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="3-D array"):
        m.precision_recall(a[None], a[None])


def test_non_contiguous_arrays_are_copied_and_give_the_same_values(features):
    a, b = features
    wide = np.repeat(a, 2, axis=1)  # columns 0, 0, 1, 1, ...
    strided = wide[:, ::2]
    assert not strided.flags.c_contiguous
    fortran = np.asfortranarray(b)
    assert not fortran.flags.c_contiguous
    reversed_rows = a[::-1]
    assert m.fid(strided, fortran) == m.fid(a, b)
    mu_r, sigma_r = m.statistics(reversed_rows)
    mu, sigma = m.statistics(a)
    np.testing.assert_allclose(mu_r, mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma_r, sigma, rtol=0, atol=1e-12)
    assert m.precision_recall(strided, fortran) == m.precision_recall(a, b)
    assert m.kid(strided, fortran, subset_size=100) == m.kid(a, b, subset_size=100)
    stats = m.FrechetStatistics(8)
    stats.update(strided.astype(np.float32)[::3])
    assert stats.count == 67
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
    noisy = images ^ np.uint8(5)
    transposed = np.ascontiguousarray(images.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    assert not transposed.flags.c_contiguous
    assert m.ssim(transposed, noisy) == m.ssim(images, noisy)
    assert m.psnr(transposed, noisy) == m.psnr(images, noisy)


def test_other_dtypes_and_array_likes(features):
    a, b = features
    ints = np.arange(40, dtype=np.int16).reshape(10, 4) % 7
    np.testing.assert_allclose(m.statistics(ints)[1], np.cov(ints.astype(np.float64), rowvar=False), atol=1e-12)
    assert m.fid(a.tolist(), b) == m.fid(a, b)
    assert m.fid(a.astype(">f8"), b) == m.fid(a, b)
    with pytest.raises(TypeError, match="expected real numbers"):
        m.statistics(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(TypeError, match="expected real numbers"):
        m.statistics(a.astype(np.complex128))


def test_other_argument_errors(features):
    a, b = features
    with pytest.raises(ValueError, match="k = 10 nearest neighbours"):
        m.precision_recall(a[:10], b[:10], k=10)
    with pytest.raises(ValueError, match="distance must be"):
        m.precision_recall(a, b, distance="fp16")
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        m.fid(a[:1], b)
    with pytest.raises(ValueError, match="subsets must be at least 1"):
        m.kid(a, b, subsets=0)
    with pytest.raises(ValueError, match="at least 1 samples, got 0"):
        m.inception_score(np.zeros((0, 10), dtype=np.float32))
    with pytest.raises(OverflowError):
        m.kid(a, b, seed=-1)
