"""Integer decoder tables of the MNIST VAE: golden tables, exact integer invariants, the
range coder's use of them, and their cost against the float tables."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from recray.codecs.pixels import decode_pixels, encode_pixels
from recray.errors import FormatError, InputError
from recray.models import intdec

K = np.arange(32)
GOLDEN_Z = np.stack(
    [
        np.zeros(32),
        (K - 15.5) / 8,
        ((K * 5) % 11 - 5) / 4.0,
        np.where(K % 3 == 0, 1.5, -0.75),
        np.where(K % 2 == 0, 40.0, -40.0),  # beyond the latent's clip
    ]
)  # exact dyadic values: the inputs cannot differ between machines
GOLDEN_SHA256 = [
    "1b0e1c699b72aa82df434ce70f7a0346a8d0ecc38832fde98bdc7b1001d4fc55",
    "2c5e36d676d78911f5aa30636a88cea4741bfbcf384f389df88e2f8bb8306cc5",
    "6f71b75086076fff78c4b416baa4af3146dd12b3759c5c6b44c1d37bc5d66234",
    "b5dacaa304ac03ff67e60b154e0ce5b2770683edefb81eb642f263d363f8709a",
    "23205fe8348f7b153f85e1cbee3b3e61e170187f25159e0951c298cedaf470fe",
]
GOLDEN_PIXEL_406 = [  # levels 100..103, 254, 255 of pixel 406
    [19475, 19622, 19036, 19912, 4789707, 3744934],
    [36681, 37669, 38676, 39701, 1871527, 867769],
    [34653, 34917, 35180, 35439, 3408091, 2233319],
    [55, 54, 54, 52, 403, 234],
    [0, 0, 0, 0, 0, 257],
]
SHIPPED_SHA256 = "3be078274f870efbdbb9ccd52c7e9ec58a97d142ef97dadee332dfed6c1a2704"


@pytest.fixture(scope="module")
def dec():
    return intdec.load_int_decoder(intdec.DEFAULT_INT_DECODER)


def _digest(table: np.ndarray) -> str:
    return hashlib.sha256(table.astype("<i8").tobytes()).hexdigest()


def test_golden_tables(dec):
    """Any change of the arithmetic or of the shipped model shows up here, not as a file
    that no longer decodes."""
    assert dec.checksum == SHIPPED_SHA256
    w = dec.tables(GOLDEN_Z)
    assert [_digest(t) for t in w] == GOLDEN_SHA256
    assert w[:, 406, [100, 101, 102, 103, 254, 255]].tolist() == GOLDEN_PIXEL_406


def test_compiled_coder_tables_equal_the_numpy_path(dec):
    """The fused Numba pass gives the range coder exactly the NumPy path's float64 tables,
    on ordinary latents, on latents far out (every clip of the lookups hit) and on the
    golden rows; a table built with one edge off is caught (negative control)."""
    rng = np.random.default_rng(11)
    z = np.concatenate([GOLDEN_Z, rng.standard_normal((5, 32)), rng.standard_normal((4, 32)) * 40])
    want = intdec.coder_probabilities(dec.tables(z))
    got = dec.coder_tables(z)
    assert got.dtype == np.float64 and got.flags.c_contiguous
    assert np.array_equal(got, want)
    from recray.models.intdec_kernel import coder_tables

    w1, means, inv = dec.parameters(z[:2])
    off = np.empty((2, 784, 256))
    coder_tables(dec.logistic, w1, means, inv, intdec.EDGES + 1, off)
    assert not np.array_equal(off, want[:2])


def test_table_chunks_are_the_tables_of_their_rows(dec):
    """The network run once for all rows, the tables in chunks: every chunk equals
    ``coder_tables`` of its own rows (chunks of 3 over 7 rows: a short last chunk), and a
    chunking that shifted rows would be caught (negative control)."""
    rng = np.random.default_rng(5)
    z = np.concatenate([GOLDEN_Z, rng.standard_normal((2, 32))])
    chunks = list(dec.coder_table_chunks(z, 3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    for k, c in enumerate(chunks):
        assert np.array_equal(c, dec.coder_tables(z[3 * k : 3 * k + 3]))
    assert not np.array_equal(chunks[1], dec.coder_tables(z[2:5]))
    assert dec.coder_tables(z[:0]).shape == (0, 784, 256)


def test_float64_matmul_of_the_layers_is_the_integer_matmul(dec):
    """Every layer's product through float64 BLAS equals NumPy's integer matmul, at the
    largest inputs the format allows (activations at their clip, ``|zq|`` at its clip)."""
    rng = np.random.default_rng(2)
    for i, w in enumerate(dec.weights):
        top = intdec.ACT_MAX if i else intdec.Z_CLIP << intdec.Z_FRAC
        a = rng.integers(0 if i else -top, top + 1, size=(9, w.shape[0]))
        a[0] = top * np.sign(w[:, 0]).astype(np.int64)  # the largest sum of column 0
        assert np.array_equal(intdec._exact_matmul(a, w), np.matmul(a, w))


def test_tables_are_exact_integers_independent_of_the_batch(dec):
    z = np.random.default_rng(5).standard_normal((7, 32)) * 1.3
    w = dec.tables(z)
    assert w.dtype == np.int64 and w.shape == (7, 784, 256)
    assert w.min() >= 0 and np.all(w.sum(axis=2) == intdec.FREE)
    c = dec.cdf(z)
    assert np.all(np.diff(c, axis=2) >= 0) and c.min() >= 0 and c.max() <= intdec.FREE
    for i in range(7):
        assert np.array_equal(dec.tables(z[i : i + 1])[0], w[i])
    order = [6, 2, 0, 5, 1, 4, 3]
    assert np.array_equal(dec.tables(z[order], chunk=3), w[order])
    with pytest.raises(InputError, match="float64"):
        dec.tables(z.astype(np.float32))
    with pytest.raises(InputError, match="shape"):
        dec.tables(z[:, :5])
    bad = z.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="row 3"):
        dec.tables(bad)


def test_shipped_model_is_the_quantized_float_model(dec):
    """Weights, biases and shifts are exact functions of the float weights (rint of
    float32 values times powers of two); the lookup tables came from ``exp`` on the build
    machine, whose last bits other libms may round otherwise: they are shipped as data, and
    a rebuild here agrees with them to one unit."""
    pytest.importorskip("torch")
    from recray.models.vae import load_mnist_vae

    model = load_mnist_vae()
    card = json.loads(intdec.DEFAULT_INT_DECODER.with_suffix(".json").read_text())
    assert card["source_weights_sha256"] == model.model_checksum
    assert card["weights_sha256"] == dec.checksum
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    arrays = intdec.quantize_decoder(state)
    for i in range(3):
        assert np.array_equal(arrays[f"w{i}"], dec.weights[i])
        assert np.array_equal(arrays[f"b{i}"], dec.biases[i])
        assert np.array_equal(arrays[f"shift{i}"], dec.shifts[i])
    assert np.abs(arrays["logistic"] - dec.logistic).max() <= 1
    assert np.abs(arrays["inv_scale"] - dec.inv_scale).max() <= 1


def test_corrupted_or_foreign_decoder_is_refused(tmp_path):
    p = tmp_path / "mnist_vae_intdec.npz"
    shutil.copy(intdec.DEFAULT_INT_DECODER, p)
    shutil.copy(intdec.DEFAULT_INT_DECODER.with_suffix(".json"), p.with_suffix(".json"))
    assert intdec.load_int_decoder(p).checksum == SHIPPED_SHA256
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="SHA-256 .* but its card records"):
        intdec.load_int_decoder(p)
    with np.load(intdec.DEFAULT_INT_DECODER) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["int_format"] = np.array(99)
    intdec.save_int_decoder(arrays, p)
    with pytest.raises(FormatError, match="format 99"):
        intdec.load_int_decoder(p)
    arrays["int_format"] = np.array(intdec.INT_FORMAT)
    arrays["logistic"] = arrays["logistic"][::-1].copy()  # not a CDF
    intdec.save_int_decoder(arrays, p)
    with pytest.raises(FormatError, match="out of the ranges"):
        intdec.load_int_decoder(p)


def test_range_coder_uses_the_integer_table_exactly(dec):
    """constriction codes level v with (w_v + 1) / 2^24: a level of weight 0 costs exactly
    24 bits, the full-weight level almost nothing; and real images round-trip."""
    one = np.zeros((1, 784, 256), dtype=np.int64)
    one[..., 0] = intdec.FREE
    p = intdec.coder_probabilities(one)
    assert np.array_equal(p, one.astype(np.float64)) and p.sum() == 784 * intdec.FREE
    cheap = encode_pixels(np.zeros((1, 784), np.uint8), p, check_bits=0)[0]
    dear = encode_pixels(np.full((1, 784), 255, np.uint8), p, check_bits=0)[0]
    assert len(cheap) <= 4
    assert 784 * 24 <= 8 * len(dear) <= 784 * 24 + 64
    assert np.array_equal(decode_pixels([dear], p, check_bits=0), np.full((1, 784), 255))
    z = np.random.default_rng(2).standard_normal((4, 32))
    w = dec.tables(z)
    x = np.random.default_rng(3).integers(0, 256, (4, 784)).astype(np.uint8)
    x[:, :400] = 0
    msgs = encode_pixels(x, intdec.coder_probabilities(w), check_bits=0)
    assert np.array_equal(decode_pixels(msgs, intdec.coder_probabilities(w), check_bits=0), x)
    ideal = intdec.ideal_bits(w, x)
    real = 8.0 * np.array([len(m) for m in msgs])
    assert np.all(real >= ideal - 1e-9) and np.all(real - ideal < 40)


def test_integer_tables_cost_about_what_the_float_tables_cost(dec):
    pytest.importorskip("torch")
    from recray.bench.intdec import compare_tables

    r = compare_tables(limit=12)
    assert r["images"] == 12 and r["decoder_sha256"] == SHIPPED_SHA256
    assert 600 < r["pixel_bits_per_image_int_tables"] < 1600
    assert abs(r["change_bits_per_image"]) < 0.5  # measured on 10k: see the card
