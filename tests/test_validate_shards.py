"""The validation pass shard by shard (issue 12): per-shard sorted id files checked one hash
range at a time find exactly the rejects of the one-pass, in-memory check, in the same
order, whatever the shard size and the number of hash ranges, for int and string ids."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recray import rec
from recray.format.storage import resolve
from recray.latents import synthesize
from recray.latents.io import LatentSource, read_prior
from recray.pipeline.codec import CodecSpec
from recray.pipeline.shards import shard_ranges
from recray.pipeline.validate import id_file, scan, scan_shards
from recray.plan import build_plan


def _spec(prior_path):
    prior = read_prior(prior_path)
    plan = build_plan(prior.mi_bits, 8.0, strategy="mi", seed=0)
    return CodecSpec(
        plan=plan,
        method="sp-pfr",
        seed=0,
        prior_mu=prior.mu,
        prior_sigma=prior.sigma,
        n_samples=1 << 16,
        max_steps=rec.DEFAULT_MAX_STEPS,
        on_unbounded="error",
    )


@pytest.fixture(scope="module", params=["int", "str"])
def planted(request, tmp_path_factory):
    """400 items: an id repeated three times across shards, pairs of repeats, a repeat of a
    row that is bad for another reason, a bad sigma, a null id."""
    d = tmp_path_factory.mktemp(f"vshards-{request.param}")
    lat, pri = synthesize(400, 12, str(d), seed=3, string_ids=request.param == "str")
    t = pq.read_table(lat)
    ids = t.column("id").to_pylist()
    sigma = np.stack(t.column("sigma").to_numpy(zero_copy_only=False)).astype(np.float64)
    for row, src in ((150, 10), (390, 10), (77, 76), (301, 5), (222, 60)):
        ids[row] = ids[src]
    sigma[60, 2] = -1.0  # row 60 is bad: row 222 repeats its id
    sigma[301, 4] = 0.0  # bad, and repeats row 5
    ids[333] = None
    bad = str(d / "bad.parquet")
    pq.write_table(
        t.set_column(0, "id", pa.array(ids, t.schema.field("id").type)).set_column(
            t.schema.get_field_index("sigma"), "sigma", pa.array(list(sigma))
        ),
        bad,
        row_group_size=128,
    )
    return bad, pri


def _rows(rej):
    return list(zip(rej.rows, rej.ids, rej.fields, rej.reasons, rej.errors, strict=True))


@pytest.mark.parametrize("shard_rows,range_items", [(400, 1 << 22), (100, 1 << 22), (37, 50)])
def test_sharded_check_finds_what_one_pass_finds(planted, tmp_path, shard_rows, range_items):
    lat, pri = planted
    spec = _spec(pri)
    index = LatentSource(lat, spec.plan.dim).row_index()
    one = scan(index, spec)
    scratch = resolve(str(tmp_path / "ids"))
    sharded = scan_shards(
        index, shard_ranges(index.n_rows, shard_rows), spec, scratch, range_items=range_items
    )
    assert _rows(sharded.rejects) == _rows(one.rejects)
    reasons = [r for r in one.rejects.reasons if "duplicate" in r]
    # rows 150, 390 (first at 10) and 77 (at 76); a bad row's id is not kept, so row 222
    # (which repeats bad row 60) is not a repeat, and row 301 is rejected for its sigma only
    assert len(reasons) == 3
    assert any("(first at row 10)" in r for r in reasons)
    n_shards = -(-index.n_rows // shard_rows)
    assert sorted(scratch.listdir()) == [id_file(k) for k in range(n_shards)]


def test_validation_skips_routing_when_every_block_has_a_route(planted, monkeypatch):
    """With ``on_unbounded="orc"`` every block has a route (the fixed-budget fallback), so
    the pass does not route (the search routes anyway): the same rejects as the routed pass
    of ``on_unbounded="error"``, which finds no route problem on these posteriors."""
    import dataclasses

    lat, pri = planted
    spec = _spec(pri)
    index = LatentSource(lat, spec.plan.dim).row_index()
    routed = scan(index, spec)

    def boom(*a, **k):
        raise AssertionError("routed")

    monkeypatch.setattr("recray.pipeline.validate.route_group", boom)
    skipped = scan(index, dataclasses.replace(spec, on_unbounded="orc"))
    assert _rows(skipped.rejects) == _rows(routed.rejects)
    with pytest.raises(AssertionError, match="routed"):  # the control: "error" routes
        scan(index, spec)
