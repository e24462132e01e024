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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import constriction
import numpy as np

from recray.errors import InputError, MessageError, fmt_item
from recray.plan.laws import N_LAW_CLASSES, BlockLaw
from recray.rec.codes import CLASS_MODEL_PROBS, CLASS_PROBS, N_CLASSES
from recray.rec.randomness import MAX_LOCAL_INDEX

__all__ = [
    "CHUNK_BITS",
    "CODES",
    "MESSAGE_CODEC_VERSION",
    "IndexLayout",
    "Head",
    "decode_blocks",
    "decode_message",
    "decode_message_head",
    "decode_messages",
    "read_head",
    "encode_message",
    "encode_messages",
    "ideal_bits",
]

MESSAGE_CODEC_VERSION = 4
#: Message codec versions this recray decodes (1: no side information; 2: adaptive side
#: information; 3: learned index laws when the layout has them, else the same as 2;
#: 4: per-block raw index widths when the layout has them, else the same as 3).
READABLE_MESSAGE_CODEC_VERSIONS = (1, 2, 3, 4)
CODES = ("universal", "raw")
CHUNK_BITS = 16  # widest uniform symbol (constriction's Uniform needs size < 2^24)
MAX_BIN_BITS = 62
MAX_RAW_BITS = 48
_N_CHUNKS = -(-max(MAX_BIN_BITS, MAX_RAW_BITS, N_CLASSES - 1) // CHUNK_BITS)  # 4
_MAX_CLASS = MAX_LOCAL_INDEX.bit_length() - 2  # 47: local < 2^48

#: Most extra partition bits one dimension may receive from a per-block adaptive partition.
MAX_EXTRA_BITS = 20
#: Law of the per-block "adapted" flag: an adapted block is an outlier, about 1 in 1000.
ADAPT_FLAG_PROBS = np.array([1.0 - 2.0**-10, 2.0**-10])
#: Law of the extra bits of one dimension of an adapted block: 0 (most dimensions of the
#: block) with probability 3/4, else uniform over 1..MAX_EXTRA_BITS.
EXTRA_BITS_PROBS = np.concatenate([[0.75], np.full(MAX_EXTRA_BITS, 0.25 / MAX_EXTRA_BITS)])

_queue = constriction.stream.queue
_model = constriction.stream.model
_CLASS_FAMILY = _model.Categorical(perfect=False)
_UNIFORM = _model.Uniform()
_FLAG_MODEL = _model.Categorical(ADAPT_FLAG_PROBS, perfect=False)
_EXTRA_MODEL = _model.Categorical(EXTRA_BITS_PROBS, perfect=False)


@lru_cache(maxsize=256)
def _class_probs_of(models: tuple[int, ...]) -> np.ndarray:
    out = np.ascontiguousarray(CLASS_MODEL_PROBS[list(models)], dtype=np.float64)
    out.setflags(write=False)
    return out


_CHUNK_SHIFTS = np.arange(_N_CHUNKS, dtype=np.int64) * CHUNK_BITS
# chunk widths of a field of w bits, w = 0..62: row w is (16, 16, ..., remainder, 0, ...)
_CHUNK_TABLE = np.clip(
    np.arange(MAX_BIN_BITS + 1, dtype=np.int64)[:, None] - _CHUNK_SHIFTS, 0, CHUNK_BITS
)


# ----------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class IndexLayout:
    """What sender and receiver both know about an item's blocks (from the codec plan).

    ``bin_bits``: ``B_b`` per block (ints in ``[0, 62]``; a list is accepted and stored as a
    tuple). ``code``: ``"universal"`` (``sp-pfr``, ``sp-orc``, ``pfr``: ``local >= 1`` with
    the log-class code) or ``"raw"`` (``orc``: ``local - 1`` in ``raw_bits`` bits).
    ``raw_bits``: ``ceil(log2 N)`` in ``[0, 48]`` (0 means ``N = 1``); read only for
    ``"raw"``. ``block_raw_bits`` (message codec version 4; ``"raw"`` only): empty (every
    block's width is ``raw_bits``), or ``ceil(log2 N_b)`` in ``[0, 48]`` for each block, for
    a per-block budget ``N_b``; ``raw_bits`` must then be left at 0. ``class_models``: per
    block, which class law codes its local index's class
    (an index into :data:`recray.rec.codes.CLASS_MODEL_PROBS`: 0 default, 1 near-prior);
    empty means all 0. ``adaptive_dims``: empty (no side information: message codec
    version 1), or the number of dimensions of every block: then each message starts with
    the per-block adaptive-partition flags and extra bits (wire format step 0).
    """

    bin_bits: tuple[int, ...]
    code: str = "universal"
    raw_bits: int = 0
    class_models: tuple[int, ...] = ()
    adaptive_dims: tuple[int, ...] = ()
    laws: tuple = ()
    block_raw_bits: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        try:
            bits = tuple(self.bin_bits)
        except TypeError:
            raise InputError(
                f"IndexLayout.bin_bits must be a sequence of ints; got {self.bin_bits!r}"
            ) from None
        for b, v in enumerate(bits):
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise InputError(f"IndexLayout.bin_bits[{b}] must be an int; got {v!r}")
            if not 0 <= int(v) <= MAX_BIN_BITS:
                raise InputError(
                    f"IndexLayout.bin_bits[{b}] = {int(v)} must be in [0, {MAX_BIN_BITS}]"
                )
        object.__setattr__(self, "bin_bits", tuple(int(v) for v in bits))
        if self.code not in CODES:
            raise InputError(f"IndexLayout.code must be one of {CODES}; got {self.code!r}")
        rb = self.raw_bits
        if isinstance(rb, bool) or not isinstance(rb, int | np.integer):
            raise InputError(f"IndexLayout.raw_bits must be an int; got {rb!r}")
        if not 0 <= int(rb) <= MAX_RAW_BITS:
            raise InputError(f"IndexLayout.raw_bits = {int(rb)} must be in [0, {MAX_RAW_BITS}]")
        object.__setattr__(self, "raw_bits", int(rb))
        object.__setattr__(self, "block_raw_bits", self._check_block_raw_bits(len(bits)))
        models = tuple(int(v) for v in self.class_models) or (0,) * len(bits)
        if len(models) != len(bits) or any(
            v not in range(CLASS_MODEL_PROBS.shape[0]) for v in models
        ):
            raise InputError(
                f"IndexLayout.class_models must hold one model index in "
                f"[0, {CLASS_MODEL_PROBS.shape[0] - 1}] per block ({len(bits)}); got {models}"
            )
        object.__setattr__(self, "class_models", models)
        adims = tuple(int(v) for v in self.adaptive_dims)
        if adims and (len(adims) != len(bits) or min(adims) < 1):
            raise InputError(
                f"IndexLayout.adaptive_dims must hold the dimension count (>= 1) of each of "
                f"the {len(bits)} blocks, or be empty; got {adims}"
            )
        object.__setattr__(self, "adaptive_dims", adims)
        laws = tuple(self.laws)
        if laws:
            if self.code != "universal" or len(laws) != len(bits):
                raise InputError(
                    "IndexLayout.laws (learned index laws) need the universal code and one "
                    f"BlockLaw per block ({len(bits)}); got {len(laws)}"
                )
            for b, law in enumerate(laws):
                if not isinstance(law, BlockLaw):
                    raise InputError(f"IndexLayout.laws[{b}] must be a BlockLaw")
                if law.bin_freqs and sum(law.bin_bits()) != bits[b]:
                    raise InputError(
                        f"IndexLayout.laws[{b}]: bin laws for {sum(law.bin_bits())} partition "
                        f"bits, the block has B = {bits[b]}"
                    )
        object.__setattr__(self, "laws", laws)

    def _check_block_raw_bits(self, nb: int) -> tuple[int, ...]:
        try:
            widths = tuple(self.block_raw_bits)
        except TypeError:
            raise InputError(
                f"IndexLayout.block_raw_bits must be a sequence of ints; got "
                f"{self.block_raw_bits!r}"
            ) from None
        if not widths:
            return ()
        if self.code != "raw":
            raise InputError(
                f"IndexLayout.block_raw_bits (per-block raw widths) need code='raw'; got "
                f"code={self.code!r}"
            )
        if self.raw_bits:
            raise InputError(
                f"IndexLayout.block_raw_bits replaces raw_bits: leave raw_bits at 0 (got "
                f"raw_bits = {self.raw_bits})"
            )
        if len(widths) != nb:
            raise InputError(
                f"IndexLayout.block_raw_bits has {len(widths)} entries; the layout has {nb} blocks"
            )
        for b, v in enumerate(widths):
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise InputError(f"IndexLayout.block_raw_bits[{b}] must be an int; got {v!r}")
            if not 0 <= int(v) <= MAX_RAW_BITS:
                raise InputError(
                    f"IndexLayout.block_raw_bits[{b}] = {int(v)} must be in [0, {MAX_RAW_BITS}]"
                )
        return tuple(int(v) for v in widths)

    @property
    def raw_widths(self) -> np.ndarray:
        """Raw field width of every block's local index, int64 ``(n_blocks,)`` (read only
        for ``"raw"``): ``block_raw_bits``, else ``raw_bits`` for every block."""
        return _raw_widths_array(self)

    @property
    def learned(self) -> bool:
        """Whether messages code the indices under learned laws (message codec version 3)."""
        return bool(self.laws)

    @property
    def adaptive(self) -> bool:
        """Whether messages carry per-block adaptive-partition side information."""
        return bool(self.adaptive_dims)

    @property
    def max_block_dims(self) -> int:
        """Width of the ``extra`` arrays: the largest block's dimension count (0 if none)."""
        return max(self.adaptive_dims, default=0)

    @property
    def class_probs(self) -> np.ndarray:
        """Class probabilities of every block, float64 ``(n_blocks, 63)``."""
        return _class_probs_of(self.class_models)

    @property
    def n_blocks(self) -> int:
        """Number of blocks of the item."""
        return len(self.bin_bits)


@lru_cache(maxsize=256)
def _bin_bits_array(layout: IndexLayout) -> np.ndarray:
    out = np.asarray(layout.bin_bits, dtype=np.int64)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=256)
