"""Train the INR codec's shared parts and prior at each rate point (CPU) and ship them.

    python jobs/train_inr.py [--rates 1 0.5 2 4] [--tiles 128] [--rounds 80 --warm-rounds 40]

The first rate trains from scratch; each later rate warm-starts from the previous one's
model (fewer rounds). Per rate ``R`` it writes ``recray/models/weights/inr_<R>.npz``
(weights), ``inr_<R>.json`` (model card: set-up, history, timings, SHA-256) and
``inr_<R>_prior.json`` (recray Prior with the per-dimension information ``I_d``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # else torch spins: ~100x slower here

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recray.data.tiles import TEST_SOURCES, load_tiles  # noqa: E402
from recray.models.inr import WEIGHTS_DIR, rate_tag, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.5, 2.0, 4.0])
    ap.add_argument("--tiles", type=int, default=128, help="training tiles (random, seed 0)")
    ap.add_argument("--rounds", type=int, default=80)
    ap.add_argument("--warm-rounds", type=int, default=40)
    ap.add_argument("--steps-per-round", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lr-sigma", type=float, default=1e-2)
    ap.add_argument("--init-sigma", type=float, default=0.3)
    ap.add_argument("--beta", type=float, default=0.01, help="initial beta (first rate)")
    ap.add_argument("--max-minutes", type=float, default=None, help="per rate point")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_split = load_tiles("train")
    idx = np.sort(np.random.default_rng(0).choice(len(train_split), args.tiles, replace=False))
    tiles = train_split.images[idx]
    prev = None
    for k, rate in enumerate(args.rates):
        rounds = args.rounds if prev is None else args.warm_rounds
        model, rec = train(
            tiles,
            rate,
            rounds=rounds,
            steps_per_round=args.steps_per_round,
            lr=args.lr,
            lr_sigma=args.lr_sigma,
            init_sigma=args.init_sigma,
            beta=args.beta,
            max_minutes=args.max_minutes,
            init=prev,
            log=lambda s: print(s, flush=True),
        )
        tag = rate_tag(rate)
        path = os.path.join(args.out, f"inr_{tag}.npz")
        last = rec["history"][-1]
        card = {
            "model": "recray INR (RECOMBINER-style: SIREN 32-32-32-32-3, Fourier + learned "
            "positional encoding, linear reparameterization, factorized Gaussian prior)",
            "target_bpp": rate,
            "training": {
                "data": f"{args.tiles} tiles drawn (numpy default_rng(0)) from the "
                f"{len(train_split)} train tiles of recray.data.tiles "
                f"(test sources {list(TEST_SOURCES)} excluded)",
                "tile_ids": [int(i) for i in idx],
                "rounds": len(rec["history"]),
                "max_minutes": args.max_minutes,
                "steps_per_round": args.steps_per_round,
                "adam_lr_posterior_means": args.lr,
                "adam_lr_posterior_log_scales": args.lr_sigma,
                "posterior_init": f"prior samples, scale {args.init_sigma} x prior",
                "beta_init": args.beta if prev is None else "from the previous rate",
                "adam_lr_shared": args.lr / 3,
                "mc_samples_per_step": 1,
                "warm_start_from": None if prev is None else f"inr_{rate_tag(args.rates[k - 1])}",
                "threads": args.threads,
                "cpu": platform.machine(),
                "torch": torch.__version__,
                "seconds": round(rec["train_seconds"], 1),
                "history": rec["history"],
            },
            "results": {
                "train_kl_bpp": last["kl_bpp"],
                "train_psnr_db_one_sample": last["psnr_db"],
                "mi_bits_total": float(model.mi_bits.sum()),
                "dims_over_0.01_bits": int((model.mi_bits >= 0.01).sum()),
            },
        }
        model.save(path, card)
        print(f"wrote {path}: {card['results']}", flush=True)
        prev = model
    return 0


if __name__ == "__main__":
    sys.exit(main())
