"""The compiled pixel-table pass of :class:`recray.models.intdec.IntDecoder` (Numba).

Steps 5 and 6 of :mod:`recray.models.intdec` fused per pixel: the logistic lookups of both
mixture components at the 255 level edges, the mixed CDF and its differences, written
straight into the float64 array the range coder takes. Integer operations only (int64
products, sums and arithmetic right shifts, as NumPy's), so the result equals the NumPy
path's to the bit on every machine; the float64 conversion is exact (integers below 2^24).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from recray.models.intdec_format import (
    FREE,
    INV_FRAC,
    MIX_FRAC,
    PARAM_FRAC,
    T_FRAC,
    T_MAX,
    TABLE_FRAC,
)

_R = PARAM_FRAC + INV_FRAC - T_FRAC  # k = (e * inv + (offset << r) - m * inv) >> r


def coder_tables(logistic, w1, means, inv, edges, out) -> None:
    """``out[i, p, v]`` = the integer table entry ``w_v`` of pixel ``p`` of row ``i``, as
    float64. ``logistic`` int64 ``(K,)``; ``w1`` int64 ``(n, P)`` (Q16); ``means``, ``inv``
    int64 ``(n, P, 2)``; ``edges`` int64 ``(L - 1,)``; ``out`` float64 ``(n, P, L)``.
    The format's constants are arguments of the compiled function, not globals, so Numba's
    on-disk cache can never hold a build of other constants."""
    _coder_tables(
        logistic,
        np.ascontiguousarray(w1),
        np.ascontiguousarray(means),
        np.ascontiguousarray(inv),
        edges,
        _R,
        np.int64(T_MAX << T_FRAC) << _R,
        np.int64(1) << MIX_FRAC,
        TABLE_FRAC + MIX_FRAC,
        FREE,
        out,
    )


@njit(parallel=True, cache=True, nogil=True)
def _coder_tables(logistic, w1, means, inv, edges, r, offset, mix_one, shift, free, out):
    n, npix = w1.shape
    top = logistic.shape[0] - 1
    nedge = edges.shape[0]
    for i in prange(n):
        for p in range(npix):
            wb = w1[i, p]
            wa = mix_one - wb
            ia = inv[i, p, 0]
            ib = inv[i, p, 1]
            ba = offset - means[i, p, 0] * ia
            bb = offset - means[i, p, 1] * ib
            prev = np.int64(0)
            for v in range(nedge):
                ka = min(max((ia * edges[v] + ba) >> r, 0), top)
                kb = min(max((ib * edges[v] + bb) >> r, 0), top)
                c = (logistic[ka] * wa + logistic[kb] * wb) >> shift
                out[i, p, v] = np.float64(c - prev)
                prev = c
            out[i, p, nedge] = np.float64(free - prev)
