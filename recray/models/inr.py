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
  come from a per-image ``H_l`` (coded) through a shared linear map ``A_l`` learned with
  the prior. :attr:`INRConfig.reparam` says which: ``"full"`` (RECOMBINER's: the layer's
  ``p_l = (in + 1) out`` numbers flattened, ``vec W_l = vec H_l A_l`` with ``A_l``
  ``p_l x p_l``) or ``"output"`` (the first shipped models: ``W_l = H_l A_l`` with ``A_l``
  ``out x out``, mixing the output axis only).
* **Coded latent** ``h`` per tile: the ``H_l`` of the four layers then the grid,
  ``3,267 + 512 = 3,779`` dimensions, with a factorized Gaussian posterior
  ``N(mu, diag(sigma^2))`` and a factorized Gaussian prior ``N(mu_p, diag(sigma_p^2))``.

**Training** (:class:`Trainer`): coordinate ascent over training tiles, in rounds. A round
visits every tile once, in batches of ``batch`` tiles (one forward pass per batch): each
visit runs ``steps_per_visit`` Adam steps on the batch's posteriors (each tile has its own
Adam moments and step count, kept between visits) and on the shared parts (``A_l``, the
conv net) for the loss ``MSE + beta * KL / pixels`` (one reparameterized sample per tile
and step). After the round the prior is set in closed form, ``mu_p = mean_i mu_i``,
``sigma_p^2 = mean_i (sigma_i^2 + (mu_i - mu_p)^2)``, and ``beta`` is multiplied by
``(rate / target)^0.5`` (the ratio clipped to ``[1 / beta_clip, beta_clip]``), so the
average KL approaches the target bits per pixel. The whole state (posteriors, moments,
optimizer, generator, history) is checkpointed atomically, so training resumes where it
stopped and stops on a time budget. The per-dimension information ``I_d`` stored with the
prior (it drives the codec plan) is the training tiles' mean ``KL_d`` in bits; the
geometric mean of the training posteriors' scales (``init_sigma``) is where the encoder's
fit starts (as RECOMBINER starts from the average training log-scale).

**Fitting** (:func:`fit`): the encoder's analysis. Model and prior are frozen; the tile's
posterior is fitted for the same loss (``samples`` Monte Carlo samples per step, Adam
with a cosine learning-rate schedule from ``lr`` to ``lr_end``), with ``sigma = 0.999
sigma_p sigmoid(rho)``, so a posterior is never wider than the prior (exact REC methods
need a bounded density ratio). Dimensions already coded can be pinned to their decoded
values (progressive coding). Each tile's noise comes from its own generator, seeded from
the run seed, the tile id and how many of its dimensions are pinned, so a tile's fit does
not depend on which other tiles share its batch.

**Devices**: training and fitting run on a CUDA GPU when torch sees one (:func:`pick_device`),
else on the CPU; the encoder's fit on another device gives other (equally valid) posteriors,
hence other bytes, which decode the same way. Decoding always renders on the CPU.

**Rendering** (:func:`render_uint8`): decoders must rebuild the encoder's tiles exactly,
so this runs in float64, one tile at a time, on one torch thread, on the CPU; the pixels
are ``round(255 clip(x, 0, 1))``. Guarantees and requirements: the same weights
(:attr:`INR.model_checksum`), torch build and CPU family on both sides.

