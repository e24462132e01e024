"""The MNIST VAE's files and its encoder ``q(z|x)`` in NumPy, without torch.

Encoding a run needs only the posteriors ``(mu, sigma)`` of the images, and decoding needs
only the integer decoder (:mod:`recray.models.intdec`), so the codec never imports torch
(whose import alone takes over a second per process). Training and the float tables of
codec version 1 keep the torch model of :mod:`recray.models.vae`, which reads and writes the
same files through the helpers here.

**The files.** Float32 weights (``.npz``, the torch ``state_dict`` keys) and a JSON card
next to them (``<stem>.json``: the architecture, training set-up, results and the weights'
SHA-256). :func:`load_encoder` refuses weights whose SHA-256 differs from the card's.

**The forward pass** is the encoder MLP ``784 -> hidden... -> 2 D`` with ReLU between the
layers, in float64 from the float32 weights: ``mu`` is the first half of the output and
``sigma = sigma_max * sigmoid(raw)`` of the second (so ``0 < sigma < sigma_max``). It is the
float64 evaluation torch did before, up to summation order: measured on the 10,000 test
images, ``mu`` within 3.6e-15 and ``sigma`` within 3.4e-16 of torch 2.13's (CPU), and a
1,000-image SP-PFR run wrote the same bytes. The posteriors are what the *encoder* searches
with; a decoder never evaluates them, so runs stay decodable whatever BLAS computed them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recray.errors import FormatError, InputError
from recray.localfiles import verified_sha256

PIXELS = 784
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "mnist_vae.npz"


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 32
    encoder_hidden: tuple[int, ...] = (512, 256)
    decoder_hidden: tuple[int, ...] = (256, 256)
    mixture_components: int = 2
    sigma_max: float = 0.999
    log_scale_min: float = -7.0

    @property
    def params_per_pixel(self) -> int:
        """``K - 1`` free mixture logits (the first is 0), ``K`` means, ``K`` log-scales."""
        return 3 * self.mixture_components - 1

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        d = dict(d)
        for k in ("encoder_hidden", "decoder_hidden"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**d)


# ------------------------------------------------------------------------------ files
def card_path(weights_path) -> Path:
    return Path(weights_path).with_suffix(".json")


def read_card(path=DEFAULT_WEIGHTS) -> dict:
    cp = card_path(path)
    try:
        return json.loads(cp.read_text())
    except FileNotFoundError:
        raise FormatError(
            f"model card {str(cp)!r} does not exist; it must sit next to the weights"
        ) from None
    except ValueError as exc:
        raise FormatError(f"model card {str(cp)!r} is not valid JSON: {exc}") from None


def verified_weights(path=DEFAULT_WEIGHTS) -> tuple[VAEConfig, dict[str, np.ndarray], str]:
    """``(config, arrays, sha256)`` of the weights at ``path`` (float32 arrays by
    ``state_dict`` key) after checking their SHA-256 against the card."""
    path = Path(path)
    card = read_card(path)
    sha = verified_sha256(
        path,
        card.get("weights_sha256"),
        f"model weights {str(path)!r}",
        "restore it (git checkout) or retrain with jobs/train_mnist_vae.py",
    )
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return VAEConfig.from_dict(card["config"]), arrays, sha


# ---------------------------------------------------------------------------- encoder
@dataclass(frozen=True)
class Encoder:
    """The encoder MLP in float64: ``layers[j] = (W_j, b_j)`` with ``W_j`` ``(in, out)``
    (the transpose of torch's ``Linear.weight``); ``model_checksum`` is the weights'
    SHA-256 (what a run's header records), ``None`` for weights not read from a file."""

    config: VAEConfig
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    model_checksum: str | None = None

    @classmethod
    def from_state(
        cls, config: VAEConfig, state: Mapping[str, np.ndarray], checksum: str | None = None
    ) -> Encoder:
        """From ``state_dict`` arrays: the ``encoder.<i>.weight`` / ``.bias`` pairs in
        order of ``i`` (the other keys are ignored)."""
        found = sorted(
            int(m.group(1)) for k in state if (m := re.fullmatch(r"encoder\.(\d+)\.weight", k))
        )
        if not found:
            raise FormatError("model weights hold no encoder layers (encoder.<i>.weight)")
        layers = []
        for i in found:
            w = np.asarray(state[f"encoder.{i}.weight"], dtype=np.float64)
            b = np.asarray(state[f"encoder.{i}.bias"], dtype=np.float64)
            layers.append((np.ascontiguousarray(w.T), b))
        want = (PIXELS, 2 * config.latent_dim)
        if (layers[0][0].shape[0], layers[-1][0].shape[1]) != want:
            raise FormatError(
                f"encoder maps {layers[0][0].shape[0]} -> {layers[-1][0].shape[1]} values; "
                f"the card's config needs {want[0]} -> {want[1]}"
            )
        return cls(config, tuple(layers), checksum)


def load_encoder(path=DEFAULT_WEIGHTS) -> Encoder:
    """The encoder of the weights at ``path``, after the card's SHA-256 check."""
    config, arrays, sha = verified_weights(path)
    return Encoder.from_state(config, arrays, sha)


def check_images(images) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3 and x.shape[1:] == (28, 28):
        x = x.reshape(x.shape[0], PIXELS)
    if x.ndim != 2 or x.shape[1] != PIXELS:
        raise InputError(f"images must have shape (n, 784) or (n, 28, 28); got {x.shape}")
    if x.dtype != np.uint8:
        raise InputError(f"images must be uint8 pixel levels 0..255; got {x.dtype}")
    return x


def posteriors(encoder: Encoder, images, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ``(mu, sigma)`` float64 ``(n, D)`` of uint8 images (n, 784) or (n, 28, 28),
    ``batch_size`` images at a time."""
    x = check_images(images)
    d = encoder.config.latent_dim
    mu = np.empty((x.shape[0], d))
    sigma = np.empty((x.shape[0], d))
    last = len(encoder.layers) - 1
    for s in range(0, x.shape[0], batch_size):
        h = x[s : s + batch_size].astype(np.float64) * (2.0 / 255.0) - 1.0
        for j, (w, b) in enumerate(encoder.layers):
            h = h @ w + b
            if j < last:
                np.maximum(h, 0.0, out=h)
        mu[s : s + batch_size] = h[:, :d]
        with np.errstate(over="ignore"):  # raw << 0: exp overflows to inf, sigmoid to 0
            sigma[s : s + batch_size] = encoder.config.sigma_max * (1.0 / (1.0 + np.exp(-h[:, d:])))
    return mu, sigma
