"""Writes variants of the golden tokenizer checkpoint for tests/vq_golden.rs and tests/cli_recon.rs.

Usage: make_vq_checkpoints.py GOLDEN_VQ_PT OUT_DIR

Writes into OUT_DIR:
  legacy.pt        {"model": state_dict, "steps": ...} in the legacy (pre-1.6) format.
  ema_model.pt     {"ema": state_dict, "model": state_dict with every float tensor except the
                   codebook queue scaled by 0.5}, zip format: `ema` must win by default and
                   `--vq-weights model` must give a different (perturbed) model.
  bare.pt          the bare state dict, with DDP's `module.` prefix on every name.
  mismatch.pt      the golden checkpoint with quant_conv producing 16 channels while the codebook
                   has 8 (a codebook / quant_conv disagreement).
"""

import pathlib
import sys

import torch


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    golden, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    ck = torch.load(golden, map_location="cpu", weights_only=False)
    sd = ck["model"]

    torch.save(
        {"model": sd, "steps": ck.get("steps", 0)},
        out / "legacy.pt",
        _use_new_zipfile_serialization=False,
    )

    perturbed = {
        k: (v * 0.5 if v.is_floating_point() and k != "quantize.codebook_used" else v.clone())
        for k, v in sd.items()
    }
    torch.save({"ema": sd, "model": perturbed, "steps": 1}, out / "ema_model.pt")

    torch.save({"module." + k: v for k, v in sd.items()}, out / "bare.pt")

    doctored = dict(sd)
    doctored["quant_conv.weight"] = torch.zeros(16, sd["quant_conv.weight"].shape[1], 1, 1)
    doctored["quant_conv.bias"] = torch.zeros(16)
    torch.save({"model": doctored}, out / "mismatch.pt")


if __name__ == "__main__":
    main()
