"""The compiled search kernels (recray/rec/kernels) against the NumPy reference.

* portable arithmetic: ``log`` and ``Phi^{-1}`` against mpmath, bit-identity of the NumPy and
  Numba builds, and no fused multiply-add in the CPU machine code or the GPU PTX;
* the CPU kernel returns the reference's winners, local indices, arrivals, step counts and
  scores bit for bit, with the lazy-dimension reject on or off and with hash collisions
  and table overflows forced;
* the strong exactness check: with the stopping bound disabled, each block runs 50x past its
  stop and the stopped winner must be the argmin over that long prefix; a planted bound
  1 bit too small (the bug that KS tests miss) must fail it;
* the arrival-time floor (issue 9): a spacing that rounds to 0 still advances ``T``;
* the GPU kernel's logic under Numba's CUDA simulator (a subprocess): same results as the
  reference, the same decoded bits on every backend, and a KS test on a small case.

KS exactness of every method on the CPU kernel runs in tests/test_exactness.py (the
``backend`` fixture includes ``numba``).
"""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from recray import rec
from recray.backend import get_backend
from recray.errors import BackendError, InputError
from recray.rec import api, kernels, portable
from recray.rec.kernels import cpu
from recray.rec.search import ChunkSchedule, run_search
from recray.rec.trees import Trees
from tests.conftest import typical_posteriors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- helpers
def problem(mu, sigma, bits, method, seed=3, budget=None, n_samples=256, trees=None):
    """The SearchProblem that ``rec.encode`` would build (standard prior, one batch)."""
    if budget is None and method not in rec.EXACT_METHODS:
        budget = n_samples
    return api.standard_problem(mu, sigma, bits, method, seed=seed, budget=budget, trees=trees)


#: Dyadic trees (tail-refined, and lopsided) for the configurations with unequal masses.
TREE_TABLE = ((0,), (4, 4, 3, 2, 2, 3, 4, 4), (3, 3, 2, 2, 3, 3), (1, 3, 3, 2))


def assert_same_outcome(a, b, what=""):
    for f in ("bin", "local", "arrival", "steps", "capped", "log_tau"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f"{what}: {f}")


def configs():
    """(name, mu, sigma, bits, method, n_samples) covering every method and layout."""
    rng = np.random.default_rng(0)
    out = []
    mu, s = typical_posteriors(60, 5, 2.0, 1, collapsed=(4,))
    out.append(("sp-pfr-5d", mu, s, [2, 2, 2, 2, 0], "sp-pfr", None))
    mu, s = typical_posteriors(40, 8, [6, 3, 2, 0.3, 0.1, 0.05, 2, 1], 2)
    out.append(("sp-pfr-8d-uneven", mu, s, [6, 3, 2, 0, 0, 0, 2, 1], "sp-pfr", None))
    mu, s = typical_posteriors(40, 3, 2.0, 3)
    out.append(("sp-pfr-coarse", mu, s, [1, 0, 0], "sp-pfr", None))  # long local indices
    mu, s = typical_posteriors(40, 2, 0.8, 4)
    out.append(("pfr-2d", mu, s, None, "pfr", None))
    mu, s = typical_posteriors(40, 1, 3.0, 5)
    out.append(("sp-pfr-1d", mu, s, 3, "sp-pfr", None))
    mu, s = typical_posteriors(30, 4, 2.0, 6)
    out.append(("sp-orc-4d", mu, s, 2, "sp-orc", rng.choice([64, 200, 300], size=30)))
    mu, s = typical_posteriors(30, 3, 1.0, 7)
    mu[:, 2] *= 4.0
    s[:, 2] = 1.3  # unbounded ratio: only fixed-budget methods
    out.append(("orc-wide", mu, s, None, "orc", 300))
    mu, s = typical_posteriors(40, 4, [2.0, 1.5, 2.5, 1.0], 8)
    mu *= 1.2  # means further out than the prior's: the tail intervals matter
    out.append(("sp-pfr-trees", mu, s, [0, 1, 2, 1], "sp-pfr", None))
    out.append(("sp-orc-trees", mu, s, [0, 1, 2, 1], "sp-orc", 300))
    return out


#: The tree of each dimension in the "-trees" configurations (others: complete partitions).
TREES = {n: Trees(TREE_TABLE, np.array([1, 2, 0, 3])) for n in ("sp-pfr-trees", "sp-orc-trees")}


CONFIGS = {c[0]: c for c in configs()}


def _problem_of(name, seed=3):
    _, mu, s, bits, method, ns = CONFIGS[name]
    budget = ns if ns is not None else None
    return problem(mu, s, bits, method, seed=seed, budget=budget, trees=TREES.get(name))


# --------------------------------------------------------------------------- portable math
def test_portable_log_matches_mpmath():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [rng.uniform(1e-3, 10.0, 200), 2.0 ** rng.uniform(-1000, 1000, 200), [1.0, 2.0, 0.5]]
    )
    got = portable.log(x, np)
    want = np.array([float(mp.log(mp.mpf(float(v)))) for v in x])
    ulps = np.abs(got - want) / np.spacing(np.maximum(np.abs(want), 1e-300))
    assert ulps.max() <= 1.0, ulps.max()
    assert got[-3] == 0.0


