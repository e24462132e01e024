"""Fit the learned index laws of the MNIST codec's shipped settings on the training set and
write them to ``recray/models/weights/mnist_vae_laws.json`` (what ``recray codec mnist
compress --laws learned`` reads first; other settings are fitted on first use and cached
under ``~/.cache/recray/laws``).

    python jobs/fit_mnist_laws.py            # the default (best SP) setting
    python jobs/fit_mnist_laws.py --grid     # and every learned-law row of bench --grid
"""

from __future__ import annotations

import argparse
import json
import os

from recray.bench.mnist import BEST_SP, GRID
from recray.codecs import mnist
from recray.latents.io import read_prior


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--grid", action="store_true")
    args = ap.parse_args()
    settings = {BEST_SP} | ({s for s in GRID if s.laws == "learned"} if args.grid else set())
    prior = read_prior(mnist.prior_path())
    path = mnist.laws_path()
    table = json.load(open(path)) if os.path.exists(path) else {}
    for s in sorted(settings, key=lambda s: s.tag):
        plan = mnist.build_codec_plan(
            prior,
            block_bits=s.block_bits,
            seed=0,
            collapsed_block_size=s.collapsed_block_size,
            budget_offset_bits=s.budget_offset_bits,
        )
        laws, secs = mnist.learned_laws(plan, s.method, s.n_samples)
        key = mnist.laws_key(plan, s.method, s.n_samples, mnist._encoder(None).model_checksum)
        table[key] = laws.to_dict()
        print(f"{s.name}: {key} ({secs:.0f} s)", flush=True)
    with open(path, "w") as f:
        json.dump(table, f, sort_keys=True, separators=(",", ":"))


if __name__ == "__main__":
    main()
