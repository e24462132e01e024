"""The algorithm core's input checks: methods, shapes, finiteness, scales, partition bits
and trees, budgets. Every error names the block (its row, and its stream id when that
differs) and the field, and says what to do."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recray.errors import InputError, UnboundedRatioError, fmt_block
from recray.rec.partition import MAX_BITS_PER_DIM
from recray.rec.randomness import MAX_DIM
from recray.rec.trees import Geometry, Trees, geometry

METHODS = ("pfr", "orc", "sp-pfr", "sp-orc", "gprs")
EXACT_METHODS = ("pfr", "sp-pfr")
#: Default step cap of the exact methods: far above any search recray is meant for
#: (2^26 ~ 6.7e7 candidates, about 2^26 / 2^16 = 1024x the largest advised mean).
DEFAULT_MAX_STEPS = 1 << 26
MAX_STEPS_LIMIT = 1 << 30
MAX_SAMPLES_LIMIT = 1 << 24
MAX_PARTITION_BITS = 62
#: Smallest target scale relative to the prior: below it ``((y - mu)/sigma)^2`` can overflow
#: float64 for candidates a few prior-sigma out, and scores become NaN.
MIN_SCALE_RATIO = 1e-150


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return method


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.argwhere(mask)[0])


def _float_2d(name: str, a, shape=None) -> np.ndarray:
    if np.iscomplexobj(a):
        raise InputError(f"{name} must be a real float array; got complex values")
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a real float array; could not convert: {exc}") from exc
    if shape is None:
        if arr.ndim != 2:
            raise InputError(
                f"{name} must have shape (n_blocks, d), one row per block; got shape {arr.shape}"
            )
        return arr
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise InputError(
            f"{name} of shape {arr.shape} does not broadcast to (n_blocks, d) = {shape}"
        ) from None


def _check_finite(name: str, arr: np.ndarray, ids) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        i, d = _first_bad(bad)
        raise InputError(
            f"{fmt_block(i, ids)}: {name}[{i}, {d}] = {arr[i, d]} is not finite "
            f"({int(bad.sum())} non-finite entries of {name} in all); remove or fix these rows",
            block=i,
            dim=d,
        )


def _check_positive(name: str, arr: np.ndarray, ids) -> None:
    bad = arr <= 0
    if bad.any():
        i, d = _first_bad(bad)
        raise InputError(
            f"{fmt_block(i, ids)}: {name}[{i}, {d}] = {arr[i, d]} must be > 0 "
            f"({int(bad.sum())} entries of {name} are <= 0); scales are standard deviations",
            block=i,
            dim=d,
        )


def _stream_ids(stream_ids, n: int) -> np.ndarray:
    if stream_ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(stream_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(
            f"stream_ids must be an integer array of shape (n_blocks,) = ({n},); "
            f"got dtype {ids.dtype} and shape {ids.shape}"
        )
    return ids.astype(np.int64)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
        raise InputError(f"seed must be an integer in [0, 2^64); got {seed!r}")
    return int(seed)


def _bits(bits, method: str, shape, ids) -> np.ndarray:
    n, d = shape
    if not method.startswith("sp-"):
        return np.zeros(shape, dtype=np.int64)
    if bits is None:
        raise InputError(
            f"method {method!r} needs bits: partition bits per dimension, an integer array "
            "broadcast to (n_blocks, d) (0 = not partitioned); see recray.plan.allocate_bits"
        )
    arr = np.asarray(bits)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(f"bits must be an integer array; got dtype {arr.dtype}")
    try:
        arr = arr.astype(np.int64, copy=False)
        if arr.shape != shape:
            arr = np.broadcast_to(arr, shape)
    except ValueError:
        raise InputError(
            f"bits of shape {arr.shape} does not broadcast to (n_blocks, d) = {shape}"
        ) from None
    if (arr < 0).any():
        i, dd = _first_bad(arr < 0)
        raise InputError(f"{fmt_block(i, ids)}: bits[{i}, {dd}] = {arr[i, dd]} must be >= 0")
    if (arr > MAX_BITS_PER_DIM).any():
        i, dd = _first_bad(arr > MAX_BITS_PER_DIM)
        raise InputError(
            f"{fmt_block(i, ids)}: bits[{i}, {dd}] = {arr[i, dd]} is too large: at most "
            f"{MAX_BITS_PER_DIM} per dimension (a 2^b-entry weight table is built for it); "
            "spread the block's bits over more dimensions"
        )
    B = arr.sum(axis=1)
    if (B > MAX_PARTITION_BITS).any():
        i = int(np.argmax(B > MAX_PARTITION_BITS))
        raise InputError(
            f"{fmt_block(i, ids)}: its bits sum to B = {int(B[i])} >= 63; a block's bin id "
            "must fit one int64, so B <= 62: split the block"
        )
    return np.ascontiguousarray(arr)


def _int_param(name: str, value, n: int, lo: int, hi: int) -> np.ndarray:
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be an integer (or one per block); got {value!r}")
    try:
        arr = np.broadcast_to(arr.astype(np.int64), (n,))
    except ValueError:
        raise InputError(f"{name} must be a scalar or have shape ({n},); got {arr.shape}") from None
    if (arr < lo).any() or (arr > hi).any():
        bad = int(np.argmax((arr < lo) | (arr > hi)))
        raise InputError(f"{name}[{bad}] = {int(arr[bad])} is outside [{lo}, {hi}]")
    return arr


def _check_bounded(m: np.ndarray, s: np.ndarray, ids, method: str) -> None:
    bounded = (s < 1.0) | ((s == 1.0) & (m == 0.0))
    if not bounded.all():
        i, d = _first_bad(~bounded)
        why = (
            "the posterior is wider than the prior"
            if s[i, d] > 1.0
            else "the posterior has the prior's width but a shifted mean"
        )
        raise UnboundedRatioError(
            f"{fmt_block(i, ids)}, dimension {d}: the density ratio q/p is unbounded ({why}: "
            f"sigma/prior_sigma = {s[i, d]:.6g}, (mu - prior_mu)/prior_sigma = {m[i, d]:.6g}), "
            f"so {method} would never stop; {int((~bounded).sum())} entries are affected. "
            "Use method='sp-orc' or 'orc' (fixed budget) for such blocks",
            block=i,
            dim=d,
        )


@dataclass(frozen=True)
class _Targets:
    """Validated inputs of one call, host arrays ``(n, d)``; ``m``, ``s`` standardized."""

    n: int
    d: int
    ids: np.ndarray
    pm: np.ndarray
    ps: np.ndarray
    bits: np.ndarray
    m: np.ndarray
    s: np.ndarray
    geo: Geometry

    @property
    def tree_ids(self) -> np.ndarray:
        return self.geo.tree_id


def _targets(mu, sigma, prior_mu, prior_sigma, bits, method, stream_ids, trees=None) -> _Targets:
    mu = _float_2d("mu", mu)
    n, d = mu.shape
    sigma = _float_2d("sigma", sigma)
    if sigma.shape != mu.shape:
        raise InputError(f"sigma has shape {sigma.shape} but mu has {mu.shape}; they must match")
    if d < 1 or d > MAX_DIM:
        raise InputError(f"blocks must have 1..{MAX_DIM} dimensions; got d = {d}")
    ids = _stream_ids(stream_ids, n)
    pm = _float_2d("prior_mu", prior_mu, (n, d))
    ps = _float_2d("prior_sigma", prior_sigma, (n, d))
    for name, arr in (("mu", mu), ("sigma", sigma), ("prior_mu", pm), ("prior_sigma", ps)):
        _check_finite(name, arr, ids)
    _check_positive("sigma", sigma, ids)
    _check_positive("prior_sigma", ps, ids)
    s = sigma / ps
    narrow = s < MIN_SCALE_RATIO
    if narrow.any():
        i, dd = _first_bad(narrow)
        raise InputError(
            f"{fmt_block(i, ids)}: sigma[{i}, {dd}] / prior_sigma = {s[i, dd]:.3g} is below "
            f"{MIN_SCALE_RATIO:g}: the scores of such a narrow target overflow float64 "
            f"({int(narrow.sum())} entries affected); such a posterior is a point mass in "
            "practice: widen it (e.g. clip sigma) before coding",
            block=i,
            dim=dd,
        )
    bits_np = _bits(bits, method, (n, d), ids)
    geo = _geometry(trees, bits_np, method, ids)
    return _Targets(n, d, ids, pm, ps, bits_np, (mu - pm) / ps, s, geo)


def _geometry(trees, bits_np: np.ndarray, method: str, ids) -> Geometry:
    if trees is not None and not isinstance(trees, Trees):
        raise InputError(f"trees must be a recray.rec.trees.Trees or None; got {trees!r}")
    if trees is not None and not method.startswith("sp-"):
        trees = None  # pfr/orc ignore the partition, as they ignore bits
    try:
        return geometry(trees, bits_np)
    except InputError as exc:
        msg = str(exc)
        if exc.args and msg.startswith("block "):
            i = int(msg.split()[1].rstrip(":,"))
            msg = fmt_block(i, ids) + msg[len(f"block {i}") :]
        raise InputError(msg) from None
