"""Reference PSNR and SSIM from scikit-image for the image_quality parity tests.

Usage: skimage_psnr_ssim.py ORIG1.npy RECON1.npy [ORIG2.npy RECON2.npy ...]

Each .npy holds u8 images of shape (N, H, W, C). Prints one JSON list with, per pair of files,
per-image lists:
  psnr           peak_signal_noise_ratio(orig, recon, data_range=255); null where infinite
  ssim_gaussian  structural_similarity(..., gaussian_weights=True, sigma=1.5,
                 use_sample_covariance=False, data_range=255, channel_axis=-1)
  ssim_uniform   structural_similarity(..., data_range=255, channel_axis=-1)  (7x7 uniform)
  ssim_llamagen  LlamaGen's call in tokenizer/*/reconstruction_*_ddp.py, on float32 inputs
"""

import json
import sys

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def llamagen_ssim(orig, recon):
    # rgb_restored = sample.astype(np.float32) / 255.
    rgb_restored = recon.astype(np.float32) / 255.0
    # rgb_gt: torchvision ToTensor (u8 / 255 in float32), Normalize(mean=0.5, std=0.5), then
    # (x + 1.0) / 2.0, all float32. numpy's float32 ops give the same values as torch's here
    # for all 256 inputs.
    rgb_gt = ((orig.astype(np.float32) / 255.0 - 0.5) / 0.5 + 1.0) / 2.0
    return structural_similarity(
        rgb_restored, rgb_gt, multichannel=True, data_range=2.0, channel_axis=-1
    )


def one_set(orig_path, recon_path):
    orig = np.load(orig_path)
    recon = np.load(recon_path)
    assert orig.dtype == np.uint8 and recon.dtype == np.uint8 and orig.ndim == 4
    out = {"psnr": [], "ssim_gaussian": [], "ssim_uniform": [], "ssim_llamagen": []}
    for a, b in zip(orig, recon):
        p = peak_signal_noise_ratio(a, b, data_range=255)
        out["psnr"].append(float(p) if np.isfinite(p) else None)
        out["ssim_gaussian"].append(
            float(
                structural_similarity(
                    a,
                    b,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=255,
                    channel_axis=-1,
                )
            )
        )
        out["ssim_uniform"].append(
            float(structural_similarity(a, b, data_range=255, channel_axis=-1))
        )
        out["ssim_llamagen"].append(float(llamagen_ssim(a, b)))
    return out


def main():
    paths = sys.argv[1:]
    if not paths or len(paths) % 2:
        sys.exit(__doc__)
    results = [one_set(paths[i], paths[i + 1]) for i in range(0, len(paths), 2)]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
