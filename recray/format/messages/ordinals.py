"""Bins as per-dimension intervals under laws (message codec version 5).

A block's bin id is the mixed-radix number of its dimensions' interval ordinals (tree or
complete partitions, :mod:`recray.rec.trees`), so its digits, not its bits, are the
symbols. Symbols of one message, in order (docs/FORMAT.md section 7.4):

0. layouts with adaptive partitions: the flag of every block, each under its block's law
   (``BlockLaw.adapt_freqs``; without it the fixed law of version 2), then the extra bits
   of every dimension of every flagged block (``IndexLayout.extra_freqs``, else the fixed
   law), all as categorical symbols;
1. every block's class ``min(l_b, 32)`` under its class law, then the escaped classes under
   the universal code's law (as version 3);
2. every partitioned dimension's interval *at the plan's partition*, block by block in
   dimension order, under its bin law, in one categorical call (rows zero-padded to the
   widest law); an adapted dimension's interval of the plan is the refined one shifted
   right by its extra bits;
3. block by block, the *raw field* (the extra bits of every dimension, lowest dimension
   first, each ``e_d`` bits; and for a block without bin laws the dimensions' intervals as
   well, ``log2 radix_d + e_d`` bits each), then the ``l_b`` low bits of the local index,
   each field in uniform chunks of at most 16 bits, lowest first.

Symbols of many items are built at once (no Python loop over blocks or dimensions); each
item then runs its own range coder and the shortest-prefix termination of
:mod:`recray.format.messages.coder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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
    _CHUNK_TABLE,
    _MAX_CLASS,
    MAX_BIN_BITS,
    Head,
    IndexLayout,
    _floor_log2,
)
from recray.format.messages.learned import _escape_probs
from recray.format.messages.side import ADAPT_FLAG_PROBS, EXTRA_BITS_PROBS
from recray.plan.laws import FREQ_TOTAL, N_LAW_CLASSES


@dataclass(frozen=True)
class _Tables:
    """An ordinal layout as arrays. ``radix`` ``(n_blocks, S)`` intervals per dimension at
    the plan's partition (1 past a block's dimensions); ``law_row`` ``(n_blocks, S)``: the
    row of ``row_probs`` of a dimension coded by a bin law, else -1; ``raw_bits``: ``log2
    radix`` of a partitioned dimension coded raw (a block without bin laws), else 0;
    ``class_probs`` ``(n_blocks, 33)``; ``flag_probs`` ``(n_blocks, 2)``; ``extra_probs``
    ``(MAX_EXTRA_BITS + 1,)``."""

    radix: np.ndarray
    law_row: np.ndarray
    raw_bits: np.ndarray
    row_probs: np.ndarray
    class_probs: np.ndarray
    flag_probs: np.ndarray
    extra_probs: np.ndarray


@lru_cache(maxsize=64)
def _tables(layout: IndexLayout) -> _Tables:
    nb = layout.n_blocks
    S = max((len(b) for b in layout.bin_radix), default=0)
    radix = np.ones((nb, S), dtype=np.int64)
    law_row = np.full((nb, S), -1, dtype=np.int64)
    raw_bits = np.zeros((nb, S), dtype=np.int64)
    rows = []
    for b, (block, law) in enumerate(zip(layout.bin_radix, layout.laws, strict=True)):
        radix[b, : len(block)] = block
        laws = iter(law.bin_freqs)
        for d, r in enumerate(block):
            if r == 1:
                continue
            if law.bin_freqs:
                law_row[b, d] = len(rows)
                rows.append(np.asarray(next(laws), dtype=np.float64) / FREQ_TOTAL)
            else:
                raw_bits[b, d] = r.bit_length() - 1
    width = max((len(r) for r in rows), default=1)
    row_probs = np.zeros((len(rows), width))
    for i, r in enumerate(rows):
        row_probs[i, : len(r)] = r
    flags = [
        np.asarray(law.adapt_freqs, np.float64) / FREQ_TOTAL if law.adapt_freqs else None
        for law in layout.laws
    ]
    flag_probs = (
        np.stack([ADAPT_FLAG_PROBS if f is None else f for f in flags])
        if nb
        else (np.zeros((0, 2)))
    )
    extra_probs = (
        np.asarray(layout.extra_freqs, np.float64) / FREQ_TOTAL
        if layout.extra_freqs
        else EXTRA_BITS_PROBS
    )
    out = _Tables(
        radix,
        law_row,
        raw_bits,
        row_probs,
        np.stack([law.class_probs for law in layout.laws]),
        flag_probs,
        np.ascontiguousarray(extra_probs),
    )
    for a in (out.radix, out.law_row, out.raw_bits, out.row_probs, out.class_probs):
        a.setflags(write=False)
    return out


def _place_values(radix: np.ndarray) -> np.ndarray:
    """Exclusive running products along the last axis (mixed-radix place values)."""
    mult = np.ones_like(radix)
    if radix.shape[-1] > 1:
        mult[..., 1:] = np.cumprod(radix[..., :-1], axis=-1)
    return mult


@dataclass
class _Items:
    """The symbols of ``n`` items, arrays with one row per item (see the module docstring):
    ``flags`` (n, n_blocks), ``extra`` (n, n_blocks, S), ``law`` (n, n_blocks) classes or
    escapes, ``classes`` (n, n_blocks), ``bsym`` (n, rows) bin-law symbols, ``fields`` and
    ``field_bits`` (n, 2 n_blocks): raw field, local low bits, per block."""

    flags: np.ndarray | None
    extra: np.ndarray | None
    law: np.ndarray
    classes: np.ndarray
    bsym: np.ndarray
    fields: np.ndarray
    field_bits: np.ndarray


def _items(bins, local, layout: IndexLayout, extra) -> _Items:
    t = _tables(layout)
    n, nb = bins.shape
    S = t.radix.shape[1]
    e = np.zeros((n, nb, S), dtype=np.int64) if extra is None else extra[:, :, :S]
    refined = np.left_shift(t.radix[None], e)
    o2 = (bins[:, :, None] // _place_values(refined)) % refined
    o = o2 >> e
    sub = o2 & (np.left_shift(np.int64(1), e) - 1)
    mask = t.law_row >= 0
    bsym = o[:, mask].astype(np.int32)
    value = (np.where(t.raw_bits[None] > 0, o, 0) << e) | sub
    width = t.raw_bits[None] + e
    off = np.cumsum(width, axis=2) - width
    classes = _floor_log2(local)
    fields = np.empty((n, 2 * nb), dtype=np.int64)
    field_bits = np.empty((n, 2 * nb), dtype=np.int64)
    fields[:, 0::2] = (value << off).sum(axis=2)
    field_bits[:, 0::2] = width.sum(axis=2)
    fields[:, 1::2] = local - np.left_shift(np.int64(1), classes)
    field_bits[:, 1::2] = classes
    flags = None if extra is None else extra.any(axis=2).astype(np.int32)
    return _Items(
        flags,
        e,
        np.minimum(classes, N_LAW_CLASSES).astype(np.int32),
        classes,
        bsym,
        fields,
        field_bits,
    )


@dataclass
class _Batch:
    """What :func:`_segments` needs of ``n`` items, computed for all of them at once:
    ``flag_ext`` the extra bits of each item's flagged blocks (int32, concatenated; item
    ``i``'s run is ``ext_off[i] : ext_off[i + 1]``); ``esc`` likewise the escaped classes
    (``esc_off``); ``sizes``/``chunks`` ``(n, F)`` int32 uniform chunks of the raw fields
    and ``chunk_mask`` which of them exist; ``ideal`` ``(n,)`` ``sum -log2 P`` (bits);
    ``bin_rows`` the bin laws' rows (:func:`_bin_rows`, looked up once per batch)."""

    flag_ext: np.ndarray
    ext_off: np.ndarray
    esc: np.ndarray
    esc_off: np.ndarray
    sizes: np.ndarray
    chunks: np.ndarray
    chunk_mask: np.ndarray
    ideal: np.ndarray
    bin_rows: np.ndarray


