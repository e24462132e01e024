"""Shared randomness: Philox4x32-10 known answers, key derivation and the pinned recipe."""

import numpy as np
import pytest

from recray.rec.philox import (
    DOMAIN_PRIVATE,
    DOMAIN_SHARED,
    MASK32,
    derive_keys,
    philox4x32,
    uniform53,
)
from recray.rec.randomness import private_uniforms, shared_uniforms

M = 0xFFFFFFFF

# Random123 known-answer vectors for Philox4x32-10 (kat_vectors in the Random123 distribution)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M, M, M, M), (M, M), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def reference_philox(ctr, key, rounds=10):
    """Independent scalar implementation with Python integers."""
    c = list(ctr)
    k = list(key)
    for r in range(rounds):
        if r:
            k = [(k[0] + 0x9E3779B9) & M, (k[1] + 0xBB67AE85) & M]
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & M, (p0 >> 32) ^ c[3] ^ k[1], p0 & M]
    return tuple(c)


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_known_answers(ctr, key, expected, backend):
    from recray.backend import get_backend

    be = get_backend(backend)
    xp = be.xp
    out = philox4x32(*(xp.uint64(c) for c in ctr), *(xp.uint64(k) for k in key), xp)
    assert tuple(int(o) for o in out) == expected
    assert reference_philox(ctr, key) == expected


def test_vectorized_matches_reference():
    rng = np.random.default_rng(1)
    ctr = rng.integers(0, 2**32, size=(4, 64), dtype=np.uint64)
    key = rng.integers(0, 2**32, size=(2, 64), dtype=np.uint64)
    out = np.stack(philox4x32(*ctr, *key))
    for i in range(64):
        ref = reference_philox([int(c) for c in ctr[:, i]], [int(k) for k in key[:, i]])
        assert tuple(int(o) for o in out[:, i]) == ref
    assert out.max() <= MASK32


def test_broadcasting_keys_over_counters():
    k0 = np.array([[1], [2]], dtype=np.uint64)
    c = np.arange(3, dtype=np.uint64)[None, :]
    out = philox4x32(c, 0, 0, 0, k0, 5)
    assert out[0].shape == (2, 3)
    assert int(out[0][1, 2]) == reference_philox((2, 0, 0, 0), (2, 5))[0]


def test_uniform53_is_open_and_exact():
    w = np.array([0, M, 0x800], dtype=np.uint64)
    lo = uniform53(np.uint64(0), np.uint64(0))
    hi = uniform53(np.uint64(M), np.uint64(M))
    assert float(lo) == 2.0**-54
    assert float(hi) == 1.0 - 2.0**-53
    u = uniform53(w, w)
    assert np.all((u > 0) & (u < 1))


def test_derived_keys_pinned():
    """The key recipe is part of the format (docs/FORMAT.md): these values must not move.
    The second domain key word is the RNG recipe version (2 now; 1 for old runs)."""
    k0, k1 = derive_keys(0, np.arange(3), DOMAIN_SHARED)
    assert [int(x) for x in k0] == [0x609BC29E, 0x7E1E9DB8, 0x8DA45167]
    assert [int(x) for x in k1] == [0xBDCA51D2, 0xCD889358, 0xFCC89103]
    k0, k1 = derive_keys(2**64 - 1, np.array([-1, 12345]), DOMAIN_PRIVATE)
    assert [int(x) for x in k0] == [0xCC41DA27, 0x9391568D]
    assert [int(x) for x in k1] == [0xFC3AB06D, 0xFDD84F22]
    # version 1 (still decoded)
    k0, k1 = derive_keys(0, np.arange(3), DOMAIN_SHARED, version=1)
    assert [int(x) for x in k0] == [0x8C22F76A, 0x5FB2D267, 0x66D9E0FF]
    assert [int(x) for x in k1] == [0xCF0AEAFF, 0x5A64A451, 0x725DCE4A]
    k0, k1 = derive_keys(2**64 - 1, np.array([-1, 12345]), DOMAIN_PRIVATE, version=1)
    assert [int(x) for x in k0] == [0xAF516058, 0x21B6AF85]
    assert [int(x) for x in k1] == [0x51B940D0, 0xF4244B91]


def test_stream_uniforms_pinned():
    """Uniforms are exact dyadic rationals, so they are pinned bit for bit."""
    k0, k1 = derive_keys(7, np.array([5]), DOMAIN_SHARED, version=1)
    u = shared_uniforms(k0, k1, np.array([3]), np.array([2]), 3, np)
    assert [float(x).hex() for x in u[0]] == [
        "0x1.12454a9f9fcdep-2",
        "0x1.86c04d49e9bf8p-4",
        "0x1.25c3b046bba33p-1",
    ]
    k0, k1 = derive_keys(7, np.array([5]), DOMAIN_PRIVATE, version=1)
    p = private_uniforms(k0, k1, np.array([1]), [0, 1, 2], np)
    assert [float(p[i][0]).hex() for i in range(3)] == [
        "0x1.060ba941bff82p-2",
        "0x1.edcc743263baap-2",
        "0x1.c0e4120793065p-1",
    ]


def test_domains_and_streams_differ():
    s = derive_keys(3, np.arange(4), DOMAIN_SHARED)
    p = derive_keys(3, np.arange(4), DOMAIN_PRIVATE)
    assert not np.array_equal(s[0], p[0])
    assert len(set(int(x) for x in s[0])) == 4
