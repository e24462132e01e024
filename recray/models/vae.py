"""A small MLP VAE for 8-bit MNIST with a discretized-logistic-mixture likelihood.

* **Posterior** ``q(z|x) = N(mu(x), diag(sigma(x)^2))`` with ``sigma < sigma_max < 1`` by
  construction, so the density ratio to the prior is always bounded (exact REC methods
  need that); **prior** ``N(0, I)``.
* **Likelihood** ``p(x|z)``: per pixel, a mixture of ``K`` logistics on ``[-1, 1]``
  discretized to the 256 levels (PixelCNN++ style: level ``v`` covers
  ``[(2v - 1)/255 - 1, (2v + 1)/255 - 1]``, the end levels take the tails).

**Exactness of ``p(x|z)``.** A lossless codec needs the decoder to rebuild the very same
probability tables as the encoder. :func:`pixel_probabilities` evaluates the decoder and
the CDF **one latent row at a time**, in float64, with torch pinned to one thread, so a
row's table does not depend on the batch or the process. It does depend on the torch build
and on the CPU kernels that build takes (``ATEN_CPU_CAPABILITY``, MKL's modes: issue 14):
the codec therefore codes pixels under the integer tables of :mod:`recray.models.intdec`,
which are the same on any machine; these float tables remain for codec version 1 runs and
as the reference the integer ones are measured against.

Weights are stored as float32 ``.npz`` next to a JSON card (architecture, training set-up,
timings, results, the weights' SHA-256); :func:`load_mnist_vae` verifies that checksum.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recray.errors import InputError
from recray.localfiles import file_sha256
from recray.models.vae_encoder import (  # noqa: F401  (the files' helpers, re-exported)
    DEFAULT_WEIGHTS,
    PIXELS,
    WEIGHTS_DIR,
    Encoder,
    VAEConfig,
    card_path,
    check_images,
    read_card,
    verified_weights,
)
from recray.models.vae_encoder import posteriors as _encoder_posteriors

LEVELS = 256
LN2 = math.log(2.0)
_DEFAULT_CONFIG = VAEConfig()


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())  # ReLU: exact in any order, no transcendental function
    return nn.Sequential(*layers)


def scale_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 levels 0..255 -> [-1, 1]."""
    return x.to(torch.get_default_dtype()) * (2.0 / 255.0) - 1.0


class MnistVAE(nn.Module):
    def __init__(self, config: VAEConfig = _DEFAULT_CONFIG):
        super().__init__()
        self.config = config
        c = config
        self.encoder = _mlp([PIXELS, *c.encoder_hidden, 2 * c.latent_dim])
        self.decoder = _mlp([c.latent_dim, *c.decoder_hidden, PIXELS * c.params_per_pixel])
        self.model_checksum: str | None = None
        # float64 copies for exact evaluation: a plain dict, so they are not submodules
        # (not in state_dict); dropped whenever the mode changes (weights may have moved)
        self._exact: dict[str, nn.Module] = {}

    def train(self, mode: bool = True):
        self._exact.clear()
        return super().train(mode)

    # ------------------------------------------------------------------ networks
    def encode(self, x_scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation (``0 < sigma < sigma_max``)."""
        h = self.encoder(x_scaled)
        mu, raw = h.chunk(2, dim=-1)
        sigma = self.config.sigma_max * torch.sigmoid(raw)
        return mu, sigma

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pixel mixture (log-weights, means, log-scales), each ``(n, 784, K)``."""
        return _split_params(self.decoder(z), self.config)

    def neg_elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample ``(KL, reconstruction)`` in nats per image, for training."""
        xs = scale_pixels(x)
        mu, sigma = self.encode(xs)
        z = mu + sigma * torch.randn_like(mu)
        logw, means, log_s = self.decode(z)
        rec = -dlogistic_mixture_logprob(xs, logw, means, log_s).sum(dim=1)
        kl = kl_standard_normal(mu, sigma).sum(dim=1)
        return kl, rec


def _split_params(out: torch.Tensor, c: VAEConfig):
    k = c.mixture_components
    p = out.reshape(out.shape[0], c.params_per_pixel, PIXELS).transpose(1, 2)
    zeros = torch.zeros_like(p[..., :1])
    logits = torch.cat([zeros, p[..., : k - 1]], dim=-1)
    logw = torch.log_softmax(logits, dim=-1)
    means = p[..., k - 1 : 2 * k - 1]
    log_s = torch.clamp(p[..., 2 * k - 1 :], min=c.log_scale_min)
    return logw, means, log_s


def kl_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``KL[N(mu, sigma^2) || N(0, 1)]`` elementwise, nats."""
    return 0.5 * (mu * mu + sigma * sigma - 1.0) - torch.log(sigma)


def dlogistic_mixture_logprob(xs, logw, means, log_s) -> torch.Tensor:
    """Log-probability (nats) of scaled levels ``xs`` (n, 784) under the discretized
    logistic mixture, per pixel (n, 784). Numerically careful in the tails (PixelCNN++)."""
    x = xs.unsqueeze(-1)
    centered = x - means
    inv_s = torch.exp(-log_s)
    plus_in = inv_s * (centered + 1.0 / 255.0)
    min_in = inv_s * (centered - 1.0 / 255.0)
    log_cdf_plus = plus_in - nn.functional.softplus(plus_in)  # level 0
    log_one_minus_cdf_min = -nn.functional.softplus(min_in)  # level 255
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_s - 2.0 * nn.functional.softplus(mid_in)
    inner = torch.where(
        cdf_delta > 1e-5,
        torch.log(torch.clamp(cdf_delta, min=1e-12)),
        log_pdf_mid - math.log(127.5),
    )
    lp = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, inner))
    return torch.logsumexp(lp + logw, dim=-1)


