"""32x32 RGB tiles of real photographs, offline and checksum-pinned; a CIFAR-10 loader.

CIFAR-10 cannot be downloaded on the machines recray is built on, and no package registry
ships it, so the INR codec (:mod:`recray.codecs.inr`) trains and is measured on a stand-in:
the photographs that installed wheels carry (``scikit-image``'s ``skimage/data``,
``scikit-learn``'s sample images, ``matplotlib``'s sample data), cut into non-overlapping
32x32 tiles (the CIFAR size), row-major from the top-left corner; the partial tiles at the
right and bottom edges are dropped.

* Every source file's SHA-256 is pinned in :data:`SOURCES`; a file that differs (another
  package version, a corrupted install) raises :class:`~recray.errors.FormatError` naming
  it, never silent data.
* Two sources are large and mostly black (``retina``, ``hubble_deep_field``): they are
  2x2 box-averaged first (rounded half up to uint8), so that they do not dominate the set
  (3,412 tiles in all instead of 5,506).
* Train and test are split **by source image** (:data:`TEST_SOURCES`): no test tile's photo
  is seen in training. The two motorcycle images (a stereo pair) are both in train.
* Item ids are tile indices within the split (int64, source order, then row-major).

:func:`load_cifar10` reads CIFAR-10's "python version" pickle batches for users who have
them (``data_batch_1`` .. ``data_batch_5``, ``test_batch``): a dict with ``b"data"``
``uint8 (n, 3072)`` (1024 red, then green, then blue values, each plane row-major) and
``b"labels"``, read with an unpickler that admits NumPy arrays only.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from dataclasses import dataclass

import numpy as np

from recray.errors import FormatError, InputError

TILE = 32
CHANNELS = 3


@dataclass(frozen=True)
class Source:
    """One photograph: ``name``, the ``package`` that ships it, its path inside the
    package, pinned ``sha256`` and ``downsample`` factor (1 = native resolution)."""

    name: str
    package: str
    relpath: str
    sha256: str
    downsample: int = 1


SOURCES: tuple[Source, ...] = (
    Source(
        "astronaut",
        "skimage",
        "data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    Source(
        "coffee",
        "skimage",
        "data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    ),
    Source(
        "chelsea",
        "skimage",
        "data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    ),
    Source(
        "rocket",
        "skimage",
        "data/rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    ),
    Source(
        "hubble_deep_field",
        "skimage",
        "data/hubble_deep_field.jpg",
        "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
        2,
    ),
    Source(
        "motorcycle_left",
        "skimage",
        "data/motorcycle_left.png",
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    ),
    Source(
        "motorcycle_right",
        "skimage",
        "data/motorcycle_right.png",
        "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
    ),
    Source(
        "color",
        "skimage",
        "data/color.png",
        "7d2df993de2b4fa2a78e04e5df8050f49a9c511aa75e59ab3bd56ac9c98aef7e",
    ),
    Source(
        "retina",
        "skimage",
        "data/retina.jpg",
        "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
        2,
    ),
    Source(
        "ihc",
        "skimage",
        "data/ihc.png",
        "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
    ),
    Source(
        "china",
        "sklearn",
        "datasets/images/china.jpg",
        "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
    ),
    Source(
        "flower",
        "sklearn",
        "datasets/images/flower.jpg",
        "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
    ),
    Source(
        "grace_hopper",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
    ),
)

#: Sources of the test split; every other source is training data.
TEST_SOURCES = ("chelsea", "coffee")
SPLITS = ("train", "test")
#: Tiles per split with the pinned sources (checked on load).
SPLIT_SIZES = {"train": 3070, "test": 342}


def source_path(src: Source) -> str:
    """Where the installed package keeps ``src`` (the package must be installed:
    ``pip install recray[inr]``)."""
    try:
        mod = __import__(src.package)
    except ImportError:
        pip = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(src.package, src.package)
        raise InputError(
            f"tile source {src.name!r} ships in the package {pip!r}, which is not installed; "
            f"pip install {pip} (or recray[inr])"
        ) from None
    return os.path.join(os.path.dirname(mod.__file__), src.relpath)


def read_source(src: Source, path: str | None = None) -> np.ndarray:
    """The photograph as uint8 ``(H, W, 3)`` after its SHA-256 is checked (and the 2x2 box
    average of ``downsample = 2`` sources). Raises :class:`FormatError` naming the file."""
    from PIL import Image

    path = path or source_path(src)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise FormatError(f"tile source {src.name!r} ({path}) cannot be read: {exc}") from None
    got = hashlib.sha256(raw).hexdigest()
    if got != src.sha256:
        raise FormatError(
            f"tile source {src.name!r} ({path}) has SHA-256 {got}, expected {src.sha256}: "
            "another package version or a corrupted file; the tiles would differ"
        )
    import io

    with Image.open(io.BytesIO(raw)) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    f = src.downsample
    if f > 1:
        h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
        s = a[:h, :w].astype(np.int64).reshape(h // f, f, w // f, f, 3).sum(axis=(1, 3))
        a = ((2 * s + f * f) // (2 * f * f)).astype(np.uint8)  # mean, rounded half up
    return a


def cut_tiles(image: np.ndarray) -> np.ndarray:
    """Non-overlapping ``TILE x TILE`` tiles, row-major: uint8 ``(n, 32, 32, 3)``."""
    h, w = image.shape[0] // TILE, image.shape[1] // TILE
    a = image[: h * TILE, : w * TILE]
    return np.ascontiguousarray(
        a.reshape(h, TILE, w, TILE, CHANNELS).transpose(0, 2, 1, 3, 4).reshape(-1, TILE, TILE, 3)
    )


@dataclass(frozen=True)
class Tiles:
    """A split: ``images`` uint8 ``(n, 32, 32, 3)``, ``source`` (n,) index into
    ``sources`` (names), ``position`` (n, 2) tile row and column in its photo."""

    images: np.ndarray
    source: np.ndarray
    position: np.ndarray
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])


@functools.lru_cache(maxsize=4)
def _load(split: str) -> Tiles:
    names = [s.name for s in SOURCES if (s.name in TEST_SOURCES) == (split == "test")]
    images, source, pos = [], [], []
    for k, name in enumerate(names):
        src = next(s for s in SOURCES if s.name == name)
        img = read_source(src)
        t = cut_tiles(img)
        w = img.shape[1] // TILE
        images.append(t)
        source.append(np.full(len(t), k, np.int64))
        r = np.arange(len(t))
        pos.append(np.stack([r // w, r % w], axis=1))
    out = Tiles(np.concatenate(images), np.concatenate(source), np.concatenate(pos), tuple(names))
    if len(out) != SPLIT_SIZES[split]:
        raise FormatError(
            f"tile split {split!r} has {len(out)} tiles, expected {SPLIT_SIZES[split]}"
        )
    out.images.setflags(write=False)
    return out


def load_tiles(split: str, limit: int | None = None) -> Tiles:
    """The ``split`` (``"train"`` or ``"test"``), its first ``limit`` tiles if given."""
    if split not in SPLITS:
        raise InputError(f"tile split {split!r} is unknown; use one of {SPLITS}")
    t = _load(split)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be >= 1; got {limit}")
        t = Tiles(t.images[:limit], t.source[:limit], t.position[:limit], t.sources)
    return t


# ------------------------------------------------------------------------- CIFAR-10

_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in a protocol-2 pickle
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise FormatError(
                f"CIFAR-10 batch refers to {module}.{name}; a CIFAR batch holds only NumPy "
                "arrays, lists and bytes: refusing to unpickle it"
            )
        return super().find_class(module, name)


def read_cifar10_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images uint8 ``(n, 32, 32, 3)`` (HWC, RGB) and labels
    int64 ``(n,)``. Raises :class:`FormatError` naming the file and the field."""
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FormatError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise FormatError(f"CIFAR-10 batch {path!r} cannot be read: {exc}") from None
    if not isinstance(d, dict):
        raise FormatError(f"CIFAR-10 batch {path!r}: expected a dict, got {type(d).__name__}")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise FormatError(f"CIFAR-10 batch {path!r}: missing field 'data' or 'labels'")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * TILE * TILE:
        raise FormatError(
            f"CIFAR-10 batch {path!r}: field 'data' must be uint8 (n, 3072); got "
            f"{data.dtype} {data.shape}"
        )
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],) or (labels < 0).any() or (labels > 9).any():
        raise FormatError(
            f"CIFAR-10 batch {path!r}: field 'labels' must hold {data.shape[0]} labels in 0..9"
        )
    images = data.reshape(-1, 3, TILE, TILE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_cifar10(directory: str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from the extracted ``cifar-10-batches-py`` directory: ``"train"`` =
    ``data_batch_1..5``, ``"test"`` = ``test_batch``."""
    if split not in SPLITS:
        raise InputError(f"CIFAR-10 split {split!r} is unknown; use one of {SPLITS}")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [read_cifar10_batch(os.path.join(directory, n)) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
