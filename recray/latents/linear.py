"""``recray datasets linear-gaussian``: mean-field posteriors of a linear-Gaussian model.

The model: ``z ~ N(0, I_D)``, ``x = W z + e``, ``e ~ N(0, noise^2 I_K)`` with ``K = 2 D``.
Each item draws its own ``z`` and ``x``; its posterior is the mean-field (factorized)
Gaussian closest to the exact one in ``D_KL[q || p(z|x)]``: the exact posterior mean
``m = L^-1 W^T x / noise^2`` with precision ``L = I + W^T W / noise^2``, and per-dimension
scale ``s_d = 1 / sqrt(L_dd)`` (every item shares the scales; only the means differ). This
is what an amortized Gaussian encoder learns on such data, without the training.

The columns of ``W`` are random directions (correlated, as a real decoder's are) with
lengths chosen so that dimension ``d`` has the posterior scale ``t_d`` it would have were
the columns orthogonal:

* ``informative`` dimensions: ``log2(1 / t_d)`` uniform in [0.5, 4] bits;
* ``collapsed`` dimensions: ``t_d`` uniform in [0.9986, 0.9997] (KL about 0.002 bits): a
  decoder that hardly uses them, whose posteriors sit a few hundredths of a prior-sigma
  from 0 with a scale just under the prior's (the near-collapsed dimensions of a VAE).

The prior is ``N(0, 1)``; its ``mutual_information_bits`` is the mean per-dimension KL over
the generated items (the estimate a trained model would ship). Written in chunks, so memory
stays bounded; deterministic in ``seed``.
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


def model_matrix(informative: int, collapsed: int, rng, noise: float = 1.0) -> np.ndarray:
    """``W`` ``(2 D, D)``: informative columns first, then collapsed (see the module
    docstring)."""
    D = informative + collapsed
    t = np.concatenate(
        [2.0 ** -rng.uniform(0.5, 4.0, informative), rng.uniform(0.9986, 0.9997, collapsed)]
    )
    dirs = rng.normal(size=(2 * D, D))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    return dirs * (noise * np.sqrt(1.0 / (t * t) - 1.0))[None, :]


def linear_gaussian(
    n: int,
    out_dir: str,
    *,
    informative: int = 24,
    collapsed: int = 24,
    seed: int = 0,
    noise: float = 1.0,
) -> tuple[str, str]:
    """Write ``out_dir/latents.parquet`` (``n`` items of ``D = informative + collapsed``
    dimensions, int64 ids ``0..n-1``, float64 ``mu``, ``sigma``) and ``out_dir/prior.json``;
    returns their paths."""
    if n < 1 or informative < 0 or collapsed < 0 or informative + collapsed < 1:
        raise InputError(
            f"linear-gaussian needs n >= 1 and at least one dimension; got n = {n}, "
            f"informative = {informative}, collapsed = {collapsed}"
        )
    if not noise > 0:
        raise InputError(f"noise must be > 0; got {noise}")
    D = informative + collapsed
    rng = np.random.default_rng(seed)
    W = model_matrix(informative, collapsed, rng, noise)
    prec = np.eye(D) + W.T @ W / noise**2
    chol = np.linalg.cholesky(prec)
    scale = 1.0 / np.sqrt(np.diag(prec))
    prior = Prior(np.zeros(D), np.ones(D), np.zeros(D))
    vec = pa.list_(pa.float64(), D)
    schema = pa.schema([("id", pa.int64()), ("mu", vec), ("sigma", vec)])
    os.makedirs(out_dir, exist_ok=True)
    lat_path = os.path.join(out_dir, "latents.parquet")
    kl_sum = np.zeros(D)
    with replacing(lat_path) as tmp, pq.ParquetWriter(tmp, schema) as w:
        for lo in range(0, n, CHUNK):
            k = min(CHUNK, n - lo)
            z = rng.normal(size=(k, D))
            x = z @ W.T + noise * rng.normal(size=(k, 2 * D))
            rhs = x @ W / noise**2  # (k, D): W^T x per item
            mu = np.linalg.solve(chol.T, np.linalg.solve(chol, rhs.T)).T
            sigma = np.broadcast_to(scale, (k, D))
            kl_sum += kl_bits_per_dim(mu, sigma, prior).sum(axis=0)
            w.write_table(
                pa.table(
                    {
                        "id": pa.array(np.arange(lo, lo + k, dtype=np.int64)),
                        "mu": pa.FixedSizeListArray.from_arrays(pa.array(mu.reshape(-1)), D),
                        "sigma": pa.FixedSizeListArray.from_arrays(
                            pa.array(np.ascontiguousarray(sigma).reshape(-1)), D
                        ),
                    },
                    schema=schema,
                )
            )
    prior = Prior(prior.mu, prior.sigma, np.maximum(kl_sum / n, 0.0))
    prior_path = os.path.join(out_dir, "prior.json")
    write_replacing(prior_path, json.dumps(json.loads(prior.to_json()), indent=1) + "\n")
    return lat_path, prior_path
