"""Times pytorch-fid's calculate_frechet_distance on statistics the benchmark wrote.

usage: bench_pytorch_fid.py DIR REPEATS   (DIR holds mu1.npy sigma1.npy mu2.npy sigma2.npy)
prints: {"seconds": median seconds per call, "fid": value}
"""
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

warnings.filterwarnings("ignore")
d = Path(sys.argv[1])
repeats = int(sys.argv[2])
mu1, sigma1, mu2, sigma2 = (np.load(d / f"{k}.npy") for k in ("mu1", "sigma1", "mu2", "sigma2"))
times = []
for _ in range(repeats):
    start = time.perf_counter()
    fid = calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": statistics.median(times), "fid": float(fid)}))
