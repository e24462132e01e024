"""Build the MNIST VAE's integer decoder (``recray/models/weights/mnist_vae_intdec.npz`` and
its card) from the shipped float weights, and measure what it costs.

    python jobs/quantize_mnist_vae.py [--no-build] [--evaluate N]

``--evaluate N``: bits/image and table time of the integer tables against the float tables
on the first ``N`` test images (:func:`recray.bench.intdec.compare_tables`), recorded in
the card.
"""

import argparse
import json
import sys

from recray.models.intdec import add_card_results, build_int_decoder, int_decoder_path
from recray.models.vae import DEFAULT_WEIGHTS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-build", action="store_true", help="keep the shipped file")
    ap.add_argument("--evaluate", type=int, default=0, metavar="N")
    a = ap.parse_args(argv)
    if not a.no_build:
        print("integer decoder SHA-256", build_int_decoder())
    if a.evaluate:
        from recray.bench.intdec import compare_tables

        res = compare_tables(limit=a.evaluate)
        print(json.dumps(res, indent=1))
        add_card_results(int_decoder_path(DEFAULT_WEIGHTS), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
