"""The INR codec end to end with a tiny model (trained here in seconds), its refusals
(corrupted, truncated, other weights) named by tile, bytes that do not depend on the
batch, training that checkpoints and resumes, the device choice, the tile data's
checksums and the CIFAR-10 pickle loader."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import rehash_part

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

from recray.codecs import inr  # noqa: E402
from recray.codecs.base import encode_progressive  # noqa: E402
from recray.data import tiles as td  # noqa: E402
from recray.errors import FormatError, InputError, MessageError  # noqa: E402
from recray.latents.io import read_prior  # noqa: E402
from recray.models.inr import INRConfig, load_inr, train  # noqa: E402
from recray.pipeline.options import RayOptions  # noqa: E402

N = 3
TINY = INRConfig(hidden=8, grid_channels=8, reparam="full")


def _settings(method):
    return inr.Settings(
        method=method,
        n_samples=256,
        max_steps=1 << 14,
        fit_steps=4,
        refine_steps=2,
        stages=2,
        lr_end=1e-3,
        fit_samples=2,
        block_bits=16 if method != "orc-16" else 8,
        # the fixed codes here (the learned laws' own test below fits them in a temp cache)
        budget_offset_bits=0,
        laws="fixed",
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    test = td.load_tiles("test")
    model, _ = train(
        test.images[N : N + 6], 1.0, rounds=2, steps_per_round=2, cfg=TINY, log=lambda s: None
    )
    w = tmp_path_factory.mktemp("w") / "inr_tiny.npz"
    model.save(w, {"model": "tiny test model"})
    return str(w), test.images[:N]


@pytest.fixture(scope="module", params=["sp-orc", "orc-16", "sp-pfr"])
def run(request, tiny, tmp_path_factory):
    w, tiles = tiny
    out = str(tmp_path_factory.mktemp("run") / "r")
    info = inr.compress(
        tiles,
        out,
        source={"test": True},
        weights=w,
        settings=_settings(request.param),
        engine="local",
        shard_rows=2,
    )
    return out, info, request.param


def test_round_trip_gives_the_encoders_reconstruction(run, tiny, tmp_path):
    out, info, method = run
    w, tiles = tiny
    dec = inr.decompress(out, str(tmp_path / "dec"), weights=w)
    names = sorted(os.listdir(tmp_path / "dec"))
    assert names == [f"tile-{i:05d}.png" for i in range(N)]
    from PIL import Image

    pngs = np.stack([np.asarray(Image.open(tmp_path / "dec" / n)) for n in names])
    assert np.array_equal(pngs, dec["images"])
    # the encoder, run again on the same tiles: same messages, and its own reconstruction
    model = load_inr(w)
    spec, _ = inr.make_spec(read_prior(w.replace(".npz", "_prior.json")), _settings(method))
    codec = inr.INRCodec(model, _settings(method), plan=spec.plan)
    msgs = []
    recon = []
    for a in range(0, N, 2):
        enc = encode_progressive(
            codec, tiles[a : a + 2], np.arange(a, min(a + 2, N)), spec, stages=2
        )
        msgs += enc.messages
        recon.append(codec.synthesis(enc.z))
    stored = pa.concat_tables(
        [
            pq.read_table(os.path.join(out, f))
            for f in sorted(os.listdir(out))
            if f.endswith(".parquet")
        ]
    )
    assert stored.column("message").to_pylist() == msgs
    assert np.array_equal(np.concatenate(recon), pngs)
    # bitrate from the bytes written
    assert info["bpp"] == pytest.approx(8 * sum(map(len, msgs)) / (N * 1024))
    assert info["tiles"] == N and info["method"] == method


def test_corrupted_message_names_the_tile(run, tiny, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(run[0], d)
    part = "part-00000.parquet"
    t = pq.read_table(os.path.join(d, part))
    msgs = t.column("message").to_pylist()
    msgs[1] = msgs[1][:2] + bytes([msgs[1][2] ^ 0x40]) + msgs[1][3:]
    t = t.set_column(t.schema.get_field_index("message"), "message", pa.array(msgs, pa.binary()))
    pq.write_table(t, os.path.join(d, part))
    rehash_part(d, part)
    with pytest.raises(MessageError, match="tile 1: its message fails its CRC"):
        inr.decompress(d, str(tmp_path / "dec"), weights=tiny[0])
    assert not os.path.exists(tmp_path / "dec")


def test_truncated_runs_are_refused(run, tiny, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(run[0], d)
    part = os.path.join(d, "part-00001.parquet")
    data = open(part, "rb").read()
    open(part, "wb").write(data[: len(data) // 2])
    with pytest.raises(FormatError, match="part-00001.parquet does not match the manifest"):
        inr.decompress(d, str(tmp_path / "dec"), weights=tiny[0])
    # a truncated message (its CRC stored again) is caught by its tile id
    shutil.rmtree(d)
    shutil.copytree(run[0], d)
    t = pq.read_table(os.path.join(d, "part-00001.parquet"))
    msgs = t.column("message").to_pylist()
    msgs[0] = msgs[0][: len(msgs[0]) // 2]
    t = t.set_column(t.schema.get_field_index("message"), "message", pa.array(msgs, pa.binary()))
    pq.write_table(t, os.path.join(d, "part-00001.parquet"))
    rehash_part(d, "part-00001.parquet")
    with pytest.raises(MessageError, match="tile 2: its message fails its CRC"):
        inr.decompress(d, str(tmp_path / "dec"), weights=tiny[0])


def test_other_weights_are_refused(run, tiny, tmp_path):
    w = tmp_path / "inr_tiny.npz"
    with np.load(tiny[0]) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["A.0"].flat[0] += 1e-3
    np.savez(w, **arrays)
    card = json.load(open(tiny[0].replace(".npz", ".json")))
    card["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (tmp_path / "inr_tiny.json").write_text(json.dumps(card))
    with pytest.raises(FormatError, match="coded with model weights of SHA-256"):
        inr.decompress(run[0], str(tmp_path / "dec"), weights=str(w))


def test_cli_compress_and_decompress(tiny, tmp_path, monkeypatch):
    from recray.cli.main import main

    # the default method's preset codes with learned laws: fitted here into a temp cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(inr, "LAW_TRAIN_TILES", 4)
    w, tiles = tiny
    npy = tmp_path / "t.npy"
    np.save(npy, tiles[:2])
    out, dec = str(tmp_path / "run"), str(tmp_path / "dec")
    args = [
        "codec",
        "inr",
        "compress",
        str(npy),
        "--weights",
        w,
        "--engine",
        "local",
        "--out",
        out,
        "--n-samples",
        "256",
        "--fit-steps",
        "3",
        "--refine-steps",
        "1",
        "--block-bits",
        "16",
    ]
    assert main(args) == 0
    assert main(["codec", "inr", "decompress", out, "--out", dec, "--weights", w]) == 0
    assert sorted(os.listdir(dec)) == ["tile-00000.png", "tile-00001.png"]
    # the decoder's latent and pixels are the encoder's: the same settings coded again in
    # this process give the latent the run decodes to, and the PNGs are its rendering
    from PIL import Image

    from recray.format.run import Run

    run = Run.open(out)
    s = inr.Settings(**run.header["codec"]["settings"])
    assert (s.n_samples, s.fit_steps, s.refine_steps, s.block_bits) == (256, 3, 1, 16)
    model = load_inr(w)
    prior = read_prior(w.replace(".npz", "_prior.json"))
    laws, _ = inr.learned_laws(w, model, prior, s, fit=False)
    spec, _ = inr.make_spec(prior, s, laws)
    codec = inr.INRCodec(model, s, plan=spec.plan)
    enc = encode_progressive(codec, tiles[:2], np.arange(2), spec, stages=s.stages)
    got = inr.decompress(out, str(tmp_path / "dec2"), weights=w, latents=True)
    assert np.array_equal(got["latents"], enc.z)
    pngs = np.stack([np.asarray(Image.open(os.path.join(dec, n))) for n in sorted(os.listdir(dec))])
    assert np.array_equal(pngs, codec.synthesis(enc.z))
    assert np.array_equal(pngs, got["images"])
    assert (
        main(
            ["codec", "inr", "compress", str(npy), "--rate", "0.123", "--out", str(tmp_path / "x")]
        )
        == 2
    )


class _StopAfter:
    """A progress bar that interrupts the run after its first committed shard."""

    def __init__(self, **_):
        self.calls = 0

    def update(self, n):
        self.calls += 1
        if self.calls == 1:
            raise KeyboardInterrupt

    def close(self):
        pass


@pytest.mark.parametrize("run", ["sp-orc"], indirect=True)
def test_a_stopped_run_resumes_to_the_same_bytes(run, tiny, tmp_path):
    out, _, method = run
    w, tiles = tiny
    kw = dict(source={"test": True}, weights=w, settings=_settings(method), engine="local")
    dst = str(tmp_path / "r")
    with pytest.raises(KeyboardInterrupt):
        inr.compress(tiles, dst, shard_rows=2, progress=_StopAfter, **kw)
    assert not os.path.exists(dst)
    with pytest.raises(InputError, match="--resume"):
        inr.compress(tiles, dst, shard_rows=2, **kw)
    with pytest.raises(InputError, match="cannot resume"):  # other tiles: refused
        inr.compress(tiles[::-1].copy(), dst, shard_rows=2, resume=True, **kw)
    info = inr.compress(tiles, dst, shard_rows=2, resume=True, **kw)
    assert info["resumed_shards"] == 1 and info["tiles"] == N

    def messages(d):
        parts = sorted(f for f in os.listdir(d) if f.startswith("part-"))
        return [m for f in parts for m in pq.read_table(os.path.join(d, f)).column("message")]

    assert messages(dst) == messages(out)


def test_bad_png_tiles_fail_or_are_skipped_and_listed(tiny, tmp_path):
    from PIL import Image

    from recray.cli.main import main

    w, tiles = tiny
    src = tmp_path / "pngs"
    src.mkdir()
    Image.fromarray(tiles[0]).save(src / "a.png")
    Image.fromarray(tiles[1][:16, :16]).save(src / "b.png")  # 16x16
    (src / "c.png").write_bytes(b"not a png")
    Image.fromarray(tiles[2]).save(src / "d.png")
    with pytest.raises(InputError, match="'b.png'.*16x16"):
        inr.read_tiles(str(src))
    got = inr.read_tiles(str(src), on_bad_item="skip")
    assert got.ids.tolist() == [0, 3] and [r[1] for r in got.rejects] == ["b.png", "c.png"]
    np.testing.assert_array_equal(got.images, tiles[[0, 2]])
    out = str(tmp_path / "run")
    args = ["codec", "inr", "compress", str(src), "--weights", w, "--engine", "local"]
    args += ["--n-samples", "256", "--fit-steps", "3", "--refine-steps", "1", "--block-bits", "16"]
    args += ["--laws", "fixed", "--budget-offset-bits", "0", "--out", out]
    assert main(args) == 2 and not os.path.exists(out)
    assert main(args + ["--on-bad-item", "skip"]) == 3
    rej = pq.read_table(os.path.join(out, "rejects.parquet")).to_pydict()
    assert rej["id"] == [1, 2] and rej["field"] == ["file 'b.png'", "file 'c.png'"]
    assert "16x16" in rej["reason"][0] and "cannot be read" in rej["reason"][1]
    dec = str(tmp_path / "dec")
    assert main(["codec", "inr", "decompress", out, "--out", dec, "--weights", w]) == 0
    assert sorted(os.listdir(dec)) == ["tile-00000.png", "tile-00003.png"]


def test_per_block_beta_annealing_steers_each_blocks_kl(tiny):
    """RECOMBINER's test-time protocol: each block's beta is raised while the block holds
    more KL than its budget and lowered while it holds less, so blocks end near budget
    (here: a budget far below and one far above what the rate point's beta gives)."""
    from recray.models.inr import BlockBeta, fit

    w, tiles = tiny
    model = load_inr(w)
    d = model.cfg.dim
    block_of = np.arange(d) % 4
    kw = dict(steps=60, lr=0.02, seed=0)
    mu, sg = fit(model, tiles[:2], **kw)
    free = _block_kl_bits(model, mu, sg, block_of)
    for scale in (0.25, 3.0):
        ab = BlockBeta(block_of, scale * free.mean(0), every=2, step=1.5)
        mu, sg = fit(model, tiles[:2], anneal=ab, **kw)
        kl = _block_kl_bits(model, mu, sg, block_of)
        assert ab.beta.shape == (2, 4)
        if scale < 1:
            assert (kl < 0.6 * free).all() and (ab.beta > model.beta).all()
        else:
            assert (kl > 1.08 * free).all() and (ab.beta < model.beta).all()
    # the codec takes its blocks and budgets from the plan
    spec, _ = inr.make_spec(read_prior(w.replace(".npz", "_prior.json")), _settings("orc-16"))
    codec = inr.INRCodec(model, replace(_settings("orc-16"), anneal=1.0), plan=spec.plan)
    bb = codec._block_beta()
    mi = np.asarray(spec.plan.mi_bits)
    assert np.allclose(bb.target_bits, [mi[list(b)].sum() for b in spec.plan.blocks])
    with pytest.raises(InputError, match="needs the codec plan"):
        inr.INRCodec(model, replace(_settings("orc-16"), anneal=1.0)).analysis(tiles[:1])
    assert inr.Settings().anneal == 1.0  # the default fit anneals
    for bad in (-1.0, float("nan"), float("inf")):  # refused before any fit, naming the field
        with pytest.raises(InputError, match="anneal must be"):
            replace(_settings("orc-16"), anneal=bad).resolved()


def test_learned_index_laws_are_fitted_on_training_tiles_shipped_and_decode(
    tiny, tmp_path, monkeypatch
):
    """SP-ORC with learned index laws: estimated on training tiles (pooled over blocks),
    cached, read from the shipped ``<weights>_laws.json`` first; the run decodes to the
    encoder's own reconstruction; orc-16 (the fixed 16-bit index baseline) refuses them."""
    import pyarrow.parquet as pq

    from recray.format.run import Run
    from recray.models.inr import psnr_db

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(inr, "LAW_TRAIN_TILES", 4)
    w, tiles = tiny
    s = replace(_settings("sp-orc"), budget_offset_bits=-8, laws="learned")
    kw = dict(source={"test": True}, weights=w, settings=s, engine="local")
    first = inr.compress(tiles, str(tmp_path / "a"), **kw)
    assert first["laws_fit_seconds"] > 0
    run = Run.open(str(tmp_path / "a"))
    laws = run.header["plan"]["index_laws"]
    assert laws["method"] == "sp-orc" and laws["source"].startswith("inr train tiles")
    assert run.header["plan"]["budget_offset_bits"] == -8
    assert run.header["codec"]["settings"]["laws"] == "learned"
    dec = inr.decompress(str(tmp_path / "a"), str(tmp_path / "a-png"), weights=w)
    stored = pq.read_table(run.part_paths()[0]).column("psnr_db").to_numpy()
    assert np.array_equal(psnr_db(tiles[dec["ids"]], dec["images"])[: len(stored)], stored)
    # cached: not fitted again, same bytes
    again = inr.compress(tiles, str(tmp_path / "b"), **kw)
    assert again["laws_fit_seconds"] == 0 and again["payload_bytes"] == first["payload_bytes"]
    # shipped next to the weights: read first (the cache emptied)
    model = load_inr(w)
    prior = read_prior(w.replace(".npz", "_prior.json"))
    plan, _ = inr.make_plan(prior, s)
    with open(inr.laws_path(w), "w") as f:
        json.dump({inr.laws_key(plan, s, model.model_checksum): laws}, f)
    shutil.rmtree(tmp_path / "cache")
    got, secs = inr.learned_laws(w, model, prior, s, fit=False)
    assert secs == 0 and got.to_dict() == laws
    os.remove(inr.laws_path(w))
    with pytest.raises(InputError, match="fixed 16-bit index"):
        inr.make_spec(prior, replace(_settings("orc-16"), laws="learned"))


@pytest.mark.parametrize("method", ["orc-16", "sp-orc"])
@pytest.mark.parametrize("anneal", [0.0, 1.0])
def test_a_tiles_bytes_do_not_depend_on_the_rest_of_its_batch(tiny, method, anneal):
    """The fit's noise is keyed by the run seed and each tile's id (not drawn for the
    batch), and its arithmetic treats each tile alike: the same tile with the same id gives
    the same message alone, first or last in a batch of others, and in other batch sizes."""
    w, tiles = tiny
    test = td.load_tiles("test").images
    model = load_inr(w)
    s = replace(_settings(method), anneal=anneal, fit_steps=20, refine_steps=3)
    spec, _ = inr.make_spec(read_prior(w.replace(".npz", "_prior.json")), s)
    codec = inr.INRCodec(model, s, plan=spec.plan)

    def message_of_7(batch, ids):
        enc = encode_progressive(codec, batch, np.asarray(ids), spec, stages=s.stages)
        k = list(ids).index(7)
        post = codec.analysis(batch, ids=np.asarray(ids))  # bit for bit, not only the bytes
        return enc.messages[k], enc.z[k], post.mu[k], post.sigma[k]

    alone = message_of_7(test[10:11], [7])
    for batch, ids in [
        (test[[10, 20, 30]], [7, 3, 12]),
        (test[[40, 20, 30, 50, 60, 10]], [1, 3, 12, 13, 14, 7]),
        (test[[10, 40]], [7, 1]),
    ]:
        got = message_of_7(batch, ids)
        assert got[0] == alone[0]
        assert all(np.array_equal(g, a) for g, a in zip(got[1:], alone[1:], strict=True))
    # the id is part of the key: another id gives another fit (and so other indices)
    enc = encode_progressive(codec, test[10:11], np.asarray([8]), spec, stages=s.stages)
    assert not np.array_equal(enc.z[0], alone[1])


def test_training_checkpoints_resume_where_they_stopped(tmp_path):
    """Two rounds in one run equal one round, a checkpoint, a new trainer resumed from it
    and a second round (bit for bit); a budget spent stops the run; a checkpoint of other
    tiles or settings is refused."""
    from recray.models.inr import Trainer, TrainSettings

    x = td.load_tiles("test").images[:6]
    s = TrainSettings(target_bpp=1.0, batch=4, steps_per_visit=2, seed=3)
    straight = Trainer(x, s, cfg=TINY)
    assert straight.run(rounds=2)
    ck = str(tmp_path / "ck.pt")
    first = Trainer(x, s, cfg=TINY)
    assert not first.run(rounds=2, max_minutes=0.0)  # the budget is spent before round 0
    assert first.round == 0
    first.run(rounds=1, checkpoint=ck)
    resumed = Trainer(x, s, cfg=TINY)
    resumed.load_checkpoint(ck)
    assert resumed.round == 1 and resumed.history == first.history
    assert resumed.run(rounds=2)

    def measured(history):  # everything but the wall-clock seconds
        return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in history]

    assert measured(resumed.history) == measured(straight.history)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert torch.equal(straight.mu, resumed.mu) and torch.equal(straight.adam_t, resumed.adam_t)
    a, b = straight.finish(), resumed.finish()
    assert np.array_equal(a.mi_bits, b.mi_bits) and a.beta == b.beta
    assert np.all(a.init_sigma64 > 0) and a.init_sigma64.shape == (TINY.dim,)
    with pytest.raises(InputError, match="other tiles"):
        Trainer(x[::-1].copy(), s, cfg=TINY).load_checkpoint(ck)
    with pytest.raises(InputError, match=r"other settings: \['batch'\]"):
        Trainer(x, replace(s, batch=3), cfg=TINY).load_checkpoint(ck)
    Trainer(x, replace(s, lr=1e-3), cfg=TINY).load_checkpoint(ck)  # step sizes may change


