"""Learned index laws (message codec version 3): the classes, the intervals of the
partitioned dimensions and the escapes under the plan's laws (recray.plan.laws)."""

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
    _bin_widths,
    _floor_log2,
)
from recray.format.messages.side import _item_sides, _Side
from recray.plan.laws import N_LAW_CLASSES
from recray.rec.codes import CLASS_PROBS, N_CLASSES


@dataclass(frozen=True)
class _LawTables:
    """A learned layout's laws as arrays: ``class_probs`` ``(n_blocks, N_LAW_CLASSES + 1)``;
    one row per (block, dimension) with a bin law: ``row_block``, ``row_shift`` (bit offset
    of the dimension's field in the bin id), ``row_bits``, ``row_probs`` ``(rows, W)``
    (zero-padded to the widest law); ``block_has_bins`` (n_blocks,) bool."""

    class_probs: np.ndarray
    row_block: np.ndarray
    row_shift: np.ndarray
    row_bits: np.ndarray
    row_probs: np.ndarray
    block_has_bins: np.ndarray


@lru_cache(maxsize=64)
def _law_tables(layout: IndexLayout) -> _LawTables:
    cp = np.stack([law.class_probs for law in layout.laws])
    rb, rs, rbits, rows = [], [], [], []
    for b, law in enumerate(layout.laws):
        shift = 0
        for w, freqs in zip(law.bin_bits(), law.bin_freqs, strict=True):
            rb.append(b)
            rs.append(shift)
            rbits.append(w)
            rows.append(np.asarray(freqs, dtype=np.float64) / float(sum(freqs)))
            shift += w
    width = max((len(r) for r in rows), default=1)
    probs = np.zeros((len(rows), width))
    for i, r in enumerate(rows):
        probs[i, : len(r)] = r
    has = np.array([bool(law.bin_freqs) for law in layout.laws], dtype=bool)
    out = _LawTables(
        cp,
        np.asarray(rb, dtype=np.int64),
        np.asarray(rs, dtype=np.int64),
        np.asarray(rbits, dtype=np.int64),
        probs,
        has,
    )
    for a in (out.class_probs, out.row_probs):
        a.setflags(write=False)
    return out


@dataclass
class _Learned:
    """One item's symbols under learned laws, in wire order (see the module docstring):
    ``law`` (n_blocks,) class-or-escape symbols; ``esc`` the escaped classes; ``bsym`` the
    bin-law symbols with their ``brows`` (rows of ``_LawTables``); ``chunks`` / ``sizes``
    the uniform chunks."""

    law: np.ndarray
    esc: np.ndarray
    bsym: np.ndarray
    brows: np.ndarray
    chunks: np.ndarray
    sizes: np.ndarray

    def segments(self, t: _LawTables):
        out = [(_CLASS_FAMILY, t.class_probs, self.law)]
        if self.esc.size:
            out.append((_CLASS_FAMILY, _escape_probs(self.esc.size), self.esc))
        if self.bsym.size:
            out.append((_CLASS_FAMILY, t.row_probs[self.brows], self.bsym))
        if self.chunks.size:
            out.append((_UNIFORM, self.sizes, self.chunks))
        return out

    def ideal_bits(self, t: _LawTables) -> float:
        bits = -np.log2(t.class_probs[np.arange(self.law.size), self.law]).sum()
        bits -= np.log2(CLASS_PROBS[self.esc]).sum()
        bits -= np.log2(t.row_probs[self.brows, self.bsym]).sum()
        return float(bits + np.log2(self.sizes.astype(np.float64)).sum())


@lru_cache(maxsize=64)
def _escape_probs(n: int) -> np.ndarray:
    out = np.ascontiguousarray(np.broadcast_to(CLASS_PROBS, (n, N_CLASSES)))
    out.setflags(write=False)
    return out


def _learned_symbols(bins_i, local_i, layout: IndexLayout, extra_i=None) -> _Learned:
    """Symbols of one item (int64 ``(n_blocks,)`` indices, checked) under learned laws.
    Blocks with extra partition bits (adapted) code their bin in raw chunks."""
    t = _law_tables(layout)
    classes = _floor_log2(local_i)
    law = np.minimum(classes, N_LAW_CLASSES).astype(np.int32)
    esc = classes[classes >= N_LAW_CLASSES].astype(np.int32)
    bin_w = _bin_widths(layout, None if extra_i is None else extra_i[None], 1)[0]
    adapted = np.zeros(layout.n_blocks, bool) if extra_i is None else extra_i.any(axis=1)
    by_law = t.block_has_bins & ~adapted
    rows = np.flatnonzero(by_law[t.row_block])
    bsym = (
        (bins_i[t.row_block[rows]] >> t.row_shift[rows]) & ((1 << t.row_bits[rows]) - 1)
    ).astype(np.int32)
    widths = np.empty(2 * layout.n_blocks, dtype=np.int64)
    widths[0::2] = np.where(by_law, 0, bin_w)
    widths[1::2] = classes
    values = np.empty(2 * layout.n_blocks, dtype=np.int64)
    values[0::2] = bins_i
    values[1::2] = local_i - np.left_shift(np.int64(1), classes)
    cw = _CHUNK_TABLE[widths]
    cv = (values[:, None] >> _CHUNK_SHIFTS) & (np.left_shift(np.int64(1), cw) - 1)
    m = cw > 0
    return _Learned(
        law,
        esc,
        bsym,
        rows,
        cv[m].astype(np.int32),
        np.left_shift(1, cw[m]).astype(np.int32),
    )


