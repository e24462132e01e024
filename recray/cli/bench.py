"""``recray bench ...``: the benchmarks whose figures the README and docs report (the
codecs' benchmarks are with their commands: recray.cli.mnist, recray.cli.inr)."""

from __future__ import annotations

import json
import os

from recray.backend import CHOICES as BACKEND_CHOICES
from recray.cli.common import _progress, _write_json, default_of


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
        large=args.large,
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


def add_parsers(bsub) -> None:
    """The benchmarks on the ``bench`` subparsers ``bsub``."""
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

    br = bsub.add_parser("bitrate", help="bits/item vs KL for every method at 16/32-bit blocks")
    br.add_argument("--n", type=int, default=2000)
    br.add_argument("--dim", type=int, default=32)
    br.add_argument("--seed", type=int, default=0)
    br.add_argument("--workdir", default=None, help="keep the data and runs here")
    br.add_argument("--json", metavar="PATH")
    br.set_defaults(func=cmd_bench_bitrate)
    from recray.bench.compress import run_compress_bench

    def dc(name):
        return default_of(run_compress_bench, name)

    bc = bsub.add_parser("compress", help="items/s and peak memory of recray compress")
    bc.add_argument("--n", type=int, default=dc("n"))
    bc.add_argument("--dim", type=int, default=dc("dim"))
    bc.add_argument("--method", default=dc("method"))
    bc.add_argument("--block-bits", type=float, default=dc("block_bits"))
    bc.add_argument("--batch-size", type=int, default=dc("batch_size"))
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
    bp.add_argument(
        "--large", action="store_true", help="also 32- and 48-bit exact blocks (n/8 items)"
    )
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
