"""``recray bench compress``: items/s and peak memory of ``recray compress``.

A synthetic set of ``n`` items of ``dim`` dimensions is written first; then
``recray compress`` runs in a child process, so its peak resident memory
(``ru_maxrss`` of the child) is measured alone. Streaming keeps that peak independent of
``n``: compare two sizes with ``--n``. It runs the in-process engine (``--engine local``):
Ray's workers are not children of the measured process, so their memory would not be
counted; ``recray bench scale`` measures the Ray engine.
"""

from __future__ import annotations

import inspect
import os
import resource
import subprocess
import sys
import tempfile
import time

from recray.latents import synthesize
from recray.pipeline import driver

_COMPRESS = inspect.signature(driver.compress).parameters


def run_compress_bench(
    n: int = 1_000_000,
    dim: int = 64,
    method: str = _COMPRESS["method"].default,
    block_bits: float = _COMPRESS["block_bits"].default,
    batch_size: int = _COMPRESS["batch_size"].default,
    seed: int = _COMPRESS["seed"].default,
    workdir: str | None = None,
    extra=(),
) -> dict:
    """Synthesize ``n`` items of ``dim`` dimensions and time ``recray compress`` on them
    (``recray compress``'s defaults, ``--engine local``; ``extra``: more options)."""
    work = workdir or tempfile.mkdtemp(prefix="recray-bench-compress-")
    t0 = time.perf_counter()
    lat, pri = synthesize(n, dim, os.path.join(work, f"synth-{n}x{dim}"), seed=seed)
    t_synth = time.perf_counter() - t0
    out = os.path.join(work, f"run-{n}x{dim}-{method}")
    cmd = [
        sys.executable,
        "-m",
        "recray",
        "compress",
        lat,
        "--prior",
        pri,
        "--out",
        out,
        "--method",
        method,
        "--block-bits",
        str(block_bits),
        "--batch-size",
        str(batch_size),
        "--seed",
        str(seed),
        "--engine",
        "local",
        *extra,
    ]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu0 = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kib, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"compress failed ({proc.returncode}): {proc.stderr[-2000:]}")
    info = driver.inspect(out)
    return {
        "items": n,
        "dim": dim,
        "method": method,
        "block_bits": block_bits,
        "batch_size": batch_size,
        "synth_seconds": t_synth,
        "compress_seconds": wall,
        "items_per_s": n / wall,
        # CPU time of the compress process (all its threads): what a loaded machine
        # distorts least; 2 / cpu_ms_per_item * 1000 bounds the items/s of 2 free cores
        "cpu_seconds": cpu,
        "cpu_ms_per_item": 1000.0 * cpu / n,
        "load_average": os.getloadavg(),
        "peak_rss_mib": peak_kib / 1024.0,
        "peak_rss_note": "" if peak_kib > before else "an earlier child had a higher peak",
        "bits_per_item": info["bits_per_item"],
        "mean_kl_bits_per_item": info["mean_kl_bits_per_item"],
        "mean_steps_per_item": info["mean_steps_per_item"],
        "run_dir": out,
    }


def format_result(r: dict) -> str:
    return (
        f"compress {r['items']:,} items x {r['dim']} dims ({r['method']}, "
        f"{r['block_bits']:g}-bit blocks, batches of {r['batch_size']}): "
        f"{r['compress_seconds']:.1f} s, {r['items_per_s']:,.0f} items/s "
        f"({r['cpu_ms_per_item']:.2f} CPU-ms/item), peak RSS "
        f"{r['peak_rss_mib']:,.0f} MiB; {r['bits_per_item']:.1f} bits/item for "
        f"{r['mean_kl_bits_per_item']:.1f} bits of KL, {r['mean_steps_per_item']:.0f} "
        "steps/item"
    )
