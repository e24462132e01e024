"""Fit the learned index laws of the INR codec's SP-ORC setting on training tiles and add
them to ``recray/models/weights/inr_<R>_laws.json``, named with its checksums in the rate
point's model card ``inr_<R>.json`` (what ``recray codec inr compress`` reads first; other
settings are fitted on first use and cached under ``~/.cache/recray/laws``).

    python jobs/fit_inr_laws.py                 # every shipped rate point
    python jobs/fit_inr_laws.py --rates 1.5
    python jobs/fit_inr_laws.py --rates 4 --anneal 1.0   # laws of another fit setting
    python jobs/fit_inr_laws.py --fit-preset long        # laws of the 2,000-step fit
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import torch

from recray.codecs import inr
from recray.latents.io import read_prior
from recray.localfiles import write_replacing
from recray.models.inr import shipped_rates
from recray.plan.laws import IndexLaws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rates", type=float, nargs="+", default=None)
    ap.add_argument("--tiles", type=int, default=inr.LAW_TRAIN_TILES)
    ap.add_argument(
        "--anneal",
        type=float,
        default=inr.Settings.anneal,
        help="per-block beta annealing of the fits the laws are estimated from "
        "(default: the codec's)",
    )
    ap.add_argument(
        "--fit-preset",
        choices=tuple(inr.FIT_PRESETS),
        default="default",
        help="the analysis fit of the coded tiles (steps, learning rate; default: the codec's)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    fit = inr.FIT_PRESETS[args.fit_preset]
    s = inr.Settings(method="sp-orc", anneal=args.anneal, **fit).resolved()
    for rate in args.rates or shipped_rates():
        w, prior_file = inr.model_files(rate)
        model = inr.load_model(w)
        prior = read_prior(prior_file)
        plan, _ = inr.make_plan(prior, s)
        t0 = time.perf_counter()
        laws = inr.fit_laws(model, prior, s, tiles=args.tiles)
        path = inr.laws_path(w)
        table = json.load(open(path)) if os.path.exists(path) else {}
        key = inr.laws_key(plan, s, model.model_checksum)
        table[key] = laws.to_dict()
        write_replacing(path, json.dumps(table, sort_keys=True, separators=(",", ":")))
        # the model card names the laws file and every entry's checksum
        card_path = os.path.splitext(w)[0] + ".json"
        card = json.load(open(card_path))
        # how each entry was fitted (cards written before several entries per file held
        # one string, which belongs to the entries already there)
        fitted = card.get("index_laws", {}).get("fitted_by", {})
        if isinstance(fitted, str):
            fitted = {k: fitted for k in table if k != key}
        fitted[key] = (
            f"python jobs/fit_inr_laws.py --rates {rate:g} --anneal {args.anneal:g} "
            + (f"--fit-preset {args.fit_preset} " if args.fit_preset != "default" else "")
            + f"({args.tiles} training tiles, seed {inr.LAW_TRAIN_SEED}; "
            f"{time.perf_counter() - t0:.0f} s at load {os.getloadavg()[0]:.0f})"
        )
        card["index_laws"] = {
            "file": os.path.basename(path),
            "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
            "fitted_by": dict(sorted(fitted.items())),
            "laws_sha256": {k: IndexLaws.from_dict(v).checksum() for k, v in table.items()},
        }
        write_replacing(card_path, json.dumps(card, indent=2) + "\n")
        print(
            f"rate {rate:g}: {key} laws {laws.checksum()[:16]} "
            f"({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
