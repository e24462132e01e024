"""compress / decompress / inspect on synthetic latents: exact round trips, honest bitrates,
and every bad input refused with nothing published."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import rehash_part
from scipy import stats

from recray.cli.main import main
from recray.errors import FormatError, InputError, MessageError, UnboundedRatioError
from recray.latents import synthesize
from recray.pipeline import driver

FAST = dict(block_bits=8.0, batch_size=128, engine="local")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    lat, pri = synthesize(600, 12, str(d), seed=3)
    return lat, pri


@pytest.fixture(scope="module")
def run(synth, tmp_path_factory):
    lat, pri = synth
    out = str(tmp_path_factory.mktemp("runs") / "run")
    driver.compress(lat, pri, out, debug_samples=True, shard_rows=250, **FAST)
    return out


def _table(path):
    return pq.read_table(path)


def _vectors(col):
    return np.stack(col.to_numpy(zero_copy_only=False)).astype(np.float64)


def test_round_trip_is_bit_exact(run, tmp_path):
    out = str(tmp_path / "dec.parquet")
    r = driver.decompress(run, out)
    assert r["items"] == 600
    dec = _table(out)
    enc = pa.concat_tables(
        [
            _table(p)
            for p in sorted(os.path.join(run, f) for f in os.listdir(run) if f.endswith(".parquet"))
        ]
    )
    assert dec.column("id").to_pylist() == enc.column("id").to_pylist()
    assert np.array_equal(_vectors(dec.column("z")), _vectors(enc.column("z_debug")))


def test_decoded_latents_follow_the_posteriors(run, synth, tmp_path):
    lat, _ = synth
    out = str(tmp_path / "dec.parquet")
    driver.decompress(run, out)
    z = _vectors(_table(out).column("z"))
    src = _table(lat)
    mu, sigma = _vectors(src.column("mu")), _vectors(src.column("sigma"))
    scores = (z - mu) / sigma
    p = min(stats.kstest(scores[:, d], "norm").pvalue for d in range(scores.shape[1]))
    assert p * scores.shape[1] > 1e-3, p


def test_bitrate_is_what_was_written(run):
    r = driver.inspect(run)
    msgs = []
    nbits = []
    for f in sorted(os.listdir(run)):
        if f.endswith(".parquet"):
            t = _table(os.path.join(run, f))
            msgs += t.column("message").to_pylist()
            nbits += t.column("nbits").to_pylist()
    payload = sum(len(m) for m in msgs)
    assert r["payload_bytes"] == payload
    assert nbits == [8 * len(m) for m in msgs]
    assert r["bits_per_item"] == pytest.approx(8 * payload / 600)
    man = json.load(open(os.path.join(run, "manifest.json")))
    assert man["payload_bytes"] == payload and man["items"] == 600
    assert len(man["parts"]) == 3  # 250 rows per part
    headers = sum(
        os.path.getsize(os.path.join(run, f)) for f in ("plan.json", "prior.json", "manifest.json")
    )
    assert r["bits_per_item_with_headers"] == pytest.approx(8 * (payload + headers) / 600)
    assert r["bits_per_item"] > r["mean_kl_bits_per_item"]


def test_cli_worked_example(tmp_path, capsys):
    d = str(tmp_path / "syn")
    assert main(["datasets", "synth", "--n", "200", "--dim", "8", "--out", d, "--string-ids"]) == 0
    run_dir = str(tmp_path / "run")
    assert (
        main(
            [
                "compress",
                f"{d}/latents.parquet",
                "--prior",
                f"{d}/prior.json",
                "--out",
                run_dir,
                "--block-bits",
                "8",
                "--method",
                "sp-orc",
                "--n-samples",
                "256",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["inspect", run_dir, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["items"] == 200 and info["method"] == "sp-orc"
    out = str(tmp_path / "z.parquet")
    assert main(["decompress", run_dir, "--out", out]) == 0
    assert _table(out).column("id").to_pylist()[0] == "item-000000000"


def test_every_method_round_trips(synth, tmp_path):
    lat, pri = synth
    small = str(tmp_path / "small.parquet")
    pq.write_table(_table(lat).slice(0, 60), small)
    for method in ("pfr", "orc", "sp-orc"):
        out = str(tmp_path / method)
        driver.compress(small, pri, out, method=method, n_samples=512, debug_samples=True, **FAST)
        dec = str(tmp_path / f"{method}.parquet")
        driver.decompress(out, dec)
        enc = _table(os.path.join(out, "part-00000.parquet"))
        assert np.array_equal(_vectors(_table(dec).column("z")), _vectors(enc.column("z_debug"))), (
            method
        )


# ---------------------------------------------------------------------------- bad input
def _latents(tmp_path, n=20, dim=12, **over):
    rng = np.random.default_rng(0)
    cols = {
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "mu": pa.array(list(rng.normal(size=(n, dim)) * 0.5)),
        "sigma": pa.array(list(np.full((n, dim), 0.5))),
    }
    cols.update(over)
    path = str(tmp_path / "bad.parquet")
    pq.write_table(pa.table(cols), path)
    return path


def _refused(tmp_path, lat, pri, exc, match, **kw):
    out = str(tmp_path / "out")
    with pytest.raises(exc, match=match):
        driver.compress(lat, pri, out, **FAST, **kw)
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(tmp_path) if ".partial-" in f]


def test_missing_column(tmp_path, synth):
    lat = str(tmp_path / "nosigma.parquet")
    pq.write_table(_table(synth[0]).drop(["sigma"]), lat)
    _refused(tmp_path, lat, synth[1], InputError, "missing column 'sigma'")


def test_nan_and_nonpositive_sigma_name_the_item(tmp_path, synth):
    mu = np.zeros((20, 12))
    mu[7, 3] = np.nan
    lat = _latents(tmp_path, mu=pa.array(list(mu)))
    _refused(tmp_path, lat, synth[1], InputError, r"item 7: mu\[3\] = nan")
    sig = np.full((20, 12), 0.5)
    sig[4, 2] = 0.0
    lat = _latents(tmp_path, sigma=pa.array(list(sig)))
    _refused(tmp_path, lat, synth[1], InputError, r"item 4: sigma\[2\] = 0.0 must be > 0")


def test_wrong_vector_length(tmp_path, synth):
    rows = [np.zeros(12)] * 20
    rows[5] = np.zeros(11)
    lat = _latents(tmp_path, mu=pa.array(rows))
    _refused(tmp_path, lat, synth[1], InputError, r"item 5: mu has length 11")


def test_prior_length_mismatch(tmp_path, synth):
    lat = _latents(
        tmp_path,
        dim=10,
        mu=pa.array(list(np.zeros((20, 10)))),
        sigma=pa.array(list(np.full((20, 10), 0.5))),
    )
    _refused(tmp_path, lat, synth[1], InputError, "D = 12")


def test_duplicate_ids(tmp_path, synth):
    ids = np.arange(20)
    ids[9] = 3
    lat = _latents(tmp_path, id=pa.array(ids))
    _refused(tmp_path, lat, synth[1], InputError, "duplicate item id 3")


def test_unbounded_ratio_and_its_fallback(tmp_path, synth):
    sig = np.full((20, 12), 0.5)
    sig[11, 6] = 1.3
    lat = _latents(tmp_path, sigma=pa.array(list(sig)))
    _refused(tmp_path, lat, synth[1], UnboundedRatioError, "item 11.*latent dimension 6")
    out = str(tmp_path / "fallback")
    info = driver.compress(
        lat, synth[1], out, on_unbounded="orc", n_samples=1024, debug_samples=True, **FAST
    )
    assert info["fallback_blocks"] == 1
    dec = str(tmp_path / "fb.parquet")
    driver.decompress(out, dec)
    enc = _table(os.path.join(out, "part-00000.parquet"))
    assert np.array_equal(_vectors(_table(dec).column("z")), _vectors(enc.column("z_debug")))


def _interrupt_at(monkeypatch, first_id, exc=KeyboardInterrupt):
    """Raise ``exc`` in the coding of the batch that starts with item ``first_id`` (batches
    are coded on several threads at once, so which call comes n-th is not fixed)."""
    import recray.pipeline.shards as eng

    real = eng.encode_table

    def flaky(ids, *a, **k):
        if int(ids[0]) == first_id:
            raise exc
        return real(ids, *a, **k)

    monkeypatch.setattr(eng, "encode_table", flaky)


def _files(run_dir):
    return {f: open(os.path.join(run_dir, f), "rb").read() for f in sorted(os.listdir(run_dir))}


def test_interrupted_run_is_resumed_to_the_same_bytes(tmp_path, synth, monkeypatch):
    kw = dict(FAST, batch_size=100, shard_rows=200)
    clean = str(tmp_path / "clean")
    driver.compress(synth[0], synth[1], clean, **kw)
    out = str(tmp_path / "out")
    _interrupt_at(monkeypatch, 400)  # shards of 2 batches: shards 0 and 1 are committed
    with pytest.raises(KeyboardInterrupt):
        driver.compress(synth[0], synth[1], out, **kw)
    monkeypatch.undo()
    assert not os.path.exists(out)
    partial = tmp_path / ".out.partial"
    assert sorted(f for f in os.listdir(partial) if f.endswith(".parquet")) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    with pytest.raises(InputError, match="pass --resume"):
        driver.compress(synth[0], synth[1], out, **kw)
    with pytest.raises(InputError, match=r"codec settings differ: seed \(--seed\) is 5 here"):
        driver.compress(synth[0], synth[1], out, resume=True, **(kw | {"seed": 5}))
    with pytest.raises(InputError, match=r"shard_rows \(--shard-rows\) is 100 here but 200"):
        driver.compress(synth[0], synth[1], out, resume=True, **(kw | {"shard_rows": 100}))
    info = driver.compress(synth[0], synth[1], out, resume=True, **kw)
    assert info["resumed_shards"] == 2 and info["shards"] == 3
    assert _files(out) == _files(clean)
    assert not partial.exists()


def test_batches_coded_at_once_write_the_same_bytes(tmp_path, synth, monkeypatch):
    """Shards code several batches at once on threads (one kernel thread each); the parts
    are those of one batch after another, whatever the number of threads."""
    import recray.pipeline.local_engine as le

    kw = dict(FAST, batch_size=50, shard_rows=256, debug_samples=True)
    runs = {}
    for workers in (1, 3):
        monkeypatch.setattr(le, "batch_workers", lambda spec, w=workers: w)
        out = str(tmp_path / f"w{workers}")
        driver.compress(synth[0], synth[1], out, **kw)
        runs[workers] = {f: b for f, b in _files(out).items() if f.startswith("part-")}
    assert len(runs[1]) == 3 and runs[1] == runs[3]
    # a run smaller than one batch is cut into one batch per worker (every core searches)
    import recray.pipeline.shards as eng

    sizes, real = [], eng.encode_table

    def counted(ids, *a, **k):
        sizes.append(len(ids))
        return real(ids, *a, **k)

    monkeypatch.setattr(eng, "encode_table", counted)
    small = dict(kw, batch_size=4096, shard_rows=1 << 16)
    for workers in (1, 2):
        monkeypatch.setattr(le, "batch_workers", lambda spec, w=workers: w)
        out = str(tmp_path / f"small{workers}")
        driver.compress(synth[0], synth[1], out, **small)
        runs[workers] = {f: b for f, b in _files(out).items() if f.startswith("part-")}
    assert sizes == [600, 300, 300] and runs[1] == runs[2]


def test_error_mid_run_keeps_committed_work_for_resume(tmp_path, synth, monkeypatch):
    """A typed error after shards were committed (here planted in the search of the third
    batch) keeps the partial run: nothing committed is deleted, --resume finishes it."""
    kw = dict(FAST, shard_rows=128)
    clean = str(tmp_path / "clean")
    driver.compress(synth[0], synth[1], clean, **kw)
    _interrupt_at(monkeypatch, 256, InputError("item 7: planted"))
    out = str(tmp_path / "out")
    with pytest.raises(InputError, match="planted"):
        driver.compress(synth[0], synth[1], out, **kw)
    monkeypatch.undo()
    partial = tmp_path / ".out.partial"
    kept = sorted(f for f in os.listdir(partial) if f.startswith("part-"))
    assert kept == ["part-00000.parquet", "part-00001.parquet"]
    # an error during the resume keeps them too
    _interrupt_at(monkeypatch, 256, InputError("item 9: planted again"))
    with pytest.raises(InputError, match="planted again"):
        driver.compress(synth[0], synth[1], out, resume=True, **kw)
    monkeypatch.undo()
    assert sorted(f for f in os.listdir(partial) if f.startswith("part-")) == kept
    info = driver.compress(synth[0], synth[1], out, resume=True, **kw)
    assert info["resumed_shards"] == 2
    assert _files(out) == _files(clean)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: recray compress in another process whose commits take a second each (a slow writer)
SLOW_WRITER = """
import sys, time
from recray.format import run
commit = run.PartCommitter.commit
def slow(self, *a, **k):
    out = commit(self, *a, **k)
    time.sleep(float(sys.argv[1]))
    return out
