"""The in-process engine: codes shards one after another in this process.

The same shards, the same per-batch coding and the same parts as the Ray engine
(:mod:`recray.pipeline.ray_engine`), so the two write identical bytes; this one needs no
Ray and starts instantly, which suits tests, notebooks and small data sets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recray.latents.io import RowIndex, validate_batch
from recray.pipeline.codec import CodecSpec
from recray.pipeline.progress import tick
from recray.pipeline.shards import encode_or_reject
from recray.pipeline.validate import Scan


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


def code_shard(
    index: RowIndex,
    shard: tuple[int, int, int],
    spec: CodecSpec,
    schema: pa.Schema,
    committer,
    *,
    batch_size: int,
    scan: Scan,
    on_bad: str = "fail",
    progress=None,
    hook=None,
) -> dict:
    """Code one shard ``(k, start, stop)`` in batches of ``batch_size`` items and commit its
    part (with its rejected items: ``scan``'s and, with ``on_bad="skip"``, those a search
    failed on) through ``committer`` (:class:`recray.format.run.PartCommitter`); returns
    the part's summary. What both engines run per shard, so they write the same bytes;
    memory is bounded by the shard's coded rows and one batch. ``hook(shards, rows)`` is
    called before each batch is coded (instrumentation, see
    :class:`~recray.pipeline.options.RayOptions`)."""
    k, start, stop = shard
    pieces = []
    rej = scan.rejects.select(start, stop)
    skip = scan.bad_rows(start, stop)
    a = start
    for ids, mu, sigma, rows in iter_rows(index, start, stop, batch_size, skip):
        b = min(a + batch_size, stop)
        if len(rows):
            if hook is not None:
                hook(np.full(len(rows), k, np.int64), rows)
            part, bad = encode_or_reject(ids, mu, sigma, rows, spec, schema, on_bad)
            pieces.append(part)
            rej.extend(bad)
            tick(progress, b - a, part.column("nbits"))
        else:
            tick(progress, b - a)
        a = b
    table = pa.concat_tables(pieces) if pieces else schema.empty_table()
    return committer.commit(k, table, rej.sorted().table(index.id_kind))


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
    """Code the ``pending`` shards ``(k, start, stop)`` one after another in this process
    (:func:`code_shard`) and record each part with ``writer``."""
    for shard in pending:
        summary = code_shard(
            index,
            shard,
            spec,
            schema,
            writer.committer,
            batch_size=batch_size,
            scan=scan,
            on_bad=on_bad,
            progress=progress,
        )
        writer.record(shard[0], summary)
    from recray.backend import get_backend

    return {"actors": 0, "backend": get_backend(spec.backend).label, "driver_seconds": 0.0}
