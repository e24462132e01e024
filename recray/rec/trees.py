"""Dyadic partitions of a dimension ("trees"), and the geometry of a call's partitions.

Space partitioning splits each dimension into intervals of known prior mass
(ALGORITHMS.md section 4). recray's first partition was *complete*: ``J = 2^b`` intervals of
mass ``2^-b`` each. Those are coarse in the prior's tails, where a posterior a few sigma
out then needs many more candidates than its KL (its ratio varies a lot inside one wide
interval). A **tree** lets the interval masses vary: it tiles the prior's probability line
``[0, 1)`` with dyadic intervals, leaf ``t`` at level ``l_t`` covering
``[k_t 2^-l_t, (k_t + 1) 2^-l_t)`` (prior mass ``2^-l_t``), and is written as the list of
its leaves' levels from left to right, e.g. ``(2, 1, 3, 3)``. Wide leaves in the middle and
narrow ones in the tails keep every leaf about equally wide in prior-standard units.

A (block, dimension) pair has a tree and ``bits`` extra levels: each leaf is split into
``2^bits`` equal-mass sub-leaves. The complete partition of ``b`` bits is the trivial tree
``(0,)`` with ``bits = b``, and every formula below reduces to the complete partition's,
bit for bit, on it.

* **Candidates** (docs/FORMAT.md section 4): sub-leaf ``o`` of the pair (its *ordinal*,
  ``0 <= o < radix = leaves * 2^bits``) is the interval ``k = k_t 2^bits + (o mod 2^bits)``
  at level ``l = l_t + bits`` with ``t = o >> bits``; the candidate is
  ``Phi^{-1}((k + u) / 2^l)``, the RNG recipe's formula with ``J = 2^l``.
* **Bin ids**: the ordinals of a block's dimensions in mixed radix, dimension 0 lowest:
  ``j = o_0 + radix_0 (o_1 + radix_1 (o_2 + ...))``. For complete partitions that is the
  bit-field packing ``sum_d k_d << o_d``. A block needs ``prod radix < 2^62``.
* **Code**: leaf ``t`` is a prefix code word of ``l_t`` bits (the tree's path), so a bin
  costs the sum of its leaves' levels plus ``bits`` per dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recray.errors import InputError

#: Deepest level of a leaf, extra bits included (the partition edge tables go this deep).
MAX_LEVEL = 24
#: Most leaves one tree may hold.
MAX_LEAVES = 4096
#: A block's bin ids must fit 62 bits: ``sum_d ceil(log2 radix_d) <= MAX_BIN_ID_BITS``.
MAX_BIN_ID_BITS = 62
TRIVIAL = (0,)


def check_tree(levels, where: str = "tree") -> tuple[int, ...]:
    """``levels`` as a tuple of ints, checked to tile ``[0, 1)`` with aligned dyadic leaves
    (each leaf starts at a multiple of its own mass), each level in ``[0, MAX_LEVEL]``;
    :class:`InputError` naming ``where`` otherwise."""
    try:
        lv = tuple(int(v) for v in levels)
    except (TypeError, ValueError):
        raise InputError(f"{where} must be a sequence of leaf levels (ints)") from None
    if not lv or len(lv) > MAX_LEAVES:
        raise InputError(f"{where} must hold 1 to {MAX_LEAVES} leaves; got {len(lv)}")
    top = 1 << MAX_LEVEL
    pos = 0
    for i, level in enumerate(lv):
        if not 0 <= level <= MAX_LEVEL:
            raise InputError(f"{where}[{i}] = {level}: leaf levels must be in [0, {MAX_LEVEL}]")
        size = top >> level
        if pos % size:
            raise InputError(
                f"{where}[{i}]: a leaf of level {level} cannot start at prior probability "
                f"{pos / top!r} (a leaf starts at a multiple of its mass 2^-{level})"
            )
        pos += size
    if pos != top:
        raise InputError(f"{where}: the leaves' masses sum to {pos / top!r}, not 1")
    return lv


def tree_entropy_bits(levels) -> float:
    """``sum_t l_t 2^-l_t``: the average code length of a leaf (bits) when leaves are hit in
    proportion to their prior mass (the data average, when the posteriors average to the
    prior)."""
    return float(sum(lv * 2.0**-lv for lv in levels))


def leaf_starts(levels) -> np.ndarray:
    """``k_t`` of every leaf: its start in units of its own mass, int64 ``(leaves,)``."""
    lv = np.asarray(levels, dtype=np.int64)
    ends = np.cumsum(np.left_shift(np.int64(1), MAX_LEVEL - lv))
    starts = ends - np.left_shift(np.int64(1), MAX_LEVEL - lv)
    return starts >> (MAX_LEVEL - lv)


@dataclass(frozen=True)
class Trees:
    """The trees of a call's (block, dimension) pairs: ``table`` a tuple of trees (each a
    tuple of leaf levels, :func:`check_tree`), ``ids`` int64 broadcast to ``(n, d)``:
    which tree of ``table`` each pair uses. ``None`` in the API means every pair uses the
    trivial tree (complete partitions of ``bits``)."""

    table: tuple
    ids: object

    def __post_init__(self) -> None:
        table = tuple(check_tree(t, f"trees.table[{i}]") for i, t in enumerate(self.table))
        if not table:
            raise InputError("trees.table is empty")
        object.__setattr__(self, "table", table)

    def take(self, rows) -> Trees:
        """The trees of rows ``rows`` (ids of shape ``(n, d)``)."""
        return Trees(self.table, np.asarray(self.ids)[np.asarray(rows)])

    @classmethod
    def trivial(cls, shape) -> Trees:
        return cls((TRIVIAL,), np.zeros(shape, dtype=np.int64))


@dataclass(frozen=True)
class Geometry:
    """Host arrays describing the partitions of ``n`` blocks of ``d`` dimensions.

    ext       (n, d) int64  extra levels ``bits`` of each pair
    toff      (n, d) int64  first entry of the pair's tree in ``leaf_k`` / ``leaf_level``
    count     (n, d) int64  leaves of the pair's tree
    radix     (n, d) int64  sub-leaves: ``count << ext`` (1 = not partitioned)
    depth     (n, d) int64  ``ceil(log2 radix)``: rounds of the bin draw's binary search
    min_level (n, d) int64  the shallowest sub-leaf's level
    lo_level, hi_level (n, d) int64  the levels of the first and last sub-leaves (their
                            outer edges are the sampler's reach, docs/FORMAT.md 4.1)
    tree_id   (n, d) int64  the pair's tree
    leaf_k, leaf_level (T,) int64  every tree's leaves, trees back to back
    table     the trees
    plain     bool          every pair uses the trivial tree (complete partitions)
    """

    ext: np.ndarray
    toff: np.ndarray
    count: np.ndarray
    radix: np.ndarray
    depth: np.ndarray
    min_level: np.ndarray
    lo_level: np.ndarray
    hi_level: np.ndarray
    tree_id: np.ndarray
    leaf_k: np.ndarray
    leaf_level: np.ndarray
    table: tuple
    plain: bool

    @property
    def mult(self) -> np.ndarray:
        """Place value of each pair in its block's mixed-radix bin id, int64 ``(n, d)``
        (``2^(b_0 + ... + b_{d-1})`` for complete partitions)."""
        out = np.ones_like(self.radix)
        if out.shape[1] > 1:
            out[:, 1:] = np.cumprod(self.radix[:, :-1], axis=1)
        return out

    @property
    def bin_id_bits(self) -> np.ndarray:
        """``sum_d depth``: bits that hold every bin id of each block, int64 ``(n,)``."""
        return self.depth.sum(axis=1)

    def take(self, rows) -> Geometry:
        """The geometry of blocks ``rows`` (host int ``(k,)``), in that order."""
        r = np.asarray(rows)
        per = ("ext", "toff", "count", "radix", "depth", "min_level", "lo_level", "hi_level")
        kw = {f: getattr(self, f)[r] for f in per}
        return Geometry(
            **kw,
            tree_id=self.tree_id[r],
            leaf_k=self.leaf_k,
            leaf_level=self.leaf_level,
            table=self.table,
            plain=self.plain,
        )

    def ordinal_levels(self, ordinals: np.ndarray) -> np.ndarray:
        """The level of sub-leaf ``ordinals`` ``(n, d)`` of each pair, int64 ``(n, d)``:
        the bits its dimension's bin field costs under the tree's prefix code."""
        t = self.toff + (ordinals >> self.ext)
        return self.leaf_level[t] + self.ext

    def intervals(self, ordinals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(k, inv_J)`` of sub-leaves ``ordinals`` ``(n, d)``: the interval index at its
        level and ``2^-level`` (the candidate is ``Phi^{-1}((k + u) inv_J)``; ``k = o``,
        ``inv_J = 2^-b`` for complete partitions)."""
        t = self.toff + (ordinals >> self.ext)
        k = (self.leaf_k[t] << self.ext) | (ordinals & ((np.int64(1) << self.ext) - 1))
        return k, np.ldexp(1.0, -self.leaf_level[t]) * np.ldexp(1.0, -self.ext)

    def ordinals(self, bins: np.ndarray) -> np.ndarray:
        """Per-dimension ordinals ``(n, d)`` of bin ids ``bins`` ``(n,)`` (mixed radix)."""
        n, d = self.radix.shape
        out = np.empty((n, d), dtype=np.int64)
        rem = np.asarray(bins, dtype=np.int64).copy()
        for dd in range(d):  # a loop over dimensions, not blocks
            out[:, dd] = rem % self.radix[:, dd]
            rem //= self.radix[:, dd]
        return out


def _ceil_log2(x: np.ndarray) -> np.ndarray:
    """``ceil(log2 x)`` of int64 ``x >= 1``, exact."""
    x = np.asarray(x, dtype=np.int64)
    return np.frexp((x - 1).astype(np.float64))[1].astype(np.int64) * (x > 1)


def geometry(trees: Trees | None, ext: np.ndarray) -> Geometry:
    """The :class:`Geometry` of pairs with trees ``trees`` (``None``: all trivial) and
    ``ext`` extra levels (int64 ``(n, d)``, checked by the caller to be ``>= 0``). Raises
    :class:`InputError` naming the block when a leaf would be deeper than ``MAX_LEVEL``
    or a block's bin ids need more than 62 bits."""
    ext = np.asarray(ext, dtype=np.int64)
    n, d = ext.shape
    if trees is None:
        trees = Trees.trivial((n, d))
    try:
        ids = np.broadcast_to(np.asarray(trees.ids), (n, d))
    except ValueError:
        raise InputError(
            f"trees.ids of shape {np.shape(trees.ids)} does not broadcast to (n_blocks, d) "
            f"= {(n, d)}"
        ) from None
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"trees.ids must be integers; got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    nt = len(trees.table)
    if ids.size and (ids.min() < 0 or ids.max() >= nt):
        i, dd = (int(v) for v in np.argwhere((ids < 0) | (ids >= nt))[0])
        raise InputError(f"trees.ids[{i}, {dd}] = {int(ids[i, dd])} is not a tree of the table")
    counts = np.asarray([len(t) for t in trees.table], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    leaf_level = np.concatenate([np.asarray(t, dtype=np.int64) for t in trees.table])
    leaf_k = np.concatenate([leaf_starts(t) for t in trees.table])
    deepest = np.asarray([max(t) for t in trees.table], dtype=np.int64)
    shallow = np.asarray([min(t) for t in trees.table], dtype=np.int64)
    first = np.asarray([t[0] for t in trees.table], dtype=np.int64)
    last = np.asarray([t[-1] for t in trees.table], dtype=np.int64)
    too_deep = deepest[ids] + ext > MAX_LEVEL
    if too_deep.any():
        i, dd = (int(v) for v in np.argwhere(too_deep)[0])
        raise InputError(
            f"block {i}, dimension {dd}: its partition would hold an interval of level "
            f"{int(deepest[ids[i, dd]] + ext[i, dd])} (tree leaves plus {int(ext[i, dd])} "
            f"extra bits); at most {MAX_LEVEL}"
        )
    count = counts[ids]
    radix = np.left_shift(count, ext)
    depth = _ceil_log2(radix)
    wide = depth.sum(axis=1) > MAX_BIN_ID_BITS
    if wide.any():
        i = int(np.argmax(wide))
        raise InputError(
            f"block {i}: its bin ids need {int(depth[i].sum())} bits (partition bits, or "
            f"ceil(log2 leaves) per dimension); at most {MAX_BIN_ID_BITS}: split the block"
        )
    return Geometry(
        ext=ext,
        toff=starts[ids],
        count=count,
        radix=radix,
        depth=depth,
        min_level=shallow[ids] + ext,
        lo_level=first[ids] + ext,
        hi_level=last[ids] + ext,
        tree_id=ids,
        leaf_k=leaf_k,
        leaf_level=leaf_level,
        table=trees.table,
        plain=bool((count == 1).all()),
    )
