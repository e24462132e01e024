"""Learned index laws: the distributions of each block's coded symbols, as integer tables.

An exact space-partitioned search returns ``(j*, n*)`` per block. The fixed codes spend
``B`` raw bits on the bin ``j*`` and a universal code on the local index ``n*``; both are
far from the symbols' real distributions on a given model. Like an entropy model's CDF
tables (CompressAI's ``update()``), the laws here are *estimated once on the training
set's latents* for one plan and method, stored in the plan (so they are versioned and
covered by the plan checksum; :meth:`IndexLaws.checksum` identifies them on their own) and
used by the message codec (:mod:`recray.format.messages`, version 3) in the constriction
range coder.

Per block (what the decoder knows: the block, its dimensions and partition bits):

* ``class_freqs``: integer frequencies of the class ``l = floor(log2 n*)`` for
  ``l = 0 .. n_classes - 1``, then one **escape** entry. A class outside the law (``l >=
  n_classes``) is coded as the escape followed by the universal code's class law
  (:data:`recray.rec.codes.CLASS_PROBS`), so every index stays codable;
* ``bin_freqs``: per dimension of the block with ``b_d > 0`` partition bits (in the
  block's dimension order, i.e. the order of the bin id's bit fields, lowest first), the
  integer frequencies of its ``2^{b_d}`` intervals. Empty: the bin is coded in raw bits.

Every entry is an integer ``>= 1`` (estimated counts plus a pseudo count, rescaled to sum
to :data:`FREQ_TOTAL`), so every symbol has a nonzero probability and the model is the
same float64 array on every machine (``freq / total``, correctly rounded).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recray.errors import PlanError

#: ``"version"`` of serialized laws; bump it with any change of layout or meaning.
LAWS_VERSION = 1
#: Classes 0..N_LAW_CLASSES-1 are in a class law; larger ones escape.
N_LAW_CLASSES = 32
#: Sum of every frequency table (probabilities are ``freq / FREQ_TOTAL``).
FREQ_TOTAL = 1 << 20
#: Pseudo count added to every class / interval count before rescaling.
PSEUDO_COUNT = 0.5
#: Escape mass before rescaling (counts): an escape is rare by construction.
ESCAPE_COUNT = 0.5
#: Widest bin law (bits of one dimension) stored; wider dimensions are coded raw.
MAX_LAW_BITS = 12
#: Most extra partition bits one dimension may receive from a per-block adaptive partition
#: (recray.plan.adaptive; their wire format: recray.format.messages.side).
MAX_EXTRA_BITS = 20


def _freqs(counts: np.ndarray) -> tuple[int, ...]:
    """Counts (float, >= 0, with pseudo counts) -> integers >= 1 summing to FREQ_TOTAL."""
    c = np.asarray(counts, dtype=np.float64)
    raw = np.maximum(1, np.floor(c / c.sum() * FREQ_TOTAL)).astype(np.int64)
    raw[int(np.argmax(raw))] += FREQ_TOTAL - int(raw.sum())
    if raw.min() < 1:
        raise PlanError("law estimation produced a non-positive frequency")
    return tuple(int(v) for v in raw)


@dataclass(frozen=True)
class BlockLaw:
    """One block's laws: ``class_freqs`` (``N_LAW_CLASSES + 1`` ints, the last the escape)
    and ``bin_freqs`` (one tuple of ``2^{b_d}`` ints per dimension with ``b_d > 0``, in
    block order; empty = raw bins)."""

    class_freqs: tuple[int, ...]
    bin_freqs: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        cf = tuple(int(v) for v in self.class_freqs)
        if len(cf) != N_LAW_CLASSES + 1 or min(cf) < 1 or sum(cf) != FREQ_TOTAL:
            raise PlanError(
                f"a class law must hold {N_LAW_CLASSES + 1} integer frequencies >= 1 summing "
                f"to {FREQ_TOTAL}"
            )
        bf = tuple(tuple(int(v) for v in t) for t in self.bin_freqs)
        for t in bf:
            n = len(t)
            if n < 2 or n & (n - 1) or n > 1 << MAX_LAW_BITS or min(t) < 1 or sum(t) != FREQ_TOTAL:
                raise PlanError(
                    "a bin law must hold 2^b (1 <= b <= 12) integer frequencies >= 1 summing "
                    f"to {FREQ_TOTAL}"
                )
        object.__setattr__(self, "class_freqs", cf)
        object.__setattr__(self, "bin_freqs", bf)

    @property
    def class_probs(self) -> np.ndarray:
        return np.asarray(self.class_freqs, dtype=np.float64) / FREQ_TOTAL

    def bin_bits(self) -> tuple[int, ...]:
        return tuple(len(t).bit_length() - 1 for t in self.bin_freqs)


@dataclass(frozen=True)
class IndexLaws:
    """Learned laws of every block of a plan (see the module docstring).

    ``method``: the search method they were estimated for; ``source``: a free-text note of
    the data they come from (e.g. ``"mnist train[:8000]"``); ``blocks``: one
    :class:`BlockLaw` per plan block.
    """

    method: str
    source: str
    blocks: tuple[BlockLaw, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not isinstance(self.method, str) or not isinstance(self.source, str):
            raise PlanError("index laws: method and source must be strings")

    def check_plan(self, block_bits: Sequence[Sequence[int]]) -> None:
        """Raise :class:`PlanError` unless the laws fit a plan whose block ``k`` has
        partition bits ``block_bits[k]`` (per dimension, in block order)."""
        if len(block_bits) != len(self.blocks):
            raise PlanError(
                f"index laws hold {len(self.blocks)} blocks; the plan has {len(block_bits)}"
            )
        for k, (law, bits) in enumerate(zip(self.blocks, block_bits, strict=True)):
            want = tuple(int(b) for b in bits if int(b) > 0)
            if law.bin_freqs and law.bin_bits() != want:
                raise PlanError(
                    f"index laws: block {k}'s bin laws are for partition bits "
                    f"{law.bin_bits()}, the plan gives {want}"
                )

    def to_dict(self) -> dict:
        return {
            "version": LAWS_VERSION,
            "n_classes": N_LAW_CLASSES,
            "freq_total": FREQ_TOTAL,
            "method": self.method,
            "source": self.source,
            "blocks": [
                {"class_freqs": list(b.class_freqs), "bin_freqs": [list(t) for t in b.bin_freqs]}
                for b in self.blocks
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> IndexLaws:
        if not isinstance(d, Mapping):
            raise PlanError("plan field index_laws must be an object")
        if d.get("version") != LAWS_VERSION:
            raise PlanError(
                f"plan field index_laws has version {d.get('version')!r}; this recray reads "
                f"version {LAWS_VERSION}"
            )
        if d.get("n_classes") != N_LAW_CLASSES or d.get("freq_total") != FREQ_TOTAL:
            raise PlanError("plan field index_laws: n_classes / freq_total do not match")
        try:
            blocks = tuple(
                BlockLaw(tuple(b["class_freqs"]), tuple(tuple(t) for t in b["bin_freqs"]))
                for b in d["blocks"]
            )
            return cls(str(d["method"]), str(d["source"]), blocks)
        except (KeyError, TypeError) as exc:
            raise PlanError(f"plan field index_laws is malformed: {exc}") from None

    def checksum(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`to_dict`."""
        s = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(s.encode()).hexdigest()


