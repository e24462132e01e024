"""Per-batch codec steps: pure functions of a batch of items.

:func:`encode_items` turns the posteriors of ``n`` items into one message per item, and
:func:`decode_latents` turns messages back into latents. They read and write no files and
know nothing of Ray, so any driver (one process, a Ray actor) can call them on any batch:
an item's message depends only on its own posterior, its id, the plan and the seed.

**Blocks.** The plan splits the ``D`` latent dimensions into blocks. Blocks of equal size
are coded together: for ``n`` items and ``g`` blocks of size ``s`` one ``rec.encode`` call
codes ``n * g`` rows of ``s`` dimensions (a loop over block sizes, never over items).

**Stream ids.** Block ``k`` of an item is coded under stream id
``Philox(counter = (lo key, hi key, k, 0), key = ("RSTR", 1))`` words 0 | 1 << 32, where the
item key is the int64 id itself or, for string ids, the first 8 bytes (little endian) of
BLAKE2b-64 of its UTF-8 bytes.

**Routes.** Every block of an exact method is routed before any search
(:func:`route_group`):

1. *exact under the plan*: bounded ratio and ``D_inf[Q||P']`` at most the adaptive threshold
   (``adapt_above_bits``, and ``max_steps`` less :data:`recray.rec.api.FEASIBLE_MARGIN_BITS`);
2. *exact with an adaptive partition* (``sp-pfr`` with ``adapt_above_bits`` set): the block
   gets extra partition bits (:func:`recray.plan.adaptive.adapt_bits`), sent in its message
   as side information; the sample stays exact;
3. *fallback*: still unbounded or too expensive: with ``on_unbounded="orc"`` coded by the
   fixed-budget twin (``sp-pfr`` -> ``sp-orc``, ``pfr`` -> ``orc``, ``n_samples`` candidates,
   plan bits) - its index has the same form, so decoding needs no flag; the item's
   ``fallback_blocks`` says how many (a search that hits ``max_steps`` at run time, which the
   margin makes rare, also falls back, its steps counted). With ``"error"`` such a block is
   a bad item (:class:`BlockProblem`).

The routing computes every exact block's stopping bound and bin tables; the encoder hands
them to the search (``rec.encode(bounds=...)``), so the search does not build them again
(unless they exceed one internal batch of :data:`recray.rec.api.TABLE_BUDGET` entries).

**Budgets.** The fixed-budget methods (``orc``, ``sp-orc``, and the fallback twin) search
``N`` candidates per block: ``n_samples`` for every block (``n_samples_rule="fixed"``), or
with ``n_samples_rule="kl"`` a per-block ``N_b = 2^e_b`` from the block's information,
``e_b = clip(ceil(I_b + kl_offset_bits), 0, kl_max_bits)``
(:func:`recray.plan.kl_sample_bits`), which the decoder derives from the plan as well.
``orc`` writes block ``b``'s index in ``e_b`` raw bits (message codec version 4).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from recray import rec
from recray.backend import get_backend
from recray.errors import (
    InputError,
    OutOfReachError,
    RecrayError,
    SearchBudgetError,
    UnboundedRatioError,
    fmt_item,
)
from recray.format.messages import (
    MESSAGE_CODEC_VERSION,
    IndexLayout,
    decode_blocks,
    encode_messages,
)
from recray.plan import KL_SAMPLES_MAX_BITS, CodecPlan, kl_sample_bits
from recray.plan.adaptive import adapt_bits, dim_dinf_bits
from recray.plan.laws import fixed_laws
from recray.rec.api import FEASIBLE_MARGIN_BITS
from recray.rec.codes import CLASS_MODEL_PROBS
from recray.rec.philox import RNG_VERSION, philox4x32, split64
from recray.rec.trees import TRIVIAL, Trees, geometry

STREAM_DOMAIN = 0x52535452  # "RSTR"
ON_UNBOUNDED = ("error", "orc")
#: How the fixed-budget methods' ``N`` is chosen: one ``n_samples`` for every block, or per
#: block from its information (see the module docstring, **Budgets**).
N_SAMPLES_RULES = ("fixed", "kl")
FALLBACK = {"sp-pfr": "sp-orc", "pfr": "orc"}


def parse_n_samples(value) -> tuple[int, str]:
    """``(n_samples, n_samples_rule)`` of a budget given as an int ``N >= 1`` (one for every
    block) or the string ``"kl"`` (per block from its information; ``n_samples`` is then
    the unused default)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "kl":
            return 1 << 16, "kl"
        try:
            value = int(v)
        except ValueError:
            raise InputError(
                f"n_samples must be an integer N >= 1 or 'kl' (per-block N from each block's "
                f"information); got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"n_samples must be an integer N >= 1 or 'kl'; got {value!r}")
    return int(value), "fixed"


def item_keys(ids) -> np.ndarray:
    """64-bit item keys, ``uint64 (n,)``: int ids as they are, strings hashed."""
    if isinstance(ids, np.ndarray) and np.issubdtype(ids.dtype, np.integer):
        return ids.astype(np.int64).view(np.uint64)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=8).digest(), "little")
            for s in ids
        ),
        dtype=np.uint64,
        count=len(ids),
    )


