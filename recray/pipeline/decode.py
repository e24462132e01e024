"""Decoding a run's parts: what both engines of ``recray decompress`` run per part.

A part is decoded in batches of its rows (each message's CRC checked first, the item named
when one fails) into a table ``id``, ``z`` (``z`` the latent the encoder chose, float64,
fixed-size lists of ``D``). :func:`decode_part` is a pure function of the part's bytes,
so the decoded file is the same whoever decoded which part.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recray.format.run import Run, check_crcs
from recray.pipeline.codec import CodecSpec, decode_latents


def decoded_schema(id_kind: str, dim: int) -> pa.Schema:
    id_type = pa.int64() if id_kind == "int" else pa.string()
    return pa.schema([("id", id_type), ("z", pa.list_(pa.float64(), dim))])


def decoded_table(ids: list, msgs: list, spec: CodecSpec, schema: pa.Schema) -> pa.Table:
    """``id``, ``z`` of items whose messages' CRCs were checked."""
    int_ids = pa.types.is_int64(schema.field("id").type)
    z = decode_latents(np.asarray(ids, dtype=np.int64) if int_ids else ids, msgs, spec)
    return pa.table(
        {
            "id": pa.array(ids, type=schema.field("id").type),
            "z": pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), spec.plan.dim),
        },
        schema=schema,
    )


def decode_part(run: Run, file: str, spec: CodecSpec, schema: pa.Schema, batch_size: int):
    """``(table, nbits)`` per batch of ``batch_size`` rows of the part ``file``: the decoded
    items and their messages' lengths in bits. A message that fails its CRC raises
    :class:`~recray.errors.MessageError` naming the item."""
    pf = run.part_file(file)
    for rb in pf.iter_batches(batch_size=batch_size, columns=["id", "message", "crc32", "nbits"]):
        ids = rb.column("id").to_pylist()
        msgs = rb.column("message").to_pylist()
        check_crcs(ids, msgs, rb.column("crc32").to_numpy())
        yield decoded_table(ids, msgs, spec, schema), rb.column("nbits")
