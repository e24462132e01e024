"""``recray`` - the command line.

    recray bench toy [--quick] [--json PATH] [--plots DIR] [--backend B]
    recray bench throughput [--quick] [--json PATH] [--backend B]
    recray version

``main(argv)`` returns the exit code: 0 on success, 2 on a :class:`RecrayError` (bad input,
named in one line on stderr), 1 on a failed check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from recray import __version__
from recray.errors import RecrayError


def _progress():
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm


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

    kw = dict(n_batched=4096, n_single=100) if args.quick else {}
    r = throughput.run_throughput(backend=args.backend, **kw)
    print(throughput.format_result(r))
    _write_json(args.json, r)
    return 0 if r["identical_indices"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    toy.add_argument("--backend", choices=("numpy", "cupy"), default=None)
    toy.set_defaults(func=cmd_bench_toy)
    thr = bsub.add_parser("throughput", help="blocks/s and samples/s, batched vs one per call")
    thr.add_argument("--quick", action="store_true", help="fewer blocks")
    thr.add_argument("--json", metavar="PATH")
    thr.add_argument("--backend", choices=("numpy", "cupy"), default=None)
    thr.set_defaults(func=cmd_bench_throughput)

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
    try:
        return int(args.func(args))
    except RecrayError as exc:
        print(f"recray: error: {exc}", file=sys.stderr)
        return 2


def entry() -> None:  # console-script entry point
    sys.exit(main())
