"""Issue 11's fair fixed-budget baselines against the best SP setting, on the MNIST test set.

Each setting is one ``recray codec mnist compress`` run (local engine), then decoded again
and verified byte for byte (``recray codec mnist decompress --verify``), both timed; the
row is merged into ``--json`` (default ``docs/figures/mnist_fair.json``) under its name,
with the load average before and after it. One setting per call, so the slow ones can be
run one at a time on a shared machine:

    PYTHONPATH=. python jobs/bench_mnist_fair.py orc16      # fair ORC-16, N = 2^16 fixed
    PYTHONPATH=. python jobs/bench_mnist_fair.py orc-kl     # ORC, per-block N = 2^ceil(I_b)
    PYTHONPATH=. python jobs/bench_mnist_fair.py sp         # the default: SP-ORC, one block
    PYTHONPATH=. python jobs/bench_mnist_fair.py orc-kl --kl-offset-bits 1 --limit 1000

A row's key is the setting's, plus the offset and ``@LIMIT`` when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import asdict

from recray.bench import mnist as bm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("setting", choices=sorted(bm.FAIR_SETTINGS))
    ap.add_argument("--limit", type=int, default=None, help="first N test images (default all)")
    ap.add_argument("--json", default="docs/figures/mnist_fair.json")
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--kl-offset-bits", type=float, default=None, help="orc-kl: N_b = 2^ceil(I_b + this)"
    )
    args = ap.parse_args()
    s = bm.FAIR_SETTINGS[args.setting]
    key = args.setting
    if args.kl_offset_bits is not None:
        if s.n_samples != "kl":
            ap.error("--kl-offset-bits applies to orc-kl only")
        s = dataclasses.replace(s, kl_offset_bits=args.kl_offset_bits)
        key += f"{args.kl_offset_bits:+g}"
    if args.limit:
        key += f"@{args.limit}"
    load0 = os.getloadavg()
    t0 = time.time()
    r = bm.run_mnist_table(
        limit=args.limit,
        settings=(s,),
        engine="local",
        workdir=args.workdir,
        decode_all=True,
        baselines=False,
    )
    elbo, row = r["rows"][0], r["rows"][1]
    row |= {
        "key": key,
        "setting": asdict(s),
        "neg_elbo_kl_bits_per_image": elbo["latent_bits_per_image"],
        "load_before": [round(v, 2) for v in load0],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "wall_seconds": round(time.time() - t0, 1),
        "measured_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "host": f"{platform.node()}, {os.cpu_count()} CPUs (shared)",
        "command": "PYTHONPATH=. python jobs/bench_mnist_fair.py " + " ".join(sys.argv[1:]),
    }
    out = {}
    if os.path.exists(args.json):
        with open(args.json) as f:
            out = json.load(f)
    out.setdefault("rows", {})[key] = row
    out["note"] = (
        "issue 11: fair fixed-budget baselines vs the best SP setting; one row per "
        "`jobs/bench_mnist_fair.py SETTING` (local engine, every run decoded and verified)"
    )
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
