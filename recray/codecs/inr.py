"""``recray codec inr``: lossy 32x32 RGB tiles with a Bayesian INR, its weights sent by REC.

RECOMBINER-style (He et al., ICLR 2024; see :mod:`recray.models.inr`). Encoding a batch
of tiles:

1. **analysis**: fit every tile's posterior over the INR latent (INR weights in the
   reparameterized space plus the positional grid, 3,779 dims) under the shipped prior of
   the chosen rate point (:func:`recray.models.inr.fit`);
2. **progressive REC** (:func:`recray.codecs.base.encode_progressive`): per tile, the
   uncoded blocks of largest KL go first; after each stage the uncoded dimensions are
   fine-tuned with the coded ones pinned to their samples;
3. the block indices become one message per tile (:mod:`recray.format.messages`), written
   as a recray run (plan, prior, Parquet parts with a CRC per row, manifest). There is no
   tail: the decoder rebuilds the INR from the decoded latent and renders the tile
   (:func:`recray.models.inr.render_uint8`, float64, one tile at a time).

**Coding settings** (``method`` presets, :data:`PRESETS`; same model and fit):

* ``orc-16``: RECOMBINER's baseline: ORC, 16-bit blocks (plan blocks of ~16 bits of
  information, collapsed dims spread over them), ``2^16`` candidates, a fixed 16-bit index;
* ``sp-orc``: space-partitioned ORC on plan blocks of ~20 bits of information (more than
  ``2^16`` candidates could search without partitions) with ``budget_offset_bits = -12``
  (``B`` = the block's information - 12, about 8 partition bits on its most informative
  dims, so each of the ``2^B`` bins holds hundreds of the ``2^16`` arrivals and the local
  index keeps ORC's arrival order) and **learned index laws** (the local index's class and
  the bins under laws estimated on training tiles, shipped in ``<model>_laws.json``,
  :func:`learned_laws`). Earlier presets: the same on 16-bit blocks, and before it 32-bit
  blocks with ``B`` = the information and fixed codes; their runs still decode (the header
  holds their plan);
* ``sp-pfr``: space-partitioned PFR (exact) with 32-bit blocks; blocks it cannot code
  within ``max_steps`` fall back to SP-ORC (counted in ``fallback_blocks``).

Ray: with ``engine="ray"`` (the default) every shard of tiles (``shard_rows`` tiles) is one
task of recray's actor pool (:func:`recray.pipeline.parts.map_parts`, the runner of every
Ray stage: each actor loads the model once; retries, error lines and quiet logs as
``recray compress``); ``engine="local"`` codes the shards in this process. The bytes do not
depend on it. A stopped run continues with ``resume=True`` (the committed shards are kept).

Guarantees and requirements: decoding needs the same weights (SHA-256 in the run header);
a message names its tile when it fails its CRC or does not decode. The latent the decoder
regenerates is the same bits on every machine (RNG recipe 2: portable arithmetic). The
rendering is float64 torch with a fixed op order: on the same torch build and CPU code path
it is bit-identical to the encoder's reconstruction; on another machine (another torch
build, CPU family or kernel path) its last bits may differ, so an 8-bit pixel whose value
sits at a rounding boundary can come out 1 level off. This codec is lossy, so that is
allowed and not refused: PSNR agrees within 0.01 dB (tested by decoding under other CPU
code paths in ``tests/test_inr.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, replace

import numpy as np

from recray.codecs.base import LatentCodec, Posterior, decode_items, encode_progressive
from recray.errors import FormatError, InputError

# pyarrow, the run format and the plan are imported where used: the command line builds
# its parser from this module's constants without paying for them

CODEC_NAME = "inr-recombiner"
CODEC_VERSION = 1
PIXELS = 1024
METHODS = ("orc-16", "sp-orc", "sp-pfr")
STRATEGIES = ("mi", "random", "collapsed-only")
LAWS = ("fixed", "learned")
DEFAULT_RATE = 1.5
#: Training tiles the learned index laws are estimated on (``LAW_TRAIN_SEED``'s random pick
#: of the train split; never a test tile).
LAW_TRAIN_TILES = 32
LAW_TRAIN_SEED = 1


@dataclass(frozen=True)
class Settings:
    """Coding settings of one run (written to the run header)."""

    method: str = "sp-orc"
    block_bits: float | None = None  # None: the method's preset (PRESETS)
    strategy: str = "mi"
    n_samples: int = 1 << 16
    max_steps: int = 1 << 16
    seed: int = 0
    fit_steps: int = 1000  # FIT_PRESETS["default"]
    refine_steps: int = 30
    stages: int = 4
    lr: float = 2e-2
    # the fit's cosine learning-rate schedule ends at lr_end (None: constant lr), with
    # fit_samples Monte Carlo samples per step (the analysis fit and the fine-tuning)
    lr_end: float | None = None
    fit_samples: int = 1
    # per-block beta annealing at fit time (RECOMBINER): > 0: each plan block's KL is
    # steered to anneal x its information sum I_d (the default, 1: every block near its
    # budget; measured in docs/INR.md); 0 = off (one beta, the rate point's)
    anneal: float = 1.0
    # partition bits of every SP block over its rounded information (negative: fewer bins,
    # a larger local index), and the index code: "fixed" (raw bins, universal code of the
    # local index) or "learned" (laws estimated on training tiles, shipped next to the
    # weights: see learned_laws)
    budget_offset_bits: int | None = None  # None: the method's preset
    laws: str | None = None  # None: the method's preset

    def resolved(self) -> Settings:
        """These settings with every ``None`` replaced by the method's preset
        (:data:`PRESETS`)."""
        if self.method not in METHODS:
            raise InputError(f"method must be one of {METHODS}; got {self.method!r}")
        if not (math.isfinite(self.anneal) and self.anneal >= 0):
            raise InputError(
                f"anneal must be a finite factor >= 0 (0: annealing off); got {self.anneal!r}"
            )
        preset = PRESETS[self.method]
        return replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})


#: Analysis-fit presets (Adam steps, learning rate and its schedule, Monte Carlo samples per
#: step), chosen from the PSNR-against-steps curve of the ``inr2`` 1.5 model on 8 held-out
#: train tiles (``jobs/inr_fit_curve.py``, ``docs/figures/inr_fit_curve_1p5.json``,
#: docs/INR.md): a constant learning rate beat the cosine schedule at 300 and 1,000 steps,
#: and 1,000 steps at 2e-2 came within 0.3 dB of 2,000 at 1e-2. ``"default"`` is
#: :class:`Settings`' own; ``"fast"`` is the 300-step fit of the first models (about a third
#: of the fit time, about 2.5 dB lower on the curve). ``"long"`` doubles the default's steps:
#: with per-block annealing the fit spends its second half steering each block's KL, and on
#: the annealed curve (``docs/figures/inr_fit_curve_anneal_*.json``) 2,000 steps gained
#: 0.95-1.9 dB over 1,000 at about the same KL, for about twice the fit time; coded, on 30
#: test tiles, 0.27-0.70 dB at about the same bits (``docs/figures/inr2_long_30tiles.json``).
FIT_PRESETS = {
    "fast": {"fit_steps": 300, "lr": 1e-2, "lr_end": None, "fit_samples": 1},
    "default": {"fit_steps": 1000, "lr": 2e-2, "lr_end": None, "fit_samples": 1},
    "long": {"fit_steps": 2000, "lr": 2e-2, "lr_end": None, "fit_samples": 1},
}


#: Per method, the block size (bits of information), the partition-bit offset and the index
#: code that ``None`` settings take. Runs written before a preset changed still decode: the
#: run header holds their plan (blocks, bits, laws) and resolved settings. ``sp-orc``'s
#: blocks hold 20 bits of information (16 before): on the 100 test tiles at the 4 rate point
#: that took SP-ORC's bits at ORC-16's PSNR from -2.3% to -5.8%, among block sizes,
#: candidate counts and partition offsets swept there (docs/INR.md, "SP-ORC's plan").
PRESETS = {
    "orc-16": {"block_bits": 16.0, "budget_offset_bits": 0, "laws": "fixed"},
    "sp-orc": {"block_bits": 20.0, "budget_offset_bits": -12, "laws": "learned"},
    "sp-pfr": {"block_bits": 32.0, "budget_offset_bits": 0, "laws": "fixed"},
}


class INRCodec(LatentCodec):
    """The INR codec's parts: fit (analysis), fine-tune (refine), render (synthesis)."""

    name = CODEC_NAME
    version = CODEC_VERSION

    def __init__(self, model, settings: Settings = Settings(), plan=None, device=None):
        from recray.models.inr import pick_device

        self.model = model
        self.s = settings
        self.plan = plan
        self.device = pick_device(device)  # the fits' device: a CUDA GPU when torch sees one
        self._anneal = None

    def _block_beta(self):
        """A fresh :class:`~recray.models.inr.BlockBeta` of the plan (``None``: no
        annealing)."""
        from recray.models.inr import BlockBeta

        if self.s.anneal <= 0:
            return None
        if self.plan is None:
            raise InputError("per-block beta annealing (anneal > 0) needs the codec plan")
        block_of = np.empty(self.plan.dim, np.int64)
        mi = np.asarray(self.plan.mi_bits, np.float64)
        target = np.empty(self.plan.n_blocks)
        for b, dims in enumerate(self.plan.blocks):
            block_of[list(dims)] = b
            target[b] = self.s.anneal * mi[list(dims)].sum()
        return BlockBeta(block_of, target, warmup=self.s.fit_steps // 2)

    def analysis(self, items, ids=None) -> Posterior:
        """The fit of every tile; each tile's noise is keyed by the run seed and its id
        (:func:`recray.models.inr.tile_seed`), so its posterior, and so its bytes, do not
        depend on the other tiles of the batch."""
        from recray.models.inr import fit

        self._anneal = self._block_beta()
        mu, sigma = fit(
            self.model,
            items,
            steps=self.s.fit_steps,
            lr=self.s.lr,
            lr_end=self.s.lr_end,
            samples=self.s.fit_samples,
            seed=self.s.seed,
            ids=ids,
            anneal=self._anneal,
            device=self.device,
        )
        return Posterior(mu, sigma)

    def refine(self, items, posterior, coded, z, ids=None):
        from recray.models.inr import fit

        if self.s.refine_steps <= 0:
            return posterior
        mu, sigma = fit(
            self.model,
            items,
            steps=self.s.refine_steps,
            lr=self.s.lr,
            lr_end=self.s.lr_end,
            samples=self.s.fit_samples,
            init=(posterior.mu, posterior.sigma),
            fixed=coded,
            values=z,
            seed=self.s.seed,  # each tile's stream: its id and how many dims are pinned
            ids=ids,
            anneal=self._anneal,
            device=self.device,
        )
        return Posterior(mu, sigma)

    def synthesis(self, z, decoders=None, ids=None):
        from recray.models.inr import render_uint8

        return render_uint8(self.model, z)


# ------------------------------------------------------------------------ model files
def model_files(rate: float, weights: str | None = None) -> tuple[str, str]:
    """``(weights.npz, prior.json)`` of a rate point's shipped model (the newest of
    :data:`recray.models.inr.DEFAULT_FAMILIES` that ships it), or of explicit ``weights``."""
    from recray.models.inr import shipped_rates, weights_path

    if weights is None:
        rates = shipped_rates()
        if float(rate) not in rates:
            raise InputError(
                f"--rate {rate:g} has no shipped INR prior; shipped rate points "
                f"(bpp): {', '.join(f'{r:g}' for r in rates) or 'none'}"
            )
        weights = str(weights_path(rate))
    return weights, os.path.splitext(weights)[0] + "_prior.json"


def run_model_id(codec: dict) -> str:
    """The model id a run was coded with (its header's ``codec.model_id``; runs written
    before model ids were recorded used the first family's weights of their rate point,
    ``inr_<R>``)."""
    from recray.models.inr import LEGACY_FAMILY, model_id

    mid = codec.get("model_id")
    if mid is None:
        return model_id(float(codec["rate_point_bpp"]), LEGACY_FAMILY)
    if not isinstance(mid, str):
        raise FormatError(f"run header field codec.model_id must be a string; got {mid!r}")
    return mid


def load_model(weights: str):
    from recray.models.inr import load_inr

    return load_inr(weights)


def make_plan(prior, s: Settings):
    """The codec plan of ``s`` under ``prior`` (no index laws), and the allocation used."""
    from recray.plan import build_plan
    from recray.plan.allocation import allocate_bits, derive_block_seed

    s = s.resolved()
    if s.strategy not in STRATEGIES:
        raise InputError(f"strategy must be one of {STRATEGIES}; got {s.strategy!r}")
    if s.laws not in LAWS:
        raise InputError(f"laws must be one of {LAWS}; got {s.laws!r}")
    sp = s.method != "orc-16"
    if not sp and (s.laws != "fixed" or s.budget_offset_bits):
        raise InputError(
            "orc-16 is the fixed 16-bit index baseline: budget_offset_bits and learned laws "
            "are SP settings"
        )
    bb = s.block_bits
    # ORC (and the ablation's common layout): collapsed dims spread over the blocks
    spread = (not sp) or s.strategy != "mi" or s.method == "sp-orc"
    strategy = "mi" if s.strategy == "collapsed-only" else s.strategy
    plan = build_plan(
        prior.mi_bits,
        bb,
        strategy=strategy,
        seed=s.seed,
        collapsed_block_size=0 if spread else 8,
        budget_offset_bits=int(s.budget_offset_bits),
    )
    if s.strategy == "collapsed-only":
        bits = np.zeros(plan.dim, np.int64)
        mi = np.asarray(plan.mi_bits)
        for i, dims in enumerate(plan.blocks):
            bits[list(dims)] = allocate_bits(
                mi[list(dims)],
                plan.block_budget_bits[i],
                "collapsed-only",
                seed=derive_block_seed(s.seed, i),
                collapse_threshold=plan.collapse_threshold,
                max_bits_per_dim=plan.max_bits_per_dim,
            )
        plan = replace(plan, bits=tuple(int(b) for b in bits))
    return plan, s.strategy


def make_spec(prior, s: Settings, index_laws=None):
    """The :class:`~recray.pipeline.codec.CodecSpec` of ``s`` under ``prior`` (a
    :class:`~recray.latents.io.Prior`), and the allocation actually used. With
    ``s.laws == "learned"``, ``index_laws`` (:func:`learned_laws`) go into the plan."""
    from recray.pipeline.codec import CodecSpec

    s = s.resolved()
    plan, allocation = make_plan(prior, s)
    if s.laws == "learned":
        if index_laws is None:
            raise InputError("laws='learned' needs the index laws (see learned_laws)")
        plan = plan.with_laws(index_laws)
    method = {"orc-16": "orc"}.get(s.method, s.method)
    spec = CodecSpec(
        plan=plan,
        method=method,
        seed=s.seed,
        prior_mu=prior.mu,
        prior_sigma=prior.sigma,
        n_samples=s.n_samples,
        max_steps=s.max_steps,
        on_unbounded="orc" if method == "sp-pfr" else "error",
    )
    return spec, allocation


# ------------------------------------------------------------------------ index laws
def laws_path(weights: str) -> str:
    """The shipped learned index laws of the weights (``<stem>_laws.json``): a JSON object
    from :func:`laws_key` to serialized :class:`recray.plan.laws.IndexLaws`."""
    return os.path.splitext(str(weights))[0] + "_laws.json"


def laws_key(plan, s: Settings, model_sha256: str) -> str:
    """What a set of laws was estimated for: the model, the plan (without laws) and every
    setting that changes the coded indices (method, candidates, fit and coding schedule)."""
    s = s.resolved()
    fit = (
        f"N={s.n_samples}|steps={s.max_steps}|seed={s.seed}|fit={s.fit_steps}|"
        f"refine={s.refine_steps}|stages={s.stages}|lr={s.lr!r}|anneal={s.anneal!r}"
    )
    if s.lr_end is not None or s.fit_samples != 1:  # (keys of earlier laws stay as they were)
        fit += f"|lr_end={s.lr_end!r}|samples={s.fit_samples}"
    return f"{model_sha256[:16]}|{s.method}|{fit}|plan={plan.with_laws(None).checksum()[:16]}"


def pooled_laws(bins, local, block_bits, *, method: str, source: str):
    """Index laws from the coded indices of ``n`` training tiles (``bins``, ``local`` int64
    ``(n, n_blocks)``), pooled over the blocks: one class law of the local index for every
    block, and one interval law per partition width ``b`` shared by every dimension with
    ``b`` bits (a tile's latent holds a few thousand weakly informative dimensions, so
    per-block tables from a few dozen tiles would be noise). Both come from
    :func:`recray.plan.laws.estimate_laws`, the pooled symbols given to it as the items of
    a one-block plan, so the message codec reads them unchanged."""
    from recray.plan.laws import MAX_LAW_BITS, BlockLaw, IndexLaws, estimate_laws

    bins = np.asarray(bins, np.int64)
    local = np.asarray(local, np.int64)
    if bins.ndim != 2 or bins.shape != local.shape or bins.shape[1] != len(block_bits):
        raise InputError("pooled_laws: bins and local must be (n_tiles, n_blocks) of the plan")
    kw = dict(method=method, source=source)
    # the class law: every (tile, block) one item of a block without partition bits
    flat = local.reshape(-1, 1)
    class_freqs = estimate_laws(np.zeros_like(flat), flat, [[]], **kw).blocks[0].class_freqs
    # the interval laws: every (tile, block, dimension with b bits) one item of a block of
    # one b-bit dimension
    raw = [max((int(b) for b in bits), default=0) > MAX_LAW_BITS for bits in block_bits]
    symbols: dict[int, list] = {}
    for k, bits in enumerate(block_bits):
        if raw[k]:
            continue
        shift = 0
        for b in (int(b) for b in bits):
            if b > 0:
                symbols.setdefault(b, []).append((bins[:, k] >> shift) & ((1 << b) - 1))
            shift += b
    bin_law = {}
    for b, parts in symbols.items():
        kd = np.concatenate(parts)[:, None]
        bin_law[b] = estimate_laws(kd, np.ones_like(kd), [[b]], **kw).blocks[0].bin_freqs[0]
    blocks = tuple(
        BlockLaw(
            class_freqs,
            () if raw[k] else tuple(bin_law[int(b)] for b in bits if int(b) > 0),
        )
        for k, bits in enumerate(block_bits)
    )
    return IndexLaws(method, source, blocks)


def law_training_tiles(n: int, seed: int = LAW_TRAIN_SEED):
    """``(tiles, indices)``: ``n`` tiles of the train split picked at random (``seed``)."""
    from recray.data.tiles import load_tiles

    t = load_tiles("train")
    idx = np.sort(np.random.default_rng(seed).choice(len(t), size=n, replace=False))
    return np.ascontiguousarray(t.images[idx]), idx


def fit_laws(model, prior, s: Settings, *, tiles: int | None = None, progress=None):
    """Estimate the index laws of the settings ``s`` on ``tiles`` training tiles (never the
    test split; default :data:`LAW_TRAIN_TILES`): they are coded exactly as :func:`compress`
    codes tiles (same model, fit, progressive schedule and spec, without laws) and their
    indices counted (:func:`pooled_laws`)."""
    x, idx = law_training_tiles(tiles or LAW_TRAIN_TILES)
    s = s.resolved()
    spec, _ = make_spec(prior, replace(s, laws="fixed"))
    codec = INRCodec(model, s, plan=spec.plan)
    from recray.format.messages import decode_blocks

    bins, local = [], []
    for a in range(0, len(x), 8):
        ids = np.arange(a, min(a + 8, len(x)))
        enc = encode_progressive(codec, x[ids], ids, spec, stages=s.stages)
        b, n_, _ = decode_blocks(enc.messages, spec.layout)
        bins.append(b)
        local.append(n_)
        if progress:
            progress(len(ids))
    plan = spec.plan
    return pooled_laws(
        np.concatenate(bins),
        np.concatenate(local),
        [[plan.bits[d] for d in blk] for blk in plan.blocks],
        method={"orc-16": "orc"}.get(s.method, s.method),
        source=f"inr train tiles {idx.tolist()} (seed {LAW_TRAIN_SEED}), pooled over blocks",
    )


def learned_laws(weights: str, model, prior, s: Settings, *, fit: bool = True):
    """``(laws, fit_seconds)`` for the settings ``s``: the shipped laws of the weights
    (:func:`laws_path`), else the user cache (``$XDG_CACHE_HOME/recray/laws``), else
    (``fit=True``) estimated now on training tiles (:func:`fit_laws`) and cached;
    ``(None, 0)`` when nothing is found and ``fit`` is false."""
    from recray.plan.laws import find_or_fit

    s = replace(s.resolved(), laws="learned")
    plan, _ = make_plan(prior, s)
    key = laws_key(plan, s, model.model_checksum)
    return find_or_fit(
        key, laws_path(weights), (lambda: fit_laws(model, prior, s)) if fit else None
    )


# ------------------------------------------------------------------------ input tiles
@dataclass(frozen=True)
class Tiles:
    """Tiles read from a file: ``images`` uint8 ``(n, 32, 32, 3)``, ``ids`` int64 ``(n,)``
    (the input position: the index in the ``.npy``, or in the sorted ``.png`` names) and the
    skipped ones (``rejects``, ``(position, file, reason)``; only with ``on_bad_item="skip"``)."""

    images: np.ndarray
    ids: np.ndarray
    rejects: tuple = ()


ON_BAD_ITEM = ("fail", "skip")


def read_tiles(path: str, *, on_bad_item: str = "fail") -> Tiles:
    """Tiles from a ``.npy`` file (uint8 ``(n, 32, 32, 3)``: valid or refused as a whole) or a
    directory of 32x32 PNGs (sorted by name). A PNG that cannot be read or is not 32x32 is an
    error naming it, or with ``on_bad_item="skip"`` left out and listed in ``rejects``."""
    if on_bad_item not in ON_BAD_ITEM:
        raise InputError(f"on_bad_item must be one of {ON_BAD_ITEM}; got {on_bad_item!r}")
    if os.path.isdir(path):
        from PIL import Image, UnidentifiedImageError

        names = sorted(n for n in os.listdir(path) if n.lower().endswith(".png"))
        if not names:
            raise InputError(f"{path!r} holds no .png tiles")
        out, ids, rejects = [], [], []
        for i, n in enumerate(names):
            try:
                with Image.open(os.path.join(path, n)) as im:
                    a = np.asarray(im.convert("RGB"))
                why = None if a.shape == (32, 32, 3) else f"is {a.shape[1]}x{a.shape[0]}, not 32x32"
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                why = f"cannot be read as a PNG ({str(exc).splitlines()[0]})"
            if why is None:
                out.append(a)
                ids.append(i)
            elif on_bad_item == "skip":
                rejects.append((i, n, why))
            else:
                raise InputError(f"tile {n!r} in {path!r} {why} (--on-bad-item skip leaves it out)")
        if not out:
            raise InputError(f"{path!r} holds no readable 32x32 .png tile")
        return Tiles(np.stack(out), np.asarray(ids, np.int64), tuple(rejects))
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"tiles {path!r} cannot be read as .npy: {exc}") from None
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1:] != (32, 32, 3):
        raise InputError(f"tiles {path!r} must be uint8 (n, 32, 32, 3); got {a.dtype} {a.shape}")
    return Tiles(a, np.arange(a.shape[0], dtype=np.int64))