# ---------------------------------------------------------------------- exact tables
@contextlib.contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _float64_copy(model: MnistVAE, name: str) -> nn.Module:
    net = model._exact.get(name)
    if net is None:
        net = copy.deepcopy(getattr(model, name)).to(torch.float64).eval()
        model._exact[name] = net
    return net


def _decoder64(model: MnistVAE) -> nn.Module:
    return _float64_copy(model, "decoder")


# level edges 0.5 .. 254.5 on the [-1, 1] scale, float64
_EDGES = torch.tensor(
    [(2.0 * v + 1.0) / 255.0 - 1.0 for v in range(LEVELS - 1)], dtype=torch.float64
)


def _row_probabilities(dec, z_row: torch.Tensor, c: VAEConfig) -> torch.Tensor:
    """The (784, 256) table of one latent row: CDF of the mixture at the 255 level edges,
    differenced; only elementwise ops on fixed shapes after the decoder."""
    logw, means, log_s = _split_params(dec(z_row), c)  # (1, 784, K) each
    w = torch.exp(logw[0])
    inv_s = torch.exp(-log_s[0])
    cdf = None
    for k in range(c.mixture_components):
        t = (_EDGES - means[0, :, k, None]) * inv_s[:, k, None]  # (784, 255)
        term = torch.sigmoid(t) * w[:, k, None]
        cdf = term if cdf is None else cdf + term
    probs = torch.empty(PIXELS, LEVELS, dtype=torch.float64)
    probs[:, 0] = cdf[:, 0]
    probs[:, 1:-1] = cdf[:, 1:] - cdf[:, :-1]
    probs[:, -1] = 1.0 - cdf[:, -1]
    return torch.clamp_(probs, min=0.0)


def _check_z(model: MnistVAE, z) -> np.ndarray:
    z = np.asarray(z)
    d = model.config.latent_dim
    if z.ndim != 2 or z.shape[1] != d:
        raise InputError(f"z must have shape (n, {d}); got {z.shape}")
    if z.dtype != np.float64:
        raise InputError(
            f"z must be float64 (the exact latent REC regenerates); got {z.dtype}. "
            "Convert on both sides the same way before calling"
        )
    if not np.all(np.isfinite(z)):
        i = int(np.argmax(~np.isfinite(z).all(axis=1)))
        raise InputError(f"z row {i} is not finite")
    return np.ascontiguousarray(z)


def pixel_probabilities(model: MnistVAE, z: np.ndarray) -> np.ndarray:
    """Probabilities of the 256 levels of every pixel under ``p(x|z)``: float64
    ``(n, 784, 256)`` (rows sum to 1 up to rounding; entries may be 0, the entropy coder
    gives every level a nonzero quantized probability).

    Guarantees and requirements: each row's table is a function of that row's bytes alone
    (evaluated alone, in float64, on one thread), so encoder and decoder get identical
    bytes whatever their batching, given the same weights, torch build and CPU family.
    Memory: 1.6 MB per row; call on chunks of a few hundred rows.
    """
    z = _check_z(model, z)
    dec = _decoder64(model)
    out = np.empty((z.shape[0], PIXELS, LEVELS), dtype=np.float64)
    with _one_thread(), torch.inference_mode():
        for i in range(z.shape[0]):
            row = torch.from_numpy(z[i : i + 1].copy())
            out[i] = _row_probabilities(dec, row, model.config).numpy()
    return out


