"""Philox4x32-10, the counter-based generator behind all of recray's randomness.

Written with the array module's integer operations only, so NumPy and CuPy produce the same
bits. Words are carried in ``uint64`` arrays holding 32-bit values: the 32x32->64-bit
products of the Philox round are then exact, and ``>> 32`` / ``& 0xFFFFFFFF`` split them.

The exact recipe (keys, counters, uniforms) is part of the bitstream format and is written
down in ``docs/FORMAT.md`` (RNG recipe version :data:`RNG_VERSION`). Changing anything here
changes every coded message: bump the version and the known-answer tests together.
"""

from __future__ import annotations

import numpy as np

RNG_VERSION = 2
#: Versions a decoder can still regenerate (1: SciPy ``ndtri``; 2: the portable recipe).
RNG_VERSIONS = (1, 2)

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85

#: Domain key words: a block's shared key and its sender-private key are both derived from
#: (seed, stream id), under different domain constants ("RECS" / "RECP"), second key word =
#: the RNG recipe version.
DOMAIN_SHARED = 0x52454353
DOMAIN_PRIVATE = 0x52454350

TWO_M53 = 2.0**-53
TWO_M54 = 2.0**-54


def philox4x32(c0, c1, c2, c3, k0, k1, xp=np, rounds: int = 10):
    """Philox4x32 with ``rounds`` rounds (10 = Philox4x32-10, as in Random123).

    Args: four counter words and two key words, each a ``uint64`` array (or Python int)
    holding a value below 2^32; all broadcast together. Returns the four output words as
    ``uint64`` arrays of the broadcast shape, each below 2^32.
    """
    u64 = xp.uint64
    c0, c1, c2, c3 = (xp.asarray(c, dtype=u64) for c in (c0, c1, c2, c3))
    k0 = xp.asarray(k0, dtype=u64)
    k1 = xp.asarray(k1, dtype=u64)
    shape = xp.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape, k0.shape, k1.shape)
    # private, contiguous working copies: the rounds below update them in place
    c0, c1, c2, c3 = (xp.broadcast_to(c, shape).copy() for c in (c0, c1, c2, c3))
    m32, s32 = u64(MASK32), u64(32)
    m0, m1 = u64(PHILOX_M0), u64(PHILOX_M1)
    w0, w1 = u64(PHILOX_W0), u64(PHILOX_W1)
    p0 = xp.empty(shape, dtype=u64)
    p1 = xp.empty(shape, dtype=u64)
    t = xp.empty(shape, dtype=u64)
    for r in range(rounds):
        if r:
            k0 = (k0 + w0) & m32
            k1 = (k1 + w1) & m32
        xp.multiply(c0, m0, out=p0)
        xp.multiply(c2, m1, out=p1)
        # (c0, c1, c2, c3) <- (hi(p1) ^ c1 ^ k0, lo(p1), hi(p0) ^ c3 ^ k1, lo(p0))
        xp.right_shift(p1, s32, out=t)
        t ^= c1
        t ^= k0
        xp.bitwise_and(p1, m32, out=c1)
        xp.right_shift(p0, s32, out=c2)
        c2 ^= c3
        c2 ^= k1
        xp.bitwise_and(p0, m32, out=c3)
        c0, t = t, c0
    return c0, c1, c2, c3


def split64(v, xp=np):
    """Low and high 32-bit words of a 64-bit integer array (int64 values are taken as their
    two's-complement bit pattern)."""
    v = xp.asarray(v).astype(xp.uint64)
    return v & xp.uint64(MASK32), v >> xp.uint64(32)


def derive_keys(seed: int, stream_ids, domain: int, xp=np, version: int = RNG_VERSION):
    """Per-block Philox key ``(k0, k1)`` from the run seed and each block's stream id.

    One Philox4x32-10 call with counter ``(seed_lo, seed_hi, sid_lo, sid_hi)`` and key
    ``(domain, version)`` (the RNG recipe version); its first two output words are the block key.
    ``seed`` is an integer in [0, 2^64); ``stream_ids`` an int64 array ``(n,)``.
    Returns two ``uint64`` arrays of shape ``(n,)``.
    """
    seed = int(seed)
    s_lo, s_hi = seed & MASK32, (seed >> 32) & MASK32
    i_lo, i_hi = split64(stream_ids, xp)
    o0, o1, _, _ = philox4x32(s_lo, s_hi, i_lo, i_hi, domain, version, xp)
    return o0, o1


def uniform53(w0, w1, xp=np):
    """A float64 in the open interval (0, 1) from two 32-bit words.

    ``m = ((w1 << 32) | w0) >> 11`` (the top 53 bits); ``u = m * 2^-53`` for ``m >= 1`` and
    ``u = 2^-54`` for ``m = 0``. Every value is exact in float64; the largest is
    ``1 - 2^-53``.
    """
    m = ((w1 << xp.uint64(32)) | w0) >> xp.uint64(11)
    u = m.astype(xp.float64) * TWO_M53
    return xp.where(m == 0, TWO_M54, u)
