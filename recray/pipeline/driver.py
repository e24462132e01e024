"""Drivers of ``recray compress / decompress / inspect``.

``compress`` first validates the whole input (:mod:`recray.pipeline.validate`: every bad
item, before any search, nothing written), then cuts it into shards
(:mod:`recray.pipeline.shards`), hands the pending ones to an engine (Ray Data by default,
:mod:`recray.pipeline.ray_engine`, whose actors commit the parts they code; or in-process,
:mod:`recray.pipeline.local_engine`), one part per shard (with its rejected items under
``on_bad_item="skip"``), and publishes the run from the parts' summaries. Committed parts
are never deleted: a run that fails keeps them for ``resume=True``. Decoding is light next
to the search (one candidate per block) and runs in this process, streaming part by part.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recray import __version__, rec
from recray.errors import FormatError, InputError, PlanError, RecrayError, fmt_item
from recray.format.messages import MESSAGE_CODEC_VERSION, READABLE_MESSAGE_CODEC_VERSIONS
from recray.format.run import (
    MANIFEST_FILE,
    PLAN_FILE,
    PRIOR_FILE,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    Run,
    RunWriter,
    check_crcs,
    crc32_of,
    part_schema,
)
from recray.format.storage import resolve
from recray.latents.io import LatentSource, Prior, read_prior
from recray.pipeline.codec import CodecSpec, parse_n_samples
from recray.pipeline.decode import decoded_schema, decoded_table
from recray.pipeline.fit import (
    AUTO_FIT_MIN_ITEMS,
    DEFAULT_FIT_ITEMS,
    LAWS_CHOICES,
    fit_laws,
    sample_ranges,
)
from recray.pipeline.local_engine import run_local
from recray.pipeline.options import VALIDATE_ON_RAY_ROWS, RayOptions
from recray.pipeline.progress import tick
from recray.pipeline.shards import DEFAULT_SHARD_ROWS, ON_BAD_ITEM, shard_ranges
from recray.pipeline.validate import scan_shards
from recray.plan import (
    COLLAPSED_BLOCK_SIZE,
    DEFAULT_PARTITION,
    KL_SAMPLES_MAX_BITS,
    CodecPlan,
    build_plan,
)
from recray.plan.adaptive import DEFAULT_ADAPT_ABOVE_BITS
from recray.plan.io import check_plan_for, load_plan, write_plan
from recray.rec.api import FEASIBLE_MARGIN_BITS
from recray.rec.kernels import preload_cpu
from recray.rec.philox import RNG_VERSION, RNG_VERSIONS

__all__ = ["Run", "RayOptions", "compress", "decompress", "fit", "inspect", "format_inspect"]


def run_header(spec: CodecSpec, prior: Prior, id_kind: str) -> dict:
    return {
        "format": RUN_FORMAT,
        "version": RUN_FORMAT_VERSION,
        "recray_version": __version__,
        "rng_version": RNG_VERSION,
        "message_codec_version": MESSAGE_CODEC_VERSION,
        "method": spec.method,
        "seed": spec.seed,
        "n_samples": spec.n_samples if spec.n_samples_rule == "fixed" else spec.n_samples_rule,
        "max_steps": spec.max_steps,
        "on_unbounded": spec.on_unbounded,
        "adapt_above_bits": spec.adapt_above_bits if spec.adaptive else None,
        "feasible_margin_bits": spec.feasible_margin_bits,
        "id_type": id_kind,
        "dim": spec.plan.dim,
        "prior_sha256": prior.checksum(),
        "plan": spec.plan.to_dict(),
        "plan_checksum": spec.plan.checksum(),
    } | _budget_header(spec)


def _budget_header(spec: CodecSpec) -> dict:
    """The per-block budget rule's entries (message codec version 4; none for "fixed")."""
    if spec.n_samples_rule == "fixed":
        return {}
    return {
        "kl_offset_bits": spec.kl_offset_bits,
        "kl_max_bits": spec.kl_max_bits,
        "block_n_samples": list(spec.block_n_samples),
    }


