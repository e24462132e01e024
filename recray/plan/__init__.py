"""The codec plan: what the sender and the receiver both know (ALGORITHMS.md §5).

A :class:`CodecPlan` fixes, from public information only (the per-dimension information
``mi_bits`` estimated once from training data, and a seed):

* the **blocks**: which latent dimensions are coded together (:func:`split_blocks`);
* the **partition bits** ``b_d`` of every dimension, and each block's budget
  ``B = sum_d b_d`` (:func:`allocate_bits`).

:func:`build_plan` is deterministic: the same arguments give the same plan, bit for bit, on
every machine and NumPy version (all randomness is Philox4x32-10 under the plan key, exact
rational arithmetic for proportional shares, ``math.fsum`` for sums). The plan is written
once per run as JSON next to the bitstreams (:meth:`CodecPlan.to_json`) and checked on
decode (:meth:`CodecPlan.from_json`, :meth:`CodecPlan.checksum`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recray.errors import PlanError
from recray.plan.allocation import (
    MAX_BLOCK_BITS,
    STRATEGIES,
    allocate_bits,
    check_int,
    check_mi,
    check_positive_float,
    check_seed,
    check_strategy,
    check_threshold,
    derive_block_seed,
)
from recray.plan.blocks import COLLAPSED_BLOCK_SIZE, split_blocks
from recray.plan.laws import IndexLaws
from recray.plan.trees import TREE_MAX_LEVEL, block_trees, check_plan_trees
from recray.rec.trees import MAX_BIN_ID_BITS

__all__ = [
    "DEFAULT_PARTITION",
    "PARTITIONS",
    "PLAN_FORMAT",
    "PLAN_FORMAT_VERSION",
    "PLAN_STRATEGIES",
    "STRATEGIES",
    "KL_SAMPLES_MAX_BITS",
    "COLLAPSED_BLOCK_SIZE",
    "CodecPlan",
    "allocate_bits",
    "build_plan",
    "kl_sample_bits",
    "split_blocks",
]

#: ``"format"`` entry of a serialized plan.
PLAN_FORMAT = "recray-plan"
#: ``"version"`` entry of a serialized plan; bump it with any change of layout or recipe.
#: Version 2 adds the optional fields ``budget_offset_bits`` and ``index_laws``; version 3
#: the partitions of unequal mass (``partition: "tree"`` and ``trees``). A plan is written
#: with the lowest version its fields need, byte for byte as before (old runs' plan
#: checksums still hold), and every version is read.
PLAN_FORMAT_VERSION = 3
PLAN_FORMAT_VERSIONS = (1, 2, 3)
#: Partition kinds: ``"complete"`` (``2^b`` intervals of equal prior mass per dimension) and
#: ``"tree"`` (dyadic trees from the dimensions' information, recray.plan.trees).
PARTITIONS = ("complete", "tree")
#: The partition ``recray compress`` and the library build by default.
DEFAULT_PARTITION = "tree"
#: Strategies :func:`build_plan` accepts ("collapsed-only" is an allocate_bits ablation).
PLAN_STRATEGIES: tuple[str, ...] = ("mi", "uniform", "random")

_FIELDS = (
    "dim",
    "block_bits",
    "strategy",
    "seed",
    "collapse_threshold",
    "collapsed_block_size",
    "max_bits_per_dim",
    "mi_bits",
    "blocks",
    "bits",
    "block_budget_bits",
)
#: Fields of version 2 (optional: absent = default; a plan using neither is version 1).
_V2_FIELDS = ("budget_offset_bits", "index_laws")
#: Fields of version 3 (tree partitions).
_V3_FIELDS = ("partition", "trees")


# --------------------------------------------------------------------------- validation


def _seq(value, name: str) -> Sequence:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise PlanError(f"plan field {name} must be a list, got {type(value).__name__}")
    return value


def _norm_mi(value, dim: int) -> tuple[float, ...]:
    seq = _seq(value, "mi_bits")
    if len(seq) != dim:
        raise PlanError(f"plan field mi_bits has {len(seq)} entries; dim is {dim}")
    for i, v in enumerate(seq):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise PlanError(f"plan field mi_bits[{i}] must be a number (bits), got {v!r}")
    return tuple(float(v) for v in check_mi([float(v) for v in seq], "plan field mi_bits"))


def _norm_block(value, b: int, dim: int) -> tuple[int, ...]:
    seq = _seq(value, f"blocks[{b}]")
    if len(seq) == 0:
        raise PlanError(f"plan field blocks[{b}] is empty; drop empty blocks")
    dims = tuple(
        check_int(v, f"plan field blocks[{b}][{j}]", 0, dim - 1) for j, v in enumerate(seq)
    )
    for j in range(1, len(dims)):
        if dims[j] <= dims[j - 1]:
            raise PlanError(
                f"plan field blocks[{b}] must list its dimensions in strictly ascending order "
                f"(blocks[{b}][{j}] = {dims[j]} follows {dims[j - 1]})"
            )
    return dims


def _norm_blocks(value, dim: int) -> tuple[tuple[int, ...], ...]:
    blocks = tuple(_norm_block(v, b, dim) for b, v in enumerate(_seq(value, "blocks")))
    owner: dict[int, int] = {}
    for b, dims in enumerate(blocks):
        for d in dims:
            if d in owner:
                raise PlanError(
                    f"plan field blocks: dimension {d} is in blocks[{owner[d]}] and "
                    f"blocks[{b}]; every dimension must be in exactly one block"
                )
            owner[d] = b
    missing = [d for d in range(dim) if d not in owner]
    if missing:
        raise PlanError(
            f"plan field blocks: dimension(s) {missing[:8]} of range({dim}) are in no block; "
            "every dimension must be in exactly one block"
        )
    return blocks


def _norm_bits(value, dim: int, cap: int) -> tuple[int, ...]:
    seq = _seq(value, "bits")
    if len(seq) != dim:
        raise PlanError(f"plan field bits has {len(seq)} entries; dim is {dim}")
    return tuple(check_int(v, f"plan field bits[{d}]", 0, cap) for d, v in enumerate(seq))


def _norm_budgets(value, blocks, bits, trees=None) -> tuple[int, ...]:
    seq = _seq(value, "block_budget_bits")
    if len(seq) != len(blocks):
        raise PlanError(
            f"plan field block_budget_bits has {len(seq)} entries; there are {len(blocks)} blocks"
        )
    out = []
    for b, v in enumerate(seq):
        budget = check_int(v, f"plan field block_budget_bits[{b}]", 0, MAX_BLOCK_BITS)
        total = sum(bits[d] for d in blocks[b])
        if trees is None and budget != total:
            raise PlanError(
                f"plan field block_budget_bits[{b}] = {budget} but the bits of blocks[{b}] "
                f"sum to {total}; the plan is inconsistent, rebuild it"
            )
        out.append(budget)
    return tuple(out)


def _block_radix(blocks, bits, trees) -> tuple[tuple[int, ...], ...]:
    return tuple(
        tuple((len(trees[d]) if trees is not None else 1) << bits[d] for d in b) for b in blocks
    )


def _check_bin_ids(blocks, bits, trees) -> None:
    for b, radix in enumerate(_block_radix(blocks, bits, trees)):
        need = sum((r - 1).bit_length() for r in radix)
        if need > MAX_BIN_ID_BITS:
            raise PlanError(
                f"plan field trees: the bin ids of blocks[{b}] need {need} bits, more than "
                f"{MAX_BIN_ID_BITS}; split the block or coarsen its trees"
            )


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class CodecPlan:
    """Blocks and partition bits of a latent space of ``dim`` dimensions.

    Fields (all immutable; validated and normalized on construction, PlanError if invalid):
        dim: number of latent dimensions ``d``.
        block_bits: target information per block (bits).
        strategy: allocation strategy, one of :data:`PLAN_STRATEGIES`.
        seed: plan seed in ``[0, 2^64)``.
        collapse_threshold: bits below which a dimension is collapsed.
        collapsed_block_size: most collapsed dimensions per block (see
            :func:`recray.plan.blocks.split_blocks` for why they are chunked).
        max_bits_per_dim: upper bound of every ``bits[d]``.
        mi_bits: per-dimension information (bits), length ``d``.
        blocks: dimension indices of each block, ascending inside a block; together they
            partition ``range(d)``. The collapsed dims, if any, form the last blocks.
        bits: partition bits ``b_d`` per dimension, length ``d``.
        block_budget_bits: per block, ``B = sum of bits of its dims``, ``B <= 62``; for tree
            partitions the target of the trees' mean code length (see ``partition``).
        budget_offset_bits: (version 2) bits added to every informative block's budget
            over its rounded information (negative: fewer partition bits, a larger local
            index; the learned laws make that cheap). Default 0.
        index_laws: (version 2) learned laws of the blocks' coded symbols
            (:class:`recray.plan.laws.IndexLaws`), or None (the fixed codes).
        partition: (version 3) ``"complete"`` (``2^bits[d]`` intervals of equal prior
            mass) or ``"tree"``: dimension ``d`` is split into the leaves of ``trees[d]``
            (leaf levels, recray.rec.trees), refined by ``bits[d]`` levels (0 in plans
            :func:`build_plan` makes).
        trees: (version 3) one tree per dimension for ``partition == "tree"``, else None.
    """

    dim: int
    block_bits: float
    strategy: str
    seed: int
    collapse_threshold: float
    collapsed_block_size: int
    max_bits_per_dim: int
    mi_bits: tuple[float, ...]
    blocks: tuple[tuple[int, ...], ...]
    bits: tuple[int, ...]
    block_budget_bits: tuple[int, ...]
    budget_offset_bits: int = 0
    index_laws: IndexLaws | None = None
    partition: str = "complete"
    trees: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        dim = check_int(self.dim, "plan field dim", 1)
        cap = check_int(self.max_bits_per_dim, "plan field max_bits_per_dim", 1)
        if self.strategy not in PLAN_STRATEGIES:
            raise PlanError(
                f"plan field strategy {self.strategy!r} is not a plan strategy; "
                f"valid: {PLAN_STRATEGIES}"
            )
        blocks = _norm_blocks(self.blocks, dim)
        bits = _norm_bits(self.bits, dim, cap)
        if self.partition not in PARTITIONS:
            raise PlanError(
                f"plan field partition is {self.partition!r}; valid: {', '.join(PARTITIONS)}"
            )
        trees = None
        if self.partition == "tree":
            if self.trees is None:
                raise PlanError("plan field trees is missing: a tree partition needs one per dim")
            trees = check_plan_trees(self.trees, dim, cap)
            for d in range(dim):
                if max(trees[d]) + bits[d] > cap:
                    raise PlanError(
                        f"plan field bits[{d}] = {bits[d]} refines trees[{d}] below level "
                        f"max_bits_per_dim = {cap}"
                    )
            _check_bin_ids(blocks, bits, trees)
        elif self.trees is not None:
            raise PlanError("plan field trees is set but partition is 'complete'")
        values = {
            "dim": dim,
            "block_bits": check_positive_float(self.block_bits, "plan field block_bits"),
            "seed": check_int(self.seed, "plan field seed", 0, 2**64 - 1),
            "collapse_threshold": check_positive_float(
                self.collapse_threshold, "plan field collapse_threshold"
            ),
            "collapsed_block_size": check_int(
                self.collapsed_block_size, "plan field collapsed_block_size", 0
            ),
            "max_bits_per_dim": cap,
            "mi_bits": _norm_mi(self.mi_bits, dim),
            "blocks": blocks,
            "bits": bits,
            "block_budget_bits": _norm_budgets(self.block_budget_bits, blocks, bits, trees),
            "partition": self.partition,
            "trees": trees,
        }
        values["budget_offset_bits"] = check_int(
            self.budget_offset_bits,
            "plan field budget_offset_bits",
            -MAX_BLOCK_BITS,
            MAX_BLOCK_BITS,
        )
        laws = self.index_laws
        if laws is not None and not isinstance(laws, IndexLaws):
            laws = IndexLaws.from_dict(laws)
        if laws is not None:
            laws.check_plan(_block_radix(blocks, bits, trees))
        values["index_laws"] = laws
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------------- accessors

    @property
    def n_blocks(self) -> int:
        """Number of blocks (the collapsed block included)."""
        return len(self.blocks)

    @property
    def max_block_size(self) -> int:
        """Largest number of dimensions in one block."""
        return max(len(b) for b in self.blocks)

    def _check_block(self, i) -> int:
        return check_int(i, "block index", 0, self.n_blocks - 1)

    def block_dims(self, i: int) -> np.ndarray:
        """Dimension indices of block ``i``: int64 array ``(n_i,)``, ascending."""
        return np.asarray(self.blocks[self._check_block(i)], dtype=np.int64)

    @property
    def block_info_bits(self) -> tuple[float, ...]:
        """Information of every block, ``I_b = fsum(mi_bits of its dims)`` (bits): what the
        decoder knows of the block's expected KL (exact, the same on every machine)."""
        return tuple(math.fsum(self.mi_bits[d] for d in b) for b in self.blocks)

    @property
    def block_radix(self) -> tuple[tuple[int, ...], ...]:
        """Intervals of every dimension of every block (block order): ``2^bits[d]`` for a
        complete partition, ``leaves(trees[d]) * 2^bits[d]`` for a tree."""
        return _block_radix(self.blocks, self.bits, self.trees)

    def block_bits_array(self, i: int) -> np.ndarray:
        """Partition bits of block ``i``'s dims, in :meth:`block_dims` order: int64 ``(n_i,)``."""
        return np.asarray([self.bits[d] for d in self.blocks[self._check_block(i)]], np.int64)

    # ----------------------------------------------------------------- serialization

    @property
    def version(self) -> int:
        """The lowest version whose fields the plan uses (1 when the version 2 and 3 fields
        are at their defaults: then written as before)."""
        if self.partition != "complete":
            return 3
        return 2 if self.budget_offset_bits or self.index_laws is not None else 1

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict: ``format``, ``version`` and every field (tuples as lists); the
        version 2 fields only in a version 2 plan."""
        out: dict[str, Any] = {"format": PLAN_FORMAT, "version": self.version}
        for name in _FIELDS:
            value = getattr(self, name)
            if name == "blocks":
                value = [list(b) for b in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        if self.version >= 2:
            out["budget_offset_bits"] = self.budget_offset_bits
            out["index_laws"] = None if self.index_laws is None else self.index_laws.to_dict()
        if self.version >= 3:
            out["partition"] = self.partition
            out["trees"] = [list(t) for t in self.trees]
        return out

    def with_laws(self, laws: IndexLaws | None) -> CodecPlan:
        """The same plan with ``index_laws`` replaced."""
        return dataclasses.replace(self, index_laws=laws)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CodecPlan:
        """Inverse of :meth:`to_dict`; validates everything, PlanError naming the field."""
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a JSON object / mapping, got {type(d).__name__}")
        if d.get("format") != PLAN_FORMAT:
            raise PlanError(
                f"plan field format is {d.get('format')!r}, expected {PLAN_FORMAT!r}: "
                "this is not a recray codec plan"
            )
        version = d.get("version")
        if type(version) is not int or version not in PLAN_FORMAT_VERSIONS:
            raise PlanError(
                f"plan field version is {version!r}; this recray reads plan versions "
                f"{PLAN_FORMAT_VERSIONS}: rebuild the plan or use the matching recray"
            )
        fields = (
            _FIELDS + (_V2_FIELDS if version >= 2 else ()) + (_V3_FIELDS if version >= 3 else ())
        )
        missing = [k for k in fields if k not in d]
        if missing:
            raise PlanError(f"plan is missing field(s) {missing}")
        unknown = sorted(set(d) - set(fields) - {"format", "version"})
        if unknown:
            raise PlanError(f"plan has unknown field(s) {unknown} for version {version}")
        plan = cls(**{k: d[k] for k in fields})
        if plan.version != version:
            raise PlanError(
                f"plan field version is {version} but its fields make it a version "
                f"{plan.version} plan (a version 2 plan uses budget_offset_bits or index_laws, "
                "a version 3 plan tree partitions)"
            )
        return plan

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces, floats as ``repr`` (exact round trip)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, s: str | bytes) -> CodecPlan:
        """Parse and validate a plan written by :meth:`to_json`."""
        try:
            d = json.loads(s)
        except (TypeError, ValueError) as exc:
            raise PlanError(f"plan JSON cannot be parsed: {exc}") from None
        return cls.from_dict(d)

    def checksum(self) -> str:
        """SHA-256 hex digest of :meth:`to_json` (UTF-8): identifies the plan."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- building

