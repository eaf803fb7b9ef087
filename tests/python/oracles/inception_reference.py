"""Reference Inception features for the parity tests, from the real reference code paths.

usage: inception_reference.py WEIGHTS.pth IMAGES.npy...
  WEIGHTS: a torchvision-named FID Inception state dict (fixtures/random_inception_weights.py).
  Each IMAGES.npy: u8 [N, H, W, 3]. Writes beside it, from torch-fidelity's
  FeatureExtractorInceptionV3 (the ADM-compatible path): IMAGES.adm_pool.npy [N,2048],
  IMAGES.adm_logits.npy [N,1008] ('logits_unbiased'), IMAGES.adm_spatial.npy [N,2023] (forward
  hook on Mixed_6d.branch1x1, first 7 channels, H,W,C order); and from pytorch-fid's
  InceptionV3([3]): IMAGES.pytorch_fid_pool.npy [N,2048].
"""
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(2)


def features(weights: Path, image_files: list[Path]):
    import pytorch_fid.inception as pfi
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state = torch.load(weights, weights_only=True)
    tf = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=str(weights))
    captured = {}
    tf.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.__setitem__("b", o))
    pfi.load_state_dict_from_url = lambda *a, **k: state
    pytorch_fid_model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

    for path in image_files:
        images = torch.from_numpy(np.load(path)).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            pool, logits = tf(images)
            spatial = captured["b"][:, :7].permute(0, 2, 3, 1).reshape(images.shape[0], -1)
            fid_pool = pytorch_fid_model(images.float() / 255)[0].squeeze(-1).squeeze(-1)
        outputs = {"adm_pool": pool, "adm_logits": logits, "adm_spatial": spatial, "pytorch_fid_pool": fid_pool}
        for name, value in outputs.items():
            np.save(path.with_suffix(f".{name}.npy"), value.numpy())


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: inception_reference.py WEIGHTS.pth IMAGES.npy...")
    features(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
