"""The validation pass: every bad item of a latent data set, found before any search.

``recray compress`` streams the input once (:func:`scan`) before it codes anything. The
pass checks, per row: the id (not null, unique), the vectors ``mu`` and ``sigma`` (not
null, length ``D``, no null or non-finite value, ``sigma > 0``, ``sigma / prior_sigma`` not
so small that scores overflow), and, for the exact methods, that every block can be coded:
routed exactly as the encoder will route it (:func:`recray.pipeline.codec.route_group`:
adaptive partitions included), so a block that would need more than ``max_steps`` or whose
ratio is unbounded is reported here, not hours into the run. It writes nothing and
reports **every** bad item (:class:`Rejects`), each with its row, id, field and reason.

Cost: one read of the input and the bound computation of every block (the tables the
encoder's routing builds again, batch by batch, and hands to its search), a small fraction
of the search itself; :attr:`Scan.seconds` reports it.

**Shard by shard.** ``compress`` runs the pass per shard (:func:`check_shard`: on Ray one
task per shard, :func:`recray.pipeline.ray_engine.validate_on_ray`; in-process
:func:`scan_shards`). Each shard's valid items leave their 64-bit keys (int ids as they
are, string ids hashed) and rows in an id file, sorted and cut into hash ranges; then each
range is checked on its own (:func:`check_range`: the keys of that range from every
shard, ``RANGE_ITEMS`` at most on average). Whoever gathers the results holds the shards'
rejects only: O(shards), not 16 bytes per item. The rejects and their order are those of
the one-pass check (:func:`scan`): a bad row's id is not kept, the first occurrence (lowest
row) of an id is kept and each repeat rejected, naming the id and the first row.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recray import errors
from recray.errors import InputError, RecrayError, fmt_item
from recray.latents.io import RowIndex
from recray.pipeline.codec import CodecSpec, block_rows, item_keys, problem_error, route_group
from recray.rec import EXACT_METHODS
from recray.rec.api import MIN_SCALE_RATIO

SCAN_ROWS = 1 << 15
SHOWN = 3  # bad items a "fail" error lists in full


def reject_schema(id_kind: str) -> pa.Schema:
    """Columns of ``rejects.parquet``: the input row, the item id, the field and why."""
    return pa.schema(
        [
            ("row", pa.int64()),
            ("id", pa.int64() if id_kind == "int" else pa.string()),
            ("field", pa.string()),
            ("reason", pa.string()),
        ]
    )


@dataclass
class Rejects:
    """Bad items, in input order once :meth:`sorted`: ``rows`` (input row numbers), ``ids``,
    ``fields`` (e.g. ``"sigma[5]"``, ``"id"``, ``"latent dimension 6"``), ``reasons`` (the
    full message) and ``errors`` (the :class:`~recray.errors.RecrayError` subclass name)."""

    rows: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    fields: list = field(default_factory=list)
    reasons: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    def add(self, row: int, item_id, fld: str, reason: str, error: str = "InputError"):
        self.rows.append(int(row))
        self.ids.append(item_id.item() if hasattr(item_id, "item") else item_id)
        self.fields.append(fld)
        self.reasons.append(reason)
        self.errors.append(error)

    def __len__(self) -> int:
        return len(self.rows)

    def _take(self, keep) -> Rejects:
        return Rejects(
            *(
                [a[i] for i in keep]
                for a in (self.rows, self.ids, self.fields, self.reasons, self.errors)
            )
        )

    def sorted(self) -> Rejects:
        return self._take(np.argsort(np.asarray(self.rows, dtype=np.int64), kind="stable"))

    def select(self, lo: int, hi: int) -> Rejects:
        """The rejects of input rows ``[lo, hi)``."""
        return self._take([i for i, r in enumerate(self.rows) if lo <= r < hi])

    def extend(self, other: Rejects) -> Rejects:
        """Append ``other``'s rejects to these (in place); returns ``self``."""
        for f in ("rows", "ids", "fields", "reasons", "errors"):
            getattr(self, f).extend(getattr(other, f))
        return self

    def table(self, id_kind: str) -> pa.Table:
        sch = reject_schema(id_kind)
        return pa.table(
            {
                "row": pa.array(self.rows, type=pa.int64()),
                "id": pa.array(self.ids, type=sch.field("id").type),
                "field": pa.array(self.fields, type=pa.string()),
                "reason": pa.array(self.reasons, type=pa.string()),
            },
            schema=sch,
        )

    def error(self) -> RecrayError:
        """One error for all of them (the first one's type), for ``--on-bad-item fail``."""
        cls = getattr(errors, self.errors[0], InputError)
        head = "; ".join(self.reasons[:SHOWN])
        more = f"; and {len(self) - SHOWN} more" if len(self) > SHOWN else ""
        n = len(self)
        hint = ""
        if {"SearchBudgetError", "UnboundedRatioError"} & set(self.errors):
            hint = " (--on-unbounded orc codes blocks no exact search can with sp-orc/orc)"
        return cls(
            f"{head}{more}. {n} bad item{'s' if n > 1 else ''} found before coding, nothing "
            f"written: fix them, or pass --on-bad-item skip to code the rest and list them "
            f"in the run's rejects.parquet{hint}"
        )