run.PartCommitter.commit = slow
from recray.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _writer(argv, pause=1.0):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_WAIT_POLICY="PASSIVE")
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(pause), *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path, proc, timeout=120):
    t0 = time.monotonic()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.05)


def test_resume_while_another_process_writes_is_refused_in_one_line(tmp_path, synth, capsys):
    """Two processes: while one writes the run, compress --resume (and a plain compress)
    of the same output stops in one line, before touching it; the writer finishes to the
    same bytes as a clean run. A writer killed mid-run leaves its lock file, which does not
    hold: the run resumes to the same bytes."""
    lat, pri = synth
    clean = str(tmp_path / "clean")
    driver.compress(lat, pri, clean, shard_rows=100, **FAST)
    out = str(tmp_path / "out")
    argv = ["compress", lat, "--prior", pri, "--out", out, "--engine", "local"]
    argv += ["--block-bits", "8", "--shard-rows", "100"]
    writer = _writer(argv)
    try:
        _wait_for(str(tmp_path / ".out.partial" / "part-00000.parquet"), writer)
        for extra in (["--resume"], []):
            assert main(argv + extra) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "another recray process is writing this run" in err[0]
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    finally:
        writer.kill()
        writer.wait()
    assert _files(out) == _files(clean)
    assert sorted(os.listdir(tmp_path)) == ["clean", "out"]  # the lock file is gone

    out2 = str(tmp_path / "out2")
    writer = _writer([*argv[:5], out2, *argv[6:]])
    try:
        _wait_for(str(tmp_path / ".out2.partial" / "part-00001.parquet"), writer)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert os.path.exists(tmp_path / ".out2.lock")  # left by the kill; the kernel dropped it
    info = driver.compress(lat, pri, out2, resume=True, shard_rows=100, **FAST)
    assert info["resumed_shards"] >= 2
    assert _files(out2) == _files(clean)
    assert not os.path.exists(tmp_path / ".out2.lock")


