"""``recray bench throughput``: the NumPy reference against the compiled kernel, and decoding.

Blocks: typical posteriors in ``d = 8`` dimensions with 2 bits of KL each (16 bits per
block), partition ``B = round(KL)`` allocated by per-dimension KL. In one run:

* the batched NumPy reference (``backend="numpy"``, ``batch`` blocks per call) codes the
  first ``n_numpy`` blocks;
* the search kernel (``backend``, default ``"numba"``: the CPU kernel on all cores) codes
  all ``n_kernel`` blocks, in calls of ``batch`` blocks; its indices on the common blocks
  must equal the reference's (checked);
* ``rec.decode`` regenerates one sample per block for ``n_decode`` blocks (the kernel's
  indices, repeated under fresh stream ids) on the kernel's backend.

Rates: blocks/s, candidates/s (search steps) and ns per candidate-dimension (wall time
divided by steps x d; the lazy-dimension reject makes the kernel evaluate fewer). On a
shared machine wall time depends on what else runs, so the process's CPU time is reported
too (``*_cpu_seconds``, ``*_cpu_ns_per_candidate_dim``: summed over its threads), and
``speedup_cpu_time`` compares the two paths per unit of CPU time.
"""

from __future__ import annotations

import math
import os
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


def _encode_all(mu, sigma, bits, ids, batch, be):
    steps, bins, locs = 0, [], []
    c0 = time.process_time()
    t0 = time.perf_counter()
    for lo in range(0, mu.shape[0], batch):
        sl = slice(lo, lo + batch)
        r = rec.encode(mu[sl], sigma[sl], bits=bits[sl], stream_ids=ids[sl], backend=be)
        steps += int(r.steps.sum())
        bins.append(r.indices.bin)
        locs.append(r.indices.local)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return (wall, cpu), steps, np.concatenate(bins), np.concatenate(locs)


def _rates(prefix, n, times, steps, d):
    seconds, cpu = times
    return {
        f"{prefix}_blocks": n,
        f"{prefix}_seconds": seconds,
        f"{prefix}_cpu_seconds": cpu,
        f"{prefix}_cpu_ns_per_candidate_dim": 1e9 * cpu / (steps * d),
        f"{prefix}_blocks_per_s": n / seconds,
        f"{prefix}_candidates_per_s": steps / seconds,
        f"{prefix}_ns_per_candidate_dim": 1e9 * seconds / (steps * d),
        f"{prefix}_mean_steps": steps / n,
    }


def run_throughput(
    n_kernel: int = 20000,
    n_numpy: int = 1000,
    n_decode: int = 1_000_000,
    batch: int = 4096,
    d: int = 8,
    kl_bits: float = 16.0,
    backend="numba",
    seed: int = 0,
) -> dict:
    kbe = get_backend(backend)
    nbe = get_backend("numpy")
    n_kernel = max(n_kernel, n_numpy)
    mu, sigma, bits = make_blocks(n_kernel, d, kl_bits, seed)
    ids = np.arange(n_kernel, dtype=np.int64)
    for be in (nbe, kbe):  # warm-up (imports, compiled-code caches) on a few blocks
        rec.encode(mu[:8], sigma[:8], bits=bits[:8], stream_ids=ids[:8], backend=be)
        rec.decode(np.array([[0, 1]]), dim=d, bits=bits[:1], backend=be)

    t_np, s_np, b_np, l_np = _encode_all(
        mu[:n_numpy], sigma[:n_numpy], bits[:n_numpy], ids[:n_numpy], batch, nbe
    )
    t_k, s_k, b_k, l_k = _encode_all(mu, sigma, bits, ids, batch, kbe)
    same = bool(np.array_equal(b_np, b_k[:n_numpy]) and np.array_equal(l_np, l_k[:n_numpy]))

    reps = -(-n_decode // n_kernel)
    idx = np.stack([np.tile(b_k, reps)[:n_decode], np.tile(l_k, reps)[:n_decode]], axis=1)
    dec_bits = np.tile(bits, (reps, 1))[:n_decode]
    dec_ids = np.arange(n_decode, dtype=np.int64) + 10**9
    c0 = time.process_time()
    t0 = time.perf_counter()
    x = rec.decode(idx, bits=dec_bits, stream_ids=dec_ids, backend=kbe)
    t_dec = time.perf_counter() - t0
    c_dec = time.process_time() - c0
    n_check = min(n_decode, 2000)  # the reference regenerates the same bits
    x_ref = rec.decode(
        idx[:n_check], bits=dec_bits[:n_check], stream_ids=dec_ids[:n_check], backend=nbe
    )
    same_decode = bool(np.array_equal(x[:n_check], x_ref))

    out = {
        "backend": kbe.label,
        "d": d,
        "kl_bits": kl_bits,
        "batch_size": batch,
        **_rates("numpy", n_numpy, t_np, s_np, d),
        **_rates("kernel", n_kernel, t_k, s_k, d),
        "decode_blocks": n_decode,
        "decode_seconds": t_dec,
        "decode_blocks_per_s": n_decode / t_dec,
        "decode_cpu_seconds": c_dec,
        "identical_indices": same,
        "identical_decode": same_decode,
    }
    out["speedup"] = out["kernel_candidates_per_s"] / out["numpy_candidates_per_s"]
    out["speedup_cpu_time"] = (
        out["numpy_cpu_ns_per_candidate_dim"] / out["kernel_cpu_ns_per_candidate_dim"]
    )
    try:
        out["load_average"] = list(os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        out["load_average"] = None
    try:
        import numba

        out["threads"] = numba.get_num_threads()
    except ImportError:  # pragma: no cover - numba is a dependency
        out["threads"] = 1
    return out


def format_result(r: dict) -> str:
    def line(name, p):
        return (
            f"  {name} ({r[p + '_blocks']} blocks): {r[p + '_blocks_per_s']:,.0f} blocks/s, "
            f"{r[p + '_candidates_per_s']:,.0f} candidates/s, "
            f"{r[p + '_ns_per_candidate_dim']:.1f} ns per candidate-dimension "
            f"({r[p + '_cpu_ns_per_candidate_dim']:.1f} CPU-ns; mean steps "
            f"{r[p + '_mean_steps']:.0f})"
        )

    return "\n".join(
        [
            f"SP-PFR, d = {r['d']}, {r['kl_bits']:.0f}-bit typical blocks, "
            f"{r['batch_size']} blocks per call",
            line("numpy reference", "numpy"),
            line(f"kernel {r['backend']}, {r['threads']} threads", "kernel"),
            f"  speed-up of the kernel: {r['speedup']:.1f}x (wall), "
            f"{r['speedup_cpu_time']:.1f}x (CPU time); same indices: {r['identical_indices']}",
            f"  decode ({r['backend']}, one sample per block, {r['decode_blocks']:,} blocks): "
            f"{r['decode_blocks_per_s']:,.0f} blocks/s "
            f"({r['decode_blocks'] / r['decode_cpu_seconds']:,.0f} per CPU-second); "
            f"same bits as numpy: {r['identical_decode']}",
            f"  load average during the run: {r['load_average']}",
        ]
    )