# ------------------------------------------------------------------------ encode
def _encode_shard(model, s: Settings, spec, ids, tiles) -> dict:
    import pyarrow as pa

    from recray.format.run import crc32_of
    from recray.models.inr import psnr_db

    codec = INRCodec(model, s, plan=spec.plan)
    enc = encode_progressive(codec, tiles, ids, spec, stages=s.stages)
    recon = codec.synthesis(enc.z)
    msgs = enc.messages
    return {
        "id": pa.array(np.asarray(ids, np.int64)),
        "message": pa.array(msgs, pa.binary()),
        "nbits": pa.array(8 * np.fromiter(map(len, msgs), np.int64, len(msgs))),
        "crc32": pa.array(crc32_of(msgs)),
        "kl_bits": pa.array(enc.kl_bits),
        "steps": pa.array(enc.steps),
        "fallback_blocks": pa.array(enc.fallback_blocks),
        # the INR codec's plan does not use adaptive partitions (run format version 2 column)
        "adapted_blocks": pa.array(np.zeros(len(msgs), np.int32)),
        "psnr_db": pa.array(psnr_db(tiles, recon)),
        "analysis_kl_bits": pa.array(enc.analysis_kl_bits),
    }


@dataclass(frozen=True)
class _TileCoding:
    """Builds a shard coder (once per process or Ray actor: the model is loaded once);
    picklable, as :func:`recray.pipeline.parts.map_parts` needs."""

    weights: str
    settings: Settings
    spec: object
    model: object = None  # the model already loaded here (the local engine); None on Ray

    def __call__(self):
        model = _worker_model(self.model, lambda: load_model(self.weights))
        return lambda task: _encode_shard(model, self.settings, self.spec, *task)