def test_the_training_job_resumes_and_writes_a_model_card(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "jobs_train_inr", os.path.join(os.path.dirname(__file__), "..", "jobs", "train_inr.py")
    )
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    args = [
        "--rates",
        "1",
        "2",
        "--tiles",
        "3",
        "--batch",
        "2",
        "--steps-per-visit",
        "1",
        "--family",
        "t",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    assert job.main(args + ["--rounds", "1"]) == 0
    card = json.load(open(tmp_path / "t_1.json"))
    assert card["model_id"] == "t_1" and card["training"]["rounds"] == 1
    assert card["training"]["tiles"] == 3 and len(card["training"]["history"]) == 1
    assert {"kl_bpp", "psnr_db", "psnr_db_posterior_mean"} <= set(card["training"]["history"][0])
    assert json.load(open(tmp_path / "t_2.json"))["training"]["warm_start_from"] == "t_1"
    assert job.main(args + ["--rounds", "2", "--resume"]) == 0
    for tag in ("1", "2"):
        card = json.load(open(tmp_path / f"t_{tag}.json"))
        assert [h["round"] for h in card["training"]["history"]] == [0, 1]
        assert load_inr(tmp_path / f"t_{tag}.npz").model_checksum == card["weights_sha256"]


def test_fit_curve_tiles_are_train_tiles_held_out_from_prior_learning():
    """The fit settings are chosen on train-split tiles the prior did not see (when its
    card names a subset), never on test tiles."""
    import hashlib
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "jobs_fit_curve", os.path.join(os.path.dirname(__file__), "..", "jobs", "inr_fit_curve.py")
    )
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    n = len(td.load_tiles("train"))
    used = np.sort(np.random.default_rng(0).choice(n, 1024, replace=False))
    sha = hashlib.sha256(used.astype(np.int64).tobytes()).hexdigest()
    card = {"training": {"tiles": 1024, "tile_ids_sha256": sha, "settings": {"seed": 0}}}
    x, idx, held_out = job.curve_tiles(card, 16, seed=2)
    assert held_out and len(idx) == 16 and not set(idx) & set(used.tolist())
    assert np.array_equal(x, td.load_tiles("train").images[idx])
    card["training"]["tile_ids_sha256"] = "0" * 64  # another subset than the job's rule gives
    assert not job.curve_tiles(card, 16, seed=2)[2]


