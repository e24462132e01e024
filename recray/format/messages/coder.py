"""The range coder both code paths share: constriction's queue (range coding, 32-bit
words, big-endian on the wire) and the search for the shortest byte string that still
decodes to a message's symbols (the termination, docs/FORMAT.md section 7).

**Checkpoints.** The search tries a few byte strings that differ from the sealed output
only in their last bytes, and each try used to decode the whole message again (for an
MNIST image, its 784 pixels: most of the search's time). A try may instead resume from a
decoder checkpoint (``RangeEncoder.pos()`` / ``RangeDecoder.seek``) recorded while the
tails were encoded, before the first word in which the candidate differs:

* a queue decoder reads one 32-bit word whenever the encoder wrote one, and it starts by
  reading two, so at a checkpoint of position ``p`` (words written, pending carries
  included) a decoder started at the front has read exactly words ``0 .. p + 1``, its
  state ``(lower, range)`` is the encoder's and its ``point`` is words ``p`` and ``p + 1``
  (constriction 0.5, ``src/stream/queue.rs``: ``decode_symbol``, ``read_point``, ``seek``);
* so if a candidate agrees with the output (both zero-padded, as the decoder reads past
  the end) on words ``0 .. p + 1``, it decodes everything before the checkpoint as the
  output does, and it decodes the rest exactly when a decoder seeked to the checkpoint on
  it does.

The string the search settles on is then decoded once more from the front
(:func:`_shortest`); if that ever failed, the search would be run again with whole decodes
only, so the termination stays verified by a full decode whatever the above.
"""

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


#: Tail symbols between two decoder checkpoints (64 pixels: about 80 bits of an MNIST image).
CHECK_EVERY = 64


def encode_tails(encoder, tails) -> tuple:
    """Encode ``tails`` (:class:`~recray.format.messages.tail.Tail`) into ``encoder`` (the
    same words as encoding each at once) and return the checkpoints: ``(position, state,
    tail, start)`` before every ``CHECK_EVERY``-th symbol of each tail, in order."""
    marks = []
    for t, tl in enumerate(tails):
        for a in range(0, len(tl.symbols), CHECK_EVERY):
            position, state = encoder.pos()
            marks.append((position, state, t, a))
            tl.encode(encoder, a, a + CHECK_EVERY)
    return tuple(marks)


def _first_difference(a: bytes, b: bytes) -> int:
    """The first byte at which ``a`` and ``b``, both zero-padded, differ (``max(len)`` if
    none)."""
    n = max(len(a), len(b))
    x = np.frombuffer(a.ljust(n, b"\0"), np.uint8)
    y = np.frombuffer(b.ljust(n, b"\0"), np.uint8)
    d = np.flatnonzero(x != y)
    return int(d[0]) if d.size else n


def tails_verdict(candidate: bytes, full: bytes, marks: tuple, tails) -> bool | None:
    """Whether ``candidate`` decodes to the message ``full`` encodes, decided by decoding
    from the last checkpoint of ``marks`` (:func:`encode_tails`) whose words the two share
    (see the module's docstring); ``None`` when no checkpoint qualifies."""
    f = _first_difference(candidate, full)
    mark = None
    for m in marks:
        if 4 * (m[0] + 2) > f:
            break
        mark = m
    if mark is None:
        return None
    position, state, t, a = mark
    try:
        dec = _queue.RangeDecoder(_bytes_to_words(candidate))
        dec.seek(position, state)
        if not tails[t].decodes_from(dec, a):
            return False
        return all(tl.decodes_from(dec) for tl in tails[t + 1 :])
    except (AssertionError, ValueError, RuntimeError, OverflowError, IndexError):
        return False


def _shortest(full: bytes, ideal: float, decodes, marks: tuple = (), tails=()) -> bytes:
    """Shortest byte string (>= 1 byte) decoding to these symbols, else ``full``;
    ``decodes(candidate)`` says whether a candidate decodes to exactly them. With the
    message's ``tails`` and their checkpoints ``marks`` (:func:`encode_tails`), each try is
    decided by :func:`tails_verdict` where a checkpoint qualifies; the string chosen that
    way is checked with ``decodes``, and the search is repeated with ``decodes`` alone
    should that check fail.

    The byte strings that decode to the message are those whose zero-padded value lies in
    the coder's final interval ``[low, high)``; for ``n`` bytes the smallest grid point
    ``>= low`` is one of the two candidates, and if ``n`` bytes suffice so do ``n + 1``.
    So start at the ideal length rounded up to bytes (one byte lower when that is the
    whole output; constriction's quantization may cost a fraction of a bit more), walk
    down while a candidate decodes and up while none does. Each candidate is verified by
    decoding, so the result is correct even if this reasoning were off.
    """

    if marks:

        def cheap(cand: bytes) -> bool:
            verdict = tails_verdict(cand, full, marks, tails)
            return decodes(cand) if verdict is None else verdict

        best = _shortest(full, ideal, cheap)
        return best if best is full or decodes(best) else _shortest(full, ideal, decodes)

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
