"""Training and publishing the MNIST VAE (called by ``jobs/train_mnist_vae.py``)."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from recray.latents.io import Prior
from recray.models.vae import (
    MnistVAE,
    VAEConfig,
    mutual_information_bits,
    neg_elbo_bits,
    save_mnist_vae,
)

LN2 = math.log(2.0)


def train_vae(
    images: np.ndarray,
    config: VAEConfig | None = None,
    *,
    epochs: int = 40,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    threads: int = 2,
    max_minutes: float = 25.0,
    log: Callable[[str], None] = print,
) -> tuple[MnistVAE, dict]:
    """Adam with a one-cycle schedule on one-sample -ELBO; stops early after the epoch
    that passes ``max_minutes``. Returns the model (eval mode) and the training record."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    xt = torch.from_numpy(np.array(images, dtype=np.uint8))  # a writable copy
    model = MnistVAE(config or VAEConfig())
    n_params = sum(p.numel() for p in model.parameters())
    log(f"VAE {model.config}: {n_params} parameters, {threads} threads")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(xt.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.05
    )
    gen = torch.Generator().manual_seed(seed)
    history = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(xt.shape[0], generator=gen)
        tot_kl = tot_rec = 0.0
        for s in range(0, xt.shape[0], batch_size):
            kl, rec = model.neg_elbo_terms(xt[perm[s : s + batch_size]])
            loss = (kl + rec).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_kl += float(kl.detach().sum())
            tot_rec += float(rec.detach().sum())
        elapsed = time.perf_counter() - t0
        n = xt.shape[0]
        row = {
            "epoch": epoch + 1,
            "train_kl_bits": tot_kl / n / LN2,
            "train_neg_elbo_bits": (tot_kl + tot_rec) / n / LN2,
            "elapsed_s": round(elapsed, 1),
        }
        history.append(row)
        log(
            f"epoch {epoch + 1:3d}  -ELBO {row['train_neg_elbo_bits']:8.2f} bits/img "
            f"({row['train_neg_elbo_bits'] / 784:.4f} bpd)  KL {row['train_kl_bits']:6.2f}  "
            f"{elapsed:7.1f}s"
        )
        if elapsed > max_minutes * 60 and epoch + 1 < epochs:
            log(f"stopping: past max_minutes {max_minutes}")
            break
    model.eval()
    record = {
        "parameters": n_params,
        "epochs": len(history),
        "batch_size": batch_size,
        "optimizer": "Adam",
        "lr_schedule": f"OneCycleLR max_lr={lr} pct_start=0.05 over {epochs} epochs",
        "seed": seed,
        "threads": threads,
        "train_time_s": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "history": history,
    }
    return model, record


def publish_vae(
    model: MnistVAE, record: dict, x_train: np.ndarray, x_test: np.ndarray, out: Path
) -> dict:
    """Evaluate (test -ELBO, float64, one sample per image, seed 0; MI on ``x_train``) and
    write ``mnist_vae.npz``, ``mnist_vae.json`` and ``mnist_vae_prior.json`` to ``out``."""
    elbo = neg_elbo_bits(model, x_test, seed=0)
    mi = mutual_information_bits(model, x_train)
    results = {
        "test_neg_elbo_bits_per_image": float(elbo.total.mean()),
        "test_neg_elbo_bits_per_dim": float(elbo.total.mean() / 784),
        "test_kl_bits_per_image": float(elbo.kl.mean()),
        "test_reconstruction_bits_per_image": float(elbo.reconstruction.mean()),
        "train_mi_bits_total": float(mi.sum()),
        "active_dims_mi_over_0.1_bits": int((mi > 0.1).sum()),
    }
    out.mkdir(parents=True, exist_ok=True)
    card = {
        "model": "recray MNIST VAE (MLP, discretized logistic mixture)",
        "parameters": record["parameters"],
        "training": {"data": "MNIST train split, 60000 images (recray.data.mnist)", **record},
        "results": results,
        "evaluation": "float64; test -ELBO with one posterior sample per image (seed 0)",
    }
    card["weights_sha256"] = save_mnist_vae(model, out / "mnist_vae.npz", card)
    d = model.config.latent_dim
    prior = Prior(np.zeros(d), np.ones(d), mi)
    (out / "mnist_vae_prior.json").write_text(prior.to_json() + "\n")
    return card
