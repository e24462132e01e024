"""Adaptive-partition side information at the head of a message (wire format step 0):
one flag per block, then the extra partition bits of the flagged blocks' dimensions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recray.format.messages.coder import _model
from recray.format.messages.layout import MAX_EXTRA_BITS, IndexLayout

#: Law of the per-block "adapted" flag: an adapted block is an outlier, about 1 in 1000.
ADAPT_FLAG_PROBS = np.array([1.0 - 2.0**-10, 2.0**-10])
#: Law of the extra bits of one dimension of an adapted block: 0 (most dimensions of the
#: block) with probability 3/4, else uniform over 1..MAX_EXTRA_BITS.
EXTRA_BITS_PROBS = np.concatenate([[0.75], np.full(MAX_EXTRA_BITS, 0.25 / MAX_EXTRA_BITS)])

_FLAG_MODEL = _model.Categorical(ADAPT_FLAG_PROBS, perfect=False)
_EXTRA_MODEL = _model.Categorical(EXTRA_BITS_PROBS, perfect=False)


@dataclass(frozen=True)
class _Side:
    """One message's side information: flags int32 ``(n_blocks,)`` and the extra bits of
    the flagged blocks' dimensions, int32, in wire order."""

    flags: np.ndarray
    extras: np.ndarray

    @classmethod
    def of(cls, extra_i: np.ndarray, layout: IndexLayout) -> _Side:
        flags = extra_i.any(axis=1)
        ext = [extra_i[b, :nd] for b, nd in enumerate(layout.adaptive_dims) if flags[b]]
        ext = np.concatenate(ext) if ext else np.zeros(0, dtype=np.int64)
        return cls(flags.astype(np.int32), ext.astype(np.int32))

    def encode(self, encoder) -> None:
        if self.flags.size:
            encoder.encode(self.flags, _FLAG_MODEL)
        if self.extras.size:
            encoder.encode(self.extras, _EXTRA_MODEL)

    @staticmethod
    def decode(decoder, layout: IndexLayout):
        """``(side, extra)``: the side symbols and the extra bits ``(n_blocks, S)``."""
        nb = layout.n_blocks
        flags = (
            np.asarray(decoder.decode(_FLAG_MODEL, nb), dtype=np.int32)
            if nb
            else (np.zeros(0, dtype=np.int32))
        )
        extra = np.zeros((nb, layout.max_block_dims), dtype=np.int64)
        n_ext = int(sum(nd for b, nd in enumerate(layout.adaptive_dims) if flags[b]))
        ext = (
            np.asarray(decoder.decode(_EXTRA_MODEL, n_ext), dtype=np.int32)
            if n_ext
            else np.zeros(0, dtype=np.int32)
        )
        pos = 0
        for b, nd in enumerate(layout.adaptive_dims):
            if flags[b]:
                extra[b, :nd] = ext[pos : pos + nd]
                pos += nd
        return _Side(flags, ext), extra

    def decodes_from(self, decoder) -> bool:
        """Whether ``decoder`` reads exactly this side information next: the decoder calls
        of :meth:`decode` (once the flags match, the number of extras is ``extras.size``),
        without building the extra-bits array."""
        if self.flags.size:
            got = decoder.decode(_FLAG_MODEL, self.flags.size)
            if np.asarray(got, dtype=np.int32).tobytes() != self.flags.tobytes():
                return False
        if self.extras.size:
            got = decoder.decode(_EXTRA_MODEL, self.extras.size)
            if np.asarray(got, dtype=np.int32).tobytes() != self.extras.tobytes():
                return False
        return True

    @property
    def ideal_bits(self) -> float:
        return float(
            -np.log2(ADAPT_FLAG_PROBS[self.flags]).sum()
            - np.log2(EXTRA_BITS_PROBS[self.extras]).sum()
        )


def _item_sides(extra: np.ndarray | None, layout: IndexLayout, n_items: int) -> list:
    """``(side, its ideal bits)`` of each of ``n_items`` items (``extra`` ``(n_items,
    n_blocks, S)``), or ``(None, 0.0)`` each without side information. Items without extra
    bits (nearly all) share one :class:`_Side`, built and costed once."""
    if extra is None:
        return [(None, 0.0)] * n_items
    flagged = extra.reshape(n_items, -1).any(axis=1)
    plain = None
    out = []
    for i in range(n_items):
        if flagged[i] or plain is None:
            side = _Side.of(extra[i], layout)
            entry = (side, side.ideal_bits)
            if not flagged[i]:
                plain = entry
        out.append(entry if flagged[i] else plain)
    return out