def block_stream_ids(keys: np.ndarray, n_blocks: int) -> np.ndarray:
    """Stream id of every (item, block): int64 ``(n, n_blocks)``."""
    lo, hi = split64(keys)
    blk = np.arange(n_blocks, dtype=np.uint64)[None, :]
    w0, w1, _, _ = philox4x32(lo[:, None], hi[:, None], blk, 0, STREAM_DOMAIN, 1)
    return ((w1 << np.uint64(32)) | w0).view(np.int64)


@dataclass(frozen=True)
class BlockGroup:
    """Plan blocks of one size: ``blocks`` (g,) plan block indices, ``dims`` (g, s) latent
    dimensions, ``bits`` (g, s) partition bits used by the method, ``trees`` (g, s) the
    dimensions' trees (indices into :attr:`CodecSpec.tree_table`; all 0 for complete
    partitions)."""

    size: int
    blocks: np.ndarray
    dims: np.ndarray
    bits: np.ndarray
    trees: np.ndarray


@dataclass(frozen=True)
class CodecSpec:
    """Everything both sides share about a run (it is the run header's content)."""

    plan: CodecPlan
    method: str
    seed: int
    prior_mu: np.ndarray
    prior_sigma: np.ndarray
    n_samples: int = 1 << 16
    max_steps: int = rec.DEFAULT_MAX_STEPS
    on_unbounded: str = "error"
    adapt_above_bits: float | None = None
    feasible_margin_bits: float = FEASIBLE_MARGIN_BITS
    backend: str | None = field(default=None, compare=False)
    #: the RNG recipe of the run's samples: the current one for new runs; a run header's
    #: for decoding (version 1 runs still decode, docs/FORMAT.md section 4)
    rng_version: int = RNG_VERSION
    #: "fixed": ``n_samples`` per block; "kl": ``N_b`` from each block's information
    n_samples_rule: str = "fixed"
    kl_offset_bits: float = 0.0
    kl_max_bits: int = KL_SAMPLES_MAX_BITS
    #: the message codec of the run: the current one for new runs, a run header's to decode
    message_codec_version: int = MESSAGE_CODEC_VERSION

    def __post_init__(self):
        if self.n_samples_rule not in N_SAMPLES_RULES:
            raise InputError(
                f"n_samples_rule must be one of {N_SAMPLES_RULES}; got {self.n_samples_rule!r}"
            )
        if self.method not in rec.METHODS:
            raise InputError(f"method must be one of {rec.METHODS}; got {self.method!r}")
        if self.on_unbounded not in ON_UNBOUNDED:
            raise InputError(
                f"on_unbounded must be one of {ON_UNBOUNDED}; got {self.on_unbounded!r}"
            )
        if self.prior_mu.shape != (self.plan.dim,) or self.prior_sigma.shape != (self.plan.dim,):
            raise InputError(
                f"prior length {self.prior_mu.shape[0]} does not match the plan's "
                f"D = {self.plan.dim}"
            )
        laws = self.plan.index_laws
        if laws is not None and laws.method != self.method:
            raise InputError(
                f"the plan's index laws were fitted for method {laws.method!r} but the run "
                f"codes with {self.method!r}: fit laws for {self.method!r} (recray fit) or code "
                "without them (--laws fixed)"
            )
        if (
            self.partitioned
            and self.plan.partition != "complete"
            and self.message_codec_version < 5
        ):
            raise InputError(
                "tree partitions need message codec version 5; the run header says "
                f"{self.message_codec_version}"
            )

    @property
    def adaptive(self) -> bool:
        """Whether blocks may get adaptive partitions (``sp-pfr`` with a threshold)."""
        return self.adapt_above_bits is not None and self.method == "sp-pfr"

    @property
    def partitioned(self) -> bool:
        return self.method.startswith("sp-")

    @property
    def bin_bits(self) -> tuple[int, ...]:
        """``B`` per plan block as coded (0 for pfr/orc, which ignore the partition)."""
        return tuple(self.plan.block_budget_bits) if self.partitioned else (0,) * self.plan.n_blocks

    @property
    def class_models(self) -> tuple[int, ...]:
        """Class law of each block's local index: 1 (near-prior) for blocks of collapsed
        dimensions only, whose winner is nearly always the first candidate; 0 otherwise."""
        mi = np.asarray(self.plan.mi_bits)
        thr = self.plan.collapse_threshold
        return tuple(int(bool(np.all(mi[list(b)] < thr))) for b in self.plan.blocks)

    @property
    def block_n_samples(self) -> tuple[int, ...]:
        """The fixed budget ``N_b`` of every plan block (``orc``, ``sp-orc`` and the
        fallback twin of the exact methods): ``n_samples`` each, or by the "kl" rule."""
        if self.n_samples_rule == "kl":
            return tuple(
                1 << e for e in kl_sample_bits(self.plan, self.kl_offset_bits, self.kl_max_bits)
            )
        return (int(self.n_samples),) * self.plan.n_blocks

    def row_n_samples(self, group: BlockGroup, rows: np.ndarray) -> np.ndarray:
        """``N`` of rows of ``group``'s ``n * g`` item-major rows, int64 ``(len(rows),)``."""
        per_block = np.asarray(self.block_n_samples, dtype=np.int64)
        return per_block[group.blocks[np.asarray(rows) % group.blocks.shape[0]]]

    @cached_property
    def tree_table(self) -> tuple:
        """The trivial tree, then every distinct tree of the plan in dimension order."""
        table = [TRIVIAL]
        for t in self.plan.trees or ():
            if t not in table:
                table.append(t)
        return tuple(table)

    @cached_property
    def dim_trees(self) -> np.ndarray:
        """The tree of every latent dimension, int64 ``(D,)`` (indices of :attr:`tree_table`)."""
        if self.plan.trees is None or not self.partitioned:
            return np.zeros(self.plan.dim, dtype=np.int64)
        pos = {t: i for i, t in enumerate(self.tree_table)}
        return np.asarray([pos[t] for t in self.plan.trees], dtype=np.int64)

    def row_trees(self, group: BlockGroup, n: int, rows=None) -> Trees | None:
        """The trees of ``group``'s ``n * g`` item-major rows (or of ``rows`` of them), for
        ``rec.encode(trees=...)``; None for complete partitions."""
        if len(self.tree_table) == 1:
            return None
        g, s = group.trees.shape
        ids = np.broadcast_to(group.trees, (n, g, s)).reshape(n * g, s)
        return Trees(self.tree_table, ids if rows is None else ids[rows])

    @property
    def ordinal(self) -> bool:
        """Whether messages code bins as per-dimension intervals under laws (message codec
        version 5): tree partitions, or learned laws in a run of version 5."""
        if self.message_codec_version < 5 or self.code_is_raw:
            return False
        return len(self.tree_table) > 1 or self.plan.index_laws is not None

    @property
    def code_is_raw(self) -> bool:
        return self.method == "orc"

    def _ordinal_layout(self) -> IndexLayout:
        plan = self.plan
        radix = plan.block_radix if self.partitioned else tuple((1,) * len(b) for b in plan.blocks)
        laws = plan.index_laws
        if laws is None:
            trees = plan.trees or (TRIVIAL,) * plan.dim
            bits = plan.bits if self.partitioned else (0,) * plan.dim
            parts = [[(trees[d], bits[d]) for d in b] for b in plan.blocks]
            if not self.partitioned:
                parts = [[(TRIVIAL, 0) for _ in b] for b in plan.blocks]
            laws = fixed_laws(parts, CLASS_MODEL_PROBS[list(self.class_models)], method=self.method)
        return IndexLayout(
            bin_bits=tuple(sum((r - 1).bit_length() for r in b) for b in radix),
            code="universal",
            class_models=self.class_models,
            adaptive_dims=tuple(len(b) for b in plan.blocks) if self.adaptive else (),
            laws=laws.blocks,
            bin_radix=radix,
            extra_freqs=laws.extra_freqs if self.adaptive else (),
        )

    @cached_property
    def layout(self) -> IndexLayout:
        """The messages' layout (built once per spec: 1.5 ms with learned laws)."""
        if self.ordinal:
            return self._ordinal_layout()
        if self.method == "orc":
            if self.n_samples_rule == "kl":  # message codec version 4: a width per block
                widths = tuple(int(n - 1).bit_length() for n in self.block_n_samples)
                return IndexLayout(bin_bits=self.bin_bits, code="raw", block_raw_bits=widths)
            raw = int(math.ceil(math.log2(self.n_samples))) if self.n_samples > 1 else 0
            return IndexLayout(bin_bits=self.bin_bits, code="raw", raw_bits=raw)
        laws = self.plan.index_laws
        return IndexLayout(
            bin_bits=self.bin_bits,
            code="universal",
            class_models=self.class_models,
            adaptive_dims=tuple(len(b) for b in self.plan.blocks) if self.adaptive else (),
            laws=laws.blocks if laws is not None else (),  # message codec 3
        )

    def groups(self) -> list[BlockGroup]:
        sizes = sorted({len(b) for b in self.plan.blocks})
        out = []
        for s in sizes:
            idx = [k for k, b in enumerate(self.plan.blocks) if len(b) == s]
            dims = np.asarray([self.plan.blocks[k] for k in idx], dtype=np.int64)
            bits = np.asarray(self.plan.bits, dtype=np.int64)[dims]
            if not self.partitioned:
                bits = np.zeros_like(bits)
            trees = self.dim_trees[dims]
            out.append(BlockGroup(s, np.asarray(idx, dtype=np.int64), dims, bits, trees))
        return out


