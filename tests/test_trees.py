"""Dyadic partitions of unequal prior mass ("trees", recray.rec.trees) in the algorithm core.

* a tree must tile the prior's probability line with aligned dyadic leaves, and calls that
  would need a leaf deeper than 24 levels or bin ids wider than 62 bits are refused,
  naming the block;
* the complete partition of ``b`` bits is the trivial tree refined by ``b`` levels: the
  same geometry (radix, place values), tables and results as before trees existed;
* ordinals, intervals and mixed-radix bin ids decode as documented, and the coded bin
  length is the sum of the drawn leaves' levels (their prefix code);
* on posteriors whose means spread into the prior's tails, tail-refined trees need far
  fewer candidates than a complete partition of about the same code length.

Exactness (KS), kernel/reference equality, the 50x-past-stop oracle and the CUDA simulator
cover trees in tests/test_exactness.py and tests/test_kernels.py.
"""

import numpy as np
import pytest

from recray import rec
from recray.errors import InputError
from recray.rec.trees import (
    Trees,
    check_tree,
    geometry,
    leaf_starts,
    tree_entropy_bits,
)
from tests.conftest import typical_posteriors


def test_a_tree_must_tile_the_line_with_aligned_leaves():
    assert check_tree([1, 2, 2]) == (1, 2, 2)
    assert leaf_starts((1, 2, 3, 3)).tolist() == [0, 2, 6, 7]
    assert tree_entropy_bits((1, 2, 2)) == 1.5
    with pytest.raises(InputError, match=r"sum to 0.75"):
        check_tree([1, 2])
    with pytest.raises(InputError, match=r"tree\[1\]: a leaf of level 1 cannot start"):
        check_tree([2, 1, 2])  # the level-1 leaf would start at 1/4
    with pytest.raises(InputError, match=r"in \[0, 24\]"):
        check_tree([1, 2, 25])
    with pytest.raises(InputError, match="1 to 4096 leaves"):
        check_tree([])


def test_complete_partitions_are_the_trivial_tree():
    bits = np.array([[3, 0, 2], [1, 4, 0]])
    g = geometry(None, bits)
    assert g.plain
    np.testing.assert_array_equal(g.radix, 1 << bits)
    np.testing.assert_array_equal(g.depth, bits)
    np.testing.assert_array_equal(g.mult, [[1, 8, 8], [1, 2, 32]])  # 2^(bit offset)
    same = geometry(Trees(((0,),), np.zeros((2, 3), np.int64)), bits)
    np.testing.assert_array_equal(same.radix, g.radix)


def test_ordinals_intervals_and_mixed_radix_bin_ids():
    table = ((0,), (1, 2, 3, 3))
    g = geometry(Trees(table, np.array([[1, 0, 1]])), np.array([[1, 2, 0]]))
    assert not g.plain
    np.testing.assert_array_equal(g.radix, [[8, 4, 4]])
    np.testing.assert_array_equal(g.depth, [[3, 2, 2]])
    np.testing.assert_array_equal(g.mult, [[1, 8, 32]])
    o = np.array([[5, 3, 2]])
    j = int((o * g.mult).sum())
    np.testing.assert_array_equal(g.ordinals(np.array([j])), o)
    k, inv = g.intervals(o)
    # dim 0: ordinal 5 = leaf 2 (level 3, start 6) split once: interval 13 at level 4;
    # dim 1: complete 2 bits; dim 2: leaf 2 (level 3, start 6)
    np.testing.assert_array_equal(k, [[13, 3, 6]])
    np.testing.assert_array_equal(inv, [[2.0**-4, 2.0**-2, 2.0**-3]])
    np.testing.assert_array_equal(g.ordinal_levels(o), [[4, 2, 3]])


