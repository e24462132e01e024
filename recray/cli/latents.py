"""``recray datasets | compress | fit | decompress | inspect``: latent data sets and runs."""

from __future__ import annotations

import json
import os
import sys

from recray.backend import CHOICES as BACKEND_CHOICES
from recray.cli.common import (
    N_SAMPLES_HELP,
    _add_cluster_args,
    _add_kl_args,
    _n_samples_arg,
    _progress,
    _ray_opts,
    default_of,
)
from recray.errors import InputError


def cmd_synth(args) -> int:
    from recray.latents import synthesize

    lat, pri = synthesize(
        args.n,
        args.dim,
        args.out,
        seed=args.seed,
        informative_fraction=args.informative_fraction,
        string_ids=args.string_ids,
        outlier_fraction=args.outlier_fraction,
    )
    print(f"wrote {lat}\nwrote {pri}")
    return 0


def _plan_options(args) -> dict:
    """The plan options given on the command line (the library's defaults stand for the
    others); with ``--plan`` none may be given (the plan file fixes them)."""
    given = {k: getattr(args, k) for k in PLAN_OPTIONS if getattr(args, k, None) is not None}
    if getattr(args, "plan", None) and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise InputError(f"--plan fixes the codec plan; drop {flags}")
    return given


def cmd_linear_gaussian(args) -> int:
    from recray.latents.linear import linear_gaussian

    lat, pri = linear_gaussian(
        args.n, args.out, informative=args.informative, collapsed=args.collapsed, seed=args.seed
    )
    print(f"wrote {lat}\nwrote {pri}")
    return 0


def cmd_compress(args) -> int:
    from recray.pipeline import driver

    summary = driver.compress(
        args.latents,
        args.prior,
        args.out,
        **_plan_options(args),
        plan=args.plan,
        laws=args.laws,
        fit_items=args.fit_items,
        method=args.method,
        n_samples=args.n_samples,
        seed=args.seed,
        backend=args.backend,
        max_steps=args.max_steps,
        on_unbounded=args.on_unbounded,
        batch_size=args.batch_size,
        debug_samples=args.debug_samples,
        shard_rows=args.shard_rows,
        engine=args.engine,
        ray_options=_ray_opts(args),
        resume=args.resume,
        on_bad_item=args.on_bad_item,
        adapt_above_bits=None if args.adapt_above_bits <= 0 else args.adapt_above_bits,
        progress=_progress(),
        kl_offset_bits=args.kl_offset_bits,
        kl_max_bits=args.kl_max_bits,
    )
    print(driver.format_inspect(summary))
    extra = f", {summary['actors']} actors ({summary['backend']})" if summary["actors"] else ""
    resumed = (
        f"; resumed: {summary['resumed_shards']} of {summary['shards']} shards were committed"
        if summary["resumed_shards"]
        else ""
    )
    print(f"  engine                {summary['engine']}{extra}{resumed}")
    print(
        f"  validation            {summary['validation_seconds']:.2f} s before coding; "
        f"{summary['adapted_blocks']:,} blocks with adaptive partitions"
    )
    laws = {"plan": "from the plan", "fixed": "fixed (the partitions' own masses)"}.get(
        summary["laws"],
        f"fitted on {summary['fit_items']:,} items in {summary['fit_seconds']:.1f} s",
    )
    print(f"  plan                  {summary['partition']} partitions; laws {laws}")
    if summary["rejects"]:
        print(
            f"recray: {summary['rejects']:,} bad items were skipped; they are listed in "
            f"{os.path.join(args.out, 'rejects.parquet')}",
            file=sys.stderr,
        )
        return 3
    return 0


def cmd_fit(args) -> int:
    from recray.pipeline import driver

    r = driver.fit(
        args.latents,
        args.prior,
        args.out,
        **_plan_options(args),
        method=args.method,
        n_samples=args.n_samples,
        kl_offset_bits=args.kl_offset_bits,
        kl_max_bits=args.kl_max_bits,
        seed=args.seed,
        backend=args.backend,
        max_steps=args.max_steps,
        adapt_above_bits=None if args.adapt_above_bits <= 0 else args.adapt_above_bits,
        fit_items=args.fit_items,
    )
    plan = r["plan"]
    print(
        f"wrote {args.out}: {plan.partition} partitions, {plan.n_blocks} blocks, laws fitted on "
        f"{r['items']:,} items in {r['seconds']:.1f} s ({r['rejected']:,} bad items left out)"
    )
    return 0


def cmd_decompress(args) -> int:
    from recray.pipeline import driver

    r = driver.decompress(
        args.run,
        args.out,
        backend=args.backend,
        prior_path=args.prior,
        salvage=args.salvage,
        progress=_progress(),
        engine=args.engine,
        ray_options=_ray_opts(args),
    )
    print(f"decoded {r['items']:,} items into {r['out']}")
    for line in r.get("warnings", []):
        print(f"recray: {line}", file=sys.stderr)
    if r["rejects"]:
        print(
            f"recray: {r['rejects']:,} damaged items could not be decoded; they are listed "
            f"in {r['rejects_path']}",
            file=sys.stderr,
        )
    return 3 if r["rejects"] or r.get("warnings") else 0


