"""pytorch-fid's calculate_frechet_distance on statistics a test wrote.

usage: pytorch_fid_frechet.py DIR   (DIR holds mu1.npy sigma1.npy mu2.npy sigma2.npy)
prints: {"fid": value}
"""
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

warnings.filterwarnings("ignore")
d = Path(sys.argv[1])
mu1, sigma1, mu2, sigma2 = (np.load(d / f"{k}.npy") for k in ("mu1", "sigma1", "mu2", "sigma2"))
print(json.dumps({"fid": float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))}))