def _offsets(counts: np.ndarray) -> np.ndarray:
    """``(n + 1,)`` start offsets of ``n`` consecutive runs of ``counts`` entries."""
    return np.concatenate(([0], np.cumsum(counts)))


def _run_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(n,)`` sums of ``n`` consecutive runs of ``values``, ``counts[i]`` entries each."""
    return np.bincount(np.repeat(np.arange(counts.size), counts), values, counts.size)


def _batch(it: _Items, layout: IndexLayout, t: _Tables) -> _Batch:
    n, nb = it.law.shape
    blocks = np.arange(nb)
    ideal = np.zeros(n)
    if it.flags is not None:
        ideal = ideal - np.log2(t.flag_probs[blocks, it.flags]).sum(axis=1)
        dims = np.asarray(layout.adaptive_dims, np.int64)
        S = it.extra.shape[2]
        has = (np.arange(S)[None, :] < dims[:, None])[None] & (it.flags[:, :, None] == 1)
        flag_ext = it.extra[has].astype(np.int32)  # item-major, block by block, dims in order
        counts = has.reshape(n, -1).sum(axis=1)
        ideal = ideal + _run_sums(-np.log2(t.extra_probs[flag_ext]), counts)
    else:
        flag_ext, counts = np.zeros(0, np.int32), np.zeros(n, np.int64)
    ideal = ideal - np.log2(t.class_probs[blocks, it.law]).sum(axis=1)
    is_esc = it.classes >= N_LAW_CLASSES
    esc = it.classes[is_esc].astype(np.int32)
    esc_counts = is_esc.sum(axis=1)
    if esc.size:
        ideal = ideal + _run_sums(-np.log2(_escape_probs(1)[0][esc]), esc_counts)
    rows = _bin_rows(layout)
    if it.bsym.shape[1]:
        ideal = ideal - np.log2(rows[np.arange(rows.shape[0]), it.bsym]).sum(axis=1)
    cw = _CHUNK_TABLE[it.field_bits]  # (n, 2 nb, C)
    cv = (it.fields[:, :, None] >> _CHUNK_SHIFTS) & (np.left_shift(np.int64(1), cw) - 1)
    ideal = ideal + cw.sum(axis=(1, 2))
    return _Batch(
        flag_ext,
        _offsets(counts),
        esc,
        _offsets(esc_counts),
        np.left_shift(1, cw).astype(np.int32).reshape(n, -1),
        cv.astype(np.int32).reshape(n, -1),
        (cw > 0).reshape(n, -1),
        ideal,
        rows,
    )


def _segments(it: _Items, i: int, t: _Tables, bt: _Batch) -> list:
    """Item ``i``'s symbols as ``(model family, parameters, symbols)`` in wire order."""
    segs = []
    if it.flags is not None:
        segs.append((_CLASS_FAMILY, t.flag_probs, it.flags[i]))
        ext = bt.flag_ext[bt.ext_off[i] : bt.ext_off[i + 1]]
        if ext.size:
            segs.append((_CLASS_FAMILY, _rows(t.extra_probs, ext.size), ext))
    segs.append((_CLASS_FAMILY, t.class_probs, it.law[i]))
    esc = bt.esc[bt.esc_off[i] : bt.esc_off[i + 1]]
    if esc.size:
        segs.append((_CLASS_FAMILY, _escape_probs(esc.size), esc))
    if it.bsym.shape[1]:
        segs.append((_CLASS_FAMILY, bt.bin_rows, it.bsym[i]))
    m = bt.chunk_mask[i]
    if m.any():
        segs.append((_UNIFORM, bt.sizes[i][m], bt.chunks[i][m]))
    return segs


