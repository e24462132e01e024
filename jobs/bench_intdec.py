"""Integer vs float decoder tables in the MNIST codec: bits and time per image, and the
decode-anywhere table (issue 14).

    python jobs/bench_intdec.py --limit 1000 --json docs/figures/mnist_intdec.json \\
        [--tables 10000] [--matrix-limit 100]

For codec versions 1 (float tables) and 2 (integer tables), in turn, ``--rounds`` times
(the fastest round of each is kept: the machine is shared): ``compress`` of the first ``--limit``
test images (SP-PFR 32-bit blocks, local engine, so the REC part is the same) and
``decompress --verify``; wall ms/image and bits/image from the bytes written.
``--tables N``: the pixel bits of both tables on the same latents for N images
(:func:`recray.bench.intdec.compare_tables`). ``--matrix-limit M``: a run of M images per
version decoded under each environment of :mod:`recray.bench.decode_envs`.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from recray.bench.decode_envs import decode_matrix
from recray.codecs import mnist

#: The setting these figures were measured with: SP-PFR, 32-bit blocks, fixed codes.
SP_PFR_32 = dict(
    method="sp-pfr", block_bits=32, collapsed_block_size=8, budget_offset_bits=0, laws="fixed"
)


def _one(work, version, limit, k):
    out = os.path.join(work, f"v{version}-{k}")
    t = time.perf_counter()
    r = mnist.compress(out, limit=limit, engine="local", codec_version=version, **SP_PFR_32)
    enc = time.perf_counter() - t
    t = time.perf_counter()
    d = mnist.decompress(out, out + "-dec", verify=True)
    dec = time.perf_counter() - t
    assert d["verified"]
    return {
        "codec_version": version,
        "images": limit,
        "bits_per_image": r["bits_per_image"],
        "pixel_ideal_bits_per_image": r["pixel_ideal_bits_per_image"],
        "encode_ms_per_image": 1e3 * enc / limit,
        "pixel_ms_per_image": 1e3 * r["pixel_seconds"] / limit,
        "decode_ms_per_image": 1e3 * dec / limit,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tables", type=int, default=0)
    ap.add_argument("--matrix-limit", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    doc = {"setting": "SP-PFR 32-bit blocks, local engine, one process, 2 shared cores"}
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="recray-intdec-") as work:
        runs = {1: [], 2: []}
        for k in range(a.rounds):
            for v in (1, 2):
                runs[v].append(_one(work, v, a.limit, k))
                print(runs[v][-1], flush=True)
        doc["codec_runs"] = [
            min(rs, key=lambda r: r["encode_ms_per_image"] + r["decode_ms_per_image"])
            for rs in runs.values()
        ]
        if a.matrix_limit:
            doc["decode_anywhere"] = {}
            for v in (1, 2):
                out = os.path.join(work, f"m{v}")
                mnist.compress(
                    out, limit=a.matrix_limit, engine="local", codec_version=v, **SP_PFR_32
                )
                rows = decode_matrix(out, os.path.join(work, f"md{v}"), pythonpath=here)
                doc["decode_anywhere"][f"codec_version_{v}"] = {
                    "images": a.matrix_limit,
                    "rows": [
                        {"environment": r["environment"], "result": r["result"]} for r in rows
                    ],
                }
    from recray.bench.intdec import compare_tables, time_tables

    doc["tables_time"] = time_tables()
    if a.tables:
        doc["tables"] = compare_tables(limit=a.tables)
    print(json.dumps(doc, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