#: Default cap of the per-block budget rule "kl": ``N_b <= 2^20`` (``rec.encode`` takes at
#: most ``2^24`` candidates per block).
KL_SAMPLES_MAX_BITS = 20
_KL_SAMPLES_LIMIT_BITS = 24


def kl_sample_bits(
    plan: CodecPlan, offset_bits: float = 0.0, max_bits: int = KL_SAMPLES_MAX_BITS
) -> tuple[int, ...]:
    """``log2 N_b`` of the fixed-budget rule ``"kl"``: block ``b`` searches
    ``N_b = 2^e_b`` candidates with ``e_b = min(max(ceil(I_b + offset_bits), 0), max_bits)``,
    ``I_b`` the block's information (:attr:`CodecPlan.block_info_bits`, its expected KL),
    so a fixed-budget method spends about ``2^KL`` per block, as RECOMBINER's beta-tuned
    blocks do (ORC's bias falls once ``log2 N`` exceeds the KL). Collapsed blocks get
    ``N_b = 1`` (0 index bits). Public information only: the decoder derives the same."""
    if isinstance(offset_bits, bool) or not isinstance(offset_bits, numbers.Real):
        raise PlanError(f"kl samples offset_bits must be a number; got {offset_bits!r}")
    off = float(offset_bits)
    if not math.isfinite(off) or abs(off) > MAX_BLOCK_BITS:
        raise PlanError(
            f"kl samples offset_bits = {off} must be finite, in [-{MAX_BLOCK_BITS}, "
            f"{MAX_BLOCK_BITS}]"
        )
    cap = check_int(max_bits, "kl samples max_bits", 0, _KL_SAMPLES_LIMIT_BITS)
    return tuple(min(max(math.ceil(i + off), 0), cap) for i in plan.block_info_bits)


