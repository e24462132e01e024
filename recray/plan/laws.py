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
* ``bin_freqs``: per partitioned dimension of the block (in the block's dimension order,
  i.e. the order of the bin id's digits, lowest first), the integer frequencies of its
  intervals: ``2^{b_d}`` of them for a complete partition, one per leaf for a tree
  (:mod:`recray.rec.trees`). Empty: the bin is coded raw (complete partitions only);
* ``adapt_freqs`` (version 2, message codec version 5): the law of the block's
  "adaptive partition" flag, two entries; empty: the fixed law.

and, for all blocks together (version 2), ``extra_freqs``: the law of one dimension's extra
partition bits in an adapted block (``MAX_EXTRA_BITS + 1`` entries), empty for the fixed
law.

Every entry is an integer ``>= 1`` (estimated counts plus a pseudo count, rescaled to sum
to :data:`FREQ_TOTAL`), so every symbol has a nonzero probability and the model is the
same float64 array on every machine (``freq / total``, correctly rounded).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recray.errors import PlanError
from recray.localfiles import write_replacing

#: ``"version"`` of serialized laws; bump it with any change of layout or meaning. Version 2
#: adds interval laws of any size (trees) and the side-information laws; version 1 laws
#: are still read (and written when they use neither).
LAWS_VERSION = 2
LAWS_VERSIONS = (1, 2)
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
MAX_LAW_ENTRIES = 1 << MAX_LAW_BITS
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


def _check_freqs(t, n: int | None, what: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in t)
    if (n is not None and len(out) != n) or min(out, default=0) < 1 or sum(out) != FREQ_TOTAL:
        size = f"{n} " if n is not None else ""
        raise PlanError(f"{what} must hold {size}integer frequencies >= 1 summing to {FREQ_TOTAL}")
    return out


@dataclass(frozen=True)
class BlockLaw:
    """One block's laws: ``class_freqs`` (``N_LAW_CLASSES + 1`` ints, the last the escape),
    ``bin_freqs`` (per partitioned dimension in block order, one int per interval; empty =
    raw bins) and ``adapt_freqs`` (the law of the block's adapted flag, ``(P(0), P(1))``
    as two ints; empty = the fixed law)."""

    class_freqs: tuple[int, ...]
    bin_freqs: tuple[tuple[int, ...], ...] = ()
    adapt_freqs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        cf = tuple(int(v) for v in self.class_freqs)
        if len(cf) != N_LAW_CLASSES + 1 or min(cf) < 1 or sum(cf) != FREQ_TOTAL:
            raise PlanError(
                f"a class law must hold {N_LAW_CLASSES + 1} integer frequencies >= 1 summing "
                f"to {FREQ_TOTAL}"
            )
        bf = tuple(tuple(int(v) for v in t) for t in self.bin_freqs)
        for t in bf:
            if not 2 <= len(t) <= MAX_LAW_ENTRIES:
                raise PlanError(f"a bin law must hold 2 to {MAX_LAW_ENTRIES} frequencies")
            _check_freqs(t, None, "a bin law")
        af = _check_freqs(self.adapt_freqs, 2, "an adapted-flag law") if self.adapt_freqs else ()
        object.__setattr__(self, "class_freqs", cf)
        object.__setattr__(self, "bin_freqs", bf)
        object.__setattr__(self, "adapt_freqs", af)

    @property
    def class_probs(self) -> np.ndarray:
        return np.asarray(self.class_freqs, dtype=np.float64) / FREQ_TOTAL

    def bin_radix(self) -> tuple[int, ...]:
        """The number of intervals of each dimension with a bin law."""
        return tuple(len(t) for t in self.bin_freqs)

    def bin_bits(self) -> tuple[int, ...]:
        """``log2`` of :meth:`bin_radix` (complete partitions: every radix a power of 2)."""
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
    extra_freqs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not isinstance(self.method, str) or not isinstance(self.source, str):
            raise PlanError("index laws: method and source must be strings")
        if self.extra_freqs:
            ef = _check_freqs(self.extra_freqs, MAX_EXTRA_BITS + 1, "the extra-bits law")
            object.__setattr__(self, "extra_freqs", ef)
        flagged = {bool(b.adapt_freqs) for b in self.blocks}
        if len(flagged) > 1:
            raise PlanError("index laws: either every block has an adapted-flag law or none")

    @property
    def version(self) -> int:
        """1 when the laws use no version 2 feature (then serialized as before)."""
        v2 = self.extra_freqs or any(
            b.adapt_freqs or any(n & (n - 1) for n in b.bin_radix()) for b in self.blocks
        )
        return 2 if v2 else 1

    @property
    def side(self) -> bool:
        """Whether the laws include the side-information laws (message codec version 5)."""
        return bool(self.extra_freqs) or any(b.adapt_freqs for b in self.blocks)

    def check_plan(self, block_radix: Sequence[Sequence[int]]) -> None:
        """Raise :class:`PlanError` unless the laws fit a plan whose block ``k``'s
        dimensions (block order) have ``block_radix[k]`` intervals each (``2^b`` for a
        complete partition of ``b`` bits, the leaves for a tree; 1 = not partitioned)."""
        if len(block_radix) != len(self.blocks):
            raise PlanError(
                f"index laws hold {len(self.blocks)} blocks; the plan has {len(block_radix)}"
            )
        for k, (law, radix) in enumerate(zip(self.blocks, block_radix, strict=True)):
            want = tuple(int(r) for r in radix if int(r) > 1)
            if law.bin_freqs and law.bin_radix() != want:
                raise PlanError(
                    f"index laws: block {k}'s bin laws are for {law.bin_radix()} intervals "
                    f"per dimension, the plan has {want}"
                )

    def to_dict(self) -> dict:
        out = {
            "version": self.version,
            "n_classes": N_LAW_CLASSES,
            "freq_total": FREQ_TOTAL,
            "method": self.method,
            "source": self.source,
            "blocks": [
                {"class_freqs": list(b.class_freqs), "bin_freqs": [list(t) for t in b.bin_freqs]}
                | ({"adapt_freqs": list(b.adapt_freqs)} if b.adapt_freqs else {})
                for b in self.blocks
            ],
        }
        if self.extra_freqs:
            out["extra_freqs"] = list(self.extra_freqs)
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> IndexLaws:
        if not isinstance(d, Mapping):
            raise PlanError("plan field index_laws must be an object")
        if d.get("version") not in LAWS_VERSIONS:
            raise PlanError(
                f"plan field index_laws has version {d.get('version')!r}; this recray reads "
                f"versions {LAWS_VERSIONS}"
            )
        if d.get("n_classes") != N_LAW_CLASSES or d.get("freq_total") != FREQ_TOTAL:
            raise PlanError("plan field index_laws: n_classes / freq_total do not match")
        try:
            blocks = tuple(
                BlockLaw(
                    tuple(b["class_freqs"]),
                    tuple(tuple(t) for t in b["bin_freqs"]),
                    tuple(b.get("adapt_freqs", ())),
                )
                for b in d["blocks"]
            )
            laws = cls(str(d["method"]), str(d["source"]), blocks, tuple(d.get("extra_freqs", ())))
        except (KeyError, TypeError, AttributeError) as exc:
            raise PlanError(f"plan field index_laws is malformed: {exc}") from None
        if laws.version != d["version"]:
            raise PlanError(
                f"plan field index_laws says version {d['version']} but its fields make it "
                f"version {laws.version}"
            )
        return laws

    def checksum(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`to_dict`."""
        s = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(s.encode()).hexdigest()


def estimate_laws(
    bins: np.ndarray,
    local: np.ndarray,
    block_bits: Sequence[Sequence[int]] | None = None,
    *,
    method: str,
    source: str,
    bin_laws: bool = True,
    block_radix: Sequence[Sequence[int]] | None = None,
    extra: np.ndarray | None = None,
    side: bool = False,
) -> IndexLaws:
    """Laws from the indices of ``n`` training items: ``bins``, ``local`` int64
    ``(n, n_blocks)`` (what the messages carry). The partition of block ``k``'s dimensions
    (block order): ``block_bits[k]`` partition bits, or ``block_radix[k]`` intervals each
    (trees). ``extra`` int64 ``(n, n_blocks, S)``: the items' adaptive extra partition bits
    (their bins are on the refined partition; the laws count the plan's intervals they lie
    in). ``bin_laws=False`` keeps raw bins; ``side=True`` also estimates the
    side-information laws (the adapted flag of every block, the extra bits of the adapted
    blocks' dimensions: message codec version 5)."""
    if (block_bits is None) == (block_radix is None):
        raise PlanError("estimate_laws: give exactly one of block_bits and block_radix")
    if block_radix is None:
        block_radix = [[1 << int(b) for b in bits] for bits in block_bits]
    bins = np.asarray(bins, dtype=np.int64)
    local = np.asarray(local, dtype=np.int64)
    nb = len(block_radix)
    if bins.ndim != 2 or bins.shape != local.shape or bins.shape[1] != nb:
        raise PlanError("estimate_laws: bins and local must be (n_items, n_blocks) of the plan")
    if (local < 1).any():
        raise PlanError("estimate_laws: local indices must be >= 1")
    n = bins.shape[0]
    cls = np.frexp(local.astype(np.float64))[1].astype(np.int64) - 1
    out = []
    for k, radix in enumerate(block_radix):
        counts = np.bincount(np.minimum(cls[:, k], N_LAW_CLASSES), minlength=N_LAW_CLASSES + 1)
        c = counts.astype(np.float64)
        c[:N_LAW_CLASSES] += PSEUDO_COUNT
        c[N_LAW_CLASSES] += ESCAPE_COUNT
        radix = [int(r) for r in radix]
        e = np.zeros((n, len(radix)), dtype=np.int64)
        if extra is not None:
            e = np.asarray(extra, dtype=np.int64)[:, k, : len(radix)]
        bf = []
        if bin_laws and 1 < max(radix, default=1) <= MAX_LAW_ENTRIES:
            rem = bins[:, k].copy()
            for d, r in enumerate(radix):  # mixed radix, dimension 0 lowest
                rr = np.left_shift(np.int64(r), e[:, d])
                o = (rem % rr) >> e[:, d]
                rem //= rr
                if r > 1:
                    h = np.bincount(o, minlength=r).astype(np.float64) + PSEUDO_COUNT
                    bf.append(_freqs(h))
        af = ()
        if side:
            flagged = int(e.any(axis=1).sum())
            af = _freqs(np.array([n - flagged, flagged], dtype=np.float64) + PSEUDO_COUNT)
        out.append(BlockLaw(_freqs(c), tuple(bf), af))
    ef = ()
    if side:
        ex = np.zeros(MAX_EXTRA_BITS + 1)
        if extra is not None:
            e_all = np.asarray(extra, dtype=np.int64)
            sizes = [len(r) for r in block_radix]
            for k, size in enumerate(sizes):
                rows = e_all[:, k, :size]
                hit = rows[rows.any(axis=1)]
                ex += np.bincount(hit.reshape(-1), minlength=MAX_EXTRA_BITS + 1)[
                    : MAX_EXTRA_BITS + 1
                ]
        ef = _freqs(ex + PSEUDO_COUNT)
    return IndexLaws(method, source, tuple(out), ef)


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
    write_replacing(cached, json.dumps(laws.to_dict()))
    return laws, time.perf_counter() - t0


def fixed_laws(block_parts, class_probs, *, method: str) -> IndexLaws:
    """The laws a partition implies without data (message codec version 5 with the fixed
    codes): per block, its class law from ``class_probs[k]`` (a row of
    :data:`recray.rec.codes.CLASS_MODEL_PROBS`: the first ``N_LAW_CLASSES`` classes, the rest
    as the escape) and, for each partitioned dimension, the prior masses of its intervals
    (``2^-level``: exactly the tree's prefix code, uniform for a complete partition).
    ``block_parts[k]``: per dimension of block ``k`` (block order) ``(levels, ext)``, the
    tree's leaf levels and its extra levels. A block with a dimension of more than
    ``MAX_LAW_ENTRIES`` intervals keeps raw bins (complete partitions only)."""
    out = []
    for parts, probs in zip(block_parts, class_probs, strict=True):
        p = np.asarray(probs, dtype=np.float64)
        c = np.concatenate([p[:N_LAW_CLASSES], [p[N_LAW_CLASSES:].sum()]])
        radix = [len(lv) << int(e) for lv, e in parts]
        bf = []
        if 1 < max(radix, default=1) <= MAX_LAW_ENTRIES:
            for (lv, e), r in zip(parts, radix, strict=True):
                if r > 1:
                    mass = np.ldexp(1.0, -(np.repeat(np.asarray(lv, np.int64), 1 << int(e)) + e))
                    bf.append(_freqs(mass))
        out.append(BlockLaw(_freqs(c), tuple(bf)))
    return IndexLaws(method, "the partition's own masses (no data)", tuple(out))
