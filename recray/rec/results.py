"""What the algorithm core returns: the indices a decoder needs, and an encode's results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recray.errors import InputError
from recray.rec.philox import RNG_VERSION


@dataclass(frozen=True)
class Indices:
    """What :func:`decode` needs per block: ``bin`` (n,) int64, the flat bin id ``j*`` in
    ``[0, 2^B)`` (0 for pfr/orc), and ``local`` (n,) int64, the 1-based local index ``n*``
    (the arrival index for pfr/orc); ``dim`` is the block dimension ``d``.

    ``as_array()`` gives the same as one int64 array ``(n, 2)`` = ``[bin, local]``.
    """

    bin: np.ndarray
    local: np.ndarray
    dim: int

    def as_array(self) -> np.ndarray:
        return np.stack([self.bin, self.local], axis=1)

    @classmethod
    def from_array(cls, a, dim: int) -> Indices:
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[1] != 2 or not np.issubdtype(a.dtype, np.integer):
            raise InputError(
                f"indices must be an integer array of shape (n_blocks, 2) = [bin, local]; "
                f"got dtype {a.dtype} and shape {a.shape}"
            )
        return cls(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), dim)

    def __len__(self) -> int:
        return int(self.bin.shape[0])


@dataclass(frozen=True)
class EncodeResult:
    """The outcome of :func:`encode`, host NumPy arrays, one row per block.

    samples    (n, d) float64  what each block decodes to (exact sample of Q for pfr/sp-pfr)
    indices    Indices         what ``decode`` needs
    steps      (n,) int64      candidates examined (the stopping arrival included)
    nbits      (n,) int64      exact length in bits of each block's coded index
    capped     (n,) bool       the search hit ``max_steps`` (only with ``on_cap="keep"``;
                               the sample is then the best found, not exact)
    kl_bits    (n,) float64    D_KL[Q || P] of each block, bits
    dinf_bits  (n,) float64    D_inf[Q || P'] = log2 r'_max, bits (exact methods; NaN else);
                               the expected number of steps is about 2^dinf_bits
    partition_bits (n,) int64  B per block
    backend_name   str         the backend that searched (``be.label``: numpy, cupy, numba,
                               cuda, cuda-simulator); a diagnostic, the results do not
                               depend on it
    rng_version    int         the RNG recipe the samples follow (docs/FORMAT.md)
    """

    samples: np.ndarray
    indices: Indices
    steps: np.ndarray
    nbits: np.ndarray
    capped: np.ndarray
    kl_bits: np.ndarray
    dinf_bits: np.ndarray
    partition_bits: np.ndarray
    method: str
    seed: int
    backend_name: str = "numpy"
    rng_version: int = RNG_VERSION
