"""Run directories: what ``recray compress`` writes and ``decompress``/``inspect`` read.

A run directory holds

* ``plan.json``: the run header: format name and version, the codec plan (blocks, bits),
  method, seed, budgets, the prior's checksum, the id type, and the versions of the RNG
  recipe and the message codec;
* ``prior.json``: the coding prior (so a run decodes on its own; its checksum must match);
* ``part-NNNNN.parquet``: one row per item: ``id``, ``message`` (binary), ``nbits``
  (``8 * len(message)``), ``crc32`` (of ``message``), and diagnostics ``kl_bits``,
  ``steps``, ``fallback_blocks`` (and ``z_debug`` when asked for);
* ``manifest.json``, written **last**: every part with its rows, bytes and SHA-256, the
  number of items and payload bytes. A directory without it is not a complete run.

A run is written under a temporary sibling name and renamed into place in one step, so an
interrupted run never looks complete and a failed one leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recray.errors import FormatError, InputError, MessageError, fmt_item

RUN_FORMAT = "recray-run"
RUN_FORMAT_VERSION = 1
MANIFEST_FORMAT = "recray-manifest"
PLAN_FILE = "plan.json"
PRIOR_FILE = "prior.json"
MANIFEST_FILE = "manifest.json"


def part_schema(id_kind: str, dim: int, debug: bool) -> pa.Schema:
    fields = [
        ("id", pa.int64() if id_kind == "int" else pa.string()),
        ("message", pa.binary()),
        ("nbits", pa.int64()),
        ("crc32", pa.uint32()),
        ("kl_bits", pa.float64()),
        ("steps", pa.int64()),
        ("fallback_blocks", pa.int32()),
    ]
    if debug:
        fields.append(("z_debug", pa.list_(pa.float64(), dim)))
    return pa.schema(fields)


def crc32_of(messages) -> np.ndarray:
    return np.fromiter((zlib.crc32(m) for m in messages), dtype=np.uint32, count=len(messages))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


class RunWriter:
    """Writes a run into a temporary directory and publishes it atomically.

    Use as a context manager: on an exception the temporary directory is removed and
    nothing is published; :meth:`publish` writes the manifest and renames the directory.
    """

    def __init__(
        self,
        out_dir: str,
        header: dict,
        prior_json: str,
        schema: pa.Schema,
        rows_per_part: int = 1 << 18,
    ):
        self.out_dir = os.path.abspath(out_dir)
        if os.path.exists(self.out_dir):
            raise InputError(
                f"output {out_dir!r} already exists; remove it or choose another --out"
            )
        parent = os.path.dirname(self.out_dir)
        os.makedirs(parent, exist_ok=True)
        self.tmp = os.path.join(
            parent, f".{os.path.basename(self.out_dir)}.partial-{uuid.uuid4().hex[:12]}"
        )
        os.makedirs(self.tmp)
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.parts: list[dict] = []
        self._writer = None
        self._rows_in_part = 0
        self.items = 0
        self.payload_bytes = 0
        _write_json(os.path.join(self.tmp, PLAN_FILE), header)
        with open(os.path.join(self.tmp, PRIOR_FILE), "w") as f:
            f.write(prior_json + "\n")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False

    def write(self, table: pa.Table) -> None:
        """Append rows (a table with :attr:`schema`), rolling over to a new part file when
        the current one is full."""
        start = 0
        while start < table.num_rows:
            if self._writer is None:
                name = f"part-{len(self.parts):05d}.parquet"
                self._writer = pq.ParquetWriter(os.path.join(self.tmp, name), self.schema)
                self.parts.append({"file": name, "rows": 0})
                self._rows_in_part = 0
            take = min(self.rows_per_part - self._rows_in_part, table.num_rows - start)
            chunk = table.slice(start, take)
            self._writer.write_table(chunk)
            self.parts[-1]["rows"] += take
            self._rows_in_part += take
            start += take
            if self._rows_in_part >= self.rows_per_part:
                self._close_part()
        self.items += table.num_rows
        lengths = pc.binary_length(table.column("message"))
        self.payload_bytes += int(pc.sum(lengths).as_py() or 0)

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def publish(self, summary: dict) -> str:
        """Close the last part, write the manifest (last), rename into place."""
        self._close_part()
        for p in self.parts:
            path = os.path.join(self.tmp, p["file"])
            p["bytes"] = os.path.getsize(path)
            p["sha256"] = _sha256(path)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": RUN_FORMAT_VERSION,
            "items": self.items,
            "payload_bytes": self.payload_bytes,
            "parts": self.parts,
            "plan_sha256": _sha256(os.path.join(self.tmp, PLAN_FILE)),
            "summary": summary,
        }
        _write_json(os.path.join(self.tmp, MANIFEST_FILE), manifest)
        if os.path.exists(self.out_dir):
            self.abort()
            raise InputError(f"output {self.out_dir!r} appeared while writing; not replaced")
        os.rename(self.tmp, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        try:
            self._close_part()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Run:
    """A complete run directory, checked on open (format, version, manifest, part hashes)."""

    path: str
    header: dict
    prior_json: str
    manifest: dict

    @classmethod
    def open(cls, path: str, verify_parts: bool = True) -> Run:
        if not os.path.isdir(path):
            raise InputError(f"run directory {path!r} does not exist")
        man_path = os.path.join(path, MANIFEST_FILE)
        if not os.path.exists(man_path):
            raise FormatError(
                f"{path!r} has no {MANIFEST_FILE}: the run is not complete (interrupted or "
                "still being written); compress it again"
            )
        header = _read_json(os.path.join(path, PLAN_FILE), "run header")
        if header.get("format") != RUN_FORMAT:
            raise FormatError(f"{path!r}: {PLAN_FILE} is not a recray run header")
        if header.get("version") != RUN_FORMAT_VERSION:
            raise FormatError(
                f"{path!r}: run format version {header.get('version')!r}; this recray reads "
                f"version {RUN_FORMAT_VERSION}"
            )
        manifest = _read_json(man_path, "manifest")
        if (
            manifest.get("format") != MANIFEST_FORMAT
            or manifest.get("version") != RUN_FORMAT_VERSION
        ):
            raise FormatError(
                f"{path!r}: {MANIFEST_FILE} is not a version {RUN_FORMAT_VERSION} recray manifest"
            )
        if manifest.get("plan_sha256") != _sha256(os.path.join(path, PLAN_FILE)):
            raise FormatError(
                f"{path!r}: {PLAN_FILE} does not match the manifest's checksum "
                "(the header was changed after the run was written)"
            )
        with open(os.path.join(path, PRIOR_FILE)) as f:
            prior_json = f.read().strip()
        if hashlib.sha256(prior_json.encode()).hexdigest() != header.get("prior_sha256"):
            raise FormatError(
                f"{path!r}: {PRIOR_FILE} does not match the prior checksum in {PLAN_FILE}"
            )
        run = cls(path, header, prior_json, manifest)
        if verify_parts:
            run.verify_parts()
        return run

    def verify_parts(self) -> None:
        for p in self.manifest["parts"]:
            full = os.path.join(self.path, p["file"])
            if not os.path.exists(full):
                raise FormatError(
                    f"{self.path!r}: part {p['file']} listed in the manifest is missing"
                )
            if os.path.getsize(full) != p["bytes"] or _sha256(full) != p["sha256"]:
                raise FormatError(
                    f"{self.path!r}: part {p['file']} does not match the manifest (size or "
                    "SHA-256): the file is truncated, corrupted or not from this run"
                )

    def part_paths(self) -> list[str]:
        return [os.path.join(self.path, p["file"]) for p in self.manifest["parts"]]

    def iter_rows(self, columns=None, batch_size: int = 65536):
        """Record batches of every part, in manifest order."""
        for path in self.part_paths():
            try:
                pf = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise FormatError(f"{path!r} is not a readable Parquet file: {exc}") from None
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def check_crcs(ids, messages, crcs) -> None:
    """Raise :class:`MessageError` naming the first item whose message fails its CRC."""
    got = crc32_of(messages)
    bad = got != np.asarray(crcs, dtype=np.uint32)
    if bad.any():
        i = int(np.argmax(bad))
        raise MessageError(
            f"item {fmt_item(ids[i])}: message fails its CRC-32 (stored {int(crcs[i]):08x}, "
            f"computed {int(got[i]):08x}): the message bytes are corrupted; {int(bad.sum())} "
            "items in "
            "this batch affected"
        )


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise FormatError(f"{what} {path!r} is missing") from None
    except (OSError, ValueError) as exc:
        raise FormatError(f"{what} {path!r} cannot be read: {exc}") from None
    if not isinstance(d, dict):
        raise FormatError(f"{what} {path!r} is not a JSON object")
    return d
