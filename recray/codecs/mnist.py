"""``recray codec mnist``: lossless MNIST with a VAE, its latent sent by REC.

Encoding one image ``x`` (uint8, 784 pixels):

1. the VAE's encoder gives the posterior ``q(z|x) = N(mu, diag(sigma^2))``;
2. the REC pipeline (:func:`recray.pipeline.driver.compress`: Ray by default) codes a sample
   ``z ~ q`` as block indices under the plan built from the model's prior file;
3. the encoder decodes those indices exactly as the receiver will, and codes the pixels
   under ``p(x | z)`` (:func:`recray.models.vae.pixel_probabilities`, a 256-level
   categorical per pixel) **in the same range coder, after the indices**
   (:class:`recray.format.messages.Tail`): one message per image, one termination, no
   length field.

Decoding reads the indices at the head of each message, regenerates ``z``, rebuilds the
same tables and reads the pixels from the same decoder; a message that does not end where
its 784 pixels end is reported by image id. "Ends" is the encoder's own rule
(``docs/FORMAT.md`` section 7): a message is the shortest byte string that, zero-padded,
decodes to its symbols, so a message whose first ``n - 1`` bytes (or those plus one unit
in their last byte, the only other ``n - 1``-byte string that can) already decode to the
same indices and pixels carries bytes or symbols beyond them (:func:`_check_end`).

The run directory is a recray run (plan, prior, parts, manifest) whose header also records
the codec, the MNIST split and the model's SHA-256; decoding with other weights is refused
before any work.

**Exactness.** The tables must be bit-identical on both sides, on any machine. Codec
version 2 (written today) computes them with integers only
(:class:`recray.models.intdec.IntDecoder`: fixed-point weights, int64 sums, lookup tables
for the scales and the logistic CDF), handed to the range coder as exact integers, so
they do not depend on the CPU, its instruction set, the thread count, the NumPy or torch
version or the batching; decoding needs no torch. The header records the integer
decoder's SHA-256 (decoding with another is refused before any work), its arithmetic
format and the float weights the encoder's posterior came from. What remains for a
decode on another machine is the latent ``z``: REC must regenerate the encoder's ``z``
to the bit there (see ``docs/FORMAT.md``).

Version 1 runs (float64 tables from torch) still decode, on the same torch build only
(checked), and only where the CPU takes the same kernels (not checkable: ``--verify``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import constriction
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recray.codecs.base import LatentCodec, Posterior, read_heads
from recray.errors import FormatError, InputError, MessageError, fmt_item
from recray.format.messages import Tail, decode_blocks, encode_messages, read_head
from recray.format.run import Run, RunWriter, check_crcs, crc32_of, part_schema
from recray.latents.io import Prior, read_prior
from recray.models.vae_encoder import DEFAULT_WEIGHTS, Encoder, load_encoder, posteriors
from recray.pipeline import driver, parts
from recray.pipeline.codec import decode_indices, parse_n_samples
from recray.pipeline.driver import spec_from_header
from recray.pipeline.options import RayOptions
from recray.plan import KL_SAMPLES_MAX_BITS
from recray.rec.kernels import one_kernel_thread, preload_cpu

CODEC_NAME = "mnist-vae"
CODEC_VERSION = 2  # integer decoder tables (recray.models.intdec)
FLOAT_TABLES_VERSION = 1  # float64 torch tables: decodes on the same torch build only
PIXELS = 784
LEVELS = 256
PIXEL_MODEL = constriction.stream.model.Categorical(perfect=False)
TABLE_CHUNK = 16  # rows of (784, 256) float64 tables at a time: 25 MB
NETWORK_ROWS = 1024  # rows whose latents and network parameters are computed together: 32 MB


#: The codec's adaptive-partition threshold (sp-pfr settings): ``2^18`` candidates, the
#: threshold its shipped laws and results were measured with (latent runs default to 2^14).
ADAPT_ABOVE_BITS = 18.0


def _model(weights):
    """The torch VAE (only for codec version 1's float tables)."""
    from recray.models.vae import load_mnist_vae

    return load_mnist_vae(weights or DEFAULT_WEIGHTS)


def _encoder(weights) -> Encoder:
    """The VAE's encoder in NumPy: what analysis needs, without torch."""
    return load_encoder(weights or DEFAULT_WEIGHTS)


def prior_path(weights=None) -> str:
    w = str(weights or DEFAULT_WEIGHTS)
    return os.path.splitext(w)[0] + "_prior.json"


def _images(split: str, limit: int | None, data_dir) -> np.ndarray:
    from recray.data.mnist import load_mnist

    images, _ = load_mnist(split, data_dir)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be >= 1; got {limit}")
        images = images[:limit]
    return np.ascontiguousarray(images.reshape(-1, PIXELS))


def int_decoder_path(weights=None) -> str:
    """The integer decoder that goes with the float ``weights`` (``<stem>_intdec.npz``)."""
    from recray.models import intdec

    return str(intdec.int_decoder_path(weights) if weights else intdec.DEFAULT_INT_DECODER)


def _int_decoder(weights):
    from recray.models.intdec import load_int_decoder

    return load_int_decoder(int_decoder_path(weights))


def _tables(decoder, z: np.ndarray, version: int) -> np.ndarray:
    """What the range coder takes for the rows ``z``: the integer tables as exact float64
    (version 2; ``decoder`` an ``IntDecoder``) or the float64 torch tables (version 1;
    ``decoder`` the ``MnistVAE``)."""
    if version == FLOAT_TABLES_VERSION:
        from recray.models.vae import pixel_probabilities

        return pixel_probabilities(decoder, z)
    return decoder.coder_tables(z)  # = coder_probabilities(decoder.tables(z)), compiled


def _one_ahead(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The items of ``chunks``, each next one computed on a worker thread (its Numba calls
    on one thread) while the caller codes the current one. The table pass releases the
    GIL and the range coder holds it, so the two overlap on two cores."""
    with ThreadPoolExecutor(1, "recray-tables", initializer=one_kernel_thread) as pool:
        pending = pool.submit(next, chunks, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield item


def _pixel_tails(images: np.ndarray, probs: np.ndarray, version: int) -> list[list[Tail]]:
    rows = np.arange(PIXELS)
    out = []
    for x, p in zip(images, probs, strict=True):
        if version == FLOAT_TABLES_VERSION:
            ideal = float(-np.log2(np.maximum(p[rows, x], 2.0**-24)).sum())
        else:  # the coded probabilities (w + 1) / 2^24
            ideal = float(24 * PIXELS - np.log2(p[rows, x] + 1.0).sum())
        out.append([Tail(x.astype(np.int32), PIXEL_MODEL, np.ascontiguousarray(p), ideal)])
    return out


class MnistCodec(LatentCodec):
    """This codec's parts behind the shared interface (:mod:`recray.codecs.base`): the VAE
    encoder (analysis, in NumPy), the pixels under ``p(x|z)`` (tail), reading them back
    (synthesis).
    :func:`compress` and :func:`decompress` run these same methods on every part of a run,
    in this process or on Ray.

    ``decoder``: the table model (default: the integer decoder of ``weights``; for a codec
    version 1 run, the float model), ``version``: the codec version whose tables it
    computes. ``encoder``: the :class:`~recray.models.vae_encoder.Encoder` (default: loaded
    from ``weights`` on first use). Neither encoding nor decoding imports torch, except for
    version 1 runs."""

    name = CODEC_NAME
    version = CODEC_VERSION

    def __init__(self, weights=None, *, encoder=None, decoder=None, version: int = CODEC_VERSION):
        self.weights = weights
        self.decoder = _int_decoder(weights) if decoder is None else decoder
        self.version = version
        self._encoder = encoder

    def analysis(self, items, ids=None) -> Posterior:
        if self._encoder is None:
            self._encoder = _encoder(self.weights)  # q(z|x)
        mu, sigma = posteriors(self._encoder, np.asarray(items).reshape(-1, PIXELS))
        return Posterior(mu, sigma)

    def tail(self, items, z):
        return [t for tails in self.tail_chunks(items, z) for t in tails]

    def table_chunks(self, z, chunk: int = TABLE_CHUNK) -> Iterator[np.ndarray]:
        """The range coder's tables of ``z`` in consecutive chunks of ``chunk`` rows (float64
        ``(<= chunk, 784, 256)``), only ``chunk`` held at a time. Version 2: the network runs
        once for all rows (:meth:`~recray.models.intdec.IntDecoder.coder_table_chunks`) and
        each next chunk's tables are computed on a worker thread while the caller codes the
        current one (:func:`_one_ahead`). The same tables as :func:`_tables` of the rows."""
        if self.version == FLOAT_TABLES_VERSION:
            return (_tables(self.decoder, z[a : a + chunk], self.version)
                    for a in range(0, len(z), chunk))  # fmt: skip
        return _one_ahead(self.decoder.coder_table_chunks(z, chunk))

    def tail_chunks(self, items, z, chunk: int = TABLE_CHUNK):
        """:meth:`tail` of ``items`` in consecutive chunks of ``chunk`` rows (a generator of
        lists), the tables from :meth:`table_chunks`. The same tails as :meth:`tail`."""
        x = np.asarray(items).reshape(-1, PIXELS)
        a = 0
        for probs in self.table_chunks(z, chunk):
            yield _pixel_tails(x[a : a + len(probs)], probs, self.version)
            a += len(probs)

    def synthesis(self, z, decoders=None, ids=None, messages=None, layout=None, heads=None):
        """Images uint8 ``(n, 784)`` read from ``decoders`` (positioned after the indices),
        the tables from :meth:`table_chunks`. With ``messages``, their ``layout`` and read
        ``heads``, each message is also checked to end where its pixels end
        (:func:`_check_end`)."""
        ids = range(len(z)) if ids is None else ids
        images = np.empty((len(z), PIXELS), dtype=np.uint8)
        a = 0
        try:
            for probs in self.table_chunks(z):
                for j, p in enumerate(probs, start=a):
                    images[j] = _read_pixels(decoders[j], p, ids[j])
                    if messages is not None:
                        _check_end(messages[j], layout, heads[j], images[j], p, ids[j])
                a += len(probs)
        except MessageError as exc:
            if self.version != FLOAT_TABLES_VERSION:
                raise
            raise MessageError(
                f"{exc} (or: this is a codec version 1 run, whose float64 tables are torch "
                "output that reproduces only with the torch build and CPU kernels that wrote it)"
            ) from exc
        return images


# ----------------------------------------------------------------------------- index laws
#: Training images the index laws are estimated on (the first ones of the train split).
LAW_TRAIN_IMAGES = 5000
LAWS = ("learned", "fixed")


def laws_path(weights=None) -> str:
    """The shipped learned index laws of the weights (``<stem>_laws.json``): a JSON object
    from :func:`laws_key` to serialized :class:`recray.plan.laws.IndexLaws`."""
    return os.path.splitext(str(weights or DEFAULT_WEIGHTS))[0] + "_laws.json"


def laws_key(plan, method: str, n_samples, model_sha256: str, kl_offset_bits: float = 0.0,
             kl_max_bits: int = KL_SAMPLES_MAX_BITS) -> str:  # fmt: skip
    """What a set of laws was estimated for: the model, the plan (without laws), the method
    and its budget (the budget only for the fixed-budget methods; ``n_samples`` an int or
    ``"kl"``, the per-block rule with its offset and cap)."""
    n_, rule = parse_n_samples(n_samples)
    budget = f"{n_}" if rule == "fixed" else f"kl{float(kl_offset_bits):+g}/{int(kl_max_bits)}"
    n = f"|N={budget}" if method.endswith("orc") else ""
    return f"{model_sha256[:16]}|{method}{n}|plan={plan.with_laws(None).checksum()[:16]}"


def build_codec_plan(
    prior: Prior,
    *,
    block_bits: float,
    seed: int,
    collapsed_block_size: int,
    budget_offset_bits: int = 0,
    partition: str = "complete",
):
    """The codec's plan for these settings (no laws; the laws are the codec's own, fitted on
    training images: :func:`learned_laws`). ``partition``: ``"complete"`` (the shipped laws
    and the published figures) or ``"tree"`` (:func:`recray.plan.build_plan`)."""
    from recray.plan import build_plan

    return build_plan(
        prior.mi_bits,
        block_bits,
        seed=seed,
        collapsed_block_size=collapsed_block_size,
        budget_offset_bits=budget_offset_bits,
        partition=partition,
    )


def fit_laws(
    plan,
    method: str,
    *,
    n_samples: int | str = 1 << 16,
    seed: int = 0,
    images: int = LAW_TRAIN_IMAGES,
    weights=None,
    data_dir=None,
    max_steps: int = 1 << 20,
    kl_offset_bits: float = 0.0,
    kl_max_bits: int = KL_SAMPLES_MAX_BITS,
):
    """Estimate the index laws of ``plan`` under ``method`` on the first ``images`` training
    images (never the test set): their latents are coded exactly as ``compress`` codes the
    test images (same spec, fallback and adaptive partitions) and the coded indices are
    counted (:func:`recray.plan.laws.estimate_laws`)."""
    from recray.format.messages import decode_blocks
    from recray.pipeline.codec import CodecSpec, encode_items
    from recray.plan.laws import estimate_laws

    model = _encoder(weights)
    prior = read_prior(prior_path(weights))
    x = _images("train", images, data_dir)
    mu, sigma = posteriors(model, x)
    n_, rule = parse_n_samples(n_samples)
    spec = CodecSpec(
        plan=plan.with_laws(None),
        method=method,
        seed=seed,
        prior_mu=prior.mu,
        prior_sigma=prior.sigma,
        n_samples=n_,
        n_samples_rule=rule,
        kl_offset_bits=float(kl_offset_bits),
        kl_max_bits=kl_max_bits,
        max_steps=max_steps,
        on_unbounded="orc",
        adapt_above_bits=ADAPT_ABOVE_BITS,
    )
    ids = np.arange(x.shape[0], dtype=np.int64)
    bins, local = [], []
    for a in range(0, len(ids), 1000):
        enc = encode_items(ids[a : a + 1000], mu[a : a + 1000], sigma[a : a + 1000], spec)
        b, n_, _ = decode_blocks(enc.messages, spec.layout)
        bins.append(b)
        local.append(n_)
    block_bits = [[plan.bits[d] for d in blk] for blk in plan.blocks]
    return estimate_laws(
        np.concatenate(bins),
        np.concatenate(local),
        block_bits if method.startswith("sp-") else [[] for _ in plan.blocks],
        method=method,
        source=f"mnist train[:{x.shape[0]}], seed {seed}",
    )


def learned_laws(
    plan, method: str, n_samples, *, seed: int = 0, weights=None, data_dir=None, fit=True,
    kl_offset_bits: float = 0.0, kl_max_bits: int = KL_SAMPLES_MAX_BITS,
):  # fmt: skip
    """``(laws, fit_seconds)`` for these settings: the shipped laws (:func:`laws_path`), else
    the user cache (``$XDG_CACHE_HOME/recray/laws``), else (``fit=True``) estimated now on
    the training set and cached; ``(None, 0)`` for ``orc`` (raw indices) or nothing found."""
    from recray.plan.laws import find_or_fit

    if method == "orc":
        return None, 0.0
    kl = dict(kl_offset_bits=kl_offset_bits, kl_max_bits=kl_max_bits)
    key = laws_key(plan, method, n_samples, _encoder(weights).model_checksum, **kl)

    def fit_now():
        return fit_laws(
            plan, method, n_samples=n_samples, seed=seed, weights=weights, data_dir=data_dir, **kl
        )

    return find_or_fit(key, laws_path(weights), fit_now if fit else None)


def _write_latents(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
    n, d = mu.shape
    vec = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), d)  # noqa: E731
    pq.write_table(
        pa.table(
            {"id": pa.array(np.arange(n, dtype=np.int64)), "mu": vec(mu), "sigma": vec(sigma)}
        ),
        path,
    )


def compress(
    out_dir: str,
    *,
    split: str = "test",
    limit: int | None = None,
    method: str = "sp-orc",
    block_bits: float = 48.0,
    n_samples: int | str = 1 << 10,
    seed: int = 0,
    max_steps: int = 1 << 20,
    engine: str = "ray",
    ray_options: RayOptions | None = None,
    batch_size: int = 256,
    shard_rows: int = 2048,
    data_dir=None,
    weights=None,
    collapsed_block_size: int = 0,
    progress=None,
    codec_version: int = CODEC_VERSION,
    budget_offset_bits: int = -4,
    laws: str = "learned",
    kl_offset_bits: float = 0.0,
    kl_max_bits: int = KL_SAMPLES_MAX_BITS,
    partition: str = "complete",
) -> dict:
    """Compress MNIST ``split`` (its first ``limit`` images) into the run ``out_dir``;
    returns the figures of :func:`summary` plus timings.

    The defaults are those of ``recray codec mnist compress`` (the command line reads them
    from this signature): the best SP setting of ``recray bench mnist --grid``, SP-ORC on
    one 48-bit block of partition budget ``B = I - 4`` with ``N = 2^10`` samples, collapsed
    dimensions spread over it, indices under the shipped learned laws (docs/MNIST.md).

    Item ids are image indices in the split. Blocks an exact method cannot code are coded
    with its fixed-budget twin (``--on-unbounded orc``). ``codec_version=1`` writes the old
    float-table format (for comparisons; it decodes on the same torch build only).

    ``partition``: ``"complete"`` partitions (the default: the shipped laws were fitted
    for them) or ``"tree"`` ones (fewer candidates per block; learned laws for trees are
    fitted on first use and cached).

    ``laws="learned"``: the indices are coded under index laws estimated on the training
    set for exactly this plan and method (:func:`learned_laws`; message codec version 3),
    ``"fixed"`` under the fixed codes. ``budget_offset_bits``: partition bits per
    informative block over its rounded information (plan version 2). ``n_samples``: the
    fixed-budget methods' ``N``, or ``"kl"``: per block ``N_b = 2^clip(ceil(I_b +
    kl_offset_bits), 0, kl_max_bits)`` from the plan's block information (message codec
    version 4 for ``orc``: a raw index of ``log2 N_b`` bits per block)."""
    if laws not in LAWS:
        raise InputError(f"laws must be one of {LAWS}; got {laws!r}")
    if codec_version not in (FLOAT_TABLES_VERSION, CODEC_VERSION):
        raise InputError(f"codec_version must be 1 or 2; got {codec_version!r}")
    if os.path.exists(out_dir):
        raise InputError(f"output {out_dir!r} already exists; remove it or choose another --out")
    t_start = time.perf_counter()
    if engine == "local":  # this process searches: load the kernels while weights load
        preload_cpu()
    model = _encoder(weights)
    if codec_version == FLOAT_TABLES_VERSION:
        decoder = _model(weights)
    else:
        decoder = _int_decoder(weights)
    prior = read_prior(prior_path(weights))
    images = _images(split, limit, data_dir)
    n = images.shape[0]
    codec = MnistCodec(weights, encoder=model, decoder=decoder, version=codec_version)
    post = codec.analysis(images)
    mu, sigma = post.mu, post.sigma
    plan = build_codec_plan(
        prior,
        block_bits=block_bits,
        seed=seed,
        collapsed_block_size=collapsed_block_size,
        budget_offset_bits=budget_offset_bits,
        partition=partition,
    )
    index_laws, fit_s = (None, 0.0)
    if laws == "learned":
        index_laws, fit_s = learned_laws(
            plan, method, n_samples, seed=seed, weights=weights, data_dir=data_dir,
            kl_offset_bits=kl_offset_bits, kl_max_bits=kl_max_bits,
        )  # fmt: skip
    t_start += fit_s  # a one-time model step (like training), reported on its own
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    work = os.path.join(parent, f".{os.path.basename(out_dir)}.work-{uuid.uuid4().hex[:8]}")
    os.makedirs(work)
    scope = contextlib.ExitStack()
    try:
        scope.enter_context(parts.session(engine, ray_options))  # one Ray for both stages
        lat = os.path.join(work, "latents.parquet")
        _write_latents(lat, mu, sigma)
        t_rec = time.perf_counter()
        latent_run = os.path.join(work, "latent-run")
        rec_info = driver.compress(
            lat,
            prior_path(weights),
            latent_run,
            plan=plan,
            laws="fixed" if index_laws is None else "auto",
            adapt_above_bits=ADAPT_ABOVE_BITS,
            method=method,
            n_samples=n_samples,
            seed=seed,
            max_steps=max_steps,
            on_unbounded="orc",
            batch_size=batch_size,
            shard_rows=shard_rows,
            engine=engine,
            ray_options=ray_options,
            progress=progress,
            index_laws=index_laws,
            kl_offset_bits=kl_offset_bits,
            kl_max_bits=kl_max_bits,
        )
        rec_s = time.perf_counter() - t_rec
        t_pix = time.perf_counter()
        info = _write_codec_run(
            latent_run, out_dir, model, decoder, prior, images, split, progress, codec_version,
            engine=engine, ray_options=ray_options, weights=weights,
        )  # fmt: skip
        pixel_s = time.perf_counter() - t_pix
    finally:
        scope.close()
        shutil.rmtree(work, ignore_errors=True)
    total_s = time.perf_counter() - t_start
    return info | {
        "rec_seconds": rec_s,
        "pixel_seconds": pixel_s,
        "encode_seconds": total_s,
        "encode_ms_per_image": 1e3 * total_s / n,
        "rec_ms_per_image": 1e3 * rec_s / n,
        "latent_only_bits_per_image": rec_info["bits_per_item"],
        "fallback_blocks": rec_info["fallback_blocks"],
        "engine": rec_info["engine"],
        "actors": rec_info["actors"],
        "laws": "learned" if index_laws is not None else "fixed",
        "laws_fit_seconds": fit_s,
    }


def _version_of(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _codec_header(latent_header: dict, model, decoder, split: str, version: int) -> dict:
    codec = {
        "name": MnistCodec.name,
        "version": version,  # the tables' version (MnistCodec.version, or 1 for float tables)
        "model_sha256": model.model_checksum,
        "model_config": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(model.config).items()
        },
        "split": split,
        "pixels": PIXELS,
        "levels": LEVELS,
    }
    if version == FLOAT_TABLES_VERSION:
        import torch

        codec["torch_version"] = torch.__version__
        codec["pixel_model"] = "constriction Categorical(perfect=False), float64 tables"
    else:
        from recray.models.intdec import INT_FORMAT

        codec["decoder_sha256"] = decoder.checksum
        codec["int_format"] = INT_FORMAT
        codec["constriction_version"] = _version_of("constriction")
        codec["pixel_model"] = (
            "constriction Categorical(perfect=False) on integer tables summing to 2^24 - 256: "
            "level v coded with probability (w_v + 1) / 2^24"
        )
    return latent_header | {"codec": codec}


def _write_codec_run(
    latent_run, out_dir, model, decoder, prior: Prior, images, split, progress, version,
    *, engine: str = "local", ray_options: RayOptions | None = None, weights=None,
):  # fmt: skip
    """The pixel stage: each part of the latent run becomes the codec run's part (its
    pixels coded after the latent indices), one task per part, in this process or on Ray
    (:func:`recray.pipeline.parts.map_parts`); whoever codes a part commits it."""
    run = Run.open(latent_run)
    header = _codec_header(run.header, model, decoder, split, version)
    schema = part_schema("int", prior.dim, False)
    schema = schema.append(pa.field("latent_nbits", pa.int64()))
    schema = schema.append(pa.field("pixel_ideal_bits", pa.float64()))
    fingerprint = {"split": split, "images": int(images.shape[0])}
    bar = progress(total=images.shape[0], unit="image", desc="pixels") if progress else None
    with RunWriter(out_dir, header, prior.to_json(), schema, fingerprint=fingerprint) as writer:
        coder = _PixelCoder(latent_run, weights, version, images, writer.committer)
        tasks = list(enumerate(run.part_paths()))
        for k, part in zip(
            range(len(tasks)),
            parts.map_parts(coder, tasks, engine=engine, opts=ray_options),
            strict=True,
        ):
            writer.record(k, part)
            if bar:
                bar.update(part["rows"])
        n_parts = len(tasks)
        totals = writer.totals(n_parts)
        writer.publish(n_parts, totals)
    if bar:
        bar.close()
    return summary(out_dir)


@dataclasses.dataclass
class _PixelCoder:
    """Builds the pixel stage's worker (once per process or actor): the latent run's spec
    and the table model, loaded from the same files as the driver's."""

    latent_run: str
    weights: object
    version: int
    images: np.ndarray
    committer: object

    def __call__(self):
        run = Run.open(self.latent_run, verify_parts=False)
        prior = Prior.from_dict(json.loads(run.prior_json), where="run prior")
        spec = spec_from_header(run.header, prior)
        if self.version == FLOAT_TABLES_VERSION:
            decoder = _model(self.weights)
        else:
            decoder = _int_decoder(self.weights)
        codec = MnistCodec(self.weights, decoder=decoder, version=self.version)
        return functools.partial(_code_pixel_part, spec, codec, self.images, self.committer)


