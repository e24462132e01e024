"""The Ray engine: a Ray Data pipeline that codes a latent data set on an actor pool.

    latents (Parquet) --read tasks, one per shard--> rows (validated, with their row number)
        --map_batches(ShardEncoder, ActorPoolStrategy)--> part rows (messages, diagnostics)
        --driver: regroup by shard, sort by row--> part-NNNNN.parquet --> manifest

* **Read**: :class:`LatentShards` is a Ray Data datasource with one read task per pending
  shard; a task reads only the row groups of its rows and validates them (errors name the
  item and the field).
* **Search**: :class:`ShardEncoder` is a callable class held by an actor pool
  (``ActorPoolStrategy(size=actors)``). Each actor builds the codec spec once and codes
  whole batches of items (all their blocks of one size in one search call). On GPU nodes
  actors take ``num_gpus=1`` and the CuPy backend; on CPUs they take a *fraction* of a CPU
  (``actor_cpus``), so that Ray Data's read tasks always find a slot (an actor pool that
  holds every CPU starves them and the run deadlocks).
* **Errors**: an actor never lets a :class:`~recray.errors.RecrayError` escape (Ray would
  hand it to the driver as text inside a ``RayTaskError``): it returns it as a row whose
  ``_error`` column holds the error's type, message and location, and the driver raises
  the same typed error (``on_bad_item="fail"``) or records a rejected item (``"skip"``).
* **Faults**: Ray does the retrying; read tasks get ``max_retries`` and actors
  ``max_restarts`` / ``max_task_retries`` (all ``retries``), so a node that dies takes its
  in-flight work with it and Ray runs it again elsewhere. The driver keeps each row once
  (by row number), so a retried batch can never duplicate an item.
* **Commit**: the driver writes a shard's part as soon as all its rows are in
  (:meth:`recray.format.run.RunWriter.commit`); ``--resume`` skips committed shards.

Nothing here knows the inside of the search (that is :mod:`recray.rec`) or the message
format (:mod:`recray.format`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import replace
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from ray.data import ActorPoolStrategy, Datasource
from ray.data.block import BlockMetadata
from ray.data.datasource import ReadTask

from recray import errors
from recray.errors import BackendError, RecrayError
from recray.latents.io import RowIndex, validate_batch
from recray.pipeline.codec import CodecSpec
from recray.pipeline.local_engine import read_rows
from recray.pipeline.options import RayOptions
from recray.pipeline.shards import ROW, assemble_part, encode_or_reject
from recray.pipeline.validate import Scan

SHARD = "_shard"
ERROR = "_error"  # JSON of a rejected item or of a fatal error, null for a coded row
READ_CHUNK_ROWS = 8192  # rows per block a read task yields (bounds its memory)


@contextlib.contextmanager
def ray_session(address: str | None):
    """An initialized Ray for the duration of the block: reuses one that is already up,
    otherwise joins ``address`` (or starts a local one) and shuts it down afterwards."""
    if ray.is_initialized():
        yield
        return
    kw = {"address": address} if address else {}
    if not address and not os.environ.get("RAY_ADDRESS"):
        kw["include_dashboard"] = False
        # Ray nices its workers to 15 by default; on a machine shared with other work that
        # starves the actors, which *are* this run's work (measured 3-6x slower here)
        os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(logging_level="warning", **kw)
    try:
        yield
    finally:
        ray.shutdown()


class LatentShards(Datasource):
    """Ray Data datasource: one read task per shard ``(k, start, stop)``; each yields
    tables with columns ``_shard``, ``_row``, ``id``, ``mu``, ``sigma`` (fixed-size lists
    of float64, validated)."""

    def __init__(self, index: RowIndex, shards: list[tuple[int, int, int]], scan: Scan):
        super().__init__()
        self.index = index
        self.shards = shards
        self.skip = {k: scan.bad_rows(a, b) for k, a, b in shards}

    def get_name(self) -> str:
        return "RecrayLatents"

    def _bytes(self, rows: int) -> int:
        return int(rows * (16 * self.index.dim + 32))

    def estimate_inmemory_data_size(self) -> int:
        return self._bytes(sum(b - a for _, a, b in self.shards))

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        return [
            ReadTask(
                partial(_read_shard, self.index, k, a, b, self.skip[k]),
                BlockMetadata(
                    num_rows=b - a, size_bytes=self._bytes(b - a), exec_stats=None, input_files=None
                ),
            )
            for k, a, b in self.shards
        ]


def _vectors(a: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def _read_shard(index: RowIndex, k: int, start: int, stop: int, skip: np.ndarray):
    # The rows the validation pass rejected are left out here; the others were validated
    # by that pass and are checked again as they are read (the input may have changed).
    for a in range(start, stop, READ_CHUNK_ROWS):
        b = min(a + READ_CHUNK_ROWS, stop)
        ids, mu, sigma, rows = read_rows(index, a, b, skip)
        if not len(rows):
            continue
        yield pa.table(
            {
                SHARD: pa.array(np.full(len(rows), k, np.int64)),
                ROW: pa.array(rows),
                "id": pa.array(ids, type=pa.int64() if index.id_kind == "int" else pa.string()),
                "mu": _vectors(mu),
                "sigma": _vectors(sigma),
            }
        )


class ShardEncoder:
    """The actor's callable: part rows (plus ``_shard``, ``_row``) of a batch of items."""

    def __init__(
        self, spec: CodecSpec, schema: pa.Schema, id_kind: str, on_bad: str = "fail", hook=None
    ):
        self.spec = spec
        self.schema = schema
        self.id_kind = id_kind
        self.on_bad = on_bad
        self.hook = hook
        if spec.backend:
            from recray.backend import get_backend

            get_backend(spec.backend)  # fail at start-up, not on the first batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        shard = batch.column(SHARD).to_numpy()
        rows = batch.column(ROW).to_numpy()
        if self.hook is not None:
            self.hook(shard, rows)
        try:
            ids, mu, sigma = validate_batch(
                batch.select(["id", "mu", "sigma"]), self.spec.plan.dim, self.id_kind
            )
            out, rej = encode_or_reject(ids, mu, sigma, rows, self.spec, self.schema, self.on_bad)
        except RecrayError as exc:  # fatal: back to the driver as a row, with its type
            return self._error_rows([int(rows[0])], [int(shard[0])], [_error_doc(exc, True)])
        kept = ~np.isin(rows, np.asarray(rej.rows, dtype=np.int64))
        out = (
            out.append_column(SHARD, pa.array(shard[kept]))
            .append_column(ROW, pa.array(rows[kept]))
            .append_column(ERROR, pa.nulls(out.num_rows, pa.string()))
        )
        if not len(rej):
            return out
        where = {int(r): i for i, r in enumerate(rows)}
        docs = [
            json.dumps({"fatal": False, "type": t, "message": m, "field": f})
            for t, m, f in zip(rej.errors, rej.reasons, rej.fields, strict=True)
        ]
        bad = self._error_rows(rej.rows, [int(shard[where[r]]) for r in rej.rows], docs, rej.ids)
        return pa.concat_tables([out, bad])

    def _error_rows(self, rows, shards, docs, ids=None) -> pa.Table:
        n = len(rows)
        cols = {f.name: pa.nulls(n, f.type) for f in self.schema}
        if ids is not None:
            cols["id"] = pa.array(ids, type=self.schema.field("id").type)
        cols[SHARD] = pa.array(shards, type=pa.int64())
        cols[ROW] = pa.array(rows, type=pa.int64())
        cols[ERROR] = pa.array(docs, type=pa.string())
        return pa.table(cols)


