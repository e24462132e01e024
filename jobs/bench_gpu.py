"""The GPU benchmark: the CUDA kernel's rate and the cross-backend decode check. Run from
the repository root on a machine with a CUDA GPU:

    PYTHONPATH=. python jobs/bench_gpu.py --out "$OUT"          (a few minutes)

Needs numpy, scipy, numba and numba-cuda (CuPy optional: its array backend joins the
decode check when it imports). Needs neither Ray nor constriction. Writes
``bench_gpu.json`` to ``--out`` and prints a summary.

What it measures:

1. **Decode check.** Mixed batches of every method are coded on ``numpy``, ``numba`` and
   ``cuda`` (and ``cupy`` where it works): indices and step counts must be equal, and
   ``decode`` on every backend must give the encoder's samples bit for bit.
2. **GPU rate** on SP-PFR blocks of 16 bits (8-D) and 48 bits (16-D), typical posteriors,
   bits by per-dimension KL (``recray.bench.throughput.make_blocks``): the kernel alone on
   one big batch (inputs already built; one thread per block), and ``rec.encode`` end to
   end (host tables included, 65,536 blocks per internal batch). Blocks/s, candidates/s
   and candidate-dimensions/s.
3. **One CPU core's kernel rate** on the same blocks (Numba, one thread), for the GPU/CPU
   ratio the issue asks for (target: >= 50x one core; >= 1e10 candidate-dims/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recray import rec  # noqa: E402
from recray.backend import cuda_available, cupy_available  # noqa: E402
from recray.bench.throughput import make_blocks  # noqa: E402
from recray.rec import api, kernels  # noqa: E402


def log(msg):
    print(msg, flush=True)


def problem(mu, sigma, bits, seed=0):
    return api.standard_problem(mu, sigma, bits, "sp-pfr", seed=seed)


def decode_check(backends, n=64, args_quick=False):
    from tests.test_determinism import SEED, make_batch

    out = {}
    for method in ("sp-pfr", "pfr", "sp-orc", "orc"):
        mu, sigma, per = make_batch(method, n=n, seed=5)
        if args_quick and "n_samples" in per:
            per["n_samples"] = np.full(n, 32)
        res = {
            be: rec.encode(mu, sigma, method=method, seed=SEED, backend=be, **per)
            for be in backends
        }
        ref = res["numpy"]
        dk = dict(method=method, seed=SEED, stream_ids=per["stream_ids"], bits=per.get("bits"))
        row = {}
        for be, r in res.items():
            row[be] = {
                "indices": bool(np.array_equal(r.indices.as_array(), ref.indices.as_array())),
                "steps": bool(np.array_equal(r.steps, ref.steps)),
                "samples": bool(np.array_equal(r.samples, ref.samples)),
                "decode": bool(
                    np.array_equal(rec.decode(r.indices, backend=be, **dk), ref.samples)
                ),
                "label": r.backend_name,
            }
        out[method] = row
        ok = all(all(v for k, v in c.items() if k != "label") for c in row.values())
        log(f"  {method}: {'identical' if ok else 'DIFFERENT'} on {', '.join(backends)}")
    return out


def rate(n, seconds, steps, d):
    return {
        "blocks": n,
        "seconds": seconds,
        "blocks_per_s": n / seconds,
        "candidates_per_s": steps / seconds,
        "candidate_dims_per_s": steps * d / seconds,
        "mean_steps": steps / n,
    }


def gpu_rates(name, d, kl, n_kernel, n_encode, n_cpu):
    import numba

    mu, sigma, bits = make_blocks(n_kernel, d, kl, seed=1)
    out = {"d": d, "kl_bits": kl}
    # compile and warm up on a few blocks
    kernels.search_gpu(problem(mu[:2], sigma[:2], bits[:2]))
    prob = problem(mu, sigma, bits)
    t0 = time.perf_counter()
    o = kernels.search_gpu(prob)
    t = time.perf_counter() - t0
    out["gpu_kernel"] = rate(n_kernel, t, int(o.steps.sum()), d)
    assert not o.capped.any()
    log(f"  {name} GPU kernel: {out['gpu_kernel']}")

    t0 = time.perf_counter()
    r = rec.encode(mu[:n_encode], sigma[:n_encode], bits=bits[:n_encode], backend="cuda")
    t = time.perf_counter() - t0
    out["gpu_encode"] = rate(n_encode, t, int(r.steps.sum()), d)
    same = np.array_equal(r.indices.bin, o.bin[:n_encode]) and np.array_equal(
        r.indices.local, o.local[:n_encode]
    )
    out["gpu_encode"]["same_as_kernel_run"] = bool(same)
    log(f"  {name} GPU rec.encode: {out['gpu_encode']}")

    numba.set_num_threads(1)
    sub = problem(mu[:n_cpu], sigma[:n_cpu], bits[:n_cpu])
    kernels.search_cpu(problem(mu[:8], sigma[:8], bits[:8]))
    t0 = time.perf_counter()
    c = kernels.search_cpu(sub)
    t = time.perf_counter() - t0
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    out["cpu_one_core"] = rate(n_cpu, t, int(c.steps.sum()), d)
    out["cpu_same_indices"] = bool(
        np.array_equal(c.bin, o.bin[:n_cpu]) and np.array_equal(c.local, o.local[:n_cpu])
    )
    out["gpu_over_one_cpu_core"] = (
        out["gpu_kernel"]["candidates_per_s"] / out["cpu_one_core"]["candidates_per_s"]
    )
    log(f"  {name} CPU, one core: {out['cpu_one_core']}")
    log(f"  {name} GPU / one CPU core: {out['gpu_over_one_cpu_core']:.1f}x")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke test (e.g. under the simulator)"
    )
    args = ap.parse_args(argv)
    if not cuda_available(simulator=False) and not os.environ.get("NUMBA_ENABLE_CUDASIM"):
        log("no usable CUDA GPU (numba-cuda); nothing to measure")
        return 2
    from numba import cuda

    info = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import numba

        info["numba"] = numba.__version__
        dev = cuda.get_current_device()
        info["gpu"] = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        info["compute_capability"] = list(dev.compute_capability)
    except Exception as exc:  # the simulator has no device name
        info["gpu"] = f"unknown ({exc})"
    log(f"machine: {info}")
    result = {"info": info}

    backends = ["numpy", "numba", "cuda"] + (["cupy"] if cupy_available() else [])
    log("decode check:")
    t0 = time.perf_counter()
    result["decode_check"] = decode_check(backends, 4 if args.quick else 64, args.quick)
    log(f"  ({time.perf_counter() - t0:.1f} s)")

    sizes = {
        "16-bit": (8, 16.0, 1 << 18, 1 << 16, 2000),
        "48-bit": (16, 48.0, 1 << 16, 1 << 14, 200),
    }
    if args.quick:
        # a smoke test: under the simulator a 48-bit block's ~2^15 steps take too long
        sizes = {k: (d, min(kl, 16.0), 2, 1, 1) for k, (d, kl, *_) in sizes.items()}
    result["rates"] = {}
    for name, (d, kl, nk, ne, nc) in sizes.items():
        t0 = time.perf_counter()
        result["rates"][name] = gpu_rates(name, d, kl, nk, ne, nc)
        log(f"  ({time.perf_counter() - t0:.1f} s)")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bench_gpu.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    log(f"wrote {path}")
    checks = [
        all(v for k, v in c.items() if k != "label")
        for row in result["decode_check"].values()
        for c in row.values()
    ]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