@dataclass
class EncodedItems:
    """Per item: ``messages`` (list of bytes), ``kl_bits``, ``steps``, ``fallback_blocks``,
    ``adapted_blocks``; ``samples`` (n, D) float64: the latents the messages decode to."""

    messages: list
    kl_bits: np.ndarray
    steps: np.ndarray
    fallback_blocks: np.ndarray
    adapted_blocks: np.ndarray
    samples: np.ndarray


def block_rows(group: BlockGroup, mu, sigma, spec: CodecSpec):
    """The rows ``rec.encode`` codes for ``group``: ``(mu, sigma, prior_mu, prior_sigma,
    bits)``, each ``(n * g, s)``, item-major (row ``i * g + k`` is block ``k`` of item
    ``i``)."""
    n = mu.shape[0]
    g, s = group.dims.shape
    take = lambda a: a[:, group.dims].reshape(n * g, s)  # noqa: E731
    pm = np.broadcast_to(spec.prior_mu[group.dims], (n, g, s)).reshape(n * g, s)
    ps = np.broadcast_to(spec.prior_sigma[group.dims], (n, g, s)).reshape(n * g, s)
    bits = np.broadcast_to(group.bits, (n, g, s)).reshape(n * g, s)
    return take(mu), take(sigma), pm, ps, bits


