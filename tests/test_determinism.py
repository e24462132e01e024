"""Determinism promises of ``rec.encode`` / ``rec.decode``.

* decoding reproduces the encoder's samples bit for bit;
* block ``i``'s result depends only on its own row and ``(seed, stream_ids[i])``: the same
  alone, in any batch, in any row order, and for any chunk schedule;
* padding a block with prior-equal, zero-bit dimensions changes nothing (the bitstream
  layer relies on it);
* golden values pin the bitstream format (RNG recipe version 2; version 1 still decodes).

Step counts are kept small (tens to hundreds) so the whole file runs in seconds.
"""

import numpy as np
import pytest

from recray import rec
from recray.errors import SearchBudgetError
from recray.rec.trees import geometry

METHODS = ("pfr", "orc", "sp-pfr", "sp-orc")
N_BLOCKS = 40
ID_BASE = 1000
SEED = 12345


# --------------------------------------------------------------------------- helpers
def mixed_targets(n, d, seed, kl_lo, kl_hi, clip=2.0):
    """Targets with per-entry KL in [kl_lo, kl_hi] bits, means clipped to keep D_inf small;
    bits = round(KL) per dimension."""
    rng = np.random.default_rng(seed)
    kl = rng.uniform(kl_lo, kl_hi, size=(n, d))
    s = 2.0**-kl
    mu = np.clip(rng.normal(size=(n, d)), -clip, clip) * np.sqrt(1.0 - s**2)
    return mu, s, np.rint(kl).astype(np.int64)


def make_batch(method, n=N_BLOCKS, seed=0):
    """(mu, sigma, per-block kwargs, shared kwargs) for a mixed batch of ``method``.

    Per-block kwargs are arrays with one row per block (sliced together with mu/sigma)."""
    if method == "pfr":
        mu, sigma, _ = mixed_targets(n, 3, seed, 0.2, 1.0)
        per = {}
    else:
        mu, sigma, bits = mixed_targets(n, 4, seed, 1.0, 3.0)
        bits[::7, 2] = 0  # some unpartitioned dimensions
        sigma[::5, 3], mu[::5, 3] = 1.0, 0.0  # some collapsed dimensions
        bits[::5, 3] = 0
        per = {"bits": bits} if method.startswith("sp-") else {}
    if method in ("orc", "sp-orc"):
        rng = np.random.default_rng(seed + 1)
        per["n_samples"] = rng.choice([2**8, 2**9, 2**10], size=n).astype(np.int64)
    per["stream_ids"] = ID_BASE + np.arange(n, dtype=np.int64)
    return mu, sigma, per


def encode_rows(method, mu, sigma, per, rows, backend, **kw):
    rows = np.asarray(rows)
    sub = {k: v[rows] for k, v in per.items()}
    return rec.encode(mu[rows], sigma[rows], method=method, seed=SEED, backend=backend, **sub, **kw)


def assert_rows_equal(res, ref, rows):
    """``res`` (for blocks ``rows`` of ``ref``) equals ``ref`` bit for bit."""
    rows = np.asarray(rows)
    np.testing.assert_array_equal(res.indices.bin, ref.indices.bin[rows])
    np.testing.assert_array_equal(res.indices.local, ref.indices.local[rows])
    np.testing.assert_array_equal(res.samples, ref.samples[rows])
    np.testing.assert_array_equal(res.steps, ref.steps[rows])
    np.testing.assert_array_equal(res.nbits, ref.nbits[rows])
    np.testing.assert_array_equal(res.capped, ref.capped[rows])
    np.testing.assert_array_equal(res.partition_bits, ref.partition_bits[rows])
    np.testing.assert_array_equal(res.dinf_bits, ref.dinf_bits[rows])  # NaNs compare equal


def decode_kwargs(method, per):
    return {
        "method": method,
        "seed": SEED,
        "stream_ids": per["stream_ids"],
        "bits": per.get("bits"),
    }


