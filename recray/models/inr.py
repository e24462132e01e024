"""A RECOMBINER-style Bayesian implicit neural representation (INR) of 32x32 RGB tiles.

Follows the CIFAR-10 setting of RECOMBINER (He, Guo, Flamich, Hernández-Lobato,
"RECOMBINER: Robust and Enhanced Compression with Bayesian Implicit Neural
Representations", ICLR 2024), written from the paper's description (no code copied):

* **INR**: a SIREN MLP ``32 -> 32 -> 32 -> 32 -> 3`` with ``sin(30 x)`` after the three
  hidden layers, a linear output; its input per pixel is 16 Fourier features of the pixel
  centre ``(x, y) in [-1, 1]^2`` (``sin``/``cos`` of ``2^k pi x`` and ``2^k pi y``,
  ``k = 0..3``) plus 16 channels of a **learned positional encoding**: a per-image latent
  grid ``2 x 2 x 128`` mapped to ``32 x 32 x 16`` by a shared upsampling conv net
  (four stride-2 transposed convolutions).
* **Linear reparameterization**: layer ``l``'s weights and bias ``W_l`` (``(in + 1) x out``)
  are ``H_l A_l`` with ``H_l`` per image (coded) and ``A_l`` (``out x out``) shared and
  learned with the prior. (RECOMBINER learns a linear map per layer too; the axis it acts
  on here, the output axis, is our choice.)
* **Coded latent** ``h`` per tile: the ``H_l`` of the four layers then the grid,
  ``3,267 + 512 = 3,779`` dimensions, with a factorized Gaussian posterior
  ``N(mu, diag(sigma^2))`` and a factorized Gaussian prior ``N(mu_p, diag(sigma_p^2))``.

**Training** (:func:`train`): coordinate ascent over training tiles. Each round runs Adam
steps on every tile's posterior and on the shared parts (``A_l``, the conv net) for the
loss ``MSE + beta * KL / pixels`` (one reparameterized sample per tile and step), then sets
the prior in closed form, ``mu_p = mean_i mu_i``, ``sigma_p^2 = mean_i (sigma_i^2 +
(mu_i - mu_p)^2)``, and multiplies ``beta`` by ``(rate / target)^0.5`` (the ratio clipped
to ``[0.8, 1.25]``), so the average KL approaches the target bits per pixel. The
per-dimension information ``I_d`` stored with the prior (it drives the codec plan) is the
training tiles' mean ``KL_d`` in bits.

**Fitting** (:func:`fit`): the encoder's analysis. Model and prior are frozen; the tile's
posterior is fitted for the same loss, with ``sigma = 0.999 sigma_p sigmoid(rho)``, so a
posterior is never wider than the prior (exact REC methods need a bounded density ratio).
Dimensions already coded can be pinned to their decoded values (progressive coding).

**Rendering** (:func:`render_uint8`): decoders must rebuild the encoder's tiles exactly,
so this runs in float64, one tile at a time, on one torch thread; the pixels are
``round(255 clip(x, 0, 1))``. Guarantees and requirements: the same weights
(:attr:`INR.model_checksum`), torch build and CPU family on both sides.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recray.errors import FormatError, InputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
LN2 = math.log(2.0)
SIZE = 32
PIXELS = SIZE * SIZE


@dataclass(frozen=True)
class INRConfig:
    hidden: int = 32
    hidden_layers: int = 3
    fourier_freqs: int = 4  # per coordinate: 2 coords x 4 freqs x (sin, cos) = 16 features
    pe_channels: int = 16
    grid: int = 2
    grid_channels: int = 128
    omega: float = 30.0

    @property
    def in_features(self) -> int:
        return 4 * self.fourier_freqs + self.pe_channels

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(in + 1, out)`` of each layer (the bias is the last row)."""
        dims = [self.in_features] + [self.hidden] * self.hidden_layers + [3]
        return tuple((a + 1, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    @property
    def n_weights(self) -> int:
        return sum(a * b for a, b in self.layer_shapes)

    @property
    def n_grid(self) -> int:
        return self.grid * self.grid * self.grid_channels

    @property
    def dim(self) -> int:
        return self.n_weights + self.n_grid


@contextlib.contextmanager
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fourier_features(cfg: INRConfig) -> torch.Tensor:
    """``(1024, 16)`` float64: sin/cos of ``2^k pi x``, ``2^k pi y`` at pixel centres."""
    c = (torch.arange(SIZE, dtype=torch.float64) + 0.5) / SIZE * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)  # (P, 2)
    freqs = math.pi * 2.0 ** torch.arange(cfg.fourier_freqs, dtype=torch.float64)
    arg = (pts[:, :, None] * freqs).reshape(PIXELS, -1)
    return torch.cat([torch.sin(arg), torch.cos(arg)], 1)


class INR(nn.Module):
    """The shared parts (``A_l``, the positional-encoding conv net) and the prior."""

    def __init__(self, cfg: INRConfig = INRConfig()):
        super().__init__()
        self.cfg = cfg
        scales = []
        for k, (a, _) in enumerate(cfg.layer_shapes):
            bound = 1.0 / (a - 1) if k == 0 else math.sqrt(6.0 / (a - 1)) / cfg.omega
            scales.append(bound / math.sqrt(3.0))  # std of SIREN's uniform init
        self.A = nn.ParameterList(
            [
                nn.Parameter(s * torch.eye(b))
                for s, (_, b) in zip(scales, cfg.layer_shapes, strict=True)
            ]
        )
        c = cfg.grid_channels
        self.pe_net = nn.Sequential(
            nn.ConvTranspose2d(c, 64, 4, 2, 1),
            nn.GELU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.GELU(),
            nn.ConvTranspose2d(32, 16, 4, 2, 1),
            nn.GELU(),
            nn.ConvTranspose2d(16, cfg.pe_channels, 4, 2, 1),
        )
        self.register_buffer("fourier", fourier_features(cfg).float())
        self.register_buffer("prior_mu", torch.zeros(cfg.dim))
        self.register_buffer("prior_sigma", torch.ones(cfg.dim))
        self.beta = 1e-3
        self.model_checksum = ""

    # ------------------------------------------------------------------ forward
    def render(self, h: torch.Tensor) -> torch.Tensor:
        """Tiles ``(n, 1024, 3)`` (values near [0, 1]) of latents ``h`` ``(n, D)``."""
        cfg = self.cfg
        n = h.shape[0]
        g = h[:, cfg.n_weights :].reshape(n, cfg.grid_channels, cfg.grid, cfg.grid)
        side = cfg.grid * 16
        pe = self.pe_net(g)  # (n, C, 32, 32)
        if pe.shape[-1] != side or side != SIZE:
            raise InputError(f"positional encoding is {pe.shape[-1]} wide, expected {SIZE}")
        pe = pe.reshape(n, cfg.pe_channels, PIXELS).transpose(1, 2)
        four = self.fourier.to(h.dtype).expand(n, -1, -1)
        x = torch.cat([four, pe], 2)
        off = 0
        n_layers = len(cfg.layer_shapes)
        for k, (a, b) in enumerate(cfg.layer_shapes):
            H = h[:, off : off + a * b].reshape(n, a, b)
            off += a * b
            W = H @ self.A[k]
            x = torch.baddbmm(W[:, -1:, :], x, W[:, :-1, :])
            if k < n_layers - 1:
                x = torch.sin(cfg.omega * x)
        return x + 0.5

    def kl_bits(self, mu, sigma) -> torch.Tensor:
        """Per-dimension ``KL[N(mu, sigma^2) || prior]`` in bits, ``(n, D)``."""
        pm, ps = self.prior_mu.to(mu.dtype), self.prior_sigma.to(mu.dtype)
        v = (sigma / ps) ** 2
        return 0.5 * (v + ((mu - pm) / ps) ** 2 - 1 - torch.log(v)) / LN2

    # ------------------------------------------------------------------ storage
    def save(self, path: Path, card: dict) -> dict:
        """Write the weights ``.npz`` (float32 shared parts, float64 prior, ``beta``), the
        model card ``.json`` (``card`` plus config, ``beta`` and the weights' SHA-256) and
        the coding prior ``<stem>_prior.json`` (recray's prior format, with the
        per-dimension information ``mi_bits`` set by :func:`train`)."""
        from recray.latents.io import Prior

        path = Path(path)
        arrays = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}
        arrays = {
            k: (v.astype(np.float64) if k.startswith("prior") else v.astype(np.float32))
            for k, v in arrays.items()
            if k != "fourier"
        }
        arrays["prior_mu"] = np.asarray(self.prior_mu64, np.float64)
        arrays["prior_sigma"] = np.asarray(self.prior_sigma64, np.float64)
        arrays["beta"] = np.asarray(self.beta, np.float64)
        arrays["config"] = np.frombuffer(json.dumps(asdict(self.cfg)).encode(), np.uint8)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        card = card | {"weights_sha256": sha, "config": asdict(self.cfg), "beta": self.beta}
        path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        prior = Prior(arrays["prior_mu"], arrays["prior_sigma"], np.maximum(self.mi_bits, 0.0))
        prior_path = path.with_name(path.stem + "_prior.json")
        prior_path.write_text(prior.to_json() + "\n")
        return card


