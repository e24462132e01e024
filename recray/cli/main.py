"""``recray`` - the command line.

    recray bench toy [--quick] [--json PATH] [--plots DIR] [--backend B]
    recray bench throughput [--quick] [--json PATH] [--backend B]
    recray bench bitrate | compress | scale [...]
    recray datasets synth --n N --dim D --out DIR
    recray compress LATENTS --prior P --out RUN [--engine ray|local] [--address A] [--resume]
    recray decompress RUN --out Z.parquet
    recray inspect RUN
    recray codec mnist compress|decompress|demo [...]
    recray codec inr compress [TILES | --split test] [--rate R] --out RUN   (recray.cli.inr)
    recray codec inr decompress RUN --out DIR
    recray bench inr [--limit N] --json PATH --plots DIR
    recray version

``main(argv)`` returns the exit code: 0 on success, 2 on a :class:`RecrayError` (bad input,
named in one line on stderr), 1 on a failed check, 3 when the work finished but left items
out (``compress --on-bad-item skip`` skipped bad items, ``decompress --salvage`` could not
decode damaged ones, or decoded a part that no longer matches the manifest; both list them
in a rejects file).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

from recray import __version__
from recray.backend import CHOICES as BACKEND_CHOICES
from recray.errors import InputError, RecrayError


def _progress():
    """A progress bar factory when stdout and stderr are terminals, else ``None``."""
    from recray.pipeline.progress import bar_factory

    return bar_factory()


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None, False) or the help
    already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _format_action(self, action):
        # an option without help text still shows its default
        if not action.help and action.option_strings and action.default not in (
            None, False, argparse.SUPPRESS,
        ):  # fmt: skip
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's help shows the defaults (sub-parsers are built with this class)."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _Help)
        super().__init__(*args, **kw)


def _write_json(path: str | None, payload) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def cmd_bench_toy(args) -> int:
    from recray.bench import toy

    cfg = toy.ToyConfig.quick() if args.quick else toy.ToyConfig()
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        records, config = saved["records"], saved.get("config", {})
    else:
        records = toy.run_toy(cfg, backend=args.backend, progress=_progress())
        config = cfg.__dict__ | {"quick": bool(args.quick)}
    print(toy.format_table(records))
    summary = toy.summarize(records)
    print("\nsummary:")
    for k, v in summary.items():
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    _write_json(args.json, {"records": records, "summary": summary, "config": config})
    if args.plots:
        for p in toy.plot(records, args.plots):
            print(f"wrote {p}")
    return 0


def cmd_bench_throughput(args) -> int:
    from recray.bench import throughput

    kw = dict(n_kernel=2000, n_numpy=100, n_decode=100_000) if args.quick else {}
    r = throughput.run_throughput(backend=args.backend or "numba", **kw)
    print(throughput.format_result(r))
    _write_json(args.json, r)
    return 0 if r["identical_indices"] and r["identical_decode"] else 1


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
    """The plan options given on the command line, the others at their defaults; with
    ``--plan`` none may be given (the plan file fixes them)."""
    from recray.pipeline.driver import PLAN_DEFAULTS

    given = {k: getattr(args, k) for k in PLAN_OPTIONS if getattr(args, k, None) is not None}
    if getattr(args, "plan", None) and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise InputError(f"--plan fixes the codec plan; drop {flags}")
    return PLAN_DEFAULTS | given


def cmd_linear_gaussian(args) -> int:
    from recray.latents.linear import linear_gaussian

    lat, pri = linear_gaussian(
        args.n, args.out, informative=args.informative, collapsed=args.collapsed, seed=args.seed
    )
    print(f"wrote {lat}\nwrote {pri}")
    return 0


def cmd_compress(args) -> int:
    from recray.pipeline import driver
    from recray.pipeline.options import RayOptions

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
        ray_options=RayOptions(
            address=args.address,
            actors=args.actors,
            actor_cpus=args.actor_cpus,
            retries=args.retries,
            connect_timeout=args.connect_timeout,
            verbose=args.verbose,
        ),
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
    by ``compress`` and ``fit``; defaults: :data:`recray.pipeline.driver.PLAN_DEFAULTS`)."""
    from recray import rec
    from recray.pipeline.driver import PLAN_DEFAULTS
    from recray.plan import PARTITIONS
    from recray.plan.adaptive import DEFAULT_ADAPT_ABOVE_BITS

    c.add_argument("--method", choices=rec.METHODS, default="sp-pfr")
    c.add_argument(
        "--block-bits",
        type=float,
        default=None,
        help="information per block (bits) of the codec plan "
        f"(default: {PLAN_DEFAULTS['block_bits']})",
    )
    c.add_argument(
        "--partition",
        choices=PARTITIONS,
        default=None,
        help="tree: intervals of unequal prior mass, about equally wide where the posteriors "
        "sit (fewer candidates, fewer bits); complete: 2^b equal-mass intervals per "
        f"dimension (default: {PLAN_DEFAULTS['partition']})",
    )
    c.add_argument(
        "--allocation",
        choices=("mi", "uniform", "random"),
        default=None,
        help=f"complete partitions: bits per dimension by (default: {PLAN_DEFAULTS['allocation']})",
    )
    c.add_argument(
        "--collapsed-block-size",
        type=int,
        default=None,
        help="collapsed dims (no information) per block of their own; 0 spreads them over "
        "the informative blocks (suits orc; exact methods pay ~0.72 bits of D_inf each) "
        f"(default: {PLAN_DEFAULTS['collapsed_block_size']})",
    )
    c.add_argument(
        "--budget-offset-bits",
        type=int,
        default=None,
        help="bits added to every informative block's partition budget over its information "
        f"(default: {PLAN_DEFAULTS['budget_offset_bits']})",
    )
    c.add_argument("--n-samples", type=_n_samples_arg, default=1 << 16, help=N_SAMPLES_HELP)
    _add_kl_args(c)
    c.add_argument(
        "--adapt-above-bits",
        type=float,
        default=DEFAULT_ADAPT_ABOVE_BITS,
        help="sp-pfr: blocks whose exact search would need more than 2^BITS candidates under "
        "the plan get extra partition bits, sent as side information (exact; 0 turns it off)",
    )
    c.add_argument(
        "--seed", type=int, default=0, help="seed of the shared randomness (decoder needs it)"
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
    from recray.pipeline.fit import AUTO_FIT_MIN_ITEMS, DEFAULT_FIT_ITEMS, LAWS_CHOICES

    _add_plan_args(c)
    c.add_argument(
        "--laws",
        choices=LAWS_CHOICES,
        default="auto",
        help="the index laws of the messages: fit (fitted on --fit-items items of the input, "
        "written in the run), fixed (none: the partition's own masses), auto (fit on inputs "
        f"of at least {AUTO_FIT_MIN_ITEMS:,} items, else fixed; a --plan's own laws are kept)",
    )
    c.add_argument(
        "--fit-items",
        type=int,
        default=DEFAULT_FIT_ITEMS,
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
        default="fail",
        help="fail: stop before coding and list every bad item; skip: code the rest and list "
        "the bad items in RUN/rejects.parquet (exit status 3)",
    )
    c.add_argument(
        "--on-unbounded",
        choices=("error", "orc"),
        default="error",
        help="blocks an exact method cannot code (posterior wider than the prior, "
        "or expected steps above the cap): fail, or code them with the "
        "fixed-budget twin",
    )
    c.add_argument(
        "--batch-size", type=int, default=4096, help="items per search call (per actor batch)"
    )
    c.add_argument(
        "--shard-rows",
        type=int,
        default=1 << 16,
        help="items per shard: the unit of commit and resume, one Parquet part each",
    )
    c.add_argument(
        "--engine",
        choices=("ray", "local"),
        default="ray",
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
        default=0.5,
        help="CPUs reserved per NumPy actor (fractional keeps a slot for Ray Data's reads)",
    )
    c.add_argument(
        "--retries",
        type=int,
        default=4,
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


def cmd_bench_bitrate(args) -> int:
    from recray.bench import bitrate

    records = bitrate.run_bitrate(
        n=args.n, dim=args.dim, seed=args.seed, workdir=args.workdir, progress=_progress()
    )
    print(bitrate.format_table(records))
    _write_json(args.json, records)
    return 0


def cmd_bench_compress(args) -> int:
    from recray.bench import compress

    extra = []  # recray compress's own defaults unless set here
    if args.on_unbounded is not None:
        extra += ["--on-unbounded", args.on_unbounded]
    if args.max_steps is not None:
        extra += ["--max-steps", str(args.max_steps)]
    r = compress.run_compress_bench(
        n=args.n,
        dim=args.dim,
        method=args.method,
        block_bits=args.block_bits,
        batch_size=args.batch_size,
        workdir=args.workdir,
        extra=extra,
    )
    print(compress.format_result(r))
    _write_json(args.json, r)
    return 0


def cmd_bench_outliers(args) -> int:
    from recray.bench import outliers

    r = outliers.run_outlier_bench(
        n=args.n,
        dim=args.dim,
        outlier_fraction=args.outlier_fraction,
        engine=args.engine,
        workdir=args.workdir,
    )
    print(outliers.format_result(r))
    _write_json(args.json, r)
    bad = any(w["fallback_blocks"] or w["rejects"] for w in r["rows"])
    return 1 if bad else 0


def cmd_bench_plan(args) -> int:
    from recray.bench import plan

    settings = plan.QUICK if args.quick else plan.SETTINGS
    print(plan.HEADER, flush=True)
    result = plan.run_plan_bench(
        n=args.n,
        sets=args.sets,
        settings=settings,
        workdir=args.workdir,
        backend=args.backend,
        progress=lambda r: print(plan.format_row(r), flush=True),
    )
    for name, why in result["skipped"].items():
        print(f"{name}: skipped ({why})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(plan.to_json(result) + "\n")
    if args.png:
        print(f"wrote {plan.plot(result, args.png)}")
    return 0


def cmd_bench_reads(args) -> int:
    from recray.bench import reads

    r = reads.run_reads(
        n=args.n, dim=args.dim, chunk_rows=args.chunk_rows, row_group_rows=args.row_group_rows
    )
    print(reads.format_result(r))
    _write_json(args.json, r)
    return 0 if r["iter_tables"]["amplification"] <= 1.001 else 1


def cmd_bench_scale(args) -> int:
    from recray.bench import scale

    def show(rec):
        print(
            f"  {rec['setup']}, {rec['actors']} actors: {rec['items_per_s']:.1f} items/s",
            flush=True,
        )

    kw = dict(n=800, shard_rows=200) if args.quick else dict(n=args.n)
    r = scale.run_scale(dim=args.dim, workdir=args.workdir, progress=show, **kw)
    print(scale.format_result(r))
    _write_json(args.json, r)
    return 0 if r["summary"]["identical_bytes"] else 1


def cmd_bench_driver(args) -> int:
    from recray.bench import scale

    r = scale.run_driver_cost(
        n=args.n,
        dim=args.dim,
        block_bits=args.block_bits,
        batch_size=args.batch_size,
        shard_rows=args.shard_rows,
        actors=args.actors,
        decompress=not args.no_decompress,
        validate_on_ray={"auto": None, "driver": False, "ray": True}[args.validate_on],
        workdir=args.workdir,
    )
    print(scale.format_driver_cost(r))
    _write_json(args.json, r)
    return 0


def _ray_opts(args):
    from recray.pipeline.options import RayOptions

    return RayOptions(
        address=args.address,
        actors=args.actors,
        connect_timeout=args.connect_timeout,
        verbose=args.verbose,
    )


def _add_cluster_args(c) -> None:
    from recray.pipeline.options import DEFAULT_CONNECT_TIMEOUT_S

    c.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for the Ray cluster at --address (or RAY_ADDRESS) before failing",
    )
    c.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own logs, worker output and Ray Data's per-operator progress bars",
    )


def _n_samples_arg(value: str):
    """``--n-samples``: an integer ``N``, or ``kl`` (per-block ``N`` from the information)."""
    if value.strip().lower() == "kl":
        return "kl"
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an integer N >= 1 nor 'kl'"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"N must be >= 1; got {n}")
    return n


N_SAMPLES_HELP = (
    "fixed budget N of orc/sp-orc (and of the exact methods' fallback): an integer for every "
    "block, or 'kl': per block N_b = 2^ceil(I_b + --kl-offset-bits) from the block's "
    "information I_b, capped at 2^--kl-max-bits (orc then writes log2 N_b index bits per block)"
)


def _add_kl_args(c) -> None:
    from recray.plan import KL_SAMPLES_MAX_BITS

    c.add_argument(
        "--kl-offset-bits",
        type=float,
        default=0.0,
        help="--n-samples kl: bits added to each block's information before rounding up",
    )
    c.add_argument(
        "--kl-max-bits",
        type=int,
        default=KL_SAMPLES_MAX_BITS,
        help=f"--n-samples kl: cap of log2 N_b (default {KL_SAMPLES_MAX_BITS}, at most 24)",
    )


def _add_ray_args(c) -> None:
    c.add_argument(
        "--engine", choices=("ray", "local"), default="ray", help="where the search runs"
    )
    c.add_argument("--address", default=None, help="Ray cluster to join (default: local Ray)")
    c.add_argument("--actors", type=int, default=None, help="actor pool size")
    _add_cluster_args(c)


def cmd_mnist_compress(args) -> int:
    from recray.codecs import mnist

    r = mnist.compress(
        args.out,
        split=args.split,
        limit=args.limit,
        method=args.method,
        block_bits=args.block_bits,
        n_samples=args.n_samples,
        seed=args.seed,
        engine=args.engine,
        ray_options=_ray_opts(args),
        data_dir=args.data_dir,
        weights=args.weights,
        collapsed_block_size=args.collapsed_block_size,
        budget_offset_bits=args.budget_offset_bits,
        laws=args.laws,
        progress=_progress(),
        kl_offset_bits=args.kl_offset_bits,
        kl_max_bits=args.kl_max_bits,
    )
    print(
        f"{r['images']:,} images -> {args.out}: {r['bits_per_image']:.1f} bits/image "
        f"({r['bits_per_pixel']:.4f} bits/pixel); latent messages alone "
        f"{r['latent_only_bits_per_image']:.1f} bits for {r['kl_bits_per_image']:.1f} bits of "
        f"KL; {r['encode_ms_per_image']:.1f} ms/image ({r['engine']})"
    )
    return 0


def cmd_mnist_decompress(args) -> int:
    from recray.codecs import mnist

    r = mnist.decompress(
        args.run,
        args.out,
        verify=args.verify,
        data_dir=args.data_dir,
        weights=args.weights,
        progress=_progress(),
        engine=args.engine,
        ray_options=_ray_opts(args),
    )
    tail = "; identical to the source, byte for byte" if r.get("verified") else ""
    print(f"decoded {r['images']:,} images into {r['out']}{tail}")
    return 0


def cmd_bench_mnist(args, demo: bool = False) -> int:
    from recray.bench import mnist as bm

    grid = getattr(args, "grid", False)
    settings = bm.DEMO if demo else bm.GRID if grid else bm.FULL

    def show(row):
        print(
            f"  measured: {row['row']} ({row['images']} images): "
            + (
                f"failed: {row['failed']}"
                if "failed" in row
                else f"{row['bits_per_image']:.1f} bits/image"
            ),
            flush=True,
        )

    r = bm.run_mnist_table(
        limit=args.limit,
        settings=settings,
        engine=args.engine,
        ray_options=_ray_opts(args),
        workdir=args.workdir,
        data_dir=args.data_dir,
        report=show,
        decode_all=grid,
        bias=grid,
        baselines=not grid,
    )
    print(bm.format_grid(r) if grid else bm.format_table(r))
    if grid and args.png:
        bm.plot_grid(r, args.png)
    _write_json(args.json, r)
    return 0


DATA_DIR_HELP = (
    "MNIST cache directory (default: $RECRAY_DATA_DIR/mnist, else "
    "$XDG_CACHE_HOME/recray/mnist, i.e. ~/.cache/recray/mnist)"
)


def build_parser() -> argparse.ArgumentParser:
    from recray import rec

    p = _Parser(
        prog="recray",
        description="Relative entropy coding with space partitioning (NumPy/CuPy, Ray, Parquet)",
    )
    p.add_argument("--version", action="version", version=f"recray {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="benchmarks whose figures we report")
    bsub = bench.add_subparsers(dest="bench", required=True)
    toy = bsub.add_parser("toy", help="Figure 3 and the allocation ablation on 5-D toys")
    toy.add_argument("--quick", action="store_true", help="fewer runs and sweep points (<60 s)")
    toy.add_argument("--json", metavar="PATH", help="write records and summary as JSON")
    toy.add_argument("--plots", metavar="DIR", help="write PNG figures into DIR")
    toy.add_argument(
        "--from-json",
        metavar="PATH",
        help="do not run: print and plot the records of an earlier --json",
    )
    toy.add_argument("--backend", choices=BACKEND_CHOICES, default=None)
    toy.set_defaults(func=cmd_bench_toy)
    thr = bsub.add_parser(
        "throughput", help="blocks/s and candidates/s: NumPy reference vs kernel; decode rate"
    )
    thr.add_argument("--quick", action="store_true", help="fewer blocks")
    thr.add_argument("--json", metavar="PATH")
    thr.add_argument("--backend", choices=BACKEND_CHOICES, default=None)
    thr.set_defaults(func=cmd_bench_throughput)

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

    from recray.pipeline.fit import DEFAULT_FIT_ITEMS

    f = sub.add_parser(
        "fit", help="build a codec plan and fit its index laws on latents (for compress --plan)"
    )
    f.add_argument("latents", help="Parquet file or directory: id, mu, sigma")
    f.add_argument("--prior", required=True, help="prior JSON: mu, sigma, mutual_information_bits")
    f.add_argument("--out", required=True, help="plan JSON to write")
    _add_plan_args(f)
    f.add_argument(
        "--fit-items", type=int, default=DEFAULT_FIT_ITEMS, help="items the laws are fitted on"
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
        default="local",
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

    br = bsub.add_parser("bitrate", help="bits/item vs KL for every method at 16/32-bit blocks")
    br.add_argument("--n", type=int, default=2000)
    br.add_argument("--dim", type=int, default=32)
    br.add_argument("--seed", type=int, default=0)
    br.add_argument("--workdir", default=None, help="keep the data and runs here")
    br.add_argument("--json", metavar="PATH")
    br.set_defaults(func=cmd_bench_bitrate)
    bc = bsub.add_parser("compress", help="items/s and peak memory of recray compress")
    bc.add_argument("--n", type=int, default=1_000_000)
    bc.add_argument("--dim", type=int, default=64)
    bc.add_argument("--method", default="sp-pfr")
    bc.add_argument("--block-bits", type=float, default=16.0)
    bc.add_argument("--batch-size", type=int, default=4096)
    bc.add_argument(
        "--on-unbounded",
        choices=("error", "orc"),
        default=None,
        help="passed to recray compress (default: compress's own)",
    )
    bc.add_argument(
        "--max-steps", type=int, default=None, help="passed to recray compress (default: its own)"
    )
    bc.add_argument("--workdir", default=None)
    bc.add_argument("--json", metavar="PATH")
    bc.set_defaults(func=cmd_bench_compress)

    from recray.bench.plan import SETS as PLAN_SETS

    bp = bsub.add_parser(
        "plan", help="bits/item against candidates/item of the codec plan's settings"
    )
    bp.add_argument("--n", type=int, default=4000, help="items per data set")
    bp.add_argument("--sets", nargs="+", choices=PLAN_SETS, default=list(PLAN_SETS))
    bp.add_argument("--quick", action="store_true", help="three settings only")
    bp.add_argument("--workdir", default=None, help="keep the data sets here")
    bp.add_argument("--backend", choices=BACKEND_CHOICES, default=None)
    bp.add_argument("--json", metavar="PATH")
    bp.add_argument("--png", metavar="PATH")
    bp.set_defaults(func=cmd_bench_plan)

    bo = bsub.add_parser(
        "outliers",
        help="defaults on a clean set and one with outliers: all exact? side-information bits",
    )
    bo.add_argument("--n", type=int, default=100_000)
    bo.add_argument("--dim", type=int, default=64)
    bo.add_argument("--outlier-fraction", type=float, default=0.01)
    bo.add_argument("--engine", choices=("ray", "local"), default="local")
    bo.add_argument("--workdir", default=None)
    bo.add_argument("--json", metavar="PATH")
    bo.set_defaults(func=cmd_bench_outliers)

    bs = bsub.add_parser(
        "scale", help="Ray engine items/s: 1 and 2 actors, simulated multi-node cluster"
    )
    bs.add_argument("--n", type=int, default=4000)
    bs.add_argument("--dim", type=int, default=32)
    bs.add_argument("--quick", action="store_true", help="800 items (a smoke run)")
    bs.add_argument("--workdir", default=None)
    bs.add_argument("--json", metavar="PATH")
    bs.set_defaults(func=cmd_bench_scale)

    bdc = bsub.add_parser(
        "driver",
        help="the driver's CPU per item of a compress and a decompress on a local Ray",
    )
    bdc.add_argument("--n", type=int, default=200_000)
    bdc.add_argument("--dim", type=int, default=16)
    bdc.add_argument("--block-bits", type=float, default=4.0)
    bdc.add_argument("--shard-rows", type=int, default=10_000)
    bdc.add_argument("--batch-size", type=int, default=2000)
    bdc.add_argument("--actors", type=int, default=2)
    bdc.add_argument("--no-decompress", action="store_true", help="compress only")
    bdc.add_argument(
        "--validate-on",
        choices=("auto", "driver", "ray"),
        default="auto",
        help="where the validation pass runs (auto: Ray tasks from 2^20 items on)",
    )
    bdc.add_argument("--workdir", default=None)
    bdc.add_argument("--json", metavar="PATH")
    bdc.set_defaults(func=cmd_bench_driver)

    brd = bsub.add_parser(
        "reads", help="read amplification: bytes decoded per byte handed out, before and now"
    )
    brd.add_argument("--n", type=int, default=20_000, help="rows in the file")
    brd.add_argument("--dim", type=int, default=16, help="latent dimensions")
    brd.add_argument("--chunk-rows", type=int, default=1000, help="rows per read chunk")
    brd.add_argument(
        "--row-group-rows", type=int, default=None, help="rows per row group (default: all)"
    )
    brd.add_argument("--json", metavar="PATH")
    brd.set_defaults(func=cmd_bench_reads)

    bm = bsub.add_parser("mnist", help="the lossless MNIST table (REC settings vs -ELBO, PNG...)")
    bm.add_argument("--limit", type=int, default=None, help="first N test images (default all)")
    bm.add_argument("--workdir", default=None)
    bm.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    bm.add_argument("--json", metavar="PATH")
    bm.add_argument(
        "--grid",
        action="store_true",
        help="the blocks x samples table (ORC, PFR, SP-ORC, SP-PFR, GPRS; every run decoded "
        "and timed, KS of the latent z-scores) instead of the summary table",
    )
    bm.add_argument("--png", metavar="PATH", help="--grid: plot bits vs encode time here")
    _add_ray_args(bm)
    bm.set_defaults(func=cmd_bench_mnist)

    codec = sub.add_parser("codec", help="codecs built on REC (lossless MNIST, lossy INR)")
    csub = codec.add_subparsers(dest="codec", required=True)
    mn = csub.add_parser("mnist", help="lossless MNIST: VAE latent by REC, pixels under p(x|z)")
    msub = mn.add_subparsers(dest="mnist", required=True)
    mc = msub.add_parser("compress", help="compress MNIST images into a run directory")
    mc.add_argument("--out", required=True)
    mc.add_argument("--split", choices=("test", "train"), default="test")
    mc.add_argument("--limit", type=int, default=None, help="first N images of the split")
    # defaults: the best SP setting of `recray bench mnist --grid` (README); the fair
    # RECOMBINER-style ORC baseline is --method orc --block-bits 16 --n-samples 65536
    # --collapsed-block-size 0 --budget-offset-bits 0 --laws fixed
    mc.add_argument(
        "--method", choices=rec.METHODS, default="sp-orc", help="REC method of the latent"
    )
    mc.add_argument("--block-bits", type=float, default=48.0)
    mc.add_argument("--n-samples", type=_n_samples_arg, default=1 << 10, help=N_SAMPLES_HELP)
    _add_kl_args(mc)
    mc.add_argument(
        "--budget-offset-bits",
        type=int,
        default=-4,
        help="partition bits of each informative block over its information (plan v2)",
    )
    mc.add_argument(
        "--laws",
        choices=("learned", "fixed"),
        default="learned",
        help="code the indices under index laws fitted on the training set (shipped for "
        "the defaults; other settings are fitted once and cached), or the fixed codes",
    )
    mc.add_argument(
        "--seed", type=int, default=0, help="seed of the shared randomness (decoder needs it)"
    )
    mc.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    mc.add_argument("--weights", default=None, help="VAE weights (default: the shipped ones)")
    mc.add_argument(
        "--collapsed-block-size",
        type=int,
        default=0,
        help="collapsed latent dims per block of their own; 0 spreads them over the "
        "informative blocks (the ORC baseline's layout)",
    )
    _add_ray_args(mc)
    mc.set_defaults(func=cmd_mnist_compress)
    md = msub.add_parser("decompress", help="decode a run into images.npz")
    md.add_argument("run")
    md.add_argument("--out", required=True, help="directory for images.npz")
    md.add_argument("--verify", action="store_true", help="compare with the MNIST source")
    md.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    md.add_argument(
        "--weights",
        default=None,
        help="VAE weights (default: the shipped ones); decoding uses the integer decoder "
        "next to them, <stem>_intdec.npz",
    )
    md.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: decode in this process; ray: one part per task on a Ray actor pool "
        "(the same images)",
    )
    md.add_argument("--address", default=None, help="Ray cluster to join (default: local Ray)")
    md.add_argument("--actors", type=int, default=None, help="actor pool size")
    _add_cluster_args(md)
    md.set_defaults(func=cmd_mnist_decompress)
    demo = msub.add_parser(
        "demo",
        help="the table's rows on a small test subset (fair ORC 16-bit, the best SP setting, "
        "ORC with per-block N from the KL)",
    )
    demo.add_argument("--limit", type=int, default=200, help="first N test images")
    demo.add_argument(
        "--workdir",
        default=None,
        help="directory for the demo's runs (default: a new temporary directory, kept)",
    )
    demo.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    demo.add_argument("--json", metavar="PATH")
    _add_ray_args(demo)
    demo.set_defaults(func=lambda a: cmd_bench_mnist(a, demo=True))

    from recray.cli import inr as inr_cli

    inr_cli.add_parsers(csub, bsub)

    ver = sub.add_parser("version", help="print the version and the format versions")
    ver.set_defaults(func=cmd_version)
    return p


def cmd_version(args) -> int:
    from recray.plan import PLAN_FORMAT_VERSION
    from recray.rec.philox import RNG_VERSION

    print(f"recray {__version__} (rng recipe {RNG_VERSION}, plan format {PLAN_FORMAT_VERSION})")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        # Ray's C++ components read their log level when Ray is imported, which the commands
        # do lazily; without --verbose only their fatal lines reach the terminal
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        return int(args.func(args))
    except RecrayError as exc:
        print(f"recray: error: {exc}", file=sys.stderr)
        return 2


def entry() -> None:  # console-script entry point
    sys.exit(main())


if __name__ == "__main__":
    entry()