def _budget_from_header(header: dict) -> dict:
    """CodecSpec fields of the run's budget: ``n_samples`` an int, or ``"kl"`` with its
    offset and cap (the stored ``block_n_samples`` are checked against the plan later)."""
    n = header.get("n_samples")
    if n == "kl":
        if header.get("message_codec_version", 0) < 4:
            raise FormatError(
                "run header: n_samples = 'kl' needs message_codec_version >= 4; got "
                f"{header.get('message_codec_version')!r}"
            )
        off, cap = header.get("kl_offset_bits"), header.get("kl_max_bits")
        if isinstance(off, bool) or not isinstance(off, int | float):
            raise FormatError(f"run header: kl_offset_bits = {off!r} must be a number")
        if isinstance(cap, bool) or not isinstance(cap, int):
            raise FormatError(f"run header: kl_max_bits = {cap!r} must be an integer")
        return {"n_samples_rule": "kl", "kl_offset_bits": float(off), "kl_max_bits": cap}
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FormatError(f"run header: n_samples = {n!r} must be an integer >= 1 or 'kl'")
    return {"n_samples": n}


def spec_from_header(header: dict, prior: Prior, backend=None) -> CodecSpec:
    """The spec a run was coded with. Runs of an older RNG recipe (version 1) or message
    codec (version 1) decode; only the current ones encode (a resumed run is checked against
    its header elsewhere)."""
    if header.get("rng_version") not in RNG_VERSIONS:
        raise FormatError(
            f"run header: rng_version = {header.get('rng_version')!r}; this recray decodes "
            f"rng_version {', '.join(map(str, RNG_VERSIONS))}"
        )
    if header.get("message_codec_version") not in READABLE_MESSAGE_CODEC_VERSIONS:
        raise FormatError(
            f"run header: message_codec_version = {header.get('message_codec_version')!r}; "
            f"this recray decodes versions {READABLE_MESSAGE_CODEC_VERSIONS}"
        )
    plan = CodecPlan.from_dict(header["plan"])
    if plan.checksum() != header.get("plan_checksum"):
        raise FormatError("run header: the plan does not match its plan_checksum")
    if prior.checksum() != header.get("prior_sha256"):
        raise FormatError(
            "the prior does not match the run's prior checksum: this run was "
            "coded under another prior"
        )
    spec = CodecSpec(
        plan=plan,
        method=header["method"],
        seed=int(header["seed"]),
        prior_mu=prior.mu,
        prior_sigma=prior.sigma,
        max_steps=int(header["max_steps"]),
        on_unbounded=header["on_unbounded"],
        adapt_above_bits=header.get("adapt_above_bits"),
        feasible_margin_bits=header.get("feasible_margin_bits", 0.0),
        backend=backend,
        rng_version=int(header["rng_version"]),
        message_codec_version=int(header["message_codec_version"]),
        **_budget_from_header(header),
    )
    if spec.n_samples_rule != "fixed":
        try:
            derived = list(spec.block_n_samples)
        except PlanError as exc:
            raise FormatError(f"run header: {exc}") from exc
        if header.get("block_n_samples") != derived:
            raise FormatError(
                f"run header: block_n_samples = {header.get('block_n_samples')!r} does not "
                f"match the 'kl' rule on the run's plan ({derived})"
            )
    return spec


def _budget_args(n_samples, kl_offset_bits, kl_max_bits) -> dict:
    """CodecSpec fields of a budget given as an int or ``"kl"`` (the rule checked here)."""
    n, rule = parse_n_samples(n_samples)
    if rule == "fixed":
        return {"n_samples": n}
    return {
        "n_samples_rule": rule,
        "kl_offset_bits": float(kl_offset_bits),
        "kl_max_bits": kl_max_bits,
    }


ENGINES = ("ray", "local")


def _plan_of(prior, block_bits, allocation, seed, collapsed_block_size, budget_offset_bits,
             partition) -> CodecPlan:  # fmt: skip
    """The plan :func:`compress` and :func:`fit` build from the prior's information."""
    return build_plan(
        prior.mi_bits,
        block_bits,
        strategy=allocation,
        seed=seed,
        collapsed_block_size=collapsed_block_size,
        budget_offset_bits=budget_offset_bits,
        partition=partition,
    )


def _spec_of(plan, prior, method, seed, max_steps, budget, **kw) -> CodecSpec:
    """The coding spec of a run (``budget``: ``(n_samples, kl_offset_bits, kl_max_bits)``;
    ``kw``: the other :class:`CodecSpec` fields), its budgets and layout checked before any
    work."""
    spec = CodecSpec(
        plan=plan,
        method=method,
        seed=seed,
        prior_mu=prior.mu,
        prior_sigma=prior.sigma,
        max_steps=rec.DEFAULT_MAX_STEPS if max_steps is None else max_steps,
        **kw,
        **_budget_args(*budget),
    )
    _ = spec.layout, spec.block_n_samples  # validates the budget before any work
    return spec


