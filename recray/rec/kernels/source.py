"""The one source of the hot loop: Philox, uniforms, portable ``log`` and ``Phi^{-1}``, the
interval sampler, the density ratio, bin draws, the local-index hash and one block's whole
sequential search.

:func:`build` compiles every function here with a given decorator and returns them in a
namespace. The same text becomes

* the CPU kernel (``numba.njit``; :mod:`recray.rec.kernels.cpu`),
* the GPU kernel (``numba.cuda.jit(device=True)``; :mod:`recray.rec.kernels.gpu`),
* and, with the identity decorator and ``operator.mul``, the branch-free pieces of the
  NumPy/CuPy reference (:mod:`recray.rec.portable`), which applies them to whole arrays.

**Portable arithmetic** (docs/FORMAT.md section 4): float results here use only ``+``,
``-``, ``*``, ``/``, ``sqrt`` (all correctly rounded in IEEE 754 binary64), ``frexp`` (exact)
and comparisons, in a fixed order, so they are the same bits on every CPU and GPU. Every
product goes through ``mul``, which the GPU build binds to libdevice ``__dmul_rn`` (never
merged into a fused multiply-add, whatever NVVM's ``-fma`` setting); the CPU build binds
it to a plain ``*`` (Numba emits no FMA contraction without fast-math flags; checked in
``tests/test_kernels.py``). Nothing here calls a library ``log``, ``exp`` or ``ndtri``.

Integers: Philox words are 32-bit values carried in ``uint64``; every integer constant used
with them is a ``uint64`` so Numba never promotes a mixed expression to float.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

# --------------------------------------------------------------------------- constants
U0 = np.uint64(0)
U1 = np.uint64(1)
U11 = np.uint64(11)
U16 = np.uint64(16)
U32 = np.uint64(32)
MASK32 = np.uint64(0xFFFFFFFF)
MASK16 = np.uint64(0xFFFF)
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)
HASH_MIX = np.uint64(0x9E3779B9)
#: Fibonacci-hash multiplier of the local-index table (a test sets 0 to force collisions)
HASH_MULT = 0x85EBCA6B

TWO_M53 = 2.0**-53
TWO_M54 = 2.0**-54
TWO_P32 = 4294967296.0
TWO_P52 = 4503599627370496.0
LN_TIME_SCALE = 32 * math.log(2.0)

# fdlibm e_log.c
SQRT_HALF = 0.70710678118654752440
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
LG1 = 6.666666666666735130e-01
LG2 = 3.999999999940941908e-01
LG3 = 2.857142874366239149e-01
LG4 = 2.222219843214978396e-01
LG5 = 1.818357216161805012e-01
LG6 = 1.531383769920937332e-01
LG7 = 1.479819860511658591e-01

# Wichura, AS241 PPND16 (Applied Statistics 37, 1988)
A0 = 3.3871328727963666080e0
A1 = 1.3314166789178437745e2
A2 = 1.9715909503065514427e3
A3 = 1.3731693765509461125e4
A4 = 4.5921953931549871457e4
A5 = 6.7265770927008700853e4
A6 = 3.3430575583588128105e4
A7 = 2.5090809287301226727e3
B1 = 4.2313330701600911252e1
B2 = 6.8718700749205790830e2
B3 = 5.3941960214247511077e3
B4 = 2.1213794301586595867e4
B5 = 3.9307895800092710610e4
B6 = 2.8729085735721942674e4
B7 = 5.2264952788528545610e3
C0 = 1.42343711074968357734e0
C1 = 4.63033784615654529590e0
C2 = 5.76949722146069140550e0
C3 = 3.64784832476320460504e0
C4 = 1.27045825245236838258e0
C5 = 2.41780725177450611770e-1
C6 = 2.27238449892691845833e-2
C7 = 7.74545014278341407640e-4
D1 = 2.05319162663775882187e0
D2 = 1.67638483018380384940e0
D3 = 6.89767334985100004550e-1
D4 = 1.48103976427480074590e-1
D5 = 1.51986665636164571966e-2
D6 = 5.47593808499534494600e-4
D7 = 1.05075007164441684324e-9
E0 = 6.65790464350110377720e0
E1 = 5.46378491116411436990e0
E2 = 1.78482653991729133580e0
E3 = 2.96560571828504891230e-1
E4 = 2.65321895265761230930e-2
E5 = 1.24266094738807843860e-3
E6 = 2.71155556874348757815e-5
E7 = 2.01033439929228813265e-7
F1 = 5.99832206555887937690e-1
F2 = 1.36929880922735805310e-1
F3 = 1.48753612908506148525e-2
F4 = 7.86869131145613259100e-4
F5 = 1.84631831751005468180e-5
F6 = 1.42151175831644588870e-7
F7 = 2.04426310338993978564e-15

#: search status codes (per block)
ST_DONE = 0  # stopped by the bound, or ran its fixed budget
ST_CAPPED = 1  # exact mode: hit the step cap before the bound allowed a stop
ST_OVERFLOW = 2  # the local-index table filled up: rerun the block with a larger table

#: The search problem as the kernels take it: one tuple, in this order (shapes: ``n``
#: blocks of ``d`` dimensions; ``total`` flat table entries, ``T`` tree leaves; see
#: :func:`recray.rec.kernels.kernel_arrays` and :class:`recray.rec.partition.BinTables`):
#: ``m``, ``s``, ``log_s`` (n, d) f64; ``depth`` (binary-search rounds of the bin draw),
#: ``mult`` (place value in the mixed-radix bin id), ``ext`` (extra levels on the tree)
#: (n, d) i64; ``inv_J`` (n, d) f64 (``2^-ext``); ``toff`` (n, d) i64 (the pair's tree in
#: ``leaf_k`` (T,) i64 and ``leaf_inv`` (T,) f64); ``offs`` (n, d) i64; ``thr``
#: (total,) u64 (the interval draw's thresholds: see :func:`recray.rec.kernels.draw_thresholds`);
#: ``log_corr``, ``log_bound`` (total,) f64; ``order`` (n, d) i64 (the order in which the
#: lazy reject visits dimensions); ``rest_max`` (n, d) f64 (in that order); ``log_rmax``
#: (n,) f64; ``keys`` (n, 4) u64 (shared, then private key); ``budget`` (n,) i64;
#: ``exact``, ``lazy`` bool.
PROBLEM_FIELDS = (
    "m",
    "s",
    "log_s",
    "depth",
    "mult",
    "ext",
    "inv_J",
    "toff",
    "leaf_k",
    "leaf_inv",
    "offs",
    "thr",
    "log_corr",
    "log_bound",
    "order",
    "rest_max",
    "log_rmax",
    "keys",
    "budget",
    "exact",
    "lazy",
)

#: relative margin of the lazy-dimension reject (see ``search_block``)
LAZY_MARGIN = 1e-7


#: A block's scratch row (``uint64``) holds ``d + SCRATCH_EXTRA`` slots of ``batch``
#: entries: ``d + 2`` private uniforms, interval positions, bin ids, local indices and the
#: two shared uniforms of the first pair of dimensions the lazy reject visits.
SCRATCH_EXTRA = 7


def build(jit, mul, frexp, batch=1, inline_jit=None, prefetch=None):
    """Compile the hot loop's functions with ``jit``.

    ``mul(a, b)``: the float product (see the module docstring); ``frexp(x)``: ``(m, e)``
    with ``x = m 2^e``, ``m`` in [1/2, 1). ``batch``: arrivals whose sender-private uniforms
    :func:`search_block` draws together (they depend on the arrival number only, so a
    compiler can vectorize that loop; 1 on the GPU, where a thread's scratch is precious).
    ``inline_jit``: the decorator of the small functions that loop calls (default ``jit``;
    the CPU build inlines them so the loop vectorizes). ``prefetch(a, i)``: a hint that
    ``a[i]`` is read and written soon (the CPU build's ``llvm.prefetch``; default: none). A
    hint only: it changes no result. Returns a namespace of the compiled functions.
    """
    ijit = jit if inline_jit is None else inline_jit
    L = int(batch)

    if prefetch is None:

        @ijit
        def prefetch(a, i):
            """No prefetch hint."""
            return

    # ----------------------------------------------------------------- Philox, uniforms
    @ijit
    def philox(c0, c1, c2, c3, k0, k1):
        """Philox4x32-10 (Random123); all arguments and results ``uint64`` below 2^32."""
        for r in range(10):
            if r > 0:
                k0 = (k0 + PHILOX_W0) & MASK32
                k1 = (k1 + PHILOX_W1) & MASK32
            p0 = c0 * PHILOX_M0
            p1 = c2 * PHILOX_M1
            n0 = (p1 >> U32) ^ c1 ^ k0
            n2 = (p0 >> U32) ^ c3 ^ k1
            c1 = p1 & MASK32
            c3 = p0 & MASK32
            c0 = n0
            c2 = n2
        return c0, c1, c2, c3

    @ijit
    def bits53(w0, w1):
        """The top 53 bits of the 64-bit word ``w1 w0``."""
        return ((w1 << U32) | w0) >> U11

    @ijit
    def uniform_of(m):
        """Float64 in (0, 1) from 53 random bits: ``m 2^-53``; 0 maps to 2^-54."""
        if m == U0:
            return TWO_M54
        return mul(np.float64(m), TWO_M53)

    @ijit
    def uniform53(w0, w1):
        """Float64 in (0, 1) from two words: top 53 bits times 2^-53; 0 maps to 2^-54."""
        return uniform_of(bits53(w0, w1))

    # ----------------------------------------------------------------- portable log
    @jit
    def log_core(f, e):
        """``e ln 2 + ln(1 + f)`` for ``1 + f`` in [sqrt(1/2), sqrt(2)) (fdlibm's
        ``__ieee754_log`` without its shortcuts; error below 1 ulp)."""
        s = f / (2.0 + f)
        z = mul(s, s)
        w = mul(z, z)
        t1 = mul(w, LG2 + mul(w, LG4 + mul(w, LG6)))
        t2 = mul(z, LG1 + mul(w, LG3 + mul(w, LG5 + mul(w, LG7))))
        r = t2 + t1
        hfsq = mul(mul(0.5, f), f)
        return mul(e, LN2_HI) - ((hfsq - (mul(s, hfsq + r) + mul(e, LN2_LO))) - f)

    @jit
    def plog(x):
        """Natural log of a positive normal float64, portable (see :func:`log_core`)."""
        m, e = frexp(x)
        if m < SQRT_HALF:
            m = m + m
            e = e - 1
        return log_core(m - 1.0, np.float64(e))

    # ----------------------------------------------------------------- portable ndtri
    @jit
    def horner(r, c7, c6, c5, c4, c3, c2, c1, c0):
        """``(((c7 r + c6) r + c5) ... ) r + c0``, every product separately rounded."""
        v = mul(c7, r) + c6
        v = mul(v, r) + c5
        v = mul(v, r) + c4
        v = mul(v, r) + c3
        v = mul(v, r) + c2
        v = mul(v, r) + c1
        return mul(v, r) + c0

    @jit
    def ndtri_central(q):
        """AS241 for ``|q| <= 0.425``, ``q = p - 1/2``."""
        r = 0.180625 - mul(q, q)
        num = horner(r, A7, A6, A5, A4, A3, A2, A1, A0)
        den = horner(r, B7, B6, B5, B4, B3, B2, B1, 1.0)
        return mul(q, num) / den

    @jit
    def ndtri_tail_near(r):
        """AS241 for ``r = sqrt(-ln p_tail) <= 5``; the result is ``|Phi^{-1}|``."""
        r = r - 1.6
        num = horner(r, C7, C6, C5, C4, C3, C2, C1, C0)
        den = horner(r, D7, D6, D5, D4, D3, D2, D1, 1.0)
        return num / den

    @jit
    def ndtri_tail_far(r):
        """AS241 for ``r > 5``."""
        r = r - 5.0
        num = horner(r, E7, E6, E5, E4, E3, E2, E1, E0)
        den = horner(r, F7, F6, F5, F4, F3, F2, F1, 1.0)
        return num / den

    @jit
    def ndtri(p):
        """``Phi^{-1}(p)`` for ``p`` in (0, 1), portable (AS241 with :func:`plog`)."""
        q = p - 0.5
        if abs(q) <= 0.425:
            return ndtri_central(q)
        t = p if q < 0.0 else 1.0 - p
        r = math.sqrt(-plog(t))
        v = ndtri_tail_near(r) if r <= 5.0 else ndtri_tail_far(r)
        return -v if q < 0.0 else v

    @jit
    def sample_in_interval(k, u, inv_J):
        """``Phi^{-1}((k + u) / J)``; the upper half through the complement."""
        kf = np.float64(k)
        J = 1.0 / inv_J
        if mul(2.0, kf + u) > J:
            return -ndtri(mul((J - kf) - u, inv_J))
        return ndtri(mul(kf + u, inv_J))

    # ----------------------------------------------------------------- ratio, times
    @jit
    def log_ratio(y, m, s, log_s):
        """``ln q/p`` at ``y`` for target ``N(m, s^2)`` against ``N(0, 1)``."""
        z = (y - m) / s
        return mul(mul(0.5, y - z), y + z) - log_s

    @ijit
    def dim_term(i, dd, kk, u, tab):
        """Dimension ``dd``'s term of block ``i``'s ``ln r'`` for a candidate in interval
        ordinal ``kk`` with shared uniform ``u``: ``ln q/p`` at the sample minus the interval's
        ``log_corr``. ``tab``: the problem's ``(m, s, log_s, ext, inv_J, toff, leaf_k,
        leaf_inv, offs, log_corr)``."""
        m, s, log_s, ext, inv_J, toff, leaf_k, leaf_inv, offs, log_corr = tab
        e = ext[i, dd]
        tl = toff[i, dd] + (kk >> e)  # its tree leaf, then the interval at its level
        ki = (leaf_k[tl] << e) | (kk & ((np.int64(1) << e) - 1))
        y = sample_in_interval(ki, u, mul(leaf_inv[tl], inv_J[i, dd]))
        return log_ratio(y, m[i, dd], s[i, dd], log_s[i, dd]) - log_corr[offs[i, dd] + kk]

    @jit
    def time_increment(e):
        """Fixed-point arrival increment ``max(1, round_half_even(e 2^32))`` (``e >= 0``)."""
        x = mul(e, TWO_P32)
        if x < TWO_P52:
            x = (x + TWO_P52) - TWO_P52
        v = np.uint64(x)
        if v < U1:
            v = U1
        return v

    # ----------------------------------------------------------------- local indices, keys
    @jit
    def hash_slot(j, mult, cap):
        """Start slot of bin ``j`` in a table of ``cap`` (a power of two) entries."""
        ju = np.uint64(j)
        x = (ju & MASK32) ^ (((ju >> U32) * HASH_MIX) & MASK32)
        p = x * mult
        return np.int64(((p >> U32) ^ p) & np.uint64(cap - 1))

    @jit
    def hash_bump(table, base, cap, j, slot):
        """Count one more arrival in bin ``j`` (open addressing, linear probing from its start
        slot ``slot = hash_slot(j, mult, cap)``, which the caller has already computed to
        prefetch it); returns the bin's new count (its local index) and whether ``j`` is
        new. Slot ``t`` is the pair ``table[base + 2t]`` (the bin id, ``-1`` = empty) and
        ``table[base + 2t + 1]`` (its count): one cache line per probe, where separate key
        and count arrays took two misses on the large tables of exact blocks (15% of the
        search's time on the MNIST 48-bit blocks)."""
        for _ in range(cap):
            a = base + 2 * slot
            key = table[a]
            if key == j:
                table[a + 1] += 1
                return table[a + 1], False
            if key < 0:
                table[a] = j
                table[a + 1] = 1
                return 1, True
            slot = (slot + 1) & (cap - 1)
        return -1, False  # unreachable: the caller keeps the load at most 1/2

    # ----------------------------------------------------------------- one block
    @jit
    def search_block(i, prob, htab, hbase, hcap, hmult, ub, fs, urow, out_i, out_f):
        """Block ``i``'s whole sequential search (search.py's rules, arrival by arrival).

        ``prob``: the problem's arrays and flags, a tuple in :data:`PROBLEM_FIELDS` order.
        Writes ``out_i[i] = (bin, local, arrival, steps)`` and ``out_f[i] = ln tau*``; returns
        a status (``ST_*``). ``htab[hbase : hbase + 2 hcap]`` is the block's local-index
        table (``hcap`` slots of a bin id and its count, see :func:`hash_bump`);
        ``ub[urow]`` its ``uint64`` scratch row of ``batch * (d + SCRATCH_EXTRA)`` entries
        (see :data:`SCRATCH_EXTRA`), ``fs[urow]`` its ``float64`` scratch row of ``d + 2
        batch`` entries (a candidate's terms, then the batch's ``ln T``, then the batch's
        terms of the first dimension the lazy reject visits).

        **Batches of arrivals.** Everything that does not depend on the search's state is
        computed ``batch`` arrivals at a time, in loops without dependencies between
        arrivals (the CPU build can vectorize and overlap them): the sender-private
        uniforms (arrival ``k``'s uniform ``ui``, 0: its spacing, ``1 + dd``: the interval
        of dimension ``dd``, is half of ``Philox((k, ui >> 1, 0, 0), private key)``), the
        arrival times and their logs, the intervals the uniforms select, the bin ids (each
        one's local-index table slot prefetched, so that the batch's cache misses overlap:
        12% of the search's time on the MNIST 48-bit blocks), then, in arrival order, the
        local indices, the shared uniforms of the first pair of dimensions the lazy reject
        visits (one Philox call) and the term of the first of them. Scores, the argmin and
        the stop test then run arrival by arrival. Arrivals of the last batch past the stop
        are drawn and never used: they count in the local-index table only after the stop,
        where nothing reads it (a table they overflow is rerun larger, with the same
        result), so winners and step counts are those of one arrival at a time.

        Lazy dimensions (``lazy``): candidate ``k`` can only win if
        ``ln T_k - ln r'(X_k) < best``. Each dimension's term is at most a bound, so after
        dimension ``dd`` the final ``ln r'`` is at most ``acc`` plus the later dimensions'
        bounds; a candidate below ``ln T_k - best`` by a relative margin far above the
        rounding of these sums is dropped unseen. Its local index is already counted and the
        stop test does not depend on it, so winners and step counts are unchanged. Exact
        mode bounds a dimension by its ``ln r'_max,d`` (``rest_max[i, pos]``: the sum of the
        ones visited later); fixed-budget mode by the bound of the interval the candidate drew
        (``log_bound``, a running remainder of their sum), since ``Q``-mass weights make it
        differ from interval to interval (``+inf``, never a drop, where unbounded).
        Dimensions are visited in the block's ``order`` (pairs that share a Philox call
        together, the largest bounds first: a dimension far from its bound rejects early);
        a candidate that survives them all is scored by the sum of its terms in dimension
        order, the reference's rounding.
        """
        m, s, log_s, depth, mult, ext, inv_J, toff, leaf_k, leaf_inv = prob[:10]
        offs, dthr, log_corr, log_bound = prob[10:14]
        order, rest_max, log_rmax, keys, budget, exact, lazy = prob[14:]
        tab = (m, s, log_s, ext, inv_J, toff, leaf_k, leaf_inv, offs, log_corr)  # dim_term's
        d = m.shape[1]
        ks0 = keys[i, 0]
        ks1 = keys[i, 1]
        kp0 = keys[i, 2]
        kp1 = keys[i, 3]
        nb = budget[i]
        nbf = np.float64(nb)
        # scratch slots (each ``L`` wide): private uniforms 0 .. d + 1, then
        sp = (d + 2) * L  # interval search positions
        sj = sp + L  # bin ids
        sn = sj + L  # local indices
        su = sn + L  # shared uniforms of the pair of dimensions visited first (two slots)
        has_bins = False
        for dd in range(d):
            if depth[i, dd] > 0:
                has_bins = True
        if has_bins:
            for t in range(hcap):
                htab[hbase + 2 * t] = -1
        distinct = 0
        lrmax = log_rmax[i]
        T = U0
        best = np.inf
        best_bin = 0
        best_local = 0
        best_k = 0
        status = ST_CAPPED if exact else ST_DONE
        steps = nb
        w0 = U0
        w1 = U0
        w2 = U0
        w3 = U0
        p0 = np.uint64(order[i, 0] >> 1)  # the pair of dimensions visited first
        for k in range(1, nb + 1):
            lb = (k - 1) % L
            if lb == 0:  # arrivals k .. k + L - 1: everything that needs no search state
                for p in range((d >> 1) + 1):  # private uniforms
                    need = p == 0 or depth[i, 2 * p - 1] > 0 or (2 * p < d and depth[i, 2 * p] > 0)
                    if need:
                        pu = np.uint64(p)
                        o0 = 2 * p * L
                        o1 = o0 + L
                        for ll in range(L):  # integer work only: vectorizes on the CPU
                            ku = np.uint64(k + ll)
                            w0, w1, w2, w3 = philox(ku & MASK32, ku >> U32, pu, U0, kp0, kp1)
                            ub[urow, o0 + ll] = bits53(w0, w1)
                            ub[urow, o1 + ll] = bits53(w2, w3)
                for ll in range(L):  # arrival time increments (vectorizes on the CPU)
                    e = -plog(uniform_of(ub[urow, ll]))
                    if not exact:  # ORC arrival times: E_k N / (N - k + 1)
                        kl = np.float64(min(k + ll, nb))  # (arrivals past N: never used)
                        e = mul(e, nbf / ((nbf - kl) + 1.0))
                    ub[urow, ll] = time_increment(e)
                for ll in range(L):  # arrival times: a running sum, in arrival order
                    T = T + ub[urow, ll]
                    ub[urow, ll] = T
                for ll in range(L):  # their logs (vectorizes on the CPU)
                    fs[urow, d + ll] = plog(np.float64(ub[urow, ll])) - LN_TIME_SCALE
                # intervals: partition.sample_bins' lower-bound search, on the uniforms' 53-bit
                # integers (``dthr[x] <= m`` exactly when ``cdf[x] < uniform_of(m)``)
                for dd in range(d):
                    b = depth[i, dd]
                    o = (dd + 1) * L
                    if b > 0:
                        off = np.uint64(offs[i, dd])
                        for ll in range(L):
                            ub[urow, sp + ll] = off
                        for t in range(b, 0, -1):
                            h = np.uint64(1 << (t - 1))
                            for ll in range(L):  # a select per arrival, no branch
                                pos = ub[urow, sp + ll]
                                cand = pos + h
                                lt = dthr[np.int64(cand) - 1] <= ub[urow, o + ll]
                                ub[urow, sp + ll] = cand if lt else pos
                        for ll in range(L):  # the interval's ordinal replaces its uniform
                            ub[urow, o + ll] = ub[urow, sp + ll] - off
                    else:
                        for ll in range(L):
                            ub[urow, o + ll] = U0
                if has_bins:
                    for ll in range(L):  # bin ids (mixed radix), their table slots fetched
                        j = 0
                        for dd in range(d):
                            j = j + np.int64(ub[urow, (dd + 1) * L + ll]) * mult[i, dd]
                        slot = hash_slot(j, hmult, hcap)
                        ub[urow, sj + ll] = np.uint64(j)
                        ub[urow, sn + ll] = np.uint64(slot)  # (its local index, below)
                        prefetch(htab, hbase + 2 * slot)
                    for ll in range(L):  # local indices, in arrival order
                        j = np.int64(ub[urow, sj + ll])
                        slot = np.int64(ub[urow, sn + ll])
                        local, new = hash_bump(htab, hbase, hcap, j, slot)
                        if new:
                            distinct += 1
                            if 2 * distinct > hcap:
                                return ST_OVERFLOW
                        ub[urow, sn + ll] = np.uint64(local)
                else:  # one bin: local index = arrival
                    for ll in range(L):
                        ub[urow, sj + ll] = U0
                        ub[urow, sn + ll] = np.uint64(k + ll)
                for ll in range(L):  # shared uniforms of the first pair
                    ju = ub[urow, sj + ll]
                    nu = ub[urow, sn + ll]
                    w0, w1, w2, w3 = philox(
                        nu & MASK32,
                        ((nu >> U32) & MASK16) | (p0 << U16),
                        ju & MASK32,
                        ju >> U32,
                        ks0,
                        ks1,
                    )
                    ub[urow, su + ll] = bits53(w0, w1)
                    ub[urow, su + L + ll] = bits53(w2, w3)
                d0 = order[i, 0]  # the term of the first dimension visited
                for ll in range(L):
                    u = uniform_of(ub[urow, su + (d0 & 1) * L + ll])
                    kk = np.int64(ub[urow, (d0 + 1) * L + ll])
                    fs[urow, d + L + ll] = dim_term(i, d0, kk, u, tab)
            logT = fs[urow, d + lb]
            j = np.int64(ub[urow, sj + lb])
            local = np.int64(ub[urow, sn + lb])
            rem = 0.0
            if lazy and not exact:
                for dd in range(d):
                    rem = rem + log_bound[offs[i, dd] + np.int64(ub[urow, (dd + 1) * L + lb])]
            # the shared candidate, dimension by dimension
            ju = np.uint64(j)
            jl = ju & MASK32
            jh = ju >> U32
            nu = np.uint64(local)
            nl = nu & MASK32
            nh = (nu >> U32) & MASK16
            thr = logT - best
            acc = 0.0
            alive = True
            pc = p0  # the pair whose Philox words w0 .. w3 hold
            for pos in range(d):
                dd = order[i, pos]
                kk = np.int64(ub[urow, (dd + 1) * L + lb])  # the interval's ordinal
                ix = offs[i, dd] + kk
                if pos == 0:  # computed with the batch
                    t = fs[urow, d + L + lb]
                else:
                    pp = np.uint64(dd >> 1)
                    if pp == p0:
                        u = uniform_of(ub[urow, su + (dd & 1) * L + lb])
                    else:
                        if pp != pc:
                            w0, w1, w2, w3 = philox(nl, nh | (pp << U16), jl, jh, ks0, ks1)
                            pc = pp
                        u = uniform53(w0, w1) if (dd & 1) == 0 else uniform53(w2, w3)
                    t = dim_term(i, dd, kk, u, tab)
                fs[urow, dd] = t
                acc = t if pos == 0 else acc + t
                if lazy and pos + 1 < d:
                    if exact:
                        rest = rest_max[i, pos]
                    else:
                        rem = rem - log_bound[ix]
                        rest = rem
                    top = acc + rest
                    slack = mul(LAZY_MARGIN, 1.0 + abs(acc) + abs(rest) + abs(thr))
                    if top < thr - slack:
                        alive = False
                        break
            if alive:  # the score: its terms summed in dimension order
                acc = fs[urow, 0]
                for dd in range(1, d):
                    acc = acc + fs[urow, dd]
            if alive:
                lr = acc
                if exact and lr > lrmax:
                    lr = lrmax
                tau = logT - lr
                if tau < best:
                    best = tau
                    best_bin = j
                    best_local = local
                    best_k = k
            if exact and logT - lrmax >= best:
                status = ST_DONE
                steps = k
                break
        out_i[i, 0] = best_bin
        out_i[i, 1] = best_local
        out_i[i, 2] = best_k
        out_i[i, 3] = steps
        out_f[i] = best
        return status

    @jit
    def derive_key(s_lo, s_hi, sid, domain, version):
        """A block's Philox key from the run seed and its stream id (docs/FORMAT.md sec. 2):
        the first two words of Philox(counter = (seed, stream id), key = (domain, version))."""
        su = np.uint64(sid)
        o0, o1, o2, o3 = philox(s_lo, s_hi, su & MASK32, su >> U32, domain, version)
        return o0, o1

    @jit
    def regenerate_block(i, bins, local, radix, ext, toff, leaf_k, leaf_inv, keys, pm, ps, out):
        """Decoder: ``out[i, d] = pm + ps * G(key, j, n)_d`` for block ``i``.

        ``radix``, ``ext``, ``toff`` (the partitions: see :class:`recray.rec.partition.
        BinTables`) and ``pm``/``ps`` hold one row per block, or a single row that every
        block shares (a broadcast the caller did not have to materialize). The bin id is
        read in mixed radix, dimension 0 lowest (for complete partitions: bit fields)."""
        d = radix.shape[1]
        ii = np.int64(i)
        ib = min(ii, np.int64(radix.shape[0] - 1))
        ip = min(ii, np.int64(pm.shape[0] - 1))
        iq = min(ii, np.int64(ps.shape[0] - 1))
        ju = np.uint64(bins[i])
        jl = ju & MASK32
        jh = ju >> U32
        nu = np.uint64(local[i])
        nl = nu & MASK32
        nh = (nu >> U32) & MASK16
        ks0 = keys[i, 0]
        ks1 = keys[i, 1]
        w2 = U0
        w3 = U0
        rem = bins[i]
        for dd in range(d):
            if (dd & 1) == 0:
                pp = np.uint64(dd >> 1)
                w0, w1, w2, w3 = philox(nl, nh | (pp << U16), jl, jh, ks0, ks1)
                u = uniform53(w0, w1)
            else:
                u = uniform53(w2, w3)
            r = radix[ib, dd]
            kk = rem % r
            rem = rem // r
            e = ext[ib, dd]
            tl = toff[ib, dd] + (kk >> e)
            ki = (leaf_k[tl] << e) | (kk & ((np.int64(1) << e) - 1))
            inv = mul(leaf_inv[tl], 1.0 / np.float64(np.int64(1) << e))
            y = sample_in_interval(ki, u, inv)
            out[i, dd] = pm[ip, dd] + mul(ps[iq, dd], y)

    return SimpleNamespace(
        philox=philox,
        horner=horner,
        uniform53=uniform53,
        bits53=bits53,
        uniform_of=uniform_of,
        log_core=log_core,
        plog=plog,
        ndtri_central=ndtri_central,
        ndtri_tail_near=ndtri_tail_near,
        ndtri_tail_far=ndtri_tail_far,
        ndtri=ndtri,
        sample_in_interval=sample_in_interval,
        log_ratio=log_ratio,
        dim_term=dim_term,
        time_increment=time_increment,
        hash_slot=hash_slot,
        hash_bump=hash_bump,
        search_block=search_block,
        derive_key=derive_key,
        regenerate_block=regenerate_block,
    )
