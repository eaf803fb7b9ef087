"""The peers of `llamagen-eval metrics` for benches/versus_reference.rs, each run as a whole process
on the same feature files (npz with a float32 `pool` entry, as `llamagen-eval features` writes).

usage: bench_feature_peers.py WHAT SAMPLE.npz REF.npz
  numpy-fid        FID with np.cov and np.linalg.eigh (a six-line NumPy script: the square root
                   of one covariance by eigendecomposition)
  numpy-fid-cholesky  FID with np.cov, np.linalg.cholesky and np.linalg.eigvalsh (the same
                   algorithm as ours: eigenvalues only, the fastest NumPy route)
  pytorch-fid      FID through pytorch-fid: np.mean/np.cov statistics (its
                   calculate_activation_statistics) and calculate_frechet_distance (scipy sqrtm)
  torch-fidelity-kid  torch-fidelity 0.4.0 kid_features_to_metric (100 subsets of 1000, seed 2020)
  torch-fidelity-kid-float64  the same on the features cast to float64 (torch-fidelity then
                   computes in float64: the value to compare float64 arithmetic against)
  torch-fidelity-prc  torch-fidelity 0.4.0 prc_features_to_metric (k = 3)
Prints one JSON object with the value(s).
"""

import json
import sys
import warnings

import numpy as np


def pool(path):
    with np.load(path) as npz:
        return npz["pool"]


def numpy_fid(sample, ref):
    mu1, mu2 = sample.mean(0), ref.mean(0)
    s1, s2 = np.cov(sample, rowvar=False), np.cov(ref, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def numpy_fid_cholesky(sample, ref):
    mu1, mu2 = sample.mean(0), ref.mean(0)
    s1, s2 = np.cov(sample, rowvar=False), np.cov(ref, rowvar=False)
    low = np.linalg.cholesky(s1)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(low.T @ s2 @ low), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def pytorch_fid(sample, ref):
    from pytorch_fid.fid_score import calculate_frechet_distance

    warnings.filterwarnings("ignore")
    stats = [(x.mean(axis=0), np.cov(x, rowvar=False)) for x in (sample, ref)]
    return float(calculate_frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1]))


def main():
    what, sample_path, ref_path = sys.argv[1:4]
    sample, ref = pool(sample_path), pool(ref_path)
    if what == "numpy-fid":
        out = {"fid": numpy_fid(sample, ref)}
    elif what == "numpy-fid-cholesky":
        out = {"fid": numpy_fid_cholesky(sample, ref)}
    elif what == "pytorch-fid":
        out = {"fid": pytorch_fid(sample, ref)}
    elif what in ("torch-fidelity-kid", "torch-fidelity-kid-float64"):
        import torch
        from torch_fidelity.metric_kid import kid_features_to_metric

        if what.endswith("float64"):
            sample, ref = sample.astype(np.float64), ref.astype(np.float64)
        kid = kid_features_to_metric(
            torch.from_numpy(sample),
            torch.from_numpy(ref),
            kid_subsets=100,
            kid_subset_size=1000,
            rng_seed=2020,
            verbose=False,
        )
        out = {
            "kid": float(kid["kernel_inception_distance_mean"]),
            "kid_std": float(kid["kernel_inception_distance_std"]),
        }
    elif what == "torch-fidelity-prc":
        import torch
        from torch_fidelity.metric_prc import prc_features_to_metric

        prc = prc_features_to_metric(
            torch.from_numpy(sample),
            torch.from_numpy(ref),
            prc_neighborhood=3,
            prc_batch_size=10000,
            save_cpu_ram=False,
            verbose=False,
        )
        out = {"precision": float(prc["precision"]), "recall": float(prc["recall"])}
    else:
        sys.exit(f"unknown comparison {what}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
