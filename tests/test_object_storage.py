"""Runs, latents, priors and decoded outputs on an object store: a real S3-compatible server
(moto's, started here on 127.0.0.1 and stopped here), reached through pyarrow.fs as a user's
store would be (``AWS_ENDPOINT_URL``, credentials and region from the environment).

Covered: compress from s3:// into s3://, a compress killed (SIGKILL) mid-run and resumed to
the same bytes as an uninterrupted local run, decompress and inspect of the s3:// run, and
the errors: an unsupported scheme, an unfinished run without --resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

moto_server = pytest.importorskip("moto.server")

from recray.cli.main import main  # noqa: E402
from recray.errors import FormatError, InputError  # noqa: E402
from recray.latents import synthesize  # noqa: E402
from recray.pipeline import driver  # noqa: E402

KW = dict(block_bits=8.0, batch_size=50, shard_rows=100, engine="local")
BUCKET = "recray-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free local port, the environment pointing pyarrow at it, and a
    bucket holding a small synthetic data set; stopped (and the environment restored) after
    the module."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        fs = pafs.S3FileSystem(
            endpoint_override=env["AWS_ENDPOINT_URL"],
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(BUCKET)
        local = tmp_path_factory.mktemp("s3src")
        lat, pri = synthesize(400, 12, str(local), seed=5)
        pafs.copy_files(lat, f"{BUCKET}/data/latents.parquet", destination_filesystem=fs)
        pafs.copy_files(pri, f"{BUCKET}/data/prior.json", destination_filesystem=fs)
        yield {"fs": fs, "env": env, "lat": lat, "pri": pri, "local": local}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def uri(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def _keys(fs, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` with its bytes (names relative to the prefix)."""
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path.split(prefix + "/", 1)[1]] = f.read()
    return out


def _local_files(d) -> dict[str, bytes]:
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


@pytest.fixture(scope="module")
def clean(s3, tmp_path_factory):
    """The same data coded into a local run: what every s3 run must equal, byte for byte."""
    out = str(tmp_path_factory.mktemp("clean") / "run")
    driver.compress(s3["lat"], s3["pri"], out, **KW)
    return out


def test_compress_decompress_inspect_on_s3(s3, clean, tmp_path, capsys):
    fs = s3["fs"]
    rc = main(
        [
            "compress", uri("data/latents.parquet"), "--prior", uri("data/prior.json"),
            "--out", uri("runs/a"), "--engine", "local", "--block-bits", "8",
            "--batch-size", "50", "--shard-rows", "100",
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "bits/item" in out
    assert _keys(fs, "runs/a") == _local_files(clean)  # the manifest included: same bytes
    assert not [k for k in _keys(fs, "runs") if ".ids-" in k]  # validation scratch removed

    assert main(["inspect", uri("runs/a"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 400
    assert report["bits_per_item"] == driver.inspect(clean)["bits_per_item"]

    assert main(["decompress", uri("runs/a"), "--out", uri("dec/a.parquet")]) == 0
    local = str(tmp_path / "z.parquet")
    driver.decompress(clean, local)
    with fs.open_input_file(f"{BUCKET}/dec/a.parquet") as f:
        got = pq.read_table(f)
    want = pq.read_table(local)
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert np.array_equal(
        np.stack(got.column("z").to_numpy(zero_copy_only=False)),
        np.stack(want.column("z").to_numpy(zero_copy_only=False)),
    )
    # nothing but the decoded file is left next to it (the temporary object is gone)
    assert list(_keys(fs, "dec")) == ["a.parquet"]
    # an existing output is not replaced
    with pytest.raises(InputError, match="already exists"):
        driver.decompress(uri("runs/a"), uri("dec/a.parquet"))
    with pytest.raises(InputError, match="already exists"):
        driver.compress(uri("data/latents.parquet"), uri("data/prior.json"), uri("runs/a"), **KW)


_KILLED = r"""
import sys, time
from recray.format import run as run_mod
from recray.pipeline import driver

commit = run_mod.PartCommitter.commit

def slow_commit(self, shard, table, rejects=None):
    summary = commit(self, shard, table, rejects)
    print(f"committed {shard}", flush=True)
    time.sleep(60 if shard == 1 else 0)  # the parent kills us once shard 1 is committed
    return summary

run_mod.PartCommitter.commit = slow_commit
lat, pri, out = sys.argv[1:4]
driver.compress(lat, pri, out, block_bits=8.0, batch_size=50, shard_rows=100, engine="local")
"""


def test_killed_compress_resumes_on_s3_to_the_same_bytes(s3, clean):
    fs = s3["fs"]
    out = uri("runs/killed")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, uri("data/latents.parquet"), uri("data/prior.json"), out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | s3["env"],
    )
    try:
        deadline = time.monotonic() + 120
        lines = []
        while "committed 1" not in lines and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        assert "committed 1" in lines, (lines, proc.stderr.read() if proc.poll() else "")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = _keys(fs, "runs/killed")
    # an unfinished run on an object store: its parts and resume.json, no manifest
    assert sorted(left) == ["part-00000.parquet", "part-00001.parquet", "plan.json",
                            "prior.json", "resume.json"]  # fmt: skip
    with pytest.raises(FormatError, match="not complete .*--resume"):
        driver.inspect(out)
    with pytest.raises(InputError, match="unfinished run .* pass --resume"):
        driver.compress(uri("data/latents.parquet"), uri("data/prior.json"), out, **KW)
    info = driver.compress(
        uri("data/latents.parquet"), uri("data/prior.json"), out, resume=True, **KW
    )
    assert info["resumed_shards"] == 2 and info["shards"] == 4
    assert _keys(fs, "runs/killed") == _local_files(clean)  # resume.json gone after publish


def test_unsupported_scheme_is_one_clear_line(s3, capsys):
    rc = main(["inspect", "ftp://host/run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "unsupported storage scheme 'ftp://'" in err[0] and "s3://" in err[0]