def _located(exc: RecrayError, group: BlockGroup, ids, rows=None, hint=True) -> RecrayError:
    """The same error, located by item id, plan block and latent dimension (``hint``: say
    how ``--on-unbounded orc`` would code it)."""
    r = exc.block
    if r is None:
        return exc
    if rows is not None:
        r = int(rows[r])
    g = group.dims.shape[0]
    item, k = divmod(r, g)
    where = f"item {fmt_item(ids[item])}, plan block {int(group.blocks[k])}"
    if exc.dim is not None:
        where += f", latent dimension {int(group.dims[k, exc.dim])}"
    detail = str(exc)
    if detail.startswith("block "):  # drop the core's own locator (a row of this batch)
        detail = detail.split(": ", 1)[-1]
    if hint and isinstance(exc, UnboundedRatioError | SearchBudgetError | OutOfReachError):
        detail += (
            " (recray compress --on-unbounded orc codes such blocks with the "
            "fixed-budget method instead)"
        )
    dim = None if exc.dim is None else int(group.dims[k, exc.dim])
    return type(exc)(f"{where}: {detail}", block=item, dim=dim)


@dataclass(frozen=True)
class BlockProblem:
    """A block an exact method cannot code under ``on_unbounded="error"``: ``row`` (its row
    in the group's ``n * g`` rows), ``dim`` (the dimension of the block that costs the most),
    ``error`` (the exception class), ``detail`` (what is wrong and what to do)."""

    row: int
    dim: int
    error: type
    detail: str


