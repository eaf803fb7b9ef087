"""Reference Inception Score from torch-fidelity 0.4.0's `isc_features_to_metric` on logits written
by metrics/tests/references/torch_fidelity_isc.rs.

usage: torch_fidelity_isc.py LOGITS.npy SPLITS SHUFFLE SEED
SHUFFLE is 1 (torch-fidelity's default, `samples_shuffle=True`) or 0. Prints one JSON object.
"""

import json
import sys

import numpy as np
import torch
from torch_fidelity.metric_isc import isc_features_to_metric


def main():
    path, splits, shuffle, seed = sys.argv[1:5]
    logits = torch.from_numpy(np.load(path))
    result = isc_features_to_metric(
        logits, splits=int(splits), shuffle=shuffle == "1", rng_seed=int(seed)
    )
    print(
        json.dumps(
            {
                "mean": float(result["inception_score_mean"]),
                "std": float(result["inception_score_std"]),
            }
        )
    )


if __name__ == "__main__":
    main()
