"""``rec.encode`` / ``rec.decode``: the public entry points of the algorithm core.

Guarantees and requirements (both sides must share all of these for decoding to be exact):

* the same ``seed``, ``stream_ids``, ``method``, partition ``bits`` and prior
  (``prior_mu``, ``prior_sigma``), and the same RNG recipe version
  (:data:`recray.rec.philox.RNG_VERSION`, written down in ``docs/FORMAT.md``);
* nothing about the machine or backend: with RNG recipe version 2 the decoder's samples are
  built from correctly rounded IEEE operations only (docs/FORMAT.md section 4), so
  ``decode`` returns ``res.samples`` bit for bit on every backend (``numpy``, ``cupy``,
  ``numba``, ``cuda``) and CPU; the search itself makes the same decisions on every
  backend (same indices and step counts). Runs coded with version 1 decode with
  ``rng_version=1`` (SciPy's ``ndtri``: bit-exact only where the encoder's library was);
* block ``i``'s result depends only on its own row and ``(seed, stream_ids[i])``: it is the
  same alone or inside any batch, and for any chunk schedule.

PFR and SP-PFR return exact samples of Q; ORC and SP-ORC are approximate (fixed budget).
GPRS (greedy Poisson rejection sampling, Flamich 2023; :mod:`recray.rec.gprs`), for
one-dimensional blocks, is the per-dimension baseline; it is approximate (its stretch
function is a numerical integral) and not in ``EXACT_METHODS``. Its candidates are PFR's,
so its indices decode like PFR's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recray.backend import get_backend
from recray.errors import (
    InputError,
    OutOfReachError,
    SearchBudgetError,
    UnboundedRatioError,
    fmt_block,
)
from recray.rec import codes
from recray.rec.gaussian import LN2, StandardNormalPrior, kl_bits, log_mass_outside
from recray.rec.kernels import compact_rows
from recray.rec.partition import (
    MAX_BITS_PER_DIM,
    BinTables,
    build_tables,
    concat_tables,
    sup_bounds,
    take_tables,
)
from recray.rec.philox import RNG_VERSION, RNG_VERSIONS
from recray.rec.randomness import MAX_DIM, MAX_LOCAL_INDEX, block_keys, shared_sample
from recray.rec.search import ChunkSchedule, SearchProblem, run_search
from recray.rec.trees import Geometry, Trees, geometry

METHODS = ("pfr", "orc", "sp-pfr", "sp-orc", "gprs")
EXACT_METHODS = ("pfr", "sp-pfr")
#: Default step cap of the exact methods: far above any search recray is meant for
#: (2^26 ~ 6.7e7 candidates, about 2^26 / 2^16 = 1024x the largest advised mean).
DEFAULT_MAX_STEPS = 1 << 26
MAX_STEPS_LIMIT = 1 << 30
MAX_SAMPLES_LIMIT = 1 << 24
MAX_PARTITION_BITS = 62
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
#: Smallest target scale relative to the prior: below it ``((y - mu)/sigma)^2`` can overflow
#: float64 for candidates a few prior-sigma out, and scores become NaN.
MIN_SCALE_RATIO = 1e-150
#: Blocks per internal batch are chosen so their bin tables hold at most this many entries.
TABLE_BUDGET = 1 << 23
MAX_BATCH_BLOCKS = 1 << 16


@dataclass(frozen=True)
class Indices:
    """What :func:`decode` needs per block: ``bin`` (n,) int64, the flat bin id ``j*`` in
    ``[0, 2^B)`` (0 for pfr/orc), and ``local`` (n,) int64, the 1-based local index ``n*``
    (the arrival index for pfr/orc); ``dim`` is the block dimension ``d``.

    ``as_array()`` gives the same as one int64 array ``(n, 2)`` = ``[bin, local]``.
    """

    bin: np.ndarray
    local: np.ndarray
    dim: int

    def as_array(self) -> np.ndarray:
        return np.stack([self.bin, self.local], axis=1)

    @classmethod
    def from_array(cls, a, dim: int) -> Indices:
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[1] != 2 or not np.issubdtype(a.dtype, np.integer):
            raise InputError(
                f"indices must be an integer array of shape (n_blocks, 2) = [bin, local]; "
                f"got dtype {a.dtype} and shape {a.shape}"
            )
        return cls(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), dim)

    def __len__(self) -> int:
        return int(self.bin.shape[0])


@dataclass(frozen=True)
class EncodeResult:
    """The outcome of :func:`encode`, host NumPy arrays, one row per block.

    samples    (n, d) float64  what each block decodes to (exact sample of Q for pfr/sp-pfr)
    indices    Indices         what ``decode`` needs
    steps      (n,) int64      candidates examined (the stopping arrival included)
    nbits      (n,) int64      exact length in bits of each block's coded index
    capped     (n,) bool       the search hit ``max_steps`` (only with ``on_cap="keep"``;
                               the sample is then the best found, not exact)
    kl_bits    (n,) float64    D_KL[Q || P] of each block, bits
    dinf_bits  (n,) float64    D_inf[Q || P'] = log2 r'_max, bits (exact methods; NaN else);
                               the expected number of steps is about 2^dinf_bits
    partition_bits (n,) int64  B per block
    backend_name   str         the backend that searched (``be.label``: numpy, cupy, numba,
                               cuda, cuda-simulator); a diagnostic, the results do not
                               depend on it
    rng_version    int         the RNG recipe the samples follow (docs/FORMAT.md)
    """

    samples: np.ndarray
    indices: Indices
    steps: np.ndarray
    nbits: np.ndarray
    capped: np.ndarray
    kl_bits: np.ndarray
    dinf_bits: np.ndarray
    partition_bits: np.ndarray
    method: str
    seed: int
    backend_name: str = "numpy"
    rng_version: int = RNG_VERSION


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


# --------------------------------------------------------------------------- validation
def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return method


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.argwhere(mask)[0])


def _float_2d(name: str, a, shape=None) -> np.ndarray:
    if np.iscomplexobj(a):
        raise InputError(f"{name} must be a real float array; got complex values")
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a real float array; could not convert: {exc}") from exc
    if shape is None:
        if arr.ndim != 2:
            raise InputError(
                f"{name} must have shape (n_blocks, d), one row per block; got shape {arr.shape}"
            )
        return arr
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise InputError(
            f"{name} of shape {arr.shape} does not broadcast to (n_blocks, d) = {shape}"
        ) from None


def _check_finite(name: str, arr: np.ndarray, ids) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        i, d = _first_bad(bad)
        raise InputError(
            f"{fmt_block(i, ids)}: {name}[{i}, {d}] = {arr[i, d]} is not finite "
            f"({int(bad.sum())} non-finite entries of {name} in all); remove or fix these rows",
            block=i,
            dim=d,
        )


def _check_positive(name: str, arr: np.ndarray, ids) -> None:
    bad = arr <= 0
    if bad.any():
        i, d = _first_bad(bad)
        raise InputError(
            f"{fmt_block(i, ids)}: {name}[{i}, {d}] = {arr[i, d]} must be > 0 "
            f"({int(bad.sum())} entries of {name} are <= 0); scales are standard deviations",
            block=i,
            dim=d,
        )


def _stream_ids(stream_ids, n: int) -> np.ndarray:
    if stream_ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(stream_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(
            f"stream_ids must be an integer array of shape (n_blocks,) = ({n},); "
            f"got dtype {ids.dtype} and shape {ids.shape}"
        )
    return ids.astype(np.int64)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
        raise InputError(f"seed must be an integer in [0, 2^64); got {seed!r}")
    return int(seed)


def _bits(bits, method: str, shape, ids) -> np.ndarray:
    n, d = shape
    if not method.startswith("sp-"):
        return np.zeros(shape, dtype=np.int64)
    if bits is None:
        raise InputError(
            f"method {method!r} needs bits: partition bits per dimension, an integer array "
            "broadcast to (n_blocks, d) (0 = not partitioned); see recray.plan.allocate_bits"
        )
    arr = np.asarray(bits)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(f"bits must be an integer array; got dtype {arr.dtype}")
    try:
        arr = arr.astype(np.int64, copy=False)
        if arr.shape != shape:
            arr = np.broadcast_to(arr, shape)
    except ValueError:
        raise InputError(
            f"bits of shape {arr.shape} does not broadcast to (n_blocks, d) = {shape}"
        ) from None
    if (arr < 0).any():
        i, dd = _first_bad(arr < 0)
        raise InputError(f"{fmt_block(i, ids)}: bits[{i}, {dd}] = {arr[i, dd]} must be >= 0")
    if (arr > MAX_BITS_PER_DIM).any():
        i, dd = _first_bad(arr > MAX_BITS_PER_DIM)
        raise InputError(
            f"{fmt_block(i, ids)}: bits[{i}, {dd}] = {arr[i, dd]} is too large: at most "
            f"{MAX_BITS_PER_DIM} per dimension (a 2^b-entry weight table is built for it); "
            "spread the block's bits over more dimensions"
        )
    B = arr.sum(axis=1)
    if (B > MAX_PARTITION_BITS).any():
        i = int(np.argmax(B > MAX_PARTITION_BITS))
        raise InputError(
            f"{fmt_block(i, ids)}: its bits sum to B = {int(B[i])} >= 63; a block's bin id "
            "must fit one int64, so B <= 62: split the block"
        )
    return np.ascontiguousarray(arr)


def _int_param(name: str, value, n: int, lo: int, hi: int) -> np.ndarray:
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be an integer (or one per block); got {value!r}")
    try:
        arr = np.broadcast_to(arr.astype(np.int64), (n,))
    except ValueError:
        raise InputError(f"{name} must be a scalar or have shape ({n},); got {arr.shape}") from None
    if (arr < lo).any() or (arr > hi).any():
        bad = int(np.argmax((arr < lo) | (arr > hi)))
        raise InputError(f"{name}[{bad}] = {int(arr[bad])} is outside [{lo}, {hi}]")
    return arr


def _check_bounded(m: np.ndarray, s: np.ndarray, ids, method: str) -> None:
    bounded = (s < 1.0) | ((s == 1.0) & (m == 0.0))
    if not bounded.all():
        i, d = _first_bad(~bounded)
        why = (
            "the posterior is wider than the prior"
            if s[i, d] > 1.0
            else "the posterior has the prior's width but a shifted mean"
        )
        raise UnboundedRatioError(
            f"{fmt_block(i, ids)}, dimension {d}: the density ratio q/p is unbounded ({why}: "
            f"sigma/prior_sigma = {s[i, d]:.6g}, (mu - prior_mu)/prior_sigma = {m[i, d]:.6g}), "
            f"so {method} would never stop; {int((~bounded).sum())} entries are affected. "
            "Use method='sp-orc' or 'orc' (fixed budget) for such blocks",
            block=i,
            dim=d,
        )


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


# --------------------------------------------------------------------------- encode
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


@dataclass(frozen=True)
class _Targets:
    """Validated inputs of one call, host arrays ``(n, d)``; ``m``, ``s`` standardized."""

    n: int
    d: int
    ids: np.ndarray
    pm: np.ndarray
    ps: np.ndarray
    bits: np.ndarray
    m: np.ndarray
    s: np.ndarray
    geo: Geometry

    @property
    def tree_ids(self) -> np.ndarray:
        return self.geo.tree_id


def _targets(mu, sigma, prior_mu, prior_sigma, bits, method, stream_ids, trees=None) -> _Targets:
    mu = _float_2d("mu", mu)
    n, d = mu.shape
    sigma = _float_2d("sigma", sigma)
    if sigma.shape != mu.shape:
        raise InputError(f"sigma has shape {sigma.shape} but mu has {mu.shape}; they must match")
    if d < 1 or d > MAX_DIM:
        raise InputError(f"blocks must have 1..{MAX_DIM} dimensions; got d = {d}")
    ids = _stream_ids(stream_ids, n)
    pm = _float_2d("prior_mu", prior_mu, (n, d))
    ps = _float_2d("prior_sigma", prior_sigma, (n, d))
    for name, arr in (("mu", mu), ("sigma", sigma), ("prior_mu", pm), ("prior_sigma", ps)):
        _check_finite(name, arr, ids)
    _check_positive("sigma", sigma, ids)
    _check_positive("prior_sigma", ps, ids)
    s = sigma / ps
    narrow = s < MIN_SCALE_RATIO
    if narrow.any():
        i, dd = _first_bad(narrow)
        raise InputError(
            f"{fmt_block(i, ids)}: sigma[{i}, {dd}] / prior_sigma = {s[i, dd]:.3g} is below "
            f"{MIN_SCALE_RATIO:g}: the scores of such a narrow target overflow float64 "
            f"({int(narrow.sum())} entries affected); such a posterior is a point mass in "
            "practice: widen it (e.g. clip sigma) before coding",
            block=i,
            dim=dd,
        )
    bits_np = _bits(bits, method, (n, d), ids)
    geo = _geometry(trees, bits_np, method, ids)
    return _Targets(n, d, ids, pm, ps, bits_np, (mu - pm) / ps, s, geo)


def _geometry(trees, bits_np: np.ndarray, method: str, ids) -> Geometry:
    if trees is not None and not isinstance(trees, Trees):
        raise InputError(f"trees must be a recray.rec.trees.Trees or None; got {trees!r}")
    if trees is not None and not method.startswith("sp-"):
        trees = None  # pfr/orc ignore the partition, as they ignore bits
    try:
        return geometry(trees, bits_np)
    except InputError as exc:
        msg = str(exc)
        if exc.args and msg.startswith("block "):
            i = int(msg.split()[1].rstrip(":,"))
            msg = fmt_block(i, ids) + msg[len(f"block {i}") :]
        raise InputError(msg) from None


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


def _regenerate(be, bin_np, local_np, geo: Geometry, k0, k1, pm, ps, version=RNG_VERSION):
    """Samples ``x = prior_mu + prior_sigma * G(seed, j, n)`` on the backend, to the host.
    The kernels and the array path give the same bits (RNG version 2)."""
    shape = geo.radix.shape
    if be.kernel is not None and version == RNG_VERSION:
        from recray.rec.kernels import regenerate

        return regenerate(
            be.kernel,
            bin_np,
            local_np,
            geo,
            be.to_numpy(k0),
            be.to_numpy(k1),
            compact_rows(np.broadcast_to(pm, shape)),
            compact_rows(np.broadcast_to(ps, shape)),
        )
    j = be.asarray(bin_np)[:, None]
    local = be.asarray(local_np)[:, None]
    kd, inv_J = geo.intervals(geo.ordinals(bin_np))
    y = shared_sample(
        be,
        k0[:, None],
        k1[:, None],
        j,
        local,
        be.asarray(kd)[:, None, :],
        be.asarray(inv_J)[:, None, :],
        version,
    )
    x = be.asarray(pm) + be.asarray(ps) * y[:, 0, :]
    return be.to_numpy(x).astype(np.float64, copy=False)


# --------------------------------------------------------------------------- decode
def decode(
    indices,
    *,
    prior_mu=0.0,
    prior_sigma=1.0,
    bits=None,
    method: str = "sp-pfr",
    seed: int = 0,
    stream_ids=None,
    backend=None,
    dim: int | None = None,
    rng_version: int = RNG_VERSION,
    n_samples=None,
    max_steps=None,
    on_cap=None,
    chunks=None,
    trees: Trees | None = None,
) -> np.ndarray:
    """Rebuild each block's sample from its index: ``x = prior_mu + prior_sigma * G(j, n)``.

    ``indices`` is ``res.indices`` (:class:`Indices`) or an int array ``(n_blocks, 2)`` of
    ``[bin, local]`` (then ``d`` comes from ``dim=`` or the shape of ``prior_mu``,
    ``prior_sigma`` or ``bits``). All other arguments must equal the encoder's (see the
    module docstring). ``rng_version``: the recipe the run was coded with (1 or 2; the
    current one by default). Returns float64 ``(n_blocks, d)``: bit for bit
    ``res.samples``, on any backend. Decoding never needs the targets.

    ``n_samples``, ``max_steps``, ``on_cap`` and ``chunks`` are accepted and ignored (the
    encoder's settings; the index alone decides the sample), so one set of keyword
    arguments can serve both calls.
    """
    method = _check_method(method)
    if rng_version not in RNG_VERSIONS:
        raise InputError(
            f"rng_version = {rng_version!r} is not a recipe this recray can decode "
            f"(known: {', '.join(map(str, RNG_VERSIONS))})"
        )
    if not isinstance(indices, Indices):
        if dim is None:
            dim = _infer_dim(prior_mu, prior_sigma, bits)
        indices = Indices.from_array(indices, dim)
    elif dim is not None and dim != indices.dim:
        raise InputError(f"dim = {dim} contradicts indices.dim = {indices.dim}")
    n, d = len(indices), indices.dim
    if isinstance(d, bool) or not isinstance(d, int | np.integer) or not 1 <= d <= MAX_DIM:
        raise InputError(
            f"dim (the block dimension d) must be an integer in [1, {MAX_DIM}]; got {d!r}"
        )
    ids = _stream_ids(stream_ids, n)
    seed = _seed(seed)
    pm = _float_2d("prior_mu", prior_mu, (n, d))
    ps = _float_2d("prior_sigma", prior_sigma, (n, d))
    _check_finite("prior_mu", pm, ids)
    _check_finite("prior_sigma", ps, ids)
    _check_positive("prior_sigma", ps, ids)
    bits_np = _bits(bits, method, (n, d), ids)
    geo = _geometry(trees, bits_np, method, ids)
    j, local = indices.bin, indices.local
    B = geo.ext.sum(axis=1)
    end = np.left_shift(np.int64(1), B) if geo.plain else np.prod(geo.radix, axis=1)
    bad = (j < 0) | (j >= end)
    if bad.any():
        i = int(np.argmax(bad))
        fits = f"B = {int(B[i])} partition bits" if geo.plain else f"{int(end[i])} bins"
        raise InputError(
            f"{fmt_block(i, ids)}: indices.bin[{i}] = {int(j[i])} does not fit the block's "
            f"{fits}; bits, trees, method or indices do not match the encoder"
        )
    bad = (local < 1) | (local >= MAX_LOCAL_INDEX)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"{fmt_block(i, ids)}: indices.local[{i}] = {int(local[i])} must be in [1, 2^48)"
        )
    be = get_backend(backend)
    if be.kernel is not None and rng_version == RNG_VERSION:
        from recray.rec.kernels import shared_keys

        k0, k1 = shared_keys(seed, ids, rng_version)
    else:
        k0, k1, _, _ = block_keys(seed, be.asarray(ids), be.xp, rng_version)
    if n == 0:
        return np.empty((0, d), dtype=np.float64)
    return _regenerate(
        be,
        j,
        local,
        geo,
        k0,
        k1,
        pm,
        ps,
        rng_version,
    )


def _infer_dim(*arrays) -> int:
    for a in arrays:
        if a is not None and np.ndim(a) >= 1:
            return int(np.shape(a)[-1])
    raise InputError(
        "cannot tell the block dimension d from a plain index array: pass res.indices "
        "(an Indices object), dim=d, or prior_mu/prior_sigma/bits with a last axis of length d"
    )


__all__ = [
    "exact_bounds",
    "exact_feasible",
    "ExactBounds",
    "METHODS",
    "EXACT_METHODS",
    "DEFAULT_MAX_STEPS",
    "ChunkSchedule",
    "EncodeResult",
    "Indices",
    "decode",
    "encode",
]