def _error_doc(exc: RecrayError, fatal: bool) -> str:
    return json.dumps(
        {
            "fatal": fatal,
            "type": type(exc).__name__,
            "message": str(exc),
            "dim": exc.dim,
            "block": exc.block,
        }
    )


def _raise_from_doc(doc: dict):
    cls = getattr(errors, doc.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, RecrayError)):
        cls = RecrayError
    raise cls(doc["message"], block=doc.get("block"), dim=doc.get("dim"))


def _take_errors(batch: pa.Table, rejects: dict, seen: dict, starts: dict) -> pa.Table:
    """Record the rejected items of a batch (their rows are then done) and return the coded
    rows; a fatal error row raises its typed error."""
    err = batch.column(ERROR).to_pylist()
    shard = batch.column(SHARD).to_numpy()
    rows = batch.column(ROW).to_numpy()
    ids = batch.column("id").to_pylist()
    for i, e in enumerate(err):
        if e is None:
            continue
        doc = json.loads(e)
        if doc["fatal"]:
            _raise_from_doc(doc)
        k, r = int(shard[i]), int(rows[i])
        if k in seen and not seen[k][r - starts[k]]:
            seen[k][r - starts[k]] = True
            rejects[k].add(r, ids[i], doc["field"], doc["message"], doc["type"])
    return batch.filter(pc.is_null(batch.column(ERROR)))


def _recray_cause(exc: BaseException) -> RecrayError | None:
    """The :class:`RecrayError` behind a Ray / Ray Data exception, if there is one (Ray
    wraps an actor's exception in ``RayTaskError`` / ``UserCodeException``)."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, RecrayError) and not hasattr(e, "cause"):
            return e
        stack.extend([cause, e.__cause__, e.__context__])
    return None


def _resources(spec: CodecSpec, opts: RayOptions) -> tuple[str, int, dict]:
    """Backend, pool size and per-actor resources from the cluster and the options."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    backend = spec.backend
    if backend is None or backend == "auto":
        # GPU actors run the CUDA kernel; CPU actors pick the fastest CPU backend themselves
        backend = "cuda" if gpus > 0 else None
    if backend in ("cupy", "cuda"):
        if gpus == 0:
            raise BackendError(
                f"backend {backend!r} asks for GPU actors but the Ray cluster has no GPUs; "
                "use --backend numba (or numpy) or join a cluster with GPU nodes"
            )
        actors = opts.actors or gpus
        return backend, actors, {"num_gpus": 1, "num_cpus": min(opts.actor_cpus, 1.0)}
    cpus = max(1, int(res.get("CPU", 1)))
    actors = opts.actors or cpus
    if opts.actor_cpus <= 0:
        raise BackendError(f"actor_cpus must be > 0; got {opts.actor_cpus}")
    return backend, actors, {"num_cpus": opts.actor_cpus}