def test_device_choice():
    """Training and fitting use a CUDA GPU when torch sees one, else the CPU; a GPU asked
    for where there is none is refused (run here on whatever this machine has)."""
    from recray.models.inr import pick_device

    auto = pick_device()
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("auto") == auto and pick_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert pick_device("cuda").type == "cuda"
    else:
        with pytest.raises(InputError, match="sees no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(InputError):
        pick_device("tpu")
    assert inr.INRCodec(None).device == auto


def _block_kl_bits(model, mu, sigma, block_of):
    pm, ps = model.prior_mu64, model.prior_sigma64
    v = (sigma / ps) ** 2
    kl = 0.5 * (v + ((mu - pm) / ps) ** 2 - 1 - np.log(v)) / np.log(2)
    out = np.zeros((mu.shape[0], block_of.max() + 1))
    np.add.at(out, (slice(None), block_of), kl)
    return out


# ----------------------------------------------------------------------------- data
def test_tile_splits_are_pinned_and_disjoint_by_source():
    test = td.load_tiles("test")
    assert len(test) == td.SPLIT_SIZES["test"] and test.images.dtype == np.uint8
    assert set(test.sources) == set(td.TEST_SOURCES)
    names = {s.name for s in td.SOURCES}
    assert set(td.TEST_SOURCES) < names
    assert td.load_tiles("test", limit=5).images.shape == (5, 32, 32, 3)
    with pytest.raises(InputError):
        td.load_tiles("valid")


def test_a_source_with_another_checksum_is_refused(tmp_path):
    src = next(s for s in td.SOURCES if s.name == "chelsea")
    data = bytearray(open(td.source_path(src), "rb").read())
    assert hashlib.sha256(data).hexdigest() == src.sha256
    data[-1] ^= 1
    bad = tmp_path / "chelsea.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="tile source 'chelsea'.*SHA-256"):
        td.read_source(src, str(bad))


def test_cut_tiles_is_row_major():
    img = np.arange(64 * 96 * 3, dtype=np.int64).reshape(64, 96, 3).astype(np.uint8)
    t = td.cut_tiles(img[: 70 // 32 * 32 + 5])
    assert t.shape == (6, 32, 32, 3)
    assert np.array_equal(t[1], img[:32, 32:64]) and np.array_equal(t[3], img[32:64, :32])


def test_cifar10_pickle_loader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    data = images.transpose(0, 3, 1, 2).reshape(5, 3072)  # R plane, G plane, B plane
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [3, 1, 4, 1, 5],
        b"data": data,
        b"filenames": [b"a.png"] * 5,
    }
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=2)  # CIFAR's python batches are protocol-2 pickles
    got, labels = td.load_cifar10(str(tmp_path), "test")
    assert np.array_equal(got, images) and labels.tolist() == [3, 1, 4, 1, 5]
    assert got[2, 7, 9, 1] == data[2, 1024 + 7 * 32 + 9]

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with open(tmp_path / "evil", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(FormatError, match="refusing to unpickle"):
        td.read_cifar10_batch(str(tmp_path / "evil"))
    with open(tmp_path / "short", "wb") as f:
        pickle.dump({b"data": data[:, :100], b"labels": [0] * 5}, f, protocol=2)
    with pytest.raises(FormatError, match="must be uint8 \\(n, 3072\\)"):
        td.read_cifar10_batch(str(tmp_path / "short"))


def test_classical_baselines_count_whole_files():
    from recray.bench import inr as bi

    tiles, idx = bi.test_tiles(2)
    assert idx.tolist() == [0, len(td.load_tiles("test")) - 1]
    for codec in bi.CLASSICAL:
        data = bi.encode_classical(codec, tiles[0], 50)
        assert bi.decode_classical(codec, data).shape == (32, 32, 3)
        row = bi.classical_sweep(tiles, codec, [50])[0]
        assert row["tiles"] == 2 and row["bpp"] >= 8 * row["min_file_bytes"] / 1024


def test_bench_pools_chunks_tile_weighted():
    from recray.bench import inr as bi

    a = {k: 1.0 for k in bi._MEAN_KEYS} | {"tiles": 1, "tile_psnr_db": [1.0], "tile_bits": [8]}
    b = {k: 4.0 for k in bi._MEAN_KEYS} | {"tiles": 3, "tile_psnr_db": [2.0, 3.0, 4.0]}
    b["tile_bits"] = [1, 2, 3]
    row = bi.pool_rows([a, b])
    assert row["tiles"] == 4 and row["chunks"] == 2
    assert all(row[k] == pytest.approx(13 / 4) for k in bi._MEAN_KEYS)
    assert row["tile_psnr_db"] == [1.0, 2.0, 3.0, 4.0] and row["tile_bits"] == [8, 1, 2, 3]


def test_bench_merges_runs_on_the_same_tiles_only(tmp_path):
    """Runs of one tile set merge (a run taken from a checkpoint has no total time, an older
    one's checkpoint no rate list either) and plot; runs on other tiles are refused."""
    from recray.bench import inr as bi

    def run(rate, idx, seconds=None):
        rows = [{"rate_point_bpp": rate, "method": m, "bpp": rate + k, "psnr_db": 25.0 + k}
                for k, m in enumerate(("orc-16", "sp-orc"))]  # fmt: skip
        r = {"rows": rows, "tiles": len(idx), "tile_indices": idx, "rates": [rate]}
        r |= {"sweeps": {}, "notes": []}
        return r if seconds is None else r | {"seconds": seconds}

    merged = bi.merge([run(0.5, [0, 3], 10.0), run(4.0, [0, 3])])
    assert merged["rates"] == [0.5, 4.0] and merged["seconds"] == 10.0
    assert len(merged["rows"]) == 4 and merged["tile_indices"] == [0, 3]
    # a checkpoint of an older run holds rows and tiles only
    part = {k: v for k, v in run(1.5, [0, 3]).items() if k in ("rows", "tiles", "tile_indices")}
    assert bi.merge([part, merged])["rates"] == [0.5, 1.5, 4.0]
    assert os.path.getsize(bi.plot(merged, str(tmp_path))) > 0
    with pytest.raises(ValueError, match="different tiles"):
        bi.merge([run(0.5, [0, 3], 1.0), run(4.0, [0, 4], 1.0)])


def test_bench_resumes_from_a_checkpoint_and_measures_only_the_rest(monkeypatch):
    """A run resumed from a checkpoint measures only the chunks the checkpoint lacks and
    ends with the rows of an unbroken run; a checkpoint of other settings or another chunk
    size is refused, naming the field; merged with the run it continues, each measurement is
    one row. (The bookkeeping is tested: each tile's
    measurement is replaced by a row built from its settings and tile indices.)"""
    from recray.bench import inr as bi
    from recray.models.inr import default_model_id

    calls = []

    def fake_row(tiles, idx, rate, settings, workdir, **kw):
        calls.append(idx.tolist())
        s = settings.resolved()
        row = {k: getattr(s, k) for k in bi._RESUME_KEYS + bi._PLAN_KEYS + ("method",)}
        row["model_id"] = default_model_id(rate)
        row |= {k: float(idx.sum()) for k in bi._MEAN_KEYS} | {"rate_point_bpp": rate}
        return row | {"tiles": len(idx), "tile_psnr_db": idx.tolist(), "tile_bits": idx.tolist()}

    monkeypatch.setattr(bi, "inr_row", fake_row)
    kw = dict(limit=6, rates=[1.5], methods=("orc-16", "sp-orc"), ablation=False)
    kw |= dict(classical=False, chunk=2)
    whole = bi.run(**kw)
    points = []
    bi.run(**kw, checkpoint=points.append)
    calls.clear()
    first = bi.run(**kw, max_tiles=3)  # stops after the chunk that reaches 3 tiles
    assert calls == [whole["tile_indices"][:2]] * 2 + [whole["tile_indices"][2:4]] * 2
    assert first["tiles"] == 4 and first["tile_indices"] == whole["tile_indices"][:4]
    calls.clear()
    resumed = bi.run(**kw, resume=points[0])
    assert calls == [whole["tile_indices"][2:4]] * 2 + [whole["tile_indices"][4:]] * 2
    for a, b in zip(resumed["rows"], whole["rows"], strict=True):
        assert a["tile_psnr_db"] == b["tile_psnr_db"] and a["tiles"] == b["tiles"] == 6
        assert a["psnr_db"] == pytest.approx(b["psnr_db"])
    # the same measurements in two results (a resumed run's and the original's) merge to one
    # row each; another setting's stays apart
    other = resumed | {"rows": [r | {"anneal": 0.5} for r in resumed["rows"]]}
    merged = bi.merge([whole, resumed, other])["rows"]
    assert len(merged) == 2 * len(whole["rows"]) and {r["anneal"] for r in merged} == {0.5, 1.0}
    with pytest.raises(InputError, match="field anneal is 1.0, this run's is 0.5"):
        bi.run(**kw, anneal=0.5, resume=points[0])
    # the SP settings' candidates are part of the setting (ORC-16 keeps its 2^16)
    with pytest.raises(InputError, match="sp-orc: field n_samples is 65536, this run's is 262144"):
        bi.run(**kw, sp_n_samples=1 << 18, resume=points[0])
    wide = bi.run(**(kw | {"max_tiles": 1}), sp_n_samples=1 << 18, sp_budget_offset_bits=-14)
    assert [r["n_samples"] for r in wide["rows"]] == [1 << 16, 1 << 18]
    assert [r["budget_offset_bits"] for r in wide["rows"]] == [0, -14]
    with pytest.raises(InputError, match="first whole chunks"):
        bi.run(**(kw | {"chunk": 3}), resume=points[0])
    bad_args = ({"limit": -3}, {"chunk": 0}, {"max_tiles": 0}, {"max_minutes": 0.0})
    for bad in bad_args + ({"sp_n_samples": 0},):
        with pytest.raises(InputError, match="--" + next(iter(bad)).replace("_", "-")):
            bi.run(**(kw | bad))
    older = points[0] | {"rows": [r | {"model_id": "inr_1p5"} for r in points[0]["rows"]]}
    with pytest.raises(InputError, match="field model_id is 'inr_1p5'"):
        bi.run(**kw, resume=older)


def test_bits_at_equal_psnr_interpolates_sp_orcs_curve_at_orcs_psnr():
    """SP-ORC measured at two fit settings around ORC-16's PSNR: log2 bpp is interpolated
    linearly in PSNR (here halfway: the geometric mean); no bracket, no figure; another
    model's rows are never mixed in."""
    from recray.bench import inr as bi

    def row(method, bpp, psnr, anneal=1.0, model="inr2_4"):
        return {"rate_point_bpp": 4.0, "method": method, "bpp": bpp, "psnr_db": psnr,
                "anneal": anneal, "model_id": model, "encode_s_per_tile": 1.0,
                "decode_s_per_tile": 0.1}  # fmt: skip

    orc = row("orc-16", 2.5, 33.0)
    lo, hi = row("sp-orc", 2.0, 32.0, 0.8), row("sp-orc", 3.2, 34.0, 1.0)
    far, beaten = row("sp-orc", 8.0, 40.0, 2.0), row("sp-orc", 3.3, 31.0, 0.0)
    other_model = row("sp-orc", 0.1, 33.5, 1.0, "inr_4")
    (e,) = bi.bits_at_equal_psnr([orc, far, hi, beaten, lo, other_model])
    assert e["sp_orc_bpp"] == pytest.approx(np.sqrt(2.0 * 3.2))  # the tightest bracket
    assert e["change"] == pytest.approx(np.sqrt(6.4) / 2.5 - 1.0) and not e["bound"]
    assert [x["anneal"] for x in e["between"]] == [0.8, 1.0]
    # all points above ORC-16's PSNR: the cheapest bounds SP-ORC's bits (a point that
    # another beats on bits and PSNR is no bracket)
    (e,) = bi.bits_at_equal_psnr([orc, hi, far, beaten])
    assert e["bound"] and e["sp_orc_bpp"] == 3.2 and e["between"][0]["anneal"] == 1.0
    assert bi.bits_at_equal_psnr([orc, beaten]) == []  # all below: nothing to say
    # another plan (here more candidates) is a curve of its own, named as such
    wide = [r | {"n_samples": 1 << 18, "block_bits": 24.0} for r in (lo, hi)]
    plain, other = bi.bits_at_equal_psnr([orc, lo, wide[0], hi, wide[1] | {"bpp": 3.0}])
    assert (plain["plan"], other["plan"]) == ("", "24-bit blocks, N 262,144")
    assert other["sp_orc_bpp"] == pytest.approx(np.sqrt(2.0 * 3.0)) and not other["bound"]
    table = bi.format_table({"tiles": 1, "rows": [orc, lo, hi] + wide})
    assert "rate point 4, 24-bit blocks, N 262,144: sp-orc" in table
    assert table.count("  24-bit blocks, N 262,144") == 2
    # a longer fit's rows pair among themselves, never with the default fit's
    longer = [r | {"fit_steps": 2000} for r in (orc, lo, hi)]
    assert bi.bits_at_equal_psnr([orc, longer[1], longer[2]]) == []
    both = bi.bits_at_equal_psnr([orc, lo, hi] + longer)
    assert [e["fit_steps"] for e in both] == [2000, None]
    assert [e["fit"] for e in both] == ["long fit", ""]
    assert "(+1.2% bits" in bi.format_table({"tiles": 1, "rows": [orc, lo, hi]})
    # the table names every fit that is not the default, as the comparison keeps them apart
    other_lr = [r | {"fit_steps": 2000, "lr": 0.01} for r in (orc, lo, hi)]
    table = bi.format_table({"tiles": 1, "rows": [orc, lo, hi] + longer + other_lr})
    assert "rate point 4, long fit:" in table and "rate point 4, 2000 steps, lr 0.01:" in table
    assert table.count("  long fit") == 3 and table.count("  2000 steps, lr 0.01") == 3


def test_fit_name_names_presets_and_what_differs():
    from recray.bench import inr as bi
    from recray.codecs.inr import FIT_PRESETS

    assert bi.fit_name({}) == "" and bi.fit_name(dict(FIT_PRESETS["default"])) == ""
    assert bi.fit_name(dict(FIT_PRESETS["fast"])) == "fast fit"
    assert bi.fit_name({"fit_steps": 2000}) == "long fit"
    assert bi.fit_name({"fit_steps": 2000, "refine_steps": 60}) == "2000 steps, 60 refine steps"
    assert bi.fit_name({"lr_end": 0.002, "fit_samples": 3}) == "lr_end 0.002, 3 samples"


def test_job_entrypoint_forwards_to_the_codec_commands():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "jobs_inr", os.path.join(os.path.dirname(__file__), "..", "jobs", "inr.py")
    )
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.argv_for(["compress", "--out", "/r"], {}) == [
        "codec",
        "inr",
        "compress",
        "--out",
        "/r",
    ]
    assert job.argv_for(["compress", "--out", "/r"], {"RAY_ADDRESS": "x"})[-2:] == [
        "--address",
        "auto",
    ]
    assert job.argv_for(["bench", "--limit", "3"], {}) == ["bench", "inr", "--limit", "3"]
    assert job.argv_for(["nope"], {}) is None
    assert job.relative_path(["--out", "rel/run"]) == "rel/run"
    assert job.relative_path(["--json", "x.json"]) == "x.json"
    assert job.relative_path(["--out", "/abs", "--json", "/abs.json"]) is None


def test_the_mnist_codec_sits_behind_the_same_interface():
    from recray.codecs.base import decode_items
    from recray.codecs.mnist import MnistCodec, prior_path
    from recray.data.mnist import load_mnist
    from recray.pipeline.codec import CodecSpec
    from recray.plan import build_plan

    try:
        images, _ = load_mnist("test")
    except Exception as exc:  # the MNIST cache is made by `recray` on first use
        pytest.skip(f"MNIST not available: {exc}")
    x = images[:3].reshape(3, -1)
    prior = read_prior(prior_path())
    spec = CodecSpec(
        plan=build_plan(prior.mi_bits, 32.0),
        method="sp-pfr",
        seed=0,
        prior_mu=prior.mu,
        prior_sigma=prior.sigma,
        on_unbounded="orc",
    )
    codec = MnistCodec()
    enc = encode_progressive(codec, x, np.arange(3), spec)
    out, z = decode_items(codec, np.arange(3), enc.messages, spec)
    assert np.array_equal(out, x) and np.array_equal(z, enc.z)


def test_shipped_rate_points_load_with_their_checksums():
    """The first family ships all three rate points (its runs still decode); every shipped
    model of the families --rate selects from loads with its card's SHA-256 and id; --rate
    selects the newest family's model of its rate point."""
    from recray.models.inr import (
        DEFAULT_FAMILIES,
        LEGACY_FAMILY,
        default_model_id,
        rate_tag,
        shipped_rates,
        weights_path,
    )

    legacy = shipped_rates(LEGACY_FAMILY)
    assert len(legacy) >= 3 and legacy[0] <= 0.5 and legacy[-1] >= 4
    assert inr.DEFAULT_RATE in shipped_rates(DEFAULT_FAMILIES[0])
    for family in DEFAULT_FAMILIES:
        for r in shipped_rates(family):
            path = weights_path(model=f"{family}_{rate_tag(r)}")
            model = load_inr(path)
            card = json.load(open(path.with_suffix(".json")))
            assert card["target_bpp"] == r and card["weights_sha256"] == model.model_checksum
            assert model.model_id == path.stem
            prior = read_prior(str(path).replace(".npz", "_prior.json"))
            assert prior.dim == model.cfg.dim == 3779
            assert np.array_equal(prior.sigma, model.prior_sigma64)
    assert shipped_rates() == sorted({r for f in DEFAULT_FAMILIES for r in shipped_rates(f)})
    for r in shipped_rates():
        first = next(f for f in DEFAULT_FAMILIES if r in shipped_rates(f))
        assert default_model_id(r) == f"{first}_{rate_tag(r)}" == weights_path(r).stem
    assert weights_path(1.5).stem == f"{DEFAULT_FAMILIES[0]}_1p5"
    with pytest.raises(InputError, match="no shipped INR model"):
        default_model_id(0.123)
    # a run header without a model id (written before ids were recorded) names the first
    # family's model of its rate point
    assert inr.run_model_id({"rate_point_bpp": 1.5}) == f"{LEGACY_FAMILY}_1p5"
    assert inr.run_model_id({"rate_point_bpp": 1.5, "model_id": "inr2_1p5"}) == "inr2_1p5"


@pytest.mark.parametrize("rate", [0.5, 1.5, 4.0])
def test_shipped_index_laws_match_the_sp_orc_preset_and_the_model_card(rate):
    """Every rate point ships the sp-orc preset's laws for the default and the long fit
    (found without fitting), and the model card holds their file's SHA-256 and each
    entry's checksum."""
    from recray.models.inr import weights_path
    from recray.plan.laws import IndexLaws

    w = str(weights_path(rate))
    card = json.load(open(w.replace(".npz", ".json")))["index_laws"]
    path = inr.laws_path(w)
    assert os.path.basename(path) == card["file"]
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == card["sha256"]
    table = json.load(open(path))
    assert {k: IndexLaws.from_dict(v).checksum() for k, v in table.items()} == card["laws_sha256"]
    model = load_inr(w)
    prior = read_prior(w.replace(".npz", "_prior.json"))
    for preset in ("default", "long"):
        s = inr.Settings(method="sp-orc", **inr.FIT_PRESETS[preset])
        laws, secs = inr.learned_laws(w, model, prior, s, fit=False)
        assert laws is not None and secs == 0.0 and laws.method == "sp-orc", preset
    spec, _ = inr.make_spec(prior, inr.Settings(method="sp-orc"), laws)
    # ~20-bit blocks, B = the block's information - 12 (7 at 0.5: 17 blocks of 19.3 bits)
    assert set(spec.plan.block_budget_bits) == ({7} if rate == 0.5 else {8}) and spec.layout.laws


@pytest.mark.parametrize("run", ["sp-orc"], indirect=True)
def test_ray_engine_writes_the_same_bytes(run, tiny, tmp_path):
    """The actor pool (2 actors, one shard each) gives the in-process run's bytes, and
    decodes it into the in-process decoder's tiles."""
    from recray.pipeline import parts

    out, _, method = run
    w, tiles = tiny
    opts = RayOptions(actors=2)
    with parts.session("ray", opts):  # one Ray for both stages
        info = inr.compress(
            tiles,
            str(tmp_path / "ray"),
            source={"test": True},
            weights=w,
            settings=_settings(method),
            engine="ray",
            ray_options=opts,
            shard_rows=2,
        )
        on_ray = inr.decompress(
            out, str(tmp_path / "dec-ray"), weights=w, engine="ray", ray_options=opts
        )
    assert info["engine"] == "ray" and info["actors"] == 2

    def messages(d):
        return [
            m
            for f in sorted(os.listdir(d))
            if f.endswith(".parquet")
            for m in pq.read_table(os.path.join(d, f)).column("message").to_pylist()
        ]

    assert messages(str(tmp_path / "ray")) == messages(out)
    local = inr.decompress(out, str(tmp_path / "dec-local"), weights=w)
    np.testing.assert_array_equal(on_ray["ids"], local["ids"])
    np.testing.assert_array_equal(on_ray["images"], local["images"])


DECODE = """
import sys
import numpy as np
from recray.codecs import inr
r = inr.decompress(sys.argv[1], sys.argv[2], weights=sys.argv[3], latents=True)
np.save(sys.argv[2] + ".npy", r["images"])
np.save(sys.argv[2] + "-z.npy", r["latents"])
"""


@pytest.mark.parametrize(
    "env",
    [{"ATEN_CPU_CAPABILITY": "default"}, {"MKL_CBWR": "COMPATIBLE"}, {"OMP_NUM_THREADS": "2"}],
    ids=["aten-default", "mkl-compatible", "omp-2"],
)
@pytest.mark.parametrize("run", ["sp-orc"], indirect=True)
def test_decoding_under_other_cpu_code_paths(run, tiny, tmp_path, env):
    """A lossy codec may render other last bits on another machine; what it promises (see
    docs/INR.md): the same latent, pixels at most one level apart, PSNR within 0.01 dB.
    (The rendering is the same for every coding method: one method's run stands for all.)"""
    import subprocess
    import sys

    out, _, _ = run
    w, tiles = tiny
    mine = inr.decompress(out, str(tmp_path / "here"), weights=w, latents=True)
    here = mine["images"].astype(np.int64)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    penv = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    penv.update(env)
    there = str(tmp_path / "there")
    subprocess.run([sys.executable, "-c", DECODE, out, there, w], env=penv, check=True, timeout=300)
    other = np.load(there + ".npy").astype(np.int64)
    z = np.load(there + "-z.npy")
    assert z.dtype == mine["latents"].dtype and z.tobytes() == mine["latents"].tobytes()
    assert np.abs(other - here).max() <= 1

    def psnr(x):
        mse = np.mean((x - tiles.astype(np.int64)) ** 2)
        return 10 * np.log10(255.0**2 / mse)

    assert abs(psnr(other) - psnr(here)) < 0.01


def test_settings_default_fit_is_the_default_preset():
    """Settings() fits as FIT_PRESETS["default"] says, and the command line's --fit-preset
    gives each preset's settings unless an option overrides one."""
    from recray.cli import inr as cli_inr
    from recray.cli.main import build_parser

    d = inr.Settings()
    assert {k: getattr(d, k) for k in inr.FIT_PRESETS["default"]} == inr.FIT_PRESETS["default"]
    p = build_parser()
    base = ["codec", "inr", "compress", "--out", "x"]
    for name, preset in inr.FIT_PRESETS.items():
        s = cli_inr._settings(p.parse_args(base + ["--fit-preset", name]))
        assert {k: getattr(s, k) for k in preset} == preset and s.method == d.method
    s = cli_inr._settings(p.parse_args(base + ["--fit-preset", "fast", "--lr-end", "1e-4"]))
    assert (s.fit_steps, s.lr, s.lr_end) == (300, inr.FIT_PRESETS["fast"]["lr"], 1e-4)


def test_bench_chunks_interleave_over_the_tiles():
    """The benchmark's chunk order is a permutation whose first chunks spread over all
    tiles (a time-capped run measures an evenly spaced subset)."""
    from recray.bench.inr import interleaved

    o = interleaved(100, 10)
    assert sorted(o.tolist()) == list(range(100))
    assert o[:10].tolist() == list(range(0, 100, 10))
    assert o[10:20].tolist() == list(range(1, 100, 10))
    for n, c in [(7, 3), (5, 10), (1, 1), (342, 10)]:
        assert sorted(interleaved(n, c).tolist()) == list(range(n))


def test_a_first_family_run_decodes_with_the_weights_its_header_names(tmp_path):
    """A run coded with the first family's shipped weights (not what --rate selects now)
    names them in its header and decodes without --weights, to the encoder's pixels."""
    from recray.models.inr import default_model_id, weights_path

    assert default_model_id(1.5) != "inr_1p5"  # the newer family is the default
    w = str(weights_path(model="inr_1p5"))
    tiles = td.load_tiles("test").images[:1]
    out = str(tmp_path / "run")
    s = replace(_settings("orc-16"), fit_steps=2, refine_steps=1, stages=1)
    inr.compress(tiles, out, source={"test": 1}, rate=1.5, settings=s, weights=w, engine="local")
    from recray.format.run import Run

    assert Run.open(out).header["codec"]["model_id"] == "inr_1p5"
    got = inr.decompress(out, str(tmp_path / "png"))
    enc = pq.read_table(next(str(p) for p in sorted((tmp_path / "run").glob("part-*"))))
    from recray.models.inr import psnr_db

    np.testing.assert_allclose(psnr_db(tiles, got["images"]), enc.column("psnr_db").to_numpy())