**Model ids**: a model is named by its weights file's stem, ``<family>_<rate tag>``
(``inr2_1p5``: family ``inr2``, rate point 1.5 bpp). ``--rate`` selects the rate point's
model in the newest of :data:`DEFAULT_FAMILIES` that ships it; older models stay shipped
so that their runs decode (a run's header names its model id and SHA-256).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recray.errors import FormatError, InputError
from recray.localfiles import replacing, write_replacing

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
LN2 = math.log(2.0)
SIZE = 32
PIXELS = SIZE * SIZE
#: The family new priors are trained into (``jobs/train_inr.py --family``).
DEFAULT_FAMILY = "inr2"
#: The families ``--rate`` selects from, newest first: a rate point uses the first family
#: that ships it (:func:`default_model_id`); ``"inr"`` is the first shipped family (its runs,
#: and runs whose header names no model id, still decode with it).
DEFAULT_FAMILIES = ("inr2", "inr")
LEGACY_FAMILY = "inr"
REPARAMS = ("output", "full")


@dataclass(frozen=True)
class INRConfig:
    hidden: int = 32
    hidden_layers: int = 3
    fourier_freqs: int = 4  # per coordinate: 2 coords x 4 freqs x (sin, cos) = 16 features
    pe_channels: int = 16
    grid: int = 2
    grid_channels: int = 128
    omega: float = 30.0
    # the linear reparameterization (module docstring); "output" is what the first shipped
    # models use, and what a config without this field means
    reparam: str = "output"

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

    @classmethod
    def from_dict(cls, d: dict) -> INRConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FormatError(
                f"INR config has unknown field(s) {unknown}: written by a newer recray"
            )
        cfg = cls(**d)
        if cfg.reparam not in REPARAMS:
            raise FormatError(f"INR config: reparam must be one of {REPARAMS}; got {cfg.reparam!r}")
        return cfg


@contextlib.contextmanager
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def pick_device(device=None) -> torch.device:
    """The torch device for training and fitting: ``None`` or ``"auto"`` is the first CUDA
    GPU when torch sees one, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given
    (a CUDA device that torch does not see raises :class:`InputError`)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a torch device: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: torch sees no CUDA GPU on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)"
            )
    elif dev.type != "cpu":
        raise InputError(f"device {device!r}: only 'cpu' and CUDA devices are supported")
    return dev


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
        if cfg.reparam not in REPARAMS:
            raise InputError(f"reparam must be one of {REPARAMS}; got {cfg.reparam!r}")
        self.cfg = cfg
        scales = []
        for k, (a, _) in enumerate(cfg.layer_shapes):
            bound = 1.0 / (a - 1) if k == 0 else math.sqrt(6.0 / (a - 1)) / cfg.omega
            scales.append(bound / math.sqrt(3.0))  # std of SIREN's uniform init
        # A_l = s_l I: with prior N(0, 1) the initial weights have SIREN's scale
        sizes = [a * b if cfg.reparam == "full" else b for a, b in cfg.layer_shapes]
        self.A = nn.ParameterList(
            [nn.Parameter(s * torch.eye(k)) for s, k in zip(scales, sizes, strict=True)]
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
        self.model_id = ""
        # where the encoder's fit starts its scales (per dim; None: a third of the prior's)
        self.init_sigma64: np.ndarray | None = None

    # ------------------------------------------------------------------ forward
    def render(self, h: torch.Tensor, row_block: int = 1) -> torch.Tensor:
        """Tiles ``(n, 1024, 3)`` (values near [0, 1]) of latents ``h`` ``(n, D)``.

        ``row_block > 1``: the full reparameterization's matrix products run on ``h`` padded
        with zero rows to a multiple of ``row_block`` (at least ``row_block`` rows), so
        that a tile's result does not depend on how many tiles share the batch (a BLAS
        product of few rows takes another code path than one of many)."""
        cfg = self.cfg
        n = h.shape[0]
        if cfg.reparam == "full" and row_block > 1:
            m = max(row_block, -(-n // row_block) * row_block)
            if m != n:
                h = torch.cat([h, h.new_zeros(m - n, h.shape[1])], 0)
        g = h[:n, cfg.n_weights :].reshape(n, cfg.grid_channels, cfg.grid, cfg.grid)
        side = cfg.grid * 16
        pe = self.pe_net(g)  # (n, C, 32, 32)
        if pe.shape[-1] != side or side != SIZE:
            raise InputError(f"positional encoding is {pe.shape[-1]} wide, expected {SIZE}")
        pe = pe.reshape(n, cfg.pe_channels, PIXELS).transpose(1, 2)
        four = self.fourier.to(h.dtype).expand(n, -1, -1)
        x = torch.cat([four, pe], 2)
        off = 0
        n_layers = len(cfg.layer_shapes)
        full = cfg.reparam == "full"
        for k, (a, b) in enumerate(cfg.layer_shapes):
            seg = h[:, off : off + a * b]
            off += a * b
            W = (seg @ self.A[k])[:n].reshape(n, a, b) if full else seg.reshape(n, a, b) @ self.A[k]
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
        """Write the weights ``.npz`` (float32 shared parts, float64 prior, ``beta``, and
        ``init_sigma`` when set), the model card ``.json`` (``card`` plus model id, config,
        ``beta`` and the weights' SHA-256) and the coding prior ``<stem>_prior.json``
        (recray's prior format, with the per-dimension information ``mi_bits``). Files are
        written under temporary names and renamed."""
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
        if self.init_sigma64 is not None:
            arrays["init_sigma"] = np.asarray(self.init_sigma64, np.float64)
        arrays["config"] = np.frombuffer(json.dumps(asdict(self.cfg)).encode(), np.uint8)
        raw = _npz_bytes(arrays)
        sha = hashlib.sha256(raw).hexdigest()
        card = card | {
            "model_id": path.stem,
            "weights_sha256": sha,
            "config": asdict(self.cfg),
            "beta": self.beta,
        }
        prior = Prior(arrays["prior_mu"], arrays["prior_sigma"], np.maximum(self.mi_bits, 0.0))
        write_replacing(path, raw, fsync=True)
        write_replacing(
            path.with_name(path.stem + "_prior.json"), prior.to_json() + "\n", fsync=True
        )
        write_replacing(
            path.with_suffix(".json"), json.dumps(card, indent=2, sort_keys=True) + "\n", fsync=True
        )
        self.model_checksum, self.model_id = sha, path.stem
        return card


def _npz_bytes(arrays: dict) -> bytes:
    """``np.savez`` layout with fixed entry times, so the same arrays give the same bytes
    (and SHA-256) whenever they are written."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
    return buf.getvalue()


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
    extra = ("beta", "config", "init_sigma")
    with np.load(io.BytesIO(raw)) as z:
        cfg = INRConfig.from_dict(json.loads(bytes(z["config"]).decode()))
        model = INR(cfg)
        state = {k: torch.from_numpy(np.asarray(z[k])) for k in z.files if k not in extra}
        state["fourier"] = model.fourier
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()})
        model.beta = float(z["beta"])
        # the prior is kept exactly (float64) for coding
        model.prior_mu64 = np.asarray(z["prior_mu"], np.float64)
        model.prior_sigma64 = np.asarray(z["prior_sigma"], np.float64)
        if "init_sigma" in z.files:
            model.init_sigma64 = np.asarray(z["init_sigma"], np.float64)
    model.model_checksum = sha
    model.model_id = path.stem
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _device_copy(model: INR, device: torch.device) -> INR:
    """``model`` itself on the CPU, else a float32 copy on ``device`` (cached on the model)."""
    if device.type == "cpu":
        return model
    cache = model.__dict__.setdefault("_on_device", {})
    if str(device) not in cache:
        m = copy.deepcopy(model).to(device)
        m.__dict__.pop("_on_device", None)
        cache[str(device)] = m
    return cache[str(device)]