def _encode_rows_learned(bins, local, layout, tails, extra) -> list[bytes]:
    t = _law_tables(layout)
    sides = _item_sides(extra, layout, bins.shape[0])
    out: list[bytes] = []
    for i in range(bins.shape[0]):
        sym = _learned_symbols(bins[i], local[i], layout, None if extra is None else extra[i])
        segs = sym.segments(t)
        tail = () if tails is None else tuple(tails[i])
        side, side_bits = sides[i]
        encoder = _queue.RangeEncoder()
        if side is not None:
            side.encode(encoder)
        for fam, params, symbols in segs:
            encoder.encode(symbols, fam, params)
        final = encode_tails(encoder, tail)
        full = _words_to_bytes(encoder.get_compressed())
        bits = sym.ideal_bits(t) + sum(tl.ideal_bits for tl in tail)
        if side is not None:
            bits += side_bits

        def decodes(cand, segs=segs, tail=tail, side=side) -> bool:
            try:
                dec = _queue.RangeDecoder(_bytes_to_words(cand))
                if side is not None and not side.decodes_from(dec):
                    return False
                for fam, params, symbols in segs:
                    if dec.decode(fam, params).astype(np.int32).tobytes() != symbols.tobytes():
                        return False
                return all(tl.decodes_from(dec) for tl in tail)
            except (AssertionError, ValueError, RuntimeError, OverflowError, IndexError):
                return False

        out.append(_shortest(full, bits, decodes, final))
    return out


def _read_head_learned(data: bytes, layout: IndexLayout) -> Head:
    try:
        words = _bytes_to_words(data)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"message must be bytes; got {type(data).__name__}") from exc
    t = _law_tables(layout)
    nb = layout.n_blocks
    try:
        decoder = _queue.RangeDecoder(words)
        extra = np.zeros((nb, layout.max_block_dims), dtype=np.int64)
        if layout.adaptive:
            _, extra = _Side.decode(decoder, layout)
        law = np.asarray(decoder.decode(_CLASS_FAMILY, t.class_probs), dtype=np.int64)
        classes = law.copy()
        n_esc = int((law == N_LAW_CLASSES).sum())
        if n_esc:
            esc = np.asarray(decoder.decode(_CLASS_FAMILY, _escape_probs(n_esc)), dtype=np.int64)
            classes[law == N_LAW_CLASSES] = esc
        if int(classes.max(initial=0)) > _MAX_CLASS:
            b = int(np.argmax(classes > _MAX_CLASS))
            raise MessageError(
                f"message does not decode under this layout: block {b} has class "
                f"{int(classes[b])}, i.e. local >= 2^{int(classes[b])} (limit 2^48)"
            )
        bin_w = _bin_widths(layout, extra[None], 1)[0]
        if int(bin_w.max(initial=0)) > MAX_BIN_BITS:
            raise ValueError(f"extra partition bits give a {int(bin_w.max())}-bit bin field")
        by_law = t.block_has_bins & ~extra.any(axis=1)
        rows = np.flatnonzero(by_law[t.row_block])
        bins = np.zeros(nb, dtype=np.int64)
        if rows.size:
            bsym = np.asarray(decoder.decode(_CLASS_FAMILY, t.row_probs[rows]), dtype=np.int64)
            if (bsym >= (1 << t.row_bits[rows])).any():
                raise ValueError("a bin-law symbol outside its dimension's intervals")
            np.add.at(bins, t.row_block[rows], bsym << t.row_shift[rows])
        widths = np.empty(2 * nb, dtype=np.int64)
        widths[0::2] = np.where(by_law, 0, bin_w)
        widths[1::2] = classes
        cw = _CHUNK_TABLE[widths]
        mask = cw > 0
        sizes = np.left_shift(1, cw[mask]).astype(np.int32)
        chunks = (
            np.asarray(decoder.decode(_UNIFORM, sizes), dtype=np.int64)
            if sizes.size
            else np.zeros(0, dtype=np.int64)
        )
    except MessageError:
        raise
    except (AssertionError, ValueError, RuntimeError, OverflowError, IndexError) as exc:
        raise MessageError(
            f"message does not decode under this layout: constriction says {exc}"
        ) from exc
    cv = np.zeros(cw.shape, dtype=np.int64)
    cv[mask] = chunks
    values = (cv << _CHUNK_SHIFTS).sum(axis=-1)
    bins = np.where(by_law, bins, values[0::2])
    local = np.left_shift(np.int64(1), classes) + values[1::2]
    return Head(bins, local, extra, decoder)
