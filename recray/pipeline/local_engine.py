"""The in-process engine: codes shards in order in this process, a batch per core at once.

The same shards, the same per-batch coding and the same parts as the Ray engine
(:mod:`recray.pipeline.ray_engine`), so the two write identical bytes; this one needs no
Ray and starts instantly, which suits tests, notebooks and small data sets.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from recray.latents.io import RowIndex, validate_batch
from recray.pipeline.codec import CodecSpec
from recray.pipeline.progress import tick
from recray.pipeline.shards import encode_or_reject
from recray.pipeline.validate import Scan
from recray.rec.kernels import one_kernel_thread


def iter_rows(index: RowIndex, start: int, stop: int, chunk_rows: int, skip: np.ndarray):
    """Validated ``(ids, mu, sigma, rows)`` of input rows ``[start, stop)`` in chunks of at
    most ``chunk_rows`` rows, without the rows in ``skip`` (sorted int64, the items the
    validation pass rejected); a chunk may be empty. Each row group is read once."""
    a = start
    for t in index.iter_tables(start, stop, chunk_rows):
        rows = np.arange(a, a + t.num_rows, dtype=np.int64)
        a += t.num_rows
        if skip.size:
            keep = ~np.isin(rows, skip)
            t = t.filter(pa.array(keep))
            rows = rows[keep]
        ids, mu, sigma = validate_batch(t, index.dim, index.id_kind)
        yield ids, mu, sigma, rows


def batch_workers(spec: CodecSpec) -> int:
    """How many batches :func:`code_shards` codes at once: one per thread of Numba's pool when the
    compiled CPU kernel searches and its threading layer takes concurrent calls
    (:func:`recray.rec.kernels.cpu_calls_concurrent`), else 1."""
    from recray.backend import get_backend

    if get_backend(spec.backend).kernel != "cpu":
        return 1
    import numba

    from recray.rec.kernels import cpu_calls_concurrent

    return numba.get_num_threads() if cpu_calls_concurrent() else 1


def code_shards(
    index: RowIndex,
    shards: list[tuple[int, int, int]],
    spec: CodecSpec,
    schema: pa.Schema,
    committer,
    *,
    batch_size: int,
    scan: Scan,
    on_bad: str = "fail",
    progress=None,
    hook=None,
    workers: int | None = None,
):
    """Code the ``shards`` ``(k, start, stop)`` in order, in batches of ``batch_size``
    items, and commit each one's part (with its rejected items: ``scan``'s and, with
    ``on_bad="skip"``, those a search failed on) through ``committer``
    (:class:`recray.format.run.PartCommitter`); yields ``(k, summary)`` as each part is
    committed, in order. What both engines run, so they write the same bytes.
    ``hook(shards, rows)`` is called before each batch is coded (instrumentation, see
    :class:`~recray.pipeline.options.RayOptions`).

    With the compiled CPU kernel, ``workers`` (default :func:`batch_workers`) threads code
    whole batches at once, each calling the kernel on one thread: the kernel releases the
    GIL, so one batch's routing and messages (Python, holding it) overlap the others'
    searches instead of idling all but one core, and no call waits on its slowest block.
    The next shard's batches start while a shard's last ones finish. Batches are collected
    in input order, and each item's message is a function of the item alone, so this
    changes no byte. A short run's batches are evened out (:func:`_even_batches`).
    ``workers=1`` codes one batch at a time, each kernel call on Numba's whole pool (what
    each Ray actor does: the actors already keep the cores busy). Memory: the coded rows of
    the shards in flight plus ``workers`` batches."""
    workers = batch_workers(spec) if workers is None else workers
    if workers > 1:
        batch_size, workers = _even_batches(shards, batch_size, workers)
    pool = (
        ThreadPoolExecutor(workers, "recray-batch", initializer=one_kernel_thread)
        if workers > 1
        else None
    )
    # in input order: ("batch", Future of (part, rejects) or None when empty, rows, shard's
    # state) and, after a shard's last batch, ("end", k, None, its state)
    queue = deque()
    in_flight = 0

    def collect():
        """Collect the oldest batch, then :func:`commit_ready`."""
        nonlocal in_flight
        _, job, n_rows, st = queue.popleft()
        in_flight -= 1
        if job is None:
            tick(progress, n_rows)
        else:
            part, bad = job.result()
            st["pieces"].append(part)
            st["rej"].extend(bad)
            tick(progress, n_rows, part.column("nbits"))
        return commit_ready()

    def commit_ready():
        """Commit the shards whose batches are all collected: ``[(k, summary)]``."""
        done = []
        while queue and queue[0][0] == "end":
            _, k, _, st = queue.popleft()
            pieces = st["pieces"]
            table = pa.concat_tables(pieces) if pieces else schema.empty_table()
            done.append((k, committer.commit(k, table, st["rej"].sorted().table(index.id_kind))))
        return done

    try:
        for k, start, stop in shards:
            st = {"pieces": [], "rej": scan.rejects.select(start, stop)}
            a = start
            for ids, mu, sigma, rows in iter_rows(
                index, start, stop, batch_size, scan.bad_rows(start, stop)
            ):
                b = min(a + batch_size, stop)
                job = None
                if len(rows):
                    if hook is not None:
                        hook(np.full(len(rows), k, np.int64), rows)
                    args = (ids, mu, sigma, rows, spec, schema, on_bad)
                    job = pool.submit(encode_or_reject, *args) if pool else _done(*args)
                queue.append(("batch", job, b - a, st))
                in_flight += 1
                a = b
                while in_flight > workers:
                    yield from collect()
            queue.append(("end", k, None, st))
            yield from commit_ready()  # (only when no batch is in flight)
        while in_flight:
            yield from collect()
    finally:  # on an error or interrupt: drop queued batches, wait for running ones
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _even_batches(shards, batch_size: int, workers: int) -> tuple[int, int]:
    """``(batch_size, workers)`` for a run of ``shards``: a run of fewer than
    ``4 workers`` batches is cut into a multiple of ``workers`` equal ones, so that its
    last batches do not leave a core idle while one thread finishes (1,000 items in
    batches of 4,096 become two of 500 on two threads); never more workers than batches.
    Batches only group work: the bytes do not depend on them."""
    rows = sum(stop - start for _, start, stop in shards)
    if rows == 0:
        return batch_size, 1
    n = -(-rows // batch_size)
    if n < 4 * workers:
        n = -(-n // workers) * workers
        batch_size = max(1, -(-rows // n))
    return batch_size, max(1, min(workers, -(-rows // batch_size)))


def code_shard(
    index: RowIndex, shard: tuple[int, int, int], spec: CodecSpec, schema, committer, **kw
) -> dict:
    """:func:`code_shards` of one shard ``(k, start, stop)``: its part's summary."""
    ((_, summary),) = code_shards(index, [shard], spec, schema, committer, **kw)
    return summary


def _done(*args) -> Future:
    """:func:`encode_or_reject` run now, as a finished Future (its error raised now)."""
    f = Future()
    f.set_result(encode_or_reject(*args))
    return f


def run_local(
    index: RowIndex,
    pending: list[tuple[int, int, int]],
    spec: CodecSpec,
    schema: pa.Schema,
    writer,
    *,
    batch_size: int,
    scan: Scan,
    on_bad: str = "fail",
    progress=None,
) -> dict:
    """Code the ``pending`` shards ``(k, start, stop)`` in this process
    (:func:`code_shards`) and record each part with ``writer`` as it is committed."""
    for k, summary in code_shards(
        index,
        pending,
        spec,
        schema,
        writer.committer,
        batch_size=batch_size,
        scan=scan,
        on_bad=on_bad,
        progress=progress,
    ):
        writer.record(k, summary)
    from recray.backend import get_backend

    return {"actors": 0, "backend": get_backend(spec.backend).label, "driver_seconds": 0.0}
