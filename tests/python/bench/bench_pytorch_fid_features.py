"""Times pytorch-fid's Inception feature extraction on CPU.

usage: bench_pytorch_fid_features.py WEIGHTS.pth IMAGES.npy BATCH REPEATS
  IMAGES: u8 [N, H, W, 3]. WEIGHTS: a torchvision-named FID Inception state dict.
prints: {"seconds": median seconds for all images, "images_per_second": value}
"""
import json
import statistics
import sys
import time

import numpy as np
import torch
import pytorch_fid.inception as pfi

weights, images_path, batch, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(torch.get_num_threads())
state = torch.load(weights, weights_only=True)
pfi.load_state_dict_from_url = lambda *a, **k: state
model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
images = torch.from_numpy(np.load(images_path)).permute(0, 3, 1, 2).contiguous()
times = []
for _ in range(repeats):
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model(images[i:i + batch].float() / 255)
    times.append(time.perf_counter() - start)
seconds = statistics.median(times)
print(json.dumps({"seconds": seconds, "images_per_second": len(images) / seconds}))