def _worker_model(model, load):
    """The model a worker uses: ``model`` when the caller already loaded it in this process,
    else ``load()`` in a Ray actor, which then runs torch on one thread (actors share the
    node's cores)."""
    if model is not None:
        return model
    import torch

    torch.set_num_threads(1)
    return load()


def compress(
    tiles,
    out_dir: str,
    *,
    source: dict,
    rate: float = DEFAULT_RATE,
    settings: Settings = Settings(),
    weights: str | None = None,
    engine: str = "ray",
    ray_options=None,
    shard_rows: int = 8,
    resume: bool = False,
    progress=None,
) -> dict:
    """Code ``tiles`` into the run ``out_dir`` at the shipped rate point ``rate`` (bpp) or
    with explicit ``weights``; returns :func:`summary` plus timings, ``engine``, ``actors``
    and ``resumed_shards``.

    ``tiles``: uint8 ``(n, 32, 32, 3)`` (ids ``0..n-1``) or a :class:`Tiles` (its ids, and
    its skipped files written to the run's ``rejects.parquet``). ``source`` describes the
    input (split or file). ``engine="ray"`` codes one shard of ``shard_rows`` tiles per task
    on the actor pool of :func:`recray.pipeline.parts.map_parts` (``ray_options``: a
    :class:`~recray.pipeline.options.RayOptions`), ``"local"`` here; same bytes. ``resume``
    continues an unfinished run of the same input and settings, keeping its parts."""
    from recray.pipeline import parts

    if engine not in parts.ENGINES:
        raise InputError(f"engine must be one of {parts.ENGINES}; got {engine!r}")
    if not isinstance(tiles, Tiles):
        tiles = Tiles(tiles, np.arange(np.shape(tiles)[0], dtype=np.int64))
    t0 = time.perf_counter()
    import pyarrow as pa
    import torch

    from recray.format.run import RunWriter, part_schema
    from recray.latents.io import read_prior
    from recray.pipeline.driver import run_header
    from recray.pipeline.options import RayOptions
    from recray.pipeline.validate import reject_schema

    w, prior_file = model_files(rate, weights)
    model = load_model(w)
    prior = read_prior(prior_file)
    if prior.dim != model.cfg.dim:
        raise FormatError(
            f"prior {prior_file!r} has {prior.dim} dims; the model has {model.cfg.dim}"
        )
    settings = settings.resolved()
    index_laws, laws_s = None, 0.0
    if settings.laws == "learned":  # shipped (or cached) laws; fitted on training tiles if none
        index_laws, laws_s = learned_laws(w, model, prior, settings)
    spec, allocation = make_spec(prior, settings, index_laws)
    images, ids = tiles.images, tiles.ids
    n = images.shape[0]
    header = run_header(spec, prior, "int") | {
        "shard_rows": int(shard_rows),
        "codec": {
            "name": INRCodec.name,
            "version": INRCodec.version,
            "model_id": model.model_id,
            "model_sha256": model.model_checksum,
            "torch_version": torch.__version__,
            "rate_point_bpp": float(rate),
            "preset": settings.method,
            "allocation": allocation,
            "settings": {k: v for k, v in settings.__dict__.items()},
            "source": source,
            "tiles": int(n),
        },
    }
    schema = part_schema("int", prior.dim, False)
    for name in ("psnr_db", "analysis_kl_bits"):
        schema = schema.append(pa.field(name, pa.float64()))
    shards = [(k, a, min(a + shard_rows, n)) for k, a in enumerate(range(0, n, shard_rows))]
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    if tiles.rejects or not np.array_equal(ids, np.arange(n)):
        digest.update(np.ascontiguousarray(ids, np.int64).tobytes())
    fingerprint = {"tiles_sha256": digest.hexdigest()}
    rejects = None
    if tiles.rejects:
        rows, names, why = zip(*tiles.rejects, strict=True)
        rejects = pa.table(
            {
                "row": pa.array(rows, pa.int64()),
                "id": pa.array(rows, pa.int64()),
                "field": pa.array([f"file {f!r}" for f in names]),
                "reason": pa.array(why),
            },
            schema=reject_schema("int"),
        )
    opts = ray_options or RayOptions()
    coding = _TileCoding(w, settings, spec, model if engine == "local" else None)
    with RunWriter(
        out_dir, header, prior.to_json(), schema, fingerprint=fingerprint, resume=resume
    ) as writer:
        pending = [sh for sh in shards if sh[0] not in writer.committed]
        done = n - sum(b - a for _, a, b in pending)
        bar = progress(total=n, unit="tile", desc=f"inr {settings.method}") if progress else None
        if bar and done:
            bar.update(done)
        tasks = [(ids[a:b], images[a:b]) for _, a, b in pending]
        actors = 1
        with parts.session(engine, opts):
            if engine == "ray" and pending:  # as map_parts sizes its pool
                import ray

                cpus = int(ray.cluster_resources().get("CPU", 1))
                actors = min(opts.actors or max(1, cpus), len(pending))
            coded = parts.map_parts(coding, tasks, engine=engine, opts=opts)
            for (k, a, b), cols in zip(pending, coded, strict=True):
                # the skipped files go with the first shard (listed once, in rejects.parquet)
                writer.commit(k, pa.table(cols, schema=schema), rejects if k == 0 else None)
                if bar:
                    bar.update(b - a)
        if bar:
            bar.close()
        totals = writer.totals(len(shards))
        writer.publish(len(shards), totals)
    secs = time.perf_counter() - t0
    return summary(out_dir) | {
        "encode_seconds": secs - laws_s,
        "encode_s_per_tile": (secs - laws_s) / max(n - done, 1),
        "laws_fit_seconds": laws_s,
        "engine": engine,
        "actors": actors,
        "resumed_shards": len(shards) - len(pending),
        "rejects": len(tiles.rejects),
    }