def cmd_inspect(args) -> int:
    from recray.pipeline import driver

    r = driver.inspect(args.run)
    if args.json:
        print(json.dumps(r, indent=1, sort_keys=True))
    else:
        print(driver.format_inspect(r))
    return 0


PLAN_OPTIONS = (
    "block_bits",
    "allocation",
    "partition",
    "collapsed_block_size",
    "budget_offset_bits",
)


def _add_plan_args(c) -> None:
    """The options of the codec plan and of the coding settings its laws depend on (shared
    by ``compress`` and ``fit``; every default is :func:`recray.pipeline.driver.compress`'s)."""
    from recray import rec
    from recray.pipeline import driver
    from recray.plan import PARTITIONS

    def d(name):
        return default_of(driver.compress, name)

    c.add_argument("--method", choices=rec.METHODS, default=d("method"))
    c.add_argument(
        "--block-bits",
        type=float,
        default=None,
        help=f"information per block (bits) of the codec plan (default: {d('block_bits')})",
    )
    c.add_argument(
        "--partition",
        choices=PARTITIONS,
        default=None,
        help="tree: intervals of unequal prior mass, about equally wide where the posteriors "
        "sit (fewer candidates, fewer bits); complete: 2^b equal-mass intervals per "
        f"dimension (default: {d('partition')})",
    )
    c.add_argument(
        "--allocation",
        choices=("mi", "uniform", "random"),
        default=None,
        help=f"complete partitions: bits per dimension by (default: {d('allocation')})",
    )
    c.add_argument(
        "--collapsed-block-size",
        type=int,
        default=None,
        help="collapsed dims (no information) per block of their own; 0 spreads them over "
        "the informative blocks (suits orc; exact methods then search larger blocks) "
        f"(default: {d('collapsed_block_size')})",
    )
    c.add_argument(
        "--budget-offset-bits",
        type=int,
        default=None,
        help="bits added to every informative block's partition budget over its information "
        f"(default: {d('budget_offset_bits')})",
    )
    c.add_argument("--n-samples", type=_n_samples_arg, default=d("n_samples"), help=N_SAMPLES_HELP)
    _add_kl_args(c, driver.compress)
    c.add_argument(
        "--adapt-above-bits",
        type=float,
        default=d("adapt_above_bits"),
        help="sp-pfr: blocks whose exact search would need more than 2^BITS candidates under "
        "the plan get extra partition bits, sent as side information (exact; 0 turns it off)",
    )
    c.add_argument(
        "--seed",
        type=int,
        default=d("seed"),
        help="seed of the shared randomness (decoder needs it)",
    )
    c.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help="the search's backend (default: $RECRAY_BACKEND, else auto: cuda on a GPU, "
        "numba where it imports, else numpy; all give the same bytes)",
    )
    c.add_argument(
        "--max-steps", type=int, default=None, help="step cap of the exact methods (default 2^26)"
    )


def _add_compress_args(c) -> None:
    from recray.pipeline import driver
    from recray.pipeline.fit import AUTO_FIT_MIN_ITEMS, LAWS_CHOICES
    from recray.pipeline.options import RayOptions

    def d(name):
        return default_of(driver.compress, name)

    _add_plan_args(c)
    c.add_argument(
        "--laws",
        choices=LAWS_CHOICES,
        default=d("laws"),
        help="the index laws of the messages: fit (fitted on --fit-items items of the input, "
        "written in the run), fixed (none: the partition's own masses), auto (fit on inputs "
        f"of at least {AUTO_FIT_MIN_ITEMS:,} items, else fixed; a --plan's own laws are kept)",
    )
    c.add_argument(
        "--fit-items",
        type=int,
        default=d("fit_items"),
        help="items the laws are fitted on (a spread sample of the input)",
    )
    c.add_argument(
        "--plan",
        default=None,
        help="a plan JSON from recray fit (blocks, partitions, laws) instead of one built "
        "from the prior; the plan options (--block-bits, --partition, ...) are then refused",
    )
    c.add_argument(
        "--on-bad-item",
        choices=("fail", "skip"),
        default=d("on_bad_item"),
        help="fail: stop before coding and list every bad item; skip: code the rest and list "
        "the bad items in RUN/rejects.parquet (exit status 3)",
    )
    c.add_argument(
        "--on-unbounded",
        choices=("error", "orc"),
        default=d("on_unbounded"),
        help="blocks an exact method cannot code (posterior wider than the prior, "
        "or expected steps above the cap): fail, or code them with the "
        "fixed-budget twin",
    )
    c.add_argument(
        "--batch-size",
        type=int,
        default=d("batch_size"),
        help="items per search call (per actor batch)",
    )
    c.add_argument(
        "--shard-rows",
        type=int,
        default=d("shard_rows"),
        help="items per shard: the unit of commit and resume, one Parquet part each",
    )
    c.add_argument(
        "--engine",
        choices=("ray", "local"),
        default=d("engine"),
        help="ray: a Ray Data actor pool (local Ray unless --address/RAY_ADDRESS); "
        "local: in this process. Both write the same bytes",
    )
    c.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto, ray://host:10001, host:6379 (default: RAY_ADDRESS, "
        "else a local Ray started for this run)",
    )
    c.add_argument(
        "--actors", type=int, default=None, help="actor pool size (default: GPUs, else CPUs)"
    )
    _add_cluster_args(c)
    c.add_argument(
        "--actor-cpus",
        type=float,
        default=default_of(RayOptions, "actor_cpus"),
        help="CPUs reserved per NumPy actor (fractional keeps a slot for Ray Data's reads)",
    )
    c.add_argument(
        "--retries",
        type=int,
        default=default_of(RayOptions, "retries"),
        help="Ray read-task retries and actor restarts/task retries after a node or worker dies",
    )
    c.add_argument(
        "--resume",
        action="store_true",
        help="continue an unfinished run of --out (same input and settings): "
        "committed shards are kept",
    )
    c.add_argument(
        "--debug-samples",
        action="store_true",
        help="also store the encoder's latents (column z_debug) for round-trip checks",
    )


