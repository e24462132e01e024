"""``recray datasets synth``: a latent data set drawn from a known generative model.

Per dimension ``d`` a posterior scale level ``s_d`` (in prior units); for item ``i``:
``s_id = min(0.999, s_d * 2^(0.25 e))``, ``e ~ N(0, 1)``, and ``mu_id ~ N(0, 1 - s_id^2)``,
so that the posteriors average back to the prior exactly (as a VAE's do). Informative
dimensions draw ``log2(1/s_d)`` uniformly from [0.5, 4] bits; collapsed dimensions have
``s_d`` in [0.998, 0.9995] (KL ~ 0.001 bits). The prior is ``N(0, 1)``; its
``mutual_information_bits`` is the mean per-dimension KL over the generated items (the
estimate a trained model would ship). Written in chunks, so memory stays bounded.

``outlier_fraction`` makes that share of items *outliers*: in one dimension drawn at random
the item's posterior sits far out, ``mu = +-U(3.5, 4.5)`` prior-sigma with
``s = 2^-U(1, 3)``: what a VAE gives an unusual input in a dimension the data set hardly
uses (and the plan gives few or no partition bits). Outliers are drawn after the other
items' values, so the clean items are the same with and without them.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recray.errors import InputError
from recray.latents.io import Prior, kl_bits_per_dim
from recray.localfiles import replacing, write_replacing

CHUNK = 65536


def dimension_levels(dim: int, informative_fraction: float, rng) -> np.ndarray:
    n_inf = int(round(dim * informative_fraction))
    levels = np.empty(dim)
    order = rng.permutation(dim)
    levels[order[:n_inf]] = 2.0 ** -rng.uniform(0.5, 4.0, n_inf)
    levels[order[n_inf:]] = rng.uniform(0.998, 0.9995, dim - n_inf)
    return levels


def synthesize(
    n: int,
    dim: int,
    out_dir: str,
    *,
    seed: int = 0,
    informative_fraction: float = 0.5,
    string_ids: bool = False,
    dtype: str = "float32",
    outlier_fraction: float = 0.0,
) -> tuple[str, str]:
    """Write ``out_dir/latents.parquet`` and ``out_dir/prior.json``; returns their paths."""
    if n < 1 or dim < 1:
        raise InputError(f"synth needs n >= 1 and dim >= 1; got n = {n}, dim = {dim}")
    if not 0.0 <= informative_fraction <= 1.0:
        raise InputError("informative_fraction must be in [0, 1]")
    if not 0.0 <= outlier_fraction <= 1.0:
        raise InputError("outlier_fraction must be in [0, 1]")
    out_rng = np.random.default_rng([seed, 1])
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    levels = dimension_levels(dim, informative_fraction, rng)
    prior = Prior(np.zeros(dim), np.ones(dim), np.zeros(dim))
    vec = pa.list_(pa.float32() if dtype == "float32" else pa.float64(), dim)
    schema = pa.schema(
        [("id", pa.string() if string_ids else pa.int64()), ("mu", vec), ("sigma", vec)]
    )
    lat_path = os.path.join(out_dir, "latents.parquet")
    kl_sum = np.zeros(dim)
    with replacing(lat_path) as tmp, pq.ParquetWriter(tmp, schema) as w:
        for lo in range(0, n, CHUNK):
            k = min(CHUNK, n - lo)
            s = np.minimum(
                0.999 if informative_fraction else 1.0,
                levels * 2.0 ** (0.25 * rng.normal(size=(k, dim))),
            )
            s = np.where(levels >= 0.998, levels, s)  # collapsed dims keep their level
            mu = rng.normal(size=(k, dim)) * np.sqrt(1.0 - s * s)
            if outlier_fraction:
                hit = np.flatnonzero(out_rng.random(k) < outlier_fraction)
                d = out_rng.integers(0, dim, hit.size)
                sign = np.where(out_rng.random(hit.size) < 0.5, -1.0, 1.0)
                mu[hit, d] = sign * out_rng.uniform(3.5, 4.5, hit.size)
                s[hit, d] = 2.0 ** -out_rng.uniform(1.0, 3.0, hit.size)
            mu_c = mu.astype(dtype)
            s_c = s.astype(dtype)
            kl_sum += kl_bits_per_dim(mu_c.astype(np.float64), s_c.astype(np.float64), prior).sum(
                axis=0
            )
            ids = (
                pa.array([f"item-{i:09d}" for i in range(lo, lo + k)])
                if string_ids
                else pa.array(np.arange(lo, lo + k, dtype=np.int64))
            )
            w.write_table(
                pa.table(
                    {
                        "id": ids,
                        "mu": pa.FixedSizeListArray.from_arrays(pa.array(mu_c.reshape(-1)), dim),
                        "sigma": pa.FixedSizeListArray.from_arrays(pa.array(s_c.reshape(-1)), dim),
                    },
                    schema=schema,
                )
            )
    mi = np.maximum(kl_sum / n, 0.0)
    prior = Prior(prior.mu, prior.sigma, mi)
    prior_path = os.path.join(out_dir, "prior.json")
    write_replacing(prior_path, json.dumps(json.loads(prior.to_json()), indent=1) + "\n")
    return lat_path, prior_path
