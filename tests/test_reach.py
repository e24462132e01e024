"""The stopping bound over what the sampler can reach (docs/FORMAT.md section 4.1).

* the reach of each partition depth is the portable ``Phi^{-1}`` of the most extreme
  probabilities the RNG recipe produces, pushed out by the margin, and it contains the
  exact quantiles (mpmath) and every extreme candidate the recipe can make;
* every candidate the generator can produce in an outer interval stays under the table's
  bound, and a bound over a range cut by one prior-sigma fails that check (negative control);
* for targets whose ratio peaks inside the reach the tables are those of the whole-line
  bound bit for bit, so their searches (and bytes) are unchanged; for near-collapsed
  unpartitioned dimensions the winners are unchanged and the searches far shorter.
"""

import math

import numpy as np
import pytest

from recray import rec
from recray.backend import get_backend
from recray.rec import api, portable
from recray.rec.gaussian import REACH_MARGIN, GaussianRatio, StandardNormalPrior
from recray.rec.partition import build_tables as _build_tables
from recray.rec.trees import geometry
from tests.conftest import typical_posteriors

BE = get_backend("numpy")
PRIOR = StandardNormalPrior(BE)


def build_tables(be, m, s, bits, _bits_again, weights):
    """The tables of complete partitions of ``bits`` (n, d)."""
    bits = np.ascontiguousarray(np.broadcast_to(np.asarray(bits, dtype=np.int64), m.shape))
    return _build_tables(be, m, s, geometry(None, bits), weights)


def whole_line(monkeypatch):
    """The bound of earlier recray versions: outer intervals reach +-inf."""
    from recray.rec import partition

    monkeypatch.setattr(StandardNormalPrior, "reach", lambda self, b: (-math.inf, math.inf))
    monkeypatch.setattr(partition, "_SHAPES", {})


@pytest.mark.parametrize("b", [0, 1, 3, 8, 16, 24])
def test_reach_contains_the_exact_extreme_quantiles(b):
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    lo, hi = PRIOR.reach(b)
    exact_lo = float(mp.sqrt(2) * mp.erfinv(2 * mp.mpf(2) ** -(54 + b) - 1))
    exact_hi = -float(mp.sqrt(2) * mp.erfinv(2 * mp.mpf(2) ** -(53 + b) - 1))
    assert lo < exact_lo < hi and lo < exact_hi < hi
    assert abs(lo / exact_lo - 1) < 2 * REACH_MARGIN and abs(hi / exact_hi - 1) < 2 * REACH_MARGIN
    if b == 0:  # about [-8.29, 8.21] prior-sigma for an unpartitioned dimension
        assert -8.30 < lo < -8.28 and 8.20 < hi < 8.22


@pytest.mark.parametrize("b", [0, 1, 2, 5, 12, 24])
def test_every_extreme_candidate_lies_within_reach(b):
    """The candidates of the outer intervals for the most extreme uniforms of the recipe
    (section 3: ``u = 2^-54``, ``k 2^-53`` and ``1 - k 2^-53``)."""
    J = 1 << b
    k = np.arange(1, 20001, dtype=np.float64)
    u = np.concatenate([[2.0**-54], k * 2.0**-53, 1.0 - k * 2.0**-53])
    inv_J = np.float64(2.0**-b)
    lo, hi = PRIOR.reach(b)
    for interval in {0, J - 1}:
        y = portable.sample_in_interval(np.full(u.shape, interval, np.int64), u, inv_J, np)
        assert np.isfinite(y).all()
        assert (y >= lo).all() and (y <= hi).all(), (b, interval, y.min(), y.max())
    # the ends are the recipe's own extremes (then the margin): nothing reaches past them
    y0 = portable.sample_in_interval(np.zeros(1, np.int64), np.array([2.0**-54]), inv_J, np)
    assert y0[0] == pytest.approx(lo / (1 + REACH_MARGIN), rel=0, abs=0)


