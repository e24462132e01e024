"""Bad input to ``rec.encode`` / ``rec.decode``: the precise exception type, and a message
that names the block (row, stream id) and the field, raised before any result exists."""

import time

import numpy as np
import pytest

from recray import rec
from recray.backend import cupy_available
from recray.errors import (
    BackendError,
    InputError,
    RecrayError,
    SearchBudgetError,
    UnboundedRatioError,
)
from recray.rec import bounds, encoder

N, D = 5, 3


def benign(n=N, d=D):
    """Small, cheap sp-pfr targets (a few steps each)."""
    rng = np.random.default_rng(0)
    sigma = np.full((n, d), 0.5)
    mu = 0.5 * np.clip(rng.normal(size=(n, d)), -1.5, 1.5)
    bits = np.ones((n, d), dtype=np.int64)
    return mu, sigma, bits


def with_entry(a, idx, value, dtype=float):
    out = np.array(a, dtype=dtype)
    out[idx] = value
    return out


def call_encode(**overrides):
    """encode() on benign targets with ``overrides``; checks that the inputs survive."""
    mu, sigma, bits = benign()
    kw = {"mu": mu, "sigma": sigma, "bits": bits, "method": "sp-pfr", "seed": 3}
    kw.update(overrides)
    args = {k: v.copy() for k, v in kw.items() if isinstance(v, np.ndarray)}
    try:
        return rec.encode(kw.pop("mu"), kw.pop("sigma"), **kw)
    finally:  # nothing half-done: a failing call leaves its inputs untouched
        for k, v in args.items():
            got = overrides.get(k, {"mu": mu, "sigma": sigma, "bits": bits}.get(k))
            np.testing.assert_array_equal(got, v)


def reference_result():
    mu, sigma, bits = benign()
    return rec.encode(mu, sigma, bits=bits, method="sp-pfr", seed=3)


# --------------------------------------------------------------------------- encode: values
MU, SIGMA, BITS = benign()
NAN_MU = with_entry(MU, (3, 1), np.nan)
INF_SIGMA = with_entry(SIGMA, (3, 1), np.inf)
ZERO_SIGMA = with_entry(SIGMA, (2, 0), 0.0)
NEG_SIGMA = with_entry(SIGMA, (4, 2), -0.5)
ZERO_PRIOR_SIGMA = with_entry(np.ones((N, D)), (1, 2), 0.0)
NAN_PRIOR_MU = with_entry(np.zeros((N, D)), (2, 1), np.nan)

