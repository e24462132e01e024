"""Per-item messages: all block indices of one item, range coded into one byte string.

An item's blocks each carry an index ``(bin, local)`` (see ``docs/FORMAT.md`` section 6):
``bin`` in ``B_b`` raw bits, ``local`` with the universal (log-class) code for ``sp-pfr``,
``sp-orc`` and ``pfr``, or ``local - 1`` in ``raw_bits = ceil(log2 N)`` raw bits for ``orc``
(one width for every block, or since version 4 one per block: ``block_raw_bits``).
This module codes all of them with one ``constriction`` range coder (a queue: the first
symbol in is the first out) and trims the result to the shortest byte string that still
decodes, so a message costs within a few bits of the ideal ``sum -log2 P``.

Wire format (``MESSAGE_CODEC_VERSION = 4``). Version 4 adds per-block raw widths
(``IndexLayout.block_raw_bits``: block ``b``'s ``local_b - 1`` in ``raw_bits_b`` bits, e.g.
``orc`` with a per-block budget ``N_b``); every layout of versions 1-3 codes exactly as it
did, so their messages decode unchanged. Version 3 is version 2 plus learned laws; a
layout without ``laws`` codes exactly as version 2; version 1 is version 2 without step 0,
and is what a layout without ``adaptive_dims`` codes. Layouts with learned ``laws`` (plan version 2,
:mod:`recray.plan.laws`) replace steps 1-2 by: the class of every block under its learned
law, ``min(class, 32)`` with 32 the escape; the escaped classes under the universal law;
the interval of every partitioned dimension of every unadapted block under its learned law;
then the remaining fields (raw bins of adapted blocks, the local index's low bits) as
uniform chunks (``docs/FORMAT.md`` section 7.2). Version 2, symbols in this order:

0. layouts with ``adaptive_dims`` only (per-block adaptive partitions): one flag per block,
   in block order, under the fixed law :data:`ADAPT_FLAG_PROBS` (``P(1) = 2^-10``, so an
   unflagged block costs about 0.0014 bit); then, for each flagged block in block order,
   the *extra partition bits* ``e_d`` of each of its ``adaptive_dims[b]`` dimensions, in
   the block's dimension order, under the fixed law :data:`EXTRA_BITS_PROBS` over
   ``0..MAX_EXTRA_BITS``. Block ``b``'s bin field is then ``B_b + sum_d e_d`` bits wide;
1. code ``"universal"`` only: the class ``l_b = floor(log2 local_b)`` of every block, in
   block order, each with the fixed categorical model of
   class law chosen for the block by ``IndexLayout.class_models`` (a row of
   :data:`recray.rec.codes.CLASS_MODEL_PROBS`: 0 = ``CLASS_PROBS``, 1 = the near-prior law
   of collapsed blocks; 63 classes, ``Categorical(..., perfect=False)`` with per-symbol
   probabilities);
2. block by block, the bit fields as uniform chunks: first the ``B_b`` bits of ``bin_b``,
   then the ``l_b`` bits of ``local_b`` below its leading one (universal) or the
   ``raw_bits`` bits (version 4: block ``b``'s ``block_raw_bits[b]``) of ``local_b - 1``
   (raw). A field is cut into chunks of at most 16 bits,
   lowest chunk first; a chunk of ``k`` bits is one ``Uniform(2^k)`` symbol; a field of 0
   bits adds no symbol;
3. only in codec messages (e.g. ``recray codec mnist``): the application's :class:`Tail`
   symbols (its data under a model conditioned on the decoded latent), in the same coder,
   so the item pays one termination, not two, and no length field.

The encoder's ``uint32`` words are written big-endian (so the data ends at the last byte),
then cut to the shortest prefix that, possibly rounded up by one unit in its last byte and
zero-padded to whole words, decodes to exactly the same symbols (verified by decoding).
A message with no symbols is ``b""``; a message with symbols is at least one byte.

Guarantees and requirements
---------------------------
* Sender and receiver must share the :class:`IndexLayout` of the item (from the codec
  plan): the message does not say how many blocks it holds or how wide their fields are.
* Both sides must use the same ``MESSAGE_CODEC_VERSION`` and the same ``constriction``
  model quantization: the class models are ``Categorical(perfect=False)`` with the rows of
  ``CLASS_MODEL_PROBS`` as per-symbol probabilities.
  ``perfect=False`` is constriction's fast quantization, recommended by its docs and the
  future default; ``perfect=True`` (the legacy default when neither ``lazy`` nor
  ``perfect`` is given) searches longer for a marginally closer fit and gives *other
  bytes*, so the flag is part of the wire format. ``Uniform(2^k)`` with ``k <= 16`` is
  exact at constriction's 24-bit precision. ``pyproject.toml`` pins ``constriction < 0.6``;
  the golden-bytes test in ``tests/test_messages.py`` catches any change.
* Byte order: each 32-bit word big-endian; the receiver pads with zero bytes up to a
  multiple of 4, and constriction's decoder reads zero words past the end of its data
  (the trimmed message relies on both). Trailing bytes are significant: do not strip or
  add any; store messages length-delimited (e.g. an Arrow binary column).
* A corrupted or foreign message either raises :class:`~recray.errors.MessageError` or
  decodes *silently* to wrong indices (range coding has no redundancy to detect it); the
  row-level CRC of the bitstream guards against that, not this codec.
* ``local`` must lie in ``[1, 2^48)`` (the candidate-generation limit), and for ``"raw"``
  in ``[1, 2^raw_bits_b]``; ``bin_b`` in ``[0, 2^B_b)`` with ``B_b <= 62``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recray.errors import InputError, MessageError, fmt_item
from recray.format.messages import ordinals
from recray.format.messages.fixed import _encode_rows, _ideal_rows, _read_head_fixed, _symbols
from recray.format.messages.layout import (
    CHUNK_BITS,
    CODES,
    MAX_BIN_BITS,
    MAX_EXTRA_BITS,
    MAX_RAW_BITS,
    MESSAGE_CODEC_VERSION,
    READABLE_MESSAGE_CODEC_VERSIONS,
    Head,
    IndexLayout,
    _check_extra,
    _check_indices,
    _int_array,
)
from recray.format.messages.learned import (
    _encode_rows_learned,
    _law_tables,
    _learned_symbols,
    _read_head_learned,
)
from recray.format.messages.side import ADAPT_FLAG_PROBS, EXTRA_BITS_PROBS, _Side
from recray.format.messages.tail import Tail

__all__ = [
    "ADAPT_FLAG_PROBS",
    "CHUNK_BITS",
    "CODES",
    "EXTRA_BITS_PROBS",
    "MAX_BIN_BITS",
    "MAX_EXTRA_BITS",
    "MAX_RAW_BITS",
    "MESSAGE_CODEC_VERSION",
    "READABLE_MESSAGE_CODEC_VERSIONS",
    "IndexLayout",
    "Head",
    "Tail",
    "decode_blocks",
    "decode_message",
    "decode_message_head",
    "decode_messages",
    "read_head",
    "encode_message",
    "encode_messages",
    "ideal_bits",
]


def _encode_rows_any(bins, local, layout: IndexLayout, tails=None, extra=None) -> list[bytes]:
    """The messages of ``n_items`` checked rows under the layout's code path."""
    if layout.ordinal:
        return ordinals.encode_rows(bins, local, layout, tails, extra)
    if layout.learned:
        return _encode_rows_learned(bins, local, layout, tails, extra)
    return _encode_rows(bins, local, layout, tails, extra)