def compress(
    latents: str,
    prior_path: str,
    out_dir: str,
    *,
    method: str = "sp-pfr",
    block_bits: float = 16.0,
    n_samples: int | str = 1 << 16,
    allocation: str = "mi",
    seed: int = 0,
    backend=None,
    max_steps: int | None = None,
    on_unbounded: str = "error",
    batch_size: int = 4096,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    debug_samples: bool = False,
    engine: str = "ray",
    ray_options: RayOptions | None = None,
    resume: bool = False,
    collapsed_block_size: int = COLLAPSED_BLOCK_SIZE,
    on_bad_item: str = "fail",
    adapt_above_bits: float | None = DEFAULT_ADAPT_ABOVE_BITS,
    feasible_margin_bits: float = FEASIBLE_MARGIN_BITS,
    progress=None,
    budget_offset_bits: int = 0,
    index_laws=None,
    kl_offset_bits: float = 0.0,
    kl_max_bits: int = KL_SAMPLES_MAX_BITS,
    partition: str = DEFAULT_PARTITION,
    laws: str = "auto",
    plan: CodecPlan | str | None = None,
    fit_items: int = DEFAULT_FIT_ITEMS,
) -> dict:
    """Compress a latent data set into the run directory ``out_dir`` (see
    :mod:`recray.format.run`); returns the run summary (:func:`inspect`'s figures plus
    ``engine``, ``actors``, ``resumed_shards``).

    ``engine="ray"`` (the default) runs the Ray Data pipeline of
    :mod:`recray.pipeline.ray_engine` (a local Ray unless ``ray_options.address`` or
    ``RAY_ADDRESS`` names a cluster); ``"local"`` codes in this process. Both write the same
    bytes for the same input, settings and ``shard_rows``, whatever ``batch_size``, the
    number of actors or the backend. ``resume=True`` continues an unfinished run of
    ``out_dir`` (same input and settings), coding only the shards it lacks.

    Bad items: the input is validated first (every bad item, before any search). With
    ``on_bad_item="fail"`` (default) any bad item stops the run before anything is written,
    all of them listed in one typed error; with ``"skip"`` the rest is coded and the bad ones
    are listed in the run's ``rejects.parquet`` (``info["rejects"]`` counts them).
    ``adapt_above_bits`` (``sp-pfr``; ``None`` turns it off): blocks whose exact search
    would need more than ``2^adapt_above_bits`` candidates under the plan get an adaptive
    partition (exact, sent as side information). ``feasible_margin_bits``: a block goes to the
    exact search only if ``2^D_inf`` is at most ``max_steps / 2^margin`` (see
    :data:`recray.rec.api.FEASIBLE_MARGIN_BITS`). Committed parts are never deleted.
    ``budget_offset_bits`` and ``index_laws`` (plan version 2, :func:`recray.plan.build_plan`):
    partition bits over the blocks' information, and learned laws of the coded symbols
    (message codec version 3). ``n_samples``: the fixed-budget methods' ``N`` for every
    block, or ``"kl"``: per block ``N_b = 2^clip(ceil(I_b + kl_offset_bits), 0,
    kl_max_bits)`` from its information ``I_b`` (:func:`recray.plan.kl_sample_bits`;
    ``orc`` then writes each block's index in ``log2 N_b`` bits, message codec version 4).

    The plan: built from the prior's information (``block_bits``, ``allocation``,
    ``collapsed_block_size``, ``budget_offset_bits``, ``partition``: ``"tree"`` partitions
    of unequal mass, :mod:`recray.plan.trees`, or ``"complete"`` ones), or ``plan``: a
    :class:`~recray.plan.CodecPlan` or the path of one (``recray fit`` writes them), which
    must belong to the prior. Its index laws: ``index_laws`` (laws fitted elsewhere, e.g.
    a codec's training set), else the plan's own, else by ``laws``: ``"fit"`` fits them on
    ``fit_items`` items of the input (:mod:`recray.pipeline.fit`, timed apart:
    ``info["fit_seconds"]``), ``"fixed"`` codes without learned laws (the partition's own
    masses), ``"auto"`` (default) fits them when the input holds at least
    :data:`~recray.pipeline.fit.AUTO_FIT_MIN_ITEMS` items.
    """
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}; got {engine!r}")
    if on_bad_item not in ON_BAD_ITEM:
        raise InputError(f"on_bad_item must be one of {ON_BAD_ITEM}; got {on_bad_item!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1; got {batch_size}")
    if laws not in LAWS_CHOICES:
        raise InputError(f"laws must be one of {', '.join(LAWS_CHOICES)}; got {laws!r}")
    if engine == "local":  # this process searches: load the kernels while the input is read
        preload_cpu(backend)
    prior = read_prior(prior_path)
    if plan is None:
        plan = _plan_of(
            prior, block_bits, allocation, seed, collapsed_block_size, budget_offset_bits, partition
        )
    else:
        plan = check_plan_for(load_plan(plan), prior)
    if index_laws is not None:
        plan = plan.with_laws(index_laws)
    elif laws != "auto":  # "fixed": none; "fit": fitted below
        plan = plan.with_laws(None)
    fit = index_laws is None and plan.index_laws is None and laws != "fixed"
    spec = _spec_of(
        plan,
        prior,
        method,
        seed,
        max_steps,
        (n_samples, kl_offset_bits, kl_max_bits),
        on_unbounded=on_unbounded,
        adapt_above_bits=adapt_above_bits,
        feasible_margin_bits=feasible_margin_bits,
        backend=backend,
    )
    src = LatentSource(latents, prior.dim)
    index = src.row_index()
    if index.n_rows == 0:
        raise InputError(f"latents {latents!r} hold no items")
    opts = ray_options or RayOptions()
    shards = shard_ranges(index.n_rows, shard_rows)
    schema = part_schema(src.id_kind, prior.dim, debug_samples)
    fit_info = {"items": 0, "seconds": 0.0}
    if laws == "auto" and index.n_rows < AUTO_FIT_MIN_ITEMS:
        fit = False
    with contextlib.ExitStack() as stack:
        if engine == "ray":
            # join (or start) Ray first: an unreachable cluster fails now, with nothing
            # written (a retry needs no --resume), and the validation pass runs on it
            from recray.pipeline.ray_engine import ray_session

            stack.enter_context(ray_session(opts.address, opts.connect_timeout, opts.verbose))
        checked = _validate(index, shards, spec, out_dir, engine, opts)
        if len(checked.rejects) and on_bad_item == "fail":
            raise checked.rejects.error()
        if fit:  # the run's laws, from a sample of its own input (recray.pipeline.fit)
            fitted, fit_info = fit_laws(index, spec, checked, fit_items)
            spec = dataclasses.replace(spec, plan=spec.plan.with_laws(fitted))
        header = run_header(spec, prior, src.id_kind) | {"shard_rows": int(shard_rows)}
        writer = stack.enter_context(
            RunWriter(
                out_dir,
                header,
                prior.to_json(),
                schema,
                fingerprint=index.fingerprint(),
                resume=resume,
            )
        )
        pending = [(k, a, b) for k, (a, b) in enumerate(shards) if k not in writer.committed]
        done_rows = sum(b - a for k, (a, b) in enumerate(shards) if k in writer.committed)
        bar = (
            progress(total=index.n_rows, initial=done_rows, unit="item", desc="compress")
            if progress
            else None
        )
        if engine == "local":
            run = run_local
        else:
            from recray.pipeline.ray_engine import run_ray

            run = functools.partial(run_ray, opts=opts)
        try:
            used = run(
                index,
                pending,
                spec,
                schema,
                writer,
                batch_size=batch_size,
                scan=checked,
                on_bad=on_bad_item,
                progress=bar,
            )
        finally:
            if bar:
                bar.close()
        t_pub = time.perf_counter()
        totals = writer.totals(len(shards))
        writer.publish(len(shards), totals, encoder={"backend": used["backend"]})
        publish_s = time.perf_counter() - t_pub
    # report from the totals just written (inspect() would read every part again)
    report = _report(
        out_dir,
        Run.open(out_dir, verify_parts=False),
        totals["payload_bytes"],
        totals["kl_bits"],
        totals["steps"],
        totals["fallback_blocks"],
    )
    return report | {
        "rejects": totals["rejects"],
        "adapted_blocks": totals["adapted_blocks"],
        "validation_seconds": checked.seconds,
        "engine": engine,
        "actors": used["actors"],
        "backend": used["backend"],
        "resumed_shards": len(shards) - len(pending),
        "shards": len(shards),
        "driver_seconds": used["driver_seconds"],
        "publish_seconds": publish_s,
        "fit_items": fit_info["items"],
        "fit_seconds": fit_info["seconds"],
        "partition": spec.plan.partition,
        "laws": "fitted" if fit else ("plan" if spec.plan.index_laws is not None else "fixed"),
    }