def _code_pixel_part(spec, codec: MnistCodec, images, committer, task) -> dict:
    """Code the pixels of one latent part ``task = (k, path)`` after its indices and
    commit it as the codec run's part ``k``; returns the part's summary."""
    k, path = task
    t = pq.read_table(path)
    ids = t.column("id").to_numpy()
    lat_msgs = t.column("message").to_pylist()
    check_crcs(ids, lat_msgs, t.column("crc32").to_numpy())
    bins, local, extra = decode_blocks(lat_msgs, spec.layout, item_ids=ids)
    adaptive = spec.layout.adaptive
    msgs, ideal = [], []
    for a0 in range(0, len(ids), NETWORK_ROWS):
        rows = slice(a0, a0 + NETWORK_ROWS)
        z = decode_indices(
            ids[rows], bins[rows], local[rows], spec, extra[rows] if adaptive else None
        )
        a = a0
        for tails in codec.tail_chunks(images[ids[rows]], z, TABLE_CHUNK):
            sl = slice(a, a + len(tails))
            ex = extra[sl] if adaptive else None
            msgs += encode_messages(bins[sl], local[sl], spec.layout, tails, extra=ex)
            ideal += [tl[0].ideal_bits for tl in tails]
            a += len(tails)
    cols = {
        "id": pa.array(ids, pa.int64()),
        "message": pa.array(msgs, pa.binary()),
        "nbits": pa.array(8 * np.fromiter(map(len, msgs), np.int64, len(msgs))),
        "crc32": pa.array(crc32_of(msgs)),
        "kl_bits": t.column("kl_bits"),
        "steps": t.column("steps"),
        "fallback_blocks": t.column("fallback_blocks"),
        "adapted_blocks": t.column("adapted_blocks"),
        "latent_nbits": t.column("nbits"),
        "pixel_ideal_bits": pa.array(np.asarray(ideal, np.float64)),
    }
    return committer.commit(k, pa.table(cols, schema=committer.schema))