# --------------------------------------------------------------------------- 1. decode identity
@pytest.mark.parametrize("method", METHODS)
def test_decode_reproduces_samples(method, backend):
    mu, sigma, per = make_batch(method)
    res = rec.encode(mu, sigma, method=method, seed=SEED, backend=backend, **per)
    dk = decode_kwargs(method, per)
    x = rec.decode(res.indices, backend=backend, **dk)
    assert np.array_equal(x, res.samples)
    x2 = rec.decode(res.indices.as_array(), dim=mu.shape[1], backend=backend, **dk)
    assert np.array_equal(x2, res.samples)
    # d inferred from the last axis of prior_mu
    x3 = rec.decode(res.indices.as_array(), prior_mu=np.zeros(mu.shape[1]), backend=backend, **dk)
    assert np.array_equal(x3, res.samples)


@pytest.mark.parametrize("method", ["sp-pfr", "sp-orc"])
def test_decode_reproduces_samples_nonstandard_prior(method, backend):
    mu0, s0, per = make_batch(method, n=12, seed=3)
    rng = np.random.default_rng(4)
    pm = rng.normal(size=(12, mu0.shape[1]))
    ps = rng.uniform(0.5, 3.0, size=(12, mu0.shape[1]))
    mu, sigma = pm + ps * mu0, ps * s0
    kw = {"prior_mu": pm, "prior_sigma": ps}
    res = rec.encode(mu, sigma, method=method, seed=SEED, backend=backend, **per, **kw)
    x = rec.decode(res.indices, backend=backend, **decode_kwargs(method, per), **kw)
    assert np.array_equal(x, res.samples)


# --------------------------------------------------------------------------- 2. batch composition
@pytest.mark.parametrize("method", METHODS)
def test_batch_composition(method, backend):
    mu, sigma, per = make_batch(method)
    n = mu.shape[0]
    ref = encode_rows(method, mu, sigma, per, np.arange(n), backend)
    # (a) single blocks, with their stream ids
    for i in (0, 17, n - 1):
        assert_rows_equal(encode_rows(method, mu, sigma, per, [i], backend), ref, [i])
    # (b) reversed and shuffled row order
    for rows in (np.arange(n)[::-1], np.random.default_rng(5).permutation(n)):
        assert_rows_equal(encode_rows(method, mu, sigma, per, rows, backend), ref, rows)
    # (c) a sub-batch
    rows = np.arange(5, 26, 3)
    assert_rows_equal(encode_rows(method, mu, sigma, per, rows, backend), ref, rows)


@pytest.mark.parametrize("method", ["sp-pfr", "sp-orc"])
def test_duplicate_rows_with_same_stream_id_agree(method, backend):
    """Two identical rows with the same stream id give identical results (the local-index
    bookkeeping is per row, not shared between rows)."""
    mu, sigma, per = make_batch(method, n=6, seed=8)
    rows = np.array([0, 1, 1, 2, 0])
    res = encode_rows(method, mu, sigma, per, rows, backend)
    ref = encode_rows(method, mu, sigma, per, np.arange(3), backend)
    assert_rows_equal(res, ref, rows)


@pytest.mark.parametrize("method", ["pfr", "sp-pfr"])
def test_reused_bounds_are_invisible(method, backend):
    """encode(bounds=...) with exact_bounds' tables, taken out of a larger batch, in any
    order, or stacked from two batches (what the pipeline's routing hands the search),
    gives the results of an encode that builds its own."""
    mu, sigma, per = make_batch(method)
    n = mu.shape[0]
    bits = per.get("bits")
    ref = encode_rows(method, mu, sigma, per, np.arange(n), backend)
    whole = rec.exact_bounds(mu, sigma, bits=bits, method=method, backend=backend)
    assert whole.tables is not None
    np.testing.assert_array_equal(whole.dinf, ref.dinf_bits)
    for rows in (np.arange(n), np.arange(n)[::-1], np.arange(3, 30, 4)):
        res = encode_rows(method, mu, sigma, per, rows, backend, bounds=whole.take(rows))
        assert_rows_equal(res, ref, rows)
    half = n // 2
    parts = [
        rec.exact_bounds(
            mu[sl],
            sigma[sl],
            bits=None if bits is None else bits[sl],
            method=method,
            backend=backend,
        )
        for sl in (slice(0, half), slice(half, n))
    ]
    rows = np.random.default_rng(3).permutation(n)[:20]
    stacked = rec.ExactBounds.stack(parts).take(rows)
    assert_rows_equal(encode_rows(method, mu, sigma, per, rows, backend, bounds=stacked), ref, rows)