def fit(
    latents: str,
    prior_path: str,
    out_path: str,
    *,
    method: str = "sp-pfr",
    block_bits: float = 16.0,
    allocation: str = "mi",
    partition: str = DEFAULT_PARTITION,
    collapsed_block_size: int = COLLAPSED_BLOCK_SIZE,
    budget_offset_bits: int = 0,
    seed: int = 0,
    n_samples: int | str = 1 << 16,
    kl_offset_bits: float = 0.0,
    kl_max_bits: int = KL_SAMPLES_MAX_BITS,
    max_steps: int | None = None,
    adapt_above_bits: float | None = DEFAULT_ADAPT_ABOVE_BITS,
    fit_items: int = DEFAULT_FIT_ITEMS,
    backend=None,
) -> dict:
    """``recray fit``: build the codec plan for ``prior_path`` (the same options and defaults
    as :func:`compress`), fit its index laws on ``fit_items`` items of ``latents`` (the
    items that fail validation are left out) and write the plan to ``out_path``, for
    ``recray compress --plan`` runs of other inputs of the same model. The coding settings
    the laws depend on (method, budgets, adaptive partitions) are the compress options of
    the same names: give the same ones to ``compress``. Returns ``plan``, ``items``,
    ``seconds``, ``rejected`` (sample items left out)."""
    prior = read_prior(prior_path)
    plan = _plan_of(
        prior, block_bits, allocation, seed, collapsed_block_size, budget_offset_bits, partition
    )
    spec = _spec_of(
        plan,
        prior,
        method,
        seed,
        max_steps,
        (n_samples, kl_offset_bits, kl_max_bits),
        adapt_above_bits=adapt_above_bits,
        backend=backend,
    )
    index = LatentSource(latents, prior.dim).row_index()
    if index.n_rows == 0:
        raise InputError(f"latents {latents!r} hold no items")
    out = resolve(out_path)
    scratch = out.sibling(f".{out.name}.ids-{uuid.uuid4().hex[:12]}")
    try:
        scan = scan_shards(index, sample_ranges(index.n_rows, fit_items), spec, scratch)
    finally:
        scratch.rmtree()
    laws, info = fit_laws(index, spec, scan, fit_items)
    fitted = plan.with_laws(laws)
    write_plan(fitted, out_path)
    return {"plan": fitted, "rejected": len(scan.rejects)} | info


