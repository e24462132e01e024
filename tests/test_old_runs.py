"""Runs written by older recray code decode today to the latents their encoder chose.

The runs in ``tests/data/old_runs`` were written by the code of earlier commits (its
README names the commit and command of each): RNG recipe 1 with message codec 1, message
codecs 2 (adaptive partitions), 3 (learned laws) and 4 (per-block raw widths), and an MNIST
codec version 1 run. Nothing here edits a current run to look old.
"""

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from recray.errors import MessageError
from recray.format.run import Run
from recray.latents.io import Prior
from recray.pipeline import driver
from recray.pipeline.codec import decode_latents

OLD = os.path.join(os.path.dirname(__file__), "data", "old_runs")

#: run -> what its header says (so that a fixture rewritten by new code is noticed)
LATENT_RUNS = {
    "rng1-msg1": dict(version=1, rng_version=1, message_codec_version=1, method="sp-pfr"),
    "msg2-adaptive": dict(version=2, rng_version=2, message_codec_version=2, method="sp-pfr"),
    "msg3-laws": dict(version=2, rng_version=2, message_codec_version=3, method="sp-orc"),
    "msg4-orc-kl": dict(version=2, rng_version=2, message_codec_version=4, method="orc"),
}


def _vectors(col):
    return np.stack(col.to_numpy(zero_copy_only=False)).astype(np.float64)


def _copy(name, tmp_path):
    """A private copy: nothing is written next to the fixtures."""
    dst = str(tmp_path / name)
    shutil.copytree(os.path.join(OLD, name), dst)
    return dst


def _encoder_rows(run_dir):
    """The run, its ids and messages, and the encoder's latents (``z_debug``)."""
    run = Run.open(run_dir)
    tables = [pq.read_table(p) for p in run.part_paths()]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    msgs = [m for t in tables for m in t.column("message").to_pylist()]
    z = np.concatenate([_vectors(t.column("z_debug")) for t in tables])
    return run, ids, msgs, z


def _spec(run, **header_changes):
    prior = Prior.from_dict(json.loads(run.prior_json), where="run prior")
    return driver.spec_from_header(run.header | header_changes, prior)


@pytest.mark.parametrize("name", sorted(LATENT_RUNS))
def test_old_latent_run_decodes_to_the_encoders_latents(name, tmp_path):
    run_dir = _copy(name, tmp_path)
    run, ids, msgs, z_enc = _encoder_rows(run_dir)
    for key, want in LATENT_RUNS[name].items():
        assert run.header[key] == want, key
    out = str(tmp_path / "z.parquet")
    r = driver.decompress(run_dir, out)
    assert r == {"items": len(ids), "out": out, "rejects": 0}
    dec = pq.read_table(out)
    assert dec.column("id").to_pylist() == ids
    assert np.array_equal(_vectors(dec.column("z")), z_enc)  # bit for bit
    # what each fixture is there for really occurs in it
    part = pq.read_table(run.part_paths()[0])
    if name == "msg2-adaptive":
        assert sum(part.column("adapted_blocks").to_pylist()) > 0
    if name == "msg3-laws":
        assert run.header["plan"]["version"] == 2 and run.header["plan"]["index_laws"]
    if name == "msg4-orc-kl":
        assert run.header["n_samples"] == "kl" and len(set(run.header["block_n_samples"])) > 1


@pytest.mark.parametrize("name", sorted(LATENT_RUNS))
def test_negative_control_the_other_rng_recipe_gives_other_latents(name):
    """The comparison above has power: decoding under the other RNG recipe (other keys,
    another inverse CDF) gives other latents from the same messages."""
    run, ids, msgs, z_enc = _encoder_rows(os.path.join(OLD, name))
    other = 3 - run.header["rng_version"]
    ids = np.asarray(ids, dtype=np.int64) if run.header["id_type"] == "int" else ids
    z = decode_latents(ids, msgs, _spec(run))
    assert np.array_equal(z, z_enc)
    z_other = decode_latents(ids, msgs, _spec(run, rng_version=other))
    assert not np.array_equal(z_other, z_enc)


def test_old_mnist_codec_version_1_run_decodes_to_its_images_and_latents(tmp_path):
    torch = pytest.importorskip("torch")
    from recray.codecs import mnist
    from recray.errors import FormatError
    from recray.format.messages import read_head
    from recray.pipeline.codec import decode_indices

    run_dir = _copy("mnist-v1", tmp_path)
    want = np.load(os.path.join(OLD, "mnist-v1.expected.npz"))
    run = Run.open(run_dir)
    codec = run.header["codec"]
    assert codec["version"] == 1 and run.header["rng_version"] == 1
    assert run.header["message_codec_version"] == 1
    # the latents: the indices at the head of each message regenerate the encoder's z
    t = pq.read_table(run.part_paths()[0])
    spec = _spec(run)
    heads = [read_head(m, spec.layout) for m in t.column("message").to_pylist()]
    ids = t.column("id").to_numpy()
    z = decode_indices(
        ids, np.stack([h.bins for h in heads]), np.stack([h.local for h in heads]), spec
    )
    assert np.array_equal(ids, want["ids"]) and np.array_equal(z, want["z"])
    if torch.__version__ != codec["torch_version"]:
        # version 1 tables are float64 torch output: another build is refused, by name
        with pytest.raises(FormatError, match="install torch=="):
            mnist.decompress(run_dir, str(tmp_path / "dec"))
        pytest.skip(f"the run's pixels decode under torch {codec['torch_version']} only")
    try:
        r = mnist.decompress(run_dir, str(tmp_path / "dec"))
    except MessageError as exc:
        # the same torch build on another CPU family (this decodes on the AMD EPYC box; on
        # an Intel Xeon its kernels give other float64 tables): refused, naming the image
        # and why, never decoded to other pixels
        assert "image 0:" in str(exc) and "CPU kernels that wrote it" in str(exc)
        pytest.xfail("version 1 float tables do not reproduce on this CPU")
    got = np.load(r["out"])
    assert np.array_equal(got["ids"], want["ids"])
    assert np.array_equal(got["images"], want["images"])  # lossless: the very pixels