# --------------------------------------------------------------------------- 3. chunk schedule
SCHEDULES = {
    "one-at-a-time": rec.ChunkSchedule(first=1, growth=1.0, max_elements=64),
    "odd-growth": rec.ChunkSchedule(first=7, growth=1.5),
    "huge-first": rec.ChunkSchedule(first=4096),
    "memory-capped": rec.ChunkSchedule(first=2, growth=1.3, max_elements=200),
}


@pytest.mark.parametrize("method", METHODS)
def test_chunk_schedule_independence(method, backend):
    mu, sigma, per = make_batch(method, n=24, seed=1)
    rows = np.arange(mu.shape[0])
    ref = encode_rows(method, mu, sigma, per, rows, backend)
    for name, sched in SCHEDULES.items():
        res = encode_rows(method, mu, sigma, per, rows, backend, chunks=sched)
        try:
            assert_rows_equal(res, ref, rows)
        except AssertionError as exc:
            raise AssertionError(f"schedule {name}: {exc}") from None


@pytest.mark.parametrize("method", ["sp-pfr", "sp-orc"])
def test_chunk_schedule_independence_coarse_bins(method, backend):
    """Few bits for the KL: many arrivals share a bin, so local indices run into the
    hundreds and the per-bin counts are carried across many chunks."""
    mu, sigma, _ = mixed_targets(12, 3, 2, 1.5, 2.5)
    per = {"bits": np.tile([1, 0, 0], (12, 1)), "stream_ids": np.arange(12) + 77}
    if method == "sp-orc":
        per["n_samples"] = np.full(12, 700)
    rows = np.arange(12)
    ref = encode_rows(method, mu, sigma, per, rows, backend)
    assert ref.indices.local.max() > 50
    for sched in (rec.ChunkSchedule(first=1, growth=1.2, max_elements=64), SCHEDULES["odd-growth"]):
        assert_rows_equal(
            encode_rows(method, mu, sigma, per, rows, backend, chunks=sched), ref, rows
        )
    x = rec.decode(ref.indices, backend=backend, **decode_kwargs(method, per))
    assert np.array_equal(x, ref.samples)


@pytest.mark.parametrize("method", METHODS)
def test_internal_batch_split_is_invisible(method, backend, monkeypatch):
    """encode splits large calls into internal batches (bin-table budget); the split must
    not show in the results."""
    from recray.rec import bounds

    mu, sigma, per = make_batch(method, n=15, seed=12)
    rows = np.arange(15)
    ref = encode_rows(method, mu, sigma, per, rows, backend)
    monkeypatch.setattr(bounds, "TABLE_BUDGET", 16)  # a few blocks per internal batch
    bits = per.get("bits", np.zeros(mu.shape, dtype=np.int64))
    assert len(list(bounds._batches(geometry(None, np.broadcast_to(bits, mu.shape))))) > 2
    assert_rows_equal(encode_rows(method, mu, sigma, per, rows, backend), ref, rows)
    monkeypatch.setattr(bounds, "TABLE_BUDGET", 1 << 23)
    monkeypatch.setattr(bounds, "MAX_BATCH_BLOCKS", 4)  # the block-count limit alone
    assert_rows_equal(encode_rows(method, mu, sigma, per, rows, backend), ref, rows)


