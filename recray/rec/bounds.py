"""The exact methods' stopping bounds before any search: ``D_inf[Q||P']`` of every block,
the feasibility of an exact search within ``max_steps``, the sampler's reach and the mass
of a target beyond it (docs/FORMAT.md section 4.1), and the bin tables they are read from
(built here once, reused by the search)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recray.backend import get_backend
from recray.errors import InputError, OutOfReachError, SearchBudgetError, fmt_block
from recray.rec.gaussian import LN2, StandardNormalPrior, log_mass_outside
from recray.rec.inputs import (
    DEFAULT_MAX_STEPS,
    EXACT_METHODS,
    MAX_STEPS_LIMIT,
    _int_param,
    _Targets,
    _targets,
)
from recray.rec.partition import (
    BinTables,
    build_tables,
    concat_tables,
    sup_bounds,
    take_tables,
)
from recray.rec.trees import Geometry, Trees

#: Margin of :func:`exact_feasible`: a block is admitted when its expected number of
#: candidates ``2^D_inf`` is at most ``max_steps / 2^4``. The number of steps of an exact
#: search has an about exponential tail (``P(steps > c 2^D_inf) ~ e^-c``), so an admitted
#: block hits the cap with probability about ``e^-16 ~ 1e-7`` (measured: ``tests/test_errors.py``).
FEASIBLE_MARGIN_BITS = 4.0
#: An exact method codes a block only when its target puts at most ``2^OUTSIDE_MAX_BITS``
#: of its mass (a union bound over the dimensions) beyond the sampler's reach: the sample
#: is exact for the target restricted to that range (docs/FORMAT.md section 4.1), and this
#: is the most it may differ from the unrestricted one in total variation.
OUTSIDE_MAX_BITS = -40.0
#: Blocks per internal batch are chosen so their bin tables hold at most this many entries.
TABLE_BUDGET = 1 << 23
MAX_BATCH_BLOCKS = 1 << 16


@dataclass(frozen=True)
class ExactBounds:
    """The stopping bounds of ``n`` blocks under an exact method (``sup`` weights), computed
    before any search by :func:`exact_bounds`; :func:`encode` (``bounds=``) reuses their
    tables instead of building them again. Host arrays but ``tables``:

    m, s     (n, d) float64  the prior-standardized targets they belong to
    bits     (n, d) int64    partition bits (extra levels on the trees)
    tree_ids (n, d) int64    the trees of ``tree_table`` (all 0 with the trivial table:
                             complete partitions)
    dinf     (n,) float64    ``D_inf[Q||P']`` in bits (``inf`` where the ratio is unbounded)
    dinf_d   (n, d) float64  its terms per dimension (NaN where the block is unbounded)
    outside  (n,) float64    log2 of the target's mass beyond the sampler's reach (a union
                             bound over the dimensions; ``-inf`` where none)
    rows     (k,) int64      the bounded blocks, ascending: those ``tables`` hold
    tables   BinTables | None  their search tables on backend ``backend``, or ``None`` when
                             they exceed one internal batch (:data:`TABLE_BUDGET`; the search
                             then builds its own, batch by batch)
    backend  str             the name of that backend
    """

    m: np.ndarray
    s: np.ndarray
    bits: np.ndarray
    tree_ids: np.ndarray
    dinf: np.ndarray
    dinf_d: np.ndarray
    outside: np.ndarray
    rows: np.ndarray
    tables: BinTables | None
    backend: str
    tree_table: tuple = ((0,),)

    def feasible(self, max_steps=None, margin_bits: float = FEASIBLE_MARGIN_BITS) -> np.ndarray:
        """bool ``(n,)``: bounded, ``2^dinf`` at most ``max_steps / 2^margin_bits``, and at
        most ``2^OUTSIDE_MAX_BITS`` of the target beyond the sampler's reach."""
        n = self.dinf.shape[0]
        cap = DEFAULT_MAX_STEPS if max_steps is None else max_steps
        budget = _int_param("max_steps", cap, n, 1, MAX_STEPS_LIMIT)
        bounded = np.zeros(n, dtype=bool)
        bounded[self.rows] = True
        cheap = self.dinf <= np.log2(budget.astype(np.float64)) - margin_bits
        return bounded & cheap & (self.outside <= OUTSIDE_MAX_BITS)

    def take(self, sel) -> ExactBounds:
        """The bounds of blocks ``sel`` (host int64 ``(k,)``), in that order."""
        sel = np.asarray(sel, dtype=np.int64)
        n = self.dinf.shape[0]
        if sel.shape[0] == n and self.rows.shape[0] == n and np.array_equal(sel, self.rows):
            return self  # all of them, all bounded: nothing to copy
        pos = np.searchsorted(self.rows, sel)
        hit = pos < self.rows.shape[0]
        hit[hit] = self.rows[pos[hit]] == sel[hit]
        tables = self.tables
        if tables is not None:
            tables = take_tables(tables, pos[hit], get_backend(self.backend).xp)
        return ExactBounds(
            self.m[sel],
            self.s[sel],
            self.bits[sel],
            self.tree_ids[sel],
            self.dinf[sel],
            self.dinf_d[sel],
            self.outside[sel],
            np.flatnonzero(hit),
            tables,
            self.backend,
            self.tree_table,
        )

    @staticmethod
    def stack(parts: list) -> ExactBounds:
        """One :class:`ExactBounds` of the blocks of ``parts`` (same ``d``, backend and tree
        table), in order; its tables are ``None`` unless every part has them."""
        shift, rows = 0, []
        for p in parts:
            rows.append(p.rows + shift)
            shift += p.dinf.shape[0]
        have = all(p.tables is not None for p in parts)
        xp = get_backend(parts[0].backend).xp
        return ExactBounds(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in _BOUND_ROWS),
            np.concatenate(rows),
            concat_tables([p.tables for p in parts], xp) if have else None,
            parts[0].backend,
            parts[0].tree_table,
        )


