"""Factorized Gaussian coding and target distributions, in prior-standardized coordinates.

The search never sees the raw prior ``N(m_p, s_p^2)``: every dimension is mapped by
``y = (x - m_p) / s_p``, under which the prior is ``N(0, 1)`` and the target is
``N(m, s^2)`` with ``m = (mu - m_p) / s_p`` and ``s = sigma / s_p``. The density ratio
``q/p`` is invariant under that map, so weights, bounds and scores are unchanged; decoded
samples are mapped back with ``x = m_p + s_p * y``.

Two small interfaces keep the Gaussian specifics in this module, so other factorized
families can follow:

* :class:`StandardNormalPrior` - partition edges (equal-mass quantiles) and inverse-CDF
  sampling restricted to one interval;
* :class:`GaussianRatio` - per-dimension log density ratio ``ln q/p``, its supremum on an
  interval (closed form), the target's log mass of an interval, and boundedness.

All logs here are natural logs (the search works in nats; reported figures are converted to
bits at the API boundary).
"""

from __future__ import annotations

import math
import threading

import numpy as np

LN2 = math.log(2.0)
#: Edge tables of up to this many bits are cached as their own arrays (<= 1 MiB each).
EDGE_CACHE_MAX_BITS = 16
_EDGE_CACHE: dict = {}
#: Per backend, the finest larger table built so far (adaptive partitions reach 24 bits per
#: dimension: 2^24 inverse-CDF evaluations, about a second): coarser tables are views of it.
_EDGE_FINEST: dict = {}
_EDGE_LOCK = threading.Lock()
#: Relative margin by which :meth:`StandardNormalPrior.reach` widens the sampler's computed
#: extremes: ``2^-30``, far above the 12 ulp (below ``2^-48`` relative) a computed
#: ``Phi^{-1}`` can stray, and far below anything that moves a bound (about 1e-8 of a
#: prior-sigma).
REACH_MARGIN = 2.0**-30
_REACH_CACHE: dict = {}


class StandardNormalPrior:
    """``P = N(0, 1)`` per dimension, partitioned into ``J = 2^b`` intervals of mass ``1/J``."""

    def __init__(self, backend):
        self.be = backend

    def edges(self, b: int):
        """Interval edges ``a_0 = -inf < a_1 < ... < a_J = +inf`` (shape ``(J + 1,)``),
        ``a_k = Phi^{-1}(k / J)``; the upper half is computed through the complement
        (``-Phi^{-1}((J - k) / J)``) so no quantile rounds towards 1. Cached per ``b`` up to
        :data:`EDGE_CACHE_MAX_BITS`; above it, the finest table built so far serves every
        coarser one as a strided view, bit for bit (``edges(b)[k]`` and
        ``edges(b + t)[k 2^t]`` evaluate the same quantile of the same float). Do not
        modify the returned array."""
        key = (self.be.name, b)
        hit = _EDGE_CACHE.get(key)
        if hit is not None:
            return hit
        if b > EDGE_CACHE_MAX_BITS:
            with _EDGE_LOCK:
                finest = _EDGE_FINEST.get(self.be.name)
            if finest is not None and finest[0] >= b:
                return finest[1][:: 1 << (finest[0] - b)]
        xp, ndtri = self.be.xp, self.be.special.ndtri
        J = 1 << b
        k = xp.arange(J + 1, dtype=xp.float64)
        inv = 2.0**-b
        with self.be.errstate():
            out = xp.where(2 * k <= J, ndtri(k * inv), -ndtri((J - k) * inv))
        if b <= EDGE_CACHE_MAX_BITS:
            _EDGE_CACHE[key] = out
        else:
            with _EDGE_LOCK:
                if _EDGE_FINEST.get(self.be.name, (0,))[0] < b:
                    _EDGE_FINEST[self.be.name] = (b, out)
        return out

    def reach(self, b: int) -> tuple[float, float]:
        """``(lo, hi)``: the smallest and largest candidate the RNG recipe can produce in a
        dimension of ``b`` partition bits (prior-standardized; docs/FORMAT.md section 4.1).

        The outer intervals reach ``-inf`` and ``+inf`` on paper, but a candidate is
        ``Phi^{-1}((k + u) / J)`` with the 53-bit uniform ``u`` of section 3
        (``2^-54 <= u <= 1 - 2^-53``), the upper half through the complement. The most
        extreme probabilities the sampler ever passes to ``Phi^{-1}`` are therefore
        ``2^-(54 + b)`` (interval 0, ``u = 2^-54``: exact) and ``2^-(53 + b)`` (interval
        ``J - 1`` through the complement, ``1 - u = 2^-53``: exact), and every candidate
        lies in ``[Phi^{-1}(2^-(54+b)), -Phi^{-1}(2^-(53+b))]``, about ``[-8.29, 8.21]`` for
        ``b = 0`` and ``[-10.08, 10.01]`` for ``b = 24``. Both ends are the portable
        ``Phi^{-1}`` of those probabilities (the very function that makes candidates),
        pushed outwards by :data:`REACH_MARGIN` (relative) to cover the non-monotonicity
        of a computed ``Phi^{-1}``: it is within 6 ulp of the exact quantile
        (``tests/test_kernels.py``), so a candidate lies at most 12 ulp (below ``2^-48``
        relative at these magnitudes) beyond the computed end. Cached per ``b``."""
        hit = _REACH_CACHE.get(b)
        if hit is None:
            from recray.rec import portable

            p = np.asarray([2.0 ** -(54 + b), 2.0 ** -(53 + b)])
            q = portable.ndtri(p, np)
            hit = (float(q[0]) * (1.0 + REACH_MARGIN), -float(q[1]) * (1.0 + REACH_MARGIN))
            _REACH_CACHE[b] = hit
        return hit

    def sample_in_interval(self, k, u, inv_J):
        """``y = Phi^{-1}((k + u) / J)``: a sample of ``N(0,1)`` restricted to interval ``k``.

        ``k`` (int64), ``u`` (float64 in (0, 1)) and ``inv_J = 2^-b`` (float64) broadcast.
        When ``(k + u) / J > 1/2`` the sample is taken through the complementary CDF,
        ``y = -Phi^{-1}((J - k - u) / J)``, so it never rounds to 1 (``+inf``).
        """
        xp, ndtri = self.be.xp, self.be.special.ndtri
        kf = k.astype(xp.float64)
        J = 1.0 / inv_J  # exact: a power of two
        upper = 2.0 * (kf + u) > J
        p = xp.where(upper, ((J - kf) - u) * inv_J, (kf + u) * inv_J)
        y = ndtri(p)
        return xp.where(upper, -y, y)