# --------------------------------------------------------------------------- 4. padding
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pad", [1, 2, 5])
def test_padding_with_prior_dimensions_is_invisible(method, pad, backend):
    mu, sigma, per = make_batch(method, n=16, seed=2)
    n, d = mu.shape
    rng = np.random.default_rng(6)
    pm = rng.normal(size=(n, d + pad))
    ps = rng.uniform(0.5, 2.0, size=(n, d + pad))
    mu_x = pm[:, :d] + ps[:, :d] * mu
    sig_x = ps[:, :d] * sigma
    ref = rec.encode(
        mu_x,
        sig_x,
        prior_mu=pm[:, :d],
        prior_sigma=ps[:, :d],
        method=method,
        seed=SEED,
        backend=backend,
        **per,
    )
    per_pad = dict(per)
    if "bits" in per:
        per_pad["bits"] = np.concatenate([per["bits"], np.zeros((n, pad), np.int64)], axis=1)
    res = rec.encode(
        np.concatenate([mu_x, pm[:, d:]], axis=1),
        np.concatenate([sig_x, ps[:, d:]], axis=1),
        prior_mu=pm,
        prior_sigma=ps,
        method=method,
        seed=SEED,
        backend=backend,
        **per_pad,
    )
    np.testing.assert_array_equal(res.samples[:, :d], ref.samples)
    np.testing.assert_array_equal(res.indices.bin, ref.indices.bin)
    np.testing.assert_array_equal(res.indices.local, ref.indices.local)
    np.testing.assert_array_equal(res.steps, ref.steps)
    np.testing.assert_array_equal(res.nbits, ref.nbits)
    np.testing.assert_array_equal(res.dinf_bits, ref.dinf_bits)
    assert res.indices.dim == d + pad
    x = rec.decode(
        res.indices,
        prior_mu=pm,
        prior_sigma=ps,
        backend=backend,
        **decode_kwargs(method, per_pad),
    )
    assert np.array_equal(x, res.samples)


# --------------------------------------------------------------------------- 5. seed / stream
@pytest.mark.parametrize("method", METHODS)
def test_seed_and_stream_change_the_sample(method, backend):
    mu, sigma, per = make_batch(method, n=8, seed=4)
    rows = np.arange(8)
    ref = encode_rows(method, mu, sigma, per, rows, backend)
    other_seed = rec.encode(mu, sigma, method=method, seed=SEED + 1, backend=backend, **per)
    per2 = dict(per, stream_ids=per["stream_ids"] + 1)
    other_stream = encode_rows(method, mu, sigma, per2, rows, backend)
    for other in (other_seed, other_stream):
        # every block's sample differs in every dimension (continuous samples)
        assert not np.any(other.samples == ref.samples)
    # swapping stream ids between two rows with equal targets swaps their results
    mu2, s2 = np.repeat(mu[:1], 2, axis=0), np.repeat(sigma[:1], 2, axis=0)
    per3 = {k: np.repeat(v[:1], 2, axis=0) for k, v in per.items()}
    per3["stream_ids"] = np.array([7, 8])
    a = encode_rows(method, mu2, s2, per3, [0, 1], backend)
    per3["stream_ids"] = np.array([8, 7])
    b = encode_rows(method, mu2, s2, per3, [0, 1], backend)
    assert not np.array_equal(a.samples[0], a.samples[1])
    np.testing.assert_array_equal(b.samples, a.samples[::-1])


# --------------------------------------------------------------------------- 6. golden values
# These pin the bitstream format (docs/FORMAT.md, RNG recipe version 2): keys, counters,
# uniforms, the portable inverse-CDF sampler, bin weights, arrival times and the index code.
# Version 2 samples are the same bits on every machine and backend, so they are pinned
# exactly (float.hex). They may change only together with a format version bump
# (recray.rec.philox.RNG_VERSION).
GOLDEN_MU = np.array([[0.3, -0.4], [1.1, 0.2], [-0.6, 0.0]])
GOLDEN_SIGMA = np.array([[0.2, 0.3], [0.3, 0.15], [0.25, 0.3]])
GOLDEN_BITS = np.array([[2, 1], [0, 3], [1, 1]])
GOLDEN_SEED = 7
GOLDEN = {
    "sp-pfr": {
        "kw": {"bits": GOLDEN_BITS},
        "bin": [2, 4, 0],
        "local": [4, 3, 2],
        "steps": [8, 12, 6],
        "nbits": [8, 6, 5],
        "samples": [
            ["0x1.a9c735093b0d9p-3", "-0x1.16e50a36aaccep-1"],
            ["0x1.c650a692b6946p-1", "0x1.f5f48bc4b4d16p-3"],
            ["-0x1.99fc05e55a26ep-2", "-0x1.138ca3e964c38p-2"],
        ],
    },
    "pfr": {
        "kw": {},
        "bin": [0, 0, 0],
        "local": [33, 5, 1],
        "steps": [52, 16, 2],
        "nbits": [10, 5, 2],
        "samples": [
            ["0x1.744a7cfa18a3dp-2", "-0x1.761a3da8c862dp-1"],
            ["0x1.82055754984e2p+0", "0x1.5eff9afde086cp-2"],
            ["-0x1.ac05676f7307ep-2", "-0x1.b45728a1c3cc1p-2"],
        ],
    },
    "sp-orc": {
        "kw": {"bits": GOLDEN_BITS, "n_samples": 256},
        "bin": [5, 4, 0],
        "local": [1, 3, 2],
        "steps": [256, 256, 256],
        "nbits": [5, 6, 5],
        "samples": [
            ["-0x1.82a53bf5a3e7fp-3", "0x1.43235f9b09b9bp-2"],
            ["0x1.c650a692b6946p-1", "0x1.f5f48bc4b4d16p-3"],
            ["-0x1.99fc05e55a26ep-2", "-0x1.138ca3e964c38p-2"],
        ],
    },
}

