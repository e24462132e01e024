"""Train the INR codec's shared parts and prior at each rate point and ship them.

    python jobs/train_inr.py --rates 1.5 0.5 4 --budget-minutes 120 60 60 \
        --checkpoint-dir runs/train_inr            # later: the same command plus --resume

Rate points are trained in the order given; the first from scratch, each later one
warm-started from the previous one's model and training posteriors (same tiles). Training
of a rate point runs rounds (:class:`recray.models.inr.Trainer`: every tile visited once
per round, in batches) until ``--rounds`` or its time budget (``--budget-minutes``,
counted over all runs of that rate point) is reached; its full state is checkpointed
atomically to ``<checkpoint-dir>/<model id>.pt`` every few minutes, so a killed run
continues with ``--resume``. It runs on a CUDA GPU when torch sees one (``--device``).

Per rate point ``R`` it writes ``<out>/<family>_<R>.npz`` (weights), ``<family>_<R>.json``
(model card: set-up, per-round history of KL and PSNR, timings, SHA-256) and
``<family>_<R>_prior.json`` (recray Prior with the per-dimension information ``I_d``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # else torch spins: ~100x slower here

import argparse  # noqa: E402
import hashlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recray.data.tiles import TEST_SOURCES, load_tiles  # noqa: E402
from recray.models.inr import (  # noqa: E402
    DEFAULT_FAMILY,
    WEIGHTS_DIR,
    INRConfig,
    Trainer,
    TrainSettings,
    model_id,
    pick_device,
)


def training_tiles(n: int | None, seed: int = 0):
    """``(tiles, indices)``: all train tiles (``n`` None) or ``n`` of them drawn at random
    (numpy ``default_rng(seed)``), in split order."""
    split = load_tiles("train")
    if n is None or n >= len(split):
        idx = np.arange(len(split))
    else:
        idx = np.sort(np.random.default_rng(seed).choice(len(split), n, replace=False))
    return np.ascontiguousarray(split.images[idx]), idx, len(split)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[1.5, 0.5, 4.0])
    ap.add_argument(
        "--kl-target",
        type=float,
        nargs="+",
        default=None,
        help="training KL (bpp) each rate point steers to (default: the rate itself); the "
        "prior's information, and so the codec plan's blocks and bits, follow it",
    )
    ap.add_argument("--family", default=DEFAULT_FAMILY, help="model id prefix")
    ap.add_argument(
        "--tiles", type=int, default=None, help="training tiles (default: the whole train split)"
    )
    ap.add_argument("--rounds", type=int, default=10_000, help="per rate point")
    ap.add_argument(
        "--budget-minutes",
        type=float,
        nargs="+",
        default=[60.0],
        help="training time per rate point (one value, or one per rate), over all runs",
    )
    ap.add_argument("--batch", type=int, default=64, help="tiles per forward pass")
    ap.add_argument("--steps-per-visit", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-2, help="posterior means")
    ap.add_argument("--lr-sigma", type=float, default=1e-2, help="posterior log-scales")
    ap.add_argument("--lr-shared", type=float, default=1e-3, help="positional-encoding net")
    ap.add_argument("--lr-A", type=float, default=1e-5, help="reparameterization maps")
    ap.add_argument("--init-sigma", type=float, default=0.3)
    ap.add_argument(
        "--beta",
        type=float,
        nargs="+",
        default=[0.01],
        help="initial beta per rate (later rates without one start at the previous rate's)",
    )
    ap.add_argument("--beta-clip", type=float, default=1.25)
    ap.add_argument(
        "--beta-trend",
        type=float,
        default=5.0,
        help="damping of the beta loop by the KL's trend (0: off, the first models' rule)",
    )
    ap.add_argument("--reparam", choices=("full", "output"), default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-dir", default="runs/train_inr")
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    ap.add_argument("--device", default="auto", help="auto (a CUDA GPU if any), cpu, cuda")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    return ap


def _per_rate(values, k):
    return values[k] if k < len(values) else (values[-1] if len(values) == 1 else None)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    tiles, idx, n_split = training_tiles(args.tiles, args.seed)
    cfg = INRConfig(reparam=args.reparam)
    prev: Trainer | None = None
    for k, rate in enumerate(args.rates):
        mid = model_id(rate, args.family)
        ck = os.path.join(args.checkpoint_dir, mid + ".pt")
        beta = _per_rate(args.beta, k)
        target = _per_rate(args.kl_target, k) if args.kl_target else rate
        s = TrainSettings(
            target_bpp=target if target is not None else rate,
            batch=args.batch,
            steps_per_visit=args.steps_per_visit,
            lr=args.lr,
            lr_sigma=args.lr_sigma,
            lr_shared=args.lr_shared,
            lr_A=args.lr_A,
            beta=beta if beta is not None else (prev.beta if prev else 0.01),
            beta_clip=args.beta_clip,
            beta_trend=args.beta_trend,
            init_sigma=args.init_sigma,
            seed=args.seed,
        )
        init = prev.finish() if prev is not None else None
        if init is not None and beta is not None:
            init.beta = beta
        tr = Trainer(
            tiles,
            s,
            cfg=cfg,
            init=init,
            init_posteriors=prev.posteriors() if prev is not None else None,
            device=device,
        )
        if args.resume and os.path.exists(ck):
            tr.load_checkpoint(ck)
            print(f"{mid}: resumed at round {tr.round} ({tr.elapsed / 60:.1f} min)", flush=True)
        budget = _per_rate(args.budget_minutes, k)
        tr.run(
            rounds=args.rounds,
            max_minutes=budget,
            checkpoint=ck,
            checkpoint_every_s=60 * args.checkpoint_minutes,
            log=lambda m, mid=mid: print(f"{mid} {m}", flush=True),
        )
        model = tr.finish()
        last = tr.history[-1] if tr.history else {}
        card = {
            "model": "recray INR (RECOMBINER-style: SIREN 32-32-32-32-3, Fourier + learned "
            f"positional encoding, linear reparameterization ({cfg.reparam}), factorized "
            "Gaussian prior)",
            "target_bpp": rate,
            "train_kl_target_bpp": s.target_bpp,
            "training": {
                "data": (
                    f"all {n_split} train tiles of recray.data.tiles"
                    if len(idx) == n_split
                    else f"{len(idx)} tiles drawn (numpy default_rng({args.seed})) from the "
                    f"{n_split} train tiles of recray.data.tiles"
                )
                + f" (test sources {list(TEST_SOURCES)} excluded)",
                "tiles": len(idx),
                "tile_ids_sha256": hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest(),
                "settings": asdict(s),
                "rounds": tr.round,
                "budget_minutes": budget,
                "warm_start_from": None
                if prev is None
                else model_id(args.rates[k - 1], args.family),
                "mc_samples_per_step": 1,
                "threads": args.threads,
                "device": str(device),
                "cpu": platform.machine(),
                "torch": torch.__version__,
                "seconds": round(tr.elapsed, 1),
                "command": "python jobs/train_inr.py "
                + " ".join(sys.argv[1:] if argv is None else argv),
                "history": tr.history,
            },
            "results": {
                "train_kl_bpp": last.get("kl_bpp"),
                "train_psnr_db_one_sample": last.get("psnr_db"),
                "train_psnr_db_posterior_mean": last.get("psnr_db_posterior_mean"),
                "mi_bits_total": float(model.mi_bits.sum()),
                "dims_over_0.01_bits": int((model.mi_bits >= 0.01).sum()),
            },
        }
        path = os.path.join(args.out, mid + ".npz")
        model.save(path, card)
        print(f"wrote {path}: {card['results']}", flush=True)
        prev = tr
    return 0


if __name__ == "__main__":
    sys.exit(main())