_BOUND_ROWS = ("m", "s", "bits", "tree_ids", "dinf", "dinf_d", "outside")


def _check_reach(m: np.ndarray, s: np.ndarray, geo: Geometry, ids, method: str) -> None:
    out = outside_bits(m, s, geo)
    far = out > OUTSIDE_MAX_BITS
    if not far.any():
        return
    i = int(np.argmax(far))
    lo, hi = reach_of(geo.take([i]))
    z = np.maximum((lo[0] - m[i]) / s[i], (m[i] - hi[0]) / s[i])
    dd = int(np.argmax(z))
    lo, hi = lo[0, dd], hi[0, dd]
    raise OutOfReachError(
        f"{fmt_block(i, ids)}, dimension {dd}: the target puts 2^{out[i]:.1f} of its mass "
        f"beyond the sampler's reach (about [{lo:.2f}, {hi:.2f}] prior-sigma; its mean is "
        f"{m[i, dd]:.4g} prior-sigma out with scale {s[i, dd]:.4g}), more than the "
        f"2^{OUTSIDE_MAX_BITS:g} an exact sample may lose to truncation; "
        f"{int(far.sum())} blocks are affected. Use method='sp-orc' or 'orc' for such "
        f"blocks, or give the dimension partition bits",
        block=i,
        dim=dd,
    )


def _batches(geo: Geometry):
    """Split rows so each batch's bin tables stay under TABLE_BUDGET entries."""
    n = geo.depth.shape[0]
    if n == 0:
        return
    per_row = np.left_shift(np.int64(1), geo.depth).sum(axis=1)
    cum = np.cumsum(per_row)
    lo = 0
    while lo < n:
        base = cum[lo - 1] if lo else 0
        hi = int(np.searchsorted(cum, base + TABLE_BUDGET, side="right"))
        hi = max(hi, lo + 1)
        hi = min(hi, lo + MAX_BATCH_BLOCKS, n)
        yield lo, hi
        lo = hi