def test_a_held_writer_lock_refuses_compress_and_resume(tmp_path, synth, capsys):
    """The lock alone (held here by another process) is what refuses: the output's
    unfinished run is not read, and once the holder is gone the run resumes."""
    lat, pri = synth
    out = str(tmp_path / "out")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         str(tmp_path / ".out.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["compress", lat, "--prior", pri, "--out", out, "--engine", "local"]
        argv += ["--block-bits", "8", "--resume"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another recray process is writing this run" in err[0]
        assert sorted(os.listdir(tmp_path)) == [".out.lock"]  # nothing else written
    finally:
        holder.stdin.close()
        holder.wait()
    assert main(argv) == 0  # --resume of a run that does not exist yet starts it
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("batch_size", [37, 600])
def test_bytes_do_not_depend_on_batch_size(tmp_path, synth, run, batch_size):
    out = str(tmp_path / "b")
    driver.compress(
        synth[0],
        synth[1],
        out,
        debug_samples=True,
        shard_rows=250,
        **(FAST | {"batch_size": batch_size}),
    )
    assert _files(out) == _files(run)
    man = json.load(open(os.path.join(out, "manifest.json")))
    assert [p["rows"] for p in man["parts"]] == [250, 250, 100] and man["items"] == 600


def test_existing_output_is_not_replaced(tmp_path, synth, run):
    with pytest.raises(InputError, match="already exists"):
        driver.compress(synth[0], synth[1], run, **FAST)


# ---------------------------------------------------------------------------- bad runs
def _copy(run, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(run, dst)
    return dst


def test_corrupted_message_fails_its_crc(run, tmp_path):
    d = _copy(run, tmp_path)
    part = "part-00001.parquet"
    t = _table(os.path.join(d, part))
    msgs = t.column("message").to_pylist()
    msgs[17] = bytes([msgs[17][0] ^ 0x40]) + msgs[17][1:]
    t = t.set_column(t.schema.get_field_index("message"), "message", pa.array(msgs, pa.binary()))
    pq.write_table(t, os.path.join(d, part))
    rehash_part(d, part)
    bad_id = t.column("id").to_pylist()[17]
    with pytest.raises(MessageError, match=rf"item {bad_id}: its message fails its CRC"):
        driver.decompress(d, str(tmp_path / "x.parquet"))
    assert not os.path.exists(tmp_path / "x.parquet")


def test_truncated_or_foreign_part(run, tmp_path):
    d = _copy(run, tmp_path)
    path = os.path.join(d, "part-00000.parquet")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(FormatError, match="part-00000.parquet .* not readable Parquet.*--salvage"):
        driver.decompress(d, str(tmp_path / "x.parquet"))
    with pytest.raises(FormatError):
        rehash_part(d, "part-00000.parquet")
        driver.decompress(d, str(tmp_path / "y.parquet"))


def test_incomplete_run_and_version_and_prior_mismatch(run, tmp_path, synth):
    d = _copy(run, tmp_path)
    os.remove(os.path.join(d, "manifest.json"))
    with pytest.raises(FormatError, match="not complete"):
        driver.decompress(d, str(tmp_path / "x.parquet"))
    d2 = str(tmp_path / "v")
    shutil.copytree(run, d2)
    hdr_path = os.path.join(d2, "plan.json")
    hdr = json.load(open(hdr_path))
    hdr["version"] = 99
    json.dump(hdr, open(hdr_path, "w"))
    with pytest.raises(FormatError, match="run format version 99; this recray reads versions 1, 2"):
        driver.decompress(d2, str(tmp_path / "x.parquet"))
    other = str(tmp_path / "other")
    _, other_prior = synthesize(50, 12, other, seed=99)
    with pytest.raises(FormatError, match="not the prior"):
        driver.decompress(run, str(tmp_path / "x.parquet"), prior_path=other_prior)


def test_cli_errors_exit_nonzero(tmp_path, synth, capsys):
    code = main(
        [
            "compress",
            str(tmp_path / "missing.parquet"),
            "--prior",
            synth[1],
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "do not exist" in capsys.readouterr().err


def test_collapsed_blocks_use_the_near_prior_class_law(run):
    from recray.latents.io import Prior
    from recray.pipeline.driver import spec_from_header

    hdr = json.load(open(os.path.join(run, "plan.json")))
    prior = Prior.from_dict(json.load(open(os.path.join(run, "prior.json"))))
    spec = spec_from_header(hdr, prior)
    mi = np.asarray(spec.plan.mi_bits)
    want = tuple(int(np.all(mi[list(b)] < 0.01)) for b in spec.plan.blocks)
    assert spec.layout.class_models == want and 0 < sum(want) < len(want)


# ---------------------------------------------------------------- per-block budgets ("kl")
def _small(synth, tmp_path, n=60):
    lat, pri = synth
    small = str(tmp_path / "small.parquet")
    pq.write_table(_table(lat).slice(0, n), small)
    return small, pri


def _spec(run_dir):
    from recray.latents.io import Prior
    from recray.pipeline.driver import spec_from_header

    hdr = json.load(open(os.path.join(run_dir, "plan.json")))
    prior = Prior.from_dict(json.load(open(os.path.join(run_dir, "prior.json"))))
    return hdr, spec_from_header(hdr, prior)


def _messages(run_dir):
    t = pa.concat_tables(
        [
            _table(os.path.join(run_dir, f))
            for f in sorted(os.listdir(run_dir))
            if f.startswith("part-")
        ]
    )
    return t.column("message").to_pylist()


def _edit_header(run_dir, **changes):
    """Change entries of a run's header and make the manifest's plan checksum agree again,
    so that a test reaches the header's own checks."""
    import hashlib

    path = os.path.join(run_dir, "plan.json")
    hdr = json.load(open(path))
    hdr.update(changes)
    json.dump(hdr, open(path, "w"))
    man_path = os.path.join(run_dir, "manifest.json")
    man = json.load(open(man_path))
    man["plan_sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    json.dump(man, open(man_path, "w"))


def test_orc_with_per_block_budget_from_kl(synth, tmp_path):
    """``n_samples="kl"``: block b searches N_b = 2^ceil(I_b + offset) candidates and orc
    writes its index in exactly log2 N_b raw bits (message codec version 4)."""
    from recray.format.messages import MESSAGE_CODEC_VERSION, decode_blocks, ideal_bits
    from recray.plan import kl_sample_bits

    small, pri = _small(synth, tmp_path)
    out = str(tmp_path / "orc-kl")
    kw = dict(method="orc", n_samples="kl", kl_offset_bits=1.5, debug_samples=True)
    driver.compress(small, pri, out, **kw, **FAST)
    hdr, spec = _spec(out)
    e = kl_sample_bits(spec.plan, 1.5)
    info = spec.plan.block_info_bits
    assert e == tuple(min(max(math.ceil(i + 1.5), 0), 20) for i in info)
    assert len(set(e)) == 3 and e[-1] == 2  # the last block is the collapsed one
    assert hdr["n_samples"] == "kl" and hdr["kl_offset_bits"] == 1.5
    assert hdr["block_n_samples"] == [1 << v for v in e]
    assert hdr["message_codec_version"] == MESSAGE_CODEC_VERSION == 5
    assert spec.layout.block_raw_bits == e
    msgs = _messages(out)
    # raw fields only (orc has no bins): sum(e) bits, at most that rounded up to bytes (the
    # shortest termination drops trailing zero bytes)
    bins, local, _ = decode_blocks(msgs, spec.layout)
    assert (ideal_bits(bins, local, spec.layout) == sum(e)).all()
    assert max(len(m) for m in msgs) == -(-sum(e) // 8)
    assert (local <= np.array([1 << v for v in e])).all()
    # the searches used the whole per-block budgets (informative blocks)
    assert (local.max(axis=0)[:2] > np.array([1 << (v - 1) for v in e[:2]])).all()
    dec = str(tmp_path / "orc-kl.parquet")
    driver.decompress(out, dec)
    enc = _table(os.path.join(out, "part-00000.parquet"))
    assert np.array_equal(_vectors(_table(dec).column("z")), _vectors(enc.column("z_debug")))


def test_sp_orc_with_per_block_budget_from_kl(synth, tmp_path):
    """The rule also sets sp-orc's per-block search budget (its index keeps the universal
    code); the winners never exceed N_b, and the run round-trips."""
    from recray.format.messages import decode_blocks
    from recray.plan import kl_sample_bits

    small, pri = _small(synth, tmp_path)
    out = str(tmp_path / "sp-orc-kl")
    driver.compress(small, pri, out, method="sp-orc", n_samples="kl", debug_samples=True, **FAST)
    hdr, spec = _spec(out)
    n_b = [1 << v for v in kl_sample_bits(spec.plan)]
    assert hdr["block_n_samples"] == n_b == list(spec.block_n_samples)
    assert n_b[-1] == 2 and len(set(n_b)) > 1  # the collapsed block: I_b = 0.01
    _, local, _ = decode_blocks(_messages(out), spec.layout)
    assert (local <= np.array(n_b)).all()
    dec = str(tmp_path / "sp-orc-kl.parquet")
    driver.decompress(out, dec)
    enc = _table(os.path.join(out, "part-00000.parquet"))
    assert np.array_equal(_vectors(_table(dec).column("z")), _vectors(enc.column("z_debug")))


def test_per_block_budget_bytes_do_not_depend_on_backend_or_batch(synth, tmp_path):
    small, pri = _small(synth, tmp_path)
    runs = []
    for k, (backend, batch) in enumerate((("numpy", 128), ("numba", 7))):
        out = str(tmp_path / f"r{k}")
        driver.compress(
            small, pri, out, method="orc", n_samples="kl", block_bits=8.0, batch_size=batch,
            engine="local", backend=backend,
        )  # fmt: skip
        runs.append(_messages(out))
    assert runs[0] == runs[1]


def test_kl_budget_header_is_checked(synth, tmp_path):
    small, pri = _small(synth, tmp_path, n=20)
    out = str(tmp_path / "orc-kl")
    driver.compress(small, pri, out, method="orc", n_samples="kl", **FAST)
    for key, value, match in (
        ("block_n_samples", [32, 32, 2], r"block_n_samples = \[32, 32, 2\] does not match"),
        ("message_codec_version", 3, "n_samples = 'kl' needs message_codec_version >= 4"),
        ("kl_max_bits", "20", "kl_max_bits = '20' must be an integer"),
        ("kl_max_bits", 30, "kl samples max_bits must be an integer in"),
        ("n_samples", "many", "n_samples = 'many' must be an integer >= 1 or 'kl'"),
    ):
        d = str(tmp_path / f"bad-{key}-{value}")
        shutil.copytree(out, d)
        _edit_header(d, **{key: value})
        with pytest.raises(FormatError, match=match):
            driver.decompress(d, str(tmp_path / "x.parquet"))


def test_bad_budgets_are_refused_before_any_work(synth, tmp_path):
    small, pri = _small(synth, tmp_path, n=20)
    for kw, match in (
        (dict(n_samples="klx"), "n_samples must be an integer N >= 1 or 'kl'"),
        (dict(n_samples=0), "n_samples must be an integer N >= 1 or 'kl'"),
        (dict(n_samples="kl", kl_max_bits=25), "kl samples max_bits"),
        (dict(n_samples="kl", kl_offset_bits=float("nan")), "offset_bits = nan must be finite"),
    ):
        with pytest.raises((InputError, ValueError), match=match):
            driver.compress(small, pri, str(tmp_path / "out"), method="orc", **kw, **FAST)
        assert not os.path.exists(str(tmp_path / "out"))


def test_header_message_codec_version_does_not_change_layouts_without_its_fields(
    run, synth, tmp_path
):
    """A current run with complete partitions and fixed laws whose header says message codec
    version 1, 2 or 3 decodes to the same latents (layouts without adaptive partitions, laws
    or per-block widths code exactly as then); so does an orc run. Runs written by the older
    code itself are decoded in tests/test_old_runs.py."""
    lat, pri = synth
    small, _ = _small(synth, tmp_path)
    orc = str(tmp_path / "orc")
    driver.compress(small, pri, orc, method="orc", n_samples=512, **FAST)
    plain = str(tmp_path / "plain")
    driver.compress(small, pri, plain, partition="complete", laws="fixed", **FAST)
    for src in (plain, orc):
        ref = str(tmp_path / "ref.parquet")
        driver.decompress(src, ref)
        for version in (1, 2, 3):
            d = str(tmp_path / f"v{version}-{os.path.basename(src)}")
            shutil.copytree(src, d)
            _edit_header(d, message_codec_version=version)
            out = str(tmp_path / f"v{version}.parquet")
            driver.decompress(d, out)
            assert np.array_equal(
                _vectors(_table(out).column("z")), _vectors(_table(ref).column("z"))
            )
            os.remove(out)
        os.remove(ref)


def test_cli_n_samples_kl(synth, tmp_path, capsys):
    small, pri = _small(synth, tmp_path, n=20)
    out = str(tmp_path / "cli")
    from recray.plan import kl_sample_bits

    args = ["compress", small, "--prior", pri, "--out", out, "--block-bits", "8"]
    args += ["--engine", "local"]
    assert main(args + ["--method", "orc", "--n-samples", "kl", "--kl-offset-bits", "1"]) == 0
    hdr, spec = _spec(out)
    assert hdr["n_samples"] == "kl" and hdr["kl_offset_bits"] == 1.0
    assert spec.layout.block_raw_bits == kl_sample_bits(spec.plan, 1.0)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(args + ["--n-samples", "lots"])
    assert "neither an integer N >= 1 nor 'kl'" in capsys.readouterr().err