def _validate(index, shards, spec: CodecSpec, out_dir: str, engine: str, opts: RayOptions):
    """The validation pass, shard by shard (on Ray tasks with the Ray engine, see
    :attr:`RayOptions.validate_on_ray`, else here): the ids go to per-shard sorted id files
    in a scratch location next to the output, removed afterwards whatever happens, so this
    process holds O(shards) (plus one shard's or one hash range's keys when the pass runs
    here), not 16 bytes per item."""
    out = resolve(out_dir)
    scratch = out.sibling(f".{out.name}.ids-{uuid.uuid4().hex[:12]}")
    made_parent = out.renames and not out.parent().exists()
    try:
        on_ray = opts.validate_on_ray
        if on_ray is None:
            on_ray = index.n_rows >= VALIDATE_ON_RAY_ROWS
        if engine == "ray" and on_ray:
            from recray.pipeline.ray_engine import validate_on_ray

            return validate_on_ray(index, shards, spec, scratch, opts=opts)
        return scan_shards(index, shards, spec, scratch)
    finally:
        scratch.rmtree()
        if made_parent and not out.parent().listdir():
            out.parent().rmtree()  # nothing written yet: leave no empty directory either


def decompress(
    run_dir: str,
    out_path: str,
    *,
    backend=None,
    prior_path: str | None = None,
    batch_size: int = 65536,
    salvage: bool = False,
    rejects_path: str | None = None,
    progress=None,
    engine: str = "local",
    ray_options: RayOptions | None = None,
) -> dict:
    """Decode every item of a complete run into ``out_path`` (Parquet: ``id``, ``z``).

    ``engine="local"`` (the default) decodes in this process, part after part;
    ``"ray"`` decodes the parts on a Ray actor pool, one part per task, and this process
    writes the decoded tables in part order: the same file either way. Decoding costs one
    candidate per block (the search costs ``2^bits``), so Ray pays off only on large runs.

    A damaged run (a part that does not match the manifest, a message that fails its CRC
    or does not decode) is refused with the damaged items named. ``salvage=True`` (in this
    process) decodes every item whose part is readable and from this run, whose CRC holds
    and whose message decodes, and writes the others (``id`` when known, ``field``,
    ``reason``) to ``rejects_path`` (default ``<out_path>.rejects.parquet``);
    ``info["rejects"]`` counts them (items of a lost part count once each). A part that
    does not match the manifest although every row's CRC holds is decoded and reported:
    a row ``field = "part"`` in the rejects file and one line per part in
    ``info["warnings"]`` (``info["changed_parts"]`` names them).
    """
    run = Run.open(run_dir, verify_parts=False)
    prior = Prior.from_dict(json.loads(run.prior_json), where="run prior")
    if prior_path is not None and read_prior(prior_path).checksum() != prior.checksum():
        raise FormatError(f"prior {prior_path!r} is not the prior this run was coded with")
    spec = spec_from_header(run.header, prior, backend)
    damaged = run.damaged_parts()
    if damaged and not salvage:
        run.verify_parts()  # raises, naming the damaged items
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}; got {engine!r}")
    id_kind = run.header["id_type"]
    id_type = pa.int64() if id_kind == "int" else pa.string()
    schema = decoded_schema(id_kind, spec.plan.dim)
    out = resolve(out_path)
    if out.exists():
        raise InputError(f"output {out_path!r} already exists; remove it or choose another")
    rejects_path = rejects_path or out_path + ".rejects.parquet"
    rejects_loc = resolve(rejects_path)
    if salvage and rejects_loc.exists():
        raise InputError(f"rejects file {rejects_path!r} already exists; remove it first")
    if out.renames:
        out.parent().makedirs()  # like compress: missing parent directories are created
    # written under a temporary name and moved into place: the file appears whole or not
    # at all (a rename locally; on an object store a copy, whose object appears at once)
    tmp = out.sibling(f".{out.name}.partial-{uuid.uuid4().hex[:12]}")
    n = 0
    lost = _Lost()
    bar = (
        progress(total=run.manifest["items"], unit="item", desc="decompress") if progress else None
    )
    try:
        if engine == "ray" and not salvage:  # salvage decodes around damage in-process
            from recray.pipeline.ray_engine import decode_on_ray

            source = decode_on_ray(
                run, spec, schema, batch_size=batch_size, opts=ray_options or RayOptions()
            )
        else:
            source = _decode_here(run, damaged, lost, batch_size, salvage, spec, schema)
        with pq.ParquetWriter(tmp.path, schema, filesystem=tmp.fs) as w:
            for table, rows, nbits in source:
                if table.num_rows:
                    w.write_table(table)
                n += table.num_rows
                tick(bar, rows, nbits)
        if not salvage and n != run.manifest["items"]:
            raise FormatError(
                f"{run_dir!r}: the parts hold {n} items but the manifest says "
                f"{run.manifest['items']}"
            )
        if salvage and lost.rows["field"]:
            rejects_loc.write_parquet(lost.table(id_type))
        tmp.move_to(out)
    except BaseException:
        tmp.remove()
        raise
    finally:
        if bar:
            bar.close()
    result = {"items": n, "out": out_path, "rejects": lost.items}
    if salvage and lost.rows["field"]:
        result["rejects_path"] = rejects_path
    if lost.changed_parts:
        result["changed_parts"] = list(lost.changed_parts)
        result["warnings"] = [
            f"{file} does not match the manifest (size or SHA-256) although every row's "
            f"CRC-32 holds: its {rows} items were decoded, but the file was changed after the "
            f"run was written (listed in {rejects_path})"
            for file, rows in lost.changed_parts.items()
        ]
    return result