def _far_peaked_blocks():
    """Bounded targets whose ratio peaks beyond the reach (``y* = m / (1 - s^2)``, tens to
    hundreds of sigma out): near-collapsed dimensions, and a partitioned one with a
    shifted mean whose peak lies in its outer interval."""
    rng = np.random.default_rng(7)
    n = 64
    s = rng.uniform(0.995, 0.9995, (n, 3))
    m = rng.normal(0.0, 0.05, (n, 3)) + np.sign(rng.normal(size=(n, 3))) * 0.03
    s[:, 2] = rng.uniform(0.97, 0.99, n)
    m[:, 2] = rng.choice([-1.0, 1.0], n) * rng.uniform(0.4, 0.8, n)
    bits = np.array([0, 0, 2])
    return m, s, bits


def _reachable_worst(m, s, bits):
    """Per block and dimension, ``ln q/p - ln(J pi)`` at the extreme candidates of the
    outer intervals (the uniforms of the previous test): what a bound must cover."""
    tables = build_tables(
        BE, m, s, np.broadcast_to(bits, m.shape), np.broadcast_to(bits, m.shape), "sup"
    )
    k = np.arange(1, 2001, dtype=np.float64)
    u = np.concatenate([[2.0**-54], k * 2.0**-53, 1.0 - k * 2.0**-53])
    worst = np.full(m.shape, -np.inf)
    for d in range(m.shape[1]):
        J = 1 << int(bits[d])
        for interval in {0, J - 1}:
            y = portable.sample_in_interval(
                np.full(u.shape, interval, np.int64), u, 2.0 ** -int(bits[d]), np
            )
            lr = GaussianRatio.log_ratio_of(
                y[None, :], m[:, d : d + 1], s[:, d : d + 1], np.log(s[:, d : d + 1])
            )
            corr = tables.log_corr[tables.offsets[:, d] + interval]
            worst[:, d] = np.maximum(worst[:, d], (lr - corr[:, None]).max(axis=1))
    return worst, tables


def test_no_reachable_candidate_exceeds_the_bound():
    m, s, bits = _far_peaked_blocks()
    worst, tables = _reachable_worst(m, s, bits)
    slack = 1e-12 * (1 + np.abs(tables.log_rmax_d))
    assert (worst <= tables.log_rmax_d + slack).all()
    # the bound is far below the whole line's on these blocks
    assert np.median(tables.log_rmax_d[:, :2]) / math.log(2) < 1.0


def test_negative_control_range_cut_by_one_sigma_is_caught(monkeypatch):
    """A bound taken over a range one prior-sigma short of the reach: some candidate the
    generator can produce exceeds it (the check above must catch the planted bug)."""
    from recray.rec import partition

    real = StandardNormalPrior.reach
    monkeypatch.setattr(partition, "_SHAPES", {})
    monkeypatch.setattr(
        StandardNormalPrior,
        "reach",
        lambda self, b: (real(self, b)[0] + 1.0, real(self, b)[1] - 1.0),
    )
    m, s, bits = _far_peaked_blocks()
    worst, tables = _reachable_worst(m, s, bits)
    over = worst > tables.log_rmax_d + 1e-9
    # every unpartitioned dimension whose ratio peaks beyond the cut range is caught
    ystar = m[:, :2] / (1 - s[:, :2] ** 2)
    lo, hi = real(StandardNormalPrior(BE), 0)
    beyond = (ystar < lo + 1.0) | (ystar > hi - 1.0)
    assert beyond.sum() > 40
    assert over[:, :2][beyond].all()
    assert over[:, 2].any()