@dataclass
class Routes:
    """How the ``n * g`` rows of a block group are coded (see the module docstring).

    exact     (k,) int64  rows for the exact method
    extra     (k, s) int64  their extra partition bits (adaptive partitions; mostly 0)
    fallback  (f,) int64  rows for the fixed-budget twin (``on_unbounded="orc"``)
    problems  list[BlockProblem]  rows that can be coded neither way
    bounds    :class:`recray.rec.ExactBounds` | None  the stopping bounds (and search tables)
              of the ``exact`` rows with their final bits, for ``rec.encode(bounds=...)``;
              only with ``route_group(keep_bounds=True)``
    """

    exact: np.ndarray
    extra: np.ndarray
    fallback: np.ndarray
    problems: list
    bounds: rec.ExactBounds | None = None


def route_group(
    m_r, s_r, pm, ps, bits, spec: CodecSpec, keep_bounds: bool = False, trees=None
) -> Routes:
    """Route the rows of one block group (:func:`block_rows`'s arrays, ``trees`` their
    :meth:`CodecSpec.row_trees`) before any search. A pure function of each row, so
    validation and encoding agree. ``keep_bounds``: keep the exact rows' bounds for the
    search (:attr:`Routes.bounds`), which then need not build them again."""
    nrows, s = m_r.shape
    allrows = np.arange(nrows, dtype=np.int64)
    zero = np.zeros((nrows, s), dtype=np.int64)
    if spec.method not in rec.EXACT_METHODS:
        return Routes(allrows, zero, allrows[:0], [])
    common = dict(
        prior_mu=pm, prior_sigma=ps, method=spec.method, backend=spec.backend, tables=keep_bounds
    )
    base = rec.exact_bounds(m_r, s_r, bits=bits, trees=trees, **common)
    ok = base.feasible(spec.max_steps, spec.feasible_margin_bits)
    dinf = base.dinf
    extra = zero
    adapted = None
    if spec.adaptive:
        limit = min(
            float(spec.adapt_above_bits),
            float(np.log2(spec.max_steps)) - spec.feasible_margin_bits,
        )
        over = np.flatnonzero(np.isfinite(dinf) & (dinf > limit))
        if over.size:
            be = get_backend(spec.backend)
            m_std = (m_r[over] - pm[over]) / ps[over]
            s_std = s_r[over] / ps[over]
            sub_trees = None if trees is None else trees.take(over)
            add = adapt_bits(be, m_std, s_std, bits[over], limit, sub_trees)
            extra = zero.copy()
            extra[over] = add
            sub = {k: (v[over] if k.startswith("prior") else v) for k, v in common.items()}
            adapted = (
                over,
                rec.exact_bounds(
                    m_r[over], s_r[over], bits=bits[over] + add, trees=sub_trees, **sub
                ),
            )
            ok = ok.copy()
            ok[over] = adapted[1].feasible(spec.max_steps, spec.feasible_margin_bits)
    exact = np.flatnonzero(ok)
    rest = np.flatnonzero(~ok)
    bounds = _exact_rows_bounds(base, adapted, exact) if keep_bounds else None
    if spec.on_unbounded == "orc":
        return Routes(exact, extra[exact], rest, [], bounds)
    return Routes(
        exact,
        extra[exact],
        rest[:0],
        _problems(rest, m_r, s_r, pm, ps, bits, extra, spec, trees),
        bounds,
    )


