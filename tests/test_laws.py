"""Learned index laws (recray.plan.laws): plan version 2, message codec version 3."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recray.errors import FormatError, PlanError
from recray.format.messages import (
    READABLE_MESSAGE_CODEC_VERSIONS,
    IndexLayout,
    decode_blocks,
    encode_messages,
    ideal_bits,
)
from recray.plan import CodecPlan, build_plan
from recray.plan.laws import FREQ_TOTAL, N_LAW_CLASSES, BlockLaw, IndexLaws, estimate_laws

MI = [3.0, 0.0, 1.5, 2.5, 0.004, 4.0]


def _plan(**kw) -> CodecPlan:
    return build_plan(MI, 5.0, seed=1, **kw)


def _skewed(plan: CodecPlan, n: int, seed: int):
    """Indices with skewed bins (per-dimension intervals near the middle) and locals."""
    rng = np.random.default_rng(seed)
    bins = np.zeros((n, plan.n_blocks), np.int64)
    for k, blk in enumerate(plan.blocks):
        shift = 0
        for d in blk:
            b = plan.bits[d]
            if b:
                kd = np.clip(rng.normal((1 << b) / 2, 1 << max(b - 2, 0), n), 0, (1 << b) - 1)
                bins[:, k] += kd.astype(np.int64) << shift
            shift += b
    local = rng.geometric(0.6, (n, plan.n_blocks)).astype(np.int64)
    return bins, local


def _laws(plan, bins, local):
    bb = [[plan.bits[d] for d in blk] for blk in plan.blocks]
    return estimate_laws(bins, local, bb, method="sp-pfr", source="test")


def test_plan_version_2_round_trip_checksum_and_version_1_unchanged():
    plain = _plan()
    assert plain.version == 1 and plain.to_dict()["version"] == 1
    bins, local = _skewed(plain, 500, 0)
    plan = _plan(budget_offset_bits=-1).with_laws(None)
    assert plan.version == 2 and plan.block_budget_bits != plain.block_budget_bits
    b2, l2 = _skewed(plan, 500, 0)
    learned = plan.with_laws(_laws(plan, b2, l2))
    back = CodecPlan.from_json(learned.to_json())
    assert back == learned and back.checksum() == learned.checksum()
    assert back.index_laws.checksum() == learned.index_laws.checksum()
    assert learned.checksum() != plan.checksum()  # the laws are covered by the checksum
    # a version 2 plan that says version 1, laws of another plan: refused
    d = learned.to_dict() | {"version": 1}
    with pytest.raises(PlanError, match="unknown field"):
        CodecPlan.from_dict(d)
    with pytest.raises(PlanError, match="bin laws are for"):
        plain.with_laws(learned.index_laws)
    d = learned.to_dict()
    d["index_laws"]["blocks"][0]["class_freqs"][0] += 1  # no longer sums to FREQ_TOTAL
    with pytest.raises(PlanError, match="class law"):
        CodecPlan.from_dict(json.loads(json.dumps(d)))


def test_learned_messages_round_trip_escape_adaptive_and_cost_less():
    plan = _plan()
    bins, local = _skewed(plan, 2000, 1)
    laws = _laws(plan, bins[:1000], local[:1000])  # fitted on "training" items
    fixed = IndexLayout(plan.block_budget_bits)
    learned = IndexLayout(plan.block_budget_bits, laws=laws.blocks)
    test_b, test_l = bins[1000:].copy(), local[1000:].copy()
    test_l[0, 1] = (1 << 40) + 7  # class 40: out of the law, escapes to the universal code
    test_l[1, 2] = (1 << 47) + 3
    msgs = encode_messages(test_b, test_l, learned)
    got_b, got_l, _ = decode_blocks(msgs, learned)
    np.testing.assert_array_equal(got_b, test_b)
    np.testing.assert_array_equal(got_l, test_l)
    written = 8 * np.array([len(m) for m in msgs])
    ideal = ideal_bits(test_b, test_l, learned)
    # (one message may beat its ideal: the decoder reads zeros past the end)
    assert ideal.mean() - 1 < written.mean() < ideal.mean() + 8
    fixed_bits = 8 * np.mean([len(m) for m in encode_messages(test_b, test_l, fixed)])
    assert written.mean() < fixed_bits - 1.0  # the laws pay on skewed symbols
    # adaptive blocks (extra partition bits) fall back to raw bins
    ad = IndexLayout(plan.block_budget_bits, laws=laws.blocks, adaptive_dims=(1, 2, 1, 2))
    extra = np.zeros((len(test_b), 4, 2), np.int64)
    extra[3, 1, 0] = 2
    test_b[3, 1] += 3 << 4
    m2 = encode_messages(test_b, test_l, ad, extra=extra)
    b3, l3, e3 = decode_blocks(m2, ad)
    assert (b3 == test_b).all() and (l3 == test_l).all() and (e3 == extra).all()


def test_learned_golden_bytes_and_wrong_laws_do_not_decode():
    """Pins the version 3 wire format; the negative control: the same bytes under the fixed
    codes, or under other laws, do not give the indices back."""
    law = BlockLaw(
        tuple([FREQ_TOTAL - 32 * 1000] + [1000] * N_LAW_CLASSES),
        ((FREQ_TOTAL // 2, FREQ_TOTAL // 4, FREQ_TOTAL // 8, FREQ_TOTAL // 8),),
    )
    layout = IndexLayout((2, 0), laws=(law, BlockLaw(law.class_freqs)))
    bins, local = np.array([[1, 0]]), np.array([[1, 5]])
    msg = encode_messages(bins, local, layout)[0]
    assert msg.hex() == "f0fc"
    b, n, _ = decode_blocks([msg], layout)
    assert b.tolist() == bins.tolist() and n.tolist() == local.tolist()
    other = IndexLayout((2, 0), laws=(BlockLaw(law.class_freqs[::-1]), BlockLaw(law.class_freqs)))
    for wrong in (IndexLayout((2, 0)), other):
        try:
            b, n, _ = decode_blocks([msg], wrong)
        except Exception:  # noqa: BLE001 - either an error or other indices
            continue
        assert not (b.tolist() == bins.tolist() and n.tolist() == local.tolist())


def test_readable_message_codec_versions_and_an_unknown_one_is_refused():
    """The versions a header may name (runs written by the code of each are decoded in
    tests/test_old_runs.py); a newer one is refused by name."""
    from recray.pipeline.driver import spec_from_header

    assert READABLE_MESSAGE_CODEC_VERSIONS == (1, 2, 3, 4, 5)
    with pytest.raises(FormatError, match="message_codec_version = 6"):
        spec_from_header({"rng_version": 2, "message_codec_version": 6}, None)


def test_estimate_laws_counts():
    bins = np.array([[0], [1], [1], [3]])
    local = np.array([[1], [1], [2], [1 << 35]])
    laws = estimate_laws(bins, local, [[2]], method="sp-orc", source="t")
    p = laws.blocks[0].class_probs
    assert p[0] > p[1] > p[2] and p[N_LAW_CLASSES] > p[5]  # class 35 went to the escape
    bp = np.asarray(laws.blocks[0].bin_freqs[0]) / FREQ_TOTAL
    assert bp[1] > bp[0] > bp[2] and abs(bp.sum() - 1) < 1e-12
    assert IndexLaws.from_dict(laws.to_dict()) == laws
