"""Shared fixtures: the golden ADM fixtures (`<repo>/../shared/golden`, or `$LLAMAGEN_GOLDEN`, as
the Rust tests find them) and seeded random data. A missing golden folder fails the tests that
need it; it never skips them."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def golden_dir() -> Path:
    directory = Path(os.environ.get("LLAMAGEN_GOLDEN", REPO.parent / "shared" / "golden"))
    if not (directory / "manifest_public.json").is_file():
        pytest.fail(
            f"golden fixtures not found at {directory} "
            "(set LLAMAGEN_GOLDEN or place shared/ beside the checkout)"
        )
    return directory


@pytest.fixture(scope="session")
def golden():
    """`metrics_public.npz` arrays and the manifest's `adm_metrics` (the ADM evaluator's own
    outputs on them)."""
    directory = golden_dir()
    manifest = json.loads((directory / "manifest_public.json").read_text())
    with np.load(directory / "metrics_public.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    return arrays, manifest["adm_metrics"]


def pool_like_features(rng, n, dim, shift):
    """Non-negative, correlated features shaped like Inception pool activations."""
    mixing = rng.random((dim, dim)) / dim
    raw = rng.random((n, dim)) * 2.0 + shift
    return np.maximum(raw @ mixing, 0.0)


def rel_diff(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)