def _exact_rows_bounds(base, adapted, exact: np.ndarray):
    """The bounds of rows ``exact`` with their final bits: ``base``'s (plan bits, every
    row), but those of ``adapted = (over, bounds of rows over)`` for the rows in ``over``."""
    if adapted is None:
        return base.take(exact)
    over, ob = adapted
    n = base.dinf.shape[0]
    src = exact.copy()  # row of stack([base, ob]) each exact row comes from
    hit = np.isin(exact, over)
    src[hit] = n + np.searchsorted(over, exact[hit])
    return rec.ExactBounds.stack([base, ob]).take(src)


def _problems(rows, m_r, s_r, pm, ps, bits, extra, spec: CodecSpec, trees=None) -> list:
    out = []
    if rows.size == 0:
        return out
    be = get_backend(spec.backend)
    m = (m_r[rows] - pm[rows]) / ps[rows]
    s = s_r[rows] / ps[rows]
    bounded = (s < 1.0) | ((s == 1.0) & (m == 0.0))
    cap = math.log2(spec.max_steps) - spec.feasible_margin_bits
    for i, r in enumerate(rows.tolist()):
        if not bounded[i].all():
            d = int(np.argmax(~bounded[i]))
            why = "wider than the prior" if s[i, d] > 1.0 else "as wide as the prior but shifted"
            out.append(
                BlockProblem(
                    r,
                    d,
                    UnboundedRatioError,
                    f"unbounded density ratio (posterior {why}: sigma/prior_sigma = "
                    f"{s[i, d]:.4g}, (mu - prior_mu)/prior_sigma = {m[i, d]:.4g}); "
                    f"{spec.method} would never stop",
                )
            )
            continue
        b = bits[r] + extra[r]
        row_trees = None if trees is None else trees.take([r])
        geo = geometry(row_trees, b[None, :])
        far = rec.api.outside_bits(m[i : i + 1], s[i : i + 1], geo)[0]
        if far > rec.api.OUTSIDE_MAX_BITS:
            lo, hi = (v[0] for v in rec.api.reach_of(geo))
            d = int(np.argmax(np.maximum((lo - m[i]) / s[i], (m[i] - hi) / s[i])))
            lo, hi = lo[d], hi[d]
            out.append(
                BlockProblem(
                    r,
                    d,
                    OutOfReachError,
                    f"the posterior puts 2^{far:.1f} of its mass beyond the sampler's reach "
                    f"(about [{lo:.2f}, {hi:.2f}] prior-sigma; (mu - prior_mu)/prior_sigma = "
                    f"{m[i, d]:.4g}, sigma/prior_sigma = {s[i, d]:.4g}): an exact sample "
                    "would be truncated",
                )
            )
            continue
        dd = np.array(
            [
                dim_dinf_bits(be, m[i, j : j + 1], s[i, j : j + 1], b[j : j + 1], geo.table[t])[0]
                for j, t in enumerate(geo.tree_id[0].tolist())
            ]
        )
        d = int(np.argmax(dd))
        near = " (near-collapsed: tiny KL, huge D_inf)" if abs(1.0 - s[i, d]) < 0.05 else ""
        out.append(
            BlockProblem(
                r,
                d,
                SearchBudgetError,
                f"exact search needs ~2^{dd.sum():.1f} candidates with "
                f"{int(extra[r].sum())} extra partition bits, over 2^{cap:.1f} (max_steps "
                f"less a 2^{spec.feasible_margin_bits:g} margin); this dimension costs "
                f"{dd[d]:.1f} bits (sigma/prior_sigma = {s[i, d]:.4g}, "
                f"(mu - prior_mu)/prior_sigma = {m[i, d]:.4g}){near}",
            )
        )
    return out


