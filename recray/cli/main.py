"""``recray`` - the command line (one module per command group: latents, bench, mnist, inr;
the shared option groups in common).

    recray bench toy [--quick] [--json PATH] [--plots DIR] [--backend B]
    recray bench throughput [--quick] [--json PATH] [--backend B]
    recray bench plan | bitrate | compress | scale | outliers | reads | driver [...]
    recray datasets synth --n N --dim D --out DIR
    recray datasets linear-gaussian --n N --out DIR
    recray compress LATENTS --prior P --out RUN [--engine ray|local] [--address A] [--resume]
    recray fit LATENTS --prior P --out PLAN.json      (then: recray compress --plan PLAN.json)
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

import os
import sys

from recray import __version__
from recray.cli import bench as bench_cli
from recray.cli import inr as inr_cli
from recray.cli import latents as latents_cli
from recray.cli import mnist as mnist_cli
from recray.cli.common import _Parser
from recray.errors import RecrayError


def build_parser():
    p = _Parser(
        prog="recray",
        description="Relative entropy coding with space partitioning (NumPy/CuPy, Ray, Parquet)",
    )
    p.add_argument("--version", action="version", version=f"recray {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmarks whose figures we report")
    bsub = bench.add_subparsers(dest="bench", required=True)
    bench_cli.add_parsers(bsub)
    latents_cli.add_parsers(sub)
    codec = sub.add_parser("codec", help="codecs built on REC (lossless MNIST, lossy INR)")
    csub = codec.add_subparsers(dest="codec", required=True)
    mnist_cli.add_parsers(csub, bsub)
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