@lru_cache(maxsize=64)
def _bin_rows(layout: IndexLayout) -> np.ndarray:
    t = _tables(layout)
    out = np.ascontiguousarray(t.row_probs[t.law_row[t.law_row >= 0]])
    out.setflags(write=False)
    return out


def _rows(probs: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(probs, (n, probs.shape[0])))


def encode_rows(bins, local, layout: IndexLayout, tails, extra) -> list[bytes]:
    """Messages of ``n`` items (checked indices) under an ordinal layout."""
    t = _tables(layout)
    it = _items(bins, local, layout, extra)
    bt = _batch(it, layout, t)
    out: list[bytes] = []
    for i in range(bins.shape[0]):
        segs = _segments(it, i, t, bt)
        tail = () if tails is None else tuple(tails[i])
        encoder = _queue.RangeEncoder()
        for fam, params, symbols in segs:
            encoder.encode(symbols, fam, params)
        final = encode_tails(encoder, tail)
        full = _words_to_bytes(encoder.get_compressed())
        bits = float(bt.ideal[i]) + sum(tl.ideal_bits for tl in tail)

        def decodes(cand, segs=segs, tail=tail) -> bool:
            try:
                dec = _queue.RangeDecoder(_bytes_to_words(cand))
                for fam, params, symbols in segs:
                    got = dec.decode(fam, params).astype(np.int32, copy=False)
                    if got.tobytes() != symbols.tobytes():
                        return False
                return all(tl.decodes_from(dec) for tl in tail)
            except (AssertionError, ValueError, RuntimeError, OverflowError, IndexError):
                return False

        out.append(_shortest(full, bits, decodes, final))
    return out


