"""Index codes: the universal code is a real prefix code with the documented lengths."""

import numpy as np
import pytest

from recray.rec import codes


def test_kraft_equality_and_pinned_lengths():
    assert np.isclose((2.0 ** -codes.CLASS_LENGTHS.astype(float)).sum(), 1.0)
    got = codes.universal_bits([1, 2, 3, 4, 7, 8, 100, 2**16, 2**20])
    assert got.tolist() == [2, 3, 3, 5, 5, 7, 12, 23, 28]


def test_beats_elias_gamma_for_pfr_sized_indices():
    n = np.array([2**k for k in range(8, 40)])
    ell = codes.floor_log2(n)
    gamma = 2 * ell + 1
    ours = codes.universal_bits(n)
    assert np.all(ours < gamma)
    # about log2 n + log2(log2 n + 1) + 3
    assert np.all(np.abs(ours - (ell + np.log2(ell + 1) + 3)) <= 1.5)


def test_floor_log2_exact_at_powers():
    ks = np.arange(1, 63)
    assert np.array_equal(codes.floor_log2(np.left_shift(1, ks)), ks)
    assert np.array_equal(codes.floor_log2(np.left_shift(1, ks) - 1), ks - 1)


def test_prefix_code_round_trip_of_a_concatenation():
    rng = np.random.default_rng(0)
    values = [
        int(v) for v in np.concatenate([rng.integers(1, 50, 100), 2 ** rng.integers(0, 62, 100)])
    ]
    stream = "".join(codes.write_universal(v) for v in values)
    assert len(stream) == int(codes.universal_bits(values).sum())
    pos, out = 0, []
    while pos < len(stream):
        v, pos = codes.read_universal(stream, pos)
        out.append(v)
    assert out == values


def test_truncated_codeword_is_an_error():
    word = codes.write_universal(1000)
    with pytest.raises(ValueError, match="truncated"):
        codes.read_universal(word[:-1])


def test_method_lengths():
    local = np.array([1, 1, 5])
    B = np.array([16, 0, 10])
    assert codes.index_bits("sp-pfr", local, B).tolist() == [18, 2, 15]
    assert codes.index_bits("pfr", local, B).tolist() == [2, 2, 5]
    assert codes.index_bits("orc", local, B, np.array([2**16, 1, 3])).tolist() == [16, 0, 2]
