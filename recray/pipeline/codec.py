"""Per-batch codec steps: pure functions of a batch of items.

:func:`encode_items` turns the posteriors of ``n`` items into one message per item, and
:func:`decode_items` turns messages back into latents. They read and write no files and
know nothing of Ray, so any driver (one process, a Ray actor) can call them on any batch:
an item's message depends only on its own posterior, its id, the plan and the seed.

**Blocks.** The plan splits the ``D`` latent dimensions into blocks. Blocks of equal size
are coded together: for ``n`` items and ``g`` blocks of size ``s`` one ``rec.encode`` call
codes ``n * g`` rows of ``s`` dimensions (a loop over block sizes, never over items).

**Stream ids.** Block ``k`` of an item is coded under stream id
``Philox(counter = (lo key, hi key, k, 0), key = ("RSTR", 1))`` words 0 | 1 << 32, where the
item key is the int64 id itself or, for string ids, the first 8 bytes (little endian) of
BLAKE2b-64 of its UTF-8 bytes.

**Fallback.** With ``on_unbounded="orc"`` the blocks an exact method cannot code (unbounded
ratio, expected steps above ``max_steps``, or a search that hits ``max_steps``; the steps
spent before the fallback are counted) are coded with the fixed-budget twin
(``sp-pfr`` -> ``sp-orc``, ``pfr`` -> ``orc``, ``n_samples`` candidates): their index has the
same form and code, so decoding needs no flag; the item's ``fallback_blocks`` says how many.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from recray import rec
from recray.errors import (
    InputError,
    RecrayError,
    SearchBudgetError,
    UnboundedRatioError,
    fmt_item,
)
from recray.format.messages import IndexLayout, decode_messages, encode_messages
from recray.plan import CodecPlan
from recray.rec.philox import RNG_VERSION, philox4x32, split64

STREAM_DOMAIN = 0x52535452  # "RSTR"
ON_UNBOUNDED = ("error", "orc")
FALLBACK = {"sp-pfr": "sp-orc", "pfr": "orc"}


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
    dimensions, ``bits`` (g, s) partition bits used by the method."""

    size: int
    blocks: np.ndarray
    dims: np.ndarray
    bits: np.ndarray


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
    backend: str | None = field(default=None, compare=False)
    #: the RNG recipe of the run's samples: the current one for new runs; a run header's
    #: for decoding (version 1 runs still decode, docs/FORMAT.md section 4)
    rng_version: int = RNG_VERSION

    def __post_init__(self):
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
    def layout(self) -> IndexLayout:
        if self.method == "orc":
            raw = int(math.ceil(math.log2(self.n_samples))) if self.n_samples > 1 else 0
            return IndexLayout(bin_bits=self.bin_bits, code="raw", raw_bits=raw)
        return IndexLayout(bin_bits=self.bin_bits, code="universal", class_models=self.class_models)

    def groups(self) -> list[BlockGroup]:
        sizes = sorted({len(b) for b in self.plan.blocks})
        out = []
        for s in sizes:
            idx = [k for k, b in enumerate(self.plan.blocks) if len(b) == s]
            dims = np.asarray([self.plan.blocks[k] for k in idx], dtype=np.int64)
            bits = np.asarray(self.plan.bits, dtype=np.int64)[dims]
            if not self.partitioned:
                bits = np.zeros_like(bits)
            out.append(BlockGroup(s, np.asarray(idx, dtype=np.int64), dims, bits))
        return out


@dataclass
class EncodedItems:
    """Per item: ``messages`` (list of bytes), ``kl_bits``, ``steps``, ``fallback_blocks``;
    ``samples`` (n, D) float64: the latents the messages decode to."""

    messages: list
    kl_bits: np.ndarray
    steps: np.ndarray
    fallback_blocks: np.ndarray
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


def _located(exc: RecrayError, group: BlockGroup, ids, rows=None) -> RecrayError:
    """The same error, located by item id, plan block and latent dimension."""
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
    if isinstance(exc, UnboundedRatioError | SearchBudgetError):
        detail += (
            " (recray compress --on-unbounded orc codes such blocks with the "
            "fixed-budget method instead)"
        )
    dim = None if exc.dim is None else int(group.dims[k, exc.dim])
    return type(exc)(f"{where}: {detail}", block=item, dim=dim)


