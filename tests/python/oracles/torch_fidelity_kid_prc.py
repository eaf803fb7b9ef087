"""Reference KID and precision/recall from torch-fidelity 0.4.0 on feature arrays written by
metrics/tests/references/manifold_kid.rs, plus density/coverage straight from Naeem et al.'s definitions.

usage: torch_fidelity_kid_prc.py REF.npy SAMPLE.npy SUBSETS SUBSET_SIZE SEED K
Prints one JSON object. torch-fidelity's convention is input1 = generated (SAMPLE), input2 = real
(REF); the arrays keep their dtype, so float64 inputs give float64 arithmetic throughout.
"""

import json
import sys

import numpy as np
import torch
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric


def density_coverage(ref, sample, k):
    # Squared Euclidean distances; squaring does not change any of the comparisons.
    def sqdist(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    ref_ref = sqdist(ref, ref)
    radii = np.sort(ref_ref, axis=1)[:, k]  # column 0 is the point itself
    ref_sample = sqdist(ref, sample)
    density = (ref_sample < radii[:, None]).sum() / (k * len(sample))
    coverage = (ref_sample.min(axis=1) < radii).mean()
    return float(density), float(coverage)


def main():
    ref_path, sample_path, subsets, subset_size, seed, k = sys.argv[1:7]
    ref = np.load(ref_path)
    sample = np.load(sample_path)
    ref_t = torch.from_numpy(ref)
    sample_t = torch.from_numpy(sample)
    kid = kid_features_to_metric(
        sample_t,
        ref_t,
        kid_subsets=int(subsets),
        kid_subset_size=int(subset_size),
        rng_seed=int(seed),
        verbose=False,
    )
    prc = prc_features_to_metric(
        sample_t,
        ref_t,
        prc_neighborhood=int(k),
        prc_batch_size=10000,
        save_cpu_ram=False,
        verbose=False,
    )
    density, coverage = density_coverage(ref.astype(np.float64), sample.astype(np.float64), int(k))
    print(
        json.dumps(
            {
                "kid_mean": kid["kernel_inception_distance_mean"],
                "kid_std": kid["kernel_inception_distance_std"],
                "precision": prc["precision"],
                "recall": prc["recall"],
                "density": density,
                "coverage": coverage,
            }
        )
    )


if __name__ == "__main__":
    main()
