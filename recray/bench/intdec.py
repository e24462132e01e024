"""Integer decoder tables against the float ones: what the pixels cost under each.

For the same latent ``z`` per image (one posterior sample, seed 0: the latent's share is
the same under both tables, so only the pixel term moves), the codelength of the pixels
under the probabilities the range coder actually uses:

* integer tables: ``(w_v + 1) / 2^24`` (:func:`recray.models.intdec.coded_probabilities`);
* float tables (codec version 1): constriction's ``Categorical(perfect=False)`` quantization
  of :func:`recray.models.vae.pixel_probabilities` (its fast quantizer, reproduced here:
  left cumulative ``floor(F_{v-1} * (2^24 - 256) / F_255) + v`` with ``F`` the running sum).

Both are ideal codelengths (``-log2`` of the coded probabilities), without the range
coder's termination, which is the same for both.
"""

from __future__ import annotations

import time

import numpy as np

PIXELS = 784


def float_coded_bits(probs: np.ndarray, images: np.ndarray) -> np.ndarray:
    """``-log2`` per image of the probabilities constriction codes ``images`` with under
    float tables ``probs`` ``(n, 784, 256)`` (``Categorical(perfect=False)``)."""
    cum = np.cumsum(probs, axis=-1)  # sequential, as constriction sums
    norm = cum[..., -1:]
    before = np.concatenate([np.zeros_like(norm), cum[..., :-1]], axis=-1)
    left = np.floor(before * ((2.0**24 - 256) / norm)) + np.arange(256)
    right = np.concatenate([left[..., 1:], np.full_like(norm, 2.0**24)], axis=-1)
    n = images.shape[0]
    idx = (np.arange(n)[:, None], np.arange(PIXELS), images)
    return 24.0 * PIXELS - np.log2(right[idx] - left[idx]).sum(axis=1)


def compare_tables(limit: int | None = None, *, seed: int = 0, chunk: int = 100) -> dict:
    """Bits/image of the pixels under the integer and the float tables, and the time to
    build each table (ms/image, this process, one thread), on the first ``limit`` test
    images (all 10,000 by default)."""
    import torch

    from recray.data.mnist import load_mnist
    from recray.models import intdec, vae

    torch.set_num_threads(1)
    model = vae.load_mnist_vae()
    dec = intdec.load_int_decoder(intdec.int_decoder_path(vae.DEFAULT_WEIGHTS))
    images, _ = load_mnist("test")
    images = np.ascontiguousarray(images[:limit].reshape(-1, PIXELS))
    mu, sigma = vae.posteriors(model, images)
    z = mu + sigma * np.random.default_rng(seed).standard_normal(mu.shape)
    bits_int, bits_float = [], []
    t_int = t_float = 0.0
    for a in range(0, images.shape[0], chunk):
        x, zz = images[a : a + chunk], z[a : a + chunk]
        t = time.perf_counter()
        w = dec.tables(zz)
        t_int += time.perf_counter() - t
        t = time.perf_counter()
        p = vae.pixel_probabilities(model, zz)
        t_float += time.perf_counter() - t
        bits_int.append(intdec.ideal_bits(w, x))
        bits_float.append(float_coded_bits(p, x))
    bi, bf = np.concatenate(bits_int), np.concatenate(bits_float)
    n = images.shape[0]
    return {
        "images": n,
        "latent": f"one posterior sample per image (seed {seed}), the same for both tables",
        "pixel_bits_per_image_int_tables": float(bi.mean()),
        "pixel_bits_per_image_float_tables": float(bf.mean()),
        "change_bits_per_image": float((bi - bf).mean()),
        "change_pct": float(100 * (bi.mean() / bf.mean() - 1)),
        "max_change_bits_one_image": float(np.abs(bi - bf).max()),
        "tables_ms_per_image_int": 1e3 * t_int / n,
        "tables_ms_per_image_float": 1e3 * t_float / n,
        "decoder_sha256": dec.checksum,
    }


def time_tables(rows: int = 64, reps: int = 7, seed: int = 1) -> dict:
    """ms/image to build the tables of ``rows`` latent rows, integer and float in turn,
    ``reps`` times each; the fastest of each is kept (on a shared machine the minimum is
    the cost, the rest is other people's load). One thread."""
    import torch

    from recray.models import intdec, vae

    torch.set_num_threads(1)
    model = vae.load_mnist_vae()
    dec = intdec.load_int_decoder(intdec.int_decoder_path(vae.DEFAULT_WEIGHTS))
    z = np.random.default_rng(seed).standard_normal((rows, model.config.latent_dim))
    best = {"int": np.inf, "float": np.inf}
    for _ in range(reps):
        for name, f in (
            ("int", dec.tables),
            ("float", lambda z: vae.pixel_probabilities(model, z)),
        ):
            t = time.perf_counter()
            f(z)
            best[name] = min(best[name], time.perf_counter() - t)
    return {
        "rows": rows,
        "reps": reps,
        "tables_ms_per_image_int": 1e3 * best["int"] / rows,
        "tables_ms_per_image_float": 1e3 * best["float"] / rows,
    }