def encode_items(ids, mu, sigma, spec: CodecSpec) -> EncodedItems:
    """Code ``n`` items: ``mu``, ``sigma`` float64 ``(n, D)``; ``ids`` their ids."""
    n, D = mu.shape
    nb = spec.plan.n_blocks
    sids = block_stream_ids(item_keys(ids), nb)
    bins = np.zeros((n, nb), np.int64)
    local = np.ones((n, nb), np.int64)
    steps = np.zeros((n, nb), np.int64)
    kl = np.zeros((n, nb))
    fallback = np.zeros((n, nb), bool)
    samples = np.empty((n, D))
    common = dict(seed=spec.seed, backend=spec.backend)
    for grp in spec.groups():
        g, s = grp.dims.shape
        m_r, s_r, pm, ps, bits = block_rows(grp, mu, sigma, spec)
        sid = sids[:, grp.blocks].reshape(-1)
        exact = spec.method in rec.EXACT_METHODS
        ok = np.ones(n * g, bool)
        if exact and spec.on_unbounded == "orc":
            ok, _ = rec.exact_feasible(
                m_r,
                s_r,
                prior_mu=pm,
                prior_sigma=ps,
                bits=bits,
                method=spec.method,
                max_steps=spec.max_steps,
                backend=spec.backend,
            )
        fallback_ok = exact and spec.on_unbounded == "orc"
        todo = [(np.flatnonzero(ok), spec.method), (np.flatnonzero(~ok), FALLBACK.get(spec.method))]
        while todo:
            rows, method = todo.pop(0)
            if rows.size == 0:
                continue
            if method in rec.EXACT_METHODS:
                kw = dict(max_steps=spec.max_steps, on_cap="keep" if fallback_ok else "raise")
            else:
                kw = dict(n_samples=spec.n_samples)
            try:
                res = rec.encode(
                    m_r[rows],
                    s_r[rows],
                    prior_mu=pm[rows],
                    prior_sigma=ps[rows],
                    bits=bits[rows],
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
                todo.append((rows[~done], FALLBACK[spec.method]))
            item, k = np.divmod(rows[done], g)
            blk = grp.blocks[k]
            bins[item, blk] = res.indices.bin[done]
            local[item, blk] = res.indices.local[done]
            kl[item, blk] = res.kl_bits[done]
            fallback[item, blk] = method != spec.method
            samples[item[:, None], grp.dims[k]] = res.samples[done]
    messages = encode_messages(bins, local, spec.layout)
    return EncodedItems(
        messages, kl.sum(axis=1), steps.sum(axis=1), fallback.sum(axis=1).astype(np.int32), samples
    )


def decode_items(ids, messages, spec: CodecSpec) -> np.ndarray:
    """Latents ``(n, D)`` float64 of ``n`` messages (CRCs checked by the caller)."""
    bins, local = decode_messages(messages, spec.layout, item_ids=ids)
    return decode_indices(ids, bins, local, spec)


def decode_indices(ids, bins: np.ndarray, local: np.ndarray, spec: CodecSpec) -> np.ndarray:
    """Latents ``(n, D)`` float64 from the block indices ``bins``, ``local`` int64
    ``(n, n_blocks)`` of ``n`` items (what the messages carry)."""
    n = bins.shape[0]
    sids = block_stream_ids(item_keys(ids), spec.plan.n_blocks)
    z = np.empty((n, spec.plan.dim))
    for grp in spec.groups():
        g, s = grp.dims.shape
        _, _, pm, ps, bits = block_rows(
            grp, np.zeros((n, spec.plan.dim)), np.ones((n, spec.plan.dim)), spec
        )
        idx = rec.Indices(bins[:, grp.blocks].reshape(-1), local[:, grp.blocks].reshape(-1), s)
        try:
            x = rec.decode(
                idx,
                prior_mu=pm,
                prior_sigma=ps,
                bits=bits,
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
