"""One small codec interface: analysis -> REC latent -> optional tail -> bytes.

Modelled on CompressAI's ``LatentCodec`` (a codec is analysis, a latent codec, synthesis;
entropy coding never lives inside the network), for REC latents:

* :meth:`LatentCodec.analysis` maps a batch of items (and their ids) to a factorized
  Gaussian posterior :class:`Posterior` ``N(mu, diag(sigma^2))`` over the coded latent
  ``z`` (a VAE encoder's forward pass, or an INR fit: one whose randomness is keyed by
  the item ids, so that an item's posterior does not depend on the rest of its batch);
* the REC core codes a sample of it block by block under a :class:`~recray.pipeline.codec.
  CodecSpec` (plan, method, prior, seed); :meth:`LatentCodec.refine` lets a codec update
  the posterior of the dimensions not yet coded once some blocks are coded (progressive
  coding, RECOMBINER's fine-tuning; the default keeps it as it is);
* :meth:`LatentCodec.tail` gives the symbols coded after the indices in the same range
  coder (MNIST's pixels under ``p(x|z)``; ``None`` for a lossy codec with no tail);
* :meth:`LatentCodec.synthesis` rebuilds items from decoded latents (and reads the tail).

:func:`encode_progressive` and :func:`decode_items` are the two halves shared by codecs
whose analysis interacts with coding (the INR codec). The MNIST codec codes its latents
with the latent pipeline (:mod:`recray.pipeline`), then runs its :class:`LatentCodec`'s
``tail`` and ``synthesis`` on every part of the run (:mod:`recray.codecs.mnist`). A run
header names its codec by the class's ``name`` and ``version``.

Guarantees and requirements: an item's message depends only on the item, its id, the
spec and the codec's own deterministic choices (never on the other items of its batch);
the receiver needs the spec (from the run header), the same codec weights, and for tails
the same probability tables.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from recray import rec
from recray.errors import MessageError, RecrayError, fmt_item
from recray.format.messages import Tail, encode_messages, read_head
from recray.pipeline.codec import (
    FALLBACK,
    CodecSpec,
    block_stream_ids,
    decode_indices,
    item_keys,
)


@dataclass(frozen=True)
class Posterior:
    """``N(mu, diag(sigma^2))`` per item: float64 ``(n, D)`` each."""

    mu: np.ndarray
    sigma: np.ndarray


class LatentCodec(ABC):
    """What a codec provides around the REC core (see the module docstring)."""

    name: str = ""
    version: int = 1

    @abstractmethod
    def analysis(self, items, ids=None) -> Posterior:
        """The posterior of every item of the batch (``ids``: the items' ids, int64
        ``(n,)``; ``None``: ``0..n-1``)."""

    def refine(
        self, items, posterior: Posterior, coded: np.ndarray, z: np.ndarray, ids=None
    ) -> Posterior:
        """Update the posterior of the dimensions not yet coded (``coded`` bool ``(n, D)``;
        ``z`` holds the decoded values where ``coded``). Default: unchanged."""
        return posterior

    def tail(self, items, z: np.ndarray) -> list[list[Tail]] | None:
        """Symbols to code after the indices, per item (``None``: no tail)."""
        return None

    @abstractmethod
    def synthesis(self, z: np.ndarray, decoders=None, ids=None):
        """Items from latents ``z`` ``(n, D)``; ``decoders`` (per item, positioned after the
        indices) when the codec has a tail."""


@dataclass(frozen=True)
class Encoded:
    """One batch coded: per item its ``messages`` (bytes), the latents ``z`` the messages
    decode to, ``kl_bits`` (sum over blocks of the KL coded), ``steps``, ``fallback_blocks``
    and the analysis posterior's KL (``analysis_kl_bits``)."""

    messages: list
    z: np.ndarray
    kl_bits: np.ndarray
    steps: np.ndarray
    fallback_blocks: np.ndarray
    analysis_kl_bits: np.ndarray