def summary(run_dir: str) -> dict:
    """Bits per image and per pixel from the bytes written, and the shares: the latent
    messages alone (as the REC run wrote them), the pixels' ideal ``-log2 p(x|z)``."""
    run = Run.open(run_dir, verify_parts=False)
    _codec_of(run)
    t = pa.concat_tables(
        [
            pq.read_table(p, columns=["message", "latent_nbits", "pixel_ideal_bits", "kl_bits"])
            for p in run.part_paths()
        ]
    )
    n = t.num_rows
    payload = sum(len(m) for m in t.column("message").to_pylist())
    bits = 8.0 * payload / n
    return {
        "run": run_dir,
        "images": n,
        "method": run.header["method"],
        "block_bits": run.header["plan"]["block_bits"],
        "bits_per_image": bits,
        "bits_per_pixel": bits / PIXELS,
        "latent_only_bits_per_image": float(np.mean(t.column("latent_nbits").to_numpy())),
        "pixel_ideal_bits_per_image": float(np.mean(t.column("pixel_ideal_bits").to_numpy())),
        "kl_bits_per_image": float(np.mean(t.column("kl_bits").to_numpy())),
        "payload_bytes": payload,
    }


def _codec_of(run: Run) -> dict:
    codec = run.header.get("codec")
    if not isinstance(codec, dict) or codec.get("name") != CODEC_NAME:
        raise FormatError(f"{run.path!r} is not a recray codec mnist run (no codec {CODEC_NAME!r})")
    if codec.get("version") not in (FLOAT_TABLES_VERSION, CODEC_VERSION):
        raise FormatError(
            f"{run.path!r}: codec version {codec.get('version')!r}; this recray decodes "
            f"versions {FLOAT_TABLES_VERSION} (float tables) and {CODEC_VERSION} (integer "
            "tables): decode it with the recray release that wrote it"
        )
    return codec


