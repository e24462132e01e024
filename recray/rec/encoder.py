"""``rec.encode``: one sample of each block's target, coded as a bin and a local index
(see :mod:`recray.rec.api` for the guarantees both sides rely on)."""

from __future__ import annotations

import numpy as np

from recray.backend import get_backend
from recray.errors import InputError, SearchBudgetError, fmt_block
from recray.rec import codes
from recray.rec.bounds import (
    ExactBounds,
    _batches,
    _check_bounds,
    _check_reach,
    _exact_bounds,
    _precheck,
    _tables,
)
from recray.rec.decoder import _regenerate, decode
from recray.rec.gaussian import kl_bits
from recray.rec.inputs import (
    DEFAULT_MAX_STEPS,
    EXACT_METHODS,
    MAX_SAMPLES_LIMIT,
    MAX_STEPS_LIMIT,
    _check_bounded,
    _check_method,
    _int_param,
    _seed,
    _Targets,
    _targets,
)
from recray.rec.philox import RNG_VERSION
from recray.rec.randomness import block_keys
from recray.rec.results import EncodeResult, Indices
from recray.rec.search import ChunkSchedule, SearchProblem, run_search
from recray.rec.trees import Geometry, Trees


def encode(
    mu,
    sigma,
    *,
    prior_mu=0.0,
    prior_sigma=1.0,
    bits=None,
    method: str = "sp-pfr",
    seed: int = 0,
    stream_ids=None,
    n_samples=None,
    max_steps=None,
    backend=None,
    on_cap: str = "raise",
    chunks: ChunkSchedule | None = None,
    bounds: ExactBounds | None = None,
    trees: Trees | None = None,
) -> EncodeResult:
    """Code one sample of ``Q_i = N(mu[i], diag(sigma[i]^2))`` per block against the prior
    ``P = N(prior_mu, diag(prior_sigma^2))``.

    Args:
        mu, sigma: float arrays ``(n_blocks, d)``, one row per block; ``sigma > 0``.
        prior_mu, prior_sigma: broadcast to ``(n_blocks, d)``; ``prior_sigma > 0``.
        bits: integers broadcast to ``(n_blocks, d)``: partition bits per dimension (0 = not
            partitioned), at most 24 per dimension and ``B = sum <= 62`` per block. Required
            by ``sp-*``; ignored by ``pfr``/``orc``. With ``trees``: the extra levels on each
            dimension's tree.
        trees: :class:`recray.rec.trees.Trees` or None (complete partitions: ``2^bits``
            intervals of equal prior mass): dyadic partitions of unequal prior mass per
            (block, dimension), each refined by ``bits`` levels (``sp-*`` only). Both sides
            must share them.
        method: ``"pfr"`` | ``"orc"`` | ``"sp-pfr"`` | ``"sp-orc"``.
        seed: run seed in ``[0, 2^64)``.
        stream_ids: int64 ``(n_blocks,)``, default ``arange(n_blocks)``. All randomness of
            block ``i`` is keyed by ``(seed, stream_ids[i])``.
        n_samples: the fixed budget ``N`` of ``orc``/``sp-orc`` (scalar or per block,
            ``1..2^24``).
        max_steps: step cap of ``pfr``/``sp-pfr`` (default ``2^26``, at most ``2^30``).
        backend: ``"numpy"`` | ``"cupy"`` | ``"numba"`` | ``"cuda"`` | ``"auto"`` | None
            (``RECRAY_BACKEND``, else ``"auto"``: the fastest usable; see
            :mod:`recray.backend`). The results do not depend on it.
        on_cap: ``"raise"`` (default): a block that would need, on average, more than
            ``max_steps`` candidates (``2^dinf_bits > max_steps``) is refused before any
            search, and one that hits the cap raises :class:`SearchBudgetError`;
            ``"keep"``: searches run to the cap and such blocks are flagged in
            ``res.capped`` (their sample is the best found, not exact).
        chunks: :class:`ChunkSchedule` (speed/memory only; results do not depend on it).
        bounds: the :class:`ExactBounds` of exactly these blocks (:func:`exact_bounds` of
            the same targets, bits and backend; ``pfr``/``sp-pfr``): the search reuses
            their tables instead of building them again (speed only).

    Returns: :class:`EncodeResult` (host NumPy arrays).

    Raises: :class:`InputError` (shapes, NaN/inf, scales <= 0, bits),
        :class:`UnboundedRatioError` (exact method on an unbounded ratio),
        :class:`OutOfReachError` (exact method on a target with more than
        ``2^OUTSIDE_MAX_BITS`` of its mass beyond the sampler's reach),
        :class:`SearchBudgetError` (step cap).
    """
    method = _check_method(method)
    if on_cap not in ("raise", "keep"):
        raise InputError(f"on_cap must be 'raise' or 'keep'; got {on_cap!r}")
    t = _targets(mu, sigma, prior_mu, prior_sigma, bits, method, stream_ids, trees)
    n, d, ids, pm, ps, m, s, geo = t.n, t.d, t.ids, t.pm, t.ps, t.m, t.s, t.geo
    seed = _seed(seed)
    if method == "gprs":
        return _encode_gprs(t, seed, max_steps, backend, on_cap)
    exact = method in EXACT_METHODS
    if exact:
        budget = _int_param(
            "max_steps",
            DEFAULT_MAX_STEPS if max_steps is None else max_steps,
            n,
            1,
            MAX_STEPS_LIMIT,
        )
        nsamp = None
    else:
        if n_samples is None:
            raise InputError(
                f"method {method!r} needs n_samples: the fixed number of candidates N per "
                "block (e.g. 2**16)"
            )
        nsamp = _int_param("n_samples", n_samples, n, 1, MAX_SAMPLES_LIMIT)
        budget = nsamp
    if exact:
        _check_bounded(m, s, ids, method)
        _check_reach(m, s, t.geo, ids, method)

    be = get_backend(backend)
    schedule = chunks or ChunkSchedule()
    batches = list(_batches(geo))
    dinf = np.full(n, np.nan)
    dinf_d = np.full((n, d), np.nan)
    kept = {}
    if bounds is not None:
        _check_bounds(bounds, t, be, method)
    if exact:
        # the bound of every block is known before any search starts; with one internal
        # batch (the common case) its tables are reused by the search
        if bounds is None:
            dinf, dinf_d, kept = _exact_bounds(be, m, s, geo, batches)
        else:
            dinf, dinf_d = bounds.dinf.copy(), bounds.dinf_d.copy()
            if bounds.tables is None or len(batches) != 1:
                kept = {}
            else:
                kept = {0: bounds.tables}
        if on_cap == "raise":
            _precheck(dinf, dinf_d, m, s, budget, ids)

    out_samples = np.empty((n, d), dtype=np.float64)
    out = {
        k: np.empty(n, dtype=t)
        for k, t in (
            ("bin", np.int64),
            ("local", np.int64),
            ("steps", np.int64),
            ("capped", bool),
        )
    }
    for lo, hi in batches:
        sl = slice(lo, hi)
        geo_b = geo.take(np.arange(lo, hi))
        tables = kept.pop(lo, None) or _tables(be, m[sl], s[sl], geo_b, exact)
        res = _search_batch(
            be,
            tables,
            m[sl],
            s[sl],
            geo_b,
            ids[sl],
            seed,
            budget[sl],
            exact,
            schedule,
            pm[sl],
            ps[sl],
        )
        out_samples[sl] = res["samples"]
        for k in out:
            out[k][sl] = res[k]

    B = _partition_bits(geo, out["bin"])
    if exact and on_cap == "raise" and out["capped"].any():
        i = int(np.argmax(out["capped"]))
        dd = int(np.argmax(dinf_d[i]))
        raise SearchBudgetError(
            f"{fmt_block(i, ids)}: the search hit max_steps = {int(budget[i])} before its "
            f"stopping bound was reached (expected about 2^{dinf[i]:.1f} steps; its dimension "
            f"{dd} contributes the most, {dinf_d[i, dd]:.1f} bits); "
            f"{int(out['capped'].sum())} blocks in all. Raise max_steps, give the block more "
            "partition bits, or pass on_cap='keep' to accept the best candidate found",
            block=i,
            dim=dd,
        )
    nbits = codes.index_bits(method, out["local"], B, nsamp)
    indices = Indices(out["bin"].copy(), out["local"].copy(), d)
    return EncodeResult(
        samples=out_samples,
        indices=indices,
        steps=out["steps"],
        nbits=nbits.astype(np.int64),
        capped=out["capped"],
        kl_bits=kl_bits(m, s, np),
        dinf_bits=dinf,
        partition_bits=B.astype(np.int64),
        method=method,
        seed=seed,
        backend_name=be.label,
        rng_version=RNG_VERSION,
    )


