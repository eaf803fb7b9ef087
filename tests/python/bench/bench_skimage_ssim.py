"""Times scikit-image's SSIM (Gaussian window, the default of our `ssim`) over an image set.

usage: bench_skimage_ssim.py ORIGINALS.npy RECONSTRUCTIONS.npy REPEATS
prints: {"seconds": median seconds for the whole set, "mean_ssim": value}
"""
import json
import statistics
import sys
import time

import numpy as np
from skimage.metrics import structural_similarity

originals, reconstructions = np.load(sys.argv[1]), np.load(sys.argv[2])
times = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    values = [
        structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=255, channel_axis=-1)
        for a, b in zip(originals, reconstructions)
    ]
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": statistics.median(times), "mean_ssim": float(np.mean(values))}))
