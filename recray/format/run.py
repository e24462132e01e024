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
finish it. On an object store (``s3://``, ``gs://``: no rename) the parts are written in
place and the manifest, written last, is the publish: an unfinished run there is a location
with parts and ``resume.json`` but no manifest. All access goes through
:mod:`recray.format.storage`. One process writes a run at a time: on a local filesystem
the writer holds a lock on the sibling ``.<name>.lock`` (:class:`WriterLock`), so a second
``compress`` of the same output, ``--resume`` or not, stops in one line. **Committed work
is never deleted**: whatever goes wrong, an unfinished run that holds a committed part stays
for ``--resume``; only one that this call created and that holds no part yet is removed
(nothing was coded). The bytes of every file
depend only on the input, the header and the shard size: not on the engine, the number of
workers, batch sizes or the backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zlib
from dataclasses import dataclass

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock (see WriterLock)
    fcntl = None

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recray.errors import FormatError, InputError, MessageError, StorageError, fmt_item
from recray.format.storage import Location, resolve

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


def _write_json(loc: Location, obj, compact: bool = False) -> None:
    """``obj`` as JSON with sorted keys: indented, or ``compact`` (no spaces: the run header,
    whose learned laws and trees are part of every run's size)."""
    text = json.dumps(
        obj, sort_keys=True, **({"separators": (",", ":")} if compact else {"indent": 1})
    )
    loc.write_text(text + "\n")


PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
RESUME_FILE = "resume.json"


class WriterLock:
    """The one writer of a run: an exclusive ``flock`` on the sibling file ``.<name>.lock``
    (local filesystems), held from before a :class:`RunWriter` looks at the run until it is
    done, so a second ``compress`` (``--resume`` or not) of a run that another process is
    still writing stops at once, in one line, instead of racing it. The kernel drops the
    lock when its process dies, so a run left by a crash or a kill resumes without any
    clean-up; a clean exit removes the file.

    Object stores and HDFS get no lock: ``pyarrow.fs`` offers neither ``flock`` nor an
    atomic create-if-absent there. Each part is still written whole by one writer and a
    part's bytes depend only on the input, the header and the shard size, but two writers
    of one location can interleave their publish steps: run one ``compress`` per location.
    """

    def __init__(self, out: Location, out_dir: str):
        self.path: str | None = None
        self.fd: int | None = None
        if not out.local or fcntl is None:
            return
        path = out.sibling(f".{out.name}{LOCK_SUFFIX}").path
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StorageError(
                    f"cannot create the lock file {path!r}: {exc.strerror}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise InputError(
                    f"{out_dir!r}: another recray process is writing this run (it holds "
                    f"{path}); wait for it to finish, or stop it and run again with --resume"
                ) from None
            except OSError as exc:  # e.g. a filesystem without locks
                os.close(fd)
                raise StorageError(f"cannot lock {path!r}: {exc.strerror}") from None
            try:  # the holder before us may have removed the file after we opened it
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.path, self.fd = path, fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in this order, so that whoever locks
        the file next sees it is gone and takes a fresh one)."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def rejects_name(shard: int) -> str:
    return f"rejects-{shard:05d}.parquet"