# The same blocks under RNG recipe version 1 (SciPy ndtri): runs coded then must still
# decode. Samples to 1e-12 (version 1 is bit-exact only on the encoder's library).
GOLDEN_V1 = {
    "sp-pfr": {
        "bin": [2, 4, 2],
        "local": [3, 9, 3],
        "samples": [
            [0.0980687143243924, -0.5140061602911994],
            [1.268390850074025, 0.10182278279088909],
            [-0.9092354982513342, 0.06613151231585748],
        ],
    },
    "pfr": {
        "bin": [0, 0, 0],
        "local": [1, 10, 3],
        "samples": [
            [0.13096924636032392, -0.761011072929707],
            [1.451998520059063, 0.35339933200848256],
            [-0.570969924307482, -0.21431339096582225],
        ],
    },
    "sp-orc": {
        "bin": [2, 4, 2],
        "local": [2, 9, 3],
        "samples": [
            [0.18416387533723558, -0.7657683197450721],
            [1.268390850074025, 0.10182278279088909],
            [-0.9092354982513342, 0.06613151231585748],
        ],
    },
}


def hex_array(rows):
    return np.array([[float.fromhex(v) for v in row] for row in rows])


def test_golden_rng_version():
    from recray.rec.philox import RNG_VERSION

    assert RNG_VERSION == 2  # bump the golden values below together with the version


