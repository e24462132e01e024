"""``recray bench outliers``: default settings on data with outliers, and what adaptive
partitions cost.

Two synthetic sets of ``n`` items of ``dim`` dimensions from the same generator and seed,
one clean and one with a share of outlier items (one dimension far out, see
:func:`recray.latents.synthesize`), are compressed with ``recray compress``'s defaults
(``sp-pfr``, exact, adaptive partitions on). For each: items, rejects, fallback blocks (0
means every item is an exact sample), adapted blocks, bits/item from the bytes written,
and the side information inside them: the ideal ``-log2 P`` of the per-block flags and
extra-bit symbols (:mod:`recray.format.messages`, wire step 0), per item.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from recray.format.messages import read_head
from recray.format.run import Run
from recray.latents import synthesize
from recray.latents.io import Prior
from recray.pipeline import driver
from recray.pipeline.driver import spec_from_header


def side_information_bits(run_dir: str) -> tuple[float, float]:
    """Ideal bits of the adaptive-partition side information, and the extra partition bits
    (bin-field bits added), both summed over the run's items."""
    from recray.format.messages import ADAPT_FLAG_PROBS, EXTRA_BITS_PROBS

    run = Run.open(run_dir, verify_parts=False)
    spec = spec_from_header(run.header, Prior.from_dict(json.loads(run.prior_json)))
    layout = spec.layout
    if not layout.adaptive:
        return 0.0, 0.0
    side = extra_bits = 0.0
    for path in run.part_paths():
        for msg in pq.read_table(path, columns=["message"]).column("message").to_pylist():
            e = read_head(msg, layout).extra
            flags = e.any(axis=1)
            side -= np.log2(ADAPT_FLAG_PROBS[flags.astype(int)]).sum()
            for b, nd in enumerate(layout.adaptive_dims):
                if flags[b]:
                    side -= np.log2(EXTRA_BITS_PROBS[e[b, :nd]]).sum()
            extra_bits += float(e.sum())
    return float(side), extra_bits


def run_outlier_bench(
    n: int = 100_000,
    dim: int = 64,
    outlier_fraction: float = 0.01,
    seed: int = 0,
    engine: str = "local",
    workdir: str | None = None,
) -> dict:
    work = workdir or tempfile.mkdtemp(prefix="recray-bench-outliers-")
    rows = []
    for frac in (0.0, outlier_fraction):
        d = os.path.join(work, f"synth-{n}x{dim}-{frac:g}")
        lat, pri = synthesize(n, dim, d, seed=seed, outlier_fraction=frac)
        out = os.path.join(work, f"run-{n}x{dim}-{frac:g}")
        t0 = time.perf_counter()
        info = driver.compress(lat, pri, out, engine=engine)
        wall = time.perf_counter() - t0
        side, extra = side_information_bits(out)
        rows.append(
            {
                "outlier_fraction": frac,
                "items": info["items"],
                "rejects": info["rejects"],
                "fallback_blocks": info["fallback_blocks"],
                "adapted_blocks": info["adapted_blocks"],
                "blocks": info["items"] * info["n_blocks"],
                "bits_per_item": info["bits_per_item"],
                "mean_kl_bits_per_item": info["mean_kl_bits_per_item"],
                "side_info_bits_per_item": side / info["items"],
                "extra_partition_bits_per_item": extra / info["items"],
                "validation_seconds": info["validation_seconds"],
                "compress_seconds": wall,
                "items_per_s": info["items"] / wall,
                "mean_steps_per_item": info["mean_steps_per_item"],
            }
        )
    return {"n": n, "dim": dim, "engine": engine, "rows": rows}


def format_result(r: dict) -> str:
    lines = [f"outliers bench: {r['n']:,} items x {r['dim']} dims, defaults ({r['engine']})"]
    for w in r["rows"]:
        lines.append(
            f"  outliers {100 * w['outlier_fraction']:.1f}%: {w['items']:,} items exact "
            f"(fallback blocks {w['fallback_blocks']}, rejects {w['rejects']}), "
            f"{w['adapted_blocks']:,} of {w['blocks']:,} blocks adapted; "
            f"{w['bits_per_item']:.2f} bits/item ({w['mean_kl_bits_per_item']:.2f} KL), side "
            f"information {w['side_info_bits_per_item']:.4f} bits/item + "
            f"{w['extra_partition_bits_per_item']:.3f} extra partition bits/item; "
            f"validation {w['validation_seconds']:.1f} s of {w['compress_seconds']:.1f} s "
            f"({w['items_per_s']:,.0f} items/s)"
        )
    return "\n".join(lines)
