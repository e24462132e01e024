"""Per-block adaptive partitions: extra partition bits for blocks the plan serves badly.

The codec plan gives every dimension its partition bits from the data set's average
information (ALGORITHMS.md section 5). An item far out in a dimension the plan gave few or
no bits (a posterior mean 4 prior-sigma away) has a huge ``D_inf[Q||P']`` there, and an
exact search would need about ``2^D_inf`` candidates. The partition is the encoder's choice
as long as the decoder learns it, so for such a block the encoder adds partition bits to
the dimensions that cost the most and sends them as side information (see
:mod:`recray.format.messages`, wire format step 0). The sample stays exact.

:func:`adapt_bits` chooses the extra bits deterministically from the block's own target,
so encoding is a pure function of the item. Two facts make the greedy choice sound:

* splitting every interval of a dimension in two at least halves nothing more than the
  per-dimension factor ``(1/J) sum_k sup_k q/p``: one extra bit lowers ``D_inf_d`` by
  **at most one bit**, so a block ``x`` bits over the threshold needs at least ``x`` extra
  bits, and adding ``ceil(x)`` to its costliest dimension never overshoots by a whole bit;
* an extra bit costs at most one bit of message (the bin field grows by one bit, the local
  index shrinks when the block's KL exceeds its partition bits), and only for adapted
  blocks.

Everything is in prior-standardized coordinates (``m``, ``s``) and bits (log2).
"""

from __future__ import annotations

import numpy as np

from recray.plan.laws import MAX_EXTRA_BITS
from recray.rec.partition import MAX_BITS_PER_DIM
from recray.rec.partition import dim_dinf_bits as partition_dinf_bits
from recray.rec.trees import TRIVIAL

#: Default threshold of ``recray compress``: blocks whose expected exact search exceeds
#: ``2^14`` candidates under the plan's partition get extra partition bits (the point of
#: ``recray bench plan``'s frontier the defaults sit on: docs/RESULTS.md).
DEFAULT_ADAPT_ABOVE_BITS = 14.0
MAX_BLOCK_BITS = 62
MAX_ROUNDS = 64


def dim_dinf_bits(be, m, s, b, tree: tuple = TRIVIAL) -> np.ndarray:
    """``D_inf`` of each (target, bits) pair in one dimension with sup weights, bits:
    ``log2 sum_k w_k sup_{interval k} q/p`` over ``tree`` refined by ``b`` levels (the
    complete partition of ``b`` bits by default). ``m``, ``s``, ``b`` are flat host arrays
    ``(k,)`` (targets bounded: ``s < 1`` or the prior itself). Returns float64 ``(k,)``,
    bit for bit :func:`recray.rec.partition.build_tables`'s ``log_rmax_d / ln 2``."""
    return partition_dinf_bits(be, m, s, tree, b)


def _dinf(be, m, s, levels, trees) -> np.ndarray:
    """``D_inf_d`` (bits) of flat pairs: targets ``m``, ``s``, refinement ``levels`` and
    tree ids into ``trees`` (None: every pair complete), host ``(k,)`` each."""
    if trees is None:
        return dim_dinf_bits(be, m, s, levels)
    table, ids = trees
    out = np.empty(m.shape[0])
    for t in np.unique(ids).tolist():  # a loop over distinct trees, not blocks
        sel = ids == t
        out[sel] = dim_dinf_bits(be, m[sel], s[sel], levels[sel], table[t])
    return out


def adapt_bits(be, m, s, bits, max_dinf_bits: float, trees=None) -> np.ndarray:
    """Extra partition bits per dimension that bring each block's ``D_inf[Q||P']`` to at
    most ``max_dinf_bits`` where possible.

    ``m``, ``s`` float64 ``(n, d)`` (standardized, every dimension bounded); ``bits`` int64
    ``(n, d)`` the plan's partition bits; ``trees`` a :class:`recray.rec.trees.Trees` (the
    pairs' trees, which the bits refine) or None (complete partitions). Returns int64
    ``(n, d)``: 0 for blocks already under the threshold; otherwise bits added greedily to
    the dimension with the largest ``D_inf_d``, ``ceil(excess)`` at a time, within
    ``MAX_EXTRA_BITS`` per dimension, level 24 per dimension and 62 bits of bin id per
    block. A block that cannot get under the
    threshold (a near-collapsed dimension: ``D_inf`` beyond what 24 bits can split) keeps
    what helped; the caller's feasibility check decides its route.
    """
    bits = np.asarray(bits, dtype=np.int64)
    n, d = bits.shape
    extra = np.zeros((n, d), dtype=np.int64)
    if n == 0:
        return extra
    deepest = np.zeros((n, d), dtype=np.int64)
    base = np.zeros((n, d), dtype=np.int64)  # ceil(log2 leaves)
    flat_trees = None
    if trees is not None:
        ids = np.broadcast_to(np.asarray(trees.ids, dtype=np.int64), (n, d))
        deepest = np.asarray([max(t) for t in trees.table], dtype=np.int64)[ids]
        base = np.asarray([(len(t) - 1).bit_length() for t in trees.table], np.int64)[ids]
        flat_trees = (trees.table, ids.reshape(-1))
    dd = _dinf(be, m.reshape(-1), s.reshape(-1), bits.reshape(-1), flat_trees).reshape(n, d)
    stuck = np.zeros(n, dtype=bool)
    for _ in range(MAX_ROUNDS):
        tot = dd.sum(axis=1)
        need = np.flatnonzero((tot > max_dinf_bits) & ~stuck)
        if need.size == 0:
            break
        cur = bits[need] + extra[need]
        room_dim = np.minimum(MAX_EXTRA_BITS - extra[need], MAX_BITS_PER_DIM - cur - deepest[need])
        room_blk = MAX_BLOCK_BITS - (cur + base[need]).sum(axis=1)
        score = np.where(room_dim > 0, dd[need], -np.inf)
        j = np.argmax(score, axis=1)
        r = np.arange(need.size)
        ok = np.isfinite(score[r, j]) & (room_blk > 0) & (dd[need, j] > 0.05)
        stuck[need[~ok]] = True
        need, j, r = need[ok], j[ok], r[ok]
        if need.size == 0:
            continue
        excess = tot[need] - max_dinf_bits
        add = np.minimum(
            np.maximum(1, np.ceil(excess).astype(np.int64)),
            np.minimum(room_dim[r, j], room_blk[r]),
        )
        before = dd[need, j].copy()
        extra[need, j] += add
        sub = None if trees is None else (trees.table, ids[need, j])
        dd[need, j] = _dinf(be, m[need, j], s[need, j], bits[need, j] + extra[need, j], sub)
        # a dimension whose D_inf no longer falls is saturated (e.g. near-collapsed)
        stuck[need[before - dd[need, j] < 1e-3]] = True
    return extra
