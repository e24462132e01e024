"""``recray bench throughput``: blocks/s and samples/s of SP-PFR on 16-bit blocks.

Blocks: typical posteriors in ``d = 8`` dimensions with 2 bits of KL each (16 bits per
block), partition ``B = round(KL)`` allocated by per-dimension KL. The same blocks are coded
once in large batched calls and once with one block per call; both must give identical
indices (checked), and the ratio of their rates is the batching speed-up.
``samples/s`` counts candidates examined (search steps) per second.
"""

from __future__ import annotations

import math
import time

import numpy as np

from recray import rec
from recray.backend import get_backend
from recray.bench.toy import allocate_rows


def make_blocks(n: int, d: int = 8, kl_bits: float = 16.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = 2.0 ** (-kl_bits / d)
    sigma = np.full((n, d), s)
    mu = rng.normal(size=(n, d)) * math.sqrt(1.0 - s * s)
    kl_d = ((sigma**2 + mu**2 - 1.0) / 2.0 - np.log(sigma)) / math.log(2.0)
    bits = allocate_rows(kl_d, "mi", seed)
    return mu, sigma, bits


def run_throughput(
    n_batched: int = 20000,
    n_single: int = 300,
    batch: int = 4096,
    d: int = 8,
    kl_bits: float = 16.0,
    backend=None,
    seed: int = 0,
) -> dict:
    be = get_backend(backend)
    mu, sigma, bits = make_blocks(n_batched, d, kl_bits, seed)
    ids = np.arange(n_batched, dtype=np.int64)
    # warm-up (imports, caches) on a few blocks
    rec.encode(mu[:8], sigma[:8], bits=bits[:8], stream_ids=ids[:8], backend=be)

    t0 = time.perf_counter()
    steps = 0
    bins, locs = [], []
    for lo in range(0, n_batched, batch):
        sl = slice(lo, lo + batch)
        r = rec.encode(mu[sl], sigma[sl], bits=bits[sl], stream_ids=ids[sl], backend=be)
        steps += int(r.steps.sum())
        bins.append(r.indices.bin)
        locs.append(r.indices.local)
    t_batched = time.perf_counter() - t0
    bins = np.concatenate(bins)
    locs = np.concatenate(locs)

    t0 = time.perf_counter()
    steps_single = 0
    same = True
    for i in range(n_single):
        r = rec.encode(
            mu[i : i + 1],
            sigma[i : i + 1],
            bits=bits[i : i + 1],
            stream_ids=ids[i : i + 1],
            backend=be,
        )
        steps_single += int(r.steps[0])
        same &= bool(r.indices.bin[0] == bins[i] and r.indices.local[0] == locs[i])
    t_single = time.perf_counter() - t0

    batched_bps = n_batched / t_batched
    single_bps = n_single / t_single
    return {
        "backend": be.name,
        "d": d,
        "kl_bits": kl_bits,
        "blocks_batched": n_batched,
        "batch_size": batch,
        "blocks_single": n_single,
        "batched_blocks_per_s": batched_bps,
        "batched_samples_per_s": steps / t_batched,
        "batched_seconds": t_batched,
        "mean_steps": steps / n_batched,
        "single_blocks_per_s": single_bps,
        "single_samples_per_s": steps_single / t_single,
        "single_seconds": t_single,
        "speedup": batched_bps / single_bps,
        "identical_indices": same,
    }


def format_result(r: dict) -> str:
    return "\n".join(
        [
            f"backend {r['backend']}: SP-PFR, d = {r['d']}, {r['kl_bits']:.0f}-bit typical blocks, "
            f"mean steps {r['mean_steps']:.1f}",
            f"  batched ({r['batch_size']} blocks/call, {r['blocks_batched']} blocks): "
            f"{r['batched_blocks_per_s']:,.0f} blocks/s, "
            f"{r['batched_samples_per_s']:,.0f} samples/s",
            f"  one block per call ({r['blocks_single']} blocks): "
            f"{r['single_blocks_per_s']:,.0f} blocks/s, "
            f"{r['single_samples_per_s']:,.0f} samples/s",
            f"  speed-up of batching: {r['speedup']:.1f}x; same indices both ways: "
            f"{r['identical_indices']}",
        ]
    )