def test_calls_that_exceed_the_limits_are_refused_naming_the_block():
    mu, s = typical_posteriors(3, 2, 1.0, 1)
    deep = Trees(((0,), (1, 2, 3, 4, 5, 5)), np.array([[0, 1]]))
    with pytest.raises(InputError, match=r"block 0, dimension 1: .*level 25"):
        rec.encode(mu, s, bits=[0, 20], trees=deep, method="sp-pfr")
    mu3, s3 = typical_posteriors(3, 3, 1.0, 1)
    wide = Trees(((0,), tuple([6] * 64)), np.ones((3, 3), np.int64))
    with pytest.raises(InputError, match=r"block 0\b.*bin ids need 66 bits"):
        rec.encode(mu3, s3, bits=16, trees=wide, method="sp-pfr")
    with pytest.raises(InputError, match=r"trees.ids\[0, 1\] = 2 is not a tree"):
        rec.encode(mu, s, bits=1, trees=Trees(((0,), (1, 1)), np.array([0, 2])), method="sp-pfr")


def test_coded_bin_length_is_the_sum_of_leaf_levels():
    mu, s = typical_posteriors(200, 3, [2.0, 1.0, 1.5], 3)
    table = ((0,), (3, 3, 2, 2, 3, 3), (2, 2, 1))
    tr = Trees(table, np.array([1, 2, 0]))
    res = rec.encode(mu, s, bits=[0, 1, 2], trees=tr, method="sp-pfr", seed=2)
    g = geometry(tr, np.broadcast_to(np.array([0, 1, 2]), (200, 3)))
    levels = g.ordinal_levels(g.ordinals(res.indices.bin)).sum(axis=1)
    np.testing.assert_array_equal(res.partition_bits, levels)
    assert set(np.unique(res.partition_bits)) <= set(range(6, 10))
    x = rec.decode(res.indices, bits=[0, 1, 2], trees=tr, method="sp-pfr", seed=2)
    np.testing.assert_array_equal(x, res.samples)
    with pytest.raises(InputError, match="does not fit the block.s 144 bins"):
        rec.decode(np.array([[144, 1]]), bits=[0, 1, 2], trees=tr, method="sp-pfr", seed=2, dim=3)


def test_tail_refined_trees_need_fewer_candidates_than_complete_partitions():
    """Means spread a quarter wider than the prior's (some items sit far out): trees that
    refine the tails bound the search far lower at about the same average code length."""
    mu, s = typical_posteriors(500, 4, [2.0, 1.5, 2.5, 1.0], 17)
    mu *= 1.25
    tails = (4, 4, 3, 2, 2, 3, 4, 4)  # 2.5 bits on average, 2 in the middle
    plain = rec.exact_bounds(mu, s, bits=[2, 2, 2, 1], tables=False)
    tr = Trees(((0,), tails), np.array([1, 1, 1, 0]))
    tree = rec.exact_bounds(mu, s, bits=[0, 0, 0, 1], trees=tr, tables=False)
    assert np.mean(2.0**tree.dinf) * 5 < np.mean(2.0**plain.dinf)


def test_width_tree_halves_exactly_the_intervals_wider_than_the_width():
    """The level-at-a-time width_tree against its definition (a depth-first walk that halves
    every interval wider than ``W`` down to ``max_level``), over widths from far below the
    finest interval to above the widest: same leaves, same left-to-right order."""
    from recray.plan.trees import _edges, width_tree

    def by_definition(width, max_level):
        out, stack = [], [(0, 0)]
        while stack:
            k, level = stack.pop()
            e = _edges(level)
            if e[k + 1] - e[k] > width and level < max_level:
                stack += [(2 * k + 1, level + 1), (2 * k, level + 1)]
            else:
                out.append(level)
        return tuple(out)

    widths = np.concatenate([2.0 ** np.random.default_rng(3).uniform(-14, 4, 400), [0.0, 50.0]])
    for max_level in (0, 1, 6, 12):
        for w in widths:
            assert width_tree(float(w), max_level) == by_definition(float(w), max_level)
    assert width_tree(0.0, 3) == (3,) * 8 and width_tree(50.0, 12) == (0,)