def _exact_bounds(be, m, s, geo: Geometry, batches, tables: bool = True):
    """``D_inf[Q||P']`` per block and per dimension (bits) for the sup weights, and the
    tables when there is a single batch (to reuse); ``tables=False``: the bounds only
    (the same bits, no tables built)."""
    n, d = m.shape
    dinf = np.full(n, np.nan)
    dinf_d = np.full((n, d), np.nan)
    kept = {}
    for lo, hi in batches:
        g = geo.take(np.arange(lo, hi))
        if tables:
            t = _tables(be, m[lo:hi], s[lo:hi], g, True)
            log_rmax_d, log_rmax = t.log_rmax_d, t.log_rmax
            if len(batches) == 1:
                kept[lo] = t
        else:
            log_rmax_d, log_rmax = sup_bounds(be, be.asarray(m[lo:hi]), be.asarray(s[lo:hi]), g)
        dinf[lo:hi] = be.to_numpy(log_rmax) / LN2
        dinf_d[lo:hi] = be.to_numpy(log_rmax_d) / LN2
    return dinf, dinf_d, kept


def exact_bounds(
    mu,
    sigma,
    *,
    prior_mu=0.0,
    prior_sigma=1.0,
    bits=None,
    method="sp-pfr",
    backend=None,
    tables: bool = True,
    trees: Trees | None = None,
) -> ExactBounds:
    """The stopping bounds of an exact method (``pfr``/``sp-pfr``) for every block, before
    any search: :class:`ExactBounds` (``D_inf[Q||P']`` per block, and the search tables of
    the bounded blocks, which :func:`encode` reuses when given ``bounds=``). Same inputs as
    :func:`encode`; ``tables=False`` computes the same bounds without building tables."""
    if method not in EXACT_METHODS:
        raise InputError(f"exact_bounds is for {EXACT_METHODS}; got {method!r}")
    t = _targets(mu, sigma, prior_mu, prior_sigma, bits, method, None, trees)
    bounded = (t.s < 1.0) | ((t.s == 1.0) & (t.m == 0.0))
    rows = np.flatnonzero(bounded.all(axis=1))
    dinf = np.full(t.n, np.inf)
    dinf_d = np.full((t.n, t.d), np.nan)
    be = get_backend(backend)
    kept_tables = None
    if rows.size:
        sub = t.geo.take(rows)
        d_rows, dd_rows, kept = _exact_bounds(
            be, t.m[rows], t.s[rows], sub, list(_batches(sub)), tables
        )
        dinf[rows] = d_rows
        dinf_d[rows] = dd_rows
        kept_tables = kept.get(0)
    outside = outside_bits(t.m, t.s, t.geo)
    return ExactBounds(
        t.m,
        t.s,
        t.bits,
        t.tree_ids,
        dinf,
        dinf_d,
        outside,
        rows,
        kept_tables,
        be.name,
        t.geo.table,
    )