def problem_error(p: BlockProblem, group: BlockGroup, ids) -> RecrayError:
    """The located, typed error of a :class:`BlockProblem` (names item, block, dimension)."""
    exc = p.error(f"block {p.row}: {p.detail}", block=p.row, dim=p.dim)
    return _located(exc, group, ids, hint=False)


@dataclass
class SearchedItems:
    """What the searches chose for ``n`` items, per item and plan block: ``bins``,
    ``local`` int64 ``(n, n_blocks)`` (what the messages carry), ``extra`` int64
    ``(n, n_blocks, max_block_dims)`` (adaptive partitions' extra bits; None without),
    ``steps``, ``kl_bits`` ``(n, n_blocks)``, ``fallback`` bool ``(n, n_blocks)``, and
    ``samples`` ``(n, D)`` (the latents the indices decode to)."""

    bins: np.ndarray
    local: np.ndarray
    extra: np.ndarray | None
    steps: np.ndarray
    kl_bits: np.ndarray
    fallback: np.ndarray
    samples: np.ndarray


def encode_items(ids, mu, sigma, spec: CodecSpec) -> EncodedItems:
    """Code ``n`` items: ``mu``, ``sigma`` float64 ``(n, D)``; ``ids`` their ids.

    Raises the located, typed error of the first block that can be coded neither exactly
    nor (with ``on_unbounded="orc"``) by the fallback; nothing is returned then."""
    r = search_items(ids, mu, sigma, spec)
    messages = encode_messages(r.bins, r.local, spec.layout, extra=r.extra)
    n = len(messages)
    adapted = (
        r.extra.any(axis=2).sum(axis=1).astype(np.int32)
        if r.extra is not None
        else np.zeros(n, np.int32)
    )
    return EncodedItems(
        messages,
        r.kl_bits.sum(axis=1),
        r.steps.sum(axis=1),
        r.fallback.sum(axis=1).astype(np.int32),
        adapted,
        r.samples,
    )