def _block_kl(post: Posterior, spec: CodecSpec) -> np.ndarray:
    """KL in bits of every (item, plan block) of the posterior: ``(n, n_blocks)``."""
    v = (post.sigma / spec.prior_sigma) ** 2
    kl = (
        0.5
        * (v + ((post.mu - spec.prior_mu) / spec.prior_sigma) ** 2 - 1 - np.log(v))
        / math.log(2)
    )
    return np.stack([kl[:, list(b)].sum(1) for b in spec.plan.blocks], axis=1)


def _code_rows(m, s, pm, ps, bits, sid, spec: CodecSpec, where, n_samples=None):
    """``rec.encode`` on rows of one block size, with the exact methods' fallback to
    their fixed-budget twin (as :func:`recray.pipeline.codec.encode_items` does);
    ``n_samples`` int64 ``(n,)``: each row's fixed budget (default ``spec.n_samples``)."""
    n = m.shape[0]
    out_bin = np.zeros(n, np.int64)
    out_local = np.ones(n, np.int64)
    out_kl = np.zeros(n)
    out_steps = np.zeros(n, np.int64)
    out_fb = np.zeros(n, bool)
    out_x = np.empty_like(m)
    exact = spec.method in rec.EXACT_METHODS
    ok = np.ones(n, bool)
    if exact:
        ok, _ = rec.exact_feasible(
            m,
            s,
            prior_mu=pm,
            prior_sigma=ps,
            bits=bits,
            method=spec.method,
            max_steps=spec.max_steps,
        )
    todo = [(np.flatnonzero(ok), spec.method), (np.flatnonzero(~ok), FALLBACK.get(spec.method))]
    while todo:
        rows, method = todo.pop(0)
        if rows.size == 0:
            continue
        kw = (
            dict(max_steps=spec.max_steps, on_cap="keep")
            if method in rec.EXACT_METHODS
            else dict(n_samples=spec.n_samples if n_samples is None else n_samples[rows])
        )
        try:
            res = rec.encode(
                m[rows],
                s[rows],
                prior_mu=pm[rows],
                prior_sigma=ps[rows],
                bits=bits[rows],
                method=method,
                seed=spec.seed,
                stream_ids=sid[rows],
                backend=spec.backend,
                **kw,
            )
        except RecrayError as exc:
            r = rows[exc.block] if exc.block is not None else None
            raise type(exc)(f"{where(r)}: {exc}") from exc
        out_steps[rows] += res.steps
        done = ~res.capped
        if not done.all():
            todo.append((rows[~done], FALLBACK[spec.method]))
        r = rows[done]
        out_bin[r] = res.indices.bin[done]
        out_local[r] = res.indices.local[done]
        out_kl[r] = res.kl_bits[done]
        out_fb[r] = method != spec.method
        out_x[r] = res.samples[done]
    return out_bin, out_local, out_kl, out_steps, out_fb, out_x