def encode_message(bins, local, layout: IndexLayout, extra=None) -> bytes:
    """Code one item's block indices into the shortest byte string that decodes to them.

    ``bins``: int ``(n_blocks,)``, ``bins[b]`` in ``[0, 2^(B_b + sum extra[b]))``; ``local``:
    int ``(n_blocks,)``, in ``[1, 2^48)`` (``"universal"``) or ``[1, 2^raw_bits_b]``
    (``"raw"``); ``extra`` (adaptive layouts only): int ``(n_blocks, max_block_dims)``, the
    extra partition bits of each block's dimensions (default all 0).
    Returns ``b""`` when the layout leaves nothing to code. Raises
    :class:`~recray.errors.InputError` naming the field on a wrong shape, dtype or value.
    """
    nb = layout.n_blocks
    b = _int_array("bins", bins, (nb,))[None, :]
    n = _int_array("local", local, (nb,))[None, :]
    e = _check_extra(extra, layout, 1, two_d=False)
    _check_indices(b, n, layout, two_d=False, extra=e)
    return _encode_rows_any(b, n, layout, extra=e)[0]


def encode_messages(
    bins, local, layout: IndexLayout, tails: Sequence | None = None, extra=None
) -> list[bytes]:
    """:func:`encode_message` for ``n_items`` items sharing ``layout``.

    ``bins``, ``local``: int ``(n_items, n_blocks)``; ``extra`` (adaptive layouts only):
    int ``(n_items, n_blocks, max_block_dims)``. Symbols and checks are vectorized over
    items; one range coder runs per item. ``tails`` (optional): per item a sequence of
    :class:`Tail` coded after the indices in the same coder; the receiver reads them with
    :func:`decode_message_head` and then the decoder it returns.
    """
    b = np.asarray(bins)
    shape = (b.shape[0] if b.ndim == 2 else 0, layout.n_blocks)
    if b.ndim != 2:
        raise InputError(f"bins must have shape (n_items, {layout.n_blocks}); got {b.shape}")
    b = _int_array("bins", b, shape)
    n = _int_array("local", local, shape)
    e = _check_extra(extra, layout, shape[0], two_d=True)
    _check_indices(b, n, layout, two_d=True, extra=e)
    if tails is not None and len(tails) != shape[0]:
        raise InputError(f"tails has {len(tails)} entries for {shape[0]} items")
    return _encode_rows_any(b, n, layout, tails, e)


