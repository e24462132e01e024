"""Storage: every file recray reads or writes (latents, priors, runs, decoded outputs) goes
through here, on any filesystem ``pyarrow.fs`` resolves.

A location is a local path (relative or absolute, or ``file://``) or a URI that
``pyarrow.fs.FileSystem.from_uri`` resolves: ``s3://bucket/key``, ``gs://bucket/key``,
``hdfs://host:port/path``. Object stores take their settings from the environment as
pyarrow does (for S3: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``); a resolved filesystem pickles with its settings, so Ray tasks on
other nodes reach the same store.

Commits differ by kind, and callers ask only for the guarantee they need:

* :meth:`Location.write_bytes` makes a file appear whole or not at all: on a local (or
  HDFS) filesystem it writes a temporary sibling and renames it; on an object store one
  object PUT is atomic already (the object exists only once the upload completes).
* :attr:`Location.renames`: whether a directory can be renamed into place in one step
  (local filesystems). Object stores cannot: there a run is published by writing its
  manifest last (see :mod:`recray.format.run`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recray.errors import InputError, StorageError

#: Schemes accepted besides local paths (what pyarrow.fs resolves in this build may be fewer).
SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Location:
    """A file or directory on some filesystem: ``fs`` (a ``pyarrow.fs.FileSystem``),
    ``path`` (the path inside it) and ``scheme`` (``""`` for local paths)."""

    fs: pafs.FileSystem
    path: str
    scheme: str = ""

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def renames(self) -> bool:
        """Whether a directory moves into place in one atomic step here."""
        return self.local or self.fs.type_name == "hdfs"

    @property
    def uri(self) -> str:
        """What to show the user, and what ``pyarrow`` opens again (a path, or a URI)."""
        if self.local:
            return self.path
        return f"{self.scheme}://{self.path}"

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def child(self, name: str) -> Location:
        return Location(self.fs, self.path.rstrip("/") + "/" + name, self.scheme)

    def parent(self) -> Location:
        head = self.path.rstrip("/").rsplit("/", 1)[0]
        return Location(self.fs, head or "/", self.scheme)

    def sibling(self, name: str) -> Location:
        return self.parent().child(name)

    # -- what is there
    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as exc:
            raise StorageError(f"cannot reach {self.uri!r}: {_first_line(exc)}") from None

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def size(self) -> int:
        info = self._info()
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(self.uri)
        return int(info.size)

    def listdir(self) -> list[str]:
        """Names of the entries directly below (empty when there is nothing)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except OSError as exc:
            raise StorageError(f"cannot list {self.uri!r}: {_first_line(exc)}") from None
        return sorted(i.base_name for i in infos)

    # -- reading
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def sha256(self) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def parquet(self) -> pq.ParquetFile:
        """The Parquet file here (footer read; row groups read on demand)."""
        return pq.ParquetFile(self.fs.open_input_file(self.path))

    # -- writing
    def makedirs(self) -> None:
        try:
            self.fs.create_dir(self.path, recursive=True)
        except OSError as exc:
            raise StorageError(f"cannot create {self.uri!r}: {_first_line(exc)}") from None

    def write_bytes(self, data) -> None:
        """Make this file hold ``data``, whole or not at all (see the module docstring);
        a failure (disk full, file size limit, store unreachable) leaves no file and
        raises :class:`StorageError`."""
        target = self.sibling(f".{self.name}.tmp-{uuid.uuid4().hex[:8]}") if self.renames else self
        try:
            with self.fs.open_output_stream(target.path) as f:
                f.write(data)
            if target is not self:
                self.fs.move(target.path, self.path)
        except OSError as exc:
            if target is not self:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(target.path)
            raise StorageError(
                f"cannot write {self.uri!r}: {getattr(exc, 'strerror', None) or _first_line(exc)}"
            ) from None

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_parquet(self, table: pa.Table) -> bytes:
        """Write ``table`` as Parquet here (whole or not at all); returns the file's bytes."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        self.write_bytes(data)
        return data

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path)

    def rmtree(self) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_dir(self.path)

    def move_to(self, other: Location) -> None:
        """Rename this file or directory to ``other`` (a single step where
        :attr:`renames`; a copy and a delete on an object store)."""
        self.fs.move(self.path, other.path)


def resolve(where: str) -> Location:
    """The :class:`Location` of a local path or URI; an unsupported scheme or a store that
    cannot be reached is a clear error."""
    if isinstance(where, Location):
        return where
    where = os.fspath(where)
    scheme, sep, _ = where.partition("://")
    if not sep or os.sep in scheme or not scheme.replace("+", "").isalnum():
        return Location(pafs.LocalFileSystem(), os.path.abspath(where), "")
    if scheme.lower() not in SCHEMES:
        raise InputError(
            f"{where!r}: unsupported storage scheme {scheme + '://'!r}; recray reads and "
            "writes local paths and the URIs pyarrow.fs resolves (s3://, gs://, hdfs://, "
            "file://)"
        )
    try:
        fs, path = pafs.FileSystem.from_uri(where)
    except pa.ArrowInvalid as exc:
        raise InputError(f"{where!r}: {_first_line(exc)}") from None
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(
            f"cannot reach the storage of {where!r}: {_first_line(exc)} (check the address "
            "and the credentials in the environment, e.g. AWS_ENDPOINT_URL, "
            "AWS_ACCESS_KEY_ID)"
        ) from None
    if isinstance(fs, pafs.LocalFileSystem):
        return Location(fs, os.path.abspath(path), "")
    return Location(fs, path.rstrip("/"), scheme.lower())
