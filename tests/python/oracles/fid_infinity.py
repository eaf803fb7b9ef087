"""FID-infinity as the reference code computes it (calculate_FID_infinity of mchong6/FID_IS_infinity,
Chong & Forsyth 2020), with its global NumPy generator seeded and pytorch-fid's Fréchet distance.

usage: fid_infinity.py DIR SEED MIN_SIZE POINTS
  (DIR holds features.npy [N, D] and the reference's mu.npy / sigma.npy)
prints: {"sizes": [...], "fids": [...], "fid_infinity": value}

The loop is the reference's: sizes np.linspace(MIN_SIZE, N, POINTS).astype('int32'); before each
size np.random.shuffle(activations) (the shuffles compound) and FID of the first n rows
(np.mean, np.cov(rowvar=False)); then a least-squares line through (1/n, FID) evaluated at 0
(scikit-learn's LinearRegression there; np.polyfit of degree 1 is the same fit).
"""
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

warnings.filterwarnings("ignore")
d = Path(sys.argv[1])
seed, min_size, points = (int(v) for v in sys.argv[2:5])
activations = np.load(d / "features.npy").astype(np.float64)
mu_ref, sigma_ref = np.load(d / "mu.npy"), np.load(d / "sigma.npy")
np.random.seed(seed)
sizes = np.linspace(min_size, len(activations), points).astype("int32")
fids = []
for n in sizes:
    np.random.shuffle(activations)
    subset = activations[:n]
    mu, sigma = np.mean(subset, axis=0), np.cov(subset, rowvar=False)
    fids.append(float(calculate_frechet_distance(mu, sigma, mu_ref, sigma_ref)))
slope, intercept = np.polyfit(1.0 / sizes, np.array(fids), 1)
print(json.dumps({"sizes": sizes.tolist(), "fids": fids, "fid_infinity": float(intercept)}))