ENCODE_CASES = {
    # name: (overrides, exception, message regex)
    "nan-mu": ({"mu": NAN_MU}, InputError, r"block 3\b.*mu\[3, 1\] = nan.*not finite"),
    "inf-sigma": ({"sigma": INF_SIGMA}, InputError, r"block 3\b.*sigma\[3, 1\] = inf"),
    "zero-sigma": ({"sigma": ZERO_SIGMA}, InputError, r"block 2\b.*sigma\[2, 0\].*> 0"),
    "negative-sigma": ({"sigma": NEG_SIGMA}, InputError, r"block 4\b.*sigma\[4, 2\].*> 0"),
    "zero-prior-sigma": (
        {"prior_sigma": ZERO_PRIOR_SIGMA},
        InputError,
        r"block 1\b.*prior_sigma\[1, 2\].*> 0",
    ),
    "negative-scalar-prior-sigma": (
        {"prior_sigma": -1.0},
        InputError,
        r"block 0\b.*prior_sigma\[0, 0\].*> 0",
    ),
    "nan-prior-mu": ({"prior_mu": NAN_PRIOR_MU}, InputError, r"block 2\b.*prior_mu\[2, 1\] = nan"),
    "mu-1d": ({"mu": MU[0], "sigma": SIGMA[0]}, InputError, r"mu must have shape \(n_blocks, d\)"),
    "mu-3d": ({"mu": MU[None], "sigma": SIGMA[None]}, InputError, r"mu must have shape"),
    "mu-strings": ({"mu": [["a"] * D] * N}, InputError, r"mu must be a real float array"),
    "sigma-shape": ({"sigma": SIGMA[:, :2]}, InputError, r"sigma has shape \(5, 2\).*\(5, 3\)"),
    "sigma-rows": ({"sigma": SIGMA[:4]}, InputError, r"sigma has shape \(4, 3\)"),
    "zero-dims": (
        {"mu": np.zeros((N, 0)), "sigma": np.zeros((N, 0)), "bits": None, "method": "pfr"},
        InputError,
        r"1\.\.\d+ dimensions; got d = 0",
    ),
    "prior-mu-shape": (
        {"prior_mu": np.zeros(4)},
        InputError,
        r"prior_mu of shape \(4,\) does not broadcast",
    ),
    "prior-sigma-shape": (
        {"prior_sigma": np.ones((2, D))},
        InputError,
        r"prior_sigma of shape \(2, 3\)",
    ),
    "bits-shape": ({"bits": np.ones(4, np.int64)}, InputError, r"bits of shape \(4,\)"),
    "negative-bits": (
        {"bits": with_entry(BITS, (2, 1), -1, int)},
        InputError,
        r"block 2\b.*bits\[2, 1\] = -1",
    ),
    "bits-over-24": (
        {"bits": with_entry(BITS, (4, 0), 25, int)},
        InputError,
        r"block 4\b.*bits\[4, 0\] = 25.*at most 24",
    ),
    "bits-sum-63": (
        {"bits": with_entry(BITS, 3, 21, int)},
        InputError,
        r"block 3\b.*B = 63.*B <= 62",
    ),
    "float-bits": ({"bits": BITS.astype(float)}, InputError, r"bits must be an integer"),
    "sp-pfr-without-bits": ({"bits": None}, InputError, r"'sp-pfr' needs bits"),
    "sp-orc-without-bits": (
        {"bits": None, "method": "sp-orc", "n_samples": 16},
        InputError,
        r"'sp-orc' needs bits",
    ),
    "orc-without-n-samples": ({"method": "orc"}, InputError, r"'orc' needs n_samples"),
    "sp-orc-without-n-samples": ({"method": "sp-orc"}, InputError, r"'sp-orc' needs n_samples"),
    "n-samples-zero": (
        {"method": "orc", "n_samples": 0},
        InputError,
        r"n_samples\[0\] = 0 is outside",
    ),
    "n-samples-too-large": (
        {"method": "sp-orc", "n_samples": 2**24 + 1},
        InputError,
        r"n_samples\[0\] = 16777217",
    ),
    "n-samples-per-block": (
        {"method": "orc", "n_samples": np.array([8, 8, 8, 0, 8])},
        InputError,
        r"n_samples\[3\] = 0",
    ),
    "n-samples-float": ({"method": "orc", "n_samples": 16.0}, InputError, r"n_samples must be"),
    "n-samples-shape": (
        {"method": "orc", "n_samples": np.array([8, 8])},
        InputError,
        r"n_samples must be",
    ),
    "max-steps-zero": ({"max_steps": 0}, InputError, r"max_steps\[0\] = 0 is outside"),
    "max-steps-too-large": ({"max_steps": 2**31}, InputError, r"max_steps\[0\] = 2147483648"),
    "unknown-method": ({"method": "prs"}, InputError, r"method must be one of.*'prs'"),
    "unknown-on-cap": ({"on_cap": "ignore"}, InputError, r"on_cap must be.*'ignore'"),
    "negative-seed": ({"seed": -1}, InputError, r"seed must be an integer.*-1"),
    "float-seed": ({"seed": 1.0}, InputError, r"seed must be an integer.*1\.0"),
    "huge-seed": ({"seed": 2**64}, InputError, r"seed must be an integer in \[0, 2\^64\)"),
    "bool-seed": ({"seed": True}, InputError, r"seed must be an integer.*True"),
    "string-seed": ({"seed": "1"}, InputError, r"seed must be an integer"),
    "stream-ids-length": (
        {"stream_ids": np.arange(4)},
        InputError,
        r"stream_ids must be.*\(5,\).*shape \(4,\)",
    ),
    "stream-ids-2d": (
        {"stream_ids": np.arange(N)[:, None]},
        InputError,
        r"stream_ids must be.*\(5, 1\)",
    ),
    "stream-ids-float": (
        {"stream_ids": np.arange(N, dtype=float)},
        InputError,
        r"stream_ids.*float64",
    ),
    "unknown-backend": ({"backend": "foo"}, BackendError, r"unknown backend 'foo'.*argument"),
}


