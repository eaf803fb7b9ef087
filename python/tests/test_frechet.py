"""FID: parity with pytorch-fid's calculate_frechet_distance and with the ADM evaluator's values
on the golden features; streaming statistics equal to the whole set's."""

import pickle
import warnings

import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance

import llamagen_metrics as m
from conftest import pool_like_features, rel_diff


def pytorch_fid(mu1, sigma1, mu2, sigma2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def test_fid_equals_pytorch_fid_at_2048_dimensions():
    rng = np.random.default_rng(2048)
    a = rng.standard_normal((2500, 2048)).astype(np.float32)
    b = (rng.standard_normal((2600, 2048)) * 1.1 + 0.05).astype(np.float32)
    wide_a, wide_b = a.astype(np.float64), b.astype(np.float64)
    mu1, sigma1 = wide_a.mean(axis=0), np.cov(wide_a, rowvar=False)
    mu2, sigma2 = wide_b.mean(axis=0), np.cov(wide_b, rowvar=False)
    reference = pytorch_fid(mu1, sigma1, mu2, sigma2)

    assert rel_diff(m.frechet_distance(mu1, sigma1, mu2, sigma2), reference) < 1e-6
    assert rel_diff(m.fid(a, b), reference) < 1e-6
    ours_mu, ours_sigma = m.statistics(a)
    np.testing.assert_allclose(ours_mu, mu1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours_sigma, sigma1, rtol=0, atol=1e-12)


def test_frechet_distance_accepts_float32_statistics_and_lists():
    rng = np.random.default_rng(3)
    x = pool_like_features(rng, 300, 32, 0.0)
    y = pool_like_features(rng, 260, 32, 0.2)
    mu1, sigma1 = x.mean(0), np.cov(x, rowvar=False)
    mu2, sigma2 = y.mean(0), np.cov(y, rowvar=False)
    reference = pytorch_fid(mu1, sigma1, mu2, sigma2)
    assert rel_diff(m.frechet_distance(mu1, sigma1, mu2, sigma2), reference) < 1e-6
    assert rel_diff(m.frechet_distance(list(mu1), sigma1.tolist(), mu2, sigma2), reference) < 1e-6
    # float32 statistics are widened, so the distance is pytorch-fid's on the rounded values.
    f32 = [v.astype(np.float32) for v in (mu1, sigma1, mu2, sigma2)]
    reference32 = pytorch_fid(*(v.astype(np.float64) for v in f32))
    assert rel_diff(m.frechet_distance(*f32), reference32) < 1e-6


def test_golden_adm_fid_and_sfid(golden):
    arrays, expected = golden
    assert rel_diff(m.fid(arrays["sample"], arrays["ref"]), expected["fid"]) < 1e-6
    assert rel_diff(m.fid(arrays["spatial_sample"], arrays["spatial_ref"]), expected["sfid"]) < 1e-6
    assert abs(m.fid(arrays["ref"], arrays["ref"])) < 1e-9


def test_seven_uneven_batches_equal_the_whole_set():
    rng = np.random.default_rng(7)
    features = pool_like_features(rng, 3001, 64, 0.1)
    mu, sigma = m.statistics(features)
    streaming = m.FrechetStatistics(64)
    bounds = [0, 1, 17, 400, 401, 1500, 2999, 3001]
    for start, end in zip(bounds[:-1], bounds[1:]):
        streaming.update(features[start:end])
    assert streaming.count == 3001
    s_mu, s_sigma = streaming.compute()
    np.testing.assert_allclose(s_mu, mu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(s_sigma, sigma, rtol=0, atol=1e-10)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=0, atol=1e-10)


def test_three_merged_instances_equal_the_whole_set():
    rng = np.random.default_rng(8)
    features = pool_like_features(rng, 2000, 48, 0.0).astype(np.float32)
    mu, sigma = m.statistics(features)
    ranks = [m.FrechetStatistics(48) for _ in range(3)]
    for rank, part in zip(ranks, np.array_split(features, [300, 1234])):
        rank.update(part)
    merged = ranks[0]
    merged.merge(ranks[1])
    merged.merge(ranks[2])
    assert merged.count == 2000 and ranks[2].count == 766
    m_mu, m_sigma = merged.compute()
    np.testing.assert_allclose(m_mu, mu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(m_sigma, sigma, rtol=0, atol=1e-10)


def test_state_sums_and_pickles_merge_processes():
    rng = np.random.default_rng(9)
    features = pool_like_features(rng, 900, 24, 0.3)
    mu, sigma = m.statistics(features)
    ranks = [m.FrechetStatistics(24) for _ in range(3)]
    for rank, part in zip(ranks, np.array_split(features, 3)):
        rank.update(part)
    # What all_reduce does: add each part of the state across ranks.
    states = [rank.state() for rank in ranks]
    total = m.FrechetStatistics.from_state(
        sum(s[0] for s in states), sum(s[1] for s in states), sum(s[2] for s in states)
    )
    # What all_gather_object does: pickle each rank, then merge.
    gathered = [pickle.loads(pickle.dumps(rank)) for rank in ranks]
    for other in gathered[1:]:
        gathered[0].merge(other)
    for merged in (total, gathered[0]):
        m_mu, m_sigma = merged.compute()
        assert merged.count == 900
        np.testing.assert_allclose(m_mu, mu, rtol=0, atol=1e-10)
        np.testing.assert_allclose(m_sigma, sigma, rtol=0, atol=1e-10)


def test_merging_an_instance_with_itself_counts_it_twice():
    rng = np.random.default_rng(10)
    features = rng.standard_normal((50, 6))
    once = m.FrechetStatistics(6)
    once.update(features)
    twice = m.FrechetStatistics(6)
    twice.update(np.concatenate([features, features]))
    once.merge(once)
    assert once.count == 100
    for a, b in zip(once.compute(), twice.compute()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_streaming_rejects_bad_batches_without_changing_state():
    stats = m.FrechetStatistics(4)
    stats.update(np.ones((3, 4)))
    bad = np.ones((2, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        stats.update(bad)
    with pytest.raises(ValueError, match=r"dimensions differ \(4 vs 5\)"):
        stats.update(np.ones((2, 5)))
    with pytest.raises(ValueError, match="dimensions differ"):
        stats.merge(m.FrechetStatistics(5))
    with pytest.raises(ValueError, match="2-D array"):
        stats.update(np.ones(4))
    assert stats.count == 3
    single = m.FrechetStatistics(4)
    single.update(np.ones((1, 4)))
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        single.compute()
    with pytest.raises(ValueError):
        m.FrechetStatistics(0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        m.FrechetStatistics.from_state(2, np.array([np.nan, 0.0]), np.zeros((2, 2)))
