"""``recray codec mnist``: exact round trips across processes, and the errors a user meets
(corrupted message, other model weights) named by image."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import rehash_part

pytest.importorskip("torch")

from recray.codecs import mnist  # noqa: E402
from recray.data.mnist import load_mnist  # noqa: E402
from recray.errors import FormatError, MessageError  # noqa: E402
from recray.models.vae import DEFAULT_WEIGHTS  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mnist") / "run")
    info = mnist.compress(out, limit=N, method="sp-pfr", block_bits=32, engine="local")
    assert info["images"] == N
    return out, info


def test_round_trip_is_exact_in_another_process(run, tmp_path):
    out, info = run
    dec = str(tmp_path / "dec")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_WAIT_POLICY="PASSIVE")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "recray",
            "codec",
            "mnist",
            "decompress",
            out,
            "--out",
            dec,
            "--verify",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "identical to the source" in r.stdout
    with np.load(os.path.join(dec, "images.npz")) as z:
        ids, images = z["ids"], z["images"]
    src, _ = load_mnist("test", flat=False)
    assert ids.tolist() == list(range(N))
    assert images.dtype == np.uint8 and np.array_equal(images, src[:N])


def test_bitrate_is_the_bytes_written_and_near_the_elbo(run):
    out, info = run
    payload = sum(
        len(m)
        for p in sorted(os.listdir(out))
        if p.endswith(".parquet")
        for m in pq.read_table(os.path.join(out, p), columns=["message"])["message"].to_pylist()
    )
    assert info["bits_per_image"] == pytest.approx(8 * payload / N)
    # one message per image: REC latent + pixels, within a few percent of KL + pixel ideal
    ideal = info["kl_bits_per_image"] + info["pixel_ideal_bits_per_image"]
    assert ideal < info["bits_per_image"] < 1.03 * ideal
    # the pixel part shares the latent message's coder: no second termination
    assert info["bits_per_image"] < info["latent_only_bits_per_image"] + (
        info["pixel_ideal_bits_per_image"] + 8
    )


def test_corrupted_message_names_the_image(run, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(run[0], d)
    part = "part-00000.parquet"
    t = pq.read_table(os.path.join(d, part))
    msgs = t.column("message").to_pylist()
    msgs[7] = msgs[7][:10] + bytes([msgs[7][10] ^ 0x10]) + msgs[7][11:]
    t = t.set_column(t.schema.get_field_index("message"), "message", pa.array(msgs, pa.binary()))
    pq.write_table(t, os.path.join(d, part))
    rehash_part(d, part)
    with pytest.raises(MessageError, match="image 7: its message fails its CRC"):
        mnist.decompress(d, str(tmp_path / "dec"))
    assert not os.path.exists(tmp_path / "dec")


def test_other_model_weights_are_refused(run, tmp_path):
    w = tmp_path / "mnist_vae.npz"
    with np.load(DEFAULT_WEIGHTS) as z:
        arrays = {k: z[k].copy() for k in z.files}
    first = sorted(arrays)[0]
    arrays[first].flat[0] += 1e-3
    np.savez(w, **arrays)
    card = json.load(open(str(DEFAULT_WEIGHTS).replace(".npz", ".json")))
    card["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (tmp_path / "mnist_vae.json").write_text(json.dumps(card))
    with pytest.raises(FormatError, match="coded with model weights of SHA-256"):
        mnist.decompress(run[0], str(tmp_path / "dec"), weights=str(w))


def test_demo_prints_the_table_rows_it_measured(tmp_path, capsys):
    from recray.cli.main import main

    code = main(
        [
            "codec",
            "mnist",
            "demo",
            "--limit",
            "6",
            "--engine",
            "local",
            "--workdir",
            str(tmp_path),
            "--json",
            str(tmp_path / "t.json"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for row in (
        "-ELBO",
        "ORC 16-bit blocks, N=2^16, collapsed spread",
        "SP-PFR 32-bit blocks",
        "png",
        "webp",
    ):
        assert row in out
    rows = json.load(open(tmp_path / "t.json"))["rows"]
    assert rows[1]["verified_round_trip"] is True


def test_other_torch_build_is_refused(run, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "__version__", "9.9.9+cpu")
    with pytest.raises(FormatError, match=r"coded with torch .* install torch=="):
        mnist.decompress(run[0], str(tmp_path / "dec"))