def search_items(ids, mu, sigma, spec: CodecSpec) -> SearchedItems:
    """The searches of :func:`encode_items`, without the messages (what fitting laws on a
    sample needs); the same errors."""
    n, D = mu.shape
    nb = spec.plan.n_blocks
    sids = block_stream_ids(item_keys(ids), nb)
    bins = np.zeros((n, nb), np.int64)
    local = np.ones((n, nb), np.int64)
    steps = np.zeros((n, nb), np.int64)
    kl = np.zeros((n, nb))
    fallback = np.zeros((n, nb), bool)
    extra = np.zeros((n, nb, spec.plan.max_block_size), np.int64) if spec.adaptive else None
    samples = np.empty((n, D))
    common = dict(seed=spec.seed, backend=spec.backend)
    for grp in spec.groups():
        g, s = grp.dims.shape
        m_r, s_r, pm, ps, bits = block_rows(grp, mu, sigma, spec)
        trees = spec.row_trees(grp, n)
        sid = sids[:, grp.blocks].reshape(-1)
        routes = route_group(m_r, s_r, pm, ps, bits, spec, keep_bounds=True, trees=trees)
        if routes.problems:
            raise problem_error(routes.problems[0], grp, ids)
        row_extra = np.zeros((n * g, s), np.int64)
        row_extra[routes.exact] = routes.extra
        if extra is not None:
            extra[:, grp.blocks, :s] = row_extra.reshape(n, g, s)
        fallback_ok = spec.method in rec.EXACT_METHODS and spec.on_unbounded == "orc"
        # (rows, method, their bounds: the routing's, so the search does not rebuild them)
        todo = [
            (routes.exact, spec.method, routes.bounds),
            (routes.fallback, FALLBACK.get(spec.method), None),
        ]
        while todo:
            rows, method, bounds = todo.pop(0)
            if rows.size == 0:
                continue
            if method in rec.EXACT_METHODS:
                kw = dict(
                    max_steps=spec.max_steps,
                    on_cap="keep" if fallback_ok else "raise",
                    bounds=bounds,
                )
                row_bits = bits[rows] + row_extra[rows]
            else:
                kw = dict(n_samples=spec.row_n_samples(grp, rows))
                row_bits = bits[rows]
            try:
                res = rec.encode(
                    m_r[rows],
                    s_r[rows],
                    prior_mu=pm[rows],
                    prior_sigma=ps[rows],
                    bits=row_bits,
                    trees=None if trees is None else trees.take(rows),
                    method=method,
                    stream_ids=sid[rows],
                    **kw,
                    **common,
                )
            except RecrayError as exc:
                raise _located(exc, grp, ids, rows) from exc
            done = ~res.capped
            it_all, k_all = np.divmod(rows, g)
            steps[it_all, grp.blocks[k_all]] += res.steps  # capped searches count too
            if not done.all():  # hit the cap at run time: code them with the fallback
                capped = rows[~done]
                if extra is not None:  # the fallback uses the plan's partition
                    ci, ck = np.divmod(capped, g)
                    extra[ci, grp.blocks[ck]] = 0
                    row_extra[capped] = 0
                todo.append((capped, FALLBACK[spec.method], None))
            item, k = np.divmod(rows[done], g)
            blk = grp.blocks[k]
            bins[item, blk] = res.indices.bin[done]
            local[item, blk] = res.indices.local[done]
            kl[item, blk] = res.kl_bits[done]
            fallback[item, blk] = method != spec.method
            samples[item[:, None], grp.dims[k]] = res.samples[done]
    return SearchedItems(bins, local, extra, steps, kl, fallback, samples)


def decode_latents(ids, messages, spec: CodecSpec) -> np.ndarray:
    """Latents ``(n, D)`` float64 of ``n`` messages (CRCs checked by the caller)."""
    bins, local, extra = decode_blocks(messages, spec.layout, item_ids=ids)
    return decode_indices(ids, bins, local, spec, extra if spec.layout.adaptive else None)


def decode_indices(
    ids, bins: np.ndarray, local: np.ndarray, spec: CodecSpec, extra: np.ndarray | None = None
) -> np.ndarray:
    """Latents ``(n, D)`` float64 from the block indices ``bins``, ``local`` int64
    ``(n, n_blocks)`` of ``n`` items (what the messages carry), and for adaptive layouts
    ``extra`` int64 ``(n, n_blocks, max_block_dims)``, the blocks' extra partition bits."""
    n = bins.shape[0]
    sids = block_stream_ids(item_keys(ids), spec.plan.n_blocks)
    z = np.empty((n, spec.plan.dim))
    for grp in spec.groups():
        g, s = grp.dims.shape
        _, _, pm, ps, bits = block_rows(
            grp, np.zeros((n, spec.plan.dim)), np.ones((n, spec.plan.dim)), spec
        )
        if extra is not None:
            bits = bits + extra[:, grp.blocks, :s].reshape(n * g, s)
        idx = rec.Indices(bins[:, grp.blocks].reshape(-1), local[:, grp.blocks].reshape(-1), s)
        try:
            x = rec.decode(
                idx,
                prior_mu=pm,
                prior_sigma=ps,
                bits=bits,
                trees=spec.row_trees(grp, n),
                method=spec.method,
                seed=spec.seed,
                stream_ids=sids[:, grp.blocks].reshape(-1),
                backend=spec.backend,
                rng_version=spec.rng_version,
            )
        except RecrayError as exc:
            raise _located(exc, grp, ids) from exc
        z[:, grp.dims.reshape(-1)] = x.reshape(n, g * s)
    return z