def reach_of(geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The sampler's reach ``(lo, hi)`` in every (block, dimension), host ``(n, d)``: the
    outer edges of the first and last intervals (docs/FORMAT.md section 4.1)."""
    lo = np.empty(geo.lo_level.shape)
    hi = np.empty(geo.hi_level.shape)
    prior = StandardNormalPrior(get_backend("numpy"))
    for lv in np.unique(geo.lo_level).tolist():  # a loop over distinct levels, not blocks
        lo[geo.lo_level == lv] = prior.reach(int(lv))[0]
    for lv in np.unique(geo.hi_level).tolist():
        hi[geo.hi_level == lv] = prior.reach(int(lv))[1]
    return lo, hi


def outside_bits(m: np.ndarray, s: np.ndarray, geo: Geometry) -> np.ndarray:
    """log2 of the mass of targets ``N(m, s^2)`` (prior-standardized, host ``(n, d)``)
    beyond the sampler's reach under partitions ``geo``, summed over the dimensions (a
    union bound), float64 ``(n,)``; ``-inf`` where it underflows."""
    lo, hi = reach_of(geo)
    ln = log_mass_outside(m, s, lo, hi)
    with np.errstate(divide="ignore"):
        top = ln.max(axis=1, initial=-np.inf)
        tot = top + np.log(np.exp(ln - np.where(np.isfinite(top), top, 0.0)[:, None]).sum(axis=1))
    return np.where(np.isfinite(top), tot, -np.inf) / LN2


def exact_feasible(
    mu,
    sigma,
    *,
    prior_mu=0.0,
    prior_sigma=1.0,
    bits=None,
    method="sp-pfr",
    max_steps=None,
    backend=None,
    margin_bits: float = FEASIBLE_MARGIN_BITS,
    trees: Trees | None = None,
):
    """Which blocks an exact method (``pfr``/``sp-pfr``) can code within ``max_steps``.

    Same inputs as :func:`encode`. Returns ``(feasible, dinf_bits)``: bool ``(n,)``, True
    where the density ratio is bounded and the expected number of candidates
    ``2^D_inf[Q||P']`` is at most ``max_steps / 2^margin_bits`` (default
    :data:`FEASIBLE_MARGIN_BITS`: an admitted block then hits the cap with probability about
    ``e^-16``); and ``D_inf[Q||P']`` in bits (``inf`` where unbounded). Callers route the
    other blocks to a fixed-budget method. :func:`exact_bounds` gives the same and can keep
    the tables for the search.
    """
    if method not in EXACT_METHODS:
        raise InputError(f"exact_feasible is for {EXACT_METHODS}; got {method!r}")
    b = exact_bounds(
        mu,
        sigma,
        prior_mu=prior_mu,
        prior_sigma=prior_sigma,
        bits=bits,
        method=method,
        backend=backend,
        tables=False,
        trees=trees,
    )
    return b.feasible(max_steps, margin_bits), b.dinf


def _check_bounds(bounds: ExactBounds, t: _Targets, be, method: str) -> None:
    """Refuse ``bounds`` that do not belong to these targets (a caller's mistake that would
    make the search stop by another block's bound)."""
    if method not in EXACT_METHODS:
        raise InputError(f"bounds are for the exact methods {EXACT_METHODS}; got {method!r}")
    same = (
        bounds.backend == be.name
        and bounds.m.shape == t.m.shape
        and bounds.rows.shape[0] == t.n
        and np.array_equal(bounds.bits, t.bits)
        and bounds.tree_table == t.geo.table
        and np.array_equal(bounds.tree_ids, t.tree_ids)
        and np.array_equal(bounds.m, t.m)
        and np.array_equal(bounds.s, t.s)
    )
    if not same:
        raise InputError(
            "bounds were computed for other blocks, bits or backend than these; pass the "
            "exact_bounds of exactly these targets (or none)"
        )


def _tables(be, m, s, geo: Geometry, exact):
    return build_tables(be, be.asarray(m), be.asarray(s), geo, "sup" if exact else "qmass")


def _precheck(dinf, dinf_d, m, s, budget, ids):
    """Refuse, before any search, blocks whose expected steps 2^D_inf exceed max_steps."""
    over = dinf > np.log2(budget.astype(np.float64))
    if not over.any():
        return
    i = int(np.argmax(over))
    dd = int(np.argmax(dinf_d[i]))
    near = " (near-collapsed: tiny KL, huge D_inf)" if abs(1.0 - s[i, dd]) < 0.05 else ""
    raise SearchBudgetError(
        f"{fmt_block(i, ids)}: the exact search would need about "
        f"2^{dinf[i]:.1f} = {2.0 ** dinf[i]:.3g} candidates on average (D_inf[Q||P'] = "
        f"{dinf[i]:.1f} bits) but max_steps = {int(budget[i])}; its dimension {dd} contributes "
        f"{dinf_d[i, dd]:.1f} bits (sigma/prior_sigma = {s[i, dd]:.6g}, "
        f"(mu - prior_mu)/prior_sigma = {m[i, dd]:.6g}){near}. {int(over.sum())} blocks "
        "are affected. Give that dimension partition bits, use method='sp-orc', raise "
        "max_steps, or pass on_cap='keep'",
        block=i,
        dim=dd,
    )