class _Lost:
    """What salvage could not decode: the rows of the rejects file (``id``, ``field``,
    ``reason``), how many items that is, and the parts decoded although they do not match
    the manifest (file -> rows)."""

    def __init__(self):
        self.rows = {"id": [], "field": [], "reason": []}
        self.items = 0
        self.changed_parts: dict[str, int] = {}

    def add(self, item_id, field: str, reason: str, items: int = 1) -> None:
        self.rows["id"].append(item_id)
        self.rows["field"].append(field)
        self.rows["reason"].append(reason)
        self.items += items

    def table(self, id_type) -> pa.Table:
        return pa.table(
            {
                "id": pa.array(self.rows["id"], type=id_type),
                "field": pa.array(self.rows["field"], type=pa.string()),
                "reason": pa.array(self.rows["reason"], type=pa.string()),
            }
        )


def _decode_here(run: Run, damaged: dict, lost: _Lost, batch_size: int, salvage: bool, spec,
                 schema):  # fmt: skip
    """``(decoded table, rows consumed, their nbits)`` per batch of every part, decoded in
    this process; with ``salvage`` the items that fail their CRC or do not decode (and the
    parts that are lost) are recorded in ``lost`` instead of raising."""
    for name, batch in _part_batches(run, damaged, lost, batch_size):
        ids = batch.column("id").to_pylist()
        msgs = batch.column("message").to_pylist()
        crcs = batch.column("crc32").to_numpy()
        if salvage:
            good = crc32_of(msgs) == crcs.astype(np.uint32)
            for i in np.flatnonzero(~good).tolist():
                lost.add(
                    ids[i],
                    "message",
                    f"item {fmt_item(ids[i])} in {name}: the message fails its CRC-32 (corrupted)",
                )
            ids = [v for v, g in zip(ids, good, strict=True) if g]
            msgs = [v for v, g in zip(msgs, good, strict=True) if g]
            tables = _decode_salvaging(ids, msgs, spec, schema, name, lost)
            table = pa.concat_tables(tables) if tables else schema.empty_table()
        else:
            check_crcs(ids, msgs, crcs)
            table = decoded_table(ids, msgs, spec, schema) if ids else schema.empty_table()
        yield table, batch.num_rows, batch.column("nbits")


