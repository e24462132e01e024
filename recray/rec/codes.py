"""Index codes: how many bits each method's chosen index costs, as real prefix codes.

A search returns ``(j*, n*)``: the flat bin id ``j*`` (``B`` bits of partition) and the
1-based local index ``n*``. The codes:

* ``sp-pfr`` / ``sp-orc``: ``j*`` in ``B`` raw bits, then ``n*`` with the universal code.
* ``pfr``: ``n*`` with the universal code (``B = 0``).
* ``orc``: ``n* - 1`` in ``ceil(log2 N)`` raw bits.

**The universal code** (``log-class`` code). With ``l = floor(log2 n)`` (the class,
0..62), a codeword is the canonical Huffman codeword of ``l`` followed by the ``l`` bits of
``n`` below its leading 1. The Huffman code is built once from a fixed class distribution,
an even mixture of a geometric law ``2^-(l+1)`` (Elias gamma's, good for the small ``n``
that space-partitioned searches return) and a truncated log law ``∝ 1/(l + 1)`` (good for
PFR's ``n ~ 2^KL``). So ``n = 1`` costs 2 bits, ``n = 2, 3`` cost 3, and a large ``n`` about
``log2 n + log2(log2 n + 1) + 3`` bits (``n = 2^16``: 23 bits), against Elias gamma's
``2 log2 n + 1`` (33) and Elias delta's ``log2 n + 2 log2 log2 n + 1`` (25). The truncated
log law is proper because ``l <= 62``. The class probabilities are exposed for entropy
coders (:data:`CLASS_PROBS`), which then approach the ideal lengths ``-log2 P``.

Everything here is host-side NumPy: lengths are exact integers.
"""

from __future__ import annotations

import heapq

import numpy as np

N_CLASSES = 63  # classes 0..62: n in [1, 2^63)


def _class_probs() -> np.ndarray:
    ell = np.arange(N_CLASSES, dtype=np.float64)
    geometric = 2.0 ** -(ell + 1.0)
    geometric /= geometric.sum()
    log_law = 1.0 / (ell + 1.0)
    log_law /= log_law.sum()
    return 0.5 * geometric + 0.5 * log_law


def _huffman_lengths(p: np.ndarray) -> np.ndarray:
    """Huffman code lengths, deterministic: ties broken by the smallest symbol in a subtree."""
    heap = [(float(pi), i, (i,)) for i, pi in enumerate(p)]
    heapq.heapify(heap)
    lengths = np.zeros(len(p), dtype=np.int64)
    while len(heap) > 1:
        p1, t1, s1 = heapq.heappop(heap)
        p2, t2, s2 = heapq.heappop(heap)
        for sym in s1 + s2:
            lengths[sym] += 1
        heapq.heappush(heap, (p1 + p2, min(t1, t2), s1 + s2))
    return lengths


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical prefix codewords (as integers, MSB first) for the given lengths."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev_len = 0, int(lengths[order[0]])
    for rank, sym in enumerate(order):
        ln = int(lengths[sym])
        if rank:
            code = (code + 1) << (ln - prev_len)
        codes[sym] = code
        prev_len = ln
    return codes


CLASS_PROBS: np.ndarray = _class_probs()
CLASS_LENGTHS: np.ndarray = _huffman_lengths(CLASS_PROBS)
CLASS_CODES: np.ndarray = _canonical_codes(CLASS_LENGTHS)


def _near_prior_class_probs() -> np.ndarray:
    """Class law for blocks whose posteriors are close to the prior (all dims collapsed):
    there the winner is nearly always the first candidate (``n* = 1`` for 93% of such
    blocks of 8 dims in our synthetic sets). 90%: a geometric law with ratio 1/10 from
    ``l = 0``; 10%: :data:`CLASS_PROBS`, so no class costs more than ~3.3 bits above it."""
    ell = np.arange(N_CLASSES, dtype=np.float64)
    steep = 0.1**ell
    steep /= steep.sum()
    return 0.9 * steep + 0.1 * CLASS_PROBS


NEAR_PRIOR_CLASS_PROBS: np.ndarray = _near_prior_class_probs()
#: Class models an entropy coder may use per block: 0 = :data:`CLASS_PROBS` (default),
#: 1 = :data:`NEAR_PRIOR_CLASS_PROBS`. Shape ``(2, 63)``.
CLASS_MODEL_PROBS: np.ndarray = np.stack([CLASS_PROBS, NEAR_PRIOR_CLASS_PROBS])


def floor_log2(n) -> np.ndarray:
    """Exact ``floor(log2 n)`` of positive int64 values (no float rounding)."""
    n = np.asarray(n, dtype=np.int64).copy()
    out = np.zeros(n.shape, dtype=np.int64)
    for shift in (32, 16, 8, 4, 2, 1):
        big = (n >> shift) > 0
        out += np.where(big, shift, 0)
        n = np.where(big, n >> shift, n)
    return out


def universal_bits(n) -> np.ndarray:
    """Length in bits of the universal codeword of each ``n >= 1`` (int64 array)."""
    n = np.asarray(n, dtype=np.int64)
    if n.size and n.min() < 1:
        raise ValueError("the universal code is defined for n >= 1")
    ell = floor_log2(n)
    return CLASS_LENGTHS[ell] + ell


def raw_bits_for_budget(n_samples) -> np.ndarray:
    """``ceil(log2 N)``: bits of a fixed-length index into ``N`` candidates."""
    n_samples = np.asarray(n_samples, dtype=np.int64)
    return np.where(n_samples > 1, floor_log2(np.maximum(n_samples - 1, 1)) + 1, 0)


def index_bits(method: str, local, partition_bits, n_samples=None) -> np.ndarray:
    """Exact code length (bits) of each block's index ``(j*, n*)`` under ``method``.

    ``local`` (n,) int64 >= 1; ``partition_bits`` (n,) int64 (``B`` per block);
    ``n_samples`` (n,) int64 for ``orc``.
    """
    local = np.asarray(local, dtype=np.int64)
    if method == "orc":
        return raw_bits_for_budget(n_samples) + np.zeros_like(local)
    B = np.asarray(partition_bits, dtype=np.int64) if method.startswith("sp-") else 0
    return B + universal_bits(local)


# ----------------------------------------------------------------------------- bit strings
def write_universal(n: int) -> str:
    """The universal codeword of ``n`` as a string of '0'/'1' (MSB first)."""
    if n < 1:
        raise ValueError("the universal code is defined for n >= 1")
    ell = int(n).bit_length() - 1
    prefix = format(int(CLASS_CODES[ell]), f"0{int(CLASS_LENGTHS[ell])}b")
    return prefix + (format(n - (1 << ell), f"0{ell}b") if ell else "")


_DECODE = {
    format(int(CLASS_CODES[ell]), f"0{int(CLASS_LENGTHS[ell])}b"): ell for ell in range(N_CLASSES)
}


def read_universal(bits: str, pos: int = 0) -> tuple[int, int]:
    """Decode one universal codeword from ``bits`` at ``pos``; returns ``(n, new_pos)``."""
    prefix = ""
    while prefix not in _DECODE:
        if pos >= len(bits):
            raise ValueError("truncated universal codeword")
        prefix += bits[pos]
        pos += 1
    ell = _DECODE[prefix]
    if pos + ell > len(bits):
        raise ValueError("truncated universal codeword")
    low = int(bits[pos : pos + ell], 2) if ell else 0
    return (1 << ell) + low, pos + ell
