"""``rec.encode`` / ``rec.decode``: the public entry points of the algorithm core.

Guarantees and requirements (both sides must share all of these for decoding to be exact):

* the same ``seed``, ``stream_ids``, ``method``, partition ``bits`` and prior
  (``prior_mu``, ``prior_sigma``), and the same RNG recipe version
  (:data:`recray.rec.philox.RNG_VERSION`, written down in ``docs/FORMAT.md``);
* nothing about the machine or backend: with RNG recipe version 2 the decoder's samples are
  built from correctly rounded IEEE operations only (docs/FORMAT.md section 4), so
  ``decode`` returns ``res.samples`` bit for bit on every backend (``numpy``, ``cupy``,
  ``numba``, ``cuda``) and CPU; the search itself makes the same decisions on every
  backend (same indices and step counts). Runs coded with version 1 decode with
  ``rng_version=1`` (SciPy's ``ndtri``: bit-exact only where the encoder's library was);
* block ``i``'s result depends only on its own row and ``(seed, stream_ids[i])``: it is the
  same alone or inside any batch, and for any chunk schedule.

PFR and SP-PFR return exact samples of Q; ORC and SP-ORC are approximate (fixed budget).
GPRS (greedy Poisson rejection sampling, Flamich 2023; :mod:`recray.rec.gprs`), for
one-dimensional blocks, is the per-dimension baseline; it is approximate (its stretch
function is a numerical integral) and not in ``EXACT_METHODS``. Its candidates are PFR's,
so its indices decode like PFR's.
"""

from __future__ import annotations

from recray.rec.bounds import (
    FEASIBLE_MARGIN_BITS,
    MAX_BATCH_BLOCKS,
    OUTSIDE_MAX_BITS,
    TABLE_BUDGET,
    ExactBounds,
    exact_bounds,
    exact_feasible,
    outside_bits,
    reach_of,
)
from recray.rec.decoder import decode
from recray.rec.encoder import encode, standard_problem
from recray.rec.inputs import (
    DEFAULT_MAX_STEPS,
    EXACT_METHODS,
    MAX_PARTITION_BITS,
    MAX_SAMPLES_LIMIT,
    MAX_STEPS_LIMIT,
    METHODS,
    MIN_SCALE_RATIO,
)
from recray.rec.results import EncodeResult, Indices
from recray.rec.search import ChunkSchedule
from recray.rec.trees import Trees

__all__ = [
    "exact_bounds",
    "exact_feasible",
    "outside_bits",
    "reach_of",
    "standard_problem",
    "ExactBounds",
    "METHODS",
    "EXACT_METHODS",
    "DEFAULT_MAX_STEPS",
    "FEASIBLE_MARGIN_BITS",
    "MAX_BATCH_BLOCKS",
    "MAX_PARTITION_BITS",
    "MAX_SAMPLES_LIMIT",
    "MAX_STEPS_LIMIT",
    "MIN_SCALE_RATIO",
    "OUTSIDE_MAX_BITS",
    "TABLE_BUDGET",
    "ChunkSchedule",
    "EncodeResult",
    "Indices",
    "Trees",
    "decode",
    "encode",
]
