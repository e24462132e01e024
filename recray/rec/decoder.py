"""``rec.decode``: each block's sample from its index, bit for bit the encoder's on every
backend (see :mod:`recray.rec.api`)."""

from __future__ import annotations

import numpy as np

from recray.backend import get_backend
from recray.errors import InputError, fmt_block
from recray.rec.inputs import (
    _bits,
    _check_finite,
    _check_method,
    _check_positive,
    _float_2d,
    _geometry,
    _seed,
    _stream_ids,
)
from recray.rec.kernels import compact_rows
from recray.rec.philox import RNG_VERSION, RNG_VERSIONS
from recray.rec.randomness import MAX_DIM, MAX_LOCAL_INDEX, block_keys, shared_sample
from recray.rec.results import Indices
from recray.rec.trees import Geometry, Trees


def _regenerate(be, bin_np, local_np, geo: Geometry, k0, k1, pm, ps, version=RNG_VERSION):
    """Samples ``x = prior_mu + prior_sigma * G(seed, j, n)`` on the backend, to the host.
    The kernels and the array path give the same bits (RNG version 2)."""
    shape = geo.radix.shape
    if be.kernel is not None and version == RNG_VERSION:
        from recray.rec.kernels import regenerate

        return regenerate(
            be.kernel,
            bin_np,
            local_np,
            geo,
            be.to_numpy(k0),
            be.to_numpy(k1),
            compact_rows(np.broadcast_to(pm, shape)),
            compact_rows(np.broadcast_to(ps, shape)),
        )
    j = be.asarray(bin_np)[:, None]
    local = be.asarray(local_np)[:, None]
    kd, inv_J = geo.intervals(geo.ordinals(bin_np))
    y = shared_sample(
        be,
        k0[:, None],
        k1[:, None],
        j,
        local,
        be.asarray(kd)[:, None, :],
        be.asarray(inv_J)[:, None, :],
        version,
    )
    x = be.asarray(pm) + be.asarray(ps) * y[:, 0, :]
    return be.to_numpy(x).astype(np.float64, copy=False)


def decode(
    indices,
    *,
    prior_mu=0.0,
    prior_sigma=1.0,
    bits=None,
    method: str = "sp-pfr",
    seed: int = 0,
    stream_ids=None,
    backend=None,
    dim: int | None = None,
    rng_version: int = RNG_VERSION,
    n_samples=None,
    max_steps=None,
    on_cap=None,
    chunks=None,
    trees: Trees | None = None,
) -> np.ndarray:
    """Rebuild each block's sample from its index: ``x = prior_mu + prior_sigma * G(j, n)``.

    ``indices`` is ``res.indices`` (:class:`Indices`) or an int array ``(n_blocks, 2)`` of
    ``[bin, local]`` (then ``d`` comes from ``dim=`` or the shape of ``prior_mu``,
    ``prior_sigma`` or ``bits``). All other arguments must equal the encoder's (see the
    module docstring). ``rng_version``: the recipe the run was coded with (1 or 2; the
    current one by default). Returns float64 ``(n_blocks, d)``: bit for bit
    ``res.samples``, on any backend. Decoding never needs the targets.

    ``n_samples``, ``max_steps``, ``on_cap`` and ``chunks`` are accepted and ignored (the
    encoder's settings; the index alone decides the sample), so one set of keyword
    arguments can serve both calls.
    """
    method = _check_method(method)
    if rng_version not in RNG_VERSIONS:
        raise InputError(
            f"rng_version = {rng_version!r} is not a recipe this recray can decode "
            f"(known: {', '.join(map(str, RNG_VERSIONS))})"
        )
    if not isinstance(indices, Indices):
        if dim is None:
            dim = _infer_dim(prior_mu, prior_sigma, bits)
        indices = Indices.from_array(indices, dim)
    elif dim is not None and dim != indices.dim:
        raise InputError(f"dim = {dim} contradicts indices.dim = {indices.dim}")
    n, d = len(indices), indices.dim
    if isinstance(d, bool) or not isinstance(d, int | np.integer) or not 1 <= d <= MAX_DIM:
        raise InputError(
            f"dim (the block dimension d) must be an integer in [1, {MAX_DIM}]; got {d!r}"
        )
    ids = _stream_ids(stream_ids, n)
    seed = _seed(seed)
    pm = _float_2d("prior_mu", prior_mu, (n, d))
    ps = _float_2d("prior_sigma", prior_sigma, (n, d))
    _check_finite("prior_mu", pm, ids)
    _check_finite("prior_sigma", ps, ids)
    _check_positive("prior_sigma", ps, ids)
    bits_np = _bits(bits, method, (n, d), ids)
    geo = _geometry(trees, bits_np, method, ids)
    j, local = indices.bin, indices.local
    B = geo.ext.sum(axis=1)
    end = np.left_shift(np.int64(1), B) if geo.plain else np.prod(geo.radix, axis=1)
    bad = (j < 0) | (j >= end)
    if bad.any():
        i = int(np.argmax(bad))
        fits = f"B = {int(B[i])} partition bits" if geo.plain else f"{int(end[i])} bins"
        raise InputError(
            f"{fmt_block(i, ids)}: indices.bin[{i}] = {int(j[i])} does not fit the block's "
            f"{fits}; bits, trees, method or indices do not match the encoder"
        )
    bad = (local < 1) | (local >= MAX_LOCAL_INDEX)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"{fmt_block(i, ids)}: indices.local[{i}] = {int(local[i])} must be in [1, 2^48)"
        )
    be = get_backend(backend)
    if be.kernel is not None and rng_version == RNG_VERSION:
        from recray.rec.kernels import shared_keys

        k0, k1 = shared_keys(seed, ids, rng_version)
    else:
        k0, k1, _, _ = block_keys(seed, be.asarray(ids), be.xp, rng_version)
    if n == 0:
        return np.empty((0, d), dtype=np.float64)
    return _regenerate(
        be,
        j,
        local,
        geo,
        k0,
        k1,
        pm,
        ps,
        rng_version,
    )


def _infer_dim(*arrays) -> int:
    for a in arrays:
        if a is not None and np.ndim(a) >= 1:
            return int(np.shape(a)[-1])
    raise InputError(
        "cannot tell the block dimension d from a plain index array: pass res.indices "
        "(an Indices object), dim=d, or prior_mu/prior_sigma/bits with a last axis of length d"
    )
