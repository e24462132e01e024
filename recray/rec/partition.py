"""Space partitions and the sender's bin weights, as flat per-(block, dimension) tables.

Dimension ``d`` of block ``i`` is split into ``J = 2^b`` intervals of equal prior mass
(``b = bits[i, d]``). The sender weights interval ``k`` with ``pi_d(k)`` and draws bins from
these weights; the receiver never needs them (ALGORITHMS.md section 4).

Two weightings, not interchangeable:

* ``"sup"`` (for PFR-style exact search): ``pi_d(k) ∝ sup_{interval k} q_d/p_d``. Then the
  per-dimension bound is ``ln r'_max,d = ln sum_k sup_k - ln J``, the smallest possible for
  weights that are constant per interval.
* ``"qmass"`` (for ORC-style fixed-budget search): ``pi_d(k) = Q_d(interval k)``, which
  minimises ``D_KL[Q || P']``.

Every (block, dimension) pair owns a *segment* of ``J`` consecutive entries in two flat
arrays: ``cdf`` (the cumulative weights, last entry exactly 1.0) and ``log_corr``
(``ln(J * pi_d(k))``, what the log density ratio loses in that interval). Tables are built
per distinct value of ``b`` as dense ``(pairs, J)`` arrays, so each segment's cumulative sum
is computed on its own (no precision loss from a global running sum), and no Python loop
runs over blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from recray.rec.gaussian import LN2, GaussianRatio, StandardNormalPrior

#: Most partition bits one dimension may have (a 2^b-entry table is built for it).
MAX_BITS_PER_DIM = 24


@dataclass
class BinTables:
    """Flat bin tables for ``n`` blocks of ``d`` dimensions (arrays on the backend).

    offsets   (n, d) int64   start of each (block, dimension) segment in the flat arrays
                             (built in order; :func:`take_tables` shares them)
    bits      (n, d) int64   partition bits per dimension
    cdf       (total,) f64   cumulative weights within each segment; last entry is 1.0
    log_corr  (total,) f64   ln(J * pi(k)) per interval (nats)
    log_rmax_d (n, d) f64    per-dimension ln r'_max (nats; "sup" weights only, else NaN)
    log_rmax  (n,) f64       ln r'_max = sum over dimensions (nats; "sup" only, else NaN)
    max_bits  int            largest b (binary-search depth)
    log_bound (total,) f64   per interval, ``ln sup_{interval} q/p - log_corr``: the most a
                             candidate in it can add to ``ln r'`` ("qmass" only, else None;
                             ``+inf`` where the ratio is unbounded or the interval is never
                             drawn). The compiled kernels use it to drop fixed-budget
                             candidates that cannot win; "sup" weights make it constant per
                             dimension (``log_rmax_d``).
    """

    offsets: object
    bits: object
    cdf: object
    log_corr: object
    log_rmax_d: object
    log_rmax: object
    max_bits: int
    log_bound: object = None


def table_entries(bits_np) -> int:
    """Number of flat table entries ``sum 2^b`` for a host int array of bits."""
    import numpy as np

    return int(np.sum(np.left_shift(1, np.asarray(bits_np, dtype=np.int64))))


def build_tables(be, m, s, bits, bits_host, weights: str) -> BinTables:
    """Build the flat tables for targets ``N(m, s^2)`` (prior-standardized, ``(n, d)``).

    ``bits`` is the ``(n, d)`` int64 array on the backend, ``bits_host`` the same on the
    host (used to plan the per-``b`` groups). ``weights`` is ``"sup"`` or ``"qmass"``;
    ``"sup"`` requires every dimension to be bounded (checked by the caller).
    """
    import numpy as np

    xp = be.xp
    n, d = bits_host.shape
    sizes = np.left_shift(1, bits_host.astype(np.int64)).reshape(-1)
    offsets_host = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    total = int(sizes.sum())
    cdf = xp.empty(total, dtype=xp.float64)
    log_corr = xp.empty(total, dtype=xp.float64)
    lse = xp.empty(n * d, dtype=xp.float64)
    log_bound = xp.empty(total, dtype=xp.float64) if weights == "qmass" else None

    prior = StandardNormalPrior(be)
    flat_m = m.reshape(-1)
    flat_s = s.reshape(-1)
    flat_bits = bits_host.reshape(-1)
    offsets = xp.asarray(offsets_host)
    for b in np.unique(flat_bits).tolist():  # a loop over distinct bit values, not blocks
        sel = xp.asarray(np.nonzero(flat_bits == b)[0])
        J = 1 << b
        ratio, edges, logw, csum, tot, seg_lse = _segment_weights(
            be, prior, flat_m, flat_s, sel, b, weights
        )
        seg_cdf = csum / tot
        seg_cdf[:, -1] = 1.0
        idx = offsets[sel][:, None] + xp.arange(J, dtype=xp.int64)[None, :]
        cdf[idx] = seg_cdf
        # ln(J * pi(k)) = b ln2 + ln w_k - ln sum w
        seg_corr = (b * LN2) + (logw - seg_lse)
        log_corr[idx] = seg_corr
        lse[sel] = seg_lse[:, 0]
        if log_bound is not None:
            with be.errstate():
                seg_bound = log_sup_weights(ratio, prior, b) - seg_corr
            usable = ratio.bounded() & (logw > -xp.inf) & ~xp.isnan(seg_bound)
            log_bound[idx] = xp.where(usable, seg_bound, xp.inf)

    bits_dev = bits
    if weights == "sup":
        log_rmax_d, log_rmax = _sup_rmax(lse, bits_dev, n, d, xp)
    else:
        log_rmax_d = xp.full((n, d), xp.nan)
        log_rmax = xp.full((n,), xp.nan)
    return BinTables(
        offsets=offsets.reshape(n, d),
        bits=bits_dev,
        cdf=cdf,
        log_corr=log_corr,
        log_rmax_d=log_rmax_d,
        log_rmax=log_rmax,
        max_bits=int(bits_host.max()) if bits_host.size else 0,
        log_bound=log_bound,
    )


def sup_bounds(be, m, s, bits, bits_host):
    """``(log_rmax_d, log_rmax)`` (nats, ``(n, d)`` and ``(n,)``) of the ``"sup"`` weights
    for targets ``N(m, s^2)`` (as :func:`build_tables`, every dimension bounded): bit for
    bit what ``build_tables(..., "sup")`` gives, without building the tables (the
    validation pass needs the bounds only)."""
    import numpy as np

    xp = be.xp
    n, d = bits_host.shape
    lse = xp.empty(n * d, dtype=xp.float64)
    prior = StandardNormalPrior(be)
    flat_m = m.reshape(-1)
    flat_s = s.reshape(-1)
    flat_bits = bits_host.reshape(-1)
    for b in np.unique(flat_bits).tolist():
        sel = xp.asarray(np.nonzero(flat_bits == b)[0])
        seg_lse = _segment_weights(be, prior, flat_m, flat_s, sel, b, "sup")[-1]
        lse[sel] = seg_lse[:, 0]
    return _sup_rmax(lse, bits, n, d, xp)


#: Segments of at most this many intervals take their maxima and running sums column by
#: column: the same operations in the same order (bit for bit), without the per-row
#: overhead of NumPy's reductions over short rows.
SHORT_SEGMENT = 32


def _segment_weights(be, prior, flat_m, flat_s, sel, b: int, weights: str):
    """The weights of the (block, dimension) pairs ``sel`` (all with ``b`` bits): the
    :class:`GaussianRatio`, the edges, ``logw`` ``(g, J)`` (ln of the unnormalized weights),
    their running sums ``csum`` scaled by ``e^-top`` (``top`` = the row maximum of
    ``logw``), ``tot = csum[:, -1:]`` and ``seg_lse = top + ln tot`` ``(g, 1)``."""
    xp = be.xp
    edges = prior.edges(b)
    ratio = GaussianRatio(be, flat_m[sel][:, None], flat_s[sel][:, None])
    if weights == "sup":
        logw = log_sup_weights(ratio, prior, b)
    elif weights == "qmass":
        logw = ratio.log_mass_on(edges[None, :-1], edges[None, 1:])
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(f"unknown weights {weights!r}")
    J = logw.shape[1]
    if J > SHORT_SEGMENT:
        top = logw.max(axis=1, keepdims=True)
        csum = xp.cumsum(xp.exp(logw - top), axis=1)
    else:
        top = logw[:, :1].copy()
        for k in range(1, J):
            top = xp.maximum(top, logw[:, k : k + 1])
        w = xp.exp(logw - top)
        csum = w.copy()
        for k in range(1, J):  # left to right, as cumsum adds
            csum[:, k] = csum[:, k - 1] + w[:, k]
    tot = csum[:, -1:]
    return ratio, edges, logw, csum, tot, top + xp.log(tot)


def log_sup_weights(ratio: GaussianRatio, prior: StandardNormalPrior, b: int):
    """``ln sup q/p`` over the part of each of the ``J = 2^b`` intervals that the sampler
    can reach, ``(g, J)`` for the ``g`` targets of ``ratio`` (its ``m``, ``s`` of shape
    ``(g, 1)``; every one bounded). Inner intervals are ``[a_k, a_{k+1}]``; the outer ones
    end at :meth:`StandardNormalPrior.reach` instead of at infinity: no candidate can land
    beyond it, so the bound stays valid and the stop stays exact (docs/FORMAT.md section
    4.1), while a near-collapsed dimension whose ratio peaks 100 sigma out no longer
    bounds its search by that peak."""
    edges = prior.edges(b)
    lo, hi = prior.reach(b)
    if b == 0:
        return ratio.log_sup_on(lo, hi)  # (g, 1): ystar has that shape
    logw = ratio.log_sup_on(edges[None, :-1], edges[None, 1:])
    J = 1 << b
    logw[:, :1] = ratio.log_sup_on(lo, edges[1:2][None, :])
    logw[:, -1:] = ratio.log_sup_on(edges[J - 1 : J][None, :], hi)
    return logw


def _sup_rmax(lse, bits, n: int, d: int, xp):
    """Per-dimension and per-block ``ln r'_max`` from ``lse`` = ln sum_k sup_k ``(n * d,)``."""
    log_rmax_d = lse.reshape(n, d) - bits.astype(xp.float64) * LN2
    return log_rmax_d, sequential_sum(log_rmax_d, xp)


