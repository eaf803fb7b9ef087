"""FID of two image batches from torch-fidelity's ADM-compatible Inception features.

usage: fid_reference.py WEIGHTS.pth SAMPLES.npz REF.npz
  SAMPLES/REF: npz with arr_0 u8 [N, H, W, 3].
prints: {"fid": value, "n_samples": N, "n_reference": M}

Statistics as the ADM evaluator computes them (np.mean, np.cov). The trace term uses a symmetric
eigendecomposition, which stays exact when a small test set makes the covariances singular
(scipy's sqrtm does not).
"""
import json
import sys
import warnings

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
weights, samples_path, ref_path = sys.argv[1:4]
extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)


def features(path):
    images = torch.from_numpy(np.load(path)["arr_0"]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        return extractor(images)[0].double().numpy()


def frechet(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


sample_features, ref_features = features(samples_path), features(ref_path)
print(json.dumps({"fid": frechet(sample_features, ref_features),
                  "n_samples": len(sample_features), "n_reference": len(ref_features)}))
