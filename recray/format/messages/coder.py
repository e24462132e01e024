"""The range coder both code paths share: constriction's queue (range coding, 32-bit
words, big-endian on the wire) and the search for the shortest byte string that still
decodes to a message's symbols (the termination, docs/FORMAT.md section 7)."""

from __future__ import annotations

import math

import constriction
import numpy as np

_queue = constriction.stream.queue
_model = constriction.stream.model
_CLASS_FAMILY = _model.Categorical(perfect=False)
_UNIFORM = _model.Uniform()


def _words_to_bytes(words: np.ndarray) -> bytes:
    return np.asarray(words, dtype=np.uint32).astype(">u4").tobytes()


def _bytes_to_words(data: bytes) -> np.ndarray:
    pad = -len(data) % 4
    if pad:
        data = bytes(data) + b"\0" * pad
    return np.frombuffer(data, dtype=">u4").astype(np.uint32)


def _candidates(full: bytes, n: int) -> list[bytes]:
    """The ``n``-byte prefix of ``full`` plus one unit in its last byte, then the prefix.

    The sealed range-coder output sits just above the interval's lower end, so the rounded-up
    prefix is the one that usually decodes: it is tried first.
    """
    head = full[:n]
    up = int.from_bytes(head, "big") + 1
    if up < 1 << (8 * n):
        return [up.to_bytes(n, "big"), head]
    return [head]


def _shortest(full: bytes, ideal: float, decodes) -> bytes:
    """Shortest byte string (>= 1 byte) decoding to these symbols, else ``full``;
    ``decodes(candidate)`` says whether a candidate decodes to exactly them.

    The byte strings that decode to the message are those whose zero-padded value lies in
    the coder's final interval ``[low, high)``; for ``n`` bytes the smallest grid point
    ``>= low`` is one of the two candidates, and if ``n`` bytes suffice so do ``n + 1``.
    So start at the ideal length rounded up to bytes (one byte lower when that is the
    whole output; constriction's quantization may cost a fraction of a bit more), walk
    down while a candidate decodes and up while none does. Each candidate is verified by
    decoding, so the result is correct even if this reasoning were off.
    """

    def ok(n: int) -> bytes | None:
        for cand in _candidates(full, n):
            if decodes(cand):
                return cand
        return None

    start = min(len(full) - 1, max(1, math.ceil(ideal / 8.0)))
    best = ok(start) if start >= 1 else None
    if best is not None:
        n = start - 1
        while n >= 1:
            shorter = ok(n)
            if shorter is None:
                break
            best, n = shorter, n - 1
        return best
    for n in range(start + 1, len(full)):
        best = ok(n)
        if best is not None:
            return best
    return full