@pytest.mark.parametrize("method", sorted(GOLDEN))
def test_golden_values(method, backend):
    g = GOLDEN[method]
    res = rec.encode(
        GOLDEN_MU, GOLDEN_SIGMA, method=method, seed=GOLDEN_SEED, backend=backend, **g["kw"]
    )
    assert res.rng_version == 2
    assert res.indices.bin.tolist() == g["bin"]
    assert res.indices.local.tolist() == g["local"]
    assert res.steps.tolist() == g["steps"]
    assert res.nbits.tolist() == g["nbits"]
    want = hex_array(g["samples"])
    np.testing.assert_array_equal(res.samples, want)  # bit for bit
    # the receiver side alone, from the literal indices
    x = rec.decode(
        np.array([g["bin"], g["local"]]).T,
        dim=2,
        method=method,
        seed=GOLDEN_SEED,
        bits=g["kw"].get("bits"),
        backend=backend,
    )
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("method", sorted(GOLDEN_V1))
def test_golden_values_version_1_still_decode(method, backend):
    g = GOLDEN_V1[method]
    x = rec.decode(
        np.array([g["bin"], g["local"]]).T,
        dim=2,
        method=method,
        seed=GOLDEN_SEED,
        bits=GOLDEN[method]["kw"].get("bits"),
        backend=backend,
        rng_version=1,
    )
    np.testing.assert_allclose(x, g["samples"], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- 7. ORC
@pytest.mark.parametrize("method", ["orc", "sp-orc"])
def test_orc_runs_its_budget(method, backend):
    mu, sigma, per = make_batch(method, n=20, seed=9)
    res = rec.encode(mu, sigma, method=method, seed=SEED, backend=backend, **per)
    N = per["n_samples"]
    np.testing.assert_array_equal(res.steps, N)
    assert not res.capped.any()
    assert np.all(res.indices.local >= 1)
    if method == "orc":
        np.testing.assert_array_equal(res.nbits, np.ceil(np.log2(N)).astype(np.int64))
        np.testing.assert_array_equal(res.indices.bin, 0)
        assert np.all(res.indices.local <= N)
    else:
        assert np.all(res.indices.bin < (1 << res.partition_bits))
    # a scalar budget too
    res = rec.encode(
        mu, sigma, method=method, seed=SEED, backend=backend, **dict(per, n_samples=300)
    )
    np.testing.assert_array_equal(res.steps, 300)
    if method == "orc":
        np.testing.assert_array_equal(res.nbits, 9)


# --------------------------------------------------------------------------- 8. on_cap
def capped_batch():
    """sp-pfr blocks whose expected step count is far above 3."""
    mu, sigma, bits = mixed_targets(12, 4, 10, 2.5, 4.0, clip=2.5)
    return mu, sigma, {"bits": np.maximum(bits - 2, 0), "stream_ids": np.arange(12) + 50}


def test_on_cap_keep_flags_capped_blocks(backend):
    mu, sigma, per = capped_batch()
    res = rec.encode(
        mu,
        sigma,
        method="sp-pfr",
        seed=SEED,
        max_steps=3,
        on_cap="keep",
        backend=backend,
        **per,
    )
    assert res.capped.any()
    np.testing.assert_array_equal(res.steps[res.capped], 3)
    assert np.all(res.steps <= 3)
    x = rec.decode(res.indices, backend=backend, **decode_kwargs("sp-pfr", per))
    assert np.array_equal(x, res.samples)
    # the capped blocks' best candidate is the same as with any other chunking
    res2 = rec.encode(
        mu,
        sigma,
        method="sp-pfr",
        seed=SEED,
        max_steps=3,
        on_cap="keep",
        backend=backend,
        chunks=rec.ChunkSchedule(first=1, growth=1.0),
        **per,
    )
    assert_rows_equal(res2, res, np.arange(mu.shape[0]))
    with pytest.raises(SearchBudgetError):
        rec.encode(mu, sigma, method="sp-pfr", seed=SEED, max_steps=3, backend=backend, **per)


# --------------------------------------------------------------------------- 9. result types
@pytest.mark.parametrize("method", METHODS)
def test_result_types(method, backend):
    mu, sigma, per = make_batch(method, n=5, seed=11)
    res = rec.encode(mu, sigma, method=method, seed=SEED, backend=backend, **per)
    n, d = mu.shape
    assert type(res.samples) is np.ndarray
    assert res.samples.dtype == np.float64 and res.samples.shape == (n, d)
    assert isinstance(res.indices, rec.Indices) and res.indices.dim == d
    for name in ("bin", "local"):
        a = getattr(res.indices, name)
        assert type(a) is np.ndarray and a.dtype == np.int64 and a.shape == (n,)
    assert res.indices.as_array().dtype == np.int64 and res.indices.as_array().shape == (n, 2)
    for name in ("steps", "nbits", "partition_bits"):
        a = getattr(res, name)
        assert type(a) is np.ndarray and a.dtype == np.int64 and a.shape == (n,), name
    for name in ("kl_bits", "dinf_bits"):
        a = getattr(res, name)
        assert type(a) is np.ndarray and a.dtype == np.float64 and a.shape == (n,), name
    assert type(res.capped) is np.ndarray and res.capped.dtype == bool
    assert res.capped.shape == (n,)
    assert res.method == method and res.seed == SEED
    if method in ("pfr", "sp-pfr"):
        assert np.all(np.isfinite(res.dinf_bits))
    else:
        assert np.all(np.isnan(res.dinf_bits))
    x = rec.decode(res.indices, backend=backend, **decode_kwargs(method, per))
    assert type(x) is np.ndarray and x.dtype == np.float64 and x.shape == (n, d)
