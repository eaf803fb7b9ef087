"""llamagen_metrics next to the Python packages people call for the same numbers, in one process,
on the same inputs: pytorch-fid, scikit-image and torch-fidelity. Prints each pair's best-of-N wall
time, their ratio, and how far apart the two values are.

usage: python python/bench/versus_peers.py [--repeats N] [--quick]

Both sides use the cores as they do by default: our kernels run on all cores (rayon and OpenBLAS),
scipy's sqrtm and torch as they are built, scikit-image on one core per call.
"""

import argparse
import time
import warnings

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

import llamagen_metrics as m


def best_of(repeats, call):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = call()
        best = min(best, time.perf_counter() - start)
    return best, value


def report(name, ours, theirs, peer, repeats):
    t_ours, v_ours = best_of(repeats, ours)
    t_theirs, v_theirs = best_of(repeats, theirs)
    diff = abs(v_ours - v_theirs) / max(abs(v_theirs), 1e-300)
    print(
        f"| {name} | {t_ours:.3f} s | {peer} {t_theirs:.3f} s | **{t_theirs / t_ours:.1f}x** | {diff:.1e} |",
        flush=True,
    )


def image_batch(rng, n):
    y, x = np.mgrid[0:256, 0:256]
    base = 127.5 + 80.0 * np.sin(x[None, :, :, None] / 17.0 + rng.random((n, 1, 1, 3)) * 6) * np.cos(
        y[None, :, :, None] / 23.0
    )
    a = np.clip(base + rng.normal(0, 12, (n, 256, 256, 3)), 0, 255).astype(np.uint8)
    b = np.clip(a + rng.normal(0, 10, a.shape), 0, 255).astype(np.uint8)
    return a, b


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each call (default 3)")
    parser.add_argument("--quick", action="store_true", help="FID and SSIM only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    r = args.repeats
    print(f"torch threads {torch.get_num_threads()}; best of {r}")
    print("| call | llamagen_metrics | peer | ratio | relative difference |")
    print("|---|---|---|---|---|")

    a = rng.standard_normal((2500, 2048))
    b = rng.standard_normal((2600, 2048)) * 1.1 + 0.05
    mu1, sigma1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, sigma2 = b.mean(0), np.cov(b, rowvar=False)
    report(
        "Fréchet distance, 2048-d statistics",
        lambda: m.frechet_distance(mu1, sigma1, mu2, sigma2),
        lambda: float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2)),
        "pytorch-fid `calculate_frechet_distance`",
        r,
    )

    originals, reconstructions = image_batch(rng, 64)
    report(
        "SSIM, Gaussian window (sigma 1.5, `convention=\"skimage\"`), 64 images 256x256x3",
        lambda: m.ssim(originals, reconstructions),
        lambda: float(
            np.mean(
                [
                    structural_similarity(
                        x,
                        y,
                        gaussian_weights=True,
                        sigma=1.5,
                        use_sample_covariance=False,
                        data_range=255,
                        channel_axis=-1,
                    )
                    for x, y in zip(originals, reconstructions)
                ]
            )
        ),
        "scikit-image `structural_similarity`",
        r,
    )
    report(
        "SSIM, scikit-image's default (7x7 uniform window), 64 images 256x256x3",
        lambda: m.ssim(originals, reconstructions, "skimage-uniform"),
        lambda: float(
            np.mean(
                [
                    structural_similarity(x, y, data_range=255, channel_axis=-1)
                    for x, y in zip(originals, reconstructions)
                ]
            )
        ),
        "scikit-image `structural_similarity`",
        r,
    )
    if args.quick:
        return
    report(
        "PSNR, 64 images 256x256x3",
        lambda: m.psnr(originals, reconstructions),
        lambda: float(
            np.mean([peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(originals, reconstructions)])
        ),
        "scikit-image `peak_signal_noise_ratio`",
        r,
    )
    logits = (rng.standard_normal((50_000, 1008)) * 3).astype(np.float32)
    report(
        "Inception Score, 50,000 x 1008 logits",
        lambda: m.inception_score(logits, "torch-fidelity")[0],
        lambda: isc_features_to_metric(torch.from_numpy(logits))["inception_score_mean"],
        "torch-fidelity `isc_features_to_metric`",
        r,
    )
    fa = np.abs(rng.standard_normal((5000, 2048))).astype(np.float32)
    fb = np.abs(rng.standard_normal((5000, 2048)) * 1.05).astype(np.float32)
    report(
        "KID (100 subsets of 1000), 5000 x 2048 each",
        lambda: m.kid(fa, fb)[0],
        lambda: kid_features_to_metric(torch.from_numpy(fa), torch.from_numpy(fb), verbose=False)[
            "kernel_inception_distance_mean"
        ],
        "torch-fidelity `kid_features_to_metric`",
        1,
    )
    report(
        "precision (k=3), 5000 x 2048 each",
        lambda: m.precision_recall(fa, fb)["precision"],
        lambda: float(
            prc_features_to_metric(torch.from_numpy(fa), torch.from_numpy(fb), verbose=False)["precision"]
        ),
        "torch-fidelity `prc_features_to_metric`",
        1,
    )


if __name__ == "__main__":
    main()
