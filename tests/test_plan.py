"""Tests of recray.plan: bit allocation, block splitting, the serialized codec plan."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recray.errors import PlanError
from recray.plan import (
    COLLAPSED_BLOCK_SIZE,
    PLAN_FORMAT_VERSION,
    STRATEGIES,
    CodecPlan,
    allocate_bits,
    build_plan,
    split_blocks,
)
from recray.plan.allocation import derive_block_seed, plan_uniforms

SMALL_MI = [3.0, 0.0, 1.5, 2.5, 0.004, 4.0]


def realistic_mi(seed: int = 1, d: int = 64) -> np.ndarray:
    """Gamma-distributed information with about 20% collapsed dimensions."""
    rng = np.random.default_rng(seed)
    mi = rng.gamma(0.7, 2.0, d)
    mi[rng.random(d) < 0.2] = 0.0
    return mi


# --------------------------------------------------------------------------- allocate_bits


@pytest.mark.parametrize(
    ("mi", "total", "expected"),
    [
        ([3, 1, 0, 2], 6, [3, 1, 0, 2]),
        ([1, 1, 1], 4, [2, 1, 1]),
        ([1, 1, 1], 5, [2, 2, 1]),
        # shares 10/7 * (1, 2, 4) = 1.43, 2.86, 5.71 -> floors 1, 2, 5; +1 to .86
        ([1, 2, 4], 10, [1, 3, 6]),
        # shares 0.5, 0.5, 2: one spare bit, tie between dims 0 and 1 -> dim 0
        ([1, 1, 4], 3, [1, 0, 2]),
        ([2, 0.005, 2], 3, [2, 0, 1]),
    ],
)
def test_mi_largest_remainder_exact(mi, total, expected):
    out = allocate_bits(mi, total)
    assert out.dtype == np.int64
    assert out.tolist() == expected


def test_mi_zero_for_collapsed_and_sums():
    mi = realistic_mi()
    out = allocate_bits(mi, 40)
    assert out.sum() == 40
    assert np.all(out[mi < 0.01] == 0)
    assert np.all(out >= 0)


def test_mi_proportional_within_one_bit():
    mi = np.array([0.5, 1.7, 3.3, 0.9, 2.2, 0.05])
    total = 17
    out = allocate_bits(mi, total)
    share = total * mi / mi.sum()
    assert np.all(np.abs(out - share) < 1.0)


def test_cap_redistributes_excess():
    out = allocate_bits([100.0, 1.0, 1.0], 30, max_bits_per_dim=12)
    assert out.tolist() == [12, 9, 9]
    # second round: 1000 and 100 both capped, the rest share 12 by 1:2:3
    out = allocate_bits([1000.0, 100.0, 1.0, 2.0, 3.0], 32, max_bits_per_dim=10)
    assert out.tolist() == [10, 10, 2, 4, 6]


def test_cap_infeasible_raises():
    with pytest.raises(PlanError, match="max_bits_per_dim"):
        allocate_bits([1.0, 2.0, 0.0], 9, max_bits_per_dim=4)  # 2 eligible dims x 4 < 9


def test_uniform_includes_collapsed():
    assert allocate_bits([5.0, 0.0, 1.0, 0.0], 6, "uniform").tolist() == [2, 2, 1, 1]
    assert allocate_bits([5.0, 0.0, 1.0], 7, "uniform", max_bits_per_dim=3).tolist() == [3, 2, 2]


def test_random_deterministic_and_pinned():
    mi = np.ones(8)
    a = allocate_bits(mi, 20, "random", seed=12345)
    b = allocate_bits(mi, 20, "random", seed=12345)
    assert a.tolist() == b.tolist()
    assert a.tolist() == [1, 3, 1, 5, 2, 3, 2, 3]  # pins the Philox recipe
    outs = {tuple(allocate_bits(mi, 20, "random", seed=s).tolist()) for s in range(5)}
    assert len(outs) > 1
    # both 32-bit halves of the seed matter
    hi = allocate_bits(mi, 20, "random", seed=12345 + 2**32)
    assert hi.tolist() != a.tolist()


def test_random_respects_cap_and_includes_collapsed():
    out = allocate_bits([0.0, 0.0, 0.0, 9.0], 8, "random", seed=3, max_bits_per_dim=2)
    assert out.tolist() == [2, 2, 2, 2]
    out = allocate_bits([0.0] * 30 + [1.0], 40, "random", seed=1)
    assert out.sum() == 40 and out[:30].sum() > 0


def test_collapsed_only():
    assert allocate_bits([0.001, 0.002, 5.0], 5, "collapsed-only").tolist() == [3, 2, 0]
    with pytest.raises(PlanError, match="collapsed"):
        allocate_bits([1.0, 2.0], 3, "collapsed-only")


def test_zero_budget_gives_zeros():
    for strategy in STRATEGIES:
        assert allocate_bits([0.0, 0.0], 0, strategy).tolist() == [0, 0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mi_bits": [1.0, float("nan")], "total_bits": 1}, r"mi_bits\[1\]"),
        ({"mi_bits": [1.0, 2.0, float("inf")], "total_bits": 1}, r"mi_bits\[2\]"),
        ({"mi_bits": [-0.5, 1.0], "total_bits": 1}, r"mi_bits\[0\]"),
        ({"mi_bits": [[1.0]], "total_bits": 1}, "1-D"),
        ({"mi_bits": [], "total_bits": 0}, "empty"),
        ({"mi_bits": [1.0], "total_bits": -1}, "total_bits"),
        ({"mi_bits": [1.0] * 8, "total_bits": 63}, "total_bits"),
        ({"mi_bits": [1.0], "total_bits": 2.0}, "total_bits"),
        ({"mi_bits": [1.0], "total_bits": 1, "strategy": "best"}, "collapsed-only"),
        ({"mi_bits": [0.0, 0.001], "total_bits": 2}, "no informative"),
        ({"mi_bits": [1.0], "total_bits": 1, "seed": -1}, "seed"),
        ({"mi_bits": [1.0], "total_bits": 1, "seed": 2**64}, "seed"),
        ({"mi_bits": [1.0], "total_bits": 1, "collapse_threshold": 0.0}, "collapse_threshold"),
        ({"mi_bits": [1.0], "total_bits": 1, "max_bits_per_dim": 0}, "max_bits_per_dim"),
    ],
)
def test_allocate_rejects(kwargs, match):
    with pytest.raises(PlanError, match=match):
        allocate_bits(**kwargs)


_mi_value = st.one_of(
    st.sampled_from([0.0, 0.004, 0.01]),
    st.floats(0.0, 30.0, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None)
@given(
    mi=st.lists(_mi_value, min_size=1, max_size=12),
    total=st.integers(0, 62),
    cap=st.integers(1, 30),
    strategy=st.sampled_from(STRATEGIES),
    seed=st.integers(0, 2**64 - 1),
)
def test_allocate_properties(mi, total, cap, strategy, seed):
    arr = np.asarray(mi)
    collapsed = arr < 0.01
    n_elig = {
        "mi": int((~collapsed).sum()),
        "collapsed-only": int(collapsed.sum()),
    }.get(strategy, arr.size)
    if total > 0 and total > cap * n_elig:
        with pytest.raises(PlanError):
            allocate_bits(mi, total, strategy, seed=seed, max_bits_per_dim=cap)
        return
    out = allocate_bits(mi, total, strategy, seed=seed, max_bits_per_dim=cap)
    assert out.shape == arr.shape
    assert int(out.sum()) == total
    assert np.all(out >= 0)
    assert np.all(out <= cap)
    if strategy == "mi":
        assert np.all(out[collapsed] == 0)
    if strategy == "collapsed-only":
        assert np.all(out[~collapsed] == 0)


# --------------------------------------------------------------------------- split_blocks


def test_split_every_dim_once_collapsed_last():
    mi = realistic_mi()
    blocks = split_blocks(mi, 16.0)
    flat = [d for b in blocks for d in b]
    assert sorted(flat) == list(range(mi.size))
    collapsed = [int(d) for d in np.flatnonzero(mi < 0.01)]
    n_tail = math.ceil(len(collapsed) / COLLAPSED_BLOCK_SIZE)
    assert [d for b in blocks[-n_tail:] for d in b] == collapsed
    assert all(len(b) <= COLLAPSED_BLOCK_SIZE for b in blocks[-n_tail:])
    informative = blocks[:-n_tail]
    assert all(b == sorted(b) for b in blocks)
    assert [b[0] for b in informative] == sorted(b[0] for b in informative)
    assert all(np.all(mi[b] >= 0.01) for b in informative)


def test_split_block_loads_near_target():
    mi = realistic_mi()
    bb = 16.0
    blocks = [b for b in split_blocks(mi, bb) if np.all(mi[b] >= 0.01)]
    loads = np.array([mi[b].sum() for b in blocks])
    k = math.ceil(mi[mi >= 0.01].sum() / bb)
    assert len(blocks) == k
    assert np.all(np.abs(loads - bb) <= 0.25 * bb)
    assert loads.max() - loads.min() <= mi.max()  # LPT guarantee


def test_split_deterministic_and_seed_breaks_ties():
    mi = realistic_mi(3)
    assert split_blocks(mi, 10.0, seed=7) == split_blocks(mi, 10.0, seed=7)
    # distinct values: the seed does not matter
    assert split_blocks(mi, 10.0, seed=7) == split_blocks(mi, 10.0, seed=8)
    ties = np.ones(12)
    outs = {str(split_blocks(ties, 4.0, seed=s)) for s in range(4)}
    assert len(outs) > 1
    assert all(len(b) == 4 for b in split_blocks(ties, 4.0, seed=0))


def test_split_edge_cases():
    assert split_blocks([0.0, 0.0], 8.0) == [[0, 1]]
    assert split_blocks([1.0, 2.0], 100.0) == [[0, 1]]
    assert split_blocks([5.0, 5.0, 0.0], 1.0) == [[0], [1], [2]]  # K=10, empty blocks dropped
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(PlanError, match="block_bits"):
            split_blocks([1.0], bad)


def test_plan_uniforms_in_open_interval():
    u = plan_uniforms(2**64 - 1, 2, 1000)
    assert u.dtype == np.float64 and np.all((u > 0) & (u < 1))
    assert derive_block_seed(5, 0) != derive_block_seed(5, 1)
    assert 0 <= derive_block_seed(2**64 - 1, 3) < 2**64


# --------------------------------------------------------------------------- build_plan


def small_plan() -> CodecPlan:
    """A small plan with the collapsed-block size its pinned JSON and checksum were written
    with (8, the default before 24)."""
    return build_plan(SMALL_MI, 5.0, seed=1, collapsed_block_size=8)


def test_build_plan_small():
    plan = small_plan()
    assert plan.dim == 6
    assert plan.blocks == ((0,), (2, 3), (5,), (1, 4))
    assert plan.bits == (3, 0, 2, 2, 0, 4)
    assert plan.block_budget_bits == (3, 4, 4, 0)
    assert plan.n_blocks == 4 and plan.max_block_size == 2
    assert plan.block_dims(1).tolist() == [2, 3]
    assert plan.block_dims(1).dtype == np.int64
    assert plan.block_bits_array(1).tolist() == [2, 2]
    assert plan.block_bits_array(3).dtype == np.int64
    with pytest.raises(PlanError, match="block index"):
        plan.block_dims(4)


def test_build_plan_budget_rounds_half_up_and_caps():
    plan = build_plan([1.25, 1.25], 10.0)  # sum 2.5 -> 3 (round-half-even would give 2)
    assert plan.block_budget_bits == (3,)
    assert plan.bits == (2, 1)
    plan = build_plan([40.0], 8.0, max_bits_per_dim=24)  # one dim alone: capped at 24
    assert plan.block_budget_bits == (24,)
    plan = build_plan([30.0, 30.0, 30.0], 100.0, max_bits_per_dim=30)  # capped at 62
    assert plan.block_budget_bits == (62,)
    assert sum(plan.bits) == 62


@pytest.mark.parametrize("strategy", ["mi", "uniform", "random"])
def test_build_plan_consistent(strategy):
    mi = realistic_mi(2)
    plan = build_plan(mi, 12.0, strategy=strategy, seed=99)
    assert plan.strategy == strategy
    for i, dims in enumerate(plan.blocks):
        budget = plan.block_budget_bits[i]
        assert budget == int(plan.block_bits_array(i).sum())
        if np.all(mi[list(dims)] < 0.01):
            assert budget == 0 and len(dims) <= plan.collapsed_block_size
        else:
            assert budget == min(62, math.floor(mi[list(dims)].sum() + 0.5))
    assert build_plan(mi, 12.0, strategy=strategy, seed=99) == plan


def test_collapsed_dims_are_chunked():
    mi = np.concatenate([np.full(4, 5.0), np.zeros(20)])
    plan = build_plan(mi, 10.0, collapsed_block_size=8)
    tail = [b for b in plan.blocks if all(d >= 4 for d in b)]
    assert [len(b) for b in tail] == [7, 7, 6]
    assert [d for b in tail for d in b] == list(range(4, 24))
    with pytest.raises(PlanError, match="collapsed_block_size"):
        build_plan(mi, 10.0, collapsed_block_size=-1)
    # 0 spreads the collapsed dims over the informative blocks (the ORC baselines' layout)
    spread = build_plan(mi, 10.0, collapsed_block_size=0)
    assert len(spread.blocks) == 2 and sorted(d for b in spread.blocks for d in b) == list(
        range(24)
    )
    assert spread.block_budget_bits == (10, 10)
    assert all(spread.bits[d] == 0 for d in range(4, 24))
    assert CodecPlan.from_dict(spread.to_dict()) == spread


def test_build_plan_rejects_collapsed_only():
    with pytest.raises(PlanError, match="collapsed-only"):
        build_plan(SMALL_MI, 5.0, strategy="collapsed-only")


def test_json_round_trip_and_checksum():
    plan = build_plan(realistic_mi(), 16.0, strategy="random", seed=2**63 + 5)
    text = plan.to_json()
    back = CodecPlan.from_json(text)
    assert back == plan
    assert back.to_json() == text
    assert back.checksum() == plan.checksum()
    assert CodecPlan.from_dict(plan.to_dict()) == plan
    d = json.loads(text)
    # a plan without the version 2 fields is written as version 1 (old checksums hold)
    assert d["format"] == "recray-plan" and d["version"] == 1 < PLAN_FORMAT_VERSION
    assert " " not in text


def test_checksum_pinned():
    plan = small_plan()
    assert plan.to_json() == (
        '{"bits":[3,0,2,2,0,4],"block_bits":5.0,"block_budget_bits":[3,4,4,0],'
        '"blocks":[[0],[2,3],[5],[1,4]],"collapse_threshold":0.01,'
        '"collapsed_block_size":8,"dim":6,'
        '"format":"recray-plan","max_bits_per_dim":24,'
        '"mi_bits":[3.0,0.0,1.5,2.5,0.004,4.0],"seed":1,"strategy":"mi","version":1}'
    )
    assert plan.checksum() == "c744aa07211f7495c527e2e05906903bd1125511e4809084afc2196dc6d95407"


def test_floats_round_trip_exactly():
    mi = [0.1 + 0.2, 1 / 3, 2.0**-40, 7.000000000000001]
    plan = build_plan(mi, 0.7, collapse_threshold=1e-13)
    back = CodecPlan.from_json(plan.to_json())
    assert back.mi_bits == tuple(mi)
    assert back.block_bits == 0.7 and back.collapse_threshold == 1e-13


def _mutated(**changes) -> str:
    d = small_plan().to_dict()
    d.update(changes)
    return json.dumps(d)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format": "other-plan"}, "format"),
        ({"version": 4}, r"version is 4; this recray reads plan versions \(1, 2, 3\)"),
        ({"version": 2}, r"missing field\(s\) \['budget_offset_bits', 'index_laws'\]"),
        ({"version": "1"}, "version"),
        ({"blocks": [[0], [2, 3], [5], [1]]}, r"blocks: dimension\(s\) \[4\]"),
        ({"blocks": [[0], [2, 3], [3, 5], [1, 4]]}, r"blocks: dimension 3 is in blocks\[1\]"),
        ({"blocks": [[0], [3, 2], [5], [1, 4]]}, r"blocks\[1\].*ascending"),
        ({"blocks": [[0], [2, 3], [5], [1, 4], []]}, r"blocks\[4\] is empty"),
        ({"blocks": [[0], [2, 3], [6], [1, 4]]}, r"blocks\[2\]\[0\]"),
        ({"bits": [3, 0, 2, 2, 0]}, "field bits has 5 entries"),
        ({"bits": [3, 0, 2, -2, 0, 4]}, r"bits\[3\]"),
        ({"bits": [3, 0, 2, 2.0, 0, 4]}, r"bits\[3\]"),
        ({"bits": [3, 0, 2, 3, 0, 4]}, r"block_budget_bits\[1\] = 4 but"),
        ({"block_budget_bits": [3, 4, 4]}, "block_budget_bits has 3 entries"),
        ({"mi_bits": [3.0, 0.0, 1.5, -2.5, 0.004, 4.0]}, r"mi_bits\[3\]"),
        ({"strategy": "collapsed-only"}, "strategy"),
        ({"dim": 7}, "blocks"),
        ({"seed": -3}, "seed"),
        ({"block_bits": 0}, "block_bits"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_from_json_rejects(changes, match):
    with pytest.raises(PlanError, match=match):
        CodecPlan.from_json(_mutated(**changes))


def test_from_json_rejects_budget_63():
    d = {
        "format": "recray-plan",
        "version": 1,
        "dim": 3,
        "block_bits": 64.0,
        "strategy": "uniform",
        "seed": 0,
        "collapse_threshold": 0.01,
        "collapsed_block_size": 8,
        "max_bits_per_dim": 24,
        "mi_bits": [21.0, 21.0, 21.0],
        "blocks": [[0, 1, 2]],
        "bits": [21, 21, 21],
        "block_budget_bits": [63],
    }
    with pytest.raises(PlanError, match=r"block_budget_bits\[0\].*\[0, 62\]"):
        CodecPlan.from_json(json.dumps(d))
    d["bits"], d["block_budget_bits"] = [21, 21, 20], [62]
    assert CodecPlan.from_json(json.dumps(d)).block_budget_bits == (62,)


def test_from_json_rejects_missing_field_and_garbage():
    d = small_plan().to_dict()
    del d["bits"]
    with pytest.raises(PlanError, match="missing"):
        CodecPlan.from_dict(d)
    with pytest.raises(PlanError, match="parsed"):
        CodecPlan.from_json("{not json")
    with pytest.raises(PlanError, match="mapping"):
        CodecPlan.from_json("[1, 2]")


def test_plan_is_frozen():
    plan = small_plan()
    with pytest.raises(AttributeError):
        plan.dim = 3  # type: ignore[misc]


# ------------------------------------------------------------------ per-block budgets "kl"
def test_kl_sample_bits_follow_the_block_information():
    from recray.plan import KL_SAMPLES_MAX_BITS, kl_sample_bits

    plan = build_plan([3.0, 0.0, 1.5, 2.5, 0.004, 4.0, 9.2, 8.7], 6.0, seed=1)
    info = plan.block_info_bits
    assert len(info) == plan.n_blocks
    assert info == tuple(math.fsum(plan.mi_bits[d] for d in b) for b in plan.blocks)
    assert kl_sample_bits(plan) == tuple(math.ceil(i) for i in info)
    assert kl_sample_bits(plan, 1.5) == tuple(math.ceil(i + 1.5) for i in info)
    assert kl_sample_bits(plan, -60) == (0,) * plan.n_blocks  # never below N = 1
    assert max(kl_sample_bits(plan, 0, 5)) == 5  # the cap
    assert KL_SAMPLES_MAX_BITS == 20
    with pytest.raises(PlanError, match="max_bits"):
        kl_sample_bits(plan, 0, 25)
    with pytest.raises(PlanError, match="offset_bits"):
        kl_sample_bits(plan, float("inf"))
    with pytest.raises(PlanError, match="offset_bits"):
        kl_sample_bits(plan, "1")