@dataclass
class Scan:
    """What :func:`scan` found: ``rejects`` (sorted by row) and ``seconds`` it took."""

    n_rows: int
    rejects: Rejects
    seconds: float

    def bad_rows(self, lo: int, hi: int) -> np.ndarray:
        """Sorted input rows in ``[lo, hi)`` that are rejected."""
        r = np.asarray(self.rejects.rows, dtype=np.int64)
        return r[(r >= lo) & (r < hi)]


def _ids(col: pa.ChunkedArray, id_kind: str):
    """Ids of a chunk: an int64 array, or a list (string ids, or int ids with nulls)."""
    if id_kind == "int" and not col.null_count:
        return col.to_numpy().astype(np.int64)
    return col.to_pylist()


def _vector_problems(col, name: str, dim: int) -> tuple[np.ndarray, list]:
    """Rows of a list column that are null, of the wrong length, or hold null values:
    ``(ok mask, [(row, field, what)])``."""
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    lengths = np.where(np.asarray(col.is_null()), -1, np.nan_to_num(lengths, nan=-1)).astype(
        np.int64
    )
    bad = []
    ok = lengths == dim
    for i in np.flatnonzero(~ok).tolist():
        if lengths[i] < 0:
            bad.append((i, name, f"{name} is null"))
        else:
            bad.append(
                (i, name, f"{name} has length {int(lengths[i])}, but the prior has D = {dim}")
            )
    sub = col.filter(pa.array(ok))
    flat = pc.list_flatten(sub)
    if flat.null_count:
        rows_ok = np.flatnonzero(ok)
        nulls = np.flatnonzero(np.asarray(flat.is_null()))
        for j in np.unique(nulls // dim).tolist():
            d = int(nulls[nulls // dim == j][0] % dim)
            bad.append((int(rows_ok[j]), f"{name}[{d}]", f"{name}[{d}] is null"))
            ok[rows_ok[j]] = False
    return ok, bad


def check_rows(t: pa.Table, dim: int, id_kind: str, prior_sigma: np.ndarray):
    """Per-row checks of one chunk: ``(ids, ok mask, mu, sigma, problems)`` where ``mu``,
    ``sigma`` are float64 ``(k, D)`` of the ok rows and ``problems`` lists
    ``(row in chunk, field, message)``."""
    ids = _ids(t.column("id"), id_kind)
    problems = []
    ok = ~np.asarray(t.column("id").is_null())
    for i in np.flatnonzero(~ok).tolist():
        problems.append((i, "id", "the id is null"))
    for name in ("mu", "sigma"):
        col = t.column(name).combine_chunks()
        ok_v, bad = _vector_problems(col, name, dim)
        problems += [b for b in bad if ok[b[0]]]
        ok &= ok_v
    keep = pa.array(ok)
    vec = {}
    for name in ("mu", "sigma"):
        flat = pc.list_flatten(t.column(name).combine_chunks().filter(keep))
        vec[name] = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(
            -1, dim
        )
    rows_ok = np.flatnonzero(ok)
    mu, sigma = vec["mu"], vec["sigma"]
    bad_rows = np.zeros(rows_ok.size, dtype=bool)
    with np.errstate(all="ignore"):
        tests = (
            ("mu", ~np.isfinite(mu), "is not finite"),
            ("sigma", ~np.isfinite(sigma), "is not finite"),
            ("sigma", sigma <= 0, "must be > 0"),
            ("sigma", (sigma / prior_sigma < MIN_SCALE_RATIO) & (sigma > 0), None),
        )
    for name, mask, what in tests:
        arr = mu if name == "mu" else sigma
        hit = mask.any(axis=1) & ~bad_rows
        for j in np.flatnonzero(hit).tolist():
            d = int(np.argmax(mask[j]))
            if what is None:
                msg = (
                    f"sigma[{d}] / prior_sigma = {arr[j, d] / prior_sigma[d]:.3g} is below "
                    f"{MIN_SCALE_RATIO:g} (scores would overflow); widen the posterior"
                )
            else:
                msg = f"{name}[{d}] = {arr[j, d]} {what}"
            problems.append((int(rows_ok[j]), f"{name}[{d}]", msg))
        bad_rows |= hit
    ok[rows_ok[bad_rows]] = False
    keep_rows = ~bad_rows
    return ids, ok, mu[keep_rows], sigma[keep_rows], problems


def _route_problems(ids_ok, mu, sigma, spec: CodecSpec):
    """``(index into ids_ok, RecrayError)`` of items with a block no route can code. None
    without an exact method, or with ``on_unbounded="orc"`` (every block has a route then:
    :func:`route_group` reports no problems), so those runs skip the routing here."""
    if spec.method not in EXACT_METHODS or spec.on_unbounded == "orc":
        return []
    out = []
    for grp in spec.groups():
        g = grp.dims.shape[0]
        m_r, s_r, pm, ps, bits = block_rows(grp, mu, sigma, spec)
        trees = spec.row_trees(grp, mu.shape[0])
        for p in route_group(m_r, s_r, pm, ps, bits, spec, trees=trees).problems:
            out.append((p.row // g, problem_error(p, grp, ids_ok)))
    return out


#: Items per hash range of the duplicate-id check: what one range's check holds in memory
#: (16 bytes each: the 8-byte key and the row), 64 MiB.
RANGE_ITEMS = 1 << 22
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads consecutive int ids
_KEY_SCHEMA = pa.schema([("key", pa.uint64()), ("row", pa.int64())])


def n_ranges(n_rows: int, range_items: int = RANGE_ITEMS) -> int:
    """How many hash ranges the duplicate check of ``n_rows`` items uses."""
    return max(1, -(-int(n_rows) // int(range_items)))


def id_file(shard: int) -> str:
    """Name of a shard's id file in the validation's scratch location."""
    return f"ids-{shard:05d}.arrow"


def _range_of(keys: np.ndarray, ranges: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        mixed = keys * _MIX
    return ((mixed >> np.uint64(32)) % np.uint64(ranges)).astype(np.int64)


@dataclass
class ShardCheck:
    """What :func:`check_shard` found in one shard: its ``rejects`` (every problem but
    repeated ids) and, unless they went to a file, ``keys``: per hash range, the 64-bit
    keys and input rows of the shard's valid items, sorted by (key, row)."""

    shard: int
    rows: int
    rejects: Rejects
    keys: list | None = None


def check_shard(
    index: RowIndex,
    shard: tuple[int, int, int],
    spec: CodecSpec,
    *,
    ranges: int = 1,
    sink=None,
    chunk_rows: int = SCAN_ROWS,
) -> ShardCheck:
    """Validate input rows ``[start, stop)`` of ``shard = (k, start, stop)`` (every check of
    the module docstring but the duplicate ids) and sort the keys of its valid items into
    ``ranges`` hash ranges for :func:`check_range`. With ``sink`` (a
    :class:`~recray.format.storage.Location`: a directory every worker reaches) the keys
    are written to ``sink/ids-NNNNN.arrow`` (Arrow IPC, record batch ``h`` = range ``h``)
    instead of returned, so whoever holds the shard's results holds no per-item state.
    Memory: one chunk of rows plus 16 bytes per item of the shard."""
    k, start, stop = shard
    rej = Rejects()
    keys, key_rows = [], []
    a = start
    for t in index.iter_tables(start, stop, chunk_rows):
        b = a + t.num_rows
        ids, ok, mu, sigma, problems = check_rows(t, index.dim, index.id_kind, spec.prior_sigma)
        for i, fld, msg in problems:
            item = f"item {fmt_item(ids[i])}" if ids[i] is not None else f"row {a + i}"
            rej.add(a + i, ids[i], fld, f"{item}: {msg}")
        rows_ok = np.flatnonzero(ok)
        if rows_ok.size:
            if index.id_kind == "int":
                ids_ok = np.asarray([ids[i] for i in rows_ok], dtype=np.int64)
            else:
                ids_ok = [ids[i] for i in rows_ok]
            seen = set()
            for j, exc in _route_problems(ids_ok, mu, sigma, spec):
                if j in seen:
                    continue
                seen.add(j)
                fld = "item" if exc.dim is None else f"latent dimension {exc.dim}"
                rej.add(a + int(rows_ok[j]), ids_ok[j], fld, str(exc), type(exc).__name__)
            keys.append(item_keys(ids_ok))
            key_rows.append(a + rows_ok)
        a = b
    kk = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    rr = np.concatenate(key_rows).astype(np.int64) if key_rows else np.zeros(0, np.int64)
    h = _range_of(kk, ranges)
    order = np.lexsort((rr, kk, h))
    kk, rr, h = kk[order], rr[order], h[order]
    cuts = np.searchsorted(h, np.arange(ranges + 1))
    per_range = [(kk[cuts[i] : cuts[i + 1]], rr[cuts[i] : cuts[i + 1]]) for i in range(ranges)]
    out = ShardCheck(k, stop - start, rej)
    if sink is None:
        out.keys = per_range
        return out
    sinkbuf = pa.BufferOutputStream()
    with pa.ipc.new_file(sinkbuf, _KEY_SCHEMA) as w:
        for kr, rw in per_range:
            w.write_batch(pa.record_batch([pa.array(kr), pa.array(rw)], schema=_KEY_SCHEMA))
    sink.child(id_file(k)).write_bytes(sinkbuf.getvalue())
    return out


def _range_keys(source, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and rows of range ``h`` from a :class:`ShardCheck` or an id file's location."""
    if isinstance(source, ShardCheck):
        return source.keys[h]
    with source.fs.open_input_file(source.path) as f:
        b = pa.ipc.open_file(f).get_batch(h)
        return (
            b.column(0).to_numpy(zero_copy_only=False).astype(np.uint64),
            b.column(1).to_numpy(zero_copy_only=False).astype(np.int64),
        )


def check_range(index: RowIndex, h: int, sources) -> Rejects:
    """Every repeated id of hash range ``h``: ``sources`` are the shards'
    :class:`ShardCheck` results or id files (any order). Each repeat of an id is rejected,
    its first occurrence (lowest row) is kept. Memory: the range's keys (16 bytes each)."""
    parts = [_range_keys(s, h) for s in sources]
    rej = Rejects()
    if not parts:
        return rej
    k = np.concatenate([p[0] for p in parts])
    r = np.concatenate([p[1] for p in parts])
    order = np.lexsort((r, k))
    ks, rs = k[order], r[order]
    same = ks[1:] == ks[:-1]
    if not same.any():
        return rej
    new_run = np.concatenate([[True], ~same])
    first = rs[np.flatnonzero(new_run)][np.cumsum(new_run) - 1]
    for i in np.flatnonzero(~new_run).tolist():
        row, first_row = int(rs[i]), int(first[i])
        if index.id_kind == "int":
            v = int(ks[i : i + 1].view(np.int64)[0])
        else:  # string ids: confirm on the strings (a 64-bit hash can collide)
            v = index.read_table(row, row + 1).column("id")[0].as_py()
            if v != index.read_table(first_row, first_row + 1).column("id")[0].as_py():
                continue
        rej.add(
            row, v, "id", f"duplicate item id {v!r} (first at row {first_row}); ids must be unique"
        )
    return rej


def merge_checks(n_rows: int, checks: list, duplicates: list, seconds: float) -> Scan:
    """The :class:`Scan` of a whole input from its shards' checks and its ranges' repeated
    ids (in input order: a row's other problem before its repeat, as one pass finds them)."""
    rej = Rejects()
    for c in sorted(checks, key=lambda c: c.shard):
        rej.extend(c.rejects)
    for d in duplicates:
        rej.extend(d)
    return Scan(n_rows, rej.sorted(), seconds)


def scan(index: RowIndex, spec: CodecSpec, *, chunk_rows: int = SCAN_ROWS, progress=None) -> Scan:
    """Validate every row of ``index`` against ``spec`` (see the module docstring) in this
    process, holding the ids in memory. Reads the input once, in chunks of ``chunk_rows``;
    memory: the chunk plus 16 bytes per item (ids for the duplicate check).
    :func:`scan_shards` holds O(shards) instead."""
    t0 = time.perf_counter()
    n = index.n_rows
    c = check_shard(index, (0, 0, n), spec, chunk_rows=chunk_rows)
    if progress:
        progress.update(n)
    dup = check_range(index, 0, [c])
    return merge_checks(n, [c], [dup], time.perf_counter() - t0)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def scan_shards(
    index: RowIndex,
    shards: list[tuple[int, int]],
    spec: CodecSpec,
    scratch,
    *,
    range_items: int = RANGE_ITEMS,
    progress=None,
) -> Scan:
    """:func:`scan` shard by shard in this process, the ids spilled to per-shard sorted id
    files under ``scratch`` (a :class:`~recray.format.storage.Location`, created here; the
    caller removes it) and checked one hash range at a time: memory is one shard's keys or
    one range's (:data:`RANGE_ITEMS`), not 16 bytes per item of the input. The Ray engine
    runs the same two steps as tasks (:func:`recray.pipeline.ray_engine.validate_on_ray`);
    both find the same rejects in the same order."""
    t0 = time.perf_counter()
    ranges = n_ranges(index.n_rows, range_items)
    scratch.makedirs()
    checks = []
    jobs = [(k, a, b) for k, (a, b) in enumerate(shards)]
    with ThreadPoolExecutor(min(len(jobs), usable_cores()) or 1, "recray-scan") as pool:
        # shards at once: most of a check is NumPy, which releases the GIL (1.6x on 2 cores)
        done = pool.map(lambda j: check_shard(index, j, spec, ranges=ranges, sink=scratch), jobs)
        for (_, a, b), c in zip(jobs, done, strict=True):
            checks.append(c)
            if progress:
                progress.update(b - a)
    files = [scratch.child(id_file(k)) for k in range(len(shards))]
    dups = [check_range(index, h, files) for h in range(ranges)]
    return merge_checks(index.n_rows, checks, dups, time.perf_counter() - t0)