class GaussianRatio:
    """Target ``N(m, s^2)`` against prior ``N(0, 1)``, elementwise over arrays of ``m``, ``s``.

    ``ln r(y) = ln q(y) - ln p(y) = -ln s - z^2/2 + y^2/2`` with ``z = (y - m)/s``.
    For ``s < 1`` it is concave with maximum at ``y* = m / (1 - s^2)``; for ``s = 1, m = 0``
    it is identically 0; otherwise it is unbounded above (see :meth:`bounded`).
    """

    def __init__(self, backend, m, s):
        self.be = backend
        self.m = m
        self.s = s

    def bounded(self):
        """True where ``sup q/p`` is finite: ``s < 1``, or ``s == 1`` and ``m == 0``."""
        return (self.s < 1.0) | ((self.s == 1.0) & (self.m == 0.0))

    def stationary_point(self):
        """``y* = m / (1 - s^2)`` where bounded (0 for the identical case); arbitrary (0)
        where unbounded."""
        xp = self.be.xp
        one_minus = (1.0 - self.s) * (1.0 + self.s)
        with self.be.errstate():
            ystar = xp.where(one_minus > 0, self.m / xp.where(one_minus > 0, one_minus, 1.0), 0.0)
        return ystar

    @staticmethod
    def log_ratio_of(y, m, s, log_s):
        """``ln q/p`` at ``y`` for target params ``m``, ``s`` (``log_s = ln s``); exactly 0
        when ``m = 0, s = 1``. All arguments broadcast."""
        z = (y - m) / s
        return 0.5 * (y - z) * (y + z) - log_s

    def log_ratio(self, y):
        return self.log_ratio_of(y, self.m, self.s, self.be.xp.log(self.s))

    def log_sup_on(self, a, b, ystar=None):
        """``ln sup_{y in [a, b]} q/p`` (closed form: the concave log ratio peaks at ``y*``
        clipped to the interval). ``a``, ``b`` may be infinite; broadcast with ``m``, ``s``.
        Valid only where :meth:`bounded`."""
        xp = self.be.xp
        if ystar is None:
            ystar = self.stationary_point()
        y = xp.clip(ystar, a, b) if hasattr(xp, "clip") else xp.minimum(xp.maximum(ystar, a), b)
        return self.log_ratio(y)

    def log_mass_on(self, a, b):
        """``ln Q([a, b])`` computed from differences of ``log_ndtr`` on the tail side of the
        interval (left tail when its midpoint is below ``m``, else the right tail), so far
        tail intervals keep their (tiny) mass instead of underflowing to ``-inf``."""
        xp, log_ndtr = self.be.xp, self.be.special.log_ndtr
        with self.be.errstate():
            za = (a - self.m) / self.s
            zb = (b - self.m) / self.s
            lower_side = (za + zb) <= 0  # NaN (the whole line) goes to the upper branch
            la, lb = log_ndtr(za), log_ndtr(zb)
            ua, ub = log_ndtr(-za), log_ndtr(-zb)
            low = lb + log1mexp(la - lb, xp)
            up = ua + log1mexp(ub - ua, xp)
            out = xp.where(lower_side, low, up)
        return out


def log_mass_outside(m, s, lo, hi):
    """``ln (Q(y < lo) + Q(y > hi))`` for targets ``N(m, s^2)``, host float64 arrays that
    broadcast together: the target's mass beyond the sampler's reach
    (:meth:`StandardNormalPrior.reach`), from ``log_ndtr`` on each tail (no underflow to
    ``-inf`` before about ``-1e300``)."""
    from scipy.special import log_ndtr

    with np.errstate(divide="ignore"):
        return np.logaddexp(log_ndtr((lo - m) / s), log_ndtr((m - hi) / s))


def log1mexp(x, xp):
    """``ln(1 - e^x)`` for ``x <= 0``, accurate at both ends (Maechler's switch at -ln 2)."""
    return xp.where(x > -LN2, xp.log(-xp.expm1(x)), xp.log1p(-xp.exp(x)))


def kl_bits(m, s, xp):
    """``D_KL[N(m, s^2) || N(0, 1)]`` in bits, summed over the last axis. Shape ``(n,)``."""
    nats = 0.5 * (s * s + m * m - 1.0) - xp.log(s)
    return nats.sum(axis=-1) / LN2
