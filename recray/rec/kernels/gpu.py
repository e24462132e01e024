"""The GPU build of the search kernel: :mod:`recray.rec.kernels.source` as
``numba.cuda.jit(device=True)`` functions, one CUDA thread per block.

Floating point: every product in the source goes through ``mul``, bound here to libdevice
``__nv_dmul_rn`` (``dmul_rn``), which the CUDA compiler never merges into a fused
multiply-add; divisions and ``sqrt`` are IEEE round-to-nearest (numba-cuda's default
without ``fastmath``: ``-prec-div=1 -prec-sqrt=1 -ftz=0``). So the kernel computes the same
bits as the CPU build. NVVM's default ``-fma=1`` would otherwise contract a plain
``a * b + c``: numba-cuda (0.30) has no switch for it short of ``fastmath``, hence ``mul``.

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernel runs as Python, with
``mul`` a plain product: that is how the tests exercise this build without a GPU.
"""

from __future__ import annotations

import math

from numba import config, cuda

from recray.rec.kernels.source import build

SIMULATOR = bool(config.ENABLE_CUDASIM)

if SIMULATOR:

    @cuda.jit(device=True)
    def _mul(a, b):
        return a * b

else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def _mul(a, b):
        return libdevice.dmul_rn(a, b)


K = build(cuda.jit(device=True), _mul, math.frexp)
_search_block = K.search_block
_regenerate_block = K.regenerate_block


@cuda.jit
def search_kernel(prob, htab, hbase, hcap, hmult, rows, ub, fs, out_i, out_f, status):
    """Thread ``t`` searches block ``rows[t]`` of ``prob`` (a tuple in ``PROBLEM_FIELDS``
    order) with the ``hcap[t]`` table slots at ``htab[hbase[t] :]`` (two entries each);
    ``ub[i]`` is block ``i``'s scratch row (the GPU build works one arrival at a time:
    ``batch = 1``) and ``fs[i]`` its row of a candidate's terms."""
    t = cuda.grid(1)
    if t < rows.shape[0]:
        i = rows[t]
        status[i] = _search_block(i, prob, htab, hbase[t], hcap[t], hmult, ub, fs, i, out_i, out_f)


@cuda.jit
def regenerate_kernel(bins, local, radix, ext, toff, leaf_k, leaf_inv, keys, pm, ps, out):
    i = cuda.grid(1)
    if i < bins.shape[0]:
        _regenerate_block(i, bins, local, radix, ext, toff, leaf_k, leaf_inv, keys, pm, ps, out)
