"""Reading latents and priors, with errors that name the item and the field.

**Latents**: a Parquet data set (one file or a directory of files) with columns

* ``id``: int64 or string, unique;
* ``mu``, ``sigma``: list or fixed-size list of float32/float64 of length ``D`` (one
  posterior ``N(mu, diag(sigma^2))`` per item; ``sigma > 0``, all finite).

**Prior**: a JSON file ``{"mu": [D], "sigma": [D], "mutual_information_bits": [D]}``: the
coding distribution ``N(mu, diag(sigma^2))`` and the per-dimension information (bits)
estimated from training data. The codec plan is derived from it, so both sides know it.

Batches are streamed through pyarrow (``iter_batches``), so memory does not grow with the
data set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recray.errors import FormatError, InputError, fmt_item
from recray.format.storage import Location, resolve

PRIOR_KEYS = ("mu", "sigma", "mutual_information_bits")


@dataclass(frozen=True)
class Prior:
    """The coding prior ``N(mu, diag(sigma^2))`` and per-dimension information (bits)."""

    mu: np.ndarray
    sigma: np.ndarray
    mi_bits: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces, floats as repr): what is checksummed."""
        d = {
            "mu": [float(v) for v in self.mu],
            "sigma": [float(v) for v in self.sigma],
            "mutual_information_bits": [float(v) for v in self.mi_bits],
        }
        return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)

    def checksum(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, d, where: str = "prior") -> Prior:
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected a JSON object with keys {PRIOR_KEYS}")
        missing = [k for k in PRIOR_KEYS if k not in d]
        if missing:
            raise InputError(f"{where}: missing key(s) {missing}; expected {PRIOR_KEYS}")
        arrs = {}
        for k in PRIOR_KEYS:
            try:
                a = np.asarray(d[k], dtype=np.float64)
            except (TypeError, ValueError):
                raise InputError(f"{where}: {k} must be a list of numbers") from None
            if a.ndim != 1 or a.size == 0:
                raise InputError(f"{where}: {k} must be a non-empty list; got shape {a.shape}")
            if not np.all(np.isfinite(a)):
                i = int(np.argmax(~np.isfinite(a)))
                raise InputError(f"{where}: {k}[{i}] = {a[i]} is not finite")
            arrs[k] = a
        dims = {k: a.size for k, a in arrs.items()}
        if len(set(dims.values())) != 1:
            raise InputError(f"{where}: lengths differ {dims}; all three must have length D")
        if (arrs["sigma"] <= 0).any():
            i = int(np.argmax(arrs["sigma"] <= 0))
            raise InputError(f"{where}: sigma[{i}] = {arrs['sigma'][i]} must be > 0")
        mi = arrs["mutual_information_bits"]
        if (mi < 0).any():
            i = int(np.argmax(mi < 0))
            raise InputError(f"{where}: mutual_information_bits[{i}] = {mi[i]} must be >= 0")
        return cls(arrs["mu"], arrs["sigma"], mi)