def decode_message(data: bytes, layout: IndexLayout) -> tuple[np.ndarray, np.ndarray]:
    """Decode one message into ``(bins, local)``, both int64 ``(n_blocks,)``.

    Raises :class:`~recray.errors.MessageError` when the data cannot be decoded under
    ``layout`` (constriction rejects it, or a class would give ``local >= 2^48``). A
    corrupted message may also decode silently to wrong indices: the bitstream's row CRC,
    not this codec, detects that. For adaptive layouts use :func:`read_head` (the extra
    partition bits are needed to regenerate the sample); here they must all be 0.
    """
    h = read_head(data, layout)
    if h.extra.any():
        raise InputError(
            "this message carries extra partition bits (an adaptive block): decode it "
            "with read_head or decode_blocks, which return them"
        )
    return h.bins, h.local


def decode_message_head(data: bytes, layout: IndexLayout):
    """``(bins, local, decoder)`` of :func:`read_head` (layouts without side information)."""
    h = read_head(data, layout)
    if h.extra.any():
        raise InputError(
            "this message carries extra partition bits (an adaptive block): use read_head"
        )
    return h.bins, h.local, h.decoder


def read_head(data: bytes, layout: IndexLayout) -> Head:
    """Decode the block indices at the head of a message (and, for adaptive layouts, the
    extra partition bits), with the constriction decoder positioned after them, to read the
    message's :class:`Tail` symbols (``tail.decode(head.decoder)``, then
    ``decoder.maybe_exhausted()`` says whether the message ended where it should)."""
    if layout.ordinal:
        return ordinals.read_head(data, layout)
    if layout.learned:
        return _read_head_learned(data, layout)
    return _read_head_fixed(data, layout)


def decode_blocks(
    messages: Sequence[bytes], layout: IndexLayout, item_ids: Sequence | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode ``n_items`` messages into ``(bins, local, extra)``: int64
    ``(n_items, n_blocks)`` twice and ``(n_items, n_blocks, max_block_dims)`` (the extra
    partition bits; all 0 for layouts without side information).

    ``item_ids`` (optional, length ``n_items``) names the failing item in a
    :class:`~recray.errors.MessageError` (``"item 'abc': ..."``); without it the row number
    is used.
    """
    n_items, nb = len(messages), layout.n_blocks
    if item_ids is not None and len(item_ids) != n_items:
        raise InputError(f"item_ids has length {len(item_ids)} but there are {n_items} messages")
    bins = np.empty((n_items, nb), dtype=np.int64)
    local = np.empty((n_items, nb), dtype=np.int64)
    extra = np.zeros((n_items, nb, layout.max_block_dims), dtype=np.int64)
    for i, msg in enumerate(messages):
        try:
            h = read_head(msg, layout)
        except MessageError as exc:
            name = f"item {fmt_item(item_ids[i])}" if item_ids is not None else f"item {i}"
            raise MessageError(f"{name}: {exc}") from exc
        bins[i], local[i], extra[i] = h.bins, h.local, h.extra
    return bins, local, extra


def decode_messages(
    messages: Sequence[bytes], layout: IndexLayout, item_ids: Sequence | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`decode_blocks` without the extra partition bits, for layouts that carry none
    (an adaptive layout raises :class:`~recray.errors.InputError`: use decode_blocks)."""
    if layout.adaptive:
        raise InputError("the layout carries adaptive partitions: use decode_blocks")
    bins, local, _ = decode_blocks(messages, layout, item_ids)
    return bins, local


def ideal_bits(bins, local, layout: IndexLayout, extra=None):
    """Ideal message length ``sum -log2 P`` in bits (before the coder's < ~1 byte overhead).

    ``bins``, ``local``: int ``(n_blocks,)`` gives a float; ``(n_items, n_blocks)`` gives a
    float64 array ``(n_items,)``. Class costs use the exact class laws of the layout's
    ``class_models``, not constriction's quantized ones; the side information of adaptive
    layouts (``extra``) is included.
    """
    nb = layout.n_blocks
    two_d = np.ndim(bins) == 2
    shape = (np.shape(bins)[0], nb) if two_d else (nb,)
    b = _int_array("bins", bins, shape).reshape(-1, nb)
    n = _int_array("local", local, shape).reshape(-1, nb)
    e = _check_extra(extra, layout, b.shape[0], two_d=two_d)
    _check_indices(b, n, layout, two_d=two_d, extra=e)
    if layout.ordinal:
        bits = ordinals.ideal_rows(b, n, layout, e)
        return bits if two_d else float(bits[0])
    if layout.learned:
        t = _law_tables(layout)
        bits = np.array(
            [
                _learned_symbols(b[i], n[i], layout, None if e is None else e[i]).ideal_bits(t)
                + (0.0 if e is None else _Side.of(e[i], layout).ideal_bits)
                for i in range(b.shape[0])
            ]
        )
        return bits if two_d else float(bits[0])
    classes, _, cw, _ = _symbols(b, n, layout, e)
    bits = _ideal_rows(classes, cw, layout)
    if e is not None:
        bits = bits + np.array([_Side.of(e[i], layout).ideal_bits for i in range(b.shape[0])])
    return bits if two_d else float(bits[0])