def _decoder_for(run_dir: str, codec: dict, weights):
    """The table model a run needs, after checking it is the one the run was coded with."""
    if codec["version"] == CODEC_VERSION:
        from recray.models.intdec import INT_FORMAT

        if codec.get("int_format") != INT_FORMAT:
            raise FormatError(
                f"{run_dir!r}: integer decoder format {codec.get('int_format')!r}; this "
                f"recray computes format {INT_FORMAT}"
            )
        decoder = _int_decoder(weights)
        if decoder.checksum != codec.get("decoder_sha256"):
            raise FormatError(
                f"{run_dir!r} was coded with the integer decoder of SHA-256 "
                f"{codec.get('decoder_sha256')}, but the loaded one "
                f"({int_decoder_path(weights)!r}) has {decoder.checksum}: decode with the same "
                "model (--weights), or the pixels cannot be rebuilt"
            )
        return decoder
    try:  # version 1: float tables, from torch
        model = _model(weights)
    except ImportError as exc:
        raise FormatError(
            f"{run_dir!r} is a codec version 1 run (float tables): decoding it needs torch "
            f"{codec.get('torch_version')}, which cannot be imported here ({exc})"
        ) from None
    if model.model_checksum != codec["model_sha256"]:
        raise FormatError(
            f"{run_dir!r} was coded with model weights of SHA-256 {codec['model_sha256']}, but "
            f"the loaded weights have {model.model_checksum}: decode with the same weights "
            "(--weights), or the pixels cannot be rebuilt"
        )
    import torch

    if codec.get("torch_version") != torch.__version__:
        raise FormatError(
            f"{run_dir!r} is a codec version 1 run (float tables), coded with torch "
            f"{codec.get('torch_version')}; this is torch {torch.__version__}: its pixel tables "
            "are only bit-identical on the same torch build; install "
            f"torch=={str(codec.get('torch_version')).split('+')[0]} (CPU) to decode it"
        )
    return model


