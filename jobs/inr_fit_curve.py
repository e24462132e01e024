"""The INR encoder's fit against its steps, on train-split tiles (never the test split).

    python jobs/inr_fit_curve.py --rate 1.5 --tiles 16 --steps 250 500 1000 2000 \
        --config const:lr=0.01 --config cos:lr=0.01,lr_end=0.0001 \
        --config cos2:lr=0.01,lr_end=0.0001,samples=2 --json docs/figures/inr_fit_curve.json
    python jobs/inr_fit_curve.py --rate 1.5 --tiles 16 --encode orc-16 sp-orc \
        --encode-settings fit_steps=1000,lr_end=0.0001 --json ...

``--config NAME:k=v,...`` is one analysis-fit setting (``lr``, ``lr_end``, ``samples``,
``anneal``: per-block beta annealing towards ``anneal`` x each ORC-16 plan block's
information, as the codec's ``--anneal``); every setting is run once per ``--steps``
value (a cosine schedule spans its whole length) on the same tiles. Per run the JSON holds
the KL (bpp), the PSNR of the posterior mean and of one posterior sample (8-bit tiles, peak
255) and the seconds per tile. ``--encode`` codes the tiles end to end with
:func:`recray.codecs.inr.compress` (bytes written, decoded PSNR, encode seconds per tile).

The tiles are ``--tiles`` tiles of the train split drawn at random (``--seed``) among those
the model's prior was not trained on when its card names a subset (held-out train tiles),
else among all train tiles.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def curve_tiles(card: dict, n: int, seed: int):
    """``(tiles, split indices, held_out)``: ``n`` train tiles, outside the card's training
    subset when it names one (numpy ``default_rng(seed)`` picks)."""
    from recray.data.tiles import load_tiles

    split = load_tiles("train")
    tr = card.get("training", {})
    pool = np.arange(len(split))
    held_out = False
    used = tr.get("tile_ids")
    if used is None and tr.get("tiles") and tr["tiles"] < len(split):
        # the training job draws its subset with numpy default_rng(seed) (jobs/train_inr.py)
        s = tr.get("settings", {}).get("seed", 0)
        used = np.sort(np.random.default_rng(s).choice(len(split), tr["tiles"], replace=False))
        want = tr.get("tile_ids_sha256")
        if want and hashlib.sha256(used.astype(np.int64).tobytes()).hexdigest() != want:
            used = None
    if used is not None:
        pool = np.setdiff1d(pool, np.asarray(used))
        held_out = True
    idx = np.sort(np.random.default_rng(seed).choice(pool, n, replace=False))
    return np.ascontiguousarray(split.images[idx]), idx, held_out


def parse_kv(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=")
        out[k.strip()] = (
            int(v)
            if k.strip() in ("samples", "fit_steps", "refine_steps")
            else (None if v == "none" else float(v))
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1.5)
    ap.add_argument("--weights", default=None, help="default: the rate point's shipped model")
    ap.add_argument("--tiles", type=int, default=16)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="*", default=[250, 500, 1000, 2000])
    ap.add_argument("--config", action="append", default=[], metavar="NAME:k=v,...")
    ap.add_argument("--encode", nargs="*", default=[], metavar="METHOD")
    ap.add_argument("--encode-settings", action="append", default=[], metavar="k=v,...")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from recray.codecs import inr
    from recray.latents.io import read_prior
    from recray.models.inr import BlockBeta, fit, load_inr, psnr_db, render_uint8

    w, prior_file = inr.model_files(args.rate, args.weights)
    model = load_inr(w)
    card = json.load(open(os.path.splitext(w)[0] + ".json"))
    x, idx, held_out = curve_tiles(card, args.tiles, args.seed)
    prior = read_prior(prior_file)
    plan, _ = inr.make_plan(prior, inr.Settings(method="orc-16"))
    result = {
        "model_id": model.model_id,
        "model_sha256": model.model_checksum,
        "split": "train",
        "held_out_from_prior_training": held_out,
        "tile_indices": idx.tolist(),
        "load_average_start": os.getloadavg()[0],
        "fits": [],
        "encodes": [],
        "command": "python jobs/inr_fit_curve.py " + " ".join(argv or sys.argv[1:]),
    }
    if os.path.exists(args.json):
        old = json.load(open(args.json))
        if old.get("model_sha256") == model.model_checksum and old["tile_indices"] == idx.tolist():
            result["fits"], result["encodes"] = old.get("fits", []), old.get("encodes", [])
    pm, ps = model.prior_mu64, model.prior_sigma64
    block_of = np.empty(plan.dim, np.int64)
    for b, dims in enumerate(plan.blocks):
        block_of[list(dims)] = b
    info = np.asarray(plan.mi_bits)

    def save():
        with open(args.json + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.json + ".tmp", args.json)

    for spec in args.config:
        name, _, kv = spec.partition(":")
        kw = parse_kv(kv)
        anneal = kw.pop("anneal", 0.0) or 0.0
        for steps in args.steps:
            ab = None
            if anneal > 0:
                target = np.bincount(block_of, weights=info) * anneal
                ab = BlockBeta(block_of, target, warmup=steps // 2)
            t0 = time.perf_counter()
            mu, sg = fit(model, x, steps=steps, ids=idx, anneal=ab, **kw)
            secs = (time.perf_counter() - t0) / len(x)
            v = (sg / ps) ** 2
            kl = 0.5 * (v + ((mu - pm) / ps) ** 2 - 1 - np.log(v)) / np.log(2)
            blk = np.stack([np.bincount(block_of, weights=k) for k in kl])
            eps = np.random.default_rng(0).standard_normal(mu.shape)
            row = {
                "config": name,
                "settings": kw | {"anneal": anneal},
                "steps": steps,
                "kl_bpp": float(kl.sum(1).mean() / 1024),
                "block_kl_bits_median_p90": [float(np.median(blk)), float(np.quantile(blk, 0.9))],
                "psnr_db_mean": float(psnr_db(x, render_uint8(model, mu)).mean()),
                "psnr_db_sample": float(psnr_db(x, render_uint8(model, mu + sg * eps)).mean()),
                "s_per_tile": secs,
                "load_average": os.getloadavg()[0],
            }
            result["fits"].append(row)
            print(json.dumps(row), flush=True)
            save()
    for text in args.encode_settings or ([""] if args.encode else []):
        kw = parse_kv(text)
        for method in args.encode:
            s = inr.Settings(method=method, **kw)
            with tempfile.TemporaryDirectory() as tmp:
                r = inr.compress(
                    x,
                    os.path.join(tmp, "run"),
                    source={"split": "train", "tile_indices": idx.tolist()},
                    weights=w,
                    settings=s,
                    engine="local",
                )
                dec = inr.decompress(os.path.join(tmp, "run"), os.path.join(tmp, "png"), weights=w)
            row = {
                "method": method,
                "settings": kw,
                "bpp": r["bpp"],
                "psnr_db": float(psnr_db(x[dec["ids"]], dec["images"]).mean()),
                "kl_bpp": r["kl_bpp"],
                "analysis_kl_bpp": r["analysis_kl_bpp"],
                "encode_s_per_tile": r["encode_s_per_tile"],
                "laws_fit_seconds": r["laws_fit_seconds"],
                "load_average": os.getloadavg()[0],
            }
            result["encodes"].append(row)
            print(json.dumps(row), flush=True)
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
