"""The two random streams of a block, built on Philox4x32-10 (see ``docs/FORMAT.md``).

* **Shared** (sender and receiver): the candidate sample with local index ``n`` in flat bin
  ``j`` is ``G(key_shared, j, n)``. Dimension pair ``p`` (dimensions ``2p`` and ``2p + 1``)
  uses counter ``(n_lo, (n_hi & 0xFFFF) | (p << 16), j_lo, j_hi)``; output words 0-1 give
  the uniform of dimension ``2p``, words 2-3 that of ``2p + 1``. Then, with ``k_d`` the
  interval index of dimension ``d`` inside ``j``, ``y_d = Phi^{-1}((k_d + u_d) / J_d)``,
  with the portable ``Phi^{-1}`` of :mod:`recray.rec.portable` (RNG version 2; version 1
  used SciPy's ``ndtri`` and is still decoded).
  Limits: ``n < 2^48``, ``d <= 2^17``.
* **Private** (sender only): uniform ``i`` of arrival ``k`` comes from counter
  ``(k_lo, k_hi, i >> 1, 0)`` (words 0-1 for even ``i``, 2-3 for odd ``i``). Uniform 0 is
  the arrival's exponential spacing, uniform ``1 + d`` its interval draw in dimension ``d``.

Keys come from :func:`recray.rec.philox.derive_keys` with the domain of each stream, so a
block's randomness depends only on ``(seed, stream id)``, never on its batch.
"""

from __future__ import annotations

from recray.rec import portable
from recray.rec.gaussian import StandardNormalPrior
from recray.rec.philox import (
    DOMAIN_PRIVATE,
    DOMAIN_SHARED,
    RNG_VERSION,
    derive_keys,
    philox4x32,
    split64,
    uniform53,
)

MAX_LOCAL_INDEX = 1 << 48
MAX_DIM = 1 << 17


def block_keys(seed: int, stream_ids, xp, version: int = RNG_VERSION):
    """``(shared_k0, shared_k1, private_k0, private_k1)``, each ``uint64`` ``(n,)``."""
    s0, s1 = derive_keys(seed, stream_ids, DOMAIN_SHARED, xp, version)
    p0, p1 = derive_keys(seed, stream_ids, DOMAIN_PRIVATE, xp, version)
    return s0, s1, p0, p1


def shared_uniforms(k0, k1, j, local, d: int, xp):
    """Uniforms ``(..., d)`` of the shared candidate ``(j, local)``; ``k0``/``k1`` broadcast
    against ``j``/``local`` (int64, same shape)."""
    j_lo, j_hi = split64(j, xp)
    n_lo, n_hi = split64(local, xp)
    n_hi = n_hi & xp.uint64(0xFFFF)
    cols = []
    for p in range((d + 1) // 2):  # a loop over dimension pairs, not blocks
        w0, w1, w2, w3 = philox4x32(n_lo, n_hi | xp.uint64(p << 16), j_lo, j_hi, k0, k1, xp)
        cols.append(uniform53(w0, w1, xp))
        if 2 * p + 1 < d:
            cols.append(uniform53(w2, w3, xp))
    return xp.stack(cols, axis=-1)


def shared_sample(be, k0, k1, j, local, kd, inv_J, version: int = RNG_VERSION):
    """Prior-standardized candidate ``y`` ``(..., d)`` for bin ``j`` and local index ``local``.

    ``kd`` ``(..., d)`` int64: interval index per dimension (the bit fields of ``j``);
    ``inv_J`` ``(..., d)`` float64: ``2^-b`` per dimension (broadcasts). ``version`` 2 uses
    the portable inverse CDF (the same bits on every backend and machine), version 1 the
    backend's ``ndtri``.
    """
    u = shared_uniforms(k0, k1, j, local, kd.shape[-1], be.xp)
    if version == 1:
        return StandardNormalPrior(be).sample_in_interval(kd, u, inv_J)
    return portable.sample_in_interval(kd, u, inv_J, be.xp)


def private_uniforms(k0, k1, arrival, which, xp):
    """Sender-private uniforms of arrivals ``arrival`` (int64): ``{i: array}`` for each
    uniform index ``i`` in ``which`` (0 = spacing, ``1 + d`` = interval draw of dim ``d``)."""
    a_lo, a_hi = split64(arrival, xp)
    out = {}
    for p in sorted({i >> 1 for i in which}):
        w0, w1, w2, w3 = philox4x32(a_lo, a_hi, xp.uint64(p), xp.uint64(0), k0, k1, xp)
        if 2 * p in which:
            out[2 * p] = uniform53(w0, w1, xp)
        if 2 * p + 1 in which:
            out[2 * p + 1] = uniform53(w2, w3, xp)
    return out
