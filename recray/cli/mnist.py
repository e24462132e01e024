"""``recray codec mnist ...`` and ``recray bench mnist``: the lossless MNIST codec."""

from __future__ import annotations

from recray.cli.common import (
    DATA_DIR_HELP,
    N_SAMPLES_HELP,
    _add_cluster_args,
    _add_kl_args,
    _add_ray_args,
    _n_samples_arg,
    _progress,
    _ray_opts,
    _write_json,
    default_of,
)


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
        partition=args.partition,
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


def add_parsers(csub, bsub) -> None:
    """``codec mnist`` on the ``codec`` subparsers ``csub``; ``bench mnist`` on ``bsub``."""
    from recray import rec
    from recray.bench.mnist import run_mnist_table
    from recray.codecs import mnist
    from recray.plan import PARTITIONS

    def d(name):
        return default_of(mnist.compress, name)

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
    _add_ray_args(bm, run_mnist_table)
    bm.set_defaults(func=cmd_bench_mnist)

    mn = csub.add_parser("mnist", help="lossless MNIST: VAE latent by REC, pixels under p(x|z)")
    msub = mn.add_subparsers(dest="mnist", required=True)
    mc = msub.add_parser("compress", help="compress MNIST images into a run directory")
    mc.add_argument("--out", required=True)
    mc.add_argument("--split", choices=("test", "train"), default=d("split"))
    mc.add_argument("--limit", type=int, default=None, help="first N images of the split")
    # defaults (recray.codecs.mnist.compress's): the best SP setting of `recray bench mnist
    # --grid`; the fair RECOMBINER-style ORC baseline is --method orc --block-bits 16
    # --n-samples 65536 --collapsed-block-size 0 --budget-offset-bits 0 --laws fixed
    mc.add_argument(
        "--method", choices=rec.METHODS, default=d("method"), help="REC method of the latent"
    )
    mc.add_argument("--block-bits", type=float, default=d("block_bits"))
    mc.add_argument("--n-samples", type=_n_samples_arg, default=d("n_samples"), help=N_SAMPLES_HELP)
    _add_kl_args(mc, mnist.compress)
    mc.add_argument(
        "--budget-offset-bits",
        type=int,
        default=d("budget_offset_bits"),
        help="partition bits of each informative block over its information (plan v2)",
    )
    mc.add_argument(
        "--partition",
        choices=PARTITIONS,
        default=d("partition"),
        help="complete: 2^b equal-mass intervals per dimension (the shipped laws' plan); "
        "tree: intervals of unequal mass, fewer candidates per block",
    )
    mc.add_argument(
        "--laws",
        choices=mnist.LAWS,
        default=d("laws"),
        help="code the indices under index laws fitted on the training set (shipped for "
        "the defaults; other settings are fitted once and cached), or the fixed codes",
    )
    mc.add_argument(
        "--seed",
        type=int,
        default=d("seed"),
        help="seed of the shared randomness (decoder needs it)",
    )
    mc.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    mc.add_argument("--weights", default=None, help="VAE weights (default: the shipped ones)")
    mc.add_argument(
        "--collapsed-block-size",
        type=int,
        default=d("collapsed_block_size"),
        help="collapsed latent dims per block of their own; 0 spreads them over the "
        "informative blocks (the ORC baseline's layout)",
    )
    _add_ray_args(mc, mnist.compress)
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
        default=default_of(mnist.decompress, "engine"),
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
    _add_ray_args(demo, run_mnist_table)
    demo.set_defaults(func=lambda a: cmd_bench_mnist(a, demo=True))