def _raw_widths_array(layout: IndexLayout) -> np.ndarray:
    out = np.asarray(layout.block_raw_bits or (layout.raw_bits,) * layout.n_blocks, np.int64)
    out.flags.writeable = False
    return out


# ----------------------------------------------------------------------------- validation
def _int_array(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise InputError(f"{name} must be an integer array; got dtype {arr.dtype}")
    if arr.shape != shape:
        raise InputError(
            f"{name} must have shape {shape} (items, blocks of the layout); got {arr.shape}"
        )
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) >= 1 << 63:
        raise InputError(f"{name} holds a value >= 2^63")
    return arr.astype(np.int64, copy=False)


def _first_bad(name: str, arr: np.ndarray, bad: np.ndarray, two_d: bool) -> tuple[str, int]:
    """``("local[i, b] = v", b)`` for the first flagged entry (``"local[b] = v"`` in 1-D)."""
    row, col = (int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    where = f"[{row}, {col}]" if two_d else f"[{col}]"
    return f"{name}{where} = {int(arr[row, col])}", col


def _check_extra(extra, layout: IndexLayout, n_items: int, two_d: bool) -> np.ndarray | None:
    """The ``extra`` partition bits as int64 ``(n_items, n_blocks, max_block_dims)``, checked
    against the layout (``None`` when the layout carries no side information)."""
    if not layout.adaptive:
        if extra is not None and np.any(np.asarray(extra)):
            raise InputError(
                "extra partition bits were given but the layout has no adaptive_dims "
                "(message codec version 1 cannot carry them)"
            )
        return None
    shape = (n_items, layout.n_blocks, layout.max_block_dims)
    if extra is None:
        return np.zeros(shape, dtype=np.int64)
    e = _int_array("extra", extra, shape if two_d else shape[1:]).reshape(shape)
    dims = np.asarray(layout.adaptive_dims, dtype=np.int64)
    outside = np.arange(shape[2])[None, None, :] >= dims[None, :, None]
    bad = (e < 0) | (e > MAX_EXTRA_BITS) | (outside & (e != 0))
    if bad.any():
        i, b, d = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(
            f"extra[{i}, {b}, {d}] = {int(e[i, b, d])}: extra partition bits must be in "
            f"[0, {MAX_EXTRA_BITS}], and 0 past block {b}'s {int(dims[b])} dimensions"
        )
    return e


def _bin_widths(layout: IndexLayout, extra: np.ndarray | None, n_items: int) -> np.ndarray:
    """Bin field width of every (item, block), int64 ``(n_items, n_blocks)``:
    ``B_b`` plus the block's extra partition bits."""
    B = _bin_bits_array(layout)
    if extra is None:
        return np.broadcast_to(B, (n_items, layout.n_blocks))
    return B[None, :] + extra.sum(axis=2)


def _check_indices(
    bins: np.ndarray, local: np.ndarray, layout: IndexLayout, two_d: bool, extra=None
):
    """Range checks of int64 ``(n_items, n_blocks)`` indices; ``two_d`` only shapes messages."""
    B = _bin_widths(layout, extra, bins.shape[0])
    if (B > MAX_BIN_BITS).any():
        i, b = (int(v) for v in np.argwhere(B > MAX_BIN_BITS)[0])
        raise InputError(
            f"item {i}, block {b}: B + extra partition bits = {int(B[i, b])} exceeds {MAX_BIN_BITS}"
        )
    bad = (bins < 0) | (bins >= np.left_shift(np.int64(1), B))
    if bad.any():
        what, b = _first_bad("bins", bins, bad, two_d)
        row = int(np.argmax(bad.any(axis=1)))
        raise InputError(
            f"{what} does not fit block {b}'s B = {int(B[row, b])} partition bits: "
            f"must be in [0, 2^{int(B[row, b])}); bins, local or the layout do not match"
        )
    if layout.code == "raw":
        w = layout.raw_widths
        hi = np.where(w < MAX_RAW_BITS, np.left_shift(np.int64(1), w), MAX_LOCAL_INDEX - 1)
        bad = (local < 1) | (local > hi[None, :])
        if bad.any():
            what, b = _first_bad("local", local, bad, two_d)
            field = f"block_raw_bits[{b}]" if layout.block_raw_bits else "raw_bits"
            bound = (
                f"[1, 2^{int(w[b])}] (raw code, N <= 2^{field})"
                if w[b] < MAX_RAW_BITS
                else "[1, 2^48)"
            )
            raise InputError(f"{what} must be in {bound}")
        return
    bad = (local < 1) | (local > MAX_LOCAL_INDEX - 1)
    if bad.any():
        what, _ = _first_bad("local", local, bad, two_d)
        raise InputError(f"{what} must be in [1, 2^48)")


# ----------------------------------------------------------------------------- symbols
def _field_widths(classes: np.ndarray | None, layout: IndexLayout, bin_w: np.ndarray) -> np.ndarray:
    """Bit widths of the fields ``(n_items, 2 n_blocks)``: bin_0, low_0, bin_1, low_1, ...;
    ``bin_w`` ``(n_items, n_blocks)`` the bin widths."""
    n_items, nb = bin_w.shape
    widths = np.empty((n_items, 2 * nb), dtype=np.int64)
    widths[:, 0::2] = bin_w
    widths[:, 1::2] = classes if layout.code == "universal" else layout.raw_widths[None, :]
    return widths


def _chunk_widths(widths: np.ndarray) -> np.ndarray:
    """``(..., n_fields, 4)`` chunk widths: 16 bits each, the top chunk the remainder."""
    return _CHUNK_TABLE[widths]


def _floor_log2(local: np.ndarray) -> np.ndarray:
    """``floor(log2 local)`` for int64 ``1 <= local < 2^48``: exact, since such integers are
    exact in float64 and ``frexp`` reads the exponent (much faster than
    :func:`recray.rec.codes.floor_log2` on small arrays)."""
    return np.frexp(local.astype(np.float64))[1].astype(np.int64) - 1


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


def _words_to_bytes(words: np.ndarray) -> bytes:
    return np.asarray(words, dtype=np.uint32).astype(">u4").tobytes()


def _bytes_to_words(data: bytes) -> np.ndarray:
    pad = -len(data) % 4
    if pad:
        data = bytes(data) + b"\0" * pad
    return np.frombuffer(data, dtype=">u4").astype(np.uint32)


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
) -> np.ndarray:
    encoder = _queue.RangeEncoder()
    if side is not None:
        side.encode(encoder)
    if classes is not None and classes.size:
        encoder.encode(classes, _CLASS_FAMILY, class_probs)
    if chunks.size:
        encoder.encode(chunks, _UNIFORM, sizes)
    for t in tail:
        t.encode(encoder)
    return encoder.get_compressed()


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
    if layout.learned:
        return _encode_rows_learned(bins, local, layout, tails, extra)
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
        full = _words_to_bytes(_encode_words(cls, chunks, sizes, layout.class_probs, tail, side))
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
            )
        )
    return out


