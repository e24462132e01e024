"""Greedy Poisson rejection sampling (GPRS) for one-dimensional Gaussian targets.

Reference: G. Flamich, "Greedy Poisson Rejection Sampling", NeurIPS 2023
(arXiv:2305.15313). Written from the paper's description; the notation follows it.

Shared randomness: a unit-rate Poisson process ``T_1 < T_2 < ...`` (sender-private
spacings) with marks ``X_n ~ P`` (the shared candidates, exactly PFR's: bin 0, local index
``n``; so :func:`recray.rec.api.decode` with ``method="pfr"`` regenerates them). With the
density ratio ``r = dQ/dP`` and ``w_P(h) = P(r(X) >= h)``, ``w_Q(h) = Q(r(X) >= h)``, GPRS
accepts the **first arrival under the graph** of ``phi = sigma^{-1} o r``, i.e. the first
``n`` with ``T_n <= sigma^{-1}(r(X_n))``, where the stretch function solves

    sigma'(t) = w_Q(sigma(t)) - sigma(t) w_P(sigma(t)),   sigma(0) = 0,

so that ``sigma^{-1}(h) = int_0^h d eta / (w_Q(eta) - eta w_P(eta))``. With the exact
``sigma`` the accepted ``X_N`` would be an exact sample of ``Q``; ``E[N] = r_max =
2^{D_inf}`` and the index ``N`` is sent with the universal code (about
``D_KL + log2(D_KL + 1) + O(1)`` bits).

**Approximate.** Here ``sigma^{-1}`` is a numerical integral (below), so the accepted
sample's law differs from ``Q`` by about the integral's relative error: GPRS is not one of
:data:`recray.rec.api.EXACT_METHODS` and makes no exactness promise (the statistical tests
in ``tests/test_gprs.py`` cannot see an error of that size, nor rule it out).

For a one-dimensional Gaussian pair (prior-standardized ``P = N(0, 1)``, ``Q = N(m, s^2)``,
``s < 1``) ``ln r`` is a concave quadratic: ``ln r_max - ln r(x) = a (x - x*)^2`` with
``a = (1/s^2 - 1)/2``, ``x* = m / (1 - s^2)``. The super-level sets are intervals
``|x - x*| <= sqrt(u / a)`` (``u = ln r_max - ln h``), so ``w_P``, ``w_Q`` are differences of
normal CDFs; the integral is taken numerically on a fine grid in ``u`` (the one numerical
step of the method: its relative error, about 1e-4, bounds how far the accepted sample's
law can be from ``Q``; trapezoid in log u, 801 points). Only the sender needs it.

Blocks of more than one dimension are refused: GPRS is the per-dimension baseline (code a
block's dimensions as separate 1-D blocks).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from recray.errors import InputError, SearchBudgetError, UnboundedRatioError, fmt_block
from recray.rec.philox import RNG_VERSION
from recray.rec.randomness import block_keys, private_uniforms, shared_sample

#: Grid of ``u = ln r_max - ln h`` for the stretch function (log-spaced).
_U_MIN, _U_MAX, _U_POINTS = 1e-9, 80.0, 801
#: Below this ``u`` the level set is narrow: ``w_Q - eta w_P`` by quadrature (no cancellation).
_U_QUAD = 0.25
_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)
_CHUNK0, _CHUNK_MAX = 16, 1 << 14


def _interval_mass(lo, hi, mean, scale):
    """``N(mean, scale^2)`` mass of ``[lo, hi]``, on the tail side (no cancellation)."""
    a, b = (lo - mean) / scale, (hi - mean) / scale
    upper = a > 0
    return np.where(upper, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))


def _stretch_table(m: np.ndarray, s: np.ndarray):
    """``(log_u, log_t)`` ``(n, K)``: ``t(u) = sigma^{-1}(r_max e^{-u})`` on the grid."""
    u = np.geomspace(_U_MIN, _U_MAX, _U_POINTS)[None, :]
    a = (1.0 / (s * s) - 1.0)[:, None] / 2.0
    xs = (m / (1.0 - s * s))[:, None]
    log_rmax = (-np.log(s) + m * m / (2.0 * (1.0 - s * s)))[:, None]
    eta = np.exp(log_rmax - u)
    rho = np.sqrt(u / a)
    # D(eta) = w_Q(eta) - eta w_P(eta) = Q(I) - eta P(I), I = [x* - rho, x* + rho]
    d_direct = _interval_mass(xs - rho, xs + rho, m[:, None], s[:, None]) - eta * (
        _interval_mass(xs - rho, xs + rho, 0.0, 1.0)
    )
    # narrow sets: D = eta * int_{-rho}^{rho} expm1(u - a y^2) p(x* + y) dy
    q = int(np.searchsorted(u[0], _U_QUAD))
    uq, rq, eq = u[:, :q], rho[:, :q], eta[:, :q]
    y = rq[..., None] * _GL_X  # (n, q, G)
    integrand = np.expm1(uq[..., None] - a[..., None] * y * y) * np.exp(
        -0.5 * (xs[..., None] + y) ** 2
    )
    d = d_direct.copy()
    d[:, :q] = eq * rq * (integrand @ _GL_W) / np.sqrt(2.0 * np.pi)
    d = np.maximum(d, 1e-300)
    # t(u) = int_u^inf eta(v) / D(eta(v)) dv, trapezoid in log v, plus the tail past U_MAX
    g = eta / d * u  # d v = v d(log v)
    lv = np.log(u)
    seg = 0.5 * (g[:, 1:] + g[:, :-1]) * np.diff(lv)
    tail = np.exp(log_rmax[:, 0] - _U_MAX)  # D ~ 1 there
    t = np.concatenate([np.cumsum(seg[:, ::-1], axis=1)[:, ::-1], np.zeros((len(m), 1))], axis=1)
    t = t + tail[:, None]
    return np.broadcast_to(lv, t.shape), np.log(t)


def _threshold(log_u_grid, log_t, u):
    """``t(u)`` for candidates ``u`` ``(n, c)`` of rows with tables ``(n, K)``: linear in
    ``(log u, log t)``; ``+inf`` below the grid (the candidate sits at the ratio's peak)."""
    lg = log_u_grid[0]
    lu = np.log(np.maximum(u, 1e-320))
    k = np.clip(np.searchsorted(lg, lu) - 1, 0, lg.size - 2)
    w = (lu - lg[k]) / (lg[k + 1] - lg[k])
    rows = np.arange(log_t.shape[0])[:, None]
    lt = (1 - w) * log_t[rows, k] + w * log_t[rows, k + 1]
    return np.where(lu < lg[0], np.inf, np.exp(lt))


def encode_1d(m, s, k0, k1, p0, p1, *, max_steps, be, ids=None, stretch=None):
    """GPRS on ``n`` standardized 1-D targets ``N(m, s^2)`` against ``N(0, 1)``.

    ``k0, k1`` / ``p0, p1``: the shared / private keys of each row (uint64 ``(n,)``).
    ``max_steps``: the step cap, one for all rows or one per row (int ``(n,)``): row ``i``
    examines at most ``max_steps[i]`` arrivals, whatever the other rows' caps.
    Returns ``(local, y, steps, capped)``: the accepted index ``N >= 1`` (int64), the
    standardized sample, the arrivals examined and whether the row's cap was hit.
    """
    n = m.shape[0]
    cap = np.broadcast_to(np.asarray(max_steps, dtype=np.int64), (n,))
    if np.any(s >= 1.0):
        i = int(np.argmax(s >= 1.0))
        raise UnboundedRatioError(
            f"{fmt_block(i, ids)}: GPRS needs a bounded density ratio (posterior scale < prior "
            f"scale); got scale ratio {float(s[i]):.6g}",
            block=i,
            dim=0,
        )
    log_ug, log_t = (stretch or _stretch_table)(m, s)
    a = (1.0 / (s * s) - 1.0) / 2.0
    xs = m / (1.0 - s * s)
    xp = be.xp
    local = np.zeros(n, np.int64)
    y_out = np.zeros(n)
    steps = np.zeros(n, np.int64)
    T = np.zeros(n)
    active = np.arange(n)
    done_n = 0
    chunk = _CHUNK0
    capped = np.zeros(n, bool)
    while active.size:
        # rows whose own cap is reached stop here, unaccepted
        out = cap[active] <= done_n
        capped[active[out]] = True
        steps[active[out]] = cap[active[out]]
        active = active[~out]
        if not active.size:
            break
        c = int(min(chunk, int(cap[active].max()) - done_n))
        arr = done_n + 1 + np.arange(c, dtype=np.int64)[None, :]  # 1-based arrival index
        arr = np.broadcast_to(arr, (active.size, c))
        ka0, ka1 = p0[active][:, None], p1[active][:, None]
        u0 = be.to_numpy(
            private_uniforms(xp.asarray(ka0), xp.asarray(ka1), xp.asarray(arr), {0}, xp)[0]
        )
        times = T[active][:, None] + np.cumsum(-np.log(u0), axis=1)
        kd = np.zeros((active.size, c, 1), np.int64)
        yc = be.to_numpy(
            shared_sample(
                be,
                xp.asarray(k0[active][:, None]),
                xp.asarray(k1[active][:, None]),
                xp.zeros((active.size, c), dtype=xp.int64),
                xp.asarray(arr),
                xp.asarray(kd),
                xp.ones((1, 1, 1)),
                RNG_VERSION,
            )
        )[..., 0]
        uu = a[active][:, None] * (yc - xs[active][:, None]) ** 2
        within = arr <= cap[active][:, None]  # each row's own cap
        ok = (times <= _threshold(log_ug[active], log_t[active], uu)) & within
        hit = ok.any(axis=1)
        first = np.argmax(ok, axis=1)
        rows = active[hit]
        local[rows] = arr[hit, first[hit]]
        y_out[rows] = yc[hit, first[hit]]
        steps[rows] = local[rows]
        T[active] = times[:, -1]
        active = active[~hit]
        done_n += c
        chunk = min(2 * chunk, _CHUNK_MAX)
    local[capped] = 1
    return local, y_out, steps, capped


def encode(t, seed: int, max_steps: np.ndarray, be, on_cap: str):
    """GPRS for the checked targets ``t`` of :func:`recray.rec.api.encode` (``d = 1``)."""
    if t.d != 1:
        raise InputError(
            f"method 'gprs' codes one-dimensional blocks (the per-dimension baseline); got "
            f"blocks of {t.d} dimensions: split them into 1-D blocks"
        )
    k0, k1, p0, p1 = (be.to_numpy(k) for k in block_keys(seed, be.asarray(t.ids), be.xp))
    cap = np.broadcast_to(np.asarray(max_steps, dtype=np.int64), (t.n,))
    m, s = t.m[:, 0], t.s[:, 0]
    local, y, steps, capped = encode_1d(m, s, k0, k1, p0, p1, max_steps=cap, be=be, ids=t.ids)
    if on_cap == "raise" and capped.any():
        i = int(np.argmax(capped))
        dinf = (-np.log(s[i]) + m[i] ** 2 / (2 * (1 - s[i] ** 2))) / np.log(2)
        raise SearchBudgetError(
            f"{fmt_block(i, t.ids)}: GPRS hit max_steps = {int(cap[i])} (expected about "
            f"2^{dinf:.1f} steps = r_max)",
            block=i,
            dim=0,
        )
    return local, y[:, None], steps, capped


def dinf_bits(m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``log2 r_max`` per row (standardized 1-D targets): GPRS's expected steps are ``r_max``."""
    return (-np.log(s) + m * m / (2.0 * (1.0 - s * s))) / np.log(2.0)


__all__ = ["encode", "encode_1d", "dinf_bits"]