def _encode_gprs(t: _Targets, seed: int, max_steps, backend, on_cap: str) -> EncodeResult:
    from recray.rec import gprs

    budget = _int_param(
        "max_steps", DEFAULT_MAX_STEPS if max_steps is None else max_steps, t.n, 1, MAX_STEPS_LIMIT
    )
    be = get_backend(backend)
    local, _, steps, capped = gprs.encode(t, seed, budget, be, on_cap)
    zeros = np.zeros(t.n, np.int64)
    # the receiver's regeneration (PFR's candidates), so samples match decode bit for bit
    samples = decode(
        Indices(zeros, local, t.d),
        prior_mu=t.pm,
        prior_sigma=t.ps,
        method="gprs",
        seed=seed,
        stream_ids=t.ids,
        backend=backend,
    )
    return EncodeResult(
        samples=samples,
        indices=Indices(zeros.copy(), local.copy(), t.d),
        steps=steps,
        nbits=codes.index_bits("gprs", local, zeros).astype(np.int64),
        capped=capped,
        kl_bits=kl_bits(t.m, t.s, np),
        dinf_bits=gprs.dinf_bits(t.m[:, 0], t.s[:, 0]),
        partition_bits=zeros,
        method="gprs",
        seed=seed,
        backend_name=be.label,
        rng_version=RNG_VERSION,
    )