def test_portable_ndtri_matches_mpmath():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    rng = np.random.default_rng(2)
    p = np.concatenate(
        [
            rng.uniform(0.0, 1.0, 200),
            2.0 ** -rng.uniform(1, 80, 200),  # the lower tail the sampler uses
            1.0 - 2.0 ** -rng.uniform(2, 52, 50),
            [0.5, 0.075, 0.925, 2.0**-78],  # the region boundaries of AS241
        ]
    )
    got = portable.ndtri(p, np)
    want = np.array([float(mp.sqrt(2) * mp.erfinv(2 * mp.mpf(float(v)) - 1)) for v in p])
    ulps = np.abs(got - want) / np.spacing(np.abs(want))
    # AS241 is good to about 1e-16; SciPy's ndtri is 3 ulp off on the same points
    assert ulps.max() <= 6.0, ulps.max()
    assert got[450] == 0.0


def test_numpy_and_numba_builds_are_bit_identical():
    import numba

    ndtri, plog, sample = cpu.K.ndtri, cpu.K.plog, cpu.K.sample_in_interval

    @numba.njit
    def many(p, x, k, u, inv_J, out):
        for i in range(p.size):
            out[0, i] = ndtri(p[i])
            out[1, i] = plog(x[i])
            out[2, i] = sample(k[i], u[i], inv_J[i])

    rng = np.random.default_rng(3)
    n = 100_000
    p = np.where(rng.random(n) < 0.5, rng.random(n), 2.0 ** -rng.uniform(1, 78, n))
    x = 2.0 ** rng.uniform(-60, 70, n)
    b = rng.integers(0, 25, n)
    k = (rng.random(n) * np.ldexp(1.0, b)).astype(np.int64)
    u = np.ldexp(rng.integers(1, 2**53, n).astype(np.float64), -53)
    inv_J = np.ldexp(1.0, -b)
    out = np.empty((3, n))
    many(p, x, k, u, inv_J, out)
    np.testing.assert_array_equal(out[0], portable.ndtri(p, np))
    np.testing.assert_array_equal(out[1], portable.log(x, np))
    np.testing.assert_array_equal(out[2], portable.sample_in_interval(k, u, inv_J, np))


def test_cpu_frexp_from_bits_equals_math_frexp():
    """The CPU build's inline ``frexp`` (a bit cast) gives ``math.frexp``'s ``(m, e)`` on
    normal, subnormal, signed and zero inputs."""
    import numba

    frexp = cpu._frexp

    @numba.njit
    def many(x, m, e):
        for i in range(x.size):
            m[i], e[i] = frexp(x[i])

    rng = np.random.default_rng(5)
    x = rng.standard_normal(20_000) * 10.0 ** rng.integers(-320, 300, 20_000)
    x = np.concatenate([x, [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.0, 0.5]])
    x = np.concatenate([x, np.nextafter(2.2250738585072014e-308, 0.0, dtype=np.float64)[None]])
    m, e = np.empty_like(x), np.empty(x.size, dtype=np.int64)
    many(x, m, e)
    ref = [math.frexp(v) for v in x]
    np.testing.assert_array_equal(m, [r[0] for r in ref])
    np.testing.assert_array_equal(np.signbit(m), np.signbit([r[0] for r in ref]))
    np.testing.assert_array_equal(e, [r[1] for r in ref])


def test_visit_order_keeps_pairs_and_puts_large_bounds_first():
    r = np.array(
        [[0.1, 3.0, 0.5, 0.2, 9.0], [1.0, 1.0, 1.0, 1.0, 1.0], [np.nan, 0.0, 2.0, 0.0, 0.0]]
    )
    np.testing.assert_array_equal(
        kernels.visit_order(r), [[4, 1, 0, 2, 3], [0, 1, 2, 3, 4], [2, 3, 0, 1, 4]]
    )
    np.testing.assert_array_equal(
        kernels.visit_order(r[:, :4]), [[1, 0, 2, 3], [0, 1, 2, 3], [2, 3, 0, 1]]
    )


FMA = re.compile(r"\bv?f(n)?m(add|sub)\w*(sd|pd|ss|ps)\b")


def test_cpu_kernel_machine_code_has_no_fma():
    """Numba without fast-math must not contract ``a * b + c``: the decoder's bits (the
    regeneration kernel) and the search's arithmetic (ratio, log, times) rely on it."""
    import numba

    ratio, plog, ti = cpu.K.log_ratio, cpu.K.plog, cpu.K.time_increment

    @numba.njit(error_model="numpy")
    def search_math(y, m, s, log_s, t):
        return ratio(y, m, s, log_s) + plog(t) + np.float64(ti(t))

    search_math(0.3, 0.1, 0.5, math.log(0.5), 2.5)
    # the decoder kernel, compiled afresh (cached code cannot be inspected)
    regen = numba.njit(error_model="numpy")(cpu.regenerate_many.py_func)
    one = np.ones((1, 2), dtype=np.int64)
    zero = np.zeros((1, 2), dtype=np.int64)
    keys = np.ones((1, 2), dtype=np.uint64)
    leaf_k, leaf_inv = np.zeros(1, np.int64), np.ones(1)
    pm, ps = np.zeros((1, 2)), np.ones((1, 2))
    regen(one[:, 0], one[:, 0], one, zero, zero, leaf_k, leaf_inv, keys, pm, ps, np.empty((1, 2)))
    for fn in (search_math, regen):
        asm = "\n".join(fn.inspect_asm().values())
        assert "mulsd" in asm  # the code is there (mulsd / vmulsd)
        assert not FMA.search(asm), FMA.search(asm).group(0)


