"""Run directories: what ``recray compress`` writes and ``decompress``/``inspect`` read.

A run directory holds

* ``plan.json``: the run header: format name and version, the codec plan (blocks, bits),
  method, seed, budgets, the prior's checksum, the id type, and the versions of the RNG
  recipe and the message codec;
* ``prior.json``: the coding prior (so a run decodes on its own; its checksum must match);
* ``part-NNNNN.parquet``: part ``k`` holds shard ``k``, the items ``[k*S, (k+1)*S)`` of the
  input in input order (``S`` = ``shard_rows`` in the header), one row per item: ``id``,
  ``message`` (binary), ``nbits`` (``8 * len(message)``), ``crc32`` (of ``message``),
  and diagnostics ``kl_bits``, ``steps``, ``fallback_blocks`` (and ``z_debug`` when
  asked for);
* ``rejects.parquet`` (only when items were skipped, ``--on-bad-item skip``): one row per
  bad item, ``row`` (input row), ``id``, ``field``, ``reason``, in input order;
* ``manifest.json``, written **last**: every part with its rows, bytes and SHA-256, the
  number of items and payload bytes, the number of rejects, the run key, and ``encoder``
  (the search backend that coded the run's last shards: the parts' bytes do not depend on
  it, so it stays out of the header that ``--resume`` compares). A directory
  without it is not a complete run.

Every part carries the **run key** (SHA-256 of the header and the input fingerprint) in its
Parquet metadata (``recray.run_key``), so a part copied in from another run is recognized
even when its rows' CRCs hold.

A run is written under the sibling name ``.<name>.partial`` and renamed into place in one
step, so an interrupted run never looks complete; its committed parts let ``--resume``
finish it. **Committed work is never deleted**: whatever goes wrong, a partial directory
that holds a committed part stays for ``--resume``; only one that this call created and
that holds no part yet is removed (nothing was coded). The bytes of every file depend only
on the input, the header and the shard size: not on the engine, the number of workers,
batch sizes or the backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recray.errors import FormatError, InputError, MessageError, StorageError, fmt_item

RUN_FORMAT = "recray-run"
#: Version 2: parts carry ``adapted_blocks`` and the run key; runs may hold rejects.parquet.
RUN_FORMAT_VERSION = 2
READABLE_RUN_FORMAT_VERSIONS = (1, 2)
REJECTS_FILE = "rejects.parquet"
RUN_KEY_META = b"recray.run_key"
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
        ("adapted_blocks", pa.int32()),
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


PARTIAL_SUFFIX = ".partial"
RESUME_FILE = "resume.json"


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def rejects_name(shard: int) -> str:
    return f"rejects-{shard:05d}.parquet"


def run_key(header: dict, fingerprint: dict) -> str:
    """SHA-256 of the canonical header and input fingerprint: what parts are stamped with."""
    doc = json.dumps({"header": header, "input": fingerprint}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def _write_parquet(table: pa.Table, final: str) -> None:
    """Write ``table`` to ``final`` through a temporary name (the rename is the commit);
    an OS error (disk full, file size limit) removes the temporary file and raises
    :class:`StorageError`."""
    tmp = final + ".tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise StorageError(
            f"cannot write {final!r}: {exc.strerror or exc}; the committed parts are kept: "
            "free space (or lift the file size limit) and run again with --resume"
        ) from None


class RunWriter:
    """Writes a run as one Parquet part per shard and publishes it atomically.

    Parts go into the partial directory ``.<name>.partial`` next to ``out_dir``; each is
    written under a temporary name and renamed, so a part file that exists is complete
    (it is the commit of its shard). :meth:`publish` writes the manifest last and renames
    the directory into place.

    ``resume=True`` reopens an existing partial directory whose header and input
    fingerprint match (a run stopped by a crash, a kill or Ctrl-C) and keeps the parts it
    holds: :attr:`committed` lists their shards. Without it an existing partial directory
    is an error, so two runs never mix parts.

    Use as a context manager. Whatever the exception, committed parts are never removed:
    the partial directory stays for ``--resume``, except one that this writer created and
    that holds no part yet (nothing was coded), which is removed.
    """

    def __init__(
        self,
        out_dir: str,
        header: dict,
        prior_json: str,
        schema: pa.Schema,
        *,
        fingerprint: dict,
        resume: bool = False,
    ):
        self.out_dir = os.path.abspath(out_dir)
        if os.path.exists(self.out_dir):
            raise InputError(
                f"output {out_dir!r} already exists; remove it or choose another --out"
            )
        parent = os.path.dirname(self.out_dir)
        os.makedirs(parent, exist_ok=True)
        self.tmp = os.path.join(parent, f".{os.path.basename(self.out_dir)}{PARTIAL_SUFFIX}")
        self.schema = schema
        self.run_key = run_key(header, fingerprint)
        self.created = False
        resume_doc = {"fingerprint": fingerprint, "header": header, "prior": prior_json}
        if os.path.exists(self.tmp):
            if not resume:
                raise InputError(
                    f"an unfinished run of {out_dir!r} exists at {self.tmp!r}: pass --resume "
                    "to continue it, or remove that directory to start again"
                )
            saved = _read_json(os.path.join(self.tmp, RESUME_FILE), "resume record")
            for key, what in (
                ("header", "codec settings (plan, method, seed, budgets)"),
                ("prior", "prior"),
                ("fingerprint", "input latents (files, sizes, rows)"),
            ):
                if saved.get(key) != resume_doc[key]:
                    raise InputError(
                        f"cannot resume {out_dir!r}: the {what} differ from the unfinished "
                        f"run's; use the same arguments, or remove {self.tmp!r} to start again"
                    )
        else:
            os.makedirs(self.tmp)
            self.created = True
            _write_json(os.path.join(self.tmp, PLAN_FILE), header)
            with open(os.path.join(self.tmp, PRIOR_FILE), "w") as f:
                f.write(prior_json + "\n")
            _write_json(os.path.join(self.tmp, RESUME_FILE), resume_doc)
        self.committed: set[int] = {
            int(n[5:10])
            for n in os.listdir(self.tmp)
            if n.startswith("part-") and n.endswith(".parquet") and len(n) == 18
        }

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.created and not self.committed:
            self.discard_empty()
        return False

    def commit(self, shard: int, table: pa.Table, rejects: pa.Table | None = None) -> None:
        """Write the rows of ``shard`` (a table with :attr:`schema`, in item order) as its
        part, and first its rejected items (``rejects``, a table of
        :func:`recray.pipeline.validate.reject_schema`, in row order) when there are any:
        the part's rename is the shard's commit. The bytes depend only on the rows, not on
        how they were batched."""
        if shard in self.committed:
            raise FormatError(f"shard {shard} is committed already; a part is written once")
        if rejects is not None and rejects.num_rows:
            _write_parquet(rejects.combine_chunks(), os.path.join(self.tmp, rejects_name(shard)))
        table = table.select(self.schema.names).cast(self.schema).combine_chunks()
        table = table.replace_schema_metadata({RUN_KEY_META: self.run_key.encode()})
        _write_parquet(table, os.path.join(self.tmp, part_name(shard)))
        self.committed.add(shard)

    def part_paths(self, n_shards: int) -> list[str]:
        return [os.path.join(self.tmp, part_name(k)) for k in range(n_shards)]

    def totals(self, n_shards: int) -> dict:
        """Items, payload bytes and diagnostics summed over the parts, in shard order."""
        t = {
            "items": 0,
            "payload_bytes": 0,
            "kl_bits": 0.0,
            "steps": 0,
            "fallback_blocks": 0,
            "adapted_blocks": 0,
        }
        cols = ["message", "kl_bits", "steps", "fallback_blocks", "adapted_blocks"]
        for path in self.part_paths(n_shards):
            tab = pq.read_table(path, columns=cols)
            t["items"] += tab.num_rows
            t["payload_bytes"] += int(pc.sum(pc.binary_length(tab.column("message"))).as_py() or 0)
            t["kl_bits"] += float(np.sum(tab.column("kl_bits").to_numpy()))
            for c in cols[2:]:
                t[c] += int(np.sum(tab.column(c).to_numpy()))
        t["rejects"] = sum(
            pq.ParquetFile(os.path.join(self.tmp, rejects_name(k))).metadata.num_rows
            for k in range(n_shards)
            if os.path.exists(os.path.join(self.tmp, rejects_name(k)))
        )
        return t

    def publish(self, n_shards: int, summary: dict, encoder: dict | None = None) -> str:
        """Check that shards ``0 .. n_shards-1`` are all committed, write the manifest (last)
        and rename the directory into place."""
        missing = sorted(set(range(n_shards)) - self.committed)
        if missing:
            raise FormatError(
                f"cannot publish {self.out_dir!r}: shards {missing[:5]} have no part "
                f"({len(missing)} missing); run again with --resume"
            )
        parts = []
        for k, path in enumerate(self.part_paths(n_shards)):
            parts.append(
                {
                    "file": part_name(k),
                    "rows": pq.ParquetFile(path).metadata.num_rows,
                    "bytes": os.path.getsize(path),
                    "sha256": _sha256(path),
                }
            )
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": RUN_FORMAT_VERSION,
            "items": summary["items"],
            "payload_bytes": summary["payload_bytes"],
            "rejects": int(summary.get("rejects", 0)),
            "run_key": self.run_key,
            "parts": parts,
            "plan_sha256": _sha256(os.path.join(self.tmp, PLAN_FILE)),
            "summary": summary,
        }
        if encoder:
            manifest["encoder"] = encoder
        shard_rejects = [
            os.path.join(self.tmp, rejects_name(k))
            for k in range(n_shards)
            if os.path.exists(os.path.join(self.tmp, rejects_name(k)))
        ]
        if shard_rejects:
            merged = pa.concat_tables([pq.read_table(f) for f in shard_rejects])
            path = os.path.join(self.tmp, REJECTS_FILE)
            _write_parquet(merged, path)
            manifest["rejects_sha256"] = _sha256(path)
            for f in shard_rejects:  # merged into rejects.parquet just above
                os.remove(f)
        os.remove(os.path.join(self.tmp, RESUME_FILE))
        _write_json(os.path.join(self.tmp, MANIFEST_FILE), manifest)
        if os.path.exists(self.out_dir):
            raise InputError(f"output {self.out_dir!r} appeared while writing; not replaced")
        os.rename(self.tmp, self.out_dir)
        return self.out_dir

    def discard_empty(self) -> None:
        """Remove the partial directory if it holds no part (nothing coded, nothing lost)."""
        if any(n.startswith("part-") for n in os.listdir(self.tmp)):
            return
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
        if header.get("version") not in READABLE_RUN_FORMAT_VERSIONS:
            raise FormatError(
                f"{path!r}: run format version {header.get('version')!r}; this recray reads "
                f"versions {', '.join(map(str, READABLE_RUN_FORMAT_VERSIONS))}"
            )
        manifest = _read_json(man_path, "manifest")
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != header.get(
            "version"
        ):
            raise FormatError(
                f"{path!r}: {MANIFEST_FILE} is not a version {header.get('version')} recray "
                "manifest"
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

    def damaged_parts(self) -> dict[str, str]:
        """Parts that are missing or do not match the manifest (size or SHA-256), with what
        is wrong; empty for a sound run."""
        out = {}
        for p in self.manifest["parts"]:
            full = os.path.join(self.path, p["file"])
            if not os.path.exists(full):
                out[p["file"]] = "missing"
            elif os.path.getsize(full) != p["bytes"] or _sha256(full) != p["sha256"]:
                out[p["file"]] = "does not match the manifest (size or SHA-256)"
        return out

    def part_damage(self, file: str) -> PartDamage:
        """What is wrong inside a damaged part: unreadable, from another run, or the ids of
        the rows whose message fails its CRC (the other rows are sound)."""
        full = os.path.join(self.path, file)
        rows = next(p["rows"] for p in self.manifest["parts"] if p["file"] == file)
        if not os.path.exists(full):
            return PartDamage(file, rows, "the part is missing", None)
        try:
            pf = pq.ParquetFile(full)
            key = (pf.schema_arrow.metadata or {}).get(RUN_KEY_META)
            tab = pf.read(columns=["id", "message", "crc32"])
        except (pa.ArrowInvalid, OSError) as exc:
            return PartDamage(file, rows, f"the part is not readable Parquet ({exc})", None)
        want = self.manifest.get("run_key")
        if want is not None and (key is None or key.decode() != want):
            return PartDamage(file, rows, "the part belongs to another run (run key)", None)
        got = crc32_of(tab.column("message").to_pylist())
        bad = got != tab.column("crc32").to_numpy().astype(np.uint32)
        ids = tab.column("id").to_pylist()
        return PartDamage(
            file, rows, "messages fail their CRC-32", [ids[i] for i in np.flatnonzero(bad)]
        )

    def verify_parts(self) -> None:
        damaged = self.damaged_parts()
        if not damaged:
            return
        file, what = next(iter(damaged.items()))
        detail = self.part_damage(file).describe()
        more = f" ({len(damaged)} damaged parts in all)" if len(damaged) > 1 else ""
        raise FormatError(
            f"{self.path!r}: part {file} {what}: {detail}{more}; "
            "decompress --salvage decodes every item whose part is readable and whose CRC "
            "holds, and lists the others"
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


@dataclass(frozen=True)
class PartDamage:
    """A damaged part: its ``file``, the ``rows`` the manifest lists, ``what`` is wrong, and
    ``bad_ids`` (the items whose message fails its CRC) or ``None`` when the whole part is
    lost (unreadable, missing, or from another run)."""

    file: str
    rows: int
    what: str
    bad_ids: list | None

    def describe(self) -> str:
        if self.bad_ids is None:
            return f"{self.what}; its {self.rows} items cannot be decoded"
        shown = ", ".join(fmt_item(i) for i in self.bad_ids[:5])
        more = f" and {len(self.bad_ids) - 5} more" if len(self.bad_ids) > 5 else ""
        if not self.bad_ids:
            return "its rows' CRCs hold (only the file around them changed)"
        return f"{len(self.bad_ids)} of its {self.rows} items fail their CRC-32: {shown}{more}"


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