def summary(run_dir: str) -> dict:
    """Bits per pixel from the bytes written (messages only; the run's plan and prior
    files are shared by all tiles and reported apart), PSNR of the encoder's own
    reconstruction, KL and steps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recray.format.run import Run

    run = Run.open(run_dir, verify_parts=False)
    codec = _codec_of(run)
    t = pa.concat_tables([pq.read_table(p) for p in run.part_paths()])
    n = t.num_rows
    payload = sum(len(m) for m in t.column("message").to_pylist())
    side = sum(os.path.getsize(os.path.join(run_dir, f)) for f in ("plan.json", "prior.json"))
    return {
        "run": run_dir,
        "method": codec["preset"],
        "allocation": codec["allocation"],
        "rate_point_bpp": codec["rate_point_bpp"],
        "tiles": n,
        "bpp": 8.0 * payload / (n * PIXELS),
        "payload_bytes": payload,
        "header_bytes": side,
        "psnr_db": float(np.mean(t.column("psnr_db").to_numpy())),
        "kl_bpp": float(np.mean(t.column("kl_bits").to_numpy())) / PIXELS,
        "analysis_kl_bpp": float(np.mean(t.column("analysis_kl_bits").to_numpy())) / PIXELS,
        "steps_per_tile": float(np.mean(t.column("steps").to_numpy())),
        "fallback_blocks_per_tile": float(np.mean(t.column("fallback_blocks").to_numpy())),
        "blocks": len(json.loads(json.dumps(run.header["plan"]["blocks"]))),
    }


def _codec_of(run) -> dict:
    codec = run.header.get("codec")
    if not isinstance(codec, dict) or codec.get("name") != CODEC_NAME:
        raise FormatError(f"{run.path!r} is not a recray codec inr run (no codec {CODEC_NAME!r})")
    if codec.get("version") != CODEC_VERSION:
        raise FormatError(
            f"{run.path!r}: codec version {codec.get('version')!r}; this recray "
            f"decodes version {CODEC_VERSION}"
        )
    return codec


# ------------------------------------------------------------------------ decode
def decompress(
    run_dir: str,
    out_dir: str,
    *,
    weights: str | None = None,
    batch_size: int = 64,
    engine: str = "local",
    ray_options=None,
    latents: bool = False,
    progress=None,
) -> dict:
    """Decode every tile of a run into ``out_dir/tile-NNNNN.png`` (NNNNN = tile id);
    returns ``{"tiles", "out", "decode_seconds"}`` and ``ids``/``images`` arrays (with
    ``latents``, also the decoded latents ``z``, float64 ``(n, dim)``: bit-identical on
    every machine, unlike the rendered pixels).
    ``engine="ray"`` decodes one part per task on the actor pool of
    :func:`recray.pipeline.parts.map_parts` (``ray_options``), ``"local"`` (the default)
    here: the same tiles either way."""
    from recray.format.run import Run
    from recray.pipeline import parts

    t0 = time.perf_counter()
    run = Run.open(run_dir)
    model = _model_for(run, weights)  # the right weights, checked before any work
    if os.path.exists(out_dir):
        raise InputError(f"output {out_dir!r} already exists; remove it or choose another --out")
    files = [p["file"] for p in run.manifest["parts"]]
    decoding = _TileDecoding(run_dir, weights, batch_size, model if engine == "local" else None)
    all_ids, all_tiles, all_z = [], [], []
    with parts.session(engine, ray_options):
        for ids, tiles, z in parts.map_parts(decoding, files, engine=engine, opts=ray_options):
            all_ids.append(ids)
            all_tiles.append(tiles)
            all_z.append(z if latents else None)
            if progress:
                progress(len(ids))
    ids = np.concatenate(all_ids)
    images = np.concatenate(all_tiles)
    from PIL import Image

    tmp = out_dir + ".partial"
    os.makedirs(tmp, exist_ok=True)
    for i, im in zip(ids, images, strict=True):
        Image.fromarray(im).save(os.path.join(tmp, f"tile-{int(i):05d}.png"))
    os.rename(tmp, out_dir)
    return {
        "tiles": int(ids.size),
        "out": out_dir,
        "decode_seconds": time.perf_counter() - t0,
        "ids": ids,
        "images": images,
    } | ({"latents": np.concatenate(all_z)} if latents else {})


def _model_for(run, weights: str | None):
    """The model a run was coded with (``weights``, or the shipped model its header names,
    :func:`run_model_id`), refused unless its SHA-256 is the header's."""
    codec_info = _codec_of(run)
    if weights is None:  # the weights its header names, shipped with recray
        from recray.models.inr import weights_path

        mid = run_model_id(codec_info)
        weights = str(weights_path(model=mid))
        if not os.path.exists(weights):
            raise FormatError(
                f"{run.path!r} was coded with the INR model {mid!r}, which this recray does "
                "not ship: give its weights with --weights"
            )
    model = load_model(weights)
    if model.model_checksum != codec_info["model_sha256"]:
        raise FormatError(
            f"{run.path!r} was coded with model weights of SHA-256 "
            f"{codec_info['model_sha256']}, but the loaded weights have "
            f"{model.model_checksum}: decode with the same weights (--weights)"
        )
    return model