def test_cpu_prefetch_hint_emits_a_prefetch_and_changes_nothing():
    """The CPU build's ``prefetch`` (search_block fetches each arrival's local-index table
    slot ahead of the lookups) is a real prefetch instruction and only a hint."""
    import numba

    @numba.njit
    def touch(a, idx):
        s = 0
        for i in idx:
            cpu._prefetch(a, i)
            s += a[i]
        return s

    a = np.arange(64, dtype=np.int64)
    idx = np.array([3, 63, 0, 17])
    assert touch(a, idx) == 83
    assert (a == np.arange(64)).all()
    asm = "\n".join(touch.inspect_asm().values())
    assert re.search(r"\bprefetch\w*\b", asm), "no prefetch instruction emitted"


PRELOAD_SCRIPT = """
import sys
from recray.rec import kernels
kernels.preload_cpu(sys.argv[1])
first = kernels._preloading
kernels.preload_cpu(sys.argv[1])  # once per process
assert kernels._preloading is first
first.join(120)
print(kernels._concurrent is not None, "numba" in sys.modules)  # the layer is known
"""


@pytest.mark.parametrize("backend, expect", [("numba", "True True"), ("numpy", "False False")])
def test_preload_loads_the_cpu_build_once_and_only_for_it(backend, expect):
    """``preload_cpu`` (started by the local engine's callers) loads Numba's threading layer
    on its thread when the backend is the CPU build, and imports nothing of Numba for the
    NumPy reference."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-c", PRELOAD_SCRIPT, backend], capture_output=True, text=True,
        env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == expect.split()


#: Exit status of the probe when libNVVM (or its libdevice) is absent: the only skip.
NVVM_ABSENT = 77
NVVM_PROBE = f"""
import sys
try:
    from numba.cuda.cudadrv import libs, nvvm
    nvvm.NVVM()  # NvvmSupportError (an ImportError) when libNVVM cannot be loaded
    libs.open_libdevice()  # OSError when libdevice is not installed
except (ImportError, OSError) as exc:
    print(f"{{type(exc).__name__}}: {{exc}}")
    sys.exit({NVVM_ABSENT})
"""


def _run_cuda_script(script: str) -> str:
    """stdout of ``script`` in a fresh process without the CUDA simulator. Skips only when
    the probe finds no libNVVM; any failure of ``script`` itself (a compile error included)
    fails the test."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("NUMBA_ENABLE_CUDASIM", None)

    def run(src):
        return subprocess.run(
            [sys.executable, "-c", src], capture_output=True, text=True, env=env, timeout=300
        )

    probe = run(NVVM_PROBE)
    if probe.returncode == NVVM_ABSENT:
        pytest.skip(
            f"libNVVM not installed ({probe.stdout.strip()}; pip install "
            "'cuda-toolkit[nvvm,nvrtc]==13.*')"
        )
    assert probe.returncode == 0, probe.stderr[-3000:]
    r = run(script)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_gpu_kernel_ptx_has_no_fma():
    """The CUDA build's PTX (compiled here without a GPU, when libNVVM is installed) has no
    fused multiply-add: every product is an explicitly rounded mul.rn.f64."""
    script = r"""
import re, types
import numba.cuda.dispatcher as d
d.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
from numba import cuda, types as T
from recray.rec.kernels import gpu
f2, f1 = T.float64[:, ::1], T.float64[::1]
i2, i1 = T.int64[:, ::1], T.int64[::1]
u2 = T.uint64[:, ::1]
prob = T.Tuple((f2, f2, f2, i2, i2, i2, f2, i2, i1, f1, i2, f1, f1, f1, i2, f2, f1, u2, i1,
                T.boolean, T.boolean))
sig = (prob, i1, i1, i1, T.uint64, i1, u2, f2, i2, f1, i1)
ptx, _ = cuda.compile_ptx(gpu.search_kernel.py_func, sig, cc=(9, 0))
ptx2, _ = cuda.compile_ptx(gpu.regenerate_kernel.py_func,
                           (i1, i1, i2, i2, i2, i1, f1, u2, f2, f2, f2), cc=(9, 0))
print(len(re.findall(r"\bfma\.", ptx + ptx2)), len(re.findall(r"mul\.rn\.f64", ptx + ptx2)))
"""
    n_fma, n_mul = map(int, _run_cuda_script(script).split())
    assert n_mul > 100
    assert n_fma == 0


