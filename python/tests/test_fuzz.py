"""A seeded fuzzer for every public function of the package: random shapes (empty ones, and huge
ones claimed by zero-stride views that hold one element), dtypes, NaN and infinite values,
covariances that are not symmetric or not positive, and sizes, counts and options out of any range.
Every call must return or raise an ``Exception`` (never pyo3's ``PanicException``, a
``BaseException``) and must not kill the interpreter.

The calls run in a child Python with a 3 GiB address-space limit and the package's memory budget
at 512 MiB, so an abort or a budget that does not hold in fact fails the test instead of killing
pytest; before each call the child prints its seed and
function on stderr, so the last line names the call that killed it. ``LLAMAGEN_FUZZ_SEED`` starts
the seeds elsewhere and ``LLAMAGEN_PY_FUZZ_SECONDS`` (default 4) sets the time; a failure names
its seed, and ``LLAMAGEN_FUZZ_SEED=S LLAMAGEN_PY_FUZZ_SECONDS=0`` replays seed S alone."""

import json
import os
import subprocess
import sys

CHILD = r"""
import json, random, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
import numpy as np
from numpy.lib.stride_tricks import as_strided
import llamagen_metrics as m

# A budget well inside the address space: what it admits must then fit in fact.
m.set_max_memory(512 << 20)

first_seed, seconds, min_calls = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
SLOW = 10.0

# Counts, sizes, ranks and seeds: small, negative, past 32 and 64 bits.
INTS = [0, 1, 2, 3, 5, -1, -(2**63), 2**31, 2**32 + 1, 10**6, 10**12, 2**62, 2**64, 2**70]


def an_int(r):
    return r.choice(INTS) if r.random() < 0.5 else r.randrange(0, 64)


def huge_view(r, dims, dtype):
    # One element seen as a huge array: what a caller's broadcast hands the package.
    shape = [r.choice([0, 1, 3, 10**3, 10**6, 10**9]) for _ in range(dims)]
    # numpy's own limit: a size in bytes that fits 63 bits, zero dimensions not counted.
    while int(np.prod([max(n, 1) for n in shape], dtype=object)) * np.dtype(dtype).itemsize >= 2**62:
        shape[shape.index(max(shape))] //= 1000
    if 0 in shape:
        # Empty, so within any budget: a billion empty rows is honest linear work (seconds through
        # `statistics`), not the hang the time limit looks for.
        shape = [min(n, 10**6) for n in shape]
    elif int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize < 1 << 30:
        # Within the budget, so computed: a million one-wide rows are hours of precision/recall's
        # quadratic search, honest work rather than a hang. The views are for memory claims.
        shape = [min(n, 1000) for n in shape]
    return as_strided(np.zeros(1, dtype), shape=tuple(shape), strides=(0,) * dims)


def damaged(r, g, a):
    # NaN, infinities and extremes in a few places, or a non-contiguous or read-only view.
    if a.size and a.dtype.kind == "f":
        a = a.copy()
        for _ in range(r.randrange(1, 4)):
            a.flat[r.randrange(a.size)] = r.choice([np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0])
    if a.ndim >= 2 and r.random() < 0.3:
        a = a.T
    if a.ndim >= 1 and r.random() < 0.2:
        a = a[::2]
    if r.random() < 0.1:
        a = a.copy()
        a.setflags(write=False)
    return a


def features(r, g, d=None):
    if r.random() < 0.1:
        return huge_view(r, 2, r.choice([np.float32, np.float64]))
    if r.random() < 0.05:
        return r.choice([None, 3.0, "x", [[1.0, 2.0], [3.0]], [], np.zeros(4), np.zeros((2, 2, 2))])
    n = r.choice([0, 1, 2, 3, 5, 20, 60])
    d = d if d is not None and r.random() < 0.8 else r.choice([0, 1, 2, 4, 16, 64])
    dtype = r.choice([np.float64, np.float32, np.float16, np.int64, np.uint8, np.bool_, np.complex64])
    a = (g.standard_normal((n, d)) * r.choice([1.0, 1e-30, 1e30])).astype(dtype)
    return damaged(r, g, a) if r.random() < 0.3 else a


def covariance(r, g, d):
    if r.random() < 0.1:
        return huge_view(r, 2, np.float64)
    d2 = d if r.random() < 0.8 else r.choice([0, 1, 3])
    x = g.standard_normal((d2, d2))
    kind = r.randrange(5)
    c = [x @ x.T, x, -np.eye(d2), np.zeros((d2, d2)), x @ x.T * 1e300][kind]
    return damaged(r, g, c) if r.random() < 0.3 else c


def vector(r, g, d):
    if r.random() < 0.1:
        return huge_view(r, 1, np.float64)
    v = g.standard_normal(d if r.random() < 0.8 else r.choice([0, 1, 7]))
    return damaged(r, g, v) if r.random() < 0.3 else v


def images(r, g, like=None):
    if r.random() < 0.1:
        return huge_view(r, 4, np.uint8)
    if like is not None and r.random() < 0.7:
        shape = like.shape
        if max(shape, default=0) > 16:
            return as_strided(np.zeros(1, np.uint8), shape=shape, strides=(0,) * len(shape))
    else:
        shape = tuple(r.choice([0, 1, 2, 3, 7, 16]) for _ in range(r.choice([4, 4, 4, 3, 5])))
    dtype = np.uint8 if r.random() < 0.85 else r.choice([np.float32, np.int16, np.bool_])
    a = g.integers(0, 256, size=shape).astype(dtype)
    return damaged(r, g, a) if r.random() < 0.2 else a


def statistics_object(r, g):
    if r.random() < 0.5:
        return m.FrechetStatistics(an_int(r))
    d = r.choice([1, 2, 4])
    return m.FrechetStatistics.from_state(an_int(r), vector(r, g, d), covariance(r, g, d))


def frechet_statistics(r, g):
    s = m.FrechetStatistics(r.choice([1, 2, 4, 16]))
    for _ in range(r.randrange(3)):
        s.update(features(r, g, s.dim))
    if r.random() < 0.5:
        s.merge(statistics_object(r, g))
    if r.random() < 0.3:
        s = m.FrechetStatistics.from_state(*s.state())
    return s.compute()


def call(r, g):
    name = r.choice(
        ["frechet_distance", "statistics", "fid", "inception_score", "precision_recall", "kid",
         "psnr", "ssim", "codebook_usage", "FrechetStatistics", "FrechetStatistics.from_state",
         "max_memory"]
    )
    d = r.choice([0, 1, 2, 4, 16])
    if name == "frechet_distance":
        args = (vector(r, g, d), covariance(r, g, d), vector(r, g, d), covariance(r, g, d))
        return name, lambda: m.frechet_distance(*args)
    if name == "statistics":
        x = features(r, g)
        return name, lambda: m.statistics(x)
    if name == "fid":
        a, b = features(r, g, d), features(r, g, d)
        return name, lambda: m.fid(a, b)
    if name == "inception_score":
        x = features(r, g)
        if r.random() < 0.5:
            kw = {"split_size": an_int(r)} if r.random() < 0.7 else {}
            return name, lambda: m.inception_score(x, r.choice(["adm", "torch", ""]), **kw)
        kw = {k: v for k, v in [("num_splits", an_int(r)), ("shuffle", r.random() < 0.5),
                                ("seed", an_int(r))] if r.random() < 0.7}
        return name, lambda: m.inception_score(x, "torch-fidelity", **kw)
    if name == "precision_recall":
        a, b = features(r, g, d), features(r, g, d)
        k, dist = an_int(r), r.choice(["exact", "adm-fp16", "l1"])
        return name, lambda: m.precision_recall(a, b, k=k, distance=dist)
    if name == "kid":
        a, b = features(r, g, d), features(r, g, d)
        # A million subsets fit the budget and take seconds each (honest work, not a hang); the
        # larger counts are the budget's to refuse.
        subsets, size = r.choice([n for n in INTS if n != 10**6]), an_int(r)
        return name, lambda: m.kid(a, b, subsets=subsets, subset_size=size, seed=an_int(r))
    if name in ("psnr", "ssim"):
        a = images(r, g)
        b = images(r, g, a)
        per_image = r.random() < 0.5
        if name == "psnr":
            return name, lambda: m.psnr(a, b, per_image=per_image)
        convention = r.choice(["skimage", "skimage-uniform", "llamagen", "other"])
        return name, lambda: m.ssim(a, b, convention, per_image=per_image)
    if name == "codebook_usage":
        if r.random() < 0.1:
            indices = huge_view(r, 1, np.int64)
        else:
            shape = tuple(r.choice([0, 1, 5, 100]) for _ in range(r.randrange(0, 3)))
            dtype = r.choice([np.int64, np.int32, np.uint8, np.uint64, np.float64])
            indices = g.integers(-5, 1 << 20, size=shape).astype(dtype)
        size = an_int(r)
        return name, lambda: m.codebook_usage(indices, size)
    if name == "FrechetStatistics":
        return name, lambda: frechet_statistics(r, g)
    if name == "FrechetStatistics.from_state":
        return name, lambda: statistics_object(r, g).compute()
    return name, m.max_memory


failures = []
calls = 0
start = time.monotonic()
while calls < min_calls or time.monotonic() - start < seconds:
    seed = first_seed + calls
    r, g = random.Random(seed), np.random.default_rng(seed)
    name, run = call(r, g)
    print(seed, name, file=sys.stderr, flush=True)
    began = time.monotonic()
    try:
        run()
    except BaseException as e:
        if not isinstance(e, Exception) or type(e).__name__ == "PanicException":
            failures.append(f"seed {seed} ({name}): {type(e).__name__}: {e}")
    took = time.monotonic() - began
    if took > SLOW:
        failures.append(f"seed {seed} ({name}): took {took:.1f} s")
    calls += 1
print(json.dumps({"calls": calls, "seconds": time.monotonic() - start, "failures": failures}))
"""


def test_public_functions_survive_random_and_hostile_arguments():
    first_seed = int(os.environ.get("LLAMAGEN_FUZZ_SEED", "0"))
    seconds = float(os.environ.get("LLAMAGEN_PY_FUZZ_SECONDS", "4"))
    # The same seeds on every machine, whatever its speed.
    min_calls = 1 if seconds == 0 else 300
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(first_seed), str(seconds), str(min_calls)],
        capture_output=True,
        text=True,
        timeout=seconds + 300,
    )
    last = child.stderr.strip().splitlines()[-5:]
    assert child.returncode == 0, (
        f"the fuzzing interpreter died ({child.returncode}) after: {last}\n"
        f"{child.stderr[-3000:]}"
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"fuzzed llamagen_metrics with {result['calls']} calls in {result['seconds']:.1f} s")
    assert not result["failures"], "\n".join(result["failures"])
