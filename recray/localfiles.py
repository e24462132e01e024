"""Files on this machine's disk that must appear whole or not at all: caches, training
checkpoints, shipped weights, generated data sets and command-line reports.

Runs and latents on any filesystem go through :mod:`recray.format.storage`; this module
holds the one local idiom behind everything else: write a temporary sibling, then
``os.replace`` it over the target (atomic on POSIX and Windows). Each writer gets its own
temporary name, so concurrent writers never mix their bytes: the last rename wins. Also
the one way to hash such a file and check it against what a card records
(:func:`file_sha256`, :func:`verified_sha256`). No third-party imports, so the algorithm
core can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator

from recray.errors import FormatError


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` to write to; when the block ends without an error
    the file there replaces ``path`` whole, and when it raises (or the writer never created
    it) ``path`` is left as it was and the temporary file is removed.

    The temporary name ends in ``.tmp``: libraries that add their own suffix to a name
    (``np.savez``) must be given an open file instead."""
    path = os.fspath(path)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_replacing(path: str | os.PathLike, data: bytes | str, *, fsync: bool = False) -> None:
    """Make the local file ``path`` hold ``data`` (text is written as UTF-8), whole or not
    at all; ``fsync``: flush it to the disk before the rename (weights and checkpoints, which
    must survive a power cut, not just a killed process)."""
    raw = data.encode() if isinstance(data, str) else data
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of the file at ``path``, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_sha256(path: str | os.PathLike, want, what: str, remedy: str) -> str:
    """:func:`file_sha256` of ``path`` after checking that it is ``want`` (what the file's
    card records); else a :class:`~recray.errors.FormatError` naming ``what`` (e.g. ``model
    weights 'x.npz'``) and saying ``remedy``."""
    if not os.path.exists(path):
        raise FormatError(f"{what} does not exist")
    sha = file_sha256(path)
    if sha != want:
        raise FormatError(
            f"{what} has SHA-256 {sha}, but its card records {want}: the file is corrupted "
            f"or from another build; {remedy}"
        )
    return sha