def test_negative_control_an_nvvm_compile_failure_fails_the_ptx_check():
    """A compile error that names NVVM (here raised by a planted script once the probe has
    found libNVVM) fails the check; it never skips."""
    planted = "raise RuntimeError('NVVM_ERROR_COMPILATION: planted nvvmError in libNVVM')"
    with pytest.raises(AssertionError, match="NVVM_ERROR_COMPILATION"):
        _run_cuda_script(planted)


def _uniform_of(m):
    """The kernels' ``uniform_of``: ``m 2^-53``, and ``2^-54`` for ``m = 0``."""
    m = np.asarray(m, dtype=np.uint64)
    return np.where(m == 0, 2.0**-54, m.astype(np.float64) * 2.0**-53)


def test_draw_thresholds_compare_as_the_float_cdf():
    """``thr <= m`` exactly when ``cdf < uniform_of(m)``, on the entries where the two
    comparisons could part: multiples of 2^-53 and their neighbours, values below 2^-54,
    0, 1 (the padding), NaN and infinities, against the integers next to each entry."""
    rng = np.random.default_rng(5)
    grid = rng.integers(0, 2**53, 3000).astype(np.float64) * 2.0**-53
    tiny = np.array([0.0, 2.0**-60, 2.0**-54, np.nextafter(2.0**-54, 0), 2.0**-53, 5e-324])
    cdf = np.concatenate(
        [
            grid,
            np.nextafter(grid, 1.0),
            np.nextafter(grid, 0.0),
            rng.random(3000),
            tiny,
            [1.0, np.nextafter(1.0, 0), 0.5, -0.25, np.nan, np.inf, -np.inf],
        ]
    )
    thr = kernels.draw_thresholds(cdf)
    assert thr.dtype == np.uint64
    base = np.floor(np.nan_to_num(np.ldexp(cdf, 53), nan=0.0, posinf=0.0, neginf=0.0))
    for dm in (-2, -1, 0, 1, 2):
        m = np.clip(base + dm, 0, 2**53 - 1).astype(np.uint64)
        m[-20:] = rng.integers(0, 2**53, 20).astype(np.uint64)
        np.testing.assert_array_equal(thr <= m, cdf < _uniform_of(m), err_msg=f"dm={dm}")
    # negative control: thresholds one too high part from the float comparison
    wrong = thr + np.uint64(1)
    m = np.clip(base + 1, 0, 2**53 - 1).astype(np.uint64)
    assert ((wrong <= m) != (cdf < _uniform_of(m))).sum() > 1000


# --------------------------------------------------------------------------- search
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cpu_kernel_equals_reference(name):
    prob = _problem_of(name)
    ref = run_search(get_backend("numpy"), prob, ChunkSchedule(first=7, growth=1.5))
    assert_same_outcome(kernels.search_cpu(prob), ref, name)
    assert_same_outcome(kernels.search_cpu(prob, lazy=False), ref, name + " (not lazy)")


@pytest.mark.parametrize("name", ["sp-pfr-5d", "sp-pfr-coarse", "sp-orc-4d"])
def test_local_index_hash_with_forced_collisions_and_overflows(name, monkeypatch):
    """Hash multiplier 0 sends every bin to slot 0 (each lookup probes past all earlier
    bins); 2-entry starting tables overflow at once and are regrown 4x at a time."""
    prob = _problem_of(name)
    ref = kernels.search_cpu(prob)
    assert_same_outcome(kernels.search_cpu(prob, hash_mult=0), ref, name + " collisions")
    real = kernels.initial_caps
    monkeypatch.setattr(
        kernels, "initial_caps", lambda has_bins, *a: np.where(has_bins, 2, 1).astype(np.int64)
    )
    assert_same_outcome(kernels.search_cpu(prob, hash_mult=0), ref, name + " overflow")
    monkeypatch.setattr(kernels, "initial_caps", real)
    if name == "sp-pfr-coarse":
        assert ref.local.max() > 20  # many arrivals per bin: the counts matter


def test_encode_agrees_across_numpy_and_numba_on_typical_blocks():
    """Golden equality through the public API on the benchmark's 8-D 16-bit blocks."""
    from recray.bench.throughput import make_blocks

    mu, sigma, bits = make_blocks(12, seed=4)
    a = rec.encode(mu, sigma, bits=bits, seed=9, backend="numpy")
    b = rec.encode(mu, sigma, bits=bits, seed=9, backend="numba")
    np.testing.assert_array_equal(a.indices.as_array(), b.indices.as_array())
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert (a.backend_name, b.backend_name) == ("numpy", "numba")


