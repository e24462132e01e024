"""Compiled search kernels: one block's whole sequential search per thread.

One source (:mod:`recray.rec.kernels.source`), two builds: the CPU build
(:mod:`recray.rec.kernels.cpu`, Numba, ``prange`` over blocks) and the GPU build
(:mod:`recray.rec.kernels.gpu`, numba-cuda, one CUDA thread per block). Both return what
the NumPy reference (:func:`recray.rec.search.run_search`) returns, bit for bit: the same
winners, local indices, step counts and scores (``tests/test_kernels.py``).

The builds are imported on first use, so ``import recray`` never compiles anything.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from recray.rec.kernels.source import (
    HASH_MULT,
    PROBLEM_FIELDS,
    SCRATCH_EXTRA,
    ST_CAPPED,
    ST_OVERFLOW,
)

#: Serializes calls into the CPU build where Numba's threading layer is the fallback
#: (workqueue), which aborts on concurrent parallel calls; see :func:`cpu_calls_concurrent`.
_CPU_LOCK = threading.Lock()
#: Numba threading layers that take parallel calls from several threads at once.
THREADSAFE_LAYERS = ("omp", "tbb")
_concurrent: bool | None = None  # known after the first call into the CPU build

#: Entries of the local-index tables of one GPU launch (keys and counts: 16 bytes each).
GPU_POOL_ENTRIES = 1 << 26
GPU_THREADS = 128
MIN_TABLE = 16
MAX_START_TABLE = 1 << 20


@contextlib.contextmanager
def _cpu_call():
    """The guard of one call into the CPU build: none once the threading layer is known to
    be threadsafe, else :data:`_CPU_LOCK`, under which the first call learns the layer."""
    global _concurrent
    if _concurrent:
        yield
        return
    with _CPU_LOCK:
        yield
        if _concurrent is None:
            import numba

            _concurrent = numba.threading_layer() in THREADSAFE_LAYERS


def cpu_calls_concurrent() -> bool:
    """Whether several Python threads may call the CPU build at once: True with Numba's
    ``omp`` or ``tbb`` threading layer, False with the fallback ``workqueue`` (calls are
    then serialized). Loads the threading layer (one tiny call) if no call has yet."""
    if _concurrent is None:
        shared_keys(0, np.zeros(1, np.int64), 1)
    return bool(_concurrent)


def one_kernel_thread() -> None:
    """Make the calling thread's compiled-kernel calls run on one thread (Numba's setting
    is per thread): the initializer of worker threads that call kernels side by side."""
    import numba

    numba.set_num_threads(1)


_PRELOAD_LOCK = threading.Lock()
_preloading: threading.Thread | None = None


def preload_cpu(backend=None) -> None:
    """Start loading the CPU build on a daemon thread, once per process, when ``backend``
    (:func:`recray.backend.get_backend`'s argument) resolves to it: Numba's import, its
    threading layer and runtime, the first cached kernel (0.5-0.8 s on the first call of a
    process, mostly on one core). A caller that reads weights, data or its input before its
    first search overlaps that work with it: ``recray codec mnist compress`` (SP-PFR 48-bit,
    1,000 images, local engine, 2 cores, alternating with the code before) took 4.45-5.15
    against 4.53-5.41 ms/image in process (faster in each of 5 pairs) and 4.2-4.4 against
    4.3-4.5 through the CLI (6 pairs). Changes no result; an error here is left to the first
    real call, which reports it."""
    global _preloading
    with _PRELOAD_LOCK:
        if _preloading is not None or _concurrent is not None:
            return
        _preloading = threading.Thread(
            target=_preload, args=(backend,), name="recray-kernel-preload", daemon=True
        )
        _preloading.start()


def _preload(backend) -> None:
    try:
        from recray.backend import get_backend

        if get_backend(backend).kernel == "cpu":
            cpu_calls_concurrent()
    except Exception:  # the first real call raises it, with its context
        pass


def initial_caps(has_bins, budget, B, log_rmax, exact) -> np.ndarray:
    """First local-index table size per block: a power of two at least twice the expected
    number of distinct bins (``2^D_inf`` steps for exact search, ``N`` for a fixed budget,
    never more than ``2^B`` bins); 1 for blocks without bins (no table). A block that
    outgrows its table is rerun with a larger one, so this affects speed only."""
    n = budget.shape[0]
    if exact:
        with np.errstate(over="ignore", invalid="ignore"):
            expect = np.ceil(4.0 * np.exp(np.minimum(log_rmax, 60.0)))
        expect = np.where(np.isfinite(expect), expect, float(MAX_START_TABLE))
    else:
        expect = budget.astype(np.float64)
    distinct = np.minimum(np.minimum(expect, budget.astype(np.float64)), np.ldexp(1.0, B))
    distinct = np.clip(distinct, MIN_TABLE / 2, MAX_START_TABLE / 2)
    caps = np.left_shift(1, np.ceil(np.log2(2.0 * distinct)).astype(np.int64))
    return np.where(has_bins, caps, 1).astype(np.int64) if n else caps.astype(np.int64)


def visit_order(rmax_d) -> np.ndarray:
    """``(n, d)`` int64: the order in which the kernel's lazy reject visits each block's
    dimensions, from their bounds ``rmax_d`` (``(n, d)``, nats). Dimensions ``2p`` and
    ``2p + 1`` share a Philox call, so pairs stay together: pairs by their larger bound,
    largest first, and within a pair the larger bound first (ties keep dimension order). A
    dimension with a large bound is usually far below it, so visiting it first rejects most
    candidates after one term. Any order gives the same winners (the score is summed in
    dimension order); this one only makes rejects earlier."""
    rmax_d = np.nan_to_num(np.asarray(rmax_d, dtype=np.float64), nan=0.0)
    n, d = rmax_d.shape
    pad = np.full((n, d + (d & 1)), -np.inf)
    pad[:, :d] = rmax_d
    pairs = pad.reshape(n, -1, 2)
    pair_order = np.argsort(-pairs.max(axis=2), axis=1, kind="stable")
    second = (pairs[:, :, 1] > pairs[:, :, 0]).astype(np.int64)  # 1: visit 2p + 1 first
    first = 2 * pair_order + np.take_along_axis(second, pair_order, axis=1)
    other = 2 * pair_order + 1 - np.take_along_axis(second, pair_order, axis=1)
    order = np.stack([first, other], axis=2).reshape(n, -1)
    return order[order < d].reshape(n, d) if d & 1 else order


#: above every 53-bit uniform's integer: an interval draw never passes such an entry
_NEVER = np.uint64(1 << 62)


def draw_thresholds(cdf) -> np.ndarray:
    """``(total,)`` uint64: the interval draw's table ``cdf`` (float64, cumulative weights)
    as integer thresholds on the uniforms' 53 random bits ``m``: ``thr <= m`` exactly when
    ``cdf < uniform_of(m)`` (``m 2^-53``, or ``2^-54`` for ``m = 0``). Multiplying by
    ``2^53`` is exact, so ``c = cdf 2^53 < m`` iff ``m >= floor(c) + 1``; ``m = 0`` compares
    as ``c < 1/2``, which gives threshold 0. NaN and entries of at least 1 are never passed.
    The kernels' lower-bound search then compares integers instead of converting the
    uniform each round: the same intervals as the reference's float comparison."""
    c = np.ldexp(np.asarray(cdf, dtype=np.float64), 53)
    with np.errstate(invalid="ignore"):
        low = c < 0.5
        ok = c < 2.0**53
    thr = np.full(c.shape, _NEVER, dtype=np.uint64)
    mid = ok & ~low
    thr[mid] = np.floor(c[mid]).astype(np.uint64) + np.uint64(1)
    thr[low] = 0
    return thr


def _c(a, dtype):
    """A C-contiguous, writeable array (one compiled signature for every call)."""
    return np.require(a, dtype=dtype, requirements=["C", "W"])


def kernel_arrays(prob, lazy: bool | None = None):
    """Host arrays of a :class:`recray.rec.search.SearchProblem` in the kernels' layout: a
    dict with the :data:`~recray.rec.kernels.source.PROBLEM_FIELDS` (``lazy=False`` turns
    the lazy-dimension reject off) and ``caps``, the first local-index table sizes."""
    t = prob.tables
    n, d = prob.m.shape
    f64 = np.float64
    exact = bool(prob.exact)
    rmax_d = np.asarray(t.log_rmax_d, dtype=f64)
    order = np.broadcast_to(np.arange(d, dtype=np.int64), (n, d))
    rest = np.zeros((n, d), dtype=f64)
    if exact:
        order = visit_order(rmax_d)
        rmax_o = np.take_along_axis(rmax_d, order, axis=1)
        for p in range(d - 2, -1, -1):  # bound of the dimensions visited after position p
            rest[:, p] = rest[:, p + 1] + rmax_o[:, p + 1]
    if exact:
        can_lazy = d > 1 and bool(np.isfinite(rest).all())
        log_bound = np.zeros(1, dtype=f64)  # unused: exact mode bounds by rest_max
    else:  # per-interval bounds (+inf where a candidate can never be dropped)
        can_lazy = d > 1 and t.log_bound is not None
        log_bound = _c(t.log_bound if can_lazy else np.zeros(1), f64)
    keys = np.ascontiguousarray(np.stack([np.asarray(k, dtype=np.uint64) for k in prob.keys], 1))
    depth = _c(t.depth, np.int64)
    budget = _c(prob.budget, np.int64)
    has_bins = (depth > 0).any(axis=1)
    log_rmax = _c(t.log_rmax, f64)
    caps = initial_caps(has_bins, budget, depth.sum(axis=1), log_rmax, exact)
    return dict(
        m=_c(prob.m, f64),
        s=_c(prob.s, f64),
        log_s=_c(prob.log_s, f64),
        depth=depth,
        mult=_c(t.mult, np.int64),
        ext=_c(t.ext, np.int64),
        inv_J=_c(t.inv_J, f64),
        toff=_c(t.toff, np.int64),
        leaf_k=_c(t.leaf_k, np.int64),
        leaf_inv=_c(t.leaf_inv, f64),
        offs=_c(t.offsets, np.int64),
        thr=draw_thresholds(t.cdf),
        log_corr=_c(t.log_corr, f64),
        log_bound=log_bound,
        order=_c(order, np.int64),
        rest_max=rest,
        log_rmax=log_rmax,
        keys=keys,
        budget=budget,
        exact=exact,
        lazy=can_lazy if lazy is None else (lazy and can_lazy),
        caps=caps,
    )


def problem_tuple(a, to_device=None) -> tuple:
    """The kernels' ``prob`` argument: ``a``'s :data:`PROBLEM_FIELDS` in order, arrays passed
    through ``to_device`` when given (flags stay host scalars)."""
    if to_device is None:
        return tuple(a[k] for k in PROBLEM_FIELDS)
    return tuple(a[k] if isinstance(a[k], bool) else to_device(a[k]) for k in PROBLEM_FIELDS)


def _outcome(out_i, out_f, status):
    from recray.rec.search import SearchOutcome

    return SearchOutcome(
        bin=out_i[:, 0].copy(),
        local=out_i[:, 1].copy(),
        arrival=out_i[:, 2].copy(),
        steps=out_i[:, 3].copy(),
        capped=status == ST_CAPPED,
        log_tau=out_f,
    )


def search_cpu(prob, hash_mult: int = HASH_MULT, lazy: bool | None = None):
    """Run a :class:`SearchProblem` through the CPU kernel; returns a ``SearchOutcome``.
    ``lazy=False`` turns the lazy-dimension reject off (tests)."""
    from recray.rec.kernels import cpu

    a = kernel_arrays(prob, lazy)
    n, d = a["m"].shape
    out_i = np.zeros((n, 4), dtype=np.int64)
    out_f = np.full(n, np.inf)
    status = np.zeros(n, dtype=np.int64)
    if n:
        with _cpu_call():
            cpu.search_many(problem_tuple(a), a["caps"], np.uint64(hash_mult), out_i, out_f, status)
    return _outcome(out_i, out_f, status)


def search_gpu(prob, hash_mult: int = HASH_MULT, lazy: bool | None = None):
    """Run a :class:`SearchProblem` through the CUDA kernel (one thread per block).

    Inputs go to the device once; each launch covers as many blocks as the table pool
    holds and ends with one host sync (the status array). Blocks whose table overflowed are
    relaunched with 4x larger tables."""
    from numba import cuda

    from recray.rec.kernels import gpu

    a = kernel_arrays(prob, lazy)
    n, d = a["m"].shape
    out_i = np.zeros((n, 4), dtype=np.int64)
    out_f = np.full(n, np.inf)
    status = np.zeros(n, dtype=np.int64)
    if n == 0:
        return _outcome(out_i, out_f, status)
    d_prob = problem_tuple(a, cuda.to_device)
    d_ub = cuda.device_array((n, d + SCRATCH_EXTRA), dtype=np.uint64)  # batch = 1 on the GPU
    d_fs = cuda.device_array((n, d + 2), dtype=np.float64)
    d_out_i = cuda.to_device(out_i)
    d_out_f = cuda.to_device(out_f)
    d_status = cuda.to_device(status)
    caps = a["caps"].copy()
    todo = np.arange(n, dtype=np.int64)
    while todo.size:
        again = []
        start = 0
        while start < todo.size:  # launch groups whose tables fit the pool
            csum = np.cumsum(caps[todo[start:]])
            stop = start + max(1, int(np.searchsorted(csum, GPU_POOL_ENTRIES, side="right")))
            rows = todo[start:stop]
            c = caps[rows]
            base = 2 * np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int64)
            ht = cuda.device_array(2 * int(c.sum()), dtype=np.int64)  # (bin id, count) pairs
            blocks = (rows.size + GPU_THREADS - 1) // GPU_THREADS
            gpu.search_kernel[blocks, GPU_THREADS](
                d_prob,
                ht,
                cuda.to_device(base),
                cuda.to_device(c),
                np.uint64(hash_mult),
                cuda.to_device(rows),
                d_ub,
                d_fs,
                d_out_i,
                d_out_f,
                d_status,
            )
            st = d_status.copy_to_host()  # the launch's one sync
            over = rows[st[rows] == ST_OVERFLOW]
            if over.size:
                again.append(over)
            start = stop
        todo = np.concatenate(again) if again else np.zeros(0, dtype=np.int64)
        caps[todo] *= 4
    return _outcome(d_out_i.copy_to_host(), d_out_f.copy_to_host(), d_status.copy_to_host())


