"""``recray codec inr ...`` and ``recray bench inr``: the INR codec's commands.

recray codec inr compress [TILES | --split test] [--limit N] [--rate R] [--method M] --out RUN
    [--engine ray|local] [--address A] [--actors K] [--resume] [--on-bad-item skip] [--verbose]
recray codec inr decompress RUN --out DIR [--engine ray|local]
recray bench inr [--limit N] [--rates R ...] --json docs/figures/inr.json --plots docs/figures/
"""

from __future__ import annotations

import json
import os
import sys


def _fit(args) -> dict:
    """The analysis-fit settings: the ``--fit-preset``'s, each overridden by its option."""
    from recray.codecs.inr import FIT_PRESETS

    out = dict(FIT_PRESETS[args.fit_preset])
    for k in ("fit_steps", "lr", "fit_samples"):
        if getattr(args, k) is not None:
            out[k] = getattr(args, k)
    if args.lr_end is not None:
        out["lr_end"] = None if args.lr_end <= 0 else args.lr_end
    return out


def _settings(args):
    from recray.codecs.inr import Settings

    return Settings(
        method=args.method,
        block_bits=args.block_bits,
        strategy=args.strategy,
        n_samples=args.n_samples,
        seed=args.seed,
        refine_steps=args.refine_steps,
        stages=args.stages,
        anneal=args.anneal,
        budget_offset_bits=args.budget_offset_bits,
        laws=args.laws,
        **_fit(args),
    )


def _tiles(args):
    from recray.codecs.inr import Tiles, read_tiles
    from recray.data.tiles import load_tiles
    from recray.errors import InputError

    if args.tiles and args.split:
        raise InputError("give TILES or --split, not both")
    if args.tiles:
        t = read_tiles(args.tiles, on_bad_item=args.on_bad_item)
        if args.limit is not None and args.limit < t.ids.size:  # the first LIMIT files' tiles
            end = t.ids[args.limit]
            rejects = tuple(r for r in t.rejects if r[0] < end)
            t = Tiles(t.images[: args.limit], t.ids[: args.limit], rejects)
        return t, {"file": os.path.abspath(args.tiles), "limit": args.limit}
    split = args.split or "test"
    return load_tiles(split, args.limit).images, {"split": split, "limit": args.limit}


def cmd_compress(args) -> int:
    from recray.cli.common import _progress, _ray_opts
    from recray.codecs import inr

    tiles, source = _tiles(args)
    r = inr.compress(
        tiles,
        args.out,
        source=source,
        rate=args.rate,
        settings=_settings(args),
        weights=args.weights,
        engine=args.engine,
        ray_options=_ray_opts(args),
        shard_rows=args.shard_rows,
        resume=args.resume,
        progress=_progress(),
    )
    resumed = ""
    if r["resumed_shards"]:
        resumed = f"; {r['resumed_shards']} shards were committed already"
    print(
        f"{r['tiles']:,} tiles -> {args.out}: {r['bpp']:.4f} bpp from the message bytes "
        f"(+{r['header_bytes']:,} bytes of plan and prior for the whole run), PSNR "
        f"{r['psnr_db']:.2f} dB, {r['method']} ({r['blocks']} blocks), KL {r['kl_bpp']:.4f} bpp; "
        f"{r['encode_s_per_tile']:.2f} s/tile ({r['engine']}, {r['actors']} actor(s)){resumed}"
    )
    if r["rejects"]:
        print(
            f"recray: {r['rejects']:,} bad tiles were skipped; they are listed in "
            f"{os.path.join(args.out, 'rejects.parquet')}",
            file=sys.stderr,
        )
        return 3
    return 0


def cmd_decompress(args) -> int:
    from recray.cli.common import _ray_opts
    from recray.codecs import inr

    r = inr.decompress(
        args.run, args.out, weights=args.weights, engine=args.engine, ray_options=_ray_opts(args)
    )
    print(f"decoded {r['tiles']:,} tiles into {r['out']} ({r['decode_seconds']:.1f} s)")
    return 0


