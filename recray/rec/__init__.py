"""The algorithm core: relative entropy coding of diagonal-Gaussian blocks.

``encode``/``decode`` run PFR, ORC, SP-PFR and SP-ORC, batched over blocks, on NumPy or
CuPy. Nothing here knows about Ray or Arrow.
"""

from recray.rec.api import (
    DEFAULT_MAX_STEPS,
    EXACT_METHODS,
    METHODS,
    EncodeResult,
    ExactBounds,
    Indices,
    decode,
    encode,
    exact_bounds,
    exact_feasible,
)
from recray.rec.search import ChunkSchedule

__all__ = [
    "DEFAULT_MAX_STEPS",
    "EXACT_METHODS",
    "METHODS",
    "ChunkSchedule",
    "EncodeResult",
    "ExactBounds",
    "Indices",
    "decode",
    "encode",
    "exact_bounds",
    "exact_feasible",
]