# ---------------------------------------------------------------------- training
def _as_float(tiles: np.ndarray) -> torch.Tensor:
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[1:] != (SIZE, SIZE, 3):
        raise InputError(f"tiles must be uint8 (n, 32, 32, 3); got {tiles.dtype} {tiles.shape}")
    return torch.from_numpy(tiles.reshape(len(tiles), PIXELS, 3).astype(np.float32) / 255.0)


@dataclass(frozen=True)
class TrainSettings:
    """Prior learning of one rate point (see :class:`Trainer`).

    ``lr``, ``lr_sigma``: Adam on the posterior means and log-scales; ``lr_shared``: on the
    conv net; ``lr_A``: on the reparameterization maps ``A_l`` (a full ``A_l`` moves every
    weight of its layer at once, so it needs a much smaller step). ``beta``: the initial
    KL weight; ``beta_clip``: the largest factor of one round's beta update (``^0.5``).
    ``init_sigma``: fresh posteriors start at prior samples with this fraction of the
    prior's scale. ``beta_trend > 0`` damps the beta loop: the ratio is multiplied by
    ``(KL / KL of the previous round)^beta_trend``, so a KL already moving towards the
    target (the posteriors lag beta by several rounds) is not pushed further."""

    target_bpp: float
    batch: int = 64
    steps_per_visit: int = 10
    lr: float = 2e-2
    lr_sigma: float = 1e-2
    lr_shared: float = 1e-3
    lr_A: float = 1e-5
    beta: float = 0.01
    beta_clip: float = 1.25
    beta_trend: float = 0.0
    init_sigma: float = 0.3
    monitor_tiles: int = 64
    seed: int = 0


CHECKPOINT_FORMAT = 1
#: Settings a resumed run may change (the rest must match the checkpoint's).
RESUMABLE_CHANGES = ("lr", "lr_sigma", "lr_shared", "lr_A", "beta_clip", "beta_trend", "beta")


