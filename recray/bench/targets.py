"""The 5-D Gaussian toy targets of the paper's Figure 3 (He, Flamich & Hernández-Lobato,
NeurIPS 2024) as we reproduce them: prior ``N(0, I)``, four informative dimensions and one
collapsed dimension (the target equals the prior there).

Families, each swept by one parameter ``t``:

* ``shifted``: ``s_q = 0.7``, ``mu = t`` in the informative dimensions;
* ``narrow``: ``mu = 0``, ``s_q = t``;
* ``typical``: a typical VAE posterior of total KL about ``t`` bits: ``s_q = 2^(-t/4)`` and
  ``mu ~ N(0, 1 - s_q^2)`` drawn per run (so the average target is the prior).

Closed forms (nats, per dimension, target ``N(m, s^2)`` against ``N(0, 1)``):
``KL = (s^2 + m^2 - 1)/2 - ln s`` and, for ``s < 1``,
``D_inf = ln sup q/p = -ln s + m^2 / (2 (1 - s^2))``.
"""

from __future__ import annotations

import math

import numpy as np

LN2 = math.log(2.0)
DIM = 5
INFORMATIVE = 4
FAMILIES = ("shifted", "narrow", "typical")


def kl_bits_per_dim(mu, s):
    return ((s * s + mu * mu - 1.0) / 2.0 - np.log(s)) / LN2


def dinf_bits_per_dim(mu, s):
    """log2 sup q/p per dimension; 0 where the target equals the prior."""
    out = (-np.log(s) + mu * mu / (2.0 * (1.0 - s * s) + (s == 1.0))) / LN2
    return np.where((s == 1.0) & (mu == 0.0), 0.0, out)


def targets(family: str, t: float, runs: int, seed: int):
    """``(mu, sigma)`` arrays ``(runs, 5)``: one target per run."""
    mu = np.zeros((runs, DIM))
    sigma = np.ones((runs, DIM))
    inf = slice(0, INFORMATIVE)
    if family == "shifted":
        mu[:, inf] = t
        sigma[:, inf] = 0.7
    elif family == "narrow":
        sigma[:, inf] = t
    elif family == "typical":
        s = 2.0 ** (-t / INFORMATIVE)
        rng = np.random.default_rng([seed, int(round(t * 1000))])
        sigma[:, inf] = s
        mu[:, inf] = rng.normal(size=(runs, INFORMATIVE)) * math.sqrt(1.0 - s * s)
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return mu, sigma


def sweep(family: str, quick: bool) -> list[float]:
    """Values of ``t`` that take ``D_inf`` (shifted, narrow) or the KL (typical) from about
    2 bits to beyond 20."""
    if family == "shifted":  # D_inf = 4 (0.357 + t^2 / 1.02) / ln 2
        ts = [0.0, 0.5, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2]
        return ts[::2] + [ts[-1]] if quick else ts
    if family == "narrow":  # D_inf = 4 log2(1/s)
        bits = [2, 4, 6, 8, 10, 12, 14, 16, 20, 24]
        bits = bits[::2] + [24] if quick else bits
        return [2.0 ** (-b / 4) for b in bits]
    if family == "typical":
        ks = [2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 32, 40, 48, 56]
        return [2, 6, 10, 16, 24, 32, 48] if quick else ks
    raise ValueError(f"unknown family {family!r}")
