"""Writes the checkpoints that tests/checkpoint.rs reads, and the values it must find in them.

Usage: make_checkpoints.py OUT_DIR [GOLDEN_DIR]

Writes into OUT_DIR:
  full_zip.pt, full_zip_p4.pt, full_legacy.pt, full_deflated.pt
      the same object (nested containers, views sharing a storage, every dtype, a Parameter,
      an `ema` entry, an argparse.Namespace, numpy scalars) in the zip format with pickle protocol 2
      and 4, the legacy format, and the zip format with deflated entries.
  bigendian.pt      a zip checkpoint rewritten as a big-endian machine would write it.
  u16.pt            a tensor of a dtype without a typed storage (`_rebuild_tensor_v3`).
  bad_opcode.pt     a zip checkpoint whose pickle uses EXT1 (opcode 0x82) at offset 5.
  missing_data.pt   full_zip.pt without its data/ entries.
  expected.safetensors
      every tensor of the object, contiguous, named by its '.'-joined path from the top level
      ("model.w_t", "nested.a.1.1.b"); the big-endian file's tensors as "bigendian.<name>"; and with
      GOLDEN_DIR, the golden checkpoints' state dicts as torch.load reads them ("golden_vq.<name>",
      "golden_gpt.<name>").
"""

import argparse
import collections
import io
import pathlib
import sys
import zipfile

import numpy as np
import torch
from safetensors.torch import save_file

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def build():
    g = torch.Generator().manual_seed(1234)
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8) * 0.5 - 3.0
    model = collections.OrderedDict()
    model["w"] = base
    model["w_t"] = base.t()  # transposed view of the same storage
    model["w_slice"] = base[2:5, 1:7:2]  # offset and strides
    model["w_row"] = base[3]
    model["scalar"] = torch.tensor(3.25)
    model["empty"] = torch.zeros(0, 3)
    model["param"] = torch.nn.Parameter(torch.randn(3, 2, generator=g))
    for name, dt in DTYPES.items():
        if dt.is_floating_point:
            t = (torch.randn(4, 5, generator=g) * 50).to(dt)
        elif dt == torch.bool:
            t = torch.randn(4, 5, generator=g) > 0
        elif dt == torch.uint8:
            t = torch.randint(0, 256, (4, 5), generator=g, dtype=dt)
        else:
            t = torch.randint(-100, 100, (4, 5), generator=g, dtype=dt)
        model[f"dt_{name}"] = t
        model[f"dt_{name}_view"] = t.t()[1:, ::2]
    ema = collections.OrderedDict((k, v.detach() * 2) for k, v in model.items() if v.dtype == torch.float32)
    shared = torch.randn(2, 3, generator=g)
    return {
        "model": model,
        "ema": ema,
        "nested": {"a": [shared, (shared[1], {"b": torch.ones(2, dtype=torch.int64)})], 7: torch.zeros(1)},
        "args": argparse.Namespace(gpt_model="GPT-B", lr=1e-4, betas=(0.9, 0.95), flag=True, none=None),
        "steps": 1234,
        "epoch": np.int64(7),
        "loss": np.float64(0.5),
        "big": 2**70,
        "neg": -5,
        "name": "hello",
        "blob": b"\x00\x01",
        "tags": {"x", "y"},
    }


def flatten(v, prefix, out):
    def join(k):
        return f"{prefix}.{k}" if prefix else str(k)

    if isinstance(v, torch.Tensor):
        out[prefix] = v.detach().clone().contiguous()
    elif isinstance(v, dict):
        for k, x in v.items():
            flatten(x, join(k), out)
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            flatten(x, join(i), out)


def rezip(src, dst, keep=lambda name: True, compression=zipfile.ZIP_STORED, replace=None):
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compression) as zout:
        for info in zin.infolist():
            if keep(info.filename):
                data = replace.get(info.filename, zin.read(info.filename))
                zout.writestr(info.filename, data)


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    obj = build()
    expected = {}
    flatten(obj, "", expected)

    torch.save(obj, out / "full_zip.pt")
    torch.save(obj, out / "full_zip_p4.pt", pickle_protocol=4)
    torch.save(obj, out / "full_legacy.pt", _use_new_zipfile_serialization=False)
    rezip(out / "full_zip.pt", out / "full_deflated.pt", compression=zipfile.ZIP_DEFLATED)
    rezip(out / "full_zip.pt", out / "missing_data.pt", keep=lambda n: "/data/" not in n)

    # Storage keys are numbered in order of first use: x -> 0, y -> 1, z -> 2.
    be = collections.OrderedDict(
        x=torch.linspace(-2, 2, 6).reshape(2, 3),
        y=torch.tensor([1, -2, 3 << 40]),
        z=torch.tensor([0.5, -1.25, 65504.0], dtype=torch.float16),
    )
    be["x_t"] = be["x"].t()
    buf = io.BytesIO()
    torch.save(be, buf)
    prefix = "bigendian"
    swapped = {f"{prefix}/byteorder": b"big"}
    for key, t in (("0", be["x"]), ("1", be["y"]), ("2", be["z"])):
        swapped[f"{prefix}/data/{key}"] = t.contiguous().numpy().byteswap().tobytes()
    with open(out / "bigendian_le.pt", "wb") as f:
        f.write(buf.getvalue())
    rezip(out / "bigendian_le.pt", out / "bigendian.pt", replace=swapped)
    (out / "bigendian_le.pt").unlink()
    flatten(be, "bigendian", expected)

    torch.save({"model": {"ok": torch.ones(2), "u16": torch.tensor([1, 2, 3], dtype=torch.uint16)}}, out / "u16.pt")

    with zipfile.ZipFile(out / "bad_opcode.pt", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00\x82\x05.")
        z.writestr("archive/byteorder", b"little")

    if len(sys.argv) > 2:
        golden = pathlib.Path(sys.argv[2])
        vq = torch.load(golden / "vq_public.pt", weights_only=False)
        gpt = torch.load(golden / "gpt_public.pt", weights_only=False)
        flatten(vq["model"], "golden_vq", expected)
        flatten(gpt["model"], "golden_gpt", expected)
        flatten(gpt["optimizer"], "golden_gpt_optimizer", expected)

    save_file(expected, str(out / "expected.safetensors"))


if __name__ == "__main__":
    main()