def ideal_rows(bins, local, layout: IndexLayout, extra) -> np.ndarray:
    """``sum -log2 P`` of every item's symbols (bits), float64 ``(n,)``."""
    t = _tables(layout)
    it = _items(bins, local, layout, extra)
    return _batch(it, layout, t).ideal


def read_head(data: bytes, layout: IndexLayout) -> Head:
    """The indices at the head of one message of an ordinal layout."""
    try:
        words = _bytes_to_words(data)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"message must be bytes; got {type(data).__name__}") from exc
    t = _tables(layout)
    nb, S = t.radix.shape
    extra = np.zeros((nb, max(S, layout.max_block_dims)), dtype=np.int64)
    try:
        dec = _queue.RangeDecoder(words)
        if layout.adaptive:
            flags = np.asarray(dec.decode(_CLASS_FAMILY, t.flag_probs), dtype=np.int64)
            dims = layout.adaptive_dims
            n_ext = int(sum(dims[b] for b in np.flatnonzero(flags)))
            if n_ext:
                ext = np.asarray(dec.decode(_CLASS_FAMILY, _rows(t.extra_probs, n_ext)), np.int64)
                pos = 0
                for b in np.flatnonzero(flags):
                    extra[b, : dims[b]] = ext[pos : pos + dims[b]]
                    pos += dims[b]
            if (extra[flags == 1] == 0).all(axis=1).any():
                raise ValueError("an adapted block without extra partition bits")
        law = np.asarray(dec.decode(_CLASS_FAMILY, t.class_probs), dtype=np.int64)
        classes = law.copy()
        n_esc = int((law == N_LAW_CLASSES).sum())
        if n_esc:
            esc = np.asarray(dec.decode(_CLASS_FAMILY, _escape_probs(n_esc)), dtype=np.int64)
            classes[law == N_LAW_CLASSES] = esc
        if int(classes.max(initial=0)) > _MAX_CLASS:
            b = int(np.argmax(classes > _MAX_CLASS))
            raise MessageError(
                f"message does not decode under this layout: block {b} has class "
                f"{int(classes[b])}, i.e. local >= 2^{int(classes[b])} (limit 2^48)"
            )
        e = extra[:, :S]
        o = np.zeros((nb, S), dtype=np.int64)
        mask = t.law_row >= 0
        if mask.any():
            rows = _bin_rows(layout)
            bsym = np.asarray(dec.decode(_CLASS_FAMILY, rows), dtype=np.int64)
            if (bsym >= t.radix[mask]).any():
                raise ValueError("a bin-law symbol outside its dimension's intervals")
            o[mask] = bsym
        width = t.raw_bits + e
        field_bits = np.empty(2 * nb, dtype=np.int64)
        field_bits[0::2] = width.sum(axis=1)
        field_bits[1::2] = classes
        if int(field_bits[0::2].max(initial=0)) > MAX_BIN_BITS:
            raise ValueError("extra partition bits give a bin field wider than 62 bits")
        cw = _CHUNK_TABLE[field_bits]
        m = cw > 0
        sizes = np.left_shift(1, cw[m]).astype(np.int32)
        chunks = np.asarray(dec.decode(_UNIFORM, sizes), np.int64) if sizes.size else sizes
    except MessageError:
        raise
    except (AssertionError, ValueError, RuntimeError, OverflowError, IndexError) as exc:
        raise MessageError(
            f"message does not decode under this layout: constriction says {exc}"
        ) from exc
    cv = np.zeros(cw.shape, dtype=np.int64)
    cv[m] = chunks
    values = (cv << _CHUNK_SHIFTS).sum(axis=-1)
    off = np.cumsum(width, axis=1) - width
    value = (values[0::2][:, None] >> off) & (np.left_shift(np.int64(1), width) - 1)
    o = np.where(t.raw_bits > 0, value >> e, o)
    o2 = (o << e) | (value & (np.left_shift(np.int64(1), e) - 1))
    bins = (o2 * _place_values(np.left_shift(t.radix, e))).sum(axis=1)
    local = np.left_shift(np.int64(1), classes) + values[1::2]
    return Head(bins, local, extra[:, : layout.max_block_dims], dec)
