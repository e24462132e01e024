"""GPRS (greedy Poisson rejection sampling, Flamich 2023): its samples against Q (a KS test;
GPRS is approximate, see recray.rec.gprs), runtime, per-block caps, codec API."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from recray import rec
from recray.errors import InputError, SearchBudgetError, UnboundedRatioError
from recray.rec import gprs

RNG = np.random.default_rng(11)
N = 600
MU = RNG.normal(0.0, 1.0, (N, 1))
SIGMA = np.exp(RNG.uniform(np.log(0.15), np.log(0.9), (N, 1)))


def _z(res):
    return ((res.samples - MU) / SIGMA)[:, 0]


def test_gprs_samples_follow_q_ks_and_decode():
    res = rec.encode(MU, SIGMA, method="gprs", seed=5, backend="numpy")
    assert stats.kstest(_z(res), "norm").pvalue > 0.01
    x = rec.decode(res.indices, method="gprs", seed=5, backend="numpy")
    assert np.array_equal(x, res.samples)  # the receiver rebuilds the same sample
    # index code: the universal code of N (about KL + log2(KL + 1) + O(1) bits)
    assert res.nbits.mean() < res.kl_bits.mean() + 5
    assert not res.capped.any()


def test_gprs_mean_steps_equal_r_max():
    m, s = np.full((800, 1), 1.0), np.full((800, 1), 0.3)
    res = rec.encode(m, s, method="gprs", seed=2, backend="numpy")
    r_max = 2.0 ** res.dinf_bits[0]
    se = res.steps.std() / np.sqrt(800)
    assert abs(res.steps.mean() - r_max) < 4 * se


def test_gprs_negative_control_wrong_stretch_function_is_caught(monkeypatch):
    """A planted bug: a stretch function e times too large (accepts too early)."""
    real = gprs._stretch_table

    def wrong(m, s):
        lu, lt = real(m, s)
        return lu, lt + 1.0  # accepts earlier: t(u) stretched by e

    monkeypatch.setattr(gprs, "_stretch_table", wrong)
    res = rec.encode(MU, SIGMA, method="gprs", seed=5, backend="numpy")
    assert stats.kstest(_z(res), "norm").pvalue < 1e-3


def test_gprs_refuses_wide_targets_and_blocks():
    with pytest.raises(UnboundedRatioError):
        rec.encode([[0.0]], [[1.2]], method="gprs")
    with pytest.raises(InputError, match="one-dimensional"):
        rec.encode([[0.0, 0.0]], [[0.5, 0.5]], method="gprs")


def test_gprs_is_not_an_exact_method():
    """Its stretch function is a numerical integral: approximate, so no exactness promise."""
    assert "gprs" in rec.METHODS and "gprs" not in rec.EXACT_METHODS


def test_gprs_per_block_max_steps_caps_each_block_at_its_own_value():
    """Per-block caps: a block with a small cap stops at its own cap (not the batch's
    largest) while its neighbour with a large one runs on; each block's result is the one
    it gets alone."""
    m, s = np.full((3, 1), 3.5), np.full((3, 1), 0.1)  # r_max = 2^12.2: thousands of steps
    caps = np.array([2, 1 << 20, 5])
    res = rec.encode(m, s, method="gprs", seed=3, max_steps=caps, on_cap="keep",
                     backend="numpy")  # fmt: skip
    assert res.capped.tolist() == [True, False, True]
    assert res.steps[0] == 2 and res.steps[2] == 5 and res.steps[1] > 5
    for i in range(3):
        alone = rec.encode(m[i : i + 1], s[i : i + 1], method="gprs", seed=3,
                           stream_ids=[i], max_steps=int(caps[i]), on_cap="keep",
                           backend="numpy")  # fmt: skip
        assert alone.steps[0] == res.steps[i] and alone.capped[0] == res.capped[i]
        assert alone.indices.local[0] == res.indices.local[i]
    with pytest.raises(SearchBudgetError, match=r"block 0: GPRS hit max_steps = 2 \("):
        rec.encode(m, s, method="gprs", seed=3, max_steps=caps, backend="numpy")