class Trainer:
    """Coordinate ascent of the shared parts, the prior and every training tile's posterior
    (the module docstring). ``tiles`` uint8 ``(M, 32, 32, 3)``; ``init`` (an :class:`INR`)
    and ``init_posteriors`` (``(mu, log_sigma)`` of the same tiles, e.g. another rate
    point's :meth:`posteriors`) warm-start it; ``cfg`` picks the architecture of a fresh
    model. Everything lives on ``device`` (:func:`pick_device`)."""

    def __init__(
        self,
        tiles: np.ndarray,
        settings: TrainSettings,
        *,
        cfg: INRConfig | None = None,
        init: INR | None = None,
        init_posteriors: tuple[torch.Tensor, torch.Tensor] | None = None,
        device=None,
    ):
        self.s = settings
        self.device = pick_device(device)
        dev = self.device
        self.x = _as_float(tiles).to(dev)
        self.tiles_sha256 = hashlib.sha256(np.ascontiguousarray(tiles).tobytes()).hexdigest()
        m = self.x.shape[0]
        if m < 1:
            raise InputError("training needs at least one tile")
        torch.manual_seed(settings.seed)
        self.model = INR(init.cfg if init is not None else (cfg or INRConfig()))
        self.beta = float(settings.beta)
        if init is not None:
            self.model.load_state_dict(init.state_dict())
            self.beta = float(init.beta)
        self.model.to(dev)
        for p in self.model.parameters():
            p.requires_grad_(True)
        d = self.model.cfg.dim
        if init_posteriors is not None:
            self.mu = init_posteriors[0].to(dev, torch.float32).clone()
            self.log_sigma = init_posteriors[1].to(dev, torch.float32).clone()
            if self.mu.shape != (m, d) or self.log_sigma.shape != (m, d):
                raise InputError(f"init_posteriors must be ({m}, {d}) each")
        else:
            pm, ps = self.model.prior_mu, self.model.prior_sigma
            g = torch.Generator().manual_seed(settings.seed)
            self.mu = (pm.cpu() + ps.cpu() * torch.randn(m, d, generator=g)).to(dev)
            self.log_sigma = (torch.log(ps) + math.log(settings.init_sigma)).expand(m, d).clone()
        z = lambda: torch.zeros(m, d, device=dev)  # noqa: E731
        self.adam = {"m_mu": z(), "v_mu": z(), "m_ls": z(), "v_ls": z()}
        self.adam_t = torch.zeros(m, dtype=torch.int64, device=dev)
        self.opt = torch.optim.Adam(
            [
                {"params": list(self.model.pe_net.parameters()), "lr": settings.lr_shared},
                {"params": list(self.model.A.parameters()), "lr": settings.lr_A},
            ]
        )
        self.gen = torch.Generator(device=dev).manual_seed(settings.seed + 1)
        self.round = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.monitor = np.linspace(0, m - 1, min(m, settings.monitor_tiles)).round().astype(int)

    # -------------------------------------------------------------- one round
    @staticmethod
    def _adam_rows(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
        """Adam on rows with their own step counts ``t`` (already incremented)."""
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        tt = t.to(p.dtype)[:, None]
        bc1 = 1 - b1**tt
        bc2 = 1 - b2**tt
        p.sub_(lr * (m / bc1) / ((v / bc2).sqrt() + eps))

    def run_round(self) -> dict:
        """Visit every tile once (batches in a permutation fixed by the seed and the round),
        then update the prior and beta; returns (and records) the round's history entry."""
        s, dev = self.s, self.device
        t0 = time.perf_counter()
        m = self.x.shape[0]
        perm = np.random.default_rng([s.seed, self.round]).permutation(m)
        psnr_sum, psnr_n = 0.0, 0
        for b0 in range(0, m, s.batch):
            rows = torch.as_tensor(np.sort(perm[b0 : b0 + s.batch]), device=dev)
            mu = self.mu[rows].clone().requires_grad_(True)
            ls = self.log_sigma[rows].clone().requires_grad_(True)
            mm, vm = self.adam["m_mu"][rows], self.adam["v_mu"][rows]
            ml, vl = self.adam["m_ls"][rows], self.adam["v_ls"][rows]
            t = self.adam_t[rows].clone()
            x = self.x[rows]
            for _ in range(s.steps_per_visit):
                sigma = torch.exp(ls)
                h = mu + sigma * torch.randn(mu.shape, generator=self.gen, device=dev)
                mse = ((self.model.render(h) - x) ** 2).mean(dim=(1, 2))
                kl = self.model.kl_bits(mu, sigma).sum(1)
                loss = (mse + self.beta * kl / PIXELS).sum()
                self.opt.zero_grad()
                mu.grad = ls.grad = None
                loss.backward()
                self.opt.step()
                t += 1
                with torch.no_grad():
                    self._adam_rows(mu, mu.grad, mm, vm, t, s.lr)
                    self._adam_rows(ls, ls.grad, ml, vl, t, s.lr_sigma)
            with torch.no_grad():
                self.mu[rows] = mu.detach()
                self.log_sigma[rows] = ls.detach()
                self.adam["m_mu"][rows], self.adam["v_mu"][rows] = mm, vm
                self.adam["m_ls"][rows], self.adam["v_ls"][rows] = ml, vl
                self.adam_t[rows] = t
                psnr_sum += float((-10 * torch.log10(mse.clamp_min(1e-10))).sum())
                psnr_n += len(rows)
        with torch.no_grad():  # closed-form prior update (coordinate ascent)
            sigma = torch.exp(self.log_sigma)
            pm = self.mu.mean(0)
            ps = torch.sqrt((sigma**2 + (self.mu - pm) ** 2).mean(0)).clamp_min(1e-6)
            self.model.prior_mu.copy_(pm)
            self.model.prior_sigma.copy_(ps)
            kl = self.model.kl_bits(self.mu, sigma).sum(1)
            rate = float(kl.mean()) / (s.target_bpp * PIXELS)
            if s.beta_trend > 0 and self.history:
                rate *= (float(kl.mean()) / PIXELS / self.history[-1]["kl_bpp"]) ** s.beta_trend
            self.beta *= float(np.clip(rate, 1 / s.beta_clip, s.beta_clip)) ** 0.5
            mon = torch.as_tensor(self.monitor, device=dev)
            mse_mean = ((self.model.render(self.mu[mon]) - self.x[mon]) ** 2).mean(dim=(1, 2))
        self.elapsed += time.perf_counter() - t0
        entry = {
            "round": self.round,
            "kl_bpp": float(kl.mean()) / PIXELS,
            "psnr_db": psnr_sum / psnr_n,
            "psnr_db_posterior_mean": float((-10 * torch.log10(mse_mean)).mean()),
            "beta": self.beta,
            "elapsed_s": round(self.elapsed, 1),
            "adam_steps_per_tile": int(self.adam_t.float().mean()),
        }
        self.history.append(entry)
        self.round += 1
        return entry

    def run(
        self,
        *,
        rounds: int,
        max_minutes: float | None = None,
        checkpoint: str | None = None,
        checkpoint_every_s: float = 300.0,
        log=print,
    ) -> bool:
        """Rounds until ``rounds`` are done (counting rounds of earlier runs) or the total
        training time (all runs) passes ``max_minutes``; the state is checkpointed to
        ``checkpoint`` every ``checkpoint_every_s`` and at the end. Returns whether the
        round count was reached (``False``: stopped by the budget)."""
        last = time.perf_counter()
        while self.round < rounds:
            if max_minutes is not None and self.elapsed >= 60 * max_minutes:
                break
            log(f"round {self.round}: {self.run_round()}")
            if checkpoint and time.perf_counter() - last >= checkpoint_every_s:
                self.save_checkpoint(checkpoint)
                last = time.perf_counter()
        if checkpoint:
            self.save_checkpoint(checkpoint)
        return self.round >= rounds

    # -------------------------------------------------------------- results
    def posteriors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_sigma)`` of every training tile (CPU copies)."""
        return self.mu.detach().cpu().clone(), self.log_sigma.detach().cpu().clone()

    def finish(self) -> INR:
        """A CPU copy of the model with its prior, ``beta``, per-dimension information
        ``mi_bits`` and the fit's starting scales ``init_sigma64``."""
        model = INR(self.model.cfg)
        model.load_state_dict({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        with torch.no_grad():
            sigma = torch.exp(self.log_sigma)
            info = self.model.kl_bits(self.mu, sigma).mean(0)  # I_d: mean KL per dim, bits
            model.init_sigma64 = self.log_sigma.double().mean(0).exp().cpu().numpy()
        model.beta = self.beta
        model.mi_bits = info.double().cpu().numpy()
        model.prior_mu64 = model.prior_mu.double().numpy()
        model.prior_sigma64 = model.prior_sigma.double().numpy()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    # -------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        cpu = lambda t: t.detach().cpu()  # noqa: E731
        return {
            "format": CHECKPOINT_FORMAT,
            "settings": asdict(self.s),
            "config": asdict(self.model.cfg),
            "tiles_sha256": self.tiles_sha256,
            "model": {k: cpu(v) for k, v in self.model.state_dict().items()},
            "opt": self.opt.state_dict(),
            "mu": cpu(self.mu),
            "log_sigma": cpu(self.log_sigma),
            "adam": {k: cpu(v) for k, v in self.adam.items()},
            "adam_t": cpu(self.adam_t),
            "gen": cpu(self.gen.get_state()),
            "beta": self.beta,
            "round": self.round,
            "elapsed": self.elapsed,
            "history": self.history,
        }

    def save_checkpoint(self, path: str) -> None:
        """Write the whole state to ``path`` (a temporary file, then renamed: a kill
        leaves the previous checkpoint)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with replacing(path) as tmp:
            torch.save(self.state(), tmp)

    def load_checkpoint(self, path: str) -> None:
        """Continue from the checkpoint ``path``: the same tiles, architecture and settings,
        except those in :data:`RESUMABLE_CHANGES` (step sizes and the beta clip may change
        between runs; ``beta`` and the round come from the checkpoint)."""
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise FormatError(
                f"checkpoint {path!r}: format {ck.get('format')!r}, expected {CHECKPOINT_FORMAT}"
            )
        if ck["config"] != asdict(self.model.cfg):
            raise InputError(f"checkpoint {path!r} is of another architecture: {ck['config']}")
        if ck["tiles_sha256"] != self.tiles_sha256:
            raise InputError(f"checkpoint {path!r} was trained on other tiles")
        # (a setting the checkpoint predates had its default then)
        was = asdict(TrainSettings(target_bpp=0.0)) | ck["settings"]
        was = {k: v for k, v in was.items() if k not in RESUMABLE_CHANGES}
        now = {k: v for k, v in asdict(self.s).items() if k not in RESUMABLE_CHANGES}
        if was != now:
            diff = sorted(k for k in now if now[k] != was.get(k))
            raise InputError(f"checkpoint {path!r} was written with other settings: {diff}")
        dev = self.device
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        for g, lr in zip(self.opt.param_groups, (self.s.lr_shared, self.s.lr_A), strict=True):
            g["lr"] = lr
        self.mu = ck["mu"].to(dev)
        self.log_sigma = ck["log_sigma"].to(dev)
        self.adam = {k: v.to(dev) for k, v in ck["adam"].items()}
        self.adam_t = ck["adam_t"].to(dev)
        self.gen.set_state(ck["gen"].cpu())  # a CPU ByteTensor for CPU and CUDA generators
        self.beta = float(ck["beta"])
        self.round = int(ck["round"])
        self.elapsed = float(ck["elapsed"])
        self.history = list(ck["history"])


def train(
    tiles: np.ndarray,
    target_bpp: float,
    *,
    rounds: int = 40,
    steps_per_round: int = 10,
    batch: int | None = None,
    lr: float = 3e-3,
    lr_sigma: float = 1e-2,
    lr_A: float | None = None,
    beta: float = 0.01,
    init_sigma: float = 0.3,
    max_minutes: float | None = None,
    init: INR | None = None,
    init_posteriors: tuple[torch.Tensor, torch.Tensor] | None = None,
    cfg: INRConfig | None = None,
    seed: int = 0,
    device=None,
    log=print,
) -> tuple[INR, dict]:
    """One :class:`Trainer` run in a call (no checkpoint): ``rounds`` rounds of
    ``steps_per_round`` Adam steps per visit, batches of ``batch`` tiles (default: all in
    one). Returns the model and ``{"history", "train_seconds", "posteriors"}``."""
    s = TrainSettings(
        target_bpp=target_bpp,
        batch=batch or len(tiles),
        steps_per_visit=steps_per_round,
        lr=lr,
        lr_sigma=lr_sigma,
        lr_shared=lr / 3,
        lr_A=lr / 3 if lr_A is None else lr_A,
        beta=beta,
        init_sigma=init_sigma,
        seed=seed,
    )
    tr = Trainer(tiles, s, cfg=cfg, init=init, init_posteriors=init_posteriors, device=device)
    tr.run(rounds=rounds, max_minutes=max_minutes, log=log)
    return tr.finish(), {
        "history": tr.history,
        "train_seconds": tr.elapsed,
        "posteriors": tr.posteriors(),
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


#: Columns of the fit's (tile, dimension) arrays are padded to a multiple of this.
_ROW_ALIGN = 64
#: Rows of the fit's full-reparameterization products are padded to a multiple of this.
_ROW_BLOCK = 16
#: Domain constant of the encoder's fit noise (kept apart from every other seed use).
FIT_NOISE_DOMAIN = 0x1F17


def tile_seed(seed: int, tile_id: int, stream: int) -> int:
    """The seed of one tile's fit noise: from the run ``seed``, the tile's id and the
    ``stream`` (0: the analysis fit; ``1 + k``: a fine-tuning fit with ``k`` of the tile's
    dimensions pinned), never from the rest of the batch."""
    ss = np.random.SeedSequence([FIT_NOISE_DOMAIN, int(seed), int(tile_id), int(stream)])
    return int(ss.generate_state(1, np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF)


def fit(
    model: INR,
    tiles: np.ndarray,
    *,
    steps: int,
    lr: float = 1e-2,
    lr_end: float | None = None,
    samples: int = 1,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    fixed: np.ndarray | None = None,
    values: np.ndarray | None = None,
    seed: int = 0,
    ids=None,
    anneal: BlockBeta | None = None,
    device=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors ``(mu, sigma)`` float64 ``(n, D)`` of ``tiles`` under the frozen model.

    ``init``: a previous ``(mu, sigma)`` to continue from (else the prior's means with the
    model's ``init_sigma64``, or a third of the prior's scale for models without it).
    ``fixed`` bool ``(n, D)`` and ``values`` float64 ``(n, D)``: dimensions pinned to
    ``values`` (already coded); their returned ``mu`` is the value and ``sigma`` is left
    as it was. Adam with a cosine schedule from ``lr`` to ``lr_end`` over ``steps``
    (``None``: constant ``lr``); ``samples`` Monte Carlo samples per step. ``ids``: the
    tiles' ids (default ``0..n-1``); each tile's noise is its own (:func:`tile_seed`).
    ``anneal``: per-block beta (:class:`BlockBeta`, updated in place: its ``beta`` holds
    the final per-block betas); without it one beta (the model's) for all. ``device``:
    :func:`pick_device`. The encoder alone runs this: its randomness needs no sharing."""
    dev = pick_device(device)
    net = _device_copy(model, dev)
    x = _as_float(tiles).to(dev)
    n, d = x.shape[0], model.cfg.dim
    ids = np.arange(n) if ids is None else np.asarray(ids, np.int64)
    if ids.shape != (n,):
        raise InputError(f"ids must be ({n},); got {ids.shape}")
    if samples < 1:
        raise InputError(f"samples must be >= 1; got {samples}")
    # Every (tile, dimension) array is padded to a multiple of 64 columns: the CPU kernels
    # then treat each row alike (no vector tail falls inside a row), so a tile's fit is
    # bit for bit the same alone or in any batch (tested); pads are pinned and inert.
    dp = -(-d // _ROW_ALIGN) * _ROW_ALIGN
    f32 = dict(dtype=torch.float32, device=dev)

    def rows(a, fill):
        a = torch.as_tensor(np.asarray(a), **f32)
        pad = torch.full((*a.shape[:-1], dp - d), float(fill), **f32)
        return torch.cat([a, pad], -1).contiguous()

    pm = rows(model.prior_mu64, 0.0)
    ps = rows(model.prior_sigma64, 1.0)
    smax = 0.999 * ps
    if init is None:
        mu0 = pm.expand(n, dp).clone()
        if model.init_sigma64 is None:
            rho0 = torch.full((n, dp), -math.log(0.999 * 3 - 1), **f32)  # sigma = prior / 3
        else:
            s0 = (rows(model.init_sigma64, 0.0) / smax).clamp(1e-4, 0.9)
            rho0 = (torch.log(s0) - torch.log1p(-s0)).expand(n, dp).clone()
    else:
        mu0 = rows(init[0], 0.0)
        s = (rows(init[1], 0.0) / smax).clamp(1e-6, 1 - 1e-6)
        rho0 = torch.log(s) - torch.log1p(-s)
    fixed = np.zeros((n, d), bool) if fixed is None else np.asarray(fixed, bool)
    streams = np.where(fixed.any(1), 1 + fixed.sum(1), 0)
    fx = torch.cat([torch.as_tensor(fixed), torch.ones(n, dp - d, dtype=torch.bool)], 1).to(dev)
    vals = rows(np.zeros((n, d)) if values is None else values, 0.0)
    gens = [
        torch.Generator(device=dev).manual_seed(tile_seed(seed, i, st))
        for i, st in zip(ids, streams, strict=True)
    ]
    mu = mu0.requires_grad_(True)
    rho = rho0.requires_grad_(True)
    opt = torch.optim.Adam([mu, rho], lr=lr)
    if anneal is not None:
        blk = torch.as_tensor(
            np.concatenate([np.asarray(anneal.block_of, np.int64), np.zeros(dp - d, np.int64)]),
            device=dev,
        )
        nb = len(anneal.target_bits)
        target = torch.as_tensor(np.asarray(anneal.target_bits, np.float64), device=dev)
        target = target.clamp_min(1e-3)
        if anneal.beta is None:
            bb = torch.full((n, nb), float(model.beta), dtype=torch.float64, device=dev)
        else:
            bb = torch.as_tensor(np.asarray(anneal.beta, np.float64), device=dev).clone()
        open_blk = torch.zeros(n, nb, device=dev).index_add_(1, blk, (~fx).float()) > 0
    beta = model.beta
    epad = torch.zeros(samples, n, dp - d, **f32)
    with one_thread() if dev.type == "cpu" else contextlib.nullcontext():
        for k in range(steps):
            if lr_end is not None and steps > 1:
                c = 0.5 * (1 + math.cos(math.pi * k / (steps - 1)))
                for g in opt.param_groups:
                    g["lr"] = lr_end + (lr - lr_end) * c
            sigma = smax * torch.sigmoid(rho)
            eps = torch.stack([torch.randn(samples, d, generator=g, **f32) for g in gens], 1)
            eps = torch.cat([eps, epad], 2)
            h = torch.where(fx, vals, mu + sigma * eps).reshape(samples * n, dp)
            y = net.render(h[:, :d], row_block=_ROW_BLOCK)
            err = ((y - x.repeat(samples, 1, 1)) ** 2).mean(dim=(1, 2))
            mse = err.reshape(samples, n).mean(0)
            v = (sigma / ps) ** 2
            kl_d = 0.5 * (v + ((mu - pm) / ps) ** 2 - 1 - torch.log(v)) / LN2
            kl_d = torch.where(fx, 0.0, kl_d)
            if anneal is None:
                kl = beta * kl_d.sum(1)
            else:
                kl = (bb[:, blk].float() * kl_d).sum(1)
                if k >= anneal.warmup and (k + 1) % anneal.every == 0:
                    with torch.no_grad():
                        kl_b = torch.zeros(n, nb, dtype=torch.float64, device=dev).index_add_(
                            1, blk, kl_d.detach().double()
                        )
                        f = (kl_b / target).clamp(1 / anneal.step, anneal.step)
                        bb = torch.where(open_blk, bb * f, bb)
            loss = (mse + kl / PIXELS).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    if anneal is not None:
        anneal.beta = bb.cpu().numpy()
        anneal.warmup = 0
    with torch.no_grad():
        sigma = smax * torch.sigmoid(rho)
        mu_out = torch.where(fx, vals, mu)
    return mu_out[:, :d].double().cpu().numpy(), sigma[:, :d].double().cpu().numpy()


def render_uint8(model: INR, z: np.ndarray) -> np.ndarray:
    """Decoded tiles uint8 ``(n, 32, 32, 3)`` from latents ``z`` float64 ``(n, D)``: float64,
    one tile at a time, one torch thread, on the CPU (see the module docstring)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != model.cfg.dim:
        raise InputError(f"latents must be (n, {model.cfg.dim}); got {z.shape}")
    m64 = getattr(model, "_f64", None)
    if m64 is None:
        m64 = copy.deepcopy(model).cpu().double()
        m64.__dict__.pop("_on_device", None)
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


# ---------------------------------------------------------------------- model ids
def rate_tag(rate: float) -> str:
    """File tag of a rate point: ``0.5 -> "0p5"``, ``2.0 -> "2"``."""
    return f"{float(rate):g}".replace(".", "p")


def model_id(rate: float, family: str | None = None) -> str:
    """The id of a rate point's model in ``family`` (``inr2_1p5``), or with no family the
    model ``--rate`` selects (:func:`default_model_id`)."""
    if family is None:
        return default_model_id(rate)
    return f"{family}_{rate_tag(rate)}"


def shipped_rates(family: str | None = None) -> list[float]:
    """Rate points (bpp) with shipped weights and prior in ``family``, ascending; with no
    family, those of any of :data:`DEFAULT_FAMILIES` (what ``--rate`` accepts)."""
    if family is None:
        return sorted({r for f in DEFAULT_FAMILIES for r in shipped_rates(f)})
    out = []
    for p in WEIGHTS_DIR.glob(f"{family}_*_prior.json"):
        tag = p.name[len(family) + 1 : -len("_prior.json")]
        if "_" in tag:  # another family whose name extends this one's
            continue
        try:
            out.append(float(tag.replace("p", ".")))
        except ValueError:
            continue
    return sorted(out)


def default_model_id(rate: float) -> str:
    """The model ``--rate`` selects: the rate point's model in the first of
    :data:`DEFAULT_FAMILIES` that ships it."""
    for family in DEFAULT_FAMILIES:
        if float(rate) in shipped_rates(family):
            return f"{family}_{rate_tag(rate)}"
    raise InputError(
        f"rate point {rate:g} has no shipped INR model; shipped rate points (bpp): "
        f"{', '.join(f'{r:g}' for r in shipped_rates()) or 'none'}"
    )


def weights_path(rate: float | None = None, *, model: str | None = None) -> Path:
    """The weights of model id ``model``, or of the default family's rate point ``rate``."""
    if model is None:
        if rate is None:
            raise InputError("weights_path needs a rate point or a model id")
        model = model_id(rate)
    if not model or "/" in model or os.sep in model or model.startswith("."):
        raise InputError(f"{model!r} is not an INR model id")
    return WEIGHTS_DIR / f"{model}.npz"
