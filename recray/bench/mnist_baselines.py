"""Classical lossless baselines for 8-bit MNIST: bytes per image, per image coded alone.

* ``png``: Pillow, greyscale 28x28, ``optimize=True, compress_level=9``;
* ``webp``: Pillow WebP lossless, ``lossless=True, quality=100, method=6``;
* ``lzma_xz``: ``lzma.compress(raw 784 bytes, preset=9 | PRESET_EXTREME)`` (the .xz
  container, self-describing, as a file would hold it; dictionary 64 KiB instead of the
  preset's 64 MiB, which gives the same sizes for 784-byte inputs, 200x faster);
* ``lzma_raw``: the same LZMA2 stream without the container (``FORMAT_RAW``): what the
  compressor itself pays per image;
* ``lzma_xz_whole_set`` (reference, not per image): the whole set's raw pixels
  concatenated and compressed at once, divided by ``n`` — it shares statistics across
  images, which a per-image codec cannot.

Every per-image file is decoded again and compared with the input (the numbers are of
lossless files only). Bits per image = 8 x bytes; bits per pixel (dim) = that / 784.
"""

from __future__ import annotations

import io
import lzma
from dataclasses import dataclass

import numpy as np
from PIL import Image

from recray.errors import InputError

PIXELS = 784
_LZMA_PRESET = 9 | lzma.PRESET_EXTREME
# Per image, the preset's 64 MiB dictionary only costs time (an image is 784 bytes): a
# 64 KiB dictionary gives byte-for-byte the same sizes (checked) and is ~200x faster.
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": _LZMA_PRESET, "dict_size": 1 << 16}]


@dataclass(frozen=True)
class BaselineResult:
    name: str
    n_images: int
    total_bytes: int

    @property
    def bits_per_image(self) -> float:
        return 8.0 * self.total_bytes / self.n_images

    @property
    def bits_per_pixel(self) -> float:
        return self.bits_per_image / PIXELS


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG", optimize=True, compress_level=9)
    return buf.getvalue()


def _webp(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="WEBP", lossless=True, quality=100, method=6)
    return buf.getvalue()


def _decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


def _lzma_xz(img: np.ndarray) -> bytes:
    return lzma.compress(img.tobytes(), format=lzma.FORMAT_XZ, filters=_FILTERS)


def _lzma_raw(img: np.ndarray) -> bytes:
    return lzma.compress(img.tobytes(), format=lzma.FORMAT_RAW, filters=_FILTERS)


def mnist_baselines(images) -> dict[str, BaselineResult]:
    """Bytes of each baseline over ``images`` (uint8, (n, 784) or (n, 28, 28))."""
    x = np.asarray(images)
    if x.ndim == 2 and x.shape[1] == PIXELS:
        x = x.reshape(-1, 28, 28)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8 or x.shape[0] == 0:
        raise InputError(
            f"images must be uint8 (n, 784) or (n, 28, 28), n > 0; got {x.dtype}{x.shape}"
        )
    n = x.shape[0]
    totals = dict.fromkeys(("png", "webp", "lzma_xz", "lzma_raw"), 0)
    for i in range(n):
        img = np.ascontiguousarray(x[i])
        for name, enc in (("png", _png), ("webp", _webp)):
            data = enc(img)
            if not np.array_equal(_decode_image(data), img):
                raise RuntimeError(f"image {i}: {name} did not decode losslessly")
            totals[name] += len(data)
        xz = _lzma_xz(img)
        raw = _lzma_raw(img)
        if (
            lzma.decompress(xz) != img.tobytes()
            or lzma.decompress(raw, format=lzma.FORMAT_RAW, filters=_FILTERS) != img.tobytes()
        ):
            raise RuntimeError(f"image {i}: lzma did not decode losslessly")
        totals["lzma_xz"] += len(xz)
        totals["lzma_raw"] += len(raw)
    out = {k: BaselineResult(k, n, v) for k, v in totals.items()}
    whole = lzma.compress(np.ascontiguousarray(x).tobytes(), preset=_LZMA_PRESET)
    out["lzma_xz_whole_set"] = BaselineResult("lzma_xz_whole_set", n, len(whole))
    return out


def format_table(results: dict[str, BaselineResult]) -> str:
    lines = ["| baseline | bytes/image | bits/image | bits/pixel |", "| --- | ---: | ---: | ---: |"]
    for r in results.values():
        lines.append(
            f"| {r.name} | {r.total_bytes / r.n_images:.1f} | {r.bits_per_image:.1f} "
            f"| {r.bits_per_pixel:.3f} |"
        )
    return "\n".join(lines)
