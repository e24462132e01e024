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
from recray.pipeline.shards import encode_or_reject
from recray.pipeline.validate import Rejects, Scan


def read_rows(index: RowIndex, start: int, stop: int, skip: np.ndarray):
    """Validated ``(ids, mu, sigma, rows)`` of input rows ``[start, stop)`` without the
    rows in ``skip`` (sorted int64, the items the validation pass rejected)."""
    t = index.read_table(start, stop)
    rows = np.arange(start, stop, dtype=np.int64)
    if skip.size:
        keep = ~np.isin(rows, skip)
        t = t.filter(pa.array(keep))
        rows = rows[keep]
    ids, mu, sigma = validate_batch(t, index.dim, index.id_kind)
    return ids, mu, sigma, rows


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
    """Code the ``pending`` shards ``(k, start, stop)`` in batches of ``batch_size`` items
    and commit each through ``writer`` with its rejected items (``scan``'s and those a
    search failed on, with ``on_bad="skip"``); memory is bounded by one shard's rows."""
    for k, start, stop in pending:
        pieces = []
        rej = scan.rejects.select(start, stop)
        skip = scan.bad_rows(start, stop)
        for a in range(start, stop, batch_size):
            b = min(a + batch_size, stop)
            ids, mu, sigma, rows = read_rows(index, a, b, skip)
            if len(rows):
                part, bad = encode_or_reject(ids, mu, sigma, rows, spec, schema, on_bad)
                pieces.append(part)
                rej = _merge(rej, bad)
            if progress:
                progress.update(b - a)
        table = pa.concat_tables(pieces) if pieces else schema.empty_table()
        writer.commit(k, table, rej.sorted().table(index.id_kind))
    from recray.backend import get_backend

    return {"actors": 0, "backend": get_backend(spec.backend).label, "driver_seconds": 0.0}


def _merge(a: Rejects, b: Rejects) -> Rejects:
    for f in ("rows", "ids", "fields", "reasons", "errors"):
        getattr(a, f).extend(getattr(b, f))
    return a
