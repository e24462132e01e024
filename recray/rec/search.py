"""The batched search: PFR, ORC and their space-partitioned versions in one loop.

All active blocks advance one *chunk* of arrivals at a time; finished blocks drop out; the
chunk length grows geometrically. No Python loop runs over blocks: per chunk there are
loops over dimension pairs (random words) and binary-search depth only.

The superposed process (ALGORITHMS.md section 4): unit-rate arrivals ``T_1 < T_2 < ...``;
arrival ``k`` draws a bin ``j_k ~ pi`` (sender-private), gets local index ``n_k`` and the
shared sample ``X_k = G(j_k, n_k)``; its score is ``ln tau_k = ln T_k - ln r'(X_k)`` with
``r' = q / p'`` and ``p' = J pi(j) p``. PFR is the special case ``B = 0`` (one bin, local
index = arrival index); ORC the fixed-budget case with ORC's arrival times.

**Stopping (exact mode).** With ``lb_k = ln T_k - ln r'_max`` (non-decreasing in ``k``) and
``ln r'`` clamped to ``ln r'_max`` (a bound it can exceed only by rounding), every score
satisfies ``ln tau_k >= lb_k`` *in floating point*. The sequential rule stops at the first
``k`` with ``lb_k >= min_{i<=k} ln tau_i``; no later arrival can beat the minimum. Inside a
chunk that stop is ``max(k*, first k with lb_k >= min over the chunk)``, where ``k*`` is the
(first) argmin: the result and the step count are those of the sequential algorithm, for
any chunking.

**Arrival times** are sums of fixed-point increments (``max(1, round(E * 2^32))`` in
``uint64``), so they are exact integers whatever the chunking or the backend's scan order;
the floor of 1 keeps ``T`` positive when a spacing rounds to 0. Logs are the portable
:func:`recray.rec.portable.log`, so the compiled kernels (:mod:`recray.rec.kernels`) make
the same decisions bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from recray.rec import portable
from recray.rec.bookkeeping import SeenBins, assign_local_indices
from recray.rec.gaussian import GaussianRatio
from recray.rec.partition import (
    BinTables,
    gather_log_corr,
    intervals_of,
    sample_bins,
    sequential_sum,
)
from recray.rec.randomness import private_uniforms, shared_sample

TIME_SCALE_LOG2 = 32
LN_TIME_SCALE = TIME_SCALE_LOG2 * math.log(2.0)


@dataclass(frozen=True)
class ChunkSchedule:
    """How many arrivals each active block examines per round.

    ``first``: arrivals in the first chunk; ``growth``: factor per round;
    ``max_elements``: cap on ``active blocks x chunk x dimensions`` (memory per round).
    Results do not depend on these settings; speed and memory do.
    """

    first: int = 64
    growth: float = 2.0
    max_elements: int = 1 << 21

    def __post_init__(self):
        if self.first < 1 or self.growth < 1.0 or self.max_elements < 1:
            raise ValueError("ChunkSchedule needs first >= 1, growth >= 1, max_elements >= 1")


@dataclass
class SearchProblem:
    """One batch of ``n`` blocks of ``d`` dimensions, on the backend.

    m, s, log_s   (n, d) f64  prior-standardized target parameters
    tables        BinTables   the partitions (radix, place values, trees) and the sender's
                              weights (``"sup"`` for exact, ``"qmass"`` for budget)
    keys          4 x (n,) u64  shared k0, k1, private k0, k1
    budget        (n,) i64    max arrivals (max_steps, or N for the fixed-budget methods)
    exact         bool        stop by the bound (PFR family) or run the budget out (ORC)
    """

    m: object
    s: object
    log_s: object
    tables: BinTables
    keys: tuple
    budget: object
    exact: bool


@dataclass
class SearchOutcome:
    """Per block (host NumPy arrays): ``bin``, ``local`` (the index to send), ``arrival``
    (global index of the winner), ``steps`` (candidates examined), ``capped`` (budget hit
    before the bound allowed a stop; exact mode only), ``log_tau`` (winning score, nats)."""

    bin: object
    local: object
    arrival: object
    steps: object
    capped: object
    log_tau: object


def run_search(be, prob: SearchProblem, schedule: ChunkSchedule) -> SearchOutcome:
    xp = be.xp
    n, d = prob.m.shape
    t = prob.tables
    bits_any = be.to_numpy((t.radix > 1).any(axis=0))
    cols_b = [i for i in range(d) if bits_any[i]]
    has_bins = (t.radix > 1).any(axis=1)  # (n,) blocks that need local-index bookkeeping
    ks0, ks1, kp0, kp1 = prob.keys

    T_int = xp.zeros(n, dtype=xp.uint64)
    k_done = xp.zeros(n, dtype=xp.int64)
    best_tau = xp.full(n, xp.inf)
    best_bin = xp.zeros(n, dtype=xp.int64)
    best_local = xp.zeros(n, dtype=xp.int64)
    best_k = xp.zeros(n, dtype=xp.int64)
    steps = xp.zeros(n, dtype=xp.int64)
    capped = xp.zeros(n, dtype=bool)
    seen = SeenBins.empty(xp)

    active = xp.arange(n, dtype=xp.int64)
    c = schedule.first
    while active.size:
        A = int(active.size)
        room = int((prob.budget[active] - k_done[active]).max())
        c_eff = max(1, min(int(c), schedule.max_elements // (A * max(d, 1)), room))
        kidx = k_done[active][:, None] + xp.arange(1, c_eff + 1, dtype=xp.int64)[None, :]
        budget = prob.budget[active][:, None]
        valid = kidx <= budget

        # sender-private: spacings and interval draws
        which = [0] + [1 + i for i in cols_b]
        U = private_uniforms(kp0[active][:, None], kp1[active][:, None], kidx, which, xp)
        with be.errstate():
            e = -portable.log(U[0], xp)
            if not prob.exact:  # ORC arrival times: E_i * N / (N - i + 1)
                N = budget.astype(xp.float64)
                e = e * (N / xp.where(valid, N - kidx.astype(xp.float64) + 1.0, 1.0))
        e = xp.where(valid, e, 0.0)
        e_int = xp.maximum(xp.rint(e * float(1 << TIME_SCALE_LOG2)), 1.0).astype(xp.uint64)
        T = T_int[active][:, None] + xp.cumsum(e_int, axis=1, dtype=xp.uint64)
        logT = portable.log(T.astype(xp.float64), xp) - LN_TIME_SCALE

        kd = xp.zeros((A, c_eff, d), dtype=xp.int64)  # interval ordinals
        if cols_b:
            u_b = xp.stack([U[1 + i] for i in cols_b], axis=-1)
            kd[:, :, cols_b] = sample_bins(t, active, u_b, xp, cols=cols_b)
        j = (kd * t.mult[active][:, None, :]).sum(axis=2)

        local = kidx.copy()
        sub = xp.nonzero(has_bins[active])[0]
        if sub.size:
            blk = xp.broadcast_to(active[sub][:, None], (int(sub.size), c_eff)).reshape(-1)
            loc, seen = assign_local_indices(
                blk, j[sub].reshape(-1), kidx[sub].reshape(-1), seen, xp
            )
            local[sub] = loc.reshape(int(sub.size), c_eff)

        k_at, inv_J = intervals_of(t, active, kd)
        y = shared_sample(be, ks0[active][:, None], ks1[active][:, None], j, local, k_at, inv_J)
        lr_d = GaussianRatio.log_ratio_of(
            y,
            prob.m[active][:, None, :],
            prob.s[active][:, None, :],
            prob.log_s[active][:, None, :],
        ) - gather_log_corr(prob.tables, active, kd)
        lr = sequential_sum(lr_d, xp)
        if prob.exact:
            lr = xp.minimum(lr, prob.tables.log_rmax[active][:, None])
        log_tau = xp.where(valid, logT - lr, xp.inf)

        rows = xp.arange(A)
        i_min = xp.argmin(log_tau, axis=1)
        v_min = log_tau[rows, i_min]
        better = v_min < best_tau[active]
        upd = active[better]
        best_tau[upd] = v_min[better]
        best_bin[upd] = j[better, i_min[better]]
        best_local[upd] = local[better, i_min[better]]
        best_k[upd] = kidx[better, i_min[better]]

        reached = kidx[:, -1] >= budget[:, 0]
        if prob.exact:
            lb = logT - prob.tables.log_rmax[active][:, None]
            stop = valid & (lb >= best_tau[active][:, None])
            stopped = stop.any(axis=1)
            k_first = kidx[rows, xp.argmax(stop, axis=1)]
            n_stop = xp.maximum(best_k[active], k_first)
            steps[active[stopped]] = n_stop[stopped]
            hit = reached & ~stopped
            capped[active[hit]] = True
            steps[active[hit]] = budget[hit, 0]
            finished = stopped | reached
        else:
            steps[active[reached]] = budget[reached, 0]
            finished = reached

        T_int[active] = T[:, -1]
        k_done[active] = kidx[:, -1]
        if bool(finished.any()):
            alive = xp.zeros(n, dtype=bool)
            alive[active[~finished]] = True
            seen = seen.keep_blocks(alive, xp)
            active = active[~finished]
        c = min(int(math.ceil(c * schedule.growth)), 1 << 40)

    return SearchOutcome(
        bin=be.to_numpy(best_bin),
        local=be.to_numpy(best_local),
        arrival=be.to_numpy(best_k),
        steps=be.to_numpy(steps),
        capped=be.to_numpy(capped),
        log_tau=be.to_numpy(best_tau),
    )
