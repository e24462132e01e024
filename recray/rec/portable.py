"""Portable ``log`` and ``Phi^{-1}`` on whole arrays (NumPy or CuPy), bit-identical to the
compiled kernels.

The arithmetic pieces are the very functions of :mod:`recray.rec.kernels.source`, built with
the identity decorator and ``operator.mul`` and applied to arrays; only the branches are
written here, as ``where``. Every operation is a separate, correctly rounded IEEE operation
(an array ufunc never fuses a product into a following sum), so the results are the kernels'
bits on any machine. Used by the RNG recipe version 2 (docs/FORMAT.md section 4).
"""

from __future__ import annotations

import operator

from recray.rec.kernels.source import SQRT_HALF, build

_P = build(lambda f: f, operator.mul, None)


def log(x, xp):
    """Natural log of positive normal float64 values (fdlibm's algorithm, < 1 ulp)."""
    m, e = xp.frexp(x)
    small = m < SQRT_HALF
    m = xp.where(small, m + m, m)
    e = xp.where(small, e - 1, e)
    return _P.log_core(m - 1.0, e.astype(xp.float64))


def ndtri(p, xp):
    """``Phi^{-1}(p)`` for ``p`` in (0, 1) (Wichura's AS241 with :func:`log`)."""
    q = p - 0.5
    central = _P.ndtri_central(q)
    lower = q < 0.0
    t = xp.where(lower, p, 1.0 - p)
    r = xp.sqrt(-log(t, xp))
    tail = xp.where(r <= 5.0, _P.ndtri_tail_near(r), _P.ndtri_tail_far(r))
    tail = xp.where(lower, -tail, tail)
    return xp.where(xp.abs(q) <= 0.425, central, tail)


def sample_in_interval(k, u, inv_J, xp):
    """``Phi^{-1}((k + u) / J)``, the upper half through the complement (as the kernels)."""
    kf = k.astype(xp.float64)
    J = 1.0 / inv_J
    upper = 2.0 * (kf + u) > J
    p = xp.where(upper, ((J - kf) - u) * inv_J, (kf + u) * inv_J)
    y = ndtri(p, xp)
    return xp.where(upper, -y, y)