@dataclass(frozen=True)
class _TileDecoding:
    """Builds the decoder of a run's parts (once per process or Ray actor)."""

    run_dir: str
    weights: str | None
    batch_size: int
    model: object = None  # the model already loaded and checked here (the local engine)

    def __call__(self):
        from recray.format.run import Run
        from recray.latents.io import Prior
        from recray.pipeline.driver import spec_from_header

        run = Run.open(self.run_dir, verify_parts=False)  # the driver verified them
        codec = INRCodec(_worker_model(self.model, lambda: _model_for(run, self.weights)))
        prior = Prior.from_dict(json.loads(run.prior_json), where="run prior")
        spec = spec_from_header(run.header, prior)
        return lambda file: _decode_part(run, codec, spec, self.batch_size, file)


def _decode_part(run, codec, spec, batch_size: int, file: str):
    """``(ids, tiles, z)`` of one part: ids int64 ``(n,)``, tiles uint8 ``(n, 32, 32, 3)``,
    latents float64 ``(n, dim)``; read in batches of ``batch_size`` rows, each checked
    against its CRCs first."""
    from recray.format.run import check_crcs

    all_ids, all_tiles, all_z = [], [], []
    for rb in run.part_file(file).iter_batches(
        batch_size=batch_size, columns=["id", "message", "crc32"]
    ):
        ids = rb.column("id").to_numpy()
        msgs = rb.column("message").to_pylist()
        check_crcs(ids, msgs, rb.column("crc32").to_numpy(), what="tile")
        tiles, z = decode_items(codec, ids, msgs, spec, what="tile")
        all_ids.append(ids)
        all_tiles.append(tiles)
        all_z.append(z)
    return tuple(np.concatenate(a) for a in (all_ids, all_tiles, all_z))