# ----------------------------------------------------------------------------- learned laws
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
        for tl in tail:
            tl.encode(encoder)
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

        out.append(_shortest(full, bits, decodes))
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
        if self.params is None:
            encoder.encode(self.symbols, self.model)
        else:
            encoder.encode(self.symbols, self.model, self.params)

    def decode(self, decoder) -> np.ndarray:
        if self.params is None:
            return decoder.decode(self.model, len(self.symbols))
        return decoder.decode(self.model, self.params)

    def decodes_from(self, decoder) -> bool:
        return np.asarray(self.decode(decoder)).astype(np.int32).tobytes() == (
            np.asarray(self.symbols, dtype=np.int32).tobytes()
        )


# ----------------------------------------------------------------------------- public API
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
    return _encode_rows(b, n, layout, extra=e)[0]


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
    return _encode_rows(b, n, layout, tails, e)


@dataclass(frozen=True)
class Head:
    """The block indices at the head of one message: ``bins``, ``local`` int64
    ``(n_blocks,)``, ``extra`` int64 ``(n_blocks, max_block_dims)`` (all 0 without side
    information), and the constriction ``decoder`` positioned after them."""

    bins: np.ndarray
    local: np.ndarray
    extra: np.ndarray
    decoder: object


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
    if layout.learned:
        return _read_head_learned(data, layout)
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
