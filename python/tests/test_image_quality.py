"""PSNR and SSIM against scikit-image 0.25 on uint8 NHWC batches, and codebook usage against
LlamaGen's training-time formula and scipy's entropy."""

import numpy as np
import pytest
import scipy.stats
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import llamagen_metrics as m


def image_pairs(n, h=256, w=256, seed=0):
    """Smooth images with texture, and noisy, shifted reconstructions of them."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    phases = rng.random((n, 1, 1, 3)) * 6.0
    base = 127.5 + 80.0 * np.sin(x[None, :, :, None] / 17.0 + phases) * np.cos(y[None, :, :, None] / 23.0)
    originals = np.clip(base + rng.normal(0, 12, (n, h, w, 3)), 0, 255).astype(np.uint8)
    noise = rng.normal(0, 10, (n, h, w, 3)) + rng.normal(0, 6, (n, 1, 1, 3))
    reconstructions = np.clip(originals + noise, 0, 255).astype(np.uint8)
    return originals, reconstructions


def skimage_ssim(a, b, convention):
    if convention == "skimage":
        return structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
        )
    if convention == "skimage-uniform":
        return structural_similarity(a, b, data_range=255, channel_axis=-1)
    # LlamaGen (tokenizer/*/reconstruction_*_ddp.py): the reconstruction as float32 / 255, the
    # original through ToTensor, Normalize(0.5, 0.5) and (x + 1) / 2, data_range=2.0.
    restored = b.astype(np.float32) / 255.0
    gt = ((a.astype(np.float32) / 255.0 - 0.5) / 0.5 + 1.0) / 2.0
    return structural_similarity(restored, gt, data_range=2.0, channel_axis=-1)


@pytest.fixture(scope="module")
def batch():
    return image_pairs(64)


def test_ssim_equals_scikit_image_on_64_images(batch):
    originals, reconstructions = batch
    reference = np.array([skimage_ssim(a, b, "skimage") for a, b in zip(originals, reconstructions)])
    ours = m.ssim(originals, reconstructions, per_image=True)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    assert abs(m.ssim(originals, reconstructions) - reference.mean()) < 1e-6


@pytest.mark.parametrize("convention, tolerance", [("skimage-uniform", 1e-6), ("llamagen", 1e-5)])
def test_other_ssim_conventions(batch, convention, tolerance):
    # scikit-image's default (7x7 uniform window) on the whole batch of 64, as the Gaussian form
    # above. LlamaGen's inputs are float32, and so is scikit-image's arithmetic on them.
    originals, reconstructions = batch
    reference = np.array([skimage_ssim(a, b, convention) for a, b in zip(originals, reconstructions)])
    ours = m.ssim(originals, reconstructions, convention, per_image=True)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=tolerance)


def test_psnr_equals_scikit_image(batch):
    originals, reconstructions = batch
    reconstructions = reconstructions.copy()
    reconstructions[3] = originals[3]  # identical: infinite, left out of the mean
    reference = np.array(
        [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(originals, reconstructions)]
    )
    ours = m.psnr(originals, reconstructions, per_image=True)
    assert np.isinf(ours[3]) and np.isinf(reference[3])
    finite = np.isfinite(reference)
    np.testing.assert_allclose(ours[finite], reference[finite], rtol=1e-12)
    assert abs(m.psnr(originals, reconstructions) - reference[finite].mean()) < 1e-9
    assert m.psnr(originals[:2], originals[:2]) == float("inf")


def test_image_errors():
    a = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match="expected uint8"):
        m.ssim(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="images of different shapes"):
        m.psnr(a, a[:, :8])
    with pytest.raises(ValueError, match="at least 11x11"):
        m.ssim(a[:, :8, :8], a[:, :8, :8])
    with pytest.raises(ValueError, match="4-D array"):
        m.ssim(a[0], a[0])
    with pytest.raises(ValueError, match="convention must be"):
        m.ssim(a, a, "matlab")
    with pytest.raises(ValueError, match="at least 1 samples, got 0"):
        m.psnr(a[:0], a[:0])


def test_codebook_usage_equals_llamagen_and_scipy():
    rng = np.random.default_rng(14)
    size = 1024
    indices = rng.zipf(1.3, size=(70_000,)) % size  # skewed, some entries unused
    usage = m.codebook_usage(indices.reshape(100, 700).astype(np.int32), size)
    counts = np.bincount(indices, minlength=size)
    assert usage["num_indices"] == 70_000
    assert usage["used_entries"] == np.count_nonzero(counts)
    assert usage["usage"] == np.count_nonzero(counts) / size
    entropy = scipy.stats.entropy(counts)
    assert abs(usage["entropy_nats"] - entropy) < 1e-12
    assert abs(usage["entropy_bits"] - scipy.stats.entropy(counts, base=2)) < 1e-12
    assert abs(usage["perplexity"] - np.exp(entropy)) < 1e-9
    # LlamaGen's VectorQuantizer: a zero-initialised queue of the last 65536 indices.
    buffer = torch.zeros(65536, dtype=torch.long)
    for chunk in np.array_split(indices, 7):
        n = len(chunk)
        buffer[:-n] = buffer[n:].clone()
        buffer[-n:] = torch.from_numpy(chunk)
    assert usage["llamagen_usage"] == len(torch.unique(buffer)) / size
    few = m.codebook_usage(np.array([5, 6, 7], dtype=np.uint64), 16)
    assert few["llamagen_usage"] == 4 / 16  # the untouched zeros count entry 0
    with pytest.raises(ValueError, match="index 16 at position 1 is outside 0..16"):
        m.codebook_usage(np.array([1, 16]), 16)
    with pytest.raises(ValueError, match="index -1"):
        m.codebook_usage(np.array([-1]), 16)
    with pytest.raises(TypeError, match="integer token indices"):
        m.codebook_usage(np.array([1.0]), 16)