def _decode_salvaging(ids: list, msgs: list, spec, schema, name: str, lost: _Lost) -> list:
    """Decoded tables of the items whose messages decode, in item order; each one that
    does not (a :class:`RecrayError`: its CRC holds but its bytes are not a message of this
    run) goes to ``lost``. A failing batch is halved until the failing items stand alone,
    so a few bad items cost about two decodes of the batch."""
    if not ids:
        return []
    try:
        return [decoded_table(ids, msgs, spec, schema)]
    except RecrayError as exc:
        if len(ids) == 1:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            why = why.removeprefix(f"item {fmt_item(ids[0])}: ")  # named once, below
            lost.add(
                ids[0],
                "message",
                f"item {fmt_item(ids[0])} in {name}: the message passes its CRC-32 but does "
                f"not decode ({why})",
            )
            return []
    h = len(ids) // 2
    return _decode_salvaging(ids[:h], msgs[:h], spec, schema, name, lost) + _decode_salvaging(
        ids[h:], msgs[h:], spec, schema, name, lost
    )


def _part_batches(run: Run, damaged: dict, lost: _Lost, batch_size: int):
    """``(part path, record batch)`` of every readable part of this run; a damaged part that
    is lost as a whole (unreadable, missing, from another run) adds one reject row (id
    null) counting its items, and a damaged part whose rows all pass their CRC is read and
    recorded in ``lost.changed_parts`` (and as a reject row that counts no item)."""
    for p in run.manifest["parts"]:
        if p["file"] in damaged:
            dmg = run.part_damage(p["file"])
            if dmg.bad_ids is None:
                lost.add(None, "part", f"{p['file']}: {dmg.describe()}", items=p["rows"])
                continue
            if not dmg.bad_ids:
                lost.changed_parts[p["file"]] = p["rows"]
                why = f"{damaged[p['file']]}; {dmg.describe()}: its items were decoded"
                lost.add(None, "part", f"{p['file']}: {why}", items=0)
        pf = run.part_file(p["file"])
        cols = ["id", "message", "crc32", "nbits"]
        for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
            yield p["file"], rb