def run_key(header: dict, fingerprint: dict) -> str:
    """SHA-256 of the canonical header and input fingerprint: what parts are stamped with."""
    doc = json.dumps({"header": header, "input": fingerprint}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def _write_parquet(table: pa.Table, final: Location) -> str:
    """Write ``table`` to ``final``, whole or not at all (the file's existence is the
    commit); returns its SHA-256. A storage error (disk full, file size limit, store
    unreachable) leaves no file and raises :class:`StorageError`."""
    try:
        data = final.write_parquet(table)
    except StorageError as exc:
        raise StorageError(
            f"{exc}; the committed parts are kept: free space (or lift the file size limit, "
            "or restore access to the store) and run again with --resume"
        ) from None
    return hashlib.sha256(data).hexdigest()


#: What a part's summary sums (besides ``rows``, ``bytes``, ``sha256``).
TOTALS = ("items", "payload_bytes", "kl_bits", "steps", "fallback_blocks", "adapted_blocks",
          "rejects")  # fmt: skip


class PartCommitter:
    """Writes shards' parts into an unfinished run: small and picklable, so whoever coded a
    shard commits it (the driver, or the Ray actor that coded it) and hands the driver only
    its summary. Storage shared by every node is required (it is anyway: the run)."""

    def __init__(self, tmp: Location, schema: pa.Schema, run_key: str):
        self.tmp = tmp
        self.schema = schema
        self.run_key = run_key

    def committed(self, shard: int) -> bool:
        return self.tmp.child(part_name(shard)).exists()

    def commit(self, shard: int, table: pa.Table, rejects: pa.Table | None = None) -> dict:
        """Write the rows of ``shard`` (a table with the part schema, in item order) as its
        part, and first its rejected items (``rejects``, a table of
        :func:`recray.pipeline.validate.reject_schema`, in row order) when there are any:
        the part's existence is the shard's commit. The bytes depend only on the rows, not
        on how they were batched. Returns the part's summary (:meth:`summary`)."""
        n_rej = 0
        if rejects is not None and rejects.num_rows:
            _write_parquet(rejects.combine_chunks(), self.tmp.child(rejects_name(shard)))
            n_rej = rejects.num_rows
        table = table.select(self.schema.names).cast(self.schema).combine_chunks()
        table = table.replace_schema_metadata({RUN_KEY_META: self.run_key.encode()})
        loc = self.tmp.child(part_name(shard))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        try:
            loc.write_bytes(data)
        except StorageError as exc:
            raise StorageError(
                f"{exc}; the committed parts are kept: free space (or lift the file size "
                "limit, or restore access to the store) and run again with --resume"
            ) from None
        return _part_summary(shard, table, len(data), hashlib.sha256(data).hexdigest(), n_rej)

    def summary(self, shard: int) -> dict:
        """Rows, bytes, SHA-256 and totals of a committed part, read back."""
        loc = self.tmp.child(part_name(shard))
        cols = ["message", "kl_bits", "steps", "fallback_blocks", "adapted_blocks"]
        table = loc.parquet().read(columns=cols)
        rej = self.tmp.child(rejects_name(shard))
        n_rej = rej.parquet().metadata.num_rows if rej.exists() else 0
        return _part_summary(shard, table, loc.size(), loc.sha256(), n_rej)


def _part_summary(shard: int, table: pa.Table, size: int, sha: str, rejects: int) -> dict:
    def total(c):
        return int(np.sum(table.column(c).to_numpy())) if table.num_rows else 0

    return {
        "shard": shard,
        "rows": table.num_rows,
        "bytes": size,
        "sha256": sha,
        "items": table.num_rows,
        "payload_bytes": int(pc.sum(pc.binary_length(table.column("message"))).as_py() or 0),
        "kl_bits": float(np.sum(table.column("kl_bits").to_numpy())) if table.num_rows else 0.0,
        "steps": total("steps"),
        "fallback_blocks": total("fallback_blocks"),
        "adapted_blocks": total("adapted_blocks"),
        "rejects": rejects,
    }


class RunWriter:
    """Writes a run as one Parquet part per shard and publishes it atomically.

    On a filesystem that renames directories (local, HDFS), parts go into the partial
    directory ``.<name>.partial`` next to ``out_dir``, which :meth:`publish` renames into
    place after writing the manifest. An object store has no rename: parts go straight to
    ``out_dir`` and the manifest, written last, is the publish; until then the location
    holds ``resume.json`` and no manifest, which is what an unfinished run is there.
    Either way each part is written whole or not at all, so a part file that exists is its
    shard's commit.

    ``resume=True`` reopens an unfinished run whose header and input fingerprint match (a
    run stopped by a crash, a kill or Ctrl-C) and keeps the parts it holds:
    :attr:`committed` lists their shards. Without it an unfinished run is an error, so two
    runs never mix parts; a refused resume names the setting that differs.

    Use as a context manager. Whatever the exception, committed parts are never removed:
    the unfinished run stays for ``--resume``, except one that this writer created and
    that holds no part yet (nothing was coded), which is removed. On a local filesystem the
    writer holds a :class:`WriterLock` until it exits: a run that another process is
    writing is refused ("another recray process is writing this run") before anything is
    read or written.
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
        self.out = resolve(out_dir)
        self.out_dir = self.out.uri
        self.schema = schema
        self.run_key = run_key(header, fingerprint)
        self.created = False
        self.summaries: dict[int, dict] = {}
        exists = InputError(f"output {out_dir!r} already exists; remove it or choose another --out")
        if self.out.renames:
            self.out.parent().makedirs()
        # before looking at the run: another writer may be about to publish it
        self.lock = WriterLock(self.out, out_dir)
        try:
            self._open(out_dir, header, prior_json, fingerprint, resume, exists)
        except BaseException:
            self.lock.release()
            raise
        self.committer = PartCommitter(self.tmp, schema, self.run_key)

    def _open(self, out_dir, header, prior_json, fingerprint, resume, exists) -> None:
        """Find or create the unfinished run (see the class docstring)."""
        if self.out.renames:
            if self.out.exists():
                raise exists
            self.tmp = self.out.sibling(f".{self.out.name}{PARTIAL_SUFFIX}")
            unfinished = self.tmp.exists()
        else:
            names = self.out.listdir()
            if MANIFEST_FILE in names or (names and RESUME_FILE not in names):
                raise exists
            self.tmp = self.out
            unfinished = bool(names)
        resume_doc = {"fingerprint": fingerprint, "header": header, "prior": prior_json}
        if unfinished:
            if not resume:
                raise InputError(
                    f"an unfinished run of {out_dir!r} exists at {self.tmp.uri!r}: pass "
                    "--resume to continue it, or remove it to start again"
                )
            saved = _read_json(self.tmp.child(RESUME_FILE), "resume record")
            what = _resume_difference(saved, resume_doc)
            if what:
                raise InputError(
                    f"cannot resume {out_dir!r}: {what}; use the unfinished run's arguments, "
                    f"or remove {self.tmp.uri!r} to start again"
                )
        else:
            self.tmp.makedirs()
            self.created = True
            _write_json(self.tmp.child(PLAN_FILE), header, compact=True)
            self.tmp.child(PRIOR_FILE).write_text(prior_json + "\n")
            _write_json(self.tmp.child(RESUME_FILE), resume_doc)
        self.committed: set[int] = {
            int(n[5:10])
            for n in self.tmp.listdir()
            if n.startswith("part-") and n.endswith(".parquet") and len(n) == 18
        }

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None and self.created and not self.committed:
                self.discard_empty()
        finally:
            self.lock.release()
        return False

    def commit(self, shard: int, table: pa.Table, rejects: pa.Table | None = None) -> None:
        """Write the rows of ``shard`` as its part (see :meth:`PartCommitter.commit`) and
        record it; a shard is committed once."""
        if shard in self.committed:
            raise FormatError(f"shard {shard} is committed already; a part is written once")
        self.record(shard, self.committer.commit(shard, table, rejects))

    def record(self, shard: int, summary: dict) -> None:
        """Record a part that a :class:`PartCommitter` wrote (here or in a Ray actor), with
        its summary (rows, bytes, SHA-256, totals): what :meth:`publish` lists, so the
        driver never reads the rows of the parts coded in this call."""
        known = self.summaries.get(shard)
        if known is not None and known["sha256"] != summary["sha256"]:
            raise FormatError(
                f"shard {shard} was committed twice with different bytes; remove "
                f"{self.tmp.uri!r} and run again"
            )
        self.summaries[shard] = summary
        self.committed.add(shard)

    def part_paths(self, n_shards: int) -> list[str]:
        return [self.tmp.child(part_name(k)).uri for k in range(n_shards)]

    def _shard_rejects(self, n_shards: int) -> list[Location]:
        names = set(self.tmp.listdir())
        return [
            self.tmp.child(rejects_name(k)) for k in range(n_shards) if rejects_name(k) in names
        ]

    def _summary(self, shard: int) -> dict:
        if shard not in self.summaries:  # committed by an earlier call (--resume)
            self.summaries[shard] = self.committer.summary(shard)
        return self.summaries[shard]

    def totals(self, n_shards: int) -> dict:
        """Items, payload bytes, diagnostics and rejects summed over the parts, in shard
        order (from the summaries of the parts coded in this call; parts committed earlier
        are read)."""
        t = {k: 0 for k in TOTALS}
        t["kl_bits"] = 0.0
        for k in range(n_shards):
            s = self._summary(k)
            t["items"] += s["rows"]
            for c in TOTALS[1:]:
                t[c] += s[c]
        return t

    def publish(self, n_shards: int, summary: dict, encoder: dict | None = None) -> str:
        """Check that shards ``0 .. n_shards-1`` are all committed and write the manifest
        (last), with ``encoder`` (what coded the run) when given; where directories rename,
        rename the partial directory into place."""
        missing = sorted(set(range(n_shards)) - self.committed)
        if missing:
            raise FormatError(
                f"cannot publish {self.out_dir!r}: shards {missing[:5]} have no part "
                f"({len(missing)} missing); run again with --resume"
            )
        parts = [
            {"file": part_name(k)} | {c: self._summary(k)[c] for c in ("rows", "bytes", "sha256")}
            for k in range(n_shards)
        ]
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": RUN_FORMAT_VERSION,
            "items": summary["items"],
            "payload_bytes": summary["payload_bytes"],
            "rejects": int(summary.get("rejects", 0)),
            "run_key": self.run_key,
            "parts": parts,
            "plan_sha256": self.tmp.child(PLAN_FILE).sha256(),
            "summary": summary,
        }
        if encoder:
            manifest["encoder"] = encoder
        shard_rejects = self._shard_rejects(n_shards)
        if shard_rejects:
            merged = pa.concat_tables([f.parquet().read() for f in shard_rejects])
            manifest["rejects_sha256"] = _write_parquet(merged, self.tmp.child(REJECTS_FILE))
        # merged into rejects.parquet just above; resume.json is for unfinished runs only
        leftovers = [*shard_rejects, self.tmp.child(RESUME_FILE)]
        if self.out.renames:
            for f in leftovers:
                f.remove()
            _write_json(self.tmp.child(MANIFEST_FILE), manifest)
            if self.out.exists():
                raise InputError(f"output {self.out_dir!r} appeared while writing; not replaced")
            self.tmp.move_to(self.out)
        else:
            # no rename: the manifest's existence is the publish; what is left over after
            # it is harmless to readers (they follow the manifest)
            _write_json(self.tmp.child(MANIFEST_FILE), manifest)
            for f in leftovers:
                f.remove()
        return self.out_dir

    def discard_empty(self) -> None:
        """Remove the unfinished run if it holds no part (nothing coded, nothing lost)."""
        if any(n.startswith("part-") for n in self.tmp.listdir()):
            return
        self.tmp.rmtree()


def _resume_difference(saved: dict, now: dict) -> str | None:
    """What differs between an unfinished run's resume record and this call's, in words
    (``None`` when they match): the first differing setting is named with both values."""
    sh, nh = saved.get("header") or {}, now["header"]
    derived = ("plan", "plan_checksum")  # follow from the settings: named only when alone
    for key in [k for k in sorted(set(sh) | set(nh)) if k not in derived] + list(derived):
        if sh.get(key) != nh.get(key):
            if key in derived:
                return (
                    "the codec settings differ: the codec plan (--block-bits, --allocation, "
                    "--collapsed-block-size)"
                )
            flag = "--" + key.replace("_", "-")
            return (
                f"the codec settings differ: {key} ({flag}) is {nh.get(key)!r} here but "
                f"{sh.get(key)!r} in the unfinished run"
            )
    if saved.get("prior") != now["prior"]:
        return "the prior differs from the unfinished run's"
    sf, nf = saved.get("fingerprint") or {}, now["fingerprint"]
    if sf != nf:
        for key in sorted(set(sf) | set(nf)):
            if sf.get(key) != nf.get(key):
                return (
                    f"the input latents differ ({key}: {nf.get(key)!r} here, "
                    f"{sf.get(key)!r} in the unfinished run)"
                )
    return None


@dataclass
class Run:
    """A complete run directory, checked on open (format, version, manifest, part hashes)."""

    path: str
    header: dict
    prior_json: str
    manifest: dict
    loc: Location | None = None

    @classmethod
    def open(cls, path: str, verify_parts: bool = True) -> Run:
        loc = resolve(path)
        names = loc.listdir() if loc.is_dir() else []
        if not names:
            hint = ""
            if loc.renames:
                partial = loc.sibling(f".{loc.name}{PARTIAL_SUFFIX}")
                if partial.exists():
                    hint = (
                        f"; an unfinished run of it is at {partial.uri!r}: finish it with "
                        f"recray compress ... --out {path} --resume"
                    )
            raise InputError(f"run directory {path!r} does not exist{hint}")
        if MANIFEST_FILE not in names:
            unfinished = RESUME_FILE in names
            raise FormatError(
                f"{path!r} has no {MANIFEST_FILE}: the run is not complete"
                + (
                    " (an unfinished run: finish it with recray compress ... --resume)"
                    if unfinished
                    else " (interrupted or still being written); compress it again"
                )
            )
        header = _read_json(loc.child(PLAN_FILE), "run header")
        if header.get("format") != RUN_FORMAT:
            raise FormatError(f"{path!r}: {PLAN_FILE} is not a recray run header")
        if header.get("version") not in READABLE_RUN_FORMAT_VERSIONS:
            raise FormatError(
                f"{path!r}: run format version {header.get('version')!r}; this recray reads "
                f"versions {', '.join(map(str, READABLE_RUN_FORMAT_VERSIONS))}"
            )
        manifest = _read_json(loc.child(MANIFEST_FILE), "manifest")
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != header.get(
            "version"
        ):
            raise FormatError(
                f"{path!r}: {MANIFEST_FILE} is not a version {header.get('version')} recray "
                "manifest"
            )
        if manifest.get("plan_sha256") != loc.child(PLAN_FILE).sha256():
            raise FormatError(
                f"{path!r}: {PLAN_FILE} does not match the manifest's checksum "
                "(the header was changed after the run was written)"
            )
        prior_json = loc.child(PRIOR_FILE).read_text().strip()
        if hashlib.sha256(prior_json.encode()).hexdigest() != header.get("prior_sha256"):
            raise FormatError(
                f"{path!r}: {PRIOR_FILE} does not match the prior checksum in {PLAN_FILE}"
            )
        run = cls(path, header, prior_json, manifest, loc)
        if verify_parts:
            run.verify_parts()
        return run

    def file(self, name: str) -> Location:
        """A file of this run."""
        return self.loc.child(name)

    def damaged_parts(self) -> dict[str, str]:
        """Parts that are missing or do not match the manifest (size or SHA-256), with what
        is wrong; empty for a sound run."""
        out = {}
        names = set(self.loc.listdir())
        for p in self.manifest["parts"]:
            full = self.file(p["file"])
            if p["file"] not in names:
                out[p["file"]] = "missing"
            elif full.size() != p["bytes"] or full.sha256() != p["sha256"]:
                out[p["file"]] = "does not match the manifest (size or SHA-256)"
        return out

    def part_damage(self, file: str) -> PartDamage:
        """What is wrong inside a damaged part: unreadable, from another run, or the ids of
        the rows whose message fails its CRC (the other rows are sound)."""
        full = self.file(file)
        rows = next(p["rows"] for p in self.manifest["parts"] if p["file"] == file)
        if not full.exists():
            return PartDamage(file, rows, "the part is missing", None)
        try:
            pf = full.parquet()
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
        bad_ids = [ids[i] for i in np.flatnonzero(bad)]
        return PartDamage(file, rows, "messages fail their CRC-32", bad_ids)

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
        """Paths (local) or URIs of the parts, in manifest order: what ``pyarrow`` opens."""
        return [self.file(p["file"]).uri for p in self.manifest["parts"]]

    def part_file(self, file: str) -> pq.ParquetFile:
        """A part, opened; an unreadable one is a :class:`FormatError` naming it."""
        try:
            return self.file(file).parquet()
        except (pa.ArrowInvalid, OSError) as exc:
            raise FormatError(
                f"{self.file(file).uri!r} is not a readable Parquet file: {exc}"
            ) from None

    def iter_rows(self, columns=None, batch_size: int = 65536):
        """Record batches of every part, in manifest order."""
        for p in self.manifest["parts"]:
            yield from self.part_file(p["file"]).iter_batches(
                batch_size=batch_size, columns=columns
            )


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


def check_crcs(ids, messages, crcs, what: str = "item") -> None:
    """Raise :class:`MessageError` naming the first ``what`` (item, image, tile) whose
    message fails its CRC."""
    got = crc32_of(messages)
    bad = got != np.asarray(crcs, dtype=np.uint32)
    if bad.any():
        i = int(np.argmax(bad))
        raise MessageError(
            f"{what} {fmt_item(ids[i])}: its message fails its CRC-32 (stored "
            f"{int(crcs[i]):08x}, computed {int(got[i]):08x}): the message bytes are "
            f"corrupted or truncated; {int(bad.sum())} {what}s in this batch affected"
        )


def _read_json(loc: Location, what: str) -> dict:
    try:
        d = json.loads(loc.read_text())
    except FileNotFoundError:
        raise FormatError(f"{what} {loc.uri!r} is missing") from None
    except (OSError, ValueError) as exc:
        raise FormatError(f"{what} {loc.uri!r} cannot be read: {exc}") from None
    if not isinstance(d, dict):
        raise FormatError(f"{what} {loc.uri!r} is not a JSON object")
    return d
