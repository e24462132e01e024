"""Fitting a run's index laws on a sample of its own input (``recray compress``'s default).

The learned laws (:mod:`recray.plan.laws`) model what the messages carry: each block's
local-index class, the interval of each partitioned dimension, and (adaptive partitions)
each block's flag and the extra bits. They depend on the plan, the method and the data, so
recray fits them per run: it codes a sample of the input with the plan's fixed laws,
counts the symbols, and writes the laws into the run's plan, where the decoder reads them
(the decoder needs nothing but the run). Coding does not depend on the laws (only the
message bytes do), so the sample's items are coded again with the fitted laws like every
other item.

The sample is ``n_items`` good rows taken as :data:`SAMPLE_CHUNKS` equal runs of
consecutive rows spread evenly over the input (a sorted input still gives a spread
sample), reading only the row groups it needs. It is a pure function of the input and the
settings, so a resumed run fits the same laws.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from recray.latents.io import RowIndex
from recray.pipeline.codec import CodecSpec, search_items
from recray.pipeline.local_engine import iter_rows
from recray.pipeline.validate import Scan
from recray.plan.laws import IndexLaws, estimate_laws

#: Items a run's laws are fitted on (``recray compress --fit-items``).
DEFAULT_FIT_ITEMS = 4096
#: ``laws="auto"`` fits laws on inputs of at least this many items (below it the fitted
#: tables, written once in the run's header, would cost more bits per item than they save).
AUTO_FIT_MIN_ITEMS = 16384
SAMPLE_CHUNKS = 16
LAWS_CHOICES = ("auto", "fit", "fixed")


def sample_ranges(n_rows: int, n_items: int, chunks: int = SAMPLE_CHUNKS) -> list:
    """``[(start, stop)]``: ``chunks`` runs of consecutive rows, ``n_items`` in all (or every
    row), spread evenly over ``n_rows``."""
    if n_items >= n_rows:
        return [(0, n_rows)]
    chunks = max(1, min(chunks, n_items))
    per = n_items // chunks
    out = []
    for c in range(chunks):
        size = per + (1 if c < n_items - per * chunks else 0)
        start = (c * n_rows) // chunks
        out.append((start, start + size))
    return out


def fit_laws(
    index: RowIndex, spec: CodecSpec, scan: Scan, n_items: int = DEFAULT_FIT_ITEMS
) -> tuple[IndexLaws, dict]:
    """Laws for ``spec``'s plan and method fitted on a sample of ``index`` (bad rows of
    ``scan`` left out): ``(laws, info)``, ``info`` with ``items`` (the sample's size) and
    ``seconds``. Blocks no exact route can code are coded by the fixed-budget twin for the
    count (laws only shape the message's bytes, never what is coded)."""
    t0 = time.perf_counter()
    fixed = dataclasses.replace(
        spec, plan=spec.plan.with_laws(None), on_unbounded="orc", backend=spec.backend
    )
    bins, local, extra, rows = [], [], [], 0
    for start, stop in sample_ranges(index.n_rows, n_items):
        skip = scan.bad_rows(start, stop)
        for ids, mu, sigma, r in iter_rows(index, start, stop, 4096, skip):
            if not len(r):
                continue
            res = search_items(ids, mu, sigma, fixed)
            bins.append(res.bins)
            local.append(res.local)
            if res.extra is not None:
                extra.append(res.extra)
            rows += len(r)
    nb = spec.plan.n_blocks
    radix = (
        spec.plan.block_radix
        if spec.partitioned
        else tuple((1,) * len(b) for b in spec.plan.blocks)
    )
    laws = estimate_laws(
        np.concatenate(bins) if bins else np.zeros((0, nb), np.int64),
        np.concatenate(local) if local else np.ones((0, nb), np.int64),
        block_radix=radix,
        extra=np.concatenate(extra) if extra else None,
        side=spec.adaptive,
        method=spec.method,
        source=f"{rows} items of the input, {SAMPLE_CHUNKS} evenly spread runs of rows",
    )
    return laws, {"items": rows, "seconds": time.perf_counter() - t0}
