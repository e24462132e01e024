"""The range coder both code paths share: constriction's queue (range coding, 32-bit
words, big-endian on the wire) and the search for the shortest byte string that still
decodes to a message's symbols (the termination, docs/FORMAT.md section 7).

**The final interval.** The search tries a few byte strings that differ from the sealed
output only in their last bytes. Each try used to be decided by decoding it (for an MNIST
image, its 784 pixels), later by decoding from a checkpoint near its end; both were most of
the coder's time. A try is now decided by comparing integers:

* after the last symbol, ``RangeEncoder.pos()`` gives ``(p, (lower, range))``: ``p`` words
  written (pending carries included) and the coder's state; a queue decoder that has read
  the same symbols holds that state, with its point made of words ``p`` and ``p + 1`` of
  the stream, zero past its end (constriction 0.5, ``src/stream/queue.rs``:
  ``decode_symbol``, ``read_point``, ``seek``);
* so, reading words ``0 .. p + 1`` of a zero-padded string as one integer, the strings that
  decode to the message are those in ``[P 2^64 + lower, P 2^64 + lower + range)``, where
  ``P`` is the value of words ``0 .. p - 1`` before the last carry: the sealed output's, or
  one less when its point carried into them (:func:`in_final_interval`).

The string the search settles on is then decoded once from the front (:func:`_shortest`);
if that ever failed, the search would be run again with whole decodes, so the termination
stays verified by a decode whatever the above. On the messages of 300 MNIST images (the
latent messages and the image messages, every length, both candidates: 81,190 tries) the
comparison and the decode agreed on every try.
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


def encode_tails(encoder, tails) -> tuple:
    """Encode ``tails`` (:class:`~recray.format.messages.tail.Tail`) into ``encoder``, the
    message's last symbols, and return its final interval ``(p, (lower, range))``
    (``RangeEncoder.pos()``, see the module's docstring)."""
    for tl in tails:
        tl.encode(encoder)
    return encoder.pos()


def in_final_interval(candidate: bytes, full: bytes, final: tuple) -> bool | None:
    """Whether ``candidate`` decodes to the message whose sealed output is ``full`` and
    whose final interval is ``final`` (:func:`encode_tails`), by integer comparison (see
    the module's docstring); ``None`` when ``full`` itself is not in the interval as read
    (the reading would be wrong: decide by decoding)."""
    p, (lower, width) = final
    n = 4 * (p + 2)

    def value(b: bytes) -> int:  # words 0 .. p + 1, zero-padded, as one integer
        return int.from_bytes(bytes(b[:n]).ljust(n, b"\0"), "big")

    prefix, point = divmod(value(full), 1 << 64)
    if not lower <= point < lower + width:
        if not point + (1 << 64) < lower + width:
            return None
        prefix -= 1  # the sealed point carried into the words before it
    low = (prefix << 64) + lower
    return low <= value(candidate) < low + width


def _shortest(full: bytes, ideal: float, decodes, final: tuple | None = None) -> bytes:
    """Shortest byte string (>= 1 byte) decoding to these symbols, else ``full``;
    ``decodes(candidate)`` says whether a candidate decodes to exactly them. With the
    message's final interval ``final`` (:func:`encode_tails`), each try is decided by
    :func:`in_final_interval`; the string chosen that way is checked with ``decodes``, and
    the search is repeated with ``decodes`` alone should that check fail.

    The byte strings that decode to the message are those whose zero-padded value lies in
    the coder's final interval ``[low, high)``; for ``n`` bytes the smallest grid point
    ``>= low`` is one of the two candidates, and if ``n`` bytes suffice so do ``n + 1``.
    So start at the ideal length rounded up to bytes (one byte lower when that is the
    whole output; constriction's quantization may cost a fraction of a bit more), walk
    down while a candidate decodes and up while none does. The result is verified by
    decoding, so it is correct even if this reasoning were off.
    """

    if final is not None:

        def cheap(cand: bytes) -> bool:
            verdict = in_final_interval(cand, full, final)
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