def test_tables_unchanged_where_the_peak_is_within_reach(monkeypatch):
    """Typical posteriors (peaks a few sigma out): the same tables bit for bit as the
    whole-line bound, so the same searches and bytes."""
    mu, s = typical_posteriors(200, 6, [2.5, 1.5, 1.0, 3.0, 0.5, 2.0], 3)
    bits = np.broadcast_to(np.array([3, 2, 1, 4, 0, 2]), mu.shape)
    now = build_tables(BE, mu, s, bits, bits, "sup")
    q_now = build_tables(BE, mu, s, bits, bits, "qmass")
    whole_line(monkeypatch)
    before = build_tables(BE, mu, s, bits, bits, "sup")
    q_before = build_tables(BE, mu, s, bits, bits, "qmass")
    for f in ("cdf", "log_corr", "log_rmax_d", "log_rmax"):
        np.testing.assert_array_equal(getattr(now, f), getattr(before, f), err_msg=f)
    for f in ("cdf", "log_corr"):  # fixed-budget weights are Q-masses: never affected
        np.testing.assert_array_equal(getattr(q_now, f), getattr(q_before, f), err_msg=f)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_near_collapsed_blocks_keep_their_winners_and_stop_far_sooner(monkeypatch, backend):
    """Unpartitioned near-collapsed dimensions: the winner is the argmin of the whole
    process whatever valid bound stops the search, so it is the same as under the
    whole-line bound, found in a fraction of the candidates."""
    rng = np.random.default_rng(11)
    n, d = 300, 8
    s = rng.uniform(0.998, 0.9995, (n, d))
    mu = rng.normal(size=(n, d)) * np.sqrt(1 - s * s)
    kw = dict(method="sp-pfr", bits=0, seed=5, backend=backend)
    now = rec.encode(mu, s, **kw)
    whole_line(monkeypatch)
    before = rec.encode(mu, s, **kw)
    np.testing.assert_array_equal(now.indices.as_array(), before.indices.as_array())
    np.testing.assert_array_equal(now.samples, before.samples)
    assert now.steps.mean() * 20 < before.steps.mean(), (now.steps.mean(), before.steps.mean())
    assert (now.dinf_bits <= before.dinf_bits + 1e-12).all()


def test_a_target_beyond_reach_is_refused_not_truncated():
    """A posterior 7.5 prior-sigma out puts about 2^-9 of its mass beyond the reach: an
    exact method refuses it (naming the block and dimension), the fixed-budget methods
    code it, and a partitioned dimension's wider reach admits a target the unpartitioned
    one refuses."""
    from recray.errors import OutOfReachError

    mu = np.array([[0.2, 7.5], [0.1, -0.3]])
    sigma = np.array([[0.5, 0.25], [0.5, 0.5]])
    with pytest.raises(OutOfReachError, match=r"block 0, dimension 1\b.*2\^-8\.8 of its mass"):
        rec.encode(mu, sigma, bits=0, method="sp-pfr")
    b = rec.exact_bounds(mu, sigma, bits=0, tables=False)
    assert b.feasible().tolist() == [False, True]
    assert b.outside[0] > -10 and b.outside[1] < -150
    res = rec.encode(mu, sigma, bits=0, method="sp-orc", n_samples=64)
    assert np.isfinite(res.samples).all()
    # 6.82 sigma out with scale 0.2: 2^-39 beyond 8.21 (refused), 2^-43 beyond 8.29 (admitted)
    mu2, s2 = np.array([[6.82]]), np.array([[0.2]])
    assert rec.exact_bounds(mu2, s2, bits=0, tables=False).outside[0] > api.OUTSIDE_MAX_BITS
    assert rec.exact_bounds(mu2, s2, bits=1, tables=False).outside[0] < api.OUTSIDE_MAX_BITS


def test_pipeline_routes_a_block_beyond_reach():
    """recray compress's routing: with on_unbounded="error" the block is a bad item named by
    item id and latent dimension; with "orc" it is coded by the fixed-budget twin."""
    from recray.errors import OutOfReachError
    from recray.pipeline.codec import CodecSpec, encode_items
    from recray.plan import build_plan

    plan = build_plan([2.0, 2.0, 0.001, 0.001], 16.0, collapsed_block_size=2)
    mu = np.zeros((3, 4))
    sigma = np.full((3, 4), 0.5)
    sigma[:, 2:] = 0.999
    mu[1, 3], sigma[1, 3] = 7.5, 0.25
    common = dict(plan=plan, method="sp-pfr", seed=1, prior_mu=np.zeros(4), prior_sigma=np.ones(4))
    ids = np.array([10, 11, 12])
    with pytest.raises(OutOfReachError, match=r"item 11, plan block 1, latent dimension 3\b"):
        encode_items(ids, mu, sigma, CodecSpec(**common))
    out = encode_items(ids, mu, sigma, CodecSpec(**common, on_unbounded="orc", n_samples=256))
    assert out.fallback_blocks.tolist() == [0, 1, 0]
