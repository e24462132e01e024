"""The fixed codes (message codec versions 1, 2 and 4, and 3 without laws): classes of the
local indices under fixed class laws, every other field as uniform chunks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recray.errors import MessageError
from recray.format.messages.coder import (
    _CLASS_FAMILY,
    _UNIFORM,
    _bytes_to_words,
    _queue,
    _shortest,
    _words_to_bytes,
    encode_tails,
)
from recray.format.messages.layout import (
    _CHUNK_SHIFTS,
    _MAX_CLASS,
    MAX_BIN_BITS,
    Head,
    IndexLayout,
    _bin_widths,
    _chunk_widths,
    _field_widths,
    _floor_log2,
)
from recray.format.messages.side import _item_sides, _Side
from recray.rec.randomness import MAX_LOCAL_INDEX


def _symbols(bins: np.ndarray, local: np.ndarray, layout: IndexLayout, extra=None):
    """Symbols of ``n_items`` messages. ``bins``/``local`` int64 ``(n_items, n_blocks)``;
    ``extra`` the checked extra partition bits or ``None``.

    Returns ``classes`` int32 ``(n_items, n_blocks)`` (``None`` for ``"raw"``), chunk values
    and chunk widths (bits) ``(n_items, 2 n_blocks, 4)`` int64, and the chunk mask (width > 0).
    Flattening an item's masked chunks gives its uniform symbols in wire order.
    """
    n_items, nb = bins.shape
    values = np.empty((n_items, 2 * nb), dtype=np.int64)
    values[:, 0::2] = bins
    if layout.code == "universal":
        classes = _floor_log2(local)
        values[:, 1::2] = local - np.left_shift(np.int64(1), classes)
    else:
        classes = None
        values[:, 1::2] = local - 1
    cw = _chunk_widths(_field_widths(classes, layout, _bin_widths(layout, extra, n_items)))
    cv = (values[..., None] >> _CHUNK_SHIFTS) & (np.left_shift(np.int64(1), cw) - 1)
    cls32 = None if classes is None else classes.astype(np.int32)
    return cls32, cv, cw, cw > 0


def _decode_symbols(data: bytes, layout: IndexLayout):
    """Decode the raw symbols of one message (no range checks on the reassembled values).

    Returns ``classes`` int32 ``(n_blocks,)`` or ``None`` (raw), the chunk widths
    ``(2 n_blocks, 4)`` and mask, the uniform symbols int32 in wire order, the extra
    partition bits ``(n_blocks, S)`` (``None`` without side information), and the decoder
    (positioned after them).
    Raises :class:`MessageError` when constriction rejects the data.
    """
    try:
        words = _bytes_to_words(data)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"message must be bytes; got {type(data).__name__}") from exc
    nb = layout.n_blocks
    try:
        decoder = _queue.RangeDecoder(words)
        extra = None
        if layout.adaptive:
            _, extra = _Side.decode(decoder, layout)
        classes = None
        if layout.code == "universal" and nb:
            classes = np.asarray(decoder.decode(_CLASS_FAMILY, layout.class_probs), dtype=np.int32)
        elif layout.code == "universal":
            classes = np.zeros(0, dtype=np.int32)
        bin_w = _bin_widths(layout, None if extra is None else extra[None], 1)
        if int(bin_w.max(initial=0)) > MAX_BIN_BITS:
            raise ValueError(f"extra partition bits give a {int(bin_w.max())}-bit bin field")
        cw = _chunk_widths(_field_widths(classes, layout, bin_w)[0])
        mask = cw > 0
        sizes = np.left_shift(1, cw[mask]).astype(np.int32)
        chunks = (
            np.asarray(decoder.decode(_UNIFORM, sizes), dtype=np.int32)
            if sizes.size
            else np.zeros(0, dtype=np.int32)
        )
    except (AssertionError, ValueError, RuntimeError, OverflowError, IndexError) as exc:
        raise MessageError(
            f"message does not decode under this layout: constriction says {exc}"
        ) from exc
    return classes, cw, mask, chunks, extra, decoder


def _encode_words(
    classes, chunks: np.ndarray, sizes: np.ndarray, class_probs, tail: Sequence = (), side=None
) -> tuple[np.ndarray, tuple]:
    """The message's words and its final interval (:func:`encode_tails`)."""
    encoder = _queue.RangeEncoder()
    if side is not None:
        side.encode(encoder)
    if classes is not None and classes.size:
        encoder.encode(classes, _CLASS_FAMILY, class_probs)
    if chunks.size:
        encoder.encode(chunks, _UNIFORM, sizes)
    final = encode_tails(encoder, tail)
    return encoder.get_compressed(), final