def decompress(
    run_dir: str,
    out_dir: str,
    *,
    verify: bool = False,
    data_dir=None,
    weights=None,
    batch_size: int = 1024,
    progress=None,
    engine: str = "local",
    ray_options: RayOptions | None = None,
) -> dict:
    """Decode every image of a codec run into ``out_dir/images.npz`` (``ids`` int64 ``(n,)``,
    ``images`` uint8 ``(n, 28, 28)``). ``verify=True`` compares them byte for byte with the
    MNIST split they came from and raises :class:`FormatError` naming the first image that
    differs. ``engine="ray"`` decodes one part per task on a Ray actor pool (as
    ``recray decompress --engine ray``), ``"local"`` here: the same images either way."""
    run = Run.open(run_dir)
    codec = _codec_of(run)
    _decoder_for(run_dir, codec, weights)  # the right model, checked before any work
    if os.path.exists(out_dir):
        raise InputError(f"output {out_dir!r} already exists; remove it or choose another --out")
    all_ids, all_images = [], []
    bar = progress(total=run.manifest["items"], unit="image", desc="decode") if progress else None
    worker = _PartDecoding(run_dir, weights, batch_size)
    files = [p["file"] for p in run.manifest["parts"]]
    for ids, images in parts.map_parts(worker, files, engine=engine, opts=ray_options):
        all_ids.append(ids)
        all_images.append(images)
        if bar:
            bar.update(len(ids))
    if bar:
        bar.close()
    ids = np.concatenate(all_ids)
    images = np.concatenate(all_images).reshape(-1, 28, 28)
    result = {"images": int(ids.size), "out": os.path.join(out_dir, "images.npz")}
    if verify:
        src = _images(codec["split"], None, data_dir)
        if ids.max() >= src.shape[0]:
            raise FormatError(f"image id {int(ids.max())} is outside the {codec['split']} split")
        bad = np.flatnonzero((src[ids] != images.reshape(-1, PIXELS)).any(axis=1))
        if bad.size:
            raise FormatError(
                f"image {int(ids[bad[0]])}: decoded pixels differ from MNIST {codec['split']} "
                f"({bad.size} images differ)"
            )
        result["verified"] = True
    from recray.localfiles import replacing

    os.makedirs(out_dir)
    with replacing(result["out"]) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=ids, images=images)
    return result