@pytest.mark.parametrize(
    "method,bits,n_samples", [("sp-orc", [3, 2, 2, 2, 1, 1, 0, 0], 2048), ("orc", None, 1024)]
)
def test_fixed_budget_lazy_reject_keeps_every_winner(method, bits, n_samples):
    """Fixed-budget search drops a candidate once the intervals it drew cannot lift it
    past the best (``log_bound``): on 8-D blocks of 12 bits the winners equal the full
    evaluation's and the reference's, and most candidate dimensions go unevaluated. A
    bound planted 1 nat too low drops winners (negative control)."""
    mu, s = typical_posteriors(48, 8, 1.5, 31)
    prob = problem(mu, s, bits, method, seed=5, budget=np.full(48, n_samples))
    full = kernels.search_cpu(prob, lazy=False)
    assert_same_outcome(kernels.search_cpu(prob), full, method)
    ref = run_search(get_backend("numpy"), prob, ChunkSchedule(first=64, growth=2.0))
    assert_same_outcome(full, ref, method + " reference")
    t = prob.tables
    low = dataclasses.replace(prob, tables=dataclasses.replace(t, log_bound=t.log_bound - 1.0))
    wrong = kernels.search_cpu(low)
    assert (wrong.arrival != full.arrival).sum() >= 10


# --------------------------------------------------------------------------- strong check
STRONG = {
    # name: (method, targets, bits)
    "sp-pfr-5d": ("sp-pfr", lambda: typical_posteriors(600, 5, 2.0, 11, collapsed=(4,)), 2),
    "sp-pfr-8d": ("sp-pfr", lambda: typical_posteriors(100, 8, 1.0, 12), 3),
    "sp-pfr-coarse": ("sp-pfr", lambda: typical_posteriors(100, 3, 1.5, 13), [1, 1, 0]),
    "pfr-2d": ("pfr", lambda: typical_posteriors(600, 2, 1.0, 14), None),
    # ratios that peak beyond the sampler's reach: the bound over the reach stops these
    # (tests/test_reach.py); the winner must still be the argmin of the whole process
    "sp-pfr-near-collapsed": ("sp-pfr", lambda: near_collapsed(300, 6, 16), [0, 0, 0, 0, 0, 2]),
    # unequal interval masses (dyadic trees): the bound sums w_k sup_k over the leaves
    "sp-pfr-trees": ("sp-pfr", lambda: spread(300, 4, 17), [0, 1, 2, 1]),
}


def spread(n, d, seed):
    mu, s = typical_posteriors(n, d, [2.0, 1.5, 2.5, 1.0], seed)
    return mu * 1.2, s


