"""Lossless coding of 8-bit images under per-pixel categorical probabilities.

One message per image: the 784 pixel levels range-coded (``constriction.stream.queue``)
under ``Categorical(perfect=False)`` with that image's table ``probs[i]`` (784, 256), then
``check_bits`` bits of the image's CRC-32 under a uniform law. The compressed 32-bit words
are written little-endian and the trailing zero bytes of the last word are dropped (the
decoder pads them back), so ``len(message)`` is the honest size.

Guarantees and requirements (encode and decode must share all of these):

* the **same probability tables**, bit for bit (for the VAE, the integer tables of
  :class:`recray.models.intdec.IntDecoder`, passed through
  :func:`~recray.models.intdec.coder_probabilities`, give that on any machine for the same
  ``z`` rows and model file; the float tables of :func:`recray.models.vae.
  pixel_probabilities` only on the same torch build and CPU code paths), the same
  ``check_bits`` and the same constriction quantization (``Categorical(perfect=False)``,
  constriction 0.4/0.5 range coder defaults);
* then ``decode_pixels(encode_pixels(x, p), p) == x`` exactly, for every image and every
  table (every level keeps a nonzero quantized probability, so any image can be coded).

What decoding detects: a message that the range decoder rejects or does not end where the
encoder ended (``maybe_exhausted``), and, with ``check_bits = k > 0``, any other mismatch
between the decoded image and the encoded one with probability ``1 - 2^-k`` (this includes
a decoder whose tables differ from the encoder's, which no CRC over the message bytes can
see). Each such failure raises :class:`~recray.errors.MessageError` naming the image. The
run format's per-row CRC separately guards the stored bytes.

Measured on MNIST test images (VAE tables, single bit flips): ``maybe_exhausted`` alone
catches ~97% of corrupted messages and ~96% of messages decoded under another image's
tables; the default ``check_bits = 8`` (8 bits per image, ~0.7% of a message) leaves at
most ~2^-8 of the rest undetected per image, so a decoder with wrong tables is caught on
any data set of more than a few images; ``check_bits = 16`` for ~2^-16 per image.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Sequence

import constriction
import numpy as np

from recray.errors import InputError, MessageError, fmt_item

PIXELS = 784
LEVELS = 256
DEFAULT_CHECK_BITS = 8
_FAMILY = constriction.stream.model.Categorical(perfect=False)


def _check_bits_ok(check_bits: int) -> int:
    if not isinstance(check_bits, int | np.integer) or not 0 <= int(check_bits) <= 23:
        raise InputError(f"check_bits must be an integer in [0, 23]; got {check_bits!r}")
    return int(check_bits)


def _check_probs(probs, n: int, pixels: int) -> np.ndarray:
    p = np.asarray(probs)
    if p.shape != (n, pixels, LEVELS):
        raise InputError(f"probs must have shape ({n}, {pixels}, {LEVELS}); got {p.shape}")
    if p.dtype != np.float64:
        raise InputError(f"probs must be float64 (the exact tables); got {p.dtype}")
    return p


def _crc_symbol(image: np.ndarray, check_bits: int) -> int:
    return zlib.crc32(image.tobytes()) & ((1 << check_bits) - 1)


def _to_bytes(words: np.ndarray) -> bytes:
    if sys.byteorder != "little":
        words = words.byteswap()
    return words.tobytes().rstrip(b"\x00")


def _to_words(message: bytes) -> np.ndarray:
    pad = (-len(message)) % 4
    words = np.frombuffer(message + b"\x00" * pad, dtype="<u4").astype(np.uint32)
    if words.size == 0:
        words = np.zeros(1, dtype=np.uint32)
    return words


def encode_pixels(
    images: np.ndarray, probs: np.ndarray, *, check_bits: int = DEFAULT_CHECK_BITS
) -> list[bytes]:
    """One message per image: ``images`` uint8 ``(n, P)`` coded under ``probs`` float64
    ``(n, P, 256)`` (``P`` pixels; 784 for MNIST). See the module's guarantees."""
    check_bits = _check_bits_ok(check_bits)
    x = np.asarray(images)
    if x.ndim != 2 or x.dtype != np.uint8:
        raise InputError(f"images must be uint8 of shape (n, pixels); got {x.dtype}{x.shape}")
    p = _check_probs(probs, x.shape[0], x.shape[1])
    out = []
    for i in range(x.shape[0]):
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(x[i].astype(np.int32), _FAMILY, np.ascontiguousarray(p[i]))
        if check_bits:
            crc = np.array([_crc_symbol(x[i], check_bits)], dtype=np.int32)
            enc.encode(crc, constriction.stream.model.Uniform(1 << check_bits))
        out.append(_to_bytes(enc.get_compressed()))
    return out