@dataclasses.dataclass
class _PartDecoding:
    """Builds the decoder of a codec run's parts (once per process or actor)."""

    run_dir: str
    weights: object
    batch_size: int

    def __call__(self):
        run = Run.open(self.run_dir, verify_parts=False)  # the driver verified them
        info = _codec_of(run)
        decoder = _decoder_for(self.run_dir, info, self.weights)
        codec = MnistCodec(self.weights, decoder=decoder, version=info["version"])
        prior = Prior.from_dict(json.loads(run.prior_json), where="run prior")
        spec = spec_from_header(run.header, prior)
        return functools.partial(_decode_part, run, spec, codec, self.batch_size)


def _decode_part(run: Run, spec, codec: MnistCodec, batch_size: int, file: str):
    """``(ids, images)`` of one part: ids int64 ``(n,)``, images uint8 ``(n, 784)``; read in
    batches of ``batch_size`` rows (each checked against its CRCs first), each batch's
    latents regenerated and its network run at once, its tables a chunk at a time
    (:meth:`MnistCodec.table_chunks`)."""
    all_ids, all_images = [], []
    pf = run.part_file(file)
    for rb in pf.iter_batches(batch_size=batch_size, columns=["id", "message", "crc32"]):
        ids = rb.column("id").to_numpy()
        msgs = rb.column("message").to_pylist()
        check_crcs(ids, msgs, rb.column("crc32").to_numpy(), what="image")
        if not len(ids):
            continue
        heads, z = read_heads(ids, msgs, spec, "image")  # the batch's latents at once
        decoders = [h.decoder for h in heads]
        all_images.append(codec.synthesis(z, decoders, ids, msgs, spec.layout, heads))
        all_ids.append(ids)
    if not all_ids:
        return np.zeros(0, np.int64), np.zeros((0, PIXELS), np.uint8)
    return np.concatenate(all_ids), np.concatenate(all_images)