@pytest.mark.parametrize("name", sorted(ENCODE_CASES))
def test_encode_rejects_bad_input(name):
    overrides, exc, pattern = ENCODE_CASES[name]
    with pytest.raises(exc, match=pattern) as info:
        call_encode(**overrides)
    assert isinstance(info.value, RecrayError)
    assert len(info.value.args) == 1 and isinstance(info.value.args[0], str)


def test_messages_name_the_stream_id():
    ids = np.arange(N) + 900
    with pytest.raises(InputError, match=r"block 3 \(stream id 903\): mu\[3, 1\]"):
        call_encode(mu=NAN_MU, stream_ids=ids)
    with pytest.raises(InputError, match=r"block 2 \(stream id 902\): bits\[2, 1\]"):
        call_encode(bits=with_entry(BITS, (2, 1), -1, int), stream_ids=ids)


def test_sixty_two_partition_bits_are_allowed():
    bits = with_entry(np.zeros((2, 3), np.int64), 1, [20, 21, 21], int)
    res = rec.encode(
        np.zeros((2, 3)), np.full((2, 3), 0.99), bits=bits, method="sp-orc", n_samples=4
    )
    assert res.partition_bits.tolist() == [0, 62]


def test_errors_leave_no_state_behind():
    """A failed call changes nothing: the next call gives the same result as before it."""
    before = reference_result()
    for overrides in ({"mu": NAN_MU}, {"bits": None}, {"backend": "foo"}, {"max_steps": 0}):
        with pytest.raises(RecrayError):
            call_encode(**overrides)
    after = reference_result()
    np.testing.assert_array_equal(after.samples, before.samples)
    np.testing.assert_array_equal(after.indices.as_array(), before.indices.as_array())


def test_ignored_arguments_are_not_validated_for_pfr():
    """pfr/orc ignore ``bits`` (documented): even invalid bits do not raise."""
    res = call_encode(method="pfr", bits=BITS.astype(float))
    assert res.partition_bits.tolist() == [0] * N


@pytest.mark.filterwarnings("ignore:Casting complex values")
def test_complex_mu_is_rejected():
    with pytest.raises(InputError, match=r"mu must be a real float array"):
        call_encode(mu=MU + 1j)


# --------------------------------------------------------------------------- backends
def test_unknown_backend_from_environment(monkeypatch):
    res = reference_result()
    monkeypatch.setenv("RECRAY_BACKEND", "foo")
    with pytest.raises(BackendError, match=r"unknown backend 'foo'.*RECRAY_BACKEND"):
        call_encode()
    with pytest.raises(BackendError, match=r"RECRAY_BACKEND"):
        rec.decode(res.indices, bits=BITS, seed=3)
    # an explicit argument wins over the environment
    ok = call_encode(backend="numpy")
    np.testing.assert_array_equal(ok.samples, res.samples)


def test_unknown_backend_in_decode():
    res = reference_result()
    with pytest.raises(BackendError, match=r"unknown backend 'foo'"):
        rec.decode(res.indices, bits=BITS, seed=3, backend="foo")


@pytest.mark.skipif(cupy_available(), reason="CuPy is usable here")
def test_cupy_unavailable_is_a_backend_error():
    with pytest.raises(BackendError, match=r"backend 'cupy' is not usable here"):
        call_encode(backend="cupy")


# --------------------------------------------------------------------------- unbounded ratio
def wider_in_block2_dim1(mu, sigma):
    return mu, with_entry(sigma, (2, 1), 1.5)


def shifted_in_block2_dim1(mu, sigma):
    return with_entry(mu, (2, 1), 0.25), with_entry(sigma, (2, 1), 1.0)


@pytest.mark.parametrize("target", [wider_in_block2_dim1, shifted_in_block2_dim1])
@pytest.mark.parametrize("method", ["pfr", "sp-pfr"])
def test_unbounded_ratio_refused_by_exact_methods(method, target):
    mu, sigma = target(MU, SIGMA)
    why = "wider than the prior" if target is wider_in_block2_dim1 else "shifted mean"
    with pytest.raises(UnboundedRatioError, match=rf"block 2, dimension 1\b.*{why}.*{method}"):
        call_encode(mu=mu, sigma=sigma, method=method)