def read_prior(path: str) -> Prior:
    """The prior JSON at a local path or URI (:mod:`recray.format.storage`)."""
    loc = resolve(path)
    try:
        d = json.loads(loc.read_text())
    except FileNotFoundError:
        raise InputError(f"prior file {path!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"prior file {path!r} cannot be read as JSON: {exc}") from None
    return Prior.from_dict(d, where=f"prior file {path!r}")


def _vector_type_ok(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.types.is_float32(t.value_type) or pa.types.is_float64(t.value_type)
    return False


def _id_kind(t: pa.DataType) -> str | None:
    if pa.types.is_int64(t) or pa.types.is_int32(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return None


class LatentSource:
    """A validated latent data set: schema checked on open, values checked per batch."""

    def __init__(self, path: str, dim: int):
        self.path = path
        self.dim = dim
        self.loc = resolve(path)
        try:
            self.dataset = pads.dataset(self.loc.path, format="parquet", filesystem=self.loc.fs)
            schema = self.dataset.schema
        except FileNotFoundError:
            raise InputError(f"latents {path!r} do not exist") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise FormatError(
                f"latents {path!r} are not a readable Parquet data set: {exc}"
            ) from None
        names = set(schema.names)
        for col in ("id", "mu", "sigma"):
            if col not in names:
                raise InputError(
                    f"latents {path!r}: missing column {col!r} (have {sorted(names)}); the "
                    "input needs id, mu and sigma"
                )
        self.id_kind = _id_kind(schema.field("id").type)
        if self.id_kind is None:
            raise InputError(
                f"latents {path!r}: column 'id' has type {schema.field('id').type}; "
                "use int64 or string"
            )
        for col in ("mu", "sigma"):
            t = schema.field(col).type
            if not _vector_type_ok(t):
                raise InputError(
                    f"latents {path!r}: column {col!r} has type {t}; use a list or fixed-size "
                    "list of float32/float64"
                )
            if pa.types.is_fixed_size_list(t) and t.list_size != dim:
                raise InputError(
                    f"latents {path!r}: column {col!r} holds vectors of length {t.list_size} "
                    f"but the prior has D = {dim}"
                )

    def count_rows(self) -> int:
        return self.dataset.count_rows()

    def row_index(self) -> RowIndex:
        """Where every row lives (files and row groups, in data set order): what a reader
        of row ranges needs; small and picklable, so it travels to Ray read tasks."""
        files, counts, sizes = [], [], []
        for path in self.dataset.files:
            f = Location(self.loc.fs, path, self.loc.scheme)
            try:
                md = f.parquet().metadata
            except (pa.ArrowInvalid, OSError) as exc:
                raise FormatError(
                    f"latents file {f.uri!r} is not readable Parquet: {exc}"
                ) from None
            files.append(path)
            sizes.append(f.size())
            counts.append(tuple(md.row_group(g).num_rows for g in range(md.num_row_groups)))
        return RowIndex(
            self.dim, self.id_kind, tuple(files), tuple(counts), tuple(sizes), self.loc.fs
        )

    def batches(
        self, batch_size: int
    ) -> Iterator[tuple[np.ndarray | list, np.ndarray, np.ndarray]]:
        """``(ids, mu, sigma)`` per batch: ids an int64 array or a list of str; ``mu``,
        ``sigma`` float64 ``(n, D)``, validated (finite, sigma > 0, length D, no nulls)."""
        for rb in self.dataset.to_batches(columns=["id", "mu", "sigma"], batch_size=batch_size):
            if rb.num_rows == 0:
                continue
            yield self._convert(rb)

    def _convert(self, rb: pa.RecordBatch):
        return validate_batch(rb, self.dim, self.id_kind)


def validate_batch(rb, dim: int, id_kind: str):
    """``(ids, mu, sigma)`` of a record batch or table with columns id/mu/sigma, checked:
    no nulls, vectors of length ``dim``, finite values, ``sigma > 0``. Errors name the item
    and the field."""
    if isinstance(rb, pa.Table):
        rb = _as_record_batch(rb)
    return _Validator(dim, id_kind).convert(rb)


def _as_record_batch(t: pa.Table) -> pa.RecordBatch:
    t = t.combine_chunks()
    cols = [c.chunk(0) if c.num_chunks else pa.array([], type=c.type) for c in t.columns]
    return pa.RecordBatch.from_arrays(cols, schema=t.schema)


class _Validator:
    def __init__(self, dim: int, id_kind: str):
        self.dim = dim
        self.id_kind = id_kind

    def convert(self, rb):
        id_col = rb.column("id")
        if id_col.null_count:
            i = int(np.argmax(np.asarray(id_col.is_null())))
            raise InputError(f"latents: row {i} of a batch has a null id")
        ids = id_col.to_numpy().astype(np.int64) if self.id_kind == "int" else id_col.to_pylist()
        out = []
        for col in ("mu", "sigma"):
            out.append(self._vectors(rb.column(col), col, ids))
        mu, sigma = out
        for name, arr in (("mu", mu), ("sigma", sigma)):
            bad = ~np.isfinite(arr)
            if bad.any():
                i, d = (int(v) for v in np.argwhere(bad)[0])
                raise InputError(
                    f"item {fmt_item(ids[i])}: {name}[{d}] = {arr[i, d]} is not finite "
                    f"({int(bad.any(axis=1).sum())} items of this batch affected)"
                )
        bad = sigma <= 0
        if bad.any():
            i, d = (int(v) for v in np.argwhere(bad)[0])
            raise InputError(f"item {fmt_item(ids[i])}: sigma[{d}] = {sigma[i, d]} must be > 0")
        return ids, mu, sigma

    def _vectors(self, arr: pa.Array, name: str, ids) -> np.ndarray:
        n = len(arr)
        if arr.null_count:
            i = int(np.argmax(np.asarray(arr.is_null())))
            raise InputError(f"item {fmt_item(ids[i])}: {name} is null")
        lengths = np.asarray(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
        bad = lengths != self.dim
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(
                f"item {fmt_item(ids[i])}: {name} has length {int(lengths[i])}, but the prior has "
                f"D = {self.dim}"
            )
        values = pc.list_flatten(arr)
        if values.null_count:
            j = int(np.argmax(np.asarray(values.is_null())))
            raise InputError(f"item {fmt_item(ids[j // self.dim])}: {name}[{j % self.dim}] is null")
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(
            n, self.dim
        )


#: What the row readers decoded in this process (rows of whole row groups decoded, rows
#: handed out, bytes decoded): ``recray bench reads`` measures read amplification with it.
READ_STATS = {"rows_decoded": 0, "rows_returned": 0, "bytes_decoded": 0}
_STATS_LOCK = threading.Lock()  # readers run on several threads (the validation pass)


def _count(**inc) -> None:
    with _STATS_LOCK:
        for k, v in inc.items():
            READ_STATS[k] += v


@dataclass(frozen=True)
class RowIndex:
    """Files of a latent data set and the row counts of their row groups, in order.

    ``read(start, stop)`` returns rows ``[start, stop)`` of the whole data set, validated
    like :meth:`LatentSource.batches`; it reads only the row groups it needs.
    :meth:`iter_tables` streams a range in chunks and decodes each row group once, however
    small the chunks: what an engine's reader uses. ``filesystem`` is the
    ``pyarrow.fs`` filesystem of ``files`` (local when ``None``); it pickles with its
    settings, so the index travels to Ray read tasks on other nodes.
    """

    dim: int
    id_kind: str
    files: tuple[str, ...]
    row_groups: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...] = ()
    filesystem: object = None

    @property
    def n_rows(self) -> int:
        return sum(sum(c) for c in self.row_groups)

    def _groups(self, start: int, stop: int):
        """``(file, row group, offset of the group)`` of the groups overlapping the range."""
        if not 0 <= start <= stop <= self.n_rows:
            raise InputError(f"row range [{start}, {stop}) outside the {self.n_rows} latent rows")
        offset = 0
        for path, counts in zip(self.files, self.row_groups, strict=True):
            for g, n in enumerate(counts):
                if offset >= stop:
                    return
                if offset + n > start:
                    yield path, g, offset
                offset += n

    def _open(self, path: str) -> pq.ParquetFile:
        fs = self.filesystem or pafs.LocalFileSystem()
        return pq.ParquetFile(fs.open_input_file(path))

    def _empty(self) -> pa.Table:
        return self._open(self.files[0]).schema_arrow.empty_table().select(["id", "mu", "sigma"])

    def iter_tables(self, start: int, stop: int, chunk_rows: int):
        """Rows ``[start, stop)`` as tables of at most ``chunk_rows`` rows (columns id, mu,
        sigma; not validated), in order. Each row group is read and decoded once."""
        files: dict[str, pq.ParquetFile] = {}
        buf: list[pa.Table] = []
        have = 0
        for path, g, offset in self._groups(start, stop):
            if path not in files:
                files[path] = self._open(path)
            t = files[path].read_row_group(g, columns=["id", "mu", "sigma"])
            _count(rows_decoded=t.num_rows, bytes_decoded=t.nbytes)
            lo, hi = max(start, offset), min(stop, offset + t.num_rows)
            buf.append(t.slice(lo - offset, hi - lo))
            have += hi - lo
            while have >= chunk_rows:
                whole = pa.concat_tables(buf)
                yield whole.slice(0, chunk_rows)
                _count(rows_returned=chunk_rows)
                rest = whole.slice(chunk_rows)
                buf, have = ([rest] if rest.num_rows else []), rest.num_rows
        if have:
            _count(rows_returned=have)
            yield pa.concat_tables(buf)

    def read_table(self, start: int, stop: int) -> pa.Table:
        """Rows ``[start, stop)`` as a table with columns id, mu, sigma (not validated)."""
        pieces = list(self.iter_tables(start, stop, max(1, stop - start)))
        return pa.concat_tables(pieces) if pieces else self._empty()

    def read(self, start: int, stop: int):
        """Validated ``(ids, mu, sigma)`` of rows ``[start, stop)``."""
        return validate_batch(self.read_table(start, stop), self.dim, self.id_kind)

    def fingerprint(self) -> dict:
        """What identifies the input of a run for ``--resume``: files, sizes, row counts."""
        sizes = self.sizes or tuple(os.path.getsize(f) for f in self.files)
        return {
            "files": [
                {"name": f.rsplit("/", 1)[-1], "bytes": int(n), "rows": sum(c)}
                for f, n, c in zip(self.files, sizes, self.row_groups, strict=True)
            ],
            "rows": self.n_rows,
            "dim": self.dim,
            "id_kind": self.id_kind,
        }


def kl_bits_per_dim(mu, sigma, prior: Prior) -> np.ndarray:
    """``D_KL[N(mu, s^2) || prior]`` per dimension, bits; arrays ``(n, D)``."""
    m = (mu - prior.mu) / prior.sigma
    s = sigma / prior.sigma
    return ((s * s + m * m - 1.0) / 2.0 - np.log(s)) / math.log(2.0)