def load_inr(path, expect_sha256: str | None = None) -> INR:
    """Load weights written by :meth:`INR.save`; their SHA-256 must match the card next to
    them (or ``expect_sha256``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"INR weights {str(path)!r} do not exist")
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    want = expect_sha256
    if want is None:
        card_path = path.with_suffix(".json")
        if not card_path.exists():
            raise FormatError(f"INR weights {str(path)!r} have no model card {card_path.name}")
        want = json.loads(card_path.read_text()).get("weights_sha256")
    if sha != want:
        raise FormatError(
            f"INR weights {str(path)!r} have SHA-256 {sha}, but the model card says {want}: "
            "the file is corrupted or not the one the card describes"
        )
    import io

    with np.load(io.BytesIO(raw)) as z:
        cfg = INRConfig(**json.loads(bytes(z["config"]).decode()))
        model = INR(cfg)
        state = {
            k: torch.from_numpy(np.asarray(z[k])) for k in z.files if k not in ("beta", "config")
        }
        state["fourier"] = model.fourier
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()})
        model.beta = float(z["beta"])
        # the prior is kept exactly (float64) for coding
        model.prior_mu64 = np.asarray(z["prior_mu"], np.float64)
        model.prior_sigma64 = np.asarray(z["prior_sigma"], np.float64)
    model.model_checksum = sha
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------- training
def _as_float(tiles: np.ndarray) -> torch.Tensor:
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[1:] != (SIZE, SIZE, 3):
        raise InputError(f"tiles must be uint8 (n, 32, 32, 3); got {tiles.dtype} {tiles.shape}")
    return torch.from_numpy(tiles.reshape(len(tiles), PIXELS, 3).astype(np.float32) / 255.0)


def train(
    tiles: np.ndarray,
    target_bpp: float,
    *,
    rounds: int = 40,
    steps_per_round: int = 10,
    lr: float = 3e-3,
    lr_sigma: float = 1e-2,
    beta: float = 0.01,
    init_sigma: float = 0.3,
    max_minutes: float | None = None,
    init: INR | None = None,
    init_posteriors: tuple[torch.Tensor, torch.Tensor] | None = None,
    cfg: INRConfig | None = None,
    seed: int = 0,
    log=print,
) -> tuple[INR, dict]:
    """Learn the shared parts and the prior on ``tiles`` (uint8 ``(M, 32, 32, 3)``) for a
    target rate of ``target_bpp`` bits per pixel; ``init`` warm-starts from another rate's
    model and ``init_posteriors`` (``info["posteriors"]`` of that run) from its posteriors;
    ``cfg`` a smaller architecture (tests). Adam: ``lr`` for the posterior means,
    ``lr_sigma`` for their log-scales, ``lr / 3`` for the shared parts; posteriors start at
    prior samples with ``init_sigma`` times the prior's scale. Training stops after the
    round that passes ``max_minutes``. Returns the model
    (``beta`` set) and a dict with the history, time and the final posteriors."""
    torch.manual_seed(seed)
    x = _as_float(tiles)
    m = x.shape[0]
    model = INR(init.cfg if init else (cfg or INRConfig()))
    if init is not None:
        model.load_state_dict(init.state_dict())
        beta = init.beta
    for p in model.parameters():
        p.requires_grad_(True)
    d = model.cfg.dim
    if init_posteriors is not None:
        mu = init_posteriors[0].clone().requires_grad_(True)
        log_sigma = init_posteriors[1].clone().requires_grad_(True)
    else:
        mu = (model.prior_mu + model.prior_sigma * torch.randn(m, d)).requires_grad_(True)
        log_sigma = (torch.log(model.prior_sigma) + math.log(init_sigma)).expand(m, d).clone()
        log_sigma.requires_grad_(True)
    opt = torch.optim.Adam(
        [
            {"params": [mu], "lr": lr},
            {"params": [log_sigma], "lr": lr_sigma},
            {"params": model.parameters(), "lr": lr / 3},
        ]
    )
    target_bits = target_bpp * PIXELS
    history = []
    t0 = time.perf_counter()
    for r in range(rounds):
        for _ in range(steps_per_round):
            sigma = torch.exp(log_sigma)
            h = mu + sigma * torch.randn_like(mu)
            mse = ((model.render(h) - x) ** 2).mean(dim=(1, 2))
            kl = model.kl_bits(mu, sigma).sum(1)
            loss = (mse + beta * kl / PIXELS).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():  # closed-form prior update (coordinate ascent)
            sigma = torch.exp(log_sigma)
            pm = mu.mean(0)
            ps = torch.sqrt((sigma**2 + (mu - pm) ** 2).mean(0)).clamp_min(1e-6)
            model.prior_mu.copy_(pm)
            model.prior_sigma.copy_(ps)
            kl = model.kl_bits(mu, sigma).sum(1)
            rate = float(kl.mean()) / target_bits
            beta *= float(np.clip(rate, 0.8, 1.25)) ** 0.5
            psnr = float((-10 * torch.log10(mse.detach().clamp_min(1e-10))).mean())
        history.append(
            {
                "round": r,
                "kl_bpp": float(kl.mean()) / PIXELS,
                "psnr_db": psnr,
                "beta": beta,
                "elapsed_s": round(time.perf_counter() - t0, 1),
            }
        )
        log(f"round {r}: {history[-1]}")
        if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            break
    with torch.no_grad():
        sigma = torch.exp(log_sigma)
        info = model.kl_bits(mu, sigma).mean(0)  # I_d: mean KL per dimension, bits
    model.beta = beta
    model.mi_bits = info.double().numpy()
    model.prior_mu64 = model.prior_mu.double().numpy()
    model.prior_sigma64 = model.prior_sigma.double().numpy()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {
        "history": history,
        "train_seconds": time.perf_counter() - t0,
        "posteriors": (mu.detach(), log_sigma.detach()),
    }


# ---------------------------------------------------------------------- fitting
@dataclass
class BlockBeta:
    """Per-block beta annealing of the encoder's fit (RECOMBINER's test-time protocol):
    ``block_of`` int ``(D,)`` maps each dimension to its coding block, ``target_bits``
    ``(n_blocks,)`` is each block's KL budget; ``beta`` float ``(n, n_blocks)`` is the state
    (``None``: start at the model's ``beta``), carried from the analysis fit into the
    fine-tuning fits. After ``warmup`` Adam steps at the start (the first fit only: the KL
    of a fresh posterior is far from where it settles), every ``every`` steps each uncoded
    block's beta is multiplied by ``clip(KL_b / target_b, 1 / step, step)``: a block above
    its budget is pushed down, one below is let up, so each block ends near its budget.
    The small ``step`` keeps the loop slower than the posterior's response (a fast one
    overshoots: the KL of a block squeezed to the prior comes back only slowly)."""

    block_of: np.ndarray
    target_bits: np.ndarray
    beta: np.ndarray | None = None
    every: int = 1
    step: float = 1.02
    warmup: int = 0


def fit(
    model: INR,
    tiles: np.ndarray,
    *,
    steps: int,
    lr: float = 1e-2,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    fixed: np.ndarray | None = None,
    values: np.ndarray | None = None,
    seed: int = 0,
    anneal: BlockBeta | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors ``(mu, sigma)`` float64 ``(n, D)`` of ``tiles`` under the frozen model.

    ``init``: a previous ``(mu, sigma)`` to continue from (else the prior with sigma =
    prior / 3). ``fixed`` bool ``(n, D)`` and ``values`` float64 ``(n, D)``: dimensions pinned
    to ``values`` (already coded); their returned ``mu`` is the value and ``sigma`` is left
    as it was. ``anneal``: per-block beta (:class:`BlockBeta`, updated in place: its
    ``beta`` holds the final per-block betas); without it one beta (the model's) for all.
    The encoder alone runs this: its randomness needs no sharing."""
    gen = torch.Generator().manual_seed(seed)
    x = _as_float(tiles)
    n, d = x.shape[0], model.cfg.dim
    pm = torch.as_tensor(model.prior_mu64, dtype=torch.float32)
    ps = torch.as_tensor(model.prior_sigma64, dtype=torch.float32)
    smax = 0.999 * ps
    if init is None:
        mu0 = pm.expand(n, d).clone()
        rho0 = torch.full((n, d), -math.log(0.999 * 3 - 1))  # sigma = prior / 3
    else:
        mu0 = torch.as_tensor(init[0], dtype=torch.float32).clone()
        s = torch.as_tensor(init[1], dtype=torch.float32) / smax
        s = s.clamp(1e-6, 1 - 1e-6)
        rho0 = torch.log(s) - torch.log1p(-s)
    fx = torch.zeros(n, d, dtype=torch.bool) if fixed is None else torch.as_tensor(fixed)
    vals = torch.zeros(n, d) if values is None else torch.as_tensor(values, dtype=torch.float32)
    mu = mu0.requires_grad_(True)
    rho = rho0.requires_grad_(True)
    opt = torch.optim.Adam([mu, rho], lr=lr)
    if anneal is not None:
        blk = torch.as_tensor(np.asarray(anneal.block_of, np.int64))
        nb = len(anneal.target_bits)
        target = torch.as_tensor(np.asarray(anneal.target_bits, np.float64)).clamp_min(1e-3)
        if anneal.beta is None:
            bb = torch.full((n, nb), float(model.beta), dtype=torch.float64)
        else:
            bb = torch.as_tensor(np.asarray(anneal.beta, np.float64)).clone()
        open_blk = torch.zeros(n, nb).index_add_(1, blk, (~fx).float()) > 0
    beta = model.beta
    for k in range(steps):
        sigma = smax * torch.sigmoid(rho)
        eps = torch.randn(n, d, generator=gen)
        h = torch.where(fx, vals, mu + sigma * eps)
        mse = ((model.render(h) - x) ** 2).mean(dim=(1, 2))
        kl_d = torch.where(fx, 0.0, model.kl_bits(mu, sigma))
        if anneal is None:
            kl = beta * kl_d.sum(1)
        else:
            kl = (bb[:, blk].float() * kl_d).sum(1)
            if k >= anneal.warmup and (k + 1) % anneal.every == 0:
                with torch.no_grad():
                    kl_b = torch.zeros(n, nb, dtype=torch.float64).index_add_(
                        1, blk, kl_d.detach().double()
                    )
                    f = (kl_b / target).clamp(1 / anneal.step, anneal.step)
                    bb = torch.where(open_blk, bb * f, bb)
        loss = (mse + kl / PIXELS).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if anneal is not None:
        anneal.beta = bb.numpy()
        anneal.warmup = 0
    with torch.no_grad():
        sigma = smax * torch.sigmoid(rho)
        mu_out = torch.where(fx, vals, mu)
    return mu_out.double().numpy(), sigma.double().numpy()