@pytest.mark.parametrize("target", [wider_in_block2_dim1, shifted_in_block2_dim1])
@pytest.mark.parametrize("method", ["orc", "sp-orc"])
def test_unbounded_ratio_accepted_by_fixed_budget_methods(method, target):
    mu, sigma = target(MU, SIGMA)
    res = call_encode(mu=mu, sigma=sigma, method=method, n_samples=64)
    assert np.all(np.isfinite(res.samples))
    np.testing.assert_array_equal(res.steps, 64)


def test_unbounded_is_judged_relative_to_the_prior():
    # sigma = 1.5 is fine under prior_sigma = 2 ...
    res = call_encode(sigma=SIGMA * 3.0, mu=MU * 2.0, prior_sigma=2.0, method="pfr")
    assert not res.capped.any()
    # ... and 2.5 is not
    sigma = with_entry(SIGMA * 3.0, (4, 0), 2.5)
    with pytest.raises(UnboundedRatioError, match=r"block 4, dimension 0\b.*= 1\.25"):
        call_encode(sigma=sigma, prior_sigma=2.0, method="sp-pfr")
    # equal width with the prior's own (non-zero) mean is bounded
    mu = with_entry(MU, (1, 1), 0.7)
    sigma = with_entry(SIGMA, (1, 1), 1.0)
    call_encode(mu=mu, sigma=sigma, prior_mu=np.array([0.0, 0.7, 0.0]), method="pfr")


def test_unbounded_message_names_the_stream_id():
    mu, sigma = wider_in_block2_dim1(MU, SIGMA)
    with pytest.raises(UnboundedRatioError, match=r"block 2 \(stream id 12\), dimension 1"):
        call_encode(mu=mu, sigma=sigma, stream_ids=np.arange(N) + 10)


# --------------------------------------------------------------------------- search budget
def near_collapsed(row=3, dim=2):
    """A near-collapsed dimension 3 sigma out: D_inf 29 bits over the reach, and 2^-23 of its
    mass beyond it (such dimensions are out of reach long before they are expensive)."""
    mu = with_entry(MU, (row, dim), 3.0)
    sigma = with_entry(SIGMA, (row, dim), 0.999)
    bits = with_entry(BITS, (row, dim), 0, int)
    return mu, sigma, bits


def far_narrow(row=3, dim=2):
    """A narrow posterior 6 sigma out in an unpartitioned dimension: D_inf 29 bits, nothing
    beyond the reach (2^-90)."""
    mu = with_entry(MU, (row, dim), 6.0)
    sigma = with_entry(SIGMA, (row, dim), 0.2)
    bits = with_entry(BITS, (row, dim), 0, int)
    return mu, sigma, bits


def no_search(*args, **kwargs):
    raise AssertionError("the search ran although the block was refused")


@pytest.mark.parametrize("method", ["pfr", "sp-pfr"])
def test_expensive_block_is_refused_before_searching(method, monkeypatch):
    mu, sigma, bits = far_narrow()
    monkeypatch.setattr(encoder, "run_search", no_search)
    t0 = time.perf_counter()
    with pytest.raises(SearchBudgetError, match=r"block 3\b.*max_steps.*dimension 2\b"):
        call_encode(mu=mu, sigma=sigma, bits=bits, method=method)
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize("method", ["pfr", "sp-pfr"])
def test_near_collapsed_dimension_far_out_is_refused_before_searching(method, monkeypatch):
    from recray.errors import OutOfReachError

    mu, sigma, bits = near_collapsed()
    monkeypatch.setattr(encoder, "run_search", no_search)
    with pytest.raises(OutOfReachError, match=r"block 3, dimension 2\b.*beyond the sampler"):
        call_encode(mu=mu, sigma=sigma, bits=bits, method=method)


def test_near_collapsed_dimension_is_fine_for_sp_orc():
    mu, sigma, bits = near_collapsed()
    res = call_encode(mu=mu, sigma=sigma, bits=bits, method="sp-orc", n_samples=64)
    assert np.all(np.isfinite(res.samples))


