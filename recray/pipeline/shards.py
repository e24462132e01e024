"""Shards: the unit of work, of commit and of resume.

The input's rows are cut into shards of ``shard_rows`` consecutive items; shard ``k`` holds
rows ``[k * shard_rows, (k + 1) * shard_rows)`` and becomes part ``k`` of the run. Engines
may split a shard into any batches and code them on any worker: :func:`encode_table` is a
pure function of each item, and a shard's part holds its rows in input order, so the part's
bytes never depend on how the work was spread.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recray.errors import InputError, RecrayError
from recray.format.run import crc32_of
from recray.pipeline.codec import CodecSpec, encode_items
from recray.pipeline.validate import Rejects

ON_BAD_ITEM = ("fail", "skip")

DEFAULT_SHARD_ROWS = 1 << 16


def shard_ranges(n_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of every shard of ``n_rows`` items."""
    if shard_rows < 1:
        raise InputError(f"shard_rows must be >= 1; got {shard_rows}")
    return [(a, min(a + shard_rows, n_rows)) for a in range(0, n_rows, shard_rows)]


def encode_table(ids, mu, sigma, spec: CodecSpec, schema: pa.Schema) -> pa.Table:
    """Code ``n`` items (``mu``, ``sigma`` float64 ``(n, D)``) into part rows with ``schema``
    (:func:`recray.format.run.part_schema`): id, message, nbits (``8 * len(message)``,
    bits actually written), crc32, kl_bits, steps, fallback_blocks [, z_debug]."""
    enc = encode_items(ids, mu, sigma, spec)
    n = len(enc.messages)
    cols = {
        "id": pa.array(ids, type=schema.field("id").type),
        "message": pa.array(enc.messages, type=pa.binary()),
        "nbits": pa.array(8 * np.fromiter(map(len, enc.messages), np.int64, n)),
        "crc32": pa.array(crc32_of(enc.messages)),
        "kl_bits": pa.array(enc.kl_bits),
        "steps": pa.array(enc.steps),
        "fallback_blocks": pa.array(enc.fallback_blocks),
        "adapted_blocks": pa.array(enc.adapted_blocks),
    }
    if "z_debug" in schema.names:
        cols["z_debug"] = pa.FixedSizeListArray.from_arrays(
            pa.array(enc.samples.reshape(-1)), mu.shape[1]
        )
    return pa.table(cols, schema=schema)


def encode_or_reject(ids, mu, sigma, rows, spec: CodecSpec, schema: pa.Schema, on_bad: str):
    """:func:`encode_table` for items at input rows ``rows`` (int64 ``(n,)``), and the
    items that failed (:class:`~recray.pipeline.validate.Rejects`).

    With ``on_bad="fail"`` the first failure raises its typed error. With ``"skip"`` a
    batch that fails is coded again item by item (an item's message does not depend on its
    batch), and each item that fails is rejected with its error's message: the validation
    pass finds bad input before coding, so this only meets what a search discovers."""
    try:
        return encode_table(ids, mu, sigma, spec, schema), Rejects()
    except RecrayError:
        if on_bad != "skip":
            raise
    rej = Rejects()
    good = []
    for i in range(len(rows)):
        sl = slice(i, i + 1)
        try:
            good.append(encode_table(ids[sl], mu[sl], sigma[sl], spec, schema))
        except RecrayError as exc:
            fld = "item" if exc.dim is None else f"latent dimension {exc.dim}"
            rej.add(int(rows[i]), ids[i], fld, str(exc), type(exc).__name__)
    table = pa.concat_tables(good) if good else schema.empty_table()
    return table, rej