def decode_pixels(
    messages: Sequence[bytes],
    probs: np.ndarray,
    *,
    check_bits: int = DEFAULT_CHECK_BITS,
    item_ids: Sequence | None = None,
) -> np.ndarray:
    """Inverse of :func:`encode_pixels`: uint8 ``(n, P)``. Raises :class:`MessageError`
    naming the image (its ``item_ids`` entry, else its row) when a message is detectably
    wrong (see the module's guarantees)."""
    check_bits = _check_bits_ok(check_bits)
    n = len(messages)
    p = np.asarray(probs)
    if p.ndim != 3:
        raise InputError(f"probs must have shape ({n}, pixels, {LEVELS}); got {p.shape}")
    p = _check_probs(p, n, p.shape[1])
    if item_ids is not None and len(item_ids) != n:
        raise InputError(f"item_ids has {len(item_ids)} entries for {n} messages")
    out = np.empty((n, p.shape[1]), dtype=np.uint8)
    for i, msg in enumerate(messages):
        name = f"image {fmt_item(item_ids[i]) if item_ids is not None else i}"
        if not isinstance(msg, bytes | bytearray | memoryview):
            raise InputError(f"{name}: message must be bytes; got {type(msg).__name__}")
        try:
            dec = constriction.stream.queue.RangeDecoder(_to_words(bytes(msg)))
            sym = dec.decode(_FAMILY, np.ascontiguousarray(p[i]))
            crc = None
            if check_bits:
                crc = int(dec.decode(constriction.stream.model.Uniform(1 << check_bits), 1)[0])
        except Exception as exc:  # constriction rejects some invalid streams outright
            raise MessageError(
                f"{name}: the pixel message ({len(msg)} bytes) cannot be decoded ({exc}); it "
                "is corrupted or was coded under other probabilities"
            ) from None
        if (sym < 0).any() or (sym >= LEVELS).any():
            raise MessageError(f"{name}: the pixel message decodes to levels outside 0..255")
        img = sym.astype(np.uint8)
        if not dec.maybe_exhausted():
            raise MessageError(
                f"{name}: the pixel message does not end where its {p.shape[1]} pixels end; "
                "it is corrupted, has extra bytes, or was coded under other probabilities "
                "(another model, weights or check_bits)"
            )
        if check_bits and crc != _crc_symbol(img, check_bits):
            raise MessageError(
                f"{name}: the decoded pixels fail the {check_bits}-bit check; the message is "
                "corrupted or the decoder's probability tables differ from the encoder's "
                "(model checksum; for float tables also torch build and CPU code paths)"
            )
        out[i] = img
    return out


def encode_pixels_chunked(
    images: np.ndarray,
    z: np.ndarray,
    tables: Callable[[np.ndarray], np.ndarray],
    *,
    chunk: int = 256,
    check_bits: int = DEFAULT_CHECK_BITS,
) -> list[bytes]:
    """:func:`encode_pixels` over chunks of rows, with ``tables(z_chunk)`` giving the
    probabilities (e.g. ``functools.partial(pixel_probabilities, model)``), so memory
    stays at ``chunk`` tables (1.6 MB each for MNIST)."""
    out: list[bytes] = []
    for s in range(0, len(images), chunk):
        out += encode_pixels(images[s : s + chunk], tables(z[s : s + chunk]), check_bits=check_bits)
    return out


def decode_pixels_chunked(
    messages: Sequence[bytes],
    z: np.ndarray,
    tables: Callable[[np.ndarray], np.ndarray],
    *,
    chunk: int = 256,
    check_bits: int = DEFAULT_CHECK_BITS,
    item_ids: Sequence | None = None,
) -> np.ndarray:
    """Chunked :func:`decode_pixels` (see :func:`encode_pixels_chunked`)."""
    if len(messages) != len(z):
        raise InputError(f"{len(messages)} messages but {len(z)} latent rows")
    parts = []
    for s in range(0, len(messages), chunk):
        ids = None if item_ids is None else item_ids[s : s + chunk]
        parts.append(
            decode_pixels(
                messages[s : s + chunk],
                tables(z[s : s + chunk]),
                check_bits=check_bits,
                item_ids=ids,
            )
        )
    return np.concatenate(parts) if parts else np.empty((0, PIXELS), dtype=np.uint8)