# -------------------------------------------------------------- posteriors and ELBO
def encoder_of(model: MnistVAE) -> Encoder:
    """The NumPy encoder (:mod:`recray.models.vae_encoder`) of ``model``'s current weights."""
    net = model.encoder.state_dict()  # only the encoder's weights: no copy of the decoder's
    state = {f"encoder.{k}": v.detach().cpu().numpy() for k, v in net.items()}
    return Encoder.from_state(model.config, state, model.model_checksum)


def posteriors(model: MnistVAE, images, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ``(mu, sigma)`` float64 ``(n, D)`` of uint8 images (n, 784) or (n, 28, 28),
    by the NumPy encoder (the one the codec uses: :func:`recray.models.vae_encoder.
    posteriors`)."""
    return _encoder_posteriors(encoder_of(model), images, batch_size)


@dataclass(frozen=True)
class ElboBits:
    """Per-image ideal codelengths in bits: ``kl`` (the latent's share, what REC pays on
    top of its overhead) and ``reconstruction`` (``-log2 p(x|z)``, z ~ q: the pixels'
    share). ``total = kl + reconstruction`` is the -ELBO."""

    kl: np.ndarray
    reconstruction: np.ndarray
    kl_per_dim: np.ndarray = field(repr=False)

    @property
    def total(self) -> np.ndarray:
        return self.kl + self.reconstruction


def neg_elbo_bits(
    model: MnistVAE, images, *, seed: int = 0, batch_size: int = 500, z: np.ndarray | None = None
) -> ElboBits:
    """-ELBO of each image in bits (float64, one posterior sample per image drawn with
    ``seed``, or the given ``z``), split into KL and reconstruction."""
    x = check_images(images)
    mu, sigma = posteriors(model, x)
    kl_d = (0.5 * (mu * mu + sigma * sigma - 1.0) - np.log(sigma)) / LN2
    if z is None:
        z = mu + sigma * np.random.default_rng(seed).standard_normal(mu.shape)
    z = _check_z(model, z)
    dec = _decoder64(model)
    rec = []
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch_size):
            xs = torch.from_numpy(x[s : s + batch_size].astype(np.float64)) * (2.0 / 255.0) - 1.0
            params = _split_params(dec(torch.from_numpy(z[s : s + batch_size])), model.config)
            rec.append(-dlogistic_mixture_logprob(xs, *params).sum(dim=1).numpy() / LN2)
    return ElboBits(kl=kl_d.sum(axis=1), reconstruction=np.concatenate(rec), kl_per_dim=kl_d)


def mutual_information_bits(model: MnistVAE, images) -> np.ndarray:
    """Per-dimension ``E_x KL[q(z_d|x) || N(0, 1)]`` in bits over ``images``: an upper
    bound on the information each latent dimension carries, what the codec plan needs."""
    mu, sigma = posteriors(model, images)
    return ((0.5 * (mu * mu + sigma * sigma - 1.0) - np.log(sigma)) / LN2).mean(axis=0)


# ------------------------------------------------------------------- save and load
def save_mnist_vae(model: MnistVAE, path=DEFAULT_WEIGHTS, card: dict | None = None) -> str:
    """Write float32 weights (``.npz``) and the JSON card next to them; the SHA-256."""
    path = Path(path)
    arrays = {k: v.detach().cpu().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    np.savez(path, **arrays)
    sha = file_sha256(path)
    doc = {"config": asdict(model.config), **(card or {}), "weights_sha256": sha}
    doc["config"]["encoder_hidden"] = list(model.config.encoder_hidden)
    doc["config"]["decoder_hidden"] = list(model.config.decoder_hidden)
    card_path(path).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return sha


def load_mnist_vae(path=DEFAULT_WEIGHTS) -> MnistVAE:
    """The trained VAE (eval mode, float32) after checking the weights' SHA-256 against the
    card; ``model.model_checksum`` is that SHA-256 (what a run's plan records)."""
    config, arrays, sha = verified_weights(path)
    model = MnistVAE(config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    model.eval()
    model.model_checksum = sha
    return model
