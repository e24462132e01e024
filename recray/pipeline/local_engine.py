"""The in-process engine: codes shards one after another in this process.

The same shards, the same per-batch coding and the same parts as the Ray engine
(:mod:`recray.pipeline.ray_engine`), so the two write identical bytes; this one needs no
Ray and starts instantly, which suits tests, notebooks and small data sets.
"""

from __future__ import annotations

import pyarrow as pa

from recray.latents.io import RowIndex
from recray.pipeline.codec import CodecSpec
from recray.pipeline.shards import encode_table


def run_local(
    index: RowIndex,
    pending: list[tuple[int, int, int]],
    spec: CodecSpec,
    schema: pa.Schema,
    writer,
    *,
    batch_size: int,
    progress=None,
) -> dict:
    """Code the ``pending`` shards ``(k, start, stop)`` in batches of ``batch_size`` items
    and commit each through ``writer``; memory is bounded by one shard's part rows."""
    for k, start, stop in pending:
        pieces = []
        for a in range(start, stop, batch_size):
            b = min(a + batch_size, stop)
            ids, mu, sigma = index.read(a, b)
            pieces.append(encode_table(ids, mu, sigma, spec, schema))
            if progress:
                progress.update(b - a)
        writer.commit(k, pa.concat_tables(pieces))
    from recray.backend import get_backend

    return {"actors": 0, "backend": get_backend(spec.backend).label, "driver_seconds": 0.0}
