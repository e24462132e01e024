"""Bit allocation inside one block: how many partition bits ``b_d`` each dimension gets.

A dimension with ``b_d`` bits is split into ``2^{b_d}`` intervals of equal prior mass; a
block with ``B = sum_d b_d`` bits has ``2^B`` bins (see ALGORITHMS.md §4–5). The sender and
the receiver must derive exactly the same ``b_d``, so everything here is deterministic:

* proportional shares are computed in exact rational arithmetic (:class:`fractions.Fraction`
  of the float64 inputs), so largest-remainder rounding never depends on float rounding;
* the only randomness (strategy ``"random"``, and the tie-breaks and seeds used by
  :mod:`recray.plan.blocks` and :func:`recray.plan.build_plan`) comes from Philox4x32-10
  with the plan's own key, never from NumPy's generators. See :func:`plan_uniforms`.

All quantities are in bits.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numpy as np

from recray.errors import PlanError
from recray.rec.philox import MASK32, philox4x32, uniform53

#: Allocation strategies: ``"mi"`` (the method), ``"uniform"`` and ``"random"`` (baselines),
#: ``"collapsed-only"`` (the paper's ablation: partition the collapsed dimensions only).
STRATEGIES: tuple[str, ...] = ("mi", "uniform", "random", "collapsed-only")

#: Largest block budget: a block's bin id must fit one int64, so ``B < 63``.
MAX_BLOCK_BITS = 62

#: Philox key of every plan draw: ``(PLAN_DOMAIN, PLAN_RNG_VERSION)``; "PLAN" in ASCII.
PLAN_DOMAIN = 0x504C414E
PLAN_RNG_VERSION = 1

#: Second counter word ("purpose") of the plan's Philox draws.
PURPOSE_RANDOM_ALLOCATION = 1
PURPOSE_BLOCK_TIE_BREAK = 2
PURPOSE_BLOCK_SEED = 3

SEED_LIMIT = 2**64


# --------------------------------------------------------------------------- validation


def check_int(value, name: str, lo: int, hi: int | None = None) -> int:
    """``value`` as a Python int in ``[lo, hi]`` (``hi`` inclusive, None = unbounded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PlanError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise PlanError(f"{name} must be an integer in {rng}, got {v}")
    return v


def check_positive_float(value, name: str, hint: str = "") -> float:
    """``value`` as a finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PlanError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise PlanError(f"{name} must be finite and > 0, got {v!r}{hint}")
    return v


def check_seed(seed) -> int:
    """The plan seed: an integer in ``[0, 2^64)``."""
    return check_int(seed, "seed", 0, SEED_LIMIT - 1)


def check_threshold(collapse_threshold) -> float:
    """``collapse_threshold`` (bits): finite and > 0, so every eligible "mi" weight is > 0."""
    hint = "; dimensions with mi below it are collapsed (use e.g. 1e-12 to keep nearly all)"
    return check_positive_float(collapse_threshold, "collapse_threshold", hint)


def check_mi(mi_bits, name: str = "mi_bits") -> np.ndarray:
    """``mi_bits`` as a float64 array ``(d,)``, ``d >= 1``, every entry finite and >= 0."""
    try:
        mi = np.asarray(mi_bits, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PlanError(f"{name} must be a 1-D array of numbers (bits): {exc}") from None
    if mi.ndim != 1:
        raise PlanError(f"{name} must be 1-D (one value per dimension), got shape {mi.shape}")
    if mi.shape[0] == 0:
        raise PlanError(f"{name} is empty: give one information value (bits) per dimension")
    bad = np.flatnonzero(~np.isfinite(mi) | (mi < 0.0))
    if bad.size:
        i = int(bad[0])
        raise PlanError(
            f"{name}[{i}] = {mi[i]!r} is invalid: per-dimension information must be finite "
            f"and >= 0 bits ({bad.size} bad entr{'y' if bad.size == 1 else 'ies'} in total)"
        )
    return mi


def check_strategy(strategy) -> str:
    if strategy not in STRATEGIES:
        raise PlanError(f"strategy {strategy!r} is unknown; valid strategies: {STRATEGIES}")
    return strategy


# --------------------------------------------------------------------------- randomness


def plan_words(seed: int, purpose: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """First two Philox4x32-10 output words for draws ``i = 0..n-1`` of one purpose.

    Counter ``(i, purpose, seed & 0xFFFFFFFF, seed >> 32)``, key
    ``(PLAN_DOMAIN, PLAN_RNG_VERSION) = (0x504C414E, 1)``. Returns two ``uint64`` arrays
    ``(n,)`` of 32-bit words. Bit-identical on every machine and NumPy version.
    """
    seed = check_seed(seed)
    i = np.arange(n, dtype=np.uint64)
    w0, w1, _, _ = philox4x32(
        i, purpose, seed & MASK32, (seed >> 32) & MASK32, PLAN_DOMAIN, PLAN_RNG_VERSION
    )
    return w0, w1


def plan_uniforms(seed: int, purpose: int, n: int) -> np.ndarray:
    """``n`` uniforms in (0, 1), float64 ``(n,)``: ``uniform53`` of :func:`plan_words`."""
    w0, w1 = plan_words(seed, purpose, n)
    return uniform53(w0, w1)


def derive_block_seed(seed: int, block_index: int) -> int:
    """Seed of block ``block_index``'s allocation: ``(w1 << 32) | w0`` of Philox draw
    ``i = block_index`` with purpose :data:`PURPOSE_BLOCK_SEED`; an int in ``[0, 2^64)``."""
    check_int(block_index, "block_index", 0, MASK32)
    w0, w1 = plan_words(seed, PURPOSE_BLOCK_SEED, block_index + 1)
    return (int(w1[block_index]) << 32) | int(w0[block_index])


# --------------------------------------------------------------------------- allocation


def largest_remainder(shares: list[Fraction], total: int) -> list[int]:
    """Integers ``floor(share)`` plus one for the ``total - sum(floors)`` largest fractional
    parts (ties: lower index first). ``shares`` must sum exactly to ``total``."""
    floors = [math.floor(s) for s in shares]
    left = total - sum(floors)
    order = sorted(range(len(shares)), key=lambda i: (floors[i] - shares[i], i))
    for i in order[:left]:
        floors[i] += 1
    return floors


def capped_proportional(weights: list[Fraction], total: int, cap: int) -> list[int]:
    """Split ``total`` proportionally to ``weights`` (all > 0), never more than ``cap`` each.

    Water filling: any share above ``cap`` is fixed at ``cap`` and the rest is shared again
    among the others, until no share exceeds it; then largest remainder. Requires
    ``total <= cap * len(weights)``. A share ``<= cap`` never rounds above ``cap``.
    """
    out = [0] * len(weights)
    free = list(range(len(weights)))
    rest = total
    while free:
        wsum = sum(weights[i] for i in free)
        shares = {i: rest * weights[i] / wsum for i in free}
        over = [i for i in free if shares[i] > cap]
        if not over:
            ints = largest_remainder([shares[i] for i in free], rest)
            for i, b in zip(free, ints, strict=True):
                out[i] = b
            return out
        for i in over:
            out[i] = cap
        rest -= cap * len(over)
        capped = set(over)
        free = [i for i in free if i not in capped]
    return out


def random_allocation(n: int, total: int, cap: int, seed: int) -> list[int]:
    """Each of ``total`` bits goes to a uniformly drawn one of the ``n`` dimensions that are
    still below ``cap``: bit ``t`` uses ``u_t = plan_uniforms(seed, 1, total)[t]`` and picks
    ``open[floor(u_t * len(open))]`` (``open`` in ascending index order)."""
    u = plan_uniforms(seed, PURPOSE_RANDOM_ALLOCATION, total)
    out = [0] * n
    for t in range(total):
        open_dims = [i for i in range(n) if out[i] < cap]
        k = min(int(float(u[t]) * len(open_dims)), len(open_dims) - 1)
        out[open_dims[k]] += 1
    return out


def eligible_dims(mi: np.ndarray, strategy: str, threshold: float) -> np.ndarray:
    """Indices that may receive bits: informative dims for ``"mi"``, collapsed ones for
    ``"collapsed-only"``, all of them for ``"uniform"`` and ``"random"``."""
    if strategy == "mi":
        return np.flatnonzero(mi >= threshold)
    if strategy == "collapsed-only":
        return np.flatnonzero(mi < threshold)
    return np.arange(mi.shape[0])


def _check_feasible(n_elig: int, total: int, cap: int, strategy: str) -> None:
    if n_elig == 0:
        what = "collapsed" if strategy == "collapsed-only" else "informative (mi >= threshold)"
        raise PlanError(
            f"strategy {strategy!r} has no {what} dimension to give total_bits={total} to; "
            "use another strategy, change collapse_threshold, or allocate 0 bits"
        )
    if total > cap * n_elig:
        raise PlanError(
            f"total_bits={total} exceeds max_bits_per_dim={cap} x {n_elig} eligible "
            f"dimension(s) for strategy {strategy!r}; raise max_bits_per_dim or lower total_bits"
        )


def allocate_bits(
    mi_bits,
    total_bits: int,
    strategy: str = "mi",
    *,
    seed: int = 0,
    collapse_threshold: float = 0.01,
    max_bits_per_dim: int = 24,
) -> np.ndarray:
    """Partition bits per dimension of one block, summing exactly to ``total_bits``.

    Args:
        mi_bits: per-dimension information (bits), array ``(d,)``, finite and >= 0, d >= 1.
        total_bits: the block's budget ``B``, integer in ``[0, 62]`` (bin ids fit int64).
        strategy: one of :data:`STRATEGIES`:
            ``"mi"`` proportional to ``mi_bits`` over informative dims
            (``mi >= collapse_threshold``), zero for collapsed ones;
            ``"uniform"`` equal shares over all dims; ``"random"`` every bit to a dim drawn
            uniformly (Philox, from ``seed``); ``"collapsed-only"`` equal shares over the
            collapsed dims only. Fractional shares become integers by largest remainder,
            ties to the lower index.
        seed: integer in ``[0, 2^64)``; used by ``"random"`` only.
        collapse_threshold: bits (> 0) below which a dimension is collapsed.
        max_bits_per_dim: no dimension gets more (>= 1); excess is shared again among the
            other eligible dims in the same proportions.

    Returns: int64 array ``(d,)``, non-negative, summing to ``total_bits``. A budget of 0
    gives all zeros for every strategy. Deterministic: same inputs, same output everywhere.

    Raises: :class:`PlanError` on invalid input, when ``total_bits > 0`` and no dimension is
    eligible, or when ``total_bits > max_bits_per_dim * (eligible dims)``.
    """
    mi = check_mi(mi_bits)
    total = check_int(total_bits, "total_bits", 0, MAX_BLOCK_BITS)
    strategy = check_strategy(strategy)
    seed = check_seed(seed)
    threshold = check_threshold(collapse_threshold)
    cap = check_int(max_bits_per_dim, "max_bits_per_dim", 1)
    out = np.zeros(mi.shape[0], dtype=np.int64)
    if total == 0:
        return out
    elig = eligible_dims(mi, strategy, threshold)
    _check_feasible(int(elig.size), total, cap, strategy)
    if strategy == "random":
        out[elig] = random_allocation(int(elig.size), total, cap, seed)
    elif strategy == "mi":
        out[elig] = capped_proportional([Fraction(float(mi[i])) for i in elig], total, cap)
    else:
        out[elig] = capped_proportional([Fraction(1)] * int(elig.size), total, cap)
    return out
