"""The CPU build of the search kernel: :mod:`recray.rec.kernels.source` under ``numba.njit``,
one block per iteration of a ``prange`` loop (threads: ``NUMBA_NUM_THREADS`` /
``numba.set_num_threads``).

Floating point: no fast-math flags, so LLVM keeps every ``*`` and ``+`` a separately rounded
IEEE operation (no FMA contraction; ``tests/test_kernels.py`` checks the machine code), and
``error_model="numpy"`` (a float division never raises).

The two entry points are cached on disk by Numba (``cache=True``). Numba's cache only
watches this file, not :mod:`recray.rec.kernels.source` that it compiles in, so
:func:`_check_cache` drops the cache whenever either file's content changes.
"""

from __future__ import annotations

import hashlib
import os

import llvmlite
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from recray.rec.kernels.source import SCRATCH_EXTRA, ST_OVERFLOW, build

_OPTS = {"error_model": "numpy", "nogil": True, "cache": False}


@njit(inline="always", **_OPTS)
def _mul(a, b):
    return a * b


@intrinsic
def _bits(typingctx, x):
    """The IEEE 754 bits of a float64 as a uint64 (a bit cast: no conversion)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(types.float64), codegen


@intrinsic
def _from_bits(typingctx, b):
    """The float64 whose IEEE 754 bits are the uint64 ``b``."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.uint64), codegen


#: Whether llvmlite's IR layer writes typed pointers (``i8*``; llvmlite < 0.45, which has no
#: such flag, always does) or opaque ones (``ptr``).
_TYPED_POINTERS = getattr(llvmlite, "ir_layer_typed_pointers_enabled", True)


@intrinsic
def _prefetch(typingctx, a, i):
    """Hint that ``a[i]`` (a 1-D array) is read and written soon: LLVM's ``llvm.prefetch``
    (write intent, high locality, data cache). Changes no result."""

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        arr = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, arr, [args[1]], wraparound=False)
        i32 = ir.IntType(32)
        if _TYPED_POINTERS:  # the intrinsic's name carries the pointer type
            ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())
            name = "llvm.prefetch.p0i8"
        else:
            name = "llvm.prefetch.p0"
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), name
        )
        builder.call(fn, [ptr, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(a, i), codegen


_EXP = np.uint64(0x7FF << 52)
_HALF = np.uint64(1022 << 52)


@njit(inline="always", **_OPTS)
def _frexp(x):
    """``math.frexp`` of a finite float64 from its bits, inline (Numba's ``math.frexp`` is a
    call into C, which stops LLVM from vectorizing or overlapping the loops around it).
    Exact: the same ``(m, e)`` as ``math.frexp`` (``tests/test_kernels.py``)."""
    b = _bits(x)
    shift = 0
    if b & _EXP == 0:  # zero or subnormal: scale into the normal range first (exact)
        if x == 0.0:
            return x, 0
        b = _bits(x * 18014398509481984.0)  # 2^54
        shift = 54
    e = np.int64((b & _EXP) >> np.uint64(52)) - 1022 - shift
    return _from_bits((b & ~_EXP) | _HALF), e


#: arrivals whose state-free work is done together (loops LLVM vectorizes)
BATCH = 16

K = build(
    njit(**_OPTS), _mul, _frexp, batch=BATCH, inline_jit=njit(inline="always", **_OPTS),
    prefetch=_prefetch,
)  # fmt: skip
_search_block = K.search_block
_regenerate_block = K.regenerate_block
_derive_key = K.derive_key


@njit(parallel=True, **dict(_OPTS, cache=True))
def search_many(prob, caps, hmult, out_i, out_f, status):
    """Search every block of ``prob`` (a tuple in ``PROBLEM_FIELDS`` order; ``prange``); a
    block whose local-index table fills up is rerun from scratch with a 4x larger one (its
    result does not depend on the table size)."""
    n, d = prob[0].shape
    for i in prange(n):
        cap = caps[i]
        ub = np.empty((1, BATCH * (d + SCRATCH_EXTRA)), dtype=np.uint64)
        fs = np.empty((1, d + 2 * BATCH), dtype=np.float64)
        while True:
            ht = np.empty(2 * cap, dtype=np.int64)  # (bin id, count) per slot
            st = _search_block(i, prob, ht, 0, cap, hmult, ub, fs, 0, out_i, out_f)
            if st != ST_OVERFLOW:
                break
            cap *= 4
        status[i] = st
        caps[i] = cap


@njit(parallel=True, **dict(_OPTS, cache=True))
def regenerate_many(bins, local, radix, ext, toff, leaf_k, leaf_inv, keys, pm, ps, out):
    """The decoder's samples of every block (``prange``)."""
    for i in prange(bins.shape[0]):
        _regenerate_block(i, bins, local, radix, ext, toff, leaf_k, leaf_inv, keys, pm, ps, out)


@njit(parallel=True, **dict(_OPTS, cache=True))
def derive_keys_many(s_lo, s_hi, ids, domain, version, out):
    """``out[i] = (k0, k1)``: the key of stream ``ids[i]`` (``prange``)."""
    for i in prange(ids.shape[0]):
        k0, k1 = _derive_key(s_lo, s_hi, ids[i], domain, version)
        out[i, 0] = k0
        out[i, 1] = k1


def _check_cache() -> None:
    """Flush Numba's on-disk cache of this module when the kernel source changed (Numba
    itself only notices changes to this file)."""
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for name in ("source.py", "cpu.py"):
        with open(os.path.join(here, name), "rb") as f:
            h.update(f.read())
    stamp = h.hexdigest()
    try:
        path = os.path.join(search_many._cache._cache_path, "recray-kernel-source.sha256")
        try:
            with open(path) as f:
                if f.read().strip() == stamp:
                    return
        except OSError:
            pass
        search_many._cache.flush()
        regenerate_many._cache.flush()
        derive_keys_many._cache.flush()
        with open(path, "w") as f:
            f.write(stamp)
    except (AttributeError, OSError):  # no cache directory: nothing stale to drop
        return


_check_cache()
