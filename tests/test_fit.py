"""Plans fitted to the data: tree plans (plan version 3), laws fitted on a run's input
(recray.pipeline.fit), plan files (recray fit, compress --plan) and message codec 5.

* a tree plan round-trips through JSON with its checksum, its trees tile the line and meet
  the budget; bad trees and tree plans without trees are refused naming the field;
* laws version 2 (intervals of any count, side laws) round-trip, version 1 laws are still
  written as version 1;
* message codec 5 round-trips tree blocks with adapted dimensions and learned side laws,
  and its bytes are pinned;
* compress --laws fit writes laws fitted on a spread sample into the run's plan, decodes
  bit for bit, spends fewer bits than the fixed laws on the same input, and fits the same
  laws again on a resumed run; --laws fixed with complete partitions keeps the version 2
  layout; recray fit writes a plan that compress --plan uses, and a plan of another
  prior, or plan options beside --plan, are refused in one line.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from recray.cli.main import main
from recray.errors import InputError, PlanError
from recray.format.messages import IndexLayout, decode_blocks, encode_messages, ideal_bits
from recray.latents import synthesize
from recray.pipeline import driver
from recray.pipeline.codec import CodecSpec
from recray.pipeline.fit import sample_ranges
from recray.plan import CodecPlan, build_plan
from recray.plan.laws import FREQ_TOTAL, BlockLaw, IndexLaws, estimate_laws
from recray.rec.trees import tree_entropy_bits

MI = [3.0, 0.0, 1.5, 2.5, 0.004, 4.0, 1.0, 2.0]
FAST = dict(block_bits=8.0, batch_size=256, engine="local")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthesize(1200, 16, str(tmp_path_factory.mktemp("fit")), seed=5)


def _vectors(col):
    return np.stack(col.to_numpy(zero_copy_only=False)).astype(np.float64)


def test_tree_plan_round_trip_and_budget():
    plan = build_plan(MI, 6.0, seed=2, partition="tree")
    assert plan.version == 3 and plan.partition == "tree"
    back = CodecPlan.from_json(plan.to_json())
    assert back == plan and back.checksum() == plan.checksum()
    for k, blk in enumerate(plan.blocks):
        if plan.block_budget_bits[k] == 0:
            assert all(plan.trees[d] == (0,) for d in blk)
            continue
        h = sum(tree_entropy_bits(plan.trees[d]) for d in blk)
        assert abs(h - plan.block_budget_bits[k]) < 1.0, (k, h)
    assert plan.trees[1] == (0,) and plan.trees[4] == (0,)  # collapsed dimensions
    d = plan.to_dict()
    d["trees"][0] = [1, 2]
    with pytest.raises(PlanError, match=r"trees\[0\].*sum to 0.75"):
        CodecPlan.from_dict(d)
    d = plan.to_dict()
    d["trees"] = None
    with pytest.raises(PlanError, match="trees is missing"):
        CodecPlan.from_dict(d)
    with pytest.raises(PlanError, match="strategy 'mi'"):
        build_plan(MI, 6.0, partition="tree", strategy="uniform")


def test_laws_version_2_round_trip_and_version_1_kept():
    plan = build_plan(MI, 6.0, seed=2, partition="tree")
    rng = np.random.default_rng(0)
    radix = plan.block_radix
    n = 300
    bins = np.zeros((n, plan.n_blocks), np.int64)
    for k, rr in enumerate(radix):
        mult = 1
        for r in rr:
            bins[:, k] += rng.integers(0, r, n) * mult
            mult *= r
    local = rng.geometric(0.5, (n, plan.n_blocks)).astype(np.int64)
    extra = np.zeros((n, plan.n_blocks, plan.max_block_size), np.int64)
    extra[:7, 0, 1] = 2
    # the adapted rows' bins lie on the refined partition
    bins[:7, 0] = 0
    laws = estimate_laws(
        bins, local, block_radix=radix, extra=extra, side=True, method="sp-pfr", source="t"
    )
    assert laws.version == 2 and laws.side and len(laws.extra_freqs) == 21
    assert all(sum(b.adapt_freqs) == FREQ_TOTAL for b in laws.blocks)
    back = IndexLaws.from_dict(json.loads(json.dumps(laws.to_dict())))
    assert back == laws
    fitted = plan.with_laws(laws)
    assert CodecPlan.from_json(fitted.to_json()) == fitted
    v1 = IndexLaws("sp-pfr", "t", (BlockLaw(laws.blocks[0].class_freqs),))
    assert v1.version == 1 and v1.to_dict()["version"] == 1
    with pytest.raises(PlanError, match="index laws: block 0's bin laws are for"):
        build_plan(MI, 6.0, seed=2).with_laws(laws)


def _v5_layout():
    law = BlockLaw(
        tuple([FREQ_TOTAL // 64] * 32 + [FREQ_TOTAL - 32 * (FREQ_TOTAL // 64)]),
        ((1 << 18, 1 << 19, 1 << 18), (1 << 19, 1 << 19)),
        (FREQ_TOTAL - 4096, 4096),
    )
    plain = BlockLaw(law.class_freqs, (), (FREQ_TOTAL - 1024, 1024))
    extra = tuple([FREQ_TOTAL - 20 * 1000] + [1000] * 20)
    return IndexLayout(
        (2 + 1, 0),
        laws=(law, plain),
        bin_radix=((3, 1, 2), (1, 1)),
        adaptive_dims=(3, 2),
        extra_freqs=extra,
    )


#: message codec 5: tree-like radices (3 intervals), a dimension refined by 2 extra bits
#: in an adapted block, learned flag and extra-bit laws. Change only with a version bump.
GOLDEN_V5 = ["040a", "fff6535fbc", "4f9c1c5f1a"]


def test_message_codec_5_round_trips_and_golden_bytes():
    layout = _v5_layout()
    bins = np.array([[5, 0], [14, 0], [0, 0]], np.int64)
    local = np.array([[3, 1], [1, 9], [2**20 + 5, 1]], np.int64)
    extra = np.zeros((3, 2, 3), np.int64)
    extra[1, 0, 1] = 2  # dimension 1 (radix 1) refined by 2 bits: the bin's range is 3*4*2
    msgs = encode_messages(bins, local, layout, extra=extra)
    b, loc, e = decode_blocks(msgs, layout)
    np.testing.assert_array_equal(b, bins)
    np.testing.assert_array_equal(loc, local)
    np.testing.assert_array_equal(e, extra)
    ideal = ideal_bits(bins, local, layout, extra)
    assert np.all(8 * np.array([len(m) for m in msgs]) - ideal < 8 + 1e-9)
    with pytest.raises(InputError, match="does not fit block 0's 6 bins"):
        encode_messages(np.array([[6, 0]]), np.array([[1, 1]]), layout)
    assert [m.hex() for m in msgs] == GOLDEN_V5


def test_sample_ranges_spread_over_the_input():
    assert sample_ranges(100, 500) == [(0, 100)]
    r = sample_ranges(10_000, 160)
    assert len(r) == 16 and sum(b - a for a, b in r) == 160
    assert r[0][0] == 0 and r[-1][0] == 9375 and all(b - a == 10 for a, b in r)


def _payload(run):
    t = pq.read_table(os.path.join(run, "part-00000.parquet"))
    return int(t.column("nbits").to_numpy().sum())


def test_compress_fits_laws_on_its_input(synth, tmp_path):
    lat, pri = synth
    fit = str(tmp_path / "fit")
    info = driver.compress(lat, pri, fit, laws="fit", fit_items=400, debug_samples=True, **FAST)
    assert info["laws"] == "fitted" and info["fit_items"] == 400 and info["fit_seconds"] > 0
    hdr = json.load(open(os.path.join(fit, "plan.json")))
    assert (
        hdr["message_codec_version"] == 5
        and "400 items of the input" in hdr["plan"]["index_laws"]["source"]
    )
    dec = str(tmp_path / "z.parquet")
    driver.decompress(fit, dec)
    enc = pq.read_table(os.path.join(fit, "part-00000.parquet"))
    assert np.array_equal(_vectors(pq.read_table(dec).column("z")), _vectors(enc.column("z_debug")))
    fixed = str(tmp_path / "fixed")
    assert driver.compress(lat, pri, fixed, laws="fixed", **FAST)["laws"] == "fixed"
    assert _payload(fit) < 0.98 * _payload(fixed)
    # the same input and settings fit the same laws (what --resume relies on)
    again = str(tmp_path / "again")
    driver.compress(lat, pri, again, laws="fit", fit_items=400, **FAST)
    h2 = json.load(open(os.path.join(again, "plan.json")))
    assert h2["plan_checksum"] == hdr["plan_checksum"]


def test_complete_partitions_with_fixed_laws_keep_the_version_2_layout(synth, tmp_path):
    lat, pri = synth
    run = str(tmp_path / "plain")
    driver.compress(lat, pri, run, partition="complete", laws="fixed", **FAST)
    from recray.format.run import Run
    from recray.latents.io import read_prior

    spec = driver.spec_from_header(Run.open(run).header, read_prior(pri))
    assert not spec.ordinal and spec.layout.adaptive and not spec.layout.learned


def test_recray_fit_and_compress_with_its_plan(synth, tmp_path, capsys):
    lat, pri = synth
    plan_path = str(tmp_path / "plan.json")
    assert main(["fit", lat, "--prior", pri, "--out", plan_path, "--fit-items", "300",
                 "--block-bits", "8"]) == 0  # fmt: skip
    assert "laws fitted on 300 items" in capsys.readouterr().out
    plan = CodecPlan.from_json(open(plan_path).read())
    assert plan.index_laws is not None and plan.partition == "tree"
    out = str(tmp_path / "run")
    assert main(["compress", lat, "--prior", pri, "--out", out, "--plan", plan_path,
                 "--engine", "local"]) == 0  # fmt: skip
    assert "laws from the plan" in capsys.readouterr().out
    hdr = json.load(open(os.path.join(out, "plan.json")))
    assert CodecPlan.from_dict(hdr["plan"]) == plan
    # one line each: plan options beside --plan, a plan of another prior
    rc = main(["compress", lat, "--prior", pri, "--out", str(tmp_path / "x"), "--plan",
               plan_path, "--block-bits", "12"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--plan fixes the codec plan; drop --block-bits" in err
    other = json.load(open(pri))
    other["mutual_information_bits"][3] += 0.5
    other_pri = str(tmp_path / "other.json")
    json.dump(other, open(other_pri, "w"))
    rc = main(["compress", lat, "--prior", other_pri, "--out", str(tmp_path / "y"), "--plan",
               plan_path, "--engine", "local"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "mi_bits[3]" in err and len(err.strip().splitlines()) == 1


def test_laws_of_another_method_are_refused():
    plan = build_plan(MI, 6.0, seed=2)
    bins = np.zeros((10, plan.n_blocks), np.int64)
    laws = estimate_laws(
        bins,
        np.ones_like(bins),
        [[plan.bits[d] for d in b] for b in plan.blocks],
        method="sp-orc",
        source="t",
    )
    with pytest.raises(InputError, match="fitted for method 'sp-orc'.*codes with 'sp-pfr'"):
        CodecSpec(plan=plan.with_laws(laws), method="sp-pfr", seed=0,
                  prior_mu=np.zeros(8), prior_sigma=np.ones(8))  # fmt: skip
