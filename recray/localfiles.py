"""Files on this machine's disk that must appear whole or not at all: caches, training
checkpoints, shipped weights, generated data sets and command-line reports.

Runs and latents on any filesystem go through :mod:`recray.format.storage`; this module
holds the one local idiom behind everything else: write a temporary sibling, then
``os.replace`` it over the target (atomic on POSIX and Windows). Each writer gets its own
temporary name, so concurrent writers never mix their bytes: the last rename wins. No
third-party imports, so the algorithm core can use it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator


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
