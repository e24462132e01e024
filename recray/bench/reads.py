"""Read amplification of the latent readers: rows and bytes decoded per row handed out.

A Parquet row group is the smallest unit a reader decodes. Reading a range in chunks by
calling :meth:`recray.latents.io.RowIndex.read_table` once per chunk (what the engines did
before) decodes every overlapping row group again for each chunk: a file written as one
row group of ``n`` rows, read in chunks of ``c``, is decoded ``n / c`` times over.
:meth:`~recray.latents.io.RowIndex.iter_tables` (what the engines and the validation pass
use now) decodes each row group once, however small the chunks.

``run_reads`` writes such a file and reads it both ways, counting with
:data:`recray.latents.io.READ_STATS`: amplification = bytes decoded / bytes handed out.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recray.latents import io as lio


def _write(path: str, n: int, dim: int, row_group_rows: int) -> None:
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(n, dim))
    sigma = np.exp(rng.normal(-1.0, 0.1, size=(n, dim)))
    t = pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "mu": pa.FixedSizeListArray.from_arrays(pa.array(mu.reshape(-1)), dim),
            "sigma": pa.FixedSizeListArray.from_arrays(pa.array(sigma.reshape(-1)), dim),
        }
    )
    pq.write_table(t, path, row_group_size=row_group_rows)


def _measure(fn) -> dict:
    for k in lio.READ_STATS:
        lio.READ_STATS[k] = 0
    t0 = time.perf_counter()
    handed = fn()
    s = dict(lio.READ_STATS)
    return {
        "seconds": time.perf_counter() - t0,
        "rows_decoded": s["rows_decoded"],
        "bytes_decoded": s["bytes_decoded"],
        "bytes_returned": handed,
        "amplification": s["bytes_decoded"] / max(handed, 1),
    }


def run_reads(
    n: int = 20_000,
    dim: int = 16,
    chunk_rows: int = 1000,
    row_group_rows: int | None = None,
    workdir: str | None = None,
) -> dict:
    """Read ``n`` rows (one row group unless ``row_group_rows``) in chunks of
    ``chunk_rows``: once per chunk with ``read_table`` (before) and as one stream with
    ``iter_tables`` (now)."""
    work = workdir or tempfile.mkdtemp(prefix="recray-bench-reads-")
    path = os.path.join(work, "latents.parquet")
    _write(path, n, dim, row_group_rows or n)
    index = lio.LatentSource(path, dim).row_index()

    def per_chunk():
        return sum(
            index.read_table(a, min(a + chunk_rows, n)).nbytes for a in range(0, n, chunk_rows)
        )

    def streamed():
        return sum(t.nbytes for t in index.iter_tables(0, n, chunk_rows))

    return {
        "config": {
            "n": n,
            "dim": dim,
            "chunk_rows": chunk_rows,
            "row_group_rows": row_group_rows or n,
            "file_bytes": os.path.getsize(path),
        },
        "per_chunk_read_table": _measure(per_chunk),
        "iter_tables": _measure(streamed),
    }


def format_result(r: dict) -> str:
    c = r["config"]
    lines = [
        f"{c['n']:,} rows x {c['dim']} dims in row groups of {c['row_group_rows']:,} rows "
        f"({c['file_bytes']:,} bytes on disk), read in chunks of {c['chunk_rows']:,} rows:",
        "  reader                 decoded (MB)  handed out (MB)  amplification  seconds",
    ]
    for name in ("per_chunk_read_table", "iter_tables"):
        m = r[name]
        lines.append(
            f"  {name:22s} {m['bytes_decoded'] / 1e6:12.1f}  {m['bytes_returned'] / 1e6:15.1f}"
            f"  {m['amplification']:12.2f}x  {m['seconds']:7.2f}"
        )
    return "\n".join(lines)