def test_expensive_block_with_on_cap_keep_runs_to_the_cap():
    mu, sigma, bits = far_narrow()
    res = call_encode(mu=mu, sigma=sigma, bits=bits, max_steps=50, on_cap="keep")
    assert res.capped[3] and res.steps[3] == 50
    assert res.dinf_bits[3] > 26


def test_refusal_names_the_global_block_in_a_later_internal_batch(monkeypatch):
    mu, sigma, bits = benign(n=16)
    mu[13, 2], sigma[13, 2], bits[13, 2] = 6.0, 0.2, 0
    monkeypatch.setattr(bounds, "TABLE_BUDGET", 16)  # 16 entries: 2 blocks per internal batch
    with pytest.raises(SearchBudgetError, match=r"block 13\b"):
        rec.encode(mu, sigma, bits=bits, method="sp-pfr")


def test_refusal_comes_before_any_search_in_large_calls(monkeypatch):
    mu, sigma, bits = benign(n=16)
    mu[13, 2], sigma[13, 2], bits[13, 2] = 6.0, 0.2, 0
    monkeypatch.setattr(bounds, "TABLE_BUDGET", 16)
    monkeypatch.setattr(encoder, "run_search", no_search)
    with pytest.raises(SearchBudgetError):
        rec.encode(mu, sigma, bits=bits, method="sp-pfr")


def cap_targets(n=20, d=1):
    """Blocks with D_inf ~ 0.3 bits: the prediction (2^0.3 < 2) passes max_steps = 2, but a
    third of them need 3 or 4 steps."""
    return np.full((n, d), 0.1), np.full((n, d), 0.8), np.arange(n) + 500


@pytest.mark.parametrize("method", ["pfr", "sp-pfr"])
def test_step_cap_hit_at_run_time(method):
    mu, sigma, ids = cap_targets()
    kw = {"method": method, "bits": 1, "stream_ids": ids, "max_steps": 2}
    keep = rec.encode(mu, sigma, on_cap="keep", **kw)
    assert np.all(keep.dinf_bits < 1.0)
    assert keep.capped.any() and not keep.capped.all()
    np.testing.assert_array_equal(keep.steps[keep.capped], 2)
    first = int(np.argmax(keep.capped))
    with pytest.raises(
        SearchBudgetError,
        match=rf"block {first} \(stream id {500 + first}\): the search hit max_steps = 2.*"
        rf"{int(keep.capped.sum())} blocks",
    ):
        rec.encode(mu, sigma, **kw)
    # per-block max_steps: raising the cap of exactly the capped blocks fixes it
    steps = np.where(keep.capped, 100, 2)
    res = rec.encode(mu, sigma, **dict(kw, max_steps=steps))
    assert not res.capped.any()
    assert np.all(res.steps[keep.capped] > 2)


def test_step_cap_message_names_a_dimension():
    mu, sigma, ids = cap_targets(d=2)
    with pytest.raises(SearchBudgetError, match=r"hit max_steps.*dimension \d"):
        rec.encode(mu, sigma, method="pfr", stream_ids=ids, max_steps=2)


# --------------------------------------------------------------------------- decode
def decode_setup():
    ids = np.arange(N) + 100
    mu, sigma, bits = benign()
    res = rec.encode(mu, sigma, bits=bits, stream_ids=ids, seed=3)
    return res, {"bits": bits, "stream_ids": ids, "seed": 3}


def test_decode_rejects_bin_outside_partition():
    res, kw = decode_setup()
    for value in (8, -1):  # B = 3: bins are 0..7
        idx = with_entry(res.indices.as_array(), (3, 0), value, np.int64)
        with pytest.raises(
            InputError, match=rf"block 3 \(stream id 103\): indices.bin\[3\] = {value}.*B = 3"
        ):
            rec.decode(idx, **kw)


def test_decode_rejects_bin_for_unpartitioned_method():
    res, kw = decode_setup()
    assert res.indices.bin.any()
    i = int(np.argmax(res.indices.bin != 0))
    with pytest.raises(InputError, match=rf"block {i}\b.*indices.bin\[{i}\].*B = 0"):
        rec.decode(res.indices, method="pfr", stream_ids=kw["stream_ids"])