def block_budget(mi_block: np.ndarray, cap_total: int) -> int:
    """``min(floor(sum(mi) + 0.5), cap_total)``: the block's information rounded half up."""
    return min(math.floor(math.fsum(mi_block.tolist()) + 0.5), cap_total)


def build_plan(
    mi_bits,
    block_bits: float,
    *,
    strategy: str = "mi",
    seed: int = 0,
    collapse_threshold: float = 0.01,
    collapsed_block_size: int = COLLAPSED_BLOCK_SIZE,
    max_bits_per_dim: int = 24,
    budget_offset_bits: int = 0,
    index_laws: IndexLaws | None = None,
    partition: str = "complete",
) -> CodecPlan:
    """Blocks and partition bits for per-dimension information ``mi_bits`` (bits, ``(d,)``).

    Blocks come from :func:`split_blocks` (``block_bits`` bits of information each, then
    the collapsed dims in blocks of at most ``collapsed_block_size``). Block ``i``'s budget is
    ``B_i = min(floor(sum(mi of its dims) + 0.5), 62, max_bits_per_dim * n_i)``, and 0 for
    the collapsed block (``budget_offset_bits`` is added to every informative block's ``B_i``,
    clipped to ``[1, cap]``); its bits are ``allocate_bits(mi of its dims, B_i, strategy,
    seed=derive_block_seed(seed, i))``. ``strategy`` is one of :data:`PLAN_STRATEGIES`.
    ``partition="tree"`` (strategy ``"mi"`` only) gives each informative block's dimensions
    trees instead (:func:`recray.plan.trees.block_trees`: leaves about equally wide where
    the posteriors sit, their mean code length closest to ``B_i``) and no bits; collapsed
    dimensions keep the trivial tree.

    Deterministic: the same arguments give the same plan (and :meth:`CodecPlan.checksum`)
    on every machine. Raises :class:`PlanError` on invalid input.
    """
    strategy = check_strategy(strategy)
    if strategy == "collapsed-only":
        raise PlanError(
            "strategy 'collapsed-only' is an ablation of allocate_bits inside one block; "
            "build_plan separates collapsed dimensions into their own block, so use "
            f"one of {PLAN_STRATEGIES}"
        )
    if partition not in PARTITIONS:
        raise PlanError(f"partition must be one of {PARTITIONS}; got {partition!r}")
    if partition == "tree" and strategy != "mi":
        raise PlanError("tree partitions are built from the dimensions' information: strategy 'mi'")
    mi = check_mi(mi_bits)
    seed = check_seed(seed)
    threshold = check_threshold(collapse_threshold)
    cap = check_int(max_bits_per_dim, "max_bits_per_dim", 1)
    blocks = split_blocks(
        mi,
        block_bits,
        seed=seed,
        collapse_threshold=threshold,
        collapsed_block_size=collapsed_block_size,
    )
    bits = np.zeros(mi.shape[0], dtype=np.int64)
    trees = [(0,)] * mi.shape[0] if partition == "tree" else None
    budgets = []
    for i, dims in enumerate(blocks):
        mi_blk = mi[dims]
        collapsed = bool(np.all(mi_blk < threshold))
        cap_blk = min(MAX_BLOCK_BITS, cap * len(dims))
        budget = 0 if collapsed else block_budget(mi_blk, cap_blk)
        if budget and budget_offset_bits:
            budget = min(max(1, budget + int(budget_offset_bits)), cap_blk)
        budgets.append(budget)
        if trees is not None:
            level = min(cap, TREE_MAX_LEVEL)
            kw = {"max_level": level, "collapse_threshold": threshold}
            for d, t in zip(dims, block_trees(mi_blk, budget, **kw), strict=True):
                trees[int(d)] = t
            continue
        kw = {"seed": derive_block_seed(seed, i), "collapse_threshold": threshold}
        bits[dims] = allocate_bits(mi_blk, budget, strategy, max_bits_per_dim=cap, **kw)
    return CodecPlan(
        dim=int(mi.shape[0]),
        block_bits=float(block_bits),
        strategy=strategy,
        seed=seed,
        collapse_threshold=threshold,
        collapsed_block_size=int(collapsed_block_size),
        max_bits_per_dim=cap,
        mi_bits=tuple(float(v) for v in mi),
        blocks=tuple(tuple(b) for b in blocks),
        bits=tuple(int(b) for b in bits),
        block_budget_bits=tuple(budgets),
        budget_offset_bits=int(budget_offset_bits),
        index_laws=index_laws,
        partition=partition,
        trees=None if trees is None else tuple(trees),
    )