def _read_pixels(decoder, probs: np.ndarray, image_id) -> np.ndarray:
    try:
        sym = np.asarray(decoder.decode(PIXEL_MODEL, np.ascontiguousarray(probs)))
    except Exception as exc:  # constriction rejects some invalid streams outright
        raise MessageError(
            f"image {fmt_item(image_id)}: the pixels cannot be decoded ({exc}); the message "
            "is corrupted or was coded under another model"
        ) from None
    if (sym < 0).any() or (sym >= LEVELS).any():
        raise MessageError(f"image {fmt_item(image_id)}: pixels decode outside 0..255")
    return sym.astype(np.uint8)


def _decodes_same(candidate: bytes, layout, head, image: np.ndarray, probs) -> bool:
    """Whether ``candidate`` decodes to the indices of ``head`` and then to ``image``."""
    try:
        h = read_head(candidate, layout)
        if not (
            np.array_equal(h.bins, head.bins)
            and np.array_equal(h.local, head.local)
            and np.array_equal(h.extra, head.extra)
        ):
            return False
        sym = np.asarray(h.decoder.decode(PIXEL_MODEL, np.ascontiguousarray(probs)))
    except Exception:  # constriction or the layout rejects it: it does not decode the same
        return False
    return np.array_equal(sym, image)


def _check_end(message: bytes, layout, head, image: np.ndarray, probs, image_id) -> None:
    """Raise :class:`MessageError` naming the image unless ``message`` ends where its
    indices and 784 pixels end: it is not empty and no byte string one byte shorter decodes
    to the same symbols. The values that decode to them form one interval and ``message``
    lies in it, so only the first ``n - 1`` bytes and those plus one unit in their last
    byte can (the shortest-prefix rule of ``docs/FORMAT.md`` section 7)."""
    n = len(message)
    if n == 0:
        raise MessageError(f"image {fmt_item(image_id)}: the message is empty")
    if n == 1:
        return
    prefix = bytes(message[: n - 1])
    shorter = [prefix]
    up = int.from_bytes(prefix, "big") + 1
    if up < 1 << (8 * (n - 1)):
        shorter.append(up.to_bytes(n - 1, "big"))
    for cand in shorter:
        if _decodes_same(cand, layout, head, image, probs):
            raise MessageError(
                f"image {fmt_item(image_id)}: the message does not end where its {PIXELS} "
                f"pixels end: {n - 1} of its {n} bytes already decode to the same latent and "
                "pixels (extra bytes or symbols after them); the message is corrupted"
            )
