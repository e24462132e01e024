"""Space partitions and the sender's bin weights, as flat per-(block, dimension) tables.

Dimension ``d`` of block ``i`` is split into the sub-leaves of its tree
(:mod:`recray.rec.trees`): ``radix`` intervals of known prior mass ``2^-level`` (for the
complete partition of ``b`` bits, ``J = 2^b`` intervals of mass ``2^-b``). The sender
weights interval ``k`` with ``pi_d(k)`` and draws bins from these weights; the receiver
never needs them (ALGORITHMS.md section 4).

Two weightings, not interchangeable:

* ``"sup"`` (for PFR-style exact search): ``pi_d(k) ∝ w_k sup_{interval k} q_d/p_d`` with
  ``w_k = 2^-level_k`` the interval's prior mass. Then the per-dimension bound is
  ``ln r'_max,d = ln sum_k w_k sup_k`` (``ln sum_k sup_k - ln J`` for equal masses), the
  smallest possible for weights that are constant per interval; the sup is over the part
  of the interval the sampler can reach (docs/FORMAT.md section 4.1).
* ``"qmass"`` (for ORC-style fixed-budget search): ``pi_d(k) = Q_d(interval k)``, which
  minimises ``D_KL[Q || P']``.

Every (block, dimension) pair owns a *segment* of ``2^depth`` consecutive entries
(``depth = ceil(log2 radix)``; entries past ``radix`` are padding, never drawn) in the flat
arrays ``cdf`` (the cumulative weights, entry ``radix - 1`` exactly 1.0) and ``log_corr``
(``ln(pi_d(k) / w_k)``, what the log density ratio loses in that interval). Tables are
built per distinct (tree, extra bits) pair as dense ``(pairs, radix)`` arrays, so each
segment's cumulative sum is computed on its own (no precision loss from a global running
sum), and no Python loop runs over blocks. For complete partitions every entry is the
same float, bit for bit, as before trees existed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from recray.rec.gaussian import LN2, GaussianRatio, StandardNormalPrior
from recray.rec.trees import MAX_LEVEL, Geometry, leaf_starts

#: Most partition bits one dimension may have (a 2^b-entry table is built for it).
MAX_BITS_PER_DIM = MAX_LEVEL


@dataclass
class BinTables:
    """Flat bin tables for ``n`` blocks of ``d`` dimensions (arrays on the backend).

    offsets   (n, d) int64   start of each (block, dimension) segment in the flat arrays
                             (built in order; :func:`take_tables` shares them)
    depth     (n, d) int64   ``ceil(log2 radix)``: rounds of the bin draw's binary search
                             (the partition bits ``b`` for complete partitions)
    radix     (n, d) int64   intervals (sub-leaves) of each pair: 1 = not partitioned
    mult      (n, d) int64   the pair's place value in the block's mixed-radix bin id
                             (``prod`` of the radices of the dimensions before it)
    ext       (n, d) int64   extra levels of each pair on top of its tree
    inv_J     (n, d) f64     ``2^-ext``
    toff      (n, d) int64   the pair's tree in ``leaf_k`` / ``leaf_inv``
    leaf_k    (T,) int64     every tree leaf's index at its level
    leaf_inv  (T,) f64       every tree leaf's prior mass ``2^-level``
    cdf       (total,) f64   cumulative weights within each segment; entry radix - 1 is 1.0
    log_corr  (total,) f64   ln(pi(k) / w_k) per interval (nats)
    log_rmax_d (n, d) f64    per-dimension ln r'_max (nats; "sup" weights only, else NaN)
    log_rmax  (n,) f64       ln r'_max = sum over dimensions (nats; "sup" only, else NaN)
    max_depth int            largest depth (binary-search rounds)
    log_bound (total,) f64   per interval, ``ln sup_{interval} q/p - log_corr``: the most a
                             candidate in it can add to ``ln r'`` ("qmass" only, else None;
                             ``+inf`` where the ratio is unbounded or the interval is never
                             drawn). The compiled kernels use it to drop fixed-budget
                             candidates that cannot win; "sup" weights make it constant per
                             dimension (``log_rmax_d``).

    Interval ``o`` (the *ordinal*) of a pair is interval ``k = (leaf_k[t] << ext) | (o mod
    2^ext)`` at level ``level_t + ext`` with ``t = toff + (o >> ext)``: the candidate is
    ``Phi^{-1}((k + u) / 2^level)``, with ``2^-level = leaf_inv[t] * inv_J``.
    """

    offsets: object
    depth: object
    radix: object
    mult: object
    ext: object
    inv_J: object
    toff: object
    leaf_k: object
    leaf_inv: object
    cdf: object
    log_corr: object
    log_rmax_d: object
    log_rmax: object
    max_depth: int
    log_bound: object = None


def build_tables(be, m, s, geo: Geometry, weights: str) -> BinTables:
    """Build the flat tables for targets ``N(m, s^2)`` (prior-standardized, ``(n, d)`` on the
    backend) under the partitions ``geo`` (:func:`recray.rec.trees.geometry`, host).
    ``weights`` is ``"sup"`` or ``"qmass"``; ``"sup"`` requires every dimension to be
    bounded (checked by the caller)."""
    xp = be.xp
    n, d = geo.radix.shape
    sizes = np.left_shift(np.int64(1), geo.depth).reshape(-1)
    offsets_host = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    total = int(sizes.sum())
    pad = bool((geo.radix != np.left_shift(np.int64(1), geo.depth)).any())
    cdf = xp.ones(total, dtype=xp.float64) if pad else xp.empty(total, dtype=xp.float64)
    log_corr = xp.zeros(total, dtype=xp.float64) if pad else xp.empty(total, dtype=xp.float64)
    lse = xp.empty(n * d, dtype=xp.float64)
    log_bound = None
    if weights == "qmass":
        log_bound = xp.full(total, xp.inf) if pad else xp.empty(total, dtype=xp.float64)

    prior = StandardNormalPrior(be)
    flat_m = m.reshape(-1)
    flat_s = s.reshape(-1)
    offsets = xp.asarray(offsets_host)
    for key, sel_host in _shape_groups(geo):  # a loop over distinct partitions, not blocks
        sel = xp.asarray(sel_host)
        shape = _shape(be, prior, geo.table[key[0]], key[1])
        ratio, logw, csum, tot, seg_lse = _segment_weights(be, shape, flat_m, flat_s, sel, weights)
        seg_cdf = csum / tot
        seg_cdf[:, -1] = 1.0
        idx = offsets[sel][:, None] + xp.arange(shape.radix, dtype=xp.int64)[None, :]
        cdf[idx] = seg_cdf
        # ln(pi(k) / w_k) = level_k ln2 + ln w_k - ln sum w
        seg_corr = (shape.level_ln2) + (logw - seg_lse)
        log_corr[idx] = seg_corr
        lse[sel] = seg_lse[:, 0]
        if log_bound is not None:
            with be.errstate():
                seg_bound = log_sup_weights(ratio, shape) - seg_corr
            usable = ratio.bounded() & (logw > -xp.inf) & ~xp.isnan(seg_bound)
            log_bound[idx] = xp.where(usable, seg_bound, xp.inf)

    if weights == "sup":
        log_rmax_d, log_rmax = _sup_rmax(lse, xp.asarray(geo.min_level), n, d, xp)
    else:
        log_rmax_d = xp.full((n, d), xp.nan)
        log_rmax = xp.full((n,), xp.nan)
    return BinTables(
        offsets=offsets.reshape(n, d),
        depth=xp.asarray(geo.depth),
        radix=xp.asarray(geo.radix),
        mult=xp.asarray(geo.mult),
        ext=xp.asarray(geo.ext),
        inv_J=xp.asarray(np.ldexp(1.0, -geo.ext)),
        toff=xp.asarray(geo.toff),
        leaf_k=xp.asarray(geo.leaf_k),
        leaf_inv=xp.asarray(np.ldexp(1.0, -geo.leaf_level)),
        cdf=cdf,
        log_corr=log_corr,
        log_rmax_d=log_rmax_d,
        log_rmax=log_rmax,
        max_depth=int(geo.depth.max()) if geo.depth.size else 0,
        log_bound=log_bound,
    )


def sup_bounds(be, m, s, geo: Geometry):
    """``(log_rmax_d, log_rmax)`` (nats, ``(n, d)`` and ``(n,)``) of the ``"sup"`` weights
    for targets ``N(m, s^2)`` (as :func:`build_tables`, every dimension bounded): bit for
    bit what ``build_tables(..., "sup")`` gives, without building the tables (the
    validation pass needs the bounds only)."""
    xp = be.xp
    n, d = geo.radix.shape
    lse = xp.empty(n * d, dtype=xp.float64)
    prior = StandardNormalPrior(be)
    flat_m = m.reshape(-1)
    flat_s = s.reshape(-1)
    for key, sel_host in _shape_groups(geo):
        sel = xp.asarray(sel_host)
        shape = _shape(be, prior, geo.table[key[0]], key[1])
        seg_lse = _segment_weights(be, shape, flat_m, flat_s, sel, "sup")[-1]
        lse[sel] = seg_lse[:, 0]
    return _sup_rmax(lse, xp.asarray(geo.min_level), n, d, xp)


def _shape_groups(geo: Geometry):
    """``((tree id, ext), flat pair indices)`` of every distinct partition, host int64."""
    key = geo.tree_id.reshape(-1) * (MAX_LEVEL + 1) + geo.ext.reshape(-1)
    for kv in np.unique(key).tolist():
        yield divmod(int(kv), MAX_LEVEL + 1), np.nonzero(key == kv)[0]


@dataclass(frozen=True)
class _Shape:
    """The intervals of one partition (a tree with ``ext`` extra levels), in ordinal order:
    ``a``, ``c`` their edges (the outer ones still at +-inf: the reach is applied where a
    sup is taken), ``level_ln2`` ``level * ln 2`` (a Python float when every level is
    equal), ``rel`` ``(level - min level) * ln 2`` (None when every level is equal),
    ``lo``, ``hi`` the sampler's reach at the outer intervals (docs/FORMAT.md 4.1),
    ``radix`` the number of intervals."""

    a: object
    c: object
    level_ln2: object
    rel: object
    lo: float
    hi: float
    radix: int


_SHAPES: dict = {}


def _shape(be, prior: StandardNormalPrior, tree: tuple, ext: int) -> _Shape:
    """The :class:`_Shape` of ``tree`` refined by ``ext`` levels (cached per backend; the
    complete partition's edges are views of the cached edge table: the same bits as before
    trees)."""
    key = (be.name, tree, ext)
    hit = _SHAPES.get(key)
    if hit is not None:
        return hit
    xp = be.xp
    lo = prior.reach(tree[0] + ext)[0]
    hi = prior.reach(tree[-1] + ext)[1]
    if len(tree) == 1:  # the complete partition of ext bits
        edges = prior.edges(ext)
        shape = _Shape(edges[:-1], edges[1:], ext * LN2, None, lo, hi, 1 << ext)
        if ext <= 16:
            _SHAPES[key] = shape
        return shape
    lv = np.repeat(np.asarray(tree, dtype=np.int64) + ext, 1 << ext)
    k = (np.repeat(leaf_starts(tree), 1 << ext) << ext) + np.tile(
        np.arange(1 << ext, dtype=np.int64), len(tree)
    )
    a = np.empty(lv.shape[0])
    c = np.empty(lv.shape[0])
    for level in np.unique(lv).tolist():
        sel = lv == level
        edges = be.to_numpy(prior.edges(level))
        a[sel] = edges[k[sel]]
        c[sel] = edges[k[sel] + 1]
    rel = (lv - lv.min()) * LN2
    shape = _Shape(
        xp.asarray(a), xp.asarray(c), xp.asarray(lv * LN2), xp.asarray(rel), lo, hi, lv.size
    )
    if len(_SHAPES) < 4096:
        _SHAPES[key] = shape
    return shape


#: Segments of at most this many intervals take their maxima and running sums column by
#: column: the same operations in the same order (bit for bit), without the per-row
#: overhead of NumPy's reductions over short rows.
SHORT_SEGMENT = 32


def _segment_weights(be, shape: _Shape, flat_m, flat_s, sel, weights: str):
    """The weights of the (block, dimension) pairs ``sel`` (all with partition ``shape``):
    the :class:`GaussianRatio`, ``logw`` ``(g, J)`` (ln of the unnormalized weights),
    their running sums ``csum`` scaled by ``e^-top`` (``top`` = the row maximum of
    ``logw``), ``tot = csum[:, -1:]`` and ``seg_lse = top + ln tot`` ``(g, 1)``."""
    xp = be.xp
    ratio = GaussianRatio(be, flat_m[sel][:, None], flat_s[sel][:, None])
    if weights == "sup":
        logw = log_sup_weights(ratio, shape)
        if shape.rel is not None:  # w_k sup_k, relative to the largest interval's mass
            logw = logw - shape.rel[None, :]
    elif weights == "qmass":
        logw = ratio.log_mass_on(shape.a[None, :], shape.c[None, :])
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
    return ratio, logw, csum, tot, top + xp.log(tot)


def log_sup_weights(ratio: GaussianRatio, shape: _Shape):
    """``ln sup q/p`` over the part of each interval of ``shape`` that the sampler can
    reach, ``(g, J)`` for the ``g`` targets of ``ratio`` (its ``m``, ``s`` of shape
    ``(g, 1)``; every one bounded). Inner intervals are ``[a_k, c_k]``; the outer ones end
    at the reach (:meth:`StandardNormalPrior.reach`) instead of at infinity: no candidate
    can land beyond it, so the bound stays valid and the stop stays exact (docs/FORMAT.md
    section 4.1), while a near-collapsed dimension whose ratio peaks 100 sigma out no
    longer bounds its search by that peak."""
    if shape.radix == 1:
        return ratio.log_sup_on(shape.lo, shape.hi)  # (g, 1): ystar has that shape
    logw = ratio.log_sup_on(shape.a[None, :], shape.c[None, :])
    J = shape.radix
    logw[:, :1] = ratio.log_sup_on(shape.lo, shape.c[0:1][None, :])
    logw[:, -1:] = ratio.log_sup_on(shape.a[J - 1 : J][None, :], shape.hi)
    return logw


def dim_dinf_bits(be, m, s, tree: tuple, ext) -> np.ndarray:
    """``D_inf`` of targets ``N(m, s^2)`` (host ``(k,)``, bounded) in one dimension under
    ``tree`` refined by ``ext`` levels (host int ``(k,)``), with sup weights, bits:
    ``log2 sum_k w_k sup_k q/p``, float64 ``(k,)``. The same bits as
    :func:`build_tables`'s ``log_rmax_d / ln 2``."""
    m = np.asarray(m, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    ext = np.broadcast_to(np.asarray(ext, dtype=np.int64), m.shape)
    out = np.empty(m.shape[0])
    prior = StandardNormalPrior(be)
    xp = be.xp
    min_level = min(tree)
    for e in np.unique(ext).tolist():
        rows_e = np.flatnonzero(ext == e)
        shape = _shape(be, prior, tree, int(e))
        step = max(1, _TABLE_ENTRIES // shape.radix)
        for lo in range(0, rows_e.size, step):
            rows = rows_e[lo : lo + step]
            sel = xp.arange(rows.size)
            m_r, s_r = xp.asarray(m[rows]), xp.asarray(s[rows])
            lse = _segment_weights(be, shape, m_r, s_r, sel, "sup")[-1]
            out[rows] = be.to_numpy(lse[:, 0] - (min_level + e) * LN2) / LN2
    return out


_TABLE_ENTRIES = 1 << 22  # (rows x radix) entries per chunk of dim_dinf_bits


def _sup_rmax(lse, min_level, n: int, d: int, xp):
    """Per-dimension and per-block ``ln r'_max`` from ``lse`` = ln sum_k 2^-(level_k -
    min level) sup_k ``(n * d,)`` and the shallowest level ``min_level`` ``(n, d)``."""
    log_rmax_d = lse.reshape(n, d) - min_level.astype(xp.float64) * LN2
    return log_rmax_d, sequential_sum(log_rmax_d, xp)


def take_tables(tables: BinTables, rows, xp) -> BinTables:
    """The tables of blocks ``rows`` (host int64 ``(k,)``, any order), in that order. Only
    the per-block arrays are taken: the flat arrays are shared, not copied (a segment may sit
    anywhere in them; every reader goes through ``offsets`` and ``toff``), so each block
    reads exactly the entries :func:`build_tables` computed for it, bit for bit what
    building the tables of those blocks alone gives (every segment is computed on its own)."""
    r = xp.asarray(rows)
    depth = tables.depth[r]
    return dataclasses.replace(
        tables,
        **{f: getattr(tables, f)[r] for f in _PER_BLOCK},
        max_depth=int(depth.max()) if depth.size else 0,
    )


#: The per-block fields of :class:`BinTables` (the others are flat, shared by blocks).
_PER_BLOCK = (
    "offsets",
    "depth",
    "radix",
    "mult",
    "ext",
    "inv_J",
    "toff",
    "log_rmax_d",
    "log_rmax",
)


def concat_tables(parts: list, xp) -> BinTables:
    """One :class:`BinTables` of the blocks of ``parts`` (a non-empty list of tables with
    the same block dimension ``d`` and weights), stacked in order."""
    shift, tshift, offsets, toffs = 0, 0, [], []
    for t in parts:
        offsets.append(t.offsets + shift)
        toffs.append(t.toff + tshift)
        shift += int(t.cdf.shape[0])
        tshift += int(t.leaf_k.shape[0])
    bounds = [t.log_bound for t in parts]

    def cat(f):
        return xp.concatenate([getattr(t, f) for t in parts])

    return BinTables(
        offsets=xp.concatenate(offsets),
        depth=cat("depth"),
        radix=cat("radix"),
        mult=cat("mult"),
        ext=cat("ext"),
        inv_J=cat("inv_J"),
        toff=xp.concatenate(toffs),
        leaf_k=cat("leaf_k"),
        leaf_inv=cat("leaf_inv"),
        cdf=cat("cdf"),
        log_corr=cat("log_corr"),
        log_rmax_d=cat("log_rmax_d"),
        log_rmax=cat("log_rmax"),
        max_depth=max(t.max_depth for t in parts),
        log_bound=None if any(b is None for b in bounds) else xp.concatenate(bounds),
    )


def sample_bins(tables: BinTables, rows, u, xp, cols=None):
    """Draw interval ordinals from the sender's weights by inverse CDF.

    ``rows`` (A,) int64 selects blocks, ``cols`` (list of e dimension indices, default all)
    the dimensions; ``u`` (A, c, e) float64 uniforms in (0, 1). Returns ``o`` (A, c, e)
    int64: the first interval whose cumulative weight is >= u (so intervals of zero weight,
    and the padding past ``radix``, are never drawn). A branch-free lower-bound search
    with power-of-two steps, ``max_depth`` rounds; table positions fit int32 (a batch's
    tables hold < 2^31 entries).
    """
    off = tables.offsets[rows]
    depth = tables.depth[rows]
    if cols is not None:
        off, depth = off[:, cols], depth[:, cols]
    off = off[:, None, :]  # (A, 1, e)
    depth = depth[:, None, :].astype(xp.int32)
    pos = xp.broadcast_to(off.astype(xp.int32), u.shape).copy()
    for t in range(tables.max_depth, 0, -1):
        step = xp.where(depth >= t, xp.int32(1 << (t - 1)), xp.int32(0))  # (A, 1, e)
        cand = pos + step
        go = (tables.cdf[xp.maximum(cand - 1, 0)] < u) & (step > 0)
        pos = xp.where(go, cand, pos)
    return pos.astype(xp.int64) - off


def intervals_of(tables: BinTables, rows, o):
    """``(k, inv_J)``: the interval index at its level and ``2^-level`` of ordinals ``o``
    (A, c, d) of blocks ``rows``; the candidate is ``Phi^{-1}((k + u) inv_J)``. For
    complete partitions ``k = o`` and ``inv_J = 2^-b``."""
    ext = tables.ext[rows][:, None, :]
    t = tables.toff[rows][:, None, :] + (o >> ext)
    k = (tables.leaf_k[t] << ext) | (o & ((1 << ext) - 1))
    return k, tables.leaf_inv[t] * tables.inv_J[rows][:, None, :]


def gather_log_corr(tables: BinTables, rows, k):
    """``ln(pi(k) / w_k)`` for interval ordinals ``k`` (A, c, d) of blocks ``rows``."""
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