def near_collapsed(n, d, seed):
    """Posteriors a hair narrower than the prior with means a few hundredths of a sigma out
    (a VAE's unused dimensions), the last dimension shifted further (its peak in its outer
    interval)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.995, 0.9995, (n, d))
    mu = rng.normal(size=(n, d)) * np.sqrt(1 - s * s)
    s[:, -1] = rng.uniform(0.97, 0.99, n)
    mu[:, -1] = rng.choice([-1.0, 1.0], n) * rng.uniform(0.4, 0.8, n)
    return mu, s


def long_prefix_mismatches(name, lower_bound_bits=0.0):
    """Blocks whose stopped winner differs from the argmin over 50x their steps."""
    method, make, bits = STRONG[name]
    mu, s = make()
    prob = problem(mu, s, bits, method, seed=21, trees=TREES.get(name))
    stopped_prob = prob
    if lower_bound_bits:  # the planted bug: a bound that is too small
        t = prob.tables
        stopped_prob = dataclasses.replace(
            prob,
            tables=dataclasses.replace(t, log_rmax=t.log_rmax - lower_bound_bits * math.log(2)),
        )
    stopped = kernels.search_cpu(stopped_prob)
    assert not stopped.capped.any()
    long = dataclasses.replace(
        prob,
        tables=dataclasses.replace(prob.tables, log_rmax=np.full(prob.m.shape[0], np.inf)),
        budget=np.maximum(50 * stopped.steps, 200),
    )
    run_out = kernels.search_cpu(long)
    assert run_out.capped.all()  # the bound is off: every block ran its whole prefix
    np.testing.assert_array_equal(run_out.steps, long.budget)
    same = (run_out.arrival == stopped.arrival) & (run_out.bin == stopped.bin)
    same &= run_out.local == stopped.local
    return int((~same).sum()), int(stopped.steps.sum())


@pytest.mark.parametrize("name", sorted(STRONG))
def test_stopped_winner_is_the_argmin_of_a_50x_longer_run(name):
    bad, steps = long_prefix_mismatches(name)
    assert steps > 0
    assert bad == 0, f"{name}: {bad} blocks stopped before their winner"


@pytest.mark.parametrize("name", ["sp-pfr-5d", "pfr-2d", "sp-pfr-trees"])
def test_negative_control_bound_one_bit_low_is_caught(name):
    """A stopping bound 1 bit too small stops about 2x early: KS tests miss it, this check
    must not."""
    bad, _ = long_prefix_mismatches(name, lower_bound_bits=1.0)
    assert bad >= 3, bad  # a few percent of the blocks; the true bound gives none


def test_strong_check_on_the_reference_too():
    """The same check through the NumPy reference on a few blocks (it is the oracle)."""
    mu, s = typical_posteriors(12, 3, 1.5, 15)
    prob = problem(mu, s, [2, 1, 1], "sp-pfr", seed=5)
    be = get_backend("numpy")
    stopped = run_search(be, prob, ChunkSchedule())
    long = dataclasses.replace(
        prob,
        tables=dataclasses.replace(prob.tables, log_rmax=np.full(12, np.inf)),
        budget=np.maximum(50 * stopped.steps, 200),
    )
    out = run_search(be, long, ChunkSchedule())
    np.testing.assert_array_equal(out.arrival, stopped.arrival)
    np.testing.assert_array_equal(out.local, stopped.local)


# --------------------------------------------------------------------------- issue 9 floor
def test_time_increment_floor_and_rounding():
    ti = cpu.K.time_increment
    assert ti(0.0) == 1 and ti(1e-16) == 1  # a spacing that rounds to 0 still counts 1
    assert ti(1.5 / 2**32) == 2 and ti(2.5 / 2**32) == 2  # round half to even, as np.rint
    rng = np.random.default_rng(5)
    e = np.concatenate([rng.exponential(size=2000), rng.uniform(0, 1e-9, 100), [37.4, 1e6]])
    want = np.maximum(np.rint(e * 2.0**32), 1.0).astype(np.uint64)
    assert all(int(ti(v)) == int(w) for v, w in zip(e, want, strict=True))


def test_reference_arrival_times_never_zero(monkeypatch):
    """Force every spacing uniform to 1 - 2^-53 (E ~ 1e-16, which rounds to 0 units): the
    floor keeps T = k units, so ln T is finite and the search still stops by its bound."""
    import recray.rec.search as search

    real = search.private_uniforms

    def tiny_spacings(k0, k1, arrival, which, xp):
        out = real(k0, k1, arrival, which, xp)
        out[0] = np.full_like(out[0], 1.0 - 2.0**-53)
        return out

    monkeypatch.setattr(search, "private_uniforms", tiny_spacings)
    mu, s = typical_posteriors(5, 2, 1.0, 16)
    prob = problem(mu, s, None, "pfr", budget=64)
    out = run_search(get_backend("numpy"), prob, ChunkSchedule(first=4))
    assert np.all(np.isfinite(out.log_tau))
    # T_k = k units: ln T_k - ln r'_max reaches the best score within the budget or not,
    # but never through ln 0 = -inf
    assert np.all(out.steps >= 1)


# --------------------------------------------------------------------------- plumbing
def test_backend_resolution(monkeypatch):
    from recray import backend as bk

    monkeypatch.delenv("RECRAY_BACKEND", raising=False)
    assert bk.resolve_name(None) in ("cuda", "numba")  # auto: the fastest usable
    assert bk.resolve_name("auto") == bk.auto_name()
    if not bk.cuda_available():
        with pytest.raises(BackendError, match="backend 'cuda' is not usable"):
            get_backend("cuda")  # never a silent fallback to the CPU
    res = rec.encode(np.zeros((2, 2)), np.full((2, 2), 0.5), method="pfr", backend="numba")
    assert res.backend_name == "numba"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="device nodes are Linux's")
def test_no_nvidia_driver_answers_without_importing_numba_cuda():
    """A CPU-only Linux machine resolves ``auto`` without importing ``numba.cuda`` (and
    probing the driver: 0.2-0.4 s of every run); an explicit ``cuda`` still probes, and
    the simulator still counts as CUDA."""
    code = (
        "import sys, recray.backend as bk; bk._NVIDIA_SIGNS = ('/nonexistent/nvidiactl',); "
        "print(bk.auto_name(), 'numba.cuda' in sys.modules, bk.cuda_available(), "
        "'numba.cuda' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split()[:2] == ["numba", "False"], out.stderr
    assert out.stdout.split()[3] == "True", out.stderr  # the explicit probe imports it
    env["NUMBA_ENABLE_CUDASIM"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split()[2] == "True", out.stderr


def test_decode_ignores_encoder_only_arguments():
    mu, s = typical_posteriors(4, 2, 1.0, 17)
    kw = {"method": "sp-orc", "bits": 1, "seed": 4, "n_samples": 64}
    res = rec.encode(mu, s, **kw)
    x = rec.decode(res.indices, max_steps=10, on_cap="keep", chunks=None, **kw)
    np.testing.assert_array_equal(x, res.samples)
    with pytest.raises(InputError, match="rng_version"):
        rec.decode(res.indices, rng_version=7, **kw)


def test_decode_of_shared_rows_equals_decode_of_full_arrays():
    """The kernels read a bit allocation or prior given once for every block (a broadcast,
    never copied) exactly as the same values given per block, on both backends."""
    rng = np.random.default_rng(3)
    n, d = 300, 5
    bits = np.array([3, 0, 2, 1, 4])
    pm, ps = rng.normal(size=d), rng.uniform(0.5, 2.0, size=d)
    idx = np.stack([rng.integers(0, 1 << int(bits.sum()), n), rng.integers(1, 50, n)], 1)
    kw = {"seed": 9, "stream_ids": np.arange(n) + 7}
    full = [np.tile(a, (n, 1)) for a in (bits, pm, ps)]
    for be in ("numpy", "numba"):
        shared = rec.decode(idx, bits=bits, prior_mu=pm, prior_sigma=ps, backend=be, **kw)
        per_row = rec.decode(
            idx, bits=full[0], prior_mu=full[1], prior_sigma=full[2], backend=be, **kw
        )
        np.testing.assert_array_equal(shared, per_row)
        moved = full[1].copy()
        moved[-1, 2] += 1.0  # a per-row value is read per row, not from row 0
        x = rec.decode(idx, bits=bits, prior_mu=moved, prior_sigma=ps, backend=be, **kw)
        np.testing.assert_array_equal(x[:-1], shared[:-1])
        assert x[-1, 2] == pytest.approx(shared[-1, 2] + 1.0, abs=1e-12)


# --------------------------------------------------------------------------- CUDA simulator
SIM_SCRIPT = r"""
import json, sys, time
import numpy as np
t0 = time.time()
from scipy import stats
sys.path.insert(0, {root!r})
from recray import rec
from recray.rec import kernels
from tests.test_kernels import CONFIGS, assert_same_outcome, problem
from tests.test_determinism import make_batch, SEED
from tests.conftest import typical_posteriors

