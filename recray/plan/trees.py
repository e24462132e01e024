"""Tree partitions for a codec plan: intervals about equally wide where the posteriors sit.

A complete partition of ``b`` bits splits a dimension into ``2^b`` intervals of equal prior
mass. Near the prior's centre they are narrow, in its tails wide: a posterior that sits two
or three prior-sigma out lands in a wide interval, inside which its density ratio ``q/p``
varies a lot, and the exact search's cost ``2^D_inf`` explodes (most of the candidates
recray compress spent went to such items). The code length of an interval, on the other
hand, is ``-log2`` of its prior mass, and a posterior at ``y`` of scale ``s`` has about
``log2(1/s) + y^2/(2 ln 2)`` bits of KL: intervals of equal *width* ``W``, mass about
``W phi(y)``, cost about the KL of the posteriors that land in them, wherever they are.

:func:`width_tree` builds the dyadic tree (recray.rec.trees) whose leaves are the first
halvings no wider than ``W`` (prior-standard units; the outer leaves measured to the
sampler's reach), down to ``max_level``. For a dimension of information ``I`` bits, the
typical posterior scale is ``s = 2^-I`` (exact when the posteriors average to the prior
with one scale), and ``W = f s sqrt(2 pi e^(1 - s^2))`` makes a leaf's code length equal
the KL of a posterior at its centre, up to ``log2 f``. :func:`block_trees` picks one factor
``f`` per block by bisection so that the block's mean code length ``sum_d H(tree_d)``
(:func:`recray.rec.trees.tree_entropy_bits`: the data average when the posteriors average
to the prior) is closest to its budget ``B``. Everything is computed with the portable
``Phi^{-1}`` (recray.rec.portable), so the trees are the same on every machine; they are
written in the plan, so a decoder never rebuilds them.

Measured on synthetic and linear-Gaussian posteriors (docs/RESULTS.md, ``recray bench
plan``): at the same budget, 1.6-2.5x fewer candidates and about 2 bits per item less than
complete partitions.
"""

from __future__ import annotations

import math

import numpy as np

from recray.errors import PlanError
from recray.rec import portable
from recray.rec.trees import MAX_BIN_ID_BITS, tree_entropy_bits

#: Deepest leaf of a plan's trees: a leaf of level 12 holds prior mass 2^-12 (beyond about
#: 3.4 sigma), where posteriors are rare; deeper leaves would only widen the bin ids.
TREE_MAX_LEVEL = 12
BISECTION_ROUNDS = 40
_EDGES: dict = {}
_WIDTHS: dict = {}


def _edges(level: int) -> np.ndarray:
    """The portable quantiles ``Phi^{-1}(k 2^-level)``, ``k = 0 .. 2^level``, the upper half
    through the complement as the sampler computes them, with the outer ends at the
    sampler's reach for a leaf of that level (docs/FORMAT.md section 4.1)."""
    hit = _EDGES.get(level)
    if hit is None:
        from recray.backend import get_backend
        from recray.rec.gaussian import StandardNormalPrior

        J = 1 << level
        k = np.arange(J + 1, dtype=np.float64)
        with np.errstate(divide="ignore"):
            lower = portable.ndtri(np.maximum(k, 1.0) / J, np)
            upper = -portable.ndtri(np.maximum(J - k, 1.0) / J, np)
        hit = np.where(2 * k <= J, lower, upper)
        lo, hi = StandardNormalPrior(get_backend("numpy")).reach(level)
        hit[0], hit[-1] = lo, hi
        _EDGES[level] = hit
    return hit


def _widths(level: int) -> np.ndarray:
    """The widths of the ``2^level`` intervals of :func:`_edges` (their differences)."""
    hit = _WIDTHS.get(level)
    if hit is None:
        hit = _WIDTHS[level] = np.diff(_edges(level))
    return hit