def _decodes_to(
    candidate: bytes, layout: IndexLayout, classes, sizes, chunks, tail: Sequence = (), side=None
) -> bool:
    """Whether ``candidate`` decodes to exactly these symbols.

    The same decoder calls as :func:`_decode_symbols` (same words, models and order); once
    the side information and classes match, the chunk sizes :func:`_decode_symbols` would
    derive from them are ``sizes``, so they are passed in rather than recomputed.
    """
    try:
        decoder = _queue.RangeDecoder(_bytes_to_words(candidate))
        if side is not None and not side.decodes_from(decoder):
            return False
        if classes is not None:
            got = decoder.decode(_CLASS_FAMILY, layout.class_probs)
            if got.tobytes() != classes.tobytes():
                return False
        if sizes.size:
            got = decoder.decode(_UNIFORM, sizes)
            if got.tobytes() != chunks.tobytes():
                return False
        return all(t.decodes_from(decoder) for t in tail)
    except (AssertionError, ValueError, RuntimeError, OverflowError, IndexError):
        return False


def _ideal_rows(classes, cw: np.ndarray, layout: IndexLayout) -> np.ndarray:
    bits = cw.sum(axis=(-1, -2)).astype(np.float64)
    if classes is not None:
        probs = layout.class_probs  # (n_blocks, 63)
        blocks = np.arange(layout.n_blocks)
        bits = bits - np.log2(probs[blocks, classes]).sum(axis=-1)
    return bits


def _encode_rows(
    bins: np.ndarray,
    local: np.ndarray,
    layout: IndexLayout,
    tails: Sequence | None = None,
    extra: np.ndarray | None = None,
) -> list[bytes]:
    classes, cv, cw, mask = _symbols(bins, local, layout, extra)
    ideal = _ideal_rows(classes, cw, layout)
    sizes_all = np.left_shift(1, cw).astype(np.int32)
    cv32 = cv.astype(np.int32)
    sides = _item_sides(extra, layout, bins.shape[0])
    out: list[bytes] = []
    for i in range(bins.shape[0]):
        m = mask[i]
        chunks = cv32[i][m]
        cls = None if classes is None else classes[i]
        tail = () if tails is None else tuple(tails[i])
        side, side_bits = sides[i]
        if not chunks.size and (cls is None or not cls.size) and not tail and side is None:
            out.append(b"")
            continue
        sizes = sizes_all[i][m]
        words, final = _encode_words(cls, chunks, sizes, layout.class_probs, tail, side)
        full = _words_to_bytes(words)
        bits = float(ideal[i]) + sum(t.ideal_bits for t in tail)
        if side is not None:
            bits += side_bits
        out.append(
            _shortest(
                full,
                bits,
                lambda c, cls=cls, sizes=sizes, chunks=chunks, tail=tail, side=side: _decodes_to(
                    c, layout, cls, sizes, chunks, tail, side
                ),
                final,
            )
        )
    return out


# ----------------------------------------------------------------------------- learned laws


def _read_head_fixed(data: bytes, layout: IndexLayout) -> Head:
    """:func:`recray.format.messages.read_head` for layouts without learned laws."""
    classes, cw, mask, chunks, extra, decoder = _decode_symbols(data, layout)
    if classes is not None and classes.size and int(classes.max()) > _MAX_CLASS:
        b = int(np.argmax(classes > _MAX_CLASS))
        raise MessageError(
            f"message does not decode under this layout: block {b} has class "
            f"{int(classes[b])}, i.e. local >= 2^{int(classes[b])} (limit 2^48)"
        )
    cv = np.zeros(cw.shape, dtype=np.int64)
    cv[mask] = chunks
    values = (cv << _CHUNK_SHIFTS).sum(axis=-1)
    bins = values[0::2].copy()
    if classes is not None:
        local = np.left_shift(np.int64(1), classes.astype(np.int64)) + values[1::2]
    else:
        local = values[1::2] + 1
        if local.size and int(local.max()) >= MAX_LOCAL_INDEX:
            raise MessageError("message does not decode under this layout: a local index >= 2^48")
    if extra is None:
        extra = np.zeros((layout.n_blocks, layout.max_block_dims), dtype=np.int64)
    return Head(bins, local, extra, decoder)