def _partition_bits(geo: Geometry, bins: np.ndarray) -> np.ndarray:
    """Bits the bin of each block costs under its partitions' prefix codes, int64 ``(n,)``:
    ``B = sum_d b_d`` for complete partitions, else the levels of the intervals of ``bins``."""
    if geo.plain:
        return geo.ext.sum(axis=1)
    return geo.ordinal_levels(geo.ordinals(bins)).sum(axis=1)


def _problem(be, tables, m, s, ids, seed, budget, exact) -> SearchProblem:
    """The search problem of one batch: standardized targets ``m``, ``s`` ``(n, d)``, their
    tables (partitions and weights), stream ids, run seed and per-block budgets ``(n,)``."""
    xp = be.xp
    s_d = be.asarray(s)
    return SearchProblem(
        m=be.asarray(m),
        s=s_d,
        log_s=xp.log(s_d),
        tables=tables,
        keys=block_keys(seed, be.asarray(ids), xp),
        budget=be.asarray(budget),
        exact=exact,
    )


def standard_problem(
    mu, sigma, bits, method, *, seed=0, budget=None, trees: Trees | None = None
) -> SearchProblem:
    """The :class:`SearchProblem` that :func:`encode` builds for targets ``N(mu, sigma^2)``
    ``(n, d)`` against the standard prior, as one batch on NumPy (stream ids ``0..n-1``);
    ``budget``: the step cap (exact methods, default :data:`DEFAULT_MAX_STEPS`) or ``N``
    (fixed-budget methods; required), scalar or ``(n,)``. For tests and benchmarks that
    drive the search backends directly."""
    t = _targets(mu, sigma, 0.0, 1.0, bits, method, None, trees)
    exact = method in EXACT_METHODS
    if budget is None:
        if not exact:
            raise InputError(f"method {method!r} needs a budget: the fixed N per block")
        budget = DEFAULT_MAX_STEPS
    be = get_backend("numpy")
    budget = np.broadcast_to(np.asarray(budget, dtype=np.int64), (t.n,)).copy()
    tables = _tables(be, t.m, t.s, t.geo, exact)
    return _problem(be, tables, t.m, t.s, t.ids, seed, budget, exact)


def _search_batch(be, tables, m, s, geo, ids, seed, budget, exact, schedule, pm, ps):
    prob = _problem(be, tables, m, s, ids, seed, budget, exact)
    keys = prob.keys
    if be.kernel == "cpu":
        from recray.rec.kernels import search_cpu

        outcome = search_cpu(prob)
    elif be.kernel == "gpu":
        from recray.rec.kernels import search_gpu

        outcome = search_gpu(prob)
    else:
        outcome = run_search(be, prob, schedule)
    samples = _regenerate(be, outcome.bin, outcome.local, geo, keys[0], keys[1], pm, ps)
    return {
        "samples": samples,
        "bin": outcome.bin,
        "local": outcome.local,
        "steps": outcome.steps,
        "capped": outcome.capped,
    }
