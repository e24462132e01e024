"""Splitting the latent dimensions into blocks of about ``block_bits`` bits of information.

Deterministic from ``mi_bits``, ``block_bits``, ``collapse_threshold`` and ``seed``; the
seed only breaks ties between dimensions of exactly equal information (see
:func:`split_blocks`).
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from recray.plan.allocation import (
    PURPOSE_BLOCK_TIE_BREAK,
    check_mi,
    check_positive_float,
    check_seed,
    check_threshold,
    plan_uniforms,
)


def n_informative_blocks(total_info: float, block_bits: float) -> int:
    """``K = max(1, ceil(total_info / block_bits))``."""
    return max(1, math.ceil(total_info / block_bits))


def lpt_order(mi: np.ndarray, dims: np.ndarray, seed: int) -> list[int]:
    """``dims`` sorted by information, descending; equal values ordered by a seeded Philox
    permutation (dimension ``i`` draws ``plan_uniforms(seed, 2, d)[i]``, smaller first)."""
    u = plan_uniforms(seed, PURPOSE_BLOCK_TIE_BREAK, mi.shape[0])
    return sorted((int(i) for i in dims), key=lambda i: (-float(mi[i]), float(u[i]), i))


def lpt_assign(mi: np.ndarray, order: list[int], k: int) -> list[list[int]]:
    """Longest-processing-time greedy: each dim in ``order`` goes to the block with the
    smallest load so far (ties: lowest block index). Returns ``k`` lists (some may be empty)."""
    heap = [(0.0, b) for b in range(k)]
    blocks: list[list[int]] = [[] for _ in range(k)]
    for i in order:
        load, b = heapq.heappop(heap)
        blocks[b].append(i)
        heapq.heappush(heap, (load + float(mi[i]), b))
    return blocks


#: Most near-collapsed dimensions in one block of their own, by default: the point on the
#: measured frontier (docs/RESULTS.md, "The plan") before the candidates climb.
COLLAPSED_BLOCK_SIZE = 24


def split_blocks(
    mi_bits,
    block_bits: float,
    *,
    seed: int = 0,
    collapse_threshold: float = 0.01,
    collapsed_block_size: int = COLLAPSED_BLOCK_SIZE,
) -> list[list[int]]:
    """Blocks of dimension indices with about ``block_bits`` bits of information each.

    Args:
        mi_bits: per-dimension information (bits), array ``(d,)``, finite and >= 0.
        block_bits: target information per block (bits), finite and > 0.
        seed: integer in ``[0, 2^64)``; breaks ties between dims of equal information only.
        collapse_threshold: bits (> 0) below which a dimension is collapsed.
        collapsed_block_size: most collapsed dimensions in one block (>= 1); 0 spreads
            them over the informative blocks instead (collapsed dim ``j`` in ascending order
            joins informative block ``j mod K``), which suits fixed-budget methods (ORC)
            but not exact ones (each such dim adds ~0.72 bits of ``D_inf``, see below).

    The informative dims (``mi >= collapse_threshold``) are spread over
    ``K = max(1, ceil(sum(mi_informative) / block_bits))`` blocks by LPT greedy (largest
    information first, each to the currently lightest block, ties to the lowest block
    index); empty blocks are dropped, each block is listed in ascending order and the blocks
    are ordered by their smallest dimension. The collapsed dims follow, in ascending order,
    split into ``ceil(n / collapsed_block_size)`` blocks of near-equal size.

    Why collapsed dims are chunked: a collapsed dimension carries no information, but its
    ``D_inf`` is not zero: taken over the whole line it is about ``log2(e)/2 = 0.72`` bits on
    average when the average posterior matches the prior (``E[m^2] / (2 (1 - s^2)) = 1/2``
    nat), so an exact search over ``n`` of them would need about ``2^(0.72 n)`` candidates.
    Taken over what the sampler can reach (docs/FORMAT.md 4.1), as the exact methods do, it
    is a fraction of that: blocks of 8 near-collapsed dims of ``recray datasets synth`` stop
    after about 9 candidates. Each block of its own costs index overhead (0.3-0.4 bits/item
    per block, measured), so the default groups up to 24: on the frontier's sets that is
    0.6-0.9 bits/item fewer than blocks of 8 at 0-6 % more candidates, while blocks of 32
    doubled the candidates of the synthetic set.

    Returns: a list of lists of ints; every index in ``range(d)`` appears exactly once.
    Deterministic: same inputs, same blocks on every machine.
    """
    mi = check_mi(mi_bits)
    bb = check_positive_float(block_bits, "block_bits", "; it is the bits of info per block")
    seed = check_seed(seed)
    threshold = check_threshold(collapse_threshold)
    informative = np.flatnonzero(mi >= threshold)
    collapsed = np.flatnonzero(mi < threshold)
    blocks: list[list[int]] = []
    if informative.size:
        k = n_informative_blocks(math.fsum(mi[informative].tolist()), bb)
        assigned = lpt_assign(mi, lpt_order(mi, informative, seed), k)
        blocks = sorted((sorted(b) for b in assigned if b), key=lambda b: b[0])
    size = check_collapsed_block_size(collapsed_block_size)
    if collapsed.size and size == 0 and blocks:
        # spread: collapsed dim j joins informative block j mod K (the fixed-budget
        # baselines' layout, RECOMBINER style: no block of its own, no index of its own)
        k = len(blocks)
        blocks = [sorted(b + [int(i) for i in collapsed[j::k]]) for j, b in enumerate(blocks)]
    elif collapsed.size:
        n_chunks = math.ceil(collapsed.size / size) if size else 1
        blocks.extend([int(i) for i in c] for c in np.array_split(collapsed, n_chunks))
    return blocks


def check_collapsed_block_size(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        from recray.errors import PlanError

        raise PlanError(
            f"collapsed_block_size must be an integer >= 1, or 0 to spread collapsed dims "
            f"over the informative blocks; got {value!r}"
        )
    return int(value)