def estimate_laws(
    bins: np.ndarray,
    local: np.ndarray,
    block_bits: Sequence[Sequence[int]],
    *,
    method: str,
    source: str,
    bin_laws: bool = True,
) -> IndexLaws:
    """Laws from the indices of ``n`` training items: ``bins``, ``local`` int64
    ``(n, n_blocks)`` (what the messages carry), ``block_bits[k]`` the partition bits of
    block ``k``'s dimensions in block order. ``bin_laws=False`` keeps raw bins."""
    bins = np.asarray(bins, dtype=np.int64)
    local = np.asarray(local, dtype=np.int64)
    if bins.ndim != 2 or bins.shape != local.shape or bins.shape[1] != len(block_bits):
        raise PlanError("estimate_laws: bins and local must be (n_items, n_blocks) of the plan")
    if (local < 1).any():
        raise PlanError("estimate_laws: local indices must be >= 1")
    cls = np.frexp(local.astype(np.float64))[1].astype(np.int64) - 1
    out = []
    for k, bits in enumerate(block_bits):
        counts = np.bincount(np.minimum(cls[:, k], N_LAW_CLASSES), minlength=N_LAW_CLASSES + 1)
        c = counts.astype(np.float64)
        c[:N_LAW_CLASSES] += PSEUDO_COUNT
        c[N_LAW_CLASSES] += ESCAPE_COUNT
        bf = []
        bits = [int(b) for b in bits]
        if bin_laws and 0 < max(bits, default=0) <= MAX_LAW_BITS:
            shift = 0
            for b in bits:
                if b > 0:
                    kd = (bins[:, k] >> shift) & ((1 << b) - 1)
                    h = np.bincount(kd, minlength=1 << b).astype(np.float64) + PSEUDO_COUNT
                    bf.append(_freqs(h))
                shift += b
        out.append(BlockLaw(_freqs(c), tuple(bf)))
    return IndexLaws(method, source, tuple(out))


def laws_cache_dir() -> str:
    """Where laws estimated on first use are kept: ``$XDG_CACHE_HOME/recray/laws`` (default
    ``~/.cache/recray/laws``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "recray", "laws")


def find_or_fit(key: str, shipped: str, fit: Callable[[], IndexLaws] | None):
    """``(laws, fit_seconds)`` for the settings named by ``key``: the entry ``key`` of the
    shipped laws file ``shipped`` (a JSON object from keys to serialized laws), else the user
    cache (:func:`laws_cache_dir`), else ``fit()``, cached (written to a temporary name, then
    renamed: concurrent fits never leave a torn file); ``(None, 0.0)`` when nothing is found
    and ``fit`` is None."""
    if os.path.exists(shipped):
        with open(shipped) as f:
            table = json.load(f)
        if key in table:
            return IndexLaws.from_dict(table[key]), 0.0
    cached = os.path.join(laws_cache_dir(), hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
    if os.path.exists(cached):
        with open(cached) as f:
            return IndexLaws.from_dict(json.load(f)), 0.0
    if fit is None:
        return None, 0.0
    t0 = time.perf_counter()
    laws = fit()
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    tmp = cached + f".{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as f:
        json.dump(laws.to_dict(), f)
    os.replace(tmp, cached)
    return laws, time.perf_counter() - t0