def encode_progressive(
    codec: LatentCodec, items, ids, spec: CodecSpec, *, stages: int = 1, progress=None
) -> Encoded:
    """Analyse and code a batch of items block by block (RECOMBINER's progressive coding).

    Each item's blocks are coded in ``stages`` rounds; each round codes, per item, the
    ``ceil(n_blocks / stages)`` uncoded blocks of largest KL under the current posterior,
    then (except after the last) calls :meth:`LatentCodec.refine` with the coded dimensions
    pinned to their samples. ``stages = n_blocks`` is one block at a time. The order is the
    encoder's business only: a block's index depends on its posterior, prior, bits and
    stream id, and the receiver decodes every block the same way whatever the order.
    """
    ids = np.asarray(ids)
    post = codec.analysis(items, ids=ids)
    n, d = post.mu.shape
    nb = spec.plan.n_blocks
    analysis_kl = _block_kl(post, spec).sum(1)
    sids = block_stream_ids(item_keys(ids), nb)
    bins = np.zeros((n, nb), np.int64)
    local = np.ones((n, nb), np.int64)
    steps = np.zeros((n, nb), np.int64)
    kl = np.zeros((n, nb))
    fb = np.zeros((n, nb), bool)
    coded_blk = np.zeros((n, nb), bool)
    coded = np.zeros((n, d), bool)
    z = np.zeros((n, d))
    blocks = [np.asarray(b, np.int64) for b in spec.plan.blocks]
    sizes = np.array([len(b) for b in blocks])
    pbits = np.asarray(spec.plan.bits, np.int64)
    if not spec.partitioned:
        pbits = np.zeros_like(pbits)
    block_n = np.asarray(spec.block_n_samples, np.int64)
    stages = max(1, min(int(stages), nb))
    per = math.ceil(nb / stages)
    for st in range(stages):
        bkl = np.where(coded_blk, -np.inf, _block_kl(post, spec))
        order = np.argsort(-bkl, axis=1, kind="stable")[:, :per]
        items_r = np.repeat(np.arange(n), order.shape[1])
        blk_r = order.reshape(-1)
        keep = ~coded_blk[items_r, blk_r]
        items_r, blk_r = items_r[keep], blk_r[keep]
        for size in np.unique(sizes[blk_r]):
            sel = sizes[blk_r] == size
            it, bk = items_r[sel], blk_r[sel]
            dims = np.stack([blocks[b] for b in bk])  # (r, size)
            m, s = post.mu[it[:, None], dims], post.sigma[it[:, None], dims]
            pm, ps = spec.prior_mu[dims], spec.prior_sigma[dims]

            def where(r, it=it, bk=bk):
                return (
                    "a batch of blocks"
                    if r is None
                    else f"item {fmt_item(ids[it[r]])}, plan block {int(bk[r])}"
                )

            b_, l_, k_, s_, f_, x_ = _code_rows(
                m, s, pm, ps, pbits[dims], sids[it, bk], spec, where, block_n[bk]
            )
            bins[it, bk], local[it, bk], kl[it, bk], steps[it, bk], fb[it, bk] = b_, l_, k_, s_, f_
            z[it[:, None], dims] = x_
            coded[it[:, None], dims] = True
            coded_blk[it, bk] = True
        if progress:
            progress(st + 1, stages)
        if st < stages - 1 and not coded_blk.all():
            post = codec.refine(items, post, coded, z, ids=ids)
    tails = codec.tail(items, z)
    messages = encode_messages(bins, local, spec.layout, tails)
    return Encoded(messages, z, kl.sum(1), steps.sum(1), fb.sum(1).astype(np.int32), analysis_kl)


def read_heads(ids, messages, spec: CodecSpec, what: str = "item"):
    """Each message's head (:func:`~recray.format.messages.read_head`: indices, extra
    partition bits, and the decoder positioned after them) and the latents they give:
    ``(heads, z)``, ``z`` float64 ``(n, D)``. A message that cannot be read raises
    :class:`MessageError` naming its item (``what`` and its id)."""
    ids = np.asarray(ids)
    heads = []
    for i, m in zip(ids, messages, strict=True):
        try:
            heads.append(read_head(m, spec.layout))
        except MessageError as exc:
            raise MessageError(f"{what} {fmt_item(i)}: {exc}") from exc
    shape = (len(ids), spec.plan.n_blocks)
    bins = np.stack([h.bins for h in heads]).reshape(shape)
    local = np.stack([h.local for h in heads]).reshape(shape)
    extra = np.stack([h.extra for h in heads]) if spec.layout.adaptive else None
    return heads, decode_indices(ids, bins, local, spec, extra)


def decode_items(codec: LatentCodec, ids, messages, spec: CodecSpec, what: str = "item"):
    """Items from their messages (CRCs checked by the caller): reads each message's
    indices (:func:`read_heads`), regenerates ``z`` and calls
    :meth:`LatentCodec.synthesis`. Returns ``(items, z)``."""
    heads, z = read_heads(ids, messages, spec, what)
    return codec.synthesis(z, [h.decoder for h in heads], np.asarray(ids)), z
