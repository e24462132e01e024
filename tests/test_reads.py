"""The latent readers decode each row group once, and hand out exactly the rows asked for."""

import pyarrow as pa
import pytest

from recray.bench.reads import run_reads
from recray.latents import io as lio


def test_streamed_reads_decode_each_row_group_once(tmp_path):
    r = run_reads(n=2000, dim=4, chunk_rows=100, workdir=str(tmp_path))
    assert r["per_chunk_read_table"]["amplification"] == pytest.approx(20.0, rel=1e-3)
    assert r["per_chunk_read_table"]["rows_decoded"] == 20 * 2000
    assert r["iter_tables"]["amplification"] == pytest.approx(1.0, rel=1e-3)
    assert r["iter_tables"]["rows_decoded"] == 2000


@pytest.mark.parametrize("start,stop,chunk", [(0, 2000, 64), (150, 1333, 100), (999, 1001, 7)])
def test_chunks_across_row_groups_are_the_rows_asked_for(tmp_path, start, stop, chunk):
    run_reads(n=2000, dim=4, chunk_rows=100, row_group_rows=300, workdir=str(tmp_path))
    index = lio.LatentSource(str(tmp_path / "latents.parquet"), 4).row_index()
    for k in lio.READ_STATS:
        lio.READ_STATS[k] = 0
    chunks = list(index.iter_tables(start, stop, chunk))
    assert all(c.num_rows == chunk for c in chunks[:-1]) and 0 < chunks[-1].num_rows <= chunk
    got = pa.concat_tables(chunks)
    assert got.column("id").to_pylist() == list(range(start, stop))
    groups = {g // 300 for g in range(start, stop)}
    assert lio.READ_STATS["rows_decoded"] == sum(min(300, 2000 - 300 * g) for g in groups)
