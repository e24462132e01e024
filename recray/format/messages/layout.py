"""The layout of an item's message (what sender and receiver know of its blocks), the
checks of the indices against it, and the field widths both sides derive from it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from recray.errors import InputError
from recray.plan.laws import MAX_EXTRA_BITS, BlockLaw
from recray.rec.codes import CLASS_MODEL_PROBS, N_CLASSES
from recray.rec.randomness import MAX_LOCAL_INDEX

MESSAGE_CODEC_VERSION = 5
#: Message codec versions this recray decodes (1: no side information; 2: adaptive side
#: information; 3: learned index laws when the layout has them, else the same as 2;
#: 4: per-block raw index widths when the layout has them, else the same as 3).
READABLE_MESSAGE_CODEC_VERSIONS = (1, 2, 3, 4, 5)
CODES = ("universal", "raw")
CHUNK_BITS = 16  # widest uniform symbol (constriction's Uniform needs size < 2^24)
MAX_BIN_BITS = 62
MAX_RAW_BITS = 48
_N_CHUNKS = -(-max(MAX_BIN_BITS, MAX_RAW_BITS, N_CLASSES - 1) // CHUNK_BITS)  # 4
_MAX_CLASS = MAX_LOCAL_INDEX.bit_length() - 2  # 47: local < 2^48


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
    ``laws``: one :class:`recray.plan.laws.BlockLaw` per block (learned laws: message codec
    version 3), or empty. ``bin_radix`` (message codec version 5): empty, or per block the
    number of intervals of each of its dimensions (block order; ``2^b`` for a complete
    partition, the leaves of a tree): the bin is then the mixed-radix number of the
    dimensions' intervals, each coded under its law (``laws`` required: learned, or the
    partition's own masses), adapted blocks code their plan-level intervals the same way
    and the extra levels raw, and the side information is coded under ``laws``'
    ``adapt_freqs`` and ``extra_freqs`` when they are set (docs/FORMAT.md section 7.4);
    ``bin_bits`` must then be ``sum_d ceil(log2 radix_d)`` per block.
    """

    bin_bits: tuple[int, ...]
    code: str = "universal"
    raw_bits: int = 0
    class_models: tuple[int, ...] = ()
    adaptive_dims: tuple[int, ...] = ()
    laws: tuple = ()
    block_raw_bits: tuple[int, ...] = ()
    bin_radix: tuple = ()
    extra_freqs: tuple = ()

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
                if not self.bin_radix and law.bin_freqs and sum(law.bin_bits()) != bits[b]:
                    raise InputError(
                        f"IndexLayout.laws[{b}]: bin laws for {sum(law.bin_bits())} partition "
                        f"bits, the block has B = {bits[b]}"
                    )
        object.__setattr__(self, "laws", laws)
        object.__setattr__(self, "bin_radix", self._check_bin_radix(bits))
        object.__setattr__(self, "extra_freqs", tuple(int(v) for v in self.extra_freqs))

    def _check_bin_radix(self, bits) -> tuple:
        radix = tuple(tuple(int(r) for r in block) for block in self.bin_radix)
        if not radix:
            return ()
        if len(radix) != len(bits) or not self.laws:
            raise InputError(
                f"IndexLayout.bin_radix needs one entry per block ({len(bits)}) and laws"
            )
        for b, (block, law) in enumerate(zip(radix, self.laws, strict=True)):
            if min(block, default=1) < 1:
                raise InputError(f"IndexLayout.bin_radix[{b}]: radices must be >= 1")
            need = sum((r - 1).bit_length() for r in block)
            if need != bits[b]:
                raise InputError(
                    f"IndexLayout.bin_bits[{b}] = {bits[b]} but bin_radix[{b}] needs {need} bits"
                )
            parts = tuple(r for r in block if r > 1)
            if law.bin_freqs and law.bin_radix() != parts:
                raise InputError(
                    f"IndexLayout.laws[{b}]: bin laws for {law.bin_radix()} intervals, the "
                    f"block has {parts}"
                )
            if not law.bin_freqs and any(r & (r - 1) for r in parts):
                raise InputError(
                    f"IndexLayout.bin_radix[{b}]: a block without bin laws codes its bins "
                    "raw, which needs power-of-two radices"
                )
            if self.adaptive_dims and self.adaptive_dims[b] != len(block):
                raise InputError(
                    f"IndexLayout.adaptive_dims[{b}] = {self.adaptive_dims[b]} but the block "
                    f"has {len(block)} dimensions in bin_radix"
                )
        return radix

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
    def ordinal(self) -> bool:
        """Whether bins are coded as per-dimension intervals (message codec version 5)."""
        return bool(self.bin_radix)

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


def _check_bit_bins(bins, layout: IndexLayout, two_d: bool, extra) -> None:
    """Bins of a bit-field layout: below ``2^(B_b + extra bits)``."""
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


def _check_ordinal_bins(bins, layout: IndexLayout, two_d: bool, extra) -> None:
    """Bins of an ordinal layout: below the product of the (refined) radices."""
    S = max((len(b) for b in layout.bin_radix), default=0)
    radix = np.ones((layout.n_blocks, S), dtype=np.int64)
    for b, block in enumerate(layout.bin_radix):
        radix[b, : len(block)] = block
    e = np.zeros((bins.shape[0],) + radix.shape, dtype=np.int64)
    if extra is not None:
        e = extra[:, :, :S]
    bits = _bits_needed(np.left_shift(radix[None], e)).sum(axis=2)
    if (bits > MAX_BIN_BITS).any():
        i, b = (int(v) for v in np.argwhere(bits > MAX_BIN_BITS)[0])
        raise InputError(
            f"item {i}, block {b}: its refined bin ids need {int(bits[i, b])} bits; at most "
            f"{MAX_BIN_BITS}"
        )
    end = np.prod(np.left_shift(radix[None], e), axis=2)
    bad = (bins < 0) | (bins >= end)
    if bad.any():
        what, b = _first_bad("bins", bins, bad, two_d)
        row = int(np.argmax(bad.any(axis=1)))
        raise InputError(
            f"{what} does not fit block {b}'s {int(end[row, b])} bins; bins, local or the "
            "layout do not match"
        )


def _bits_needed(radix: np.ndarray) -> np.ndarray:
    """``ceil(log2 radix)``, int64, exact for radix >= 1."""
    r = np.asarray(radix, dtype=np.int64)
    return np.frexp((r - 1).astype(np.float64))[1].astype(np.int64) * (r > 1)


def _check_indices(
    bins: np.ndarray, local: np.ndarray, layout: IndexLayout, two_d: bool, extra=None
):
    """Range checks of int64 ``(n_items, n_blocks)`` indices; ``two_d`` only shapes messages."""
    if layout.ordinal:
        _check_ordinal_bins(bins, layout, two_d, extra)
    else:
        _check_bit_bins(bins, layout, two_d, extra)
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
class Head:
    """The block indices at the head of one message: ``bins``, ``local`` int64
    ``(n_blocks,)``, ``extra`` int64 ``(n_blocks, max_block_dims)`` (all 0 without side
    information), and the constriction ``decoder`` positioned after them."""

    bins: np.ndarray
    local: np.ndarray
    extra: np.ndarray
    decoder: object