def render_uint8(model: INR, z: np.ndarray) -> np.ndarray:
    """Decoded tiles uint8 ``(n, 32, 32, 3)`` from latents ``z`` float64 ``(n, D)``: float64,
    one tile at a time, one torch thread (see the module docstring)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != model.cfg.dim:
        raise InputError(f"latents must be (n, {model.cfg.dim}); got {z.shape}")
    m64 = getattr(model, "_f64", None)
    if m64 is None:
        import copy

        m64 = copy.deepcopy(model).double()
        model._f64 = m64
    out = np.empty((z.shape[0], SIZE, SIZE, 3), np.uint8)
    with one_thread(), torch.no_grad():
        for i in range(z.shape[0]):
            y = m64.render(torch.from_numpy(z[i : i + 1])).numpy()[0]
            out[i] = np.round(255.0 * np.clip(y, 0.0, 1.0)).astype(np.uint8).reshape(SIZE, SIZE, 3)
    return out


def psnr_db(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-tile PSNR (dB, peak 255) of uint8 tiles ``(n, 32, 32, 3)``."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))


def rate_tag(rate: float) -> str:
    """File tag of a rate point: ``0.5 -> "0p5"``, ``2.0 -> "2"``."""
    return f"{float(rate):g}".replace(".", "p")


def shipped_rates() -> list[float]:
    """Rate points (bpp) with shipped weights and prior, ascending."""
    out = []
    for p in WEIGHTS_DIR.glob("inr_*_prior.json"):
        tag = p.name[len("inr_") : -len("_prior.json")]
        try:
            out.append(float(tag.replace("p", ".")))
        except ValueError:
            continue
    return sorted(out)


def weights_path(rate: float) -> Path:
    return WEIGHTS_DIR / f"inr_{rate_tag(rate)}.npz"
