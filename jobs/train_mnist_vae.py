"""Train the MNIST VAE on the 60k training split (CPU) and write its weights, card and prior.

    python jobs/train_mnist_vae.py [--epochs N] [--threads T] [--out recray/models/weights]

Writes ``mnist_vae.npz`` (float32 weights), ``mnist_vae.json`` (architecture, training
set-up, time, test -ELBO, weights SHA-256) and ``mnist_vae_prior.json`` (recray Prior: mu=0,
sigma=1, per-dimension mutual information in bits estimated on the training split).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # else torch spins: ~100x slower here

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from recray.data.mnist import load_mnist  # noqa: E402
from recray.models.train import publish_vae, train_vae  # noqa: E402
from recray.models.vae import WEIGHTS_DIR, VAEConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--latent-dim", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--max-minutes", type=float, default=22.0, help="stop after this epoch")
    args = ap.parse_args(argv)

    x_train, _ = load_mnist("train", args.data_dir)
    x_test, _ = load_mnist("test", args.data_dir)
    model, record = train_vae(
        x_train,
        VAEConfig(latent_dim=args.latent_dim),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        max_minutes=args.max_minutes,
        log=lambda s: print(s, flush=True),
    )
    card = publish_vae(model, record, x_train, x_test, Path(args.out))
    print(json.dumps(card["results"], indent=2))
    print(f"trained in {record['train_time_s']}s; weights sha256 {card['weights_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