def take_tables(tables: BinTables, rows, xp) -> BinTables:
    """The tables of blocks ``rows`` (host int64 ``(k,)``, any order), in that order. Only
    the per-block arrays are taken: the flat arrays are shared, not copied (a segment may sit
    anywhere in them; every reader goes through ``offsets``), so each block reads exactly
    the entries :func:`build_tables` computed for it, bit for bit what building the tables
    of those blocks alone gives (every segment is computed on its own)."""
    r = xp.asarray(rows)
    bits = tables.bits[r]
    return BinTables(
        offsets=tables.offsets[r],
        bits=bits,
        cdf=tables.cdf,
        log_corr=tables.log_corr,
        log_rmax_d=tables.log_rmax_d[r],
        log_rmax=tables.log_rmax[r],
        max_bits=int(bits.max()) if bits.size else 0,
        log_bound=tables.log_bound,
    )


def concat_tables(parts: list, xp) -> BinTables:
    """One :class:`BinTables` of the blocks of ``parts`` (a non-empty list of tables with
    the same block dimension ``d`` and weights), stacked in order."""
    shift, offsets = 0, []
    for t in parts:
        offsets.append(t.offsets + shift)
        shift += int(t.cdf.shape[0])
    bounds = [t.log_bound for t in parts]
    return BinTables(
        offsets=xp.concatenate(offsets),
        bits=xp.concatenate([t.bits for t in parts]),
        cdf=xp.concatenate([t.cdf for t in parts]),
        log_corr=xp.concatenate([t.log_corr for t in parts]),
        log_rmax_d=xp.concatenate([t.log_rmax_d for t in parts]),
        log_rmax=xp.concatenate([t.log_rmax for t in parts]),
        max_bits=max(t.max_bits for t in parts),
        log_bound=None if any(b is None for b in bounds) else xp.concatenate(bounds),
    )