def cmd_bench(args) -> int:
    from recray.bench import inr as bi
    from recray.cli.common import _read_json, _write_json

    if args.merge:
        r = bi.merge([_read_json(p, "--merge") for p in args.merge])
        print(bi.format_table(r))
        _write_json(args.json, r)
        if args.plots:
            print("wrote", bi.plot(r, args.plots))
        return 0
    r = bi.run(
        limit=args.limit,
        rates=args.rates,
        methods=args.methods,
        ablation=not args.no_ablation,
        workdir=args.workdir,
        fit=_fit(args),
        refine_steps=args.refine_steps,
        stages=args.stages,
        anneal=args.anneal,
        sp_block_bits=args.sp_block_bits,
        sp_n_samples=args.sp_n_samples,
        sp_budget_offset_bits=args.sp_budget_offset_bits,
        scale=args.scale,
        classical=not args.no_classical,
        ablation_strategies=tuple(args.ablation),
        report=lambda row: print(json.dumps(row), flush=True),
        chunk=args.chunk,
        max_minutes=args.max_minutes,
        max_tiles=args.max_tiles,
        checkpoint=(lambda r: _write_json(args.json + ".partial", r)) if args.json else None,
        resume=_read_json(args.resume, "--resume") if args.resume else None,
    )
    print(bi.format_table(r))
    _write_json(args.json, r)
    if args.plots:
        print("wrote", bi.plot(r, args.plots))
    return 0


def _add_fit_args(c) -> None:
    from recray.codecs.inr import FIT_PRESETS

    c.add_argument(
        "--fit-preset",
        choices=tuple(FIT_PRESETS),
        default="default",
        help="analysis fit: steps, learning-rate schedule and Monte Carlo samples "
        + "; ".join(
            f"{k}: {v['fit_steps']} steps, lr {v['lr']:g}"
            + (f" to {v['lr_end']:g}" if v["lr_end"] else "")
            + (f", {v['fit_samples']} samples" if v["fit_samples"] != 1 else "")
            for k, v in FIT_PRESETS.items()
        ),
    )
    c.add_argument("--fit-steps", type=int, default=None, help="default: the preset's")
    c.add_argument("--lr", type=float, default=None, help="fit learning rate (preset's)")
    c.add_argument(
        "--lr-end",
        type=float,
        default=None,
        help="end of a cosine learning-rate schedule (0: constant; default: the preset's)",
    )
    c.add_argument(
        "--fit-samples", type=int, default=None, help="Monte Carlo samples per fit step (preset's)"
    )


def _add_coding_args(c) -> None:
    from recray.cli.common import default_of
    from recray.codecs.inr import LAWS, METHODS, STRATEGIES, Settings

    def d(name):  # the library's default (the one source: Settings' signature)
        return default_of(Settings, name)

    c.add_argument("--method", choices=METHODS, default=d("method"))
    c.add_argument(
        "--block-bits",
        type=float,
        default=None,
        help="information per block (default: the method's preset: 16 for orc-16, 20 for "
        "sp-orc, 32 for sp-pfr)",
    )
    c.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=d("strategy"),
        help="partition-bit allocation inside a block (SP methods)",
    )
    c.add_argument("--n-samples", type=int, default=d("n_samples"))
    c.add_argument("--seed", type=int, default=d("seed"))
    _add_fit_args(c)
    c.add_argument("--refine-steps", type=int, default=d("refine_steps"))
    c.add_argument(
        "--stages",
        type=int,
        default=d("stages"),
        help="progressive coding rounds (fine-tuning after each)",
    )
    c.add_argument(
        "--anneal",
        type=float,
        default=d("anneal"),
        help="per-block beta annealing at fit time: each block's KL steered to ANNEAL x "
        "its information (0: off, the rate point's one beta)",
    )
    c.add_argument(
        "--budget-offset-bits",
        type=int,
        default=d("budget_offset_bits"),
        help="SP: partition bits of every block over its rounded information (negative: "
        "fewer bins, a larger local index; default: the preset, -12 for sp-orc, 0 for sp-pfr)",
    )
    c.add_argument(
        "--laws",
        choices=LAWS,
        default=d("laws"),
        help="SP: code the indices under index laws fitted on training tiles (shipped next "
        "to the weights; fitted and cached on first use otherwise) or the fixed codes "
        "(default: the preset, learned for sp-orc)",
    )