def run_ray(
    index: RowIndex,
    pending: list[tuple[int, int, int]],
    spec: CodecSpec,
    schema: pa.Schema,
    writer,
    *,
    batch_size: int,
    opts: RayOptions,
    scan: Scan,
    on_bad: str = "fail",
    progress=None,
) -> dict:
    """Code the ``pending`` shards ``(k, start, stop)`` on Ray and commit each one through
    ``writer`` as it completes, with its rejected items (``scan``'s, and with
    ``on_bad="skip"`` those a search failed on); a fatal error is raised with its type.
    Returns ``{"actors", "backend"}`` as used and ``driver_seconds``, the time the driver
    itself spent on rows (the serial part)."""
    if not pending:
        return {"actors": 0, "backend": spec.backend, "driver_seconds": 0.0}
    with ray_session(opts.address):
        backend, actors, actor_res = _resources(spec, opts)
        spec = replace(spec, backend=backend)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        starts = {k: a for k, a, _ in pending}
        seen = {k: np.zeros(b - a, bool) for k, a, b in pending}
        rejects = {k: scan.rejects.select(a, b) for k, a, b in pending}
        for k, a, b in pending:
            seen[k][scan.bad_rows(a, b) - a] = True
        pieces: dict[int, list[pa.Table]] = {k: [] for k, _, _ in pending}
        # shards with nothing left to code (every row rejected) commit at once
        for k in [k for k in pieces if seen[k].all()]:
            writer.commit(k, schema.empty_table(), rejects[k].sorted().table(index.id_kind))
            del pieces[k]
        with warnings.catch_warnings():
            # Ray 2.60 takes retries and restarts only through the remote-args dicts (named
            # parameters come with 2.64); we pin 2.60, so the deprecation notice is noise
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            reads = ray.data.read_datasource(
                LatentShards(index, [p for p in pending if p[0] in pieces], scan),
                num_cpus=0.25,
                ray_remote_args={"max_retries": opts.retries},
            )
            ds = reads.map_batches(
                ShardEncoder,
                fn_constructor_kwargs={
                    "spec": spec,
                    "schema": schema,
                    "id_kind": index.id_kind,
                    "on_bad": on_bad,
                    "hook": opts.on_batch,
                },
                batch_size=batch_size,
                batch_format="pyarrow",
                zero_copy_batch=True,
                compute=ActorPoolStrategy(size=actors),
                scheduling_strategy="SPREAD",  # one actor per node first: a lost node
                # takes as few actors as possible, and the rest have room for restarts
                max_restarts=opts.retries,
                max_task_retries=opts.retries,
                resources=opts.resources,
                **actor_res,
            )
        driver_s = 0.0  # time the driver spends on rows (regroup, commit): the serial part
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                t0 = time.perf_counter()
                touched = set(np.unique(batch.column(SHARD).to_numpy()).tolist())
                if batch.column(ERROR).null_count < batch.num_rows:
                    batch = _take_errors(batch, rejects, seen, starts)
                shard_col = batch.column(SHARD).to_numpy()
                rows = batch.column(ROW).to_numpy()
                for k in np.unique(shard_col).tolist():
                    sel = shard_col == k
                    r = rows[sel] - starts[k]
                    # keep each row once, whatever Ray retried
                    fresh = ~seen[k][r]
                    r_new, first = np.unique(r[fresh], return_index=True)
                    if r_new.size == 0:
                        continue
                    idx = np.flatnonzero(sel)[np.flatnonzero(fresh)[first]]
                    seen[k][r_new] = True
                    pieces[k].append(batch.take(pa.array(idx)))
                    if progress:
                        progress.update(int(r_new.size))
                for k in sorted(touched):
                    if k in pieces and seen[k].all():
                        got = pieces.pop(k)
                        part = assemble_part(got) if got else schema.empty_table()
                        writer.commit(k, part, rejects[k].sorted().table(index.id_kind))
                driver_s += time.perf_counter() - t0
        except RecrayError:
            raise
        except Exception as exc:
            cause = _recray_cause(exc)
            if cause is not None:
                raise type(cause)(str(cause), block=cause.block, dim=cause.dim) from None
            raise
        if pieces:
            missing = sorted(pieces)
            raise RecrayError(
                f"Ray Data finished without delivering every row of shards {missing[:5]}; "
                "run again with --resume"
            )
    if backend is None:  # CPU actors resolve "auto" as this process does (same packages)
        from recray.backend import get_backend

        backend = get_backend("auto").label
    return {"actors": actors, "backend": backend, "driver_seconds": driver_s}
