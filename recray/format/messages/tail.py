"""Application symbols appended to an item's message in the same coder (a codec's data
under a model conditioned on the decoded latent)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tail:
    """Symbols an application appends to an item's message, in the same range coder,
    after the block indices (e.g. a codec's pixels under ``p(x | z)``): one message, one
    termination. ``symbols`` int32 ``(m,)``; ``model`` a constriction model family, with
    ``params`` its per-symbol parameters (e.g. ``Categorical(perfect=False)`` and float64
    probabilities ``(m, K)``) or ``None`` for a fixed model; ``ideal_bits`` the symbols'
    ``-log2 P`` (where the search for the shortest message starts)."""

    symbols: np.ndarray
    model: object
    params: np.ndarray | None
    ideal_bits: float

    def encode(self, encoder) -> None:
        """Encode the symbols."""
        if self.params is None:
            encoder.encode(self.symbols, self.model)
        else:
            encoder.encode(self.symbols, self.model, self.params)

    def decode(self, decoder) -> np.ndarray:
        """Decode the symbols' values (as many as ``symbols`` holds)."""
        if self.params is None:
            return decoder.decode(self.model, len(self.symbols))
        return decoder.decode(self.model, self.params)

    def decodes_from(self, decoder) -> bool:
        """Whether ``decoder`` decodes ``symbols`` next."""
        return np.asarray(self.decode(decoder)).astype(np.int32).tobytes() == (
            np.asarray(self.symbols, dtype=np.int32).tobytes()
        )