def sample_bins(tables: BinTables, rows, u, xp, cols=None):
    """Draw interval indices from the sender's weights by inverse CDF.

    ``rows`` (A,) int64 selects blocks, ``cols`` (list of e dimension indices, default all)
    the dimensions; ``u`` (A, c, e) float64 uniforms in (0, 1). Returns ``k`` (A, c, e)
    int64: the first interval whose cumulative weight is >= u (so intervals of zero weight
    are never drawn). A branch-free lower-bound search with power-of-two steps, ``max_bits``
    rounds; table positions fit int32 (a batch's tables hold < 2^31 entries).
    """
    off = tables.offsets[rows]
    bits = tables.bits[rows]
    if cols is not None:
        off, bits = off[:, cols], bits[:, cols]
    off = off[:, None, :]  # (A, 1, e)
    bits = bits[:, None, :].astype(xp.int32)
    pos = xp.broadcast_to(off.astype(xp.int32), u.shape).copy()
    for t in range(tables.max_bits, 0, -1):
        step = xp.where(bits >= t, xp.int32(1 << (t - 1)), xp.int32(0))  # (A, 1, e)
        cand = pos + step
        go = (tables.cdf[xp.maximum(cand - 1, 0)] < u) & (step > 0)
        pos = xp.where(go, cand, pos)
    return pos.astype(xp.int64) - off


def gather_log_corr(tables: BinTables, rows, k):
    """``ln(J * pi(k))`` for interval indices ``k`` (A, c, d) of blocks ``rows``."""
    return tables.log_corr[tables.offsets[rows][:, None, :] + k]


def sequential_sum(a, xp):
    """Sum over the last axis strictly left to right.

    Used wherever a sum over dimensions feeds a decision: the result does not depend on the
    backend's reduction tree, and appending dimensions that contribute exact zeros (padding
    with ``mu = prior_mu, sigma = prior_sigma, bits = 0``) leaves it bit-identical.
    """
    acc = a[..., 0].copy()
    for i in range(1, a.shape[-1]):
        acc = acc + a[..., i]
    return acc