@pytest.mark.parametrize("value", [0, -5, 2**48])
def test_decode_rejects_bad_local_index(value):
    res, kw = decode_setup()
    idx = with_entry(res.indices.as_array(), (2, 1), value, np.int64)
    with pytest.raises(InputError, match=r"block 2 \(stream id 102\): indices.local\[2\]"):
        rec.decode(idx, **kw)


def test_decode_needs_the_dimension_of_a_plain_array():
    res, kw = decode_setup()
    with pytest.raises(InputError, match=r"cannot tell the block dimension.*dim="):
        rec.decode(res.indices.as_array(), method="pfr")
    with pytest.raises(InputError, match=r"dim="):
        rec.decode(res.indices.as_array(), bits=1, seed=3, stream_ids=kw["stream_ids"])


@pytest.mark.parametrize(
    "indices",
    [np.zeros(N, np.int64), np.ones((N, 3), np.int64), np.ones((N, 2)), np.ones((1, N, 2), int)],
    ids=["1d", "three-columns", "float", "3d"],
)
def test_decode_rejects_malformed_index_arrays(indices):
    with pytest.raises(InputError, match=r"indices must be an integer array of shape"):
        rec.decode(indices, dim=D, bits=1)


def test_decode_rejects_contradicting_dim():
    res, kw = decode_setup()
    with pytest.raises(InputError, match=r"dim = 4 contradicts indices.dim = 3"):
        rec.decode(res.indices, dim=4, **kw)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"bits": None}, r"'sp-pfr' needs bits"),
        ({"bits": np.ones((N, 2), np.int64)}, r"bits of shape \(5, 2\)"),
        ({"method": "x"}, r"method must be one of"),
        ({"seed": -3}, r"seed must be"),
        ({"stream_ids": np.arange(2)}, r"stream_ids must be"),
        ({"prior_sigma": with_entry(np.ones((N, D)), (1, 0), -1.0)}, r"block 1 .*prior_sigma"),
        ({"prior_mu": with_entry(np.zeros((N, D)), (4, 2), np.inf)}, r"block 4 .*prior_mu"),
    ],
)
def test_decode_rejects_bad_arguments(overrides, pattern):
    res, kw = decode_setup()
    with pytest.raises(InputError, match=pattern):
        rec.decode(res.indices, **dict(kw, **overrides))


@pytest.mark.parametrize("dim", [0, -1])
def test_decode_rejects_bad_dim(dim):
    with pytest.raises(InputError, match=r"\bdim\b"):
        rec.decode(np.array([[0, 1]]), method="pfr", dim=dim)


def test_errors_carry_block_and_dim():
    mu = np.zeros((4, 3))
    sigma = np.full((4, 3), 0.5)
    sigma[2, 1] = 1.5
    with pytest.raises(UnboundedRatioError) as exc:
        rec.encode(mu, sigma, method="pfr")
    assert (exc.value.block, exc.value.dim) == (2, 1)


def test_encode_refuses_bounds_of_other_blocks():
    mu, sigma, bits = benign()
    b = rec.exact_bounds(mu, sigma, bits=bits, method="sp-pfr")
    for kw in (
        dict(mu=mu[1:], sigma=sigma[1:], bits=bits[1:]),  # other rows
        dict(mu=mu + 0.01, sigma=sigma, bits=bits),  # other targets
        dict(mu=mu, sigma=sigma, bits=bits + 1),  # other partition
    ):
        with pytest.raises(InputError, match="bounds were computed for other blocks"):
            rec.encode(method="sp-pfr", bounds=b, **kw)
    with pytest.raises(InputError, match="exact methods"):
        rec.encode(mu, sigma, bits=bits, method="sp-orc", n_samples=64, bounds=b)


def test_exact_feasible_routes_unbounded_and_expensive_blocks():
    mu = np.zeros((3, 2))
    sigma = np.full((3, 2), 0.5)
    sigma[1, 0] = 1.2  # unbounded
    mu[2, 1], sigma[2, 1] = 3.0, 0.999  # near-collapsed, 3 sigma out: D_inf 29 bits
    ok, dinf = rec.exact_feasible(mu, sigma, method="pfr")
    assert ok.tolist() == [True, False, False]
    assert np.isinf(dinf[1]) and dinf[2] > 26 and dinf[0] < 3