def inspect(run_dir: str) -> dict:
    """Bitrate and diagnostics of a complete run, from the bytes on disk. A codec run (its
    messages carry the latent and then the data's tail, e.g. MNIST pixels) also reports the
    two shares: ``latent_bits_per_item`` (the latent message as the REC run wrote it) and
    ``tail_bits_per_item`` (the rest), and the overhead over KL of the latent share alone."""
    run = Run.open(run_dir, verify_parts=False)
    payload = 0
    kl = steps = fallback = 0.0
    cols = ["message", "kl_bits", "steps", "fallback_blocks"]
    codec = "codec" in run.header
    latent_bits = 0
    for rb in run.iter_rows(columns=cols + (["latent_nbits"] if codec else [])):
        payload += int(pc.sum(pc.binary_length(rb.column("message"))).as_py() or 0)
        kl += float(np.sum(rb.column("kl_bits").to_numpy()))
        steps += float(np.sum(rb.column("steps").to_numpy()))
        fallback += float(np.sum(rb.column("fallback_blocks").to_numpy()))
        if codec:
            latent_bits += int(np.sum(rb.column("latent_nbits").to_numpy()))
    report = _report(run_dir, run, payload, kl, steps, fallback)
    if codec:
        items = max(report["items"], 1)
        lat = latent_bits / items
        mean_kl = report["mean_kl_bits_per_item"]
        report |= {
            "codec": run.header["codec"].get("name"),
            "latent_bits_per_item": lat,
            "tail_bits_per_item": report["bits_per_item"] - lat,
            "overhead_over_kl_pct": 100.0 * (lat - mean_kl) / mean_kl
            if mean_kl > 0
            else float("nan"),
        }
    return report


def _report(run_dir: str, run: Run, payload: int, kl: float, steps: float, fallback: float) -> dict:
    """The figures :func:`inspect` prints, from a run's totals."""
    man = run.manifest
    items = int(man["items"])
    header_bytes = sum(run.file(f).size() for f in (PLAN_FILE, PRIOR_FILE, MANIFEST_FILE))
    part_bytes = sum(p["bytes"] for p in man["parts"])
    dim = int(run.header["dim"])
    plan = run.header["plan"]
    bits_item = 8.0 * payload / items
    mean_kl = kl / items
    return {
        "run": run_dir,
        "method": run.header["method"],
        "block_bits": plan["block_bits"],
        "n_blocks": len(plan["blocks"]),
        "dim": dim,
        "items": items,
        "payload_bytes": payload,
        "header_bytes": header_bytes,
        "parquet_bytes": part_bytes,
        "bits_per_item": bits_item,
        "bits_per_item_with_headers": 8.0 * (payload + header_bytes) / items,
        "bits_per_dim": bits_item / dim,
        "mean_kl_bits_per_item": mean_kl,
        "overhead_over_kl_pct": 100.0 * (bits_item - mean_kl) / mean_kl
        if mean_kl > 0
        else float("nan"),
        "mean_steps_per_item": steps / items,
        "fallback_blocks": int(fallback),
    }


def format_inspect(r: dict) -> str:
    return "\n".join(
        [
            f"run {r['run']}: method {r['method']}, {r['n_blocks']} blocks of ~{r['block_bits']:g} "
            f"bits over D = {r['dim']}",
            f"  items                 {r['items']:,}",
            f"  payload written       {r['payload_bytes']:,} bytes (messages only)",
            f"  headers               {r['header_bytes']:,} bytes (plan, prior, manifest)",
            f"  Parquet files         {r['parquet_bytes']:,} bytes on disk (ids, CRCs, "
            "diagnostics included)",
            f"  bits/item             {r['bits_per_item']:.2f} (payload); "
            f"{r['bits_per_item_with_headers']:.2f} with headers amortized",
            f"  bits/dim              {r['bits_per_dim']:.3f}",
            *(
                [
                    f"  codec                 {r['codec']}: latent {r['latent_bits_per_item']:.2f}"
                    f" bits/item + tail {r['tail_bits_per_item']:.2f} bits/item (the data "
                    "under p(x | z))",
                ]
                if "latent_bits_per_item" in r
                else []
            ),
            f"  mean KL/item          {r['mean_kl_bits_per_item']:.2f} bits",
            f"  overhead over KL      {r['overhead_over_kl_pct']:.1f} %"
            + (" (latent share only)" if "latent_bits_per_item" in r else ""),
            f"  mean steps/item       {r['mean_steps_per_item']:.1f}",
            f"  fallback blocks       {r['fallback_blocks']:,}",
        ]
    )
