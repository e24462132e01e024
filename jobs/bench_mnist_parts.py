"""Measure the MNIST codec parts on the test split: pixel-coding speed and overhead over
the ideal reconstruction term, the -ELBO split, and the classical baselines.

    python jobs/bench_mnist_parts.py [--n 10000] [--out docs/figures/mnist_parts.json]

z is one posterior sample per image (seed 0), standing in for the latent REC will send;
the pixel bytes are real constriction messages (default check bits), decoded and compared.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from recray.bench.mnist_baselines import format_table, mnist_baselines  # noqa: E402
from recray.codecs.pixels import (  # noqa: E402
    DEFAULT_CHECK_BITS,
    decode_pixels_chunked,
    encode_pixels_chunked,
)
from recray.data.mnist import load_mnist  # noqa: E402
from recray.models.vae import (  # noqa: E402
    load_mnist_vae,
    neg_elbo_bits,
    pixel_probabilities,
    posteriors,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    x = np.array(load_mnist("test")[0][: args.n])
    n = x.shape[0]
    model = load_mnist_vae()
    mu, sigma = posteriors(model, x)
    z = mu + sigma * np.random.default_rng(args.seed).standard_normal(mu.shape)
    elbo = neg_elbo_bits(model, x, z=z)
    tables = functools.partial(pixel_probabilities, model)

    t = time.perf_counter()
    for s in range(0, n, 256):
        tables(z[s : s + 256])
    t_tables = time.perf_counter() - t
    t = time.perf_counter()
    msgs = encode_pixels_chunked(x, z, tables)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    y = decode_pixels_chunked(msgs, z, tables)
    t_dec = time.perf_counter() - t
    if not np.array_equal(x, y):
        raise SystemExit("pixel round trip is not exact")
    real = 8.0 * np.array([len(m) for m in msgs])
    res = {
        "n_images": n,
        "check_bits": DEFAULT_CHECK_BITS,
        "kl_bits_per_image": float(elbo.kl.mean()),
        "ideal_reconstruction_bits_per_image": float(elbo.reconstruction.mean()),
        "neg_elbo_bits_per_image": float(elbo.total.mean()),
        "neg_elbo_bits_per_dim": float(elbo.total.mean() / 784),
        "pixel_bytes_bits_per_image": float(real.mean()),
        "pixel_overhead_bits_per_image": float((real - elbo.reconstruction).mean()),
        "tables_images_per_s": n / t_tables,
        "encode_images_per_s_incl_tables": n / t_enc,
        "decode_images_per_s_incl_tables": n / t_dec,
        "entropy_coding_only_ms_per_image": 1e3 * (t_enc + t_dec - 2 * t_tables) / (2 * n),
    }
    print(json.dumps(res, indent=2), flush=True)
    t = time.perf_counter()
    base = mnist_baselines(x)
    print(f"baselines ({time.perf_counter() - t:.1f}s):\n{format_table(base)}", flush=True)
    res["baselines_bits_per_image"] = {k: v.bits_per_image for k, v in base.items()}
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