def add_parsers(sub) -> None:
    """The latent-run commands on the top-level subparsers ``sub``."""
    ds = sub.add_parser("datasets", help="prepare data sets")
    dsub = ds.add_subparsers(dest="datasets", required=True)
    syn = dsub.add_parser("synth", help="a synthetic latent data set and its prior")
    syn.add_argument("--n", type=int, required=True, help="items")
    syn.add_argument("--dim", type=int, required=True, help="latent dimensions D")
    syn.add_argument("--out", required=True, help="directory for latents.parquet, prior.json")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--informative-fraction", type=float, default=0.5)
    syn.add_argument("--string-ids", action="store_true")
    syn.add_argument(
        "--outlier-fraction",
        type=float,
        default=0.0,
        help="share of items with one dimension far out (mu 3.5-4.5 prior-sigma)",
    )
    syn.set_defaults(func=cmd_synth)
    lg = dsub.add_parser(
        "linear-gaussian",
        help="mean-field posteriors of a linear-Gaussian model and their prior",
    )
    lg.add_argument("--n", type=int, required=True, help="items")
    lg.add_argument("--informative", type=int, default=24, help="informative dimensions")
    lg.add_argument("--collapsed", type=int, default=24, help="near-collapsed dimensions")
    lg.add_argument("--out", required=True, help="directory for latents.parquet, prior.json")
    lg.add_argument("--seed", type=int, default=0)
    lg.set_defaults(func=cmd_linear_gaussian)

    c = sub.add_parser("compress", help="compress a latent data set into a run directory")
    c.add_argument("latents", help="Parquet file or directory: id, mu, sigma")
    c.add_argument("--prior", required=True, help="prior JSON: mu, sigma, mutual_information_bits")
    c.add_argument("--out", required=True, help="run directory (or s3://, gs:// URI) to create")
    _add_compress_args(c)
    c.set_defaults(func=cmd_compress)

    from recray.pipeline import driver

    f = sub.add_parser(
        "fit", help="build a codec plan and fit its index laws on latents (for compress --plan)"
    )
    f.add_argument("latents", help="Parquet file or directory: id, mu, sigma")
    f.add_argument("--prior", required=True, help="prior JSON: mu, sigma, mutual_information_bits")
    f.add_argument("--out", required=True, help="plan JSON to write")
    _add_plan_args(f)
    f.add_argument(
        "--fit-items",
        type=int,
        default=default_of(driver.fit, "fit_items"),
        help="items the laws are fitted on",
    )
    f.set_defaults(func=cmd_fit)

    d = sub.add_parser("decompress", help="decode a run directory into latents")
    d.add_argument("run", help="run directory (or URI)")
    d.add_argument(
        "--out", required=True, help="Parquet file (or URI) to create: id, z; parents are created"
    )
    d.add_argument("--prior", default=None, help="check the run was coded with this prior")
    d.add_argument("--backend", choices=BACKEND_CHOICES, default=None)
    d.add_argument(
        "--salvage",
        action="store_true",
        help="decode every item whose part is readable, whose CRC holds and whose message "
        "decodes; list the others, and parts changed around sound rows, in "
        "OUT.rejects.parquet (exit status 3); runs in this process",
    )
    d.add_argument(
        "--engine",
        choices=("local", "ray"),
        default=default_of(driver.decompress, "engine"),
        help="local: decode in this process; ray: one part per task on a Ray actor pool "
        "(the same file; pays off on large runs, decoding is light next to the search)",
    )
    d.add_argument("--address", default=None, help="Ray cluster to join (default: local Ray)")
    d.add_argument("--actors", type=int, default=None, help="actor pool size")
    _add_cluster_args(d)
    d.set_defaults(func=cmd_decompress)

    ins = sub.add_parser("inspect", help="bitrate and diagnostics of a run")
    ins.add_argument("run", help="run directory (or URI) written by compress or a codec")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=cmd_inspect)