def width_tree(width: float, max_level: int) -> tuple[int, ...]:
    """The leaf levels of the dyadic tree that halves every interval wider than ``width``
    (prior-standard units; the outer intervals measured to the sampler's reach) until
    ``max_level``: the narrowest leaves in the tails, the widest in the middle. Built a
    level at a time; the leaves are listed left to right."""
    starts, levels = [], []
    k = np.zeros(1, dtype=np.int64)  # the nodes of this level, by index
    for level in range(max_level + 1):
        split = _widths(level)[k] > width if level < max_level else np.zeros(k.size, bool)
        leaf = k[~split]
        starts.append(leaf << (max_level - level))  # left end, in units of the finest level
        levels.append(np.full(leaf.size, level))
        k = (2 * k[split][:, None] + np.arange(2)).ravel()
        if not k.size:
            break
    order = np.argsort(np.concatenate(starts), kind="stable")
    return tuple(np.concatenate(levels)[order].tolist())


def typical_width(info_bits: float) -> float:
    """``W`` for ``f = 1``: the width whose interval code length is the KL of a posterior
    of scale ``2^-I`` at its centre."""
    s = 2.0 ** -float(info_bits)
    return s * math.sqrt(2.0 * math.pi * math.exp(1.0 - s * s))


def _depth(levels: tuple[int, ...]) -> int:
    n = len(levels)
    return (n - 1).bit_length() if n > 1 else 0


def block_trees(
    info_bits, target_bits: float, *, max_level: int, collapse_threshold: float
) -> tuple[tuple[int, ...], ...]:
    """The trees of one block's dimensions (information ``info_bits``, bits): the trivial
    tree for collapsed ones (below ``collapse_threshold``), else :func:`width_tree` with
    ``W_d = f * typical_width(I_d)``, one ``f`` for the block chosen so that the mean code
    length ``sum_d H(tree_d)`` is closest to ``target_bits`` (ties: the smaller), with the
    block's bin ids within 62 bits (``max_level`` is lowered until they fit)."""
    info = [float(v) for v in info_bits]
    live = [i for i, v in enumerate(info) if v >= collapse_threshold]
    trivial = (0,)
    if not live or target_bits <= 0:
        return tuple(trivial for _ in info)
    level = max_level
    while True:
        trees = _calibrate([info[i] for i in live], target_bits, level)
        if sum(_depth(t) for t in trees) <= MAX_BIN_ID_BITS or level <= 1:
            break
        level -= 1
    out = [trivial] * len(info)
    for i, t in zip(live, trees, strict=True):
        out[i] = t
    return tuple(out)


def _calibrate(info: list[float], target: float, max_level: int):
    widths = [typical_width(v) for v in info]

    def trees_at(log_f: float):
        f = 2.0**log_f
        return [width_tree(f * w, max_level) for w in widths]

    def cost(trees) -> float:
        return math.fsum(tree_entropy_bits(t) for t in trees)

    lo, hi = -12.0, 12.0  # log2 f: finer (more bits) at lo, coarser at hi
    c_lo, c_hi = cost(trees_at(lo)), cost(trees_at(hi))
    if c_hi >= target:
        return trees_at(hi)
    if c_lo <= target:
        return trees_at(lo)
    for _ in range(BISECTION_ROUNDS):
        mid = 0.5 * (lo + hi)
        if cost(trees_at(mid)) > target:
            lo = mid
        else:
            hi = mid
    over, under = trees_at(lo), trees_at(hi)  # cost(over) > target >= cost(under)
    if cost(over) - target < target - cost(under):
        return over
    return under


def check_plan_trees(trees, dim: int, max_level: int) -> tuple[tuple[int, ...], ...]:
    """A plan's ``trees`` field validated: one tree per dimension (PlanError naming it)."""
    from recray.errors import InputError
    from recray.rec.trees import check_tree

    if not isinstance(trees, list | tuple) or len(trees) != dim:
        raise PlanError(f"plan field trees must hold one tree per dimension ({dim})")
    out = []
    for d, t in enumerate(trees):
        try:
            lv = check_tree(t, f"plan field trees[{d}]")
        except InputError as exc:
            raise PlanError(str(exc)) from None
        if max(lv) > max_level:
            raise PlanError(
                f"plan field trees[{d}] has a leaf of level {max(lv)} > max_bits_per_dim "
                f"= {max_level}"
            )
        out.append(lv)
    return tuple(out)
