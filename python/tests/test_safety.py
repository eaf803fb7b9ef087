"""The package never kills Python: arguments that would make it allocate beyond the memory budget
raise MemoryError naming the argument, concurrent use of one object is safe or a RuntimeError,
and inputs that are not covariances or whose arithmetic would overflow raise ValueError.

The calls that used to abort the interpreter ("memory allocation of N bytes failed") run in a
child process with a 3 GiB address-space limit, so a regression fails the test (the child dies)
instead of killing pytest or exhausting the machine."""

import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import llamagen_metrics as m

CHILD_MEMORY = 3 << 30


def run_isolated(body):
    """Runs `body` (which fills the dict `results` with name -> call) in a child Python with a
    limited address space; returns name -> (exception type, message) or ("ok", repr)."""
    script = textwrap.dedent(
        f"""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, ({CHILD_MEMORY}, {CHILD_MEMORY}))
        import numpy as np
        import llamagen_metrics as m
        results = {{}}
        """
    ) + textwrap.dedent(body) + textwrap.dedent(
        """
        out = {}
        for name, call in results.items():
            try:
                out[name] = ["ok", repr(call())]
            except Exception as e:
                out[name] = [type(e).__name__, str(e)]
        print(json.dumps(out))
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, f"the child died ({child.returncode}): {child.stderr[-2000:]}"
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_arguments_sizing_huge_allocations_raise_memory_error_naming_them():
    out = run_isolated(
        """
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((50, 8)), rng.standard_normal((40, 8))
        images = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (10**4, 10**4, 10**4, 3))
        wide = np.broadcast_to(np.zeros((1, 1), np.float32), (10**7, 10**6))
        results["kid_subsets"] = lambda: m.kid(a, b, subsets=10**12)
        results["stats_dim"] = lambda: m.FrechetStatistics(10**6)
        results["stats_dim_overflow"] = lambda: m.FrechetStatistics(2**40)
        results["codebook"] = lambda: m.codebook_usage(np.arange(10), 10**10)
        results["codebook_overflow"] = lambda: m.codebook_usage(np.arange(10), 2**62)
        results["ssim_broadcast"] = lambda: m.ssim(images, images)
        results["psnr_broadcast"] = lambda: m.psnr(images, images)
        results["fid_broadcast"] = lambda: m.fid(wide, wide)
        results["statistics_broadcast"] = lambda: m.statistics(wide)
        results["is_broadcast"] = lambda: m.inception_score(wide)
        results["pr_broadcast"] = lambda: m.precision_recall(wide, wide)
        results["indices_broadcast"] = lambda: m.codebook_usage(
            np.broadcast_to(np.zeros(1, np.int64), (10**12,)), 16
        )
        results["from_state"] = lambda: m.FrechetStatistics.from_state(
            3, np.zeros(10**6), np.broadcast_to(np.zeros((1, 1)), (10**6, 10**6))
        )
        results["fid_wide"] = lambda: m.fid(
            rng.standard_normal((3, 20000)), rng.standard_normal((3, 20000))
        )
        """
    )
    expected = {
        "kid_subsets": "subsets: ",
        "stats_dim": "dim: ",
        "stats_dim_overflow": "dim: ",
        "codebook": "codebook_size: ",
        "codebook_overflow": "codebook_size: ",
        "ssim_broadcast": "a: a copy of the array of shape [10000, 10000, 10000, 3]",
        "psnr_broadcast": "a: a copy of the array",
        "fid_broadcast": "features_a: a copy of the array of shape [10000000, 1000000]",
        "statistics_broadcast": "features: a copy",
        "is_broadcast": "logits: a copy",
        "pr_broadcast": "samples: a copy",
        "indices_broadcast": "indices: a copy",
        "from_state": "outer: a copy",
        "fid_wide": "features_a: 9 covariance-sized matrices of 20000 x 20000",
    }
    for name, start in expected.items():
        kind, message = out[name]
        assert kind == "MemoryError", (name, kind, message)
        assert message.startswith(start), (name, message)
        assert "set_max_memory" in message, (name, message)
    assert "far more than the 3 rows" in out["fid_wide"][1]


def test_budget_is_a_module_setting():
    assert m.max_memory() == 4 << 30
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((200, 64)), rng.standard_normal((150, 64))
    expected_fid, expected_stats = m.fid(a, b), m.statistics(a)
    try:
        # fid holds 9 matrices of 64 x 64 float64 (288 KiB), statistics 2 (64 KiB).
        m.set_max_memory(200 << 10)
        assert m.max_memory() == 200 << 10
        with pytest.raises(MemoryError, match=r"features_b: 9 covariance-sized matrices of 64 x 64 .* 200\.0 KiB"):
            m.fid(a, b)
        np.testing.assert_array_equal(m.statistics(a)[1], expected_stats[1])
        long = rng.standard_normal((1000, 64))
        m.statistics(long)  # read in place: only the 64 KiB of matrices count
        with pytest.raises(MemoryError, match="features: a copy of the array of shape \\[1000, 64\\]"):
            m.statistics(long[:, ::-1])  # not contiguous: a 500 KiB copy
        m.set_max_memory(100 << 10)
        with pytest.raises(MemoryError, match="a: a copy"):
            m.ssim(np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (10, 100, 100, 3)), np.zeros((10, 100, 100, 3), np.uint8))
    finally:
        m.set_max_memory(4 << 30)
    assert m.fid(a, b) == expected_fid
    with pytest.raises(ValueError, match="nbytes must be positive"):
        m.set_max_memory(0)


def test_broadcast_views_within_the_budget_give_the_values_of_their_copies():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    batch = np.broadcast_to(image, (4, 32, 32, 3))
    other = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert m.ssim(batch, other) == m.ssim(np.ascontiguousarray(batch), other)
    assert m.psnr(batch, other) == m.psnr(np.ascontiguousarray(batch), other)


def test_concurrent_merges_of_two_instances_are_serialised():
    # The probe: a.merge(b) and b.merge(a) in two threads ("Already mutably borrowed" panics).
    # Empty instances, so that the sums stay zero however the merges interleave.
    a, b = m.FrechetStatistics(512), m.FrechetStatistics(512)
    failures = []

    def merge_many(into, other):
        for _ in range(300):
            try:
                into.merge(other)
            except BaseException as e:  # noqa: B036 - a PanicException is a BaseException
                failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=merge_many, args=pair) for pair in ((a, b), (b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((30, 512)), rng.standard_normal((20, 512))
    a.update(x)
    b.update(y)
    a.merge(b)
    np.testing.assert_allclose(a.compute()[1], m.statistics(np.vstack([x, y]))[1], atol=1e-12)


def test_merge_during_an_update_is_a_runtime_error():
    rng = np.random.default_rng(6)
    batch = rng.standard_normal((20000, 512))
    busy, other = m.FrechetStatistics(512), m.FrechetStatistics(512)
    errors = []
    started = threading.Event()

    def update():
        started.set()
        for _ in range(3):
            busy.update(batch)

    worker = threading.Thread(target=update)
    worker.start()
    started.wait()
    while worker.is_alive():
        try:
            other.merge(busy)
        except BaseException as e:  # noqa: B036
            errors.append(e)
    worker.join()
    assert errors, "no merge overlapped the update"
    for e in errors:
        assert type(e) is RuntimeError, repr(e)
        assert "in use by another thread" in str(e)
    assert busy.count == 60000


def test_covariances_that_are_not_positive_semi_definite_are_refused():
    eye = np.eye(3)
    # The probe: frechet_distance(0, -I, 0, I) returned 0.0.
    with pytest.raises(ValueError, match=r"sigma1: a covariance matrix has no negative variances, but sigma1\[0, 0\] is -1e0"):
        m.frechet_distance(np.zeros(3), -eye, np.zeros(3), eye)
    with pytest.raises(ValueError, match="sigma2: .* no negative variances"):
        m.frechet_distance(np.zeros(3), eye, np.zeros(3), -eye)
    lopsided = eye.copy()
    lopsided[0, 2] = 0.5
    with pytest.raises(ValueError, match="sigma1: a covariance matrix must be symmetric"):
        m.frechet_distance(np.zeros(3), lopsided, np.zeros(3), eye)


def test_overflowing_features_are_refused():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((50, 8)), rng.standard_normal((40, 8))
    # The probe: precision_recall near 1e200 returned 1.0 / 1.0 (squared distances overflowed).
    with pytest.raises(ValueError, match="reference: values up to .*e200 make squared distances overflow float64"):
        m.precision_recall(a * 1e200, b * 1e200)
    with pytest.raises(ValueError, match="overflow float32"):
        m.precision_recall((a * 1e19).astype(np.float32), (b * 1e19).astype(np.float32))
    # Scaled by a power of two within the bound, the values are those of the unscaled sets.
    assert m.precision_recall(a * 2.0**400, b * 2.0**400) == m.precision_recall(a, b)
    for call in (lambda: m.fid(a * 1e200, b), lambda: m.statistics(a * 1e200)):
        with pytest.raises(ValueError, match="overflow float64"):
            call()
    stats = m.FrechetStatistics(8)
    stats.update(a * 1e200)
    with pytest.raises(ValueError, match="overflow float64"):
        stats.compute()
    with pytest.raises(ValueError, match="KID: the polynomial kernel overflowed"):
        m.kid(a * 1e200, b * 1e200)