out = {{}}
for method in ("sp-pfr", "pfr", "sp-orc", "orc"):
    mu, sigma, per = make_batch(method, n=6, seed=2)
    if "n_samples" in per:
        per["n_samples"] = np.full(6, 48)
    a = rec.encode(mu, sigma, method=method, seed=SEED, backend="numpy", **per)
    b = rec.encode(mu, sigma, method=method, seed=SEED, backend="cuda", **per)
    dk = dict(method=method, seed=SEED, stream_ids=per["stream_ids"], bits=per.get("bits"))
    xs = [rec.decode(a.indices, backend=be, **dk) for be in ("numpy", "numba", "cuda")]
    out[method] = dict(
        indices=bool(np.array_equal(a.indices.as_array(), b.indices.as_array())),
        steps=bool(np.array_equal(a.steps, b.steps)),
        samples=bool(np.array_equal(a.samples, b.samples)),
        decode=all(bool(np.array_equal(x, a.samples)) for x in xs),
        label=b.backend_name,
    )
# unequal interval masses (trees): the same search, and the same decoded bits everywhere
from tests.test_kernels import TREES
_, mu, s, bits, _, _ = CONFIGS["sp-pfr-trees"]
tr = TREES["sp-pfr-trees"]
mu, s = mu[:6], s[:6]
a = rec.encode(mu, s, bits=bits, trees=tr, method="sp-pfr", seed=SEED, backend="numpy")
b = rec.encode(mu, s, bits=bits, trees=tr, method="sp-pfr", seed=SEED, backend="cuda")
dk = dict(method="sp-pfr", seed=SEED, bits=bits, trees=tr)
xs = [rec.decode(a.indices, backend=be, **dk) for be in ("numpy", "numba", "cuda")]
out["trees"] = dict(
    indices=bool(np.array_equal(a.indices.as_array(), b.indices.as_array())),
    steps=bool(np.array_equal(a.steps, b.steps)),
    samples=bool(np.array_equal(a.samples, b.samples)),
    decode=all(bool(np.array_equal(x, a.samples)) for x in xs),
    label=b.backend_name,
)
# hash collisions and table overflows in the GPU build
_, mu, s, bits, method, _ = CONFIGS["sp-pfr-coarse"]
steps = kernels.search_cpu(problem(mu, s, bits, method)).steps
rows = np.flatnonzero((steps > 30) & (steps < 300))[:3]  # short enough for the simulator
prob = problem(mu[rows], s[rows], bits, method)
ref = kernels.search_cpu(prob)
assert ref.local.max() > 5
kernels.initial_caps = lambda has_bins, *a: np.where(has_bins, 2, 1).astype(np.int64)
assert_same_outcome(kernels.search_gpu(prob, hash_mult=0), ref, "gpu overflow")
out["overflow"] = True
out["t_overflow"] = time.time() - t0
# a small KS test of the GPU kernel's samples
mu, s = typical_posteriors(200, 2, 1.0, 31)
res = rec.encode(mu, s, bits=[2, 2], method="sp-pfr", seed=1, backend="cuda")
z = (res.samples - mu) / s
cols = [z[:, 0], z[:, 1], z.sum(axis=1) / np.sqrt(2)]
out["ks_p"] = min(1.0, 3 * min(stats.kstest(c, "norm").pvalue for c in cols))
out["t_all"] = time.time() - t0
print("RESULT" + json.dumps(out))
"""


def test_cuda_kernel_under_the_simulator():
    """The GPU build's logic (numba-cuda's simulator runs it as Python; not a GPU run)."""
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-c", SIM_SCRIPT.format(root=ROOT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.split("RESULT", 1)[1])
    for method in ("sp-pfr", "pfr", "sp-orc", "orc", "trees"):
        o = out[method]
        assert o["label"] == "cuda-simulator"
        assert o["indices"] and o["steps"] and o["samples"] and o["decode"], (method, o)
    assert out["overflow"]
    assert out["ks_p"] > 1e-3, out["ks_p"]


def test_kernel_key_derivation_equals_reference():
    from recray.rec.philox import DOMAIN_SHARED, derive_keys

    ids = np.array([0, 1, -1, 2**40 + 7, -(2**63)], dtype=np.int64)
    for seed in (0, 7, 2**64 - 1):
        got = kernels.shared_keys(seed, ids, 2)
        want = derive_keys(seed, ids, DOMAIN_SHARED, np, 2)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_rng_version_1_in_a_header_decodes_with_recipe_1(tmp_path):
    """A run header with rng_version 1 gives a spec that decodes with recipe 1 (old keys,
    SciPy's ndtri), the same as the API's rng_version=1; unknown versions are refused. A
    run written by the recipe 1 code itself is decoded in tests/test_old_runs.py."""
    from recray.errors import FormatError
    from recray.format.run import Run
    from recray.latents import synthesize
    from recray.latents.io import read_prior
    from recray.pipeline import codec, driver

    lat, pri = synthesize(12, 8, str(tmp_path / "synth"), seed=3)
    out = str(tmp_path / "run")
    driver.compress(lat, pri, out, block_bits=8.0, batch_size=16, engine="local")
    run = Run.open(out)
    prior = read_prior(pri)
    spec2 = driver.spec_from_header(run.header, prior)
    assert spec2.rng_version == 2
    spec1 = driver.spec_from_header(dict(run.header, rng_version=1), prior)
    assert spec1.rng_version == 1
    ids = np.arange(3, dtype=np.int64)
    nb = spec1.plan.n_blocks
    bins = np.zeros((3, nb), dtype=np.int64)
    local = np.ones((3, nb), dtype=np.int64)
    z1 = codec.decode_indices(ids, bins, local, spec1)
    z2 = codec.decode_indices(ids, bins, local, spec2)
    assert not np.array_equal(z1, z2)  # other keys, other sampler
    # recipe 1, block by block: the same as the API's rng_version=1
    sids = codec.block_stream_ids(codec.item_keys(ids), nb)
    grp = next(iter(spec1.groups()))
    _, _, pm, ps, bits = codec.block_rows(grp, np.zeros((3, 8)), np.ones((3, 8)), spec1)
    x = rec.decode(
        rec.Indices(
            bins[:, grp.blocks].reshape(-1), local[:, grp.blocks].reshape(-1), grp.dims.shape[1]
        ),
        prior_mu=pm,
        prior_sigma=ps,
        bits=bits,
        trees=spec1.row_trees(grp, 3),
        method=spec1.method,
        seed=spec1.seed,
        stream_ids=sids[:, grp.blocks].reshape(-1),
        rng_version=1,
    )
    g, s = grp.dims.shape
    np.testing.assert_array_equal(z1[:, grp.dims.reshape(-1)], x.reshape(3, g * s))
    with pytest.raises(FormatError, match="rng_version"):
        driver.spec_from_header(dict(run.header, rng_version=3), prior)


def test_calls_from_several_threads_agree():
    from concurrent.futures import ThreadPoolExecutor

    mu, s = typical_posteriors(50, 4, 1.5, 19)

    def one(seed):
        return rec.encode(mu, s, bits=2, seed=seed, backend="numba")

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(one, [1, 2, 1, 2]))
    for a, b in ((got[0], got[2]), (got[1], got[3])):
        np.testing.assert_array_equal(a.indices.as_array(), b.indices.as_array())
        np.testing.assert_array_equal(a.samples, b.samples)


def test_one_thread_calls_at_once_follow_the_threading_layer():
    """Calls overlap only on a threadsafe layer; one-thread calls made at once from several
    threads (what the engines' batch workers make) equal one call on the whole pool."""
    from concurrent.futures import ThreadPoolExecutor

    import numba

    concurrent = kernels.cpu_calls_concurrent()  # (loads the layer)
    assert concurrent == (numba.threading_layer() in kernels.THREADSAFE_LAYERS)
    prob = _problem_of("sp-pfr-5d")
    want = kernels.search_cpu(prob)

    def one(_):
        numba.set_num_threads(1)
        return kernels.search_cpu(prob)

    with ThreadPoolExecutor(3) as pool:
        for got in pool.map(one, range(3)):
            assert_same_outcome(got, want, "one-thread call")


def test_pipeline_bytes_are_the_same_on_numpy_and_the_kernel(tmp_path):
    """recray compress writes the same files whichever backend searched."""
    from recray.latents import synthesize
    from recray.pipeline import driver

    lat, pri = synthesize(40, 16, str(tmp_path / "synth"), seed=5)
    files = {}
    for be in ("numpy", "numba"):
        out = str(tmp_path / f"run-{be}")
        driver.compress(
            lat,
            pri,
            out,
            block_bits=8.0,
            batch_size=16,
            engine="local",
            backend=be,
            on_unbounded="orc",
            max_steps=2**16,
        )
        files[be] = {
            name: open(os.path.join(out, name), "rb").read()
            for name in sorted(os.listdir(out))
            if name.endswith(".parquet")
        }
        man = json.load(open(os.path.join(out, "manifest.json")))
        assert man.pop("encoder") == {"backend": be}
        files[be]["manifest"] = man
    assert files["numpy"] == files["numba"]
    assert any(name.endswith(".parquet") for name in files["numpy"])