def shared_keys(seed: int, ids, version: int):
    """``(k0, k1)`` uint64 ``(n,)``: the shared keys of stream ids ``ids`` (as
    :func:`recray.rec.philox.derive_keys`, computed by the CPU build)."""
    from recray.rec.kernels import cpu
    from recray.rec.philox import DOMAIN_SHARED

    ids = _c(ids, np.int64)
    out = np.empty((ids.shape[0], 2), dtype=np.uint64)
    seed = int(seed)
    with _cpu_call():
        cpu.derive_keys_many(
            np.uint64(seed & 0xFFFFFFFF),
            np.uint64(seed >> 32),
            ids,
            np.uint64(DOMAIN_SHARED),
            np.uint64(version),
            out,
        )
    return out[:, 0], out[:, 1]


def compact_rows(a) -> np.ndarray:
    """``a`` (``(n, d)``) as one row when every row is the same broadcast row (stride 0),
    else unchanged: the kernels read row 0 for every block then, and nothing is copied."""
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[0] > 1 and a.strides[0] == 0:
        return a[:1]
    return a


def regenerate(kind: str, bins, local, geo, k0, k1, pm, ps):
    """Decoder samples ``(n, d)`` float64 with the CPU (``"cpu"``) or GPU (``"gpu"``) build.

    ``bins``, ``local``, ``k0``, ``k1``: ``(n,)``; ``geo`` the partitions
    (:class:`recray.rec.trees.Geometry`); ``pm``, ``ps``: ``(n, d)`` or one shared row
    ``(1, d)`` (broadcast views are compacted, not copied; so are the partitions when
    every block shares one row)."""
    radix, ext, toff = (compact_rows(a) for a in (geo.radix, geo.ext, geo.toff))
    if not (radix.shape[0] == ext.shape[0] == toff.shape[0]):
        radix, ext, toff = geo.radix, geo.ext, geo.toff
    pm, ps = (compact_rows(a) for a in (pm, ps))
    n, d = len(bins), radix.shape[1]
    out = np.empty((n, d), dtype=np.float64)
    if n == 0:
        return out
    args = (
        _c(bins, np.int64),
        _c(local, np.int64),
        _c(radix, np.int64),
        _c(ext, np.int64),
        _c(toff, np.int64),
        _c(geo.leaf_k, np.int64),
        _c(np.ldexp(1.0, -geo.leaf_level), np.float64),
        np.ascontiguousarray(np.stack([np.asarray(k0, np.uint64), np.asarray(k1, np.uint64)], 1)),
        _c(pm, np.float64),
        _c(ps, np.float64),
    )
    if kind == "cpu":
        from recray.rec.kernels import cpu

        with _cpu_call():
            cpu.regenerate_many(*args, out)
        return out
    from numba import cuda

    from recray.rec.kernels import gpu

    dargs = [cuda.to_device(x) for x in args]
    d_out = cuda.device_array((n, d), dtype=np.float64)
    gpu.regenerate_kernel[(n + GPU_THREADS - 1) // GPU_THREADS, GPU_THREADS](*dargs, d_out)
    return d_out.copy_to_host()
