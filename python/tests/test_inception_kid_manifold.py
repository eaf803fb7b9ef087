"""Inception Score, KID and precision/recall/density/coverage: the golden ADM values, torch-fidelity
0.4.0 and prdc (Naeem et al.'s own implementation of density and coverage)."""

import contextlib
import io

import numpy as np
import pytest
import torch
from prdc import compute_prdc
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

import llamagen_metrics as m
from conftest import pool_like_features, rel_diff


def golden_logits(arrays):
    # The ADM evaluator's softmax input: pool features times the unbiased logit weights.
    return (arrays["is_activations"].astype(np.float64) @ arrays["is_weight"].astype(np.float64)).astype(
        np.float32
    )


def test_golden_adm_inception_score(golden):
    arrays, expected = golden
    logits = golden_logits(arrays)
    mean, _ = m.inception_score(logits)
    assert rel_diff(mean, expected["inception_score"]) < 1e-5
    first, std = m.inception_score(logits[:5000])
    assert rel_diff(first, expected["inception_score_first_5000"]) < 1e-5
    assert std == 0.0  # one split


def test_inception_score_equals_torch_fidelity():
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((3000, 1008)) * 3.0).astype(np.float32)
    logits[:1500, :40] += 4.0  # uneven classes, so the splits differ
    reference = isc_features_to_metric(torch.from_numpy(logits))
    mean, std = m.inception_score(logits, "torch-fidelity")
    assert rel_diff(mean, reference["inception_score_mean"]) < 1e-9
    assert rel_diff(std, reference["inception_score_std"]) < 1e-9
    reference = isc_features_to_metric(torch.from_numpy(logits), splits=7, shuffle=False)
    mean, std = m.inception_score(logits, "torch-fidelity", num_splits=7, shuffle=False)
    assert rel_diff(mean, reference["inception_score_mean"]) < 1e-9
    assert rel_diff(std, reference["inception_score_std"]) < 1e-9
    reference = isc_features_to_metric(torch.from_numpy(logits), splits=5, rng_seed=99)
    mean, _ = m.inception_score(logits, "torch-fidelity", num_splits=5, seed=99)
    assert rel_diff(mean, reference["inception_score_mean"]) < 1e-9


def test_inception_score_argument_errors():
    logits = np.zeros((10, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="belong to splits=\"torch-fidelity\""):
        m.inception_score(logits, "adm", num_splits=3)
    with pytest.raises(ValueError, match="belongs to splits=\"adm\""):
        m.inception_score(logits, "torch-fidelity", split_size=3)
    with pytest.raises(ValueError, match="splits must be"):
        m.inception_score(logits, "tf")
    with pytest.raises(ValueError, match="1 <= splits <= samples"):
        m.inception_score(logits, "torch-fidelity", num_splits=11)


def test_golden_adm_precision_recall(golden):
    arrays, expected = golden
    ref, sample = arrays["ref"], arrays["sample"]
    exact = m.precision_recall(sample, ref)
    assert abs(exact["precision"] - expected["precision_float64"]) <= 1 / len(sample) + 1e-12
    assert abs(exact["recall"] - expected["recall_float64"]) <= 1 / len(ref) + 1e-12
    fp16 = m.precision_recall(sample, ref, distance="adm-fp16")
    assert abs(fp16["precision"] - expected["precision"]) <= 2 / len(sample) + 1e-12
    assert abs(fp16["recall"] - expected["recall"]) <= 2 / len(ref) + 1e-12


def test_precision_recall_density_coverage_equal_torch_fidelity_and_prdc():
    rng = np.random.default_rng(12)
    reference = pool_like_features(rng, 700, 48, 0.2)
    samples = pool_like_features(rng, 600, 48, 0.35)
    ours = m.precision_recall(samples, reference, k=3)
    prc = prc_features_to_metric(
        torch.from_numpy(samples), torch.from_numpy(reference), prc_neighborhood=3, verbose=False
    )
    # torch-fidelity returns float32 fractions: compare counts.
    assert round(ours["precision"] * 600) == round(float(prc["precision"]) * 600)
    assert round(ours["recall"] * 700) == round(float(prc["recall"]) * 700)
    with contextlib.redirect_stdout(io.StringIO()):
        naeem = compute_prdc(real_features=reference, fake_features=samples, nearest_k=3)
    for key in ("precision", "recall", "density", "coverage"):
        assert rel_diff(ours[key], float(naeem[key])) < 1e-12, key
    # float32 features give the same decisions here.
    ours32 = m.precision_recall(samples.astype(np.float32), reference.astype(np.float32), k=3)
    assert abs(ours32["precision"] - ours["precision"]) <= 1 / 600


def test_kid_equals_torch_fidelity_with_its_defaults():
    rng = np.random.default_rng(13)
    reference = pool_like_features(rng, 1100, 64, 0.2)
    samples = pool_like_features(rng, 1050, 64, 0.3)
    # Each setting as torch-fidelity's keywords and ours: the defaults, then explicit ones.
    for their_settings, our_settings in [
        ({}, {}),
        (
            {"kid_subsets": 20, "kid_subset_size": 300, "rng_seed": 5},
            {"subsets": 20, "subset_size": 300, "seed": 5},
        ),
    ]:
        theirs = kid_features_to_metric(
            torch.from_numpy(samples), torch.from_numpy(reference), verbose=False, **their_settings
        )
        mean, std = m.kid(samples, reference, **our_settings)
        assert rel_diff(mean, theirs["kernel_inception_distance_mean"]) < 1e-9, our_settings
        assert rel_diff(std, theirs["kernel_inception_distance_std"]) < 1e-9, our_settings