def add_parsers(codec_sub, bench_sub) -> None:
    """Register ``codec inr`` under ``codec_sub`` and ``bench inr`` under ``bench_sub``."""
    from recray.cli.common import _add_ray_args, default_of
    from recray.codecs import inr
    from recray.codecs.inr import DEFAULT_RATE, METHODS, ON_BAD_ITEM

    ci = codec_sub.add_parser("inr", help="lossy 32x32 RGB tiles: Bayesian INR weights by REC")
    isub = ci.add_subparsers(dest="inr", required=True)
    c = isub.add_parser("compress", help="compress tiles into a run directory")
    c.add_argument(
        "tiles",
        nargs="?",
        default=None,
        help="a .npy of uint8 (n, 32, 32, 3) or a directory of 32x32 PNGs",
    )
    c.add_argument(
        "--split",
        choices=("test", "train"),
        default=None,
        help="the photo tiles of recray.data.tiles (default test)",
    )
    c.add_argument("--limit", type=int, default=None, help="first N tiles")
    c.add_argument("--rate", type=float, default=DEFAULT_RATE, help="shipped rate point (bpp)")
    c.add_argument("--weights", default=None, help="INR weights (default: the rate's shipped)")
    c.add_argument("--out", required=True)
    c.add_argument(
        "--shard-rows",
        type=int,
        default=default_of(inr.compress, "shard_rows"),
        help="tiles per part / Ray task",
    )
    _add_ray_args(c, inr.compress)
    c.add_argument(
        "--resume",
        action="store_true",
        help="continue an unfinished run of the same tiles and settings (its parts are kept)",
    )
    c.add_argument(
        "--on-bad-item",
        choices=ON_BAD_ITEM,
        default=default_of(inr.read_tiles, "on_bad_item"),
        help="a PNG of TILES that cannot be read or is not 32x32: fail, or skip it (listed "
        "in the run's rejects.parquet; exit code 3)",
    )
    _add_coding_args(c)
    c.set_defaults(func=cmd_compress)
    d = isub.add_parser("decompress", help="decode a run into one PNG per tile")
    d.add_argument("run")
    d.add_argument("--out", required=True, help="directory for tile-NNNNN.png")
    d.add_argument("--weights", default=None)
    _add_ray_args(d, inr.decompress)
    d.set_defaults(func=cmd_decompress)

    b = bench_sub.add_parser(
        "inr", help="INR codec R-D: ORC-16 vs SP, ablation, JPEG/WebP/AVIF/JXL"
    )
    b.add_argument("--limit", type=int, default=100, help="test tiles (evenly spaced)")
    b.add_argument("--rates", type=float, nargs="+", default=None, help="default: all shipped")
    b.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    b.add_argument("--no-ablation", action="store_true")
    b.add_argument(
        "--ablation",
        nargs="+",
        default=["mi", "random", "collapsed-only"],
        metavar="ALLOCATION",
        help="allocations of the SP-ORC ablation",
    )
    b.add_argument("--no-classical", action="store_true", help="skip JPEG/WebP/AVIF/JPEG XL")
    _add_fit_args(b)
    b.add_argument("--refine-steps", type=int, default=None)
    b.add_argument("--stages", type=int, default=None)
    b.add_argument(
        "--anneal",
        type=float,
        default=None,
        help="per-block beta annealing factor of every INR setting (0: off; default: the codec's)",
    )
    b.add_argument(
        "--sp-block-bits",
        type=float,
        default=None,
        help="information per block of the SP settings (default: each preset's)",
    )
    b.add_argument(
        "--sp-n-samples",
        type=int,
        default=None,
        help="candidates per block of the SP settings (default: the codec's, 2^16; ORC-16 "
        "keeps 2^16, its 16-bit index)",
    )
    b.add_argument(
        "--sp-budget-offset-bits",
        type=int,
        default=None,
        help="partition bits of the SP settings' blocks over their rounded information "
        "(default: each preset's)",
    )
    b.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="measure the INR settings chunk by chunk of this many tiles (all settings on "
        "each chunk; JSON.partial written after each)",
    )
    b.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop the INR settings after the chunk that passes this time; the rows hold "
        "the tiles measured",
    )
    b.add_argument(
        "--max-tiles",
        type=int,
        default=None,
        help="stop the INR settings after the chunk that reaches this many tiles (with "
        "--chunk: the first chunks, spread over all --limit tiles; --resume measures the rest)",
    )
    b.add_argument(
        "--resume",
        metavar="JSON",
        help="continue an earlier run of the same command (its JSON or JSON.partial): its "
        "chunks of tiles are kept, the rest measured; --limit, --chunk and the settings must "
        "be the same",
    )
    b.add_argument("--scale", action="store_true", help="also time the Ray fit, 1 vs 2 actors")
    b.add_argument("--workdir", default=None)
    b.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="no measuring: merge results of earlier runs (e.g. one per rate)",
    )
    b.add_argument("--json", metavar="PATH")
    b.add_argument("--plots", metavar="DIR")
    b.set_defaults(func=cmd_bench)
