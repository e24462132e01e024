"""Integer decoder tables for the MNIST VAE: ``z`` -> pixel tables in integer arithmetic.

A lossless codec's decoder must rebuild the encoder's probability tables bit for bit on any
machine. Floating-point networks do not: the same torch build takes other kernels on other
CPUs (AVX2 or not, MKL's modes, oneDNN's ISA), on ARM and on GPUs, and the last bits of the
tables move (the failure of issue 14; Ballé, Johnston & Minnen, "Integer networks for data
compression with latent-variable models", ICLR 2019). :class:`IntDecoder` is the VAE's
decoder network and its discretized-logistic-mixture CDF computed with integers only:

1. ``z`` (float64, as REC regenerates it) -> ``zq = rint(z * 2^12)``, clipped to
   ``|zq| <= 16 * 2^12``. Scaling by a power of two and ``rint`` are exact IEEE operations.
2. Three linear layers with 16-bit weights (``|W| < 2^15``, one power-of-two scale per
   output unit) and int64 biases, accumulated in int64 (NumPy integer ``matmul``: integer
   addition is associative, so no kernel, order or thread count can change a sum, and the
   bounds below keep every sum far from overflow). Hidden layers: ReLU, then a rounding
   right shift to Q12 activations, clipped to ``[0, 2^24]``.
3. The output layer gives, per pixel, the mixture logit and the two means in Q16 and the
   two log-scales in Q10 (rounding shifts; means clipped to ``[-64, 64]``, log-scales to
   ``[-7, 6]``, the float model's ``log_scale_min`` being -7).
4. Two lookup tables shipped in the model file (so they are data, covered by its
   SHA-256), built once in float64 by :func:`quantize_decoder`:
   ``inv_scale[j] = rint(exp(-j / 2^10) * 2^20)`` for the log-scales, and the logistic
   ``logistic[k] = rint(FREE * 2^22 / (1 + exp(-(k + 1/2) / 2^11)))`` for
   ``-20 * 2^11 <= k < 20 * 2^11`` (nondecreasing; the cell's midpoint, because lookups
   floor), in units of ``2^-22 / FREE`` with ``FREE = 2^24 - 256``.
5. Per pixel, component and level edge ``e_v`` (Q16, ``e_v = (2v + 1)/255 - 1`` rounded
   exactly with Python integers): ``k = floor((e_v - m) * inv_scale / 2^25)`` (Q11), looked
   up with ``k`` clipped to the table (``|t| <= 20``: beyond, the logistic is within
   ``2^-28`` of 0 or 1); mixture weights ``w1 = floor(logistic[k(logit)] * 2^16 /
   (FREE * 2^22))`` (Q16), ``w0 = 2^16 - w1``;
   ``C_v = floor((w0 * logistic[k0] + w1 * logistic[k1]) / 2^38)``, in ``[0, FREE]``.
6. The table of a pixel: ``w_v = C_v - C_{v-1}`` (``C_{-1} = 0``, ``C_255 = FREE``):
   nonnegative integers summing to exactly ``FREE``.

**Into the range coder.** :func:`coder_probabilities` hands these integers as float64 to
``constriction``'s ``Categorical(perfect=False)``. Its quantizer (``fast_quantized_cdf``)
normalizes by the sum (exactly ``FREE``), scales by ``(2^24 - 256) / FREE = 1.0`` and gives
level ``v`` the left cumulative ``C_{v-1} + v``: every intermediate is an integer below
2^53, so the coder's table is exactly ``(w_v + 1) / 2^24`` on every machine (no rounding
anywhere). :func:`coded_probabilities` is that table.

Guarantees and requirements: the tables are a function of the ``z`` row's bytes and the
model file alone; identical on every CPU, OS, NumPy version, thread count and batching
(only integer operations after step 1). What this module cannot guarantee is ``z``: the
decoder's ``z`` must be the encoder's to the bit (REC's generator; see
``docs/FORMAT.md``). Overflow bounds (checked on load where they are data):
``|zq| <= 2^16``, ``|W| < 2^15``, fan-in ``<= 256``, biases ``< 2^46``, activations
``<= 2^24``: every layer's sum ``< 2^48``; the CDF step ``< 2^54``; the mixture ``< 2^62``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recray.errors import FormatError, InputError
from recray.localfiles import file_sha256, verified_sha256
from recray.models.intdec_format import (  # noqa: F401  (the arithmetic's constants)
    ACT_FRAC,
    ACT_MAX,
    FREE,
    INT_FORMAT,
    INV_FRAC,
    LEVELS,
    LOGS_FRAC,
    LOGS_MAX,
    LOGS_MIN,
    MAX_SHIFT,
    MEAN_CLIP,
    MIX_FRAC,
    PARAM_FRAC,
    PIXELS,
    PRECISION,
    T_FRAC,
    T_MAX,
    TABLE_FRAC,
    WEIGHT_BITS,
    Z_CLIP,
    Z_FRAC,
)

DEFAULT_INT_DECODER = Path(__file__).resolve().parent / "weights" / "mnist_vae_intdec.npz"


def _edges_q16() -> np.ndarray:
    """Level edges ``(2v + 1)/255 - 1`` (v = 0..254) in Q16, rounded half up, with Python
    integers (exact): ``floor((2 * (2v - 254) * 2^16 + 255) / 510)``."""
    return np.array(
        [(2 * (2 * v - 254) * (1 << PARAM_FRAC) + 255) // 510 for v in range(LEVELS - 1)],
        dtype=np.int64,
    )


EDGES = _edges_q16()


def _rshift_round(x: np.ndarray, r) -> np.ndarray:
    """``round(x / 2^r)`` (half up) for int64 ``x`` and shifts ``r >= 1`` (an int or an
    int64 array broadcasting against ``x``)."""
    return (x + (np.int64(1) << (r - 1))) >> r


@dataclass(frozen=True)
class IntDecoder:
    """The integer decoder (see the module): weights, shifts and lookup tables, all
    integers, as loaded from the model file whose SHA-256 is ``checksum``."""

    weights: tuple[np.ndarray, ...]  # int64 (in, out) per layer
    biases: tuple[np.ndarray, ...]  # int64 (out,) per layer
    shifts: tuple[np.ndarray, ...]  # int64 (out,): W_int[:, j] = rint(W[:, j] * 2^shift[j])
    inv_scale: np.ndarray = field(repr=False)  # int64, index j - LOGS_MIN * 2^LOGS_FRAC
    logistic: np.ndarray = field(repr=False)  # int64, index k + T_MAX * 2^T_FRAC
    latent_dim: int = 32
    checksum: str | None = None

    # --------------------------------------------------------------------- network
    def parameters(self, z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel: mixture weight of the second component (Q16, int64 ``(n, 784)``),
        means (Q16, ``(n, 784, 2)``) and inverse scales (Q20, ``(n, 784, 2)``)."""
        z = self._check_z(z)
        a = np.clip(np.rint(z * float(1 << Z_FRAC)), -Z_CLIP << Z_FRAC, Z_CLIP << Z_FRAC)
        a = a.astype(np.int64)
        frac = Z_FRAC
        last = len(self.weights) - 1
        for i, (w, b, s) in enumerate(zip(self.weights, self.biases, self.shifts, strict=True)):
            acc = _exact_matmul(a, w) + b  # int64, exact
            if i < last:
                a = np.minimum(_rshift_round(np.maximum(acc, 0), frac + s - ACT_FRAC), ACT_MAX)
                frac = ACT_FRAC
            else:
                out, s = acc.reshape(-1, 5, PIXELS), s.reshape(5, PIXELS)
                logit = _rshift_round(out[:, 0], frac + s[0] - PARAM_FRAC)
                means = _rshift_round(out[:, 1:3], frac + s[1:3] - PARAM_FRAC)
                logs = _rshift_round(out[:, 3:5], frac + s[3:5] - LOGS_FRAC)
        clip = MEAN_CLIP << PARAM_FRAC
        means = np.clip(means, -clip, clip).transpose(0, 2, 1)
        j = np.clip(logs, LOGS_MIN << LOGS_FRAC, LOGS_MAX << LOGS_FRAC) - (LOGS_MIN << LOGS_FRAC)
        inv = self.inv_scale[j].transpose(0, 2, 1)
        k = (logit >> (PARAM_FRAC - T_FRAC)) + (T_MAX << T_FRAC)
        s = np.take(self.logistic, k, mode="clip")
        w1 = (s << MIX_FRAC) // (FREE << TABLE_FRAC)
        return w1, np.ascontiguousarray(means), np.ascontiguousarray(inv)

    def cdf(self, z) -> np.ndarray:
        """``C_v`` int64 ``(n, 784, 255)``: the mixture CDF at the level edges, in units of
        ``1 / FREE``, floored; nondecreasing in ``v``, in ``[0, FREE]``."""
        return _cdf(self.logistic, *self.parameters(z))

    def tables(self, z, chunk: int = 1) -> np.ndarray:
        """Integer pixel tables: int64 ``(n, 784, 256)``, each pixel's 256 entries
        nonnegative and summing to exactly :data:`FREE`. Row ``i`` depends on ``z[i]``
        alone (``chunk`` rows at a time only bounds memory and keeps them in cache)."""
        w1, means, inv = self.parameters(z)
        out = np.empty((w1.shape[0], PIXELS, LEVELS), dtype=np.int64)
        for a in range(0, w1.shape[0], chunk):
            sl = slice(a, a + chunk)
            c = _cdf(self.logistic, w1[sl], means[sl], inv[sl])
            o = out[sl]
            o[..., 0] = c[..., 0]
            np.subtract(c[..., 1:], c[..., :-1], out=o[..., 1:-1])
            o[..., -1] = FREE - c[..., -1]
        return out

    def coder_tables(self, z) -> np.ndarray:
        """What the range coder takes: :func:`coder_probabilities` of :meth:`tables`, float64
        ``(n, 784, 256)``, bit for bit, computed by one compiled pass (Numba, rows in
        parallel) without the int64 tables and their temporaries. Steps 5 and 6 are the
        same integer operations as :func:`_cdf`; only the loop order differs, which integer
        arithmetic cannot notice (tested against the NumPy path)."""
        return next(self.coder_table_chunks(z, max(1, len(z))), _no_tables())

    def coder_table_chunks(self, z, chunk: int):
        """:meth:`coder_tables` of ``z`` in consecutive chunks of ``chunk`` rows (a
        generator of float64 ``(<= chunk, 784, 256)``), the network run once for all rows.

        The rows' network parameters (31 KB a row) are computed together, so each layer is
        one BLAS call however small ``chunk`` is; only ``chunk`` tables (1.6 MB a row) are
        in memory at a time. One BLAS call per chunk instead woke OpenBLAS's worker threads
        every few milliseconds, and they spin between calls: on a 2-core machine that took
        a core from the table pass and the range coder (``recray codec mnist compress``,
        1,000 images in chunks of 16: the pixel stage 3.1-3.5 s against 2.5 s with one
        BLAS thread). Every table is the same as :meth:`coder_tables` of its rows gives."""
        from recray.models.intdec_kernel import coder_tables

        w1, means, inv = self.parameters(z)
        for a in range(0, w1.shape[0], chunk):
            sl = slice(a, a + chunk)
            out = np.empty((w1[sl].shape[0], PIXELS, LEVELS), dtype=np.float64)
            coder_tables(self.logistic, w1[sl], means[sl], inv[sl], EDGES, out)
            yield out

    def _check_z(self, z) -> np.ndarray:
        z = np.asarray(z)
        d = self.latent_dim
        if z.ndim != 2 or z.shape[1] != d:
            raise InputError(f"z must have shape (n, {d}); got {z.shape}")
        if z.dtype != np.float64:
            raise InputError(f"z must be float64 (the exact latent REC regenerates); got {z.dtype}")
        if not np.all(np.isfinite(z)):
            i = int(np.argmax(~np.isfinite(z).all(axis=1)))
            raise InputError(f"z row {i} is not finite")
        return z


def _no_tables() -> np.ndarray:
    return np.empty((0, PIXELS, LEVELS), dtype=np.float64)


def _exact_matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a @ w`` for int64 ``a`` and ``w`` whose products and sums stay below 2^53 in
    magnitude (the bounds of the module docstring: every sum ``< 2^48``), computed in
    float64 (BLAS) and returned as int64. Exact on every machine: each product and each
    partial sum is an integer below 2^53, which float64 holds exactly, so no summation
    order, blocking, thread count or fused multiply-add can round anything; NumPy's own
    integer ``matmul`` (no BLAS) gives the same numbers, about 20x slower."""
    return np.matmul(a.astype(np.float64), w.astype(np.float64)).astype(np.int64)


def _cdf(logistic, w1, means, inv) -> np.ndarray:
    """``C_v`` of :meth:`IntDecoder.cdf` from the parameters (step 5 of the module)."""
    r = PARAM_FRAC + INV_FRAC - T_FRAC
    # k = floor((e - m) * inv / 2^r) + offset = (e * inv + (offset << r) - m * inv) >> r
    b = (np.int64(T_MAX << T_FRAC) << r) - means * inv
    k = np.multiply(inv[..., None], EDGES)  # (n, 784, 2, 255); |.| < 2^54
    k += b[..., None]
    k >>= r
    s = np.take(logistic, k, mode="clip")  # the clip is |t| <= T_MAX
    s[:, :, 0] *= ((1 << MIX_FRAC) - w1)[..., None]
    s[:, :, 1] *= w1[..., None]
    c = s[:, :, 0]
    c += s[:, :, 1]
    c >>= TABLE_FRAC + MIX_FRAC
    return c


def coder_probabilities(tables: np.ndarray) -> np.ndarray:
    """The integer tables as float64 (exact: integers below 2^24), what
    ``constriction``'s ``Categorical(perfect=False)`` takes; it codes level ``v`` with
    probability exactly ``(w_v + 1) / 2^24`` (see the module)."""
    return tables.astype(np.float64)


def coded_probabilities(tables: np.ndarray) -> np.ndarray:
    """The probabilities the range coder actually uses: ``(w + 1) / 2^24`` (float64)."""
    return (tables + 1).astype(np.float64) * 2.0**-PRECISION


def ideal_bits(tables: np.ndarray, images: np.ndarray) -> np.ndarray:
    """``-log2`` of the coded probabilities of ``images`` uint8 ``(n, 784)``, per image."""
    n = images.shape[0]
    w = tables[np.arange(n)[:, None], np.arange(PIXELS), images]
    return PRECISION * PIXELS - np.log2(w + 1.0).sum(axis=1)


# --------------------------------------------------------------- building from floats
def _column_shifts(w: np.ndarray) -> np.ndarray:
    """Per output column, the largest ``s <= MAX_SHIFT`` with
    ``rint(max|w[:, j]| * 2^s) < 2^(WEIGHT_BITS - 1)``."""
    top = (1 << (WEIGHT_BITS - 1)) - 1
    m = np.maximum(np.max(np.abs(w), axis=0), 2.0**-MAX_SHIFT)
    s = np.minimum(np.floor(np.log2(top / m)), MAX_SHIFT).astype(np.int64)
    while True:
        over = np.rint(m * 2.0**s) > top
        if not over.any():
            return s
        s[over] -= 1


def quantize_decoder(state: dict[str, np.ndarray], latent_dim: int = 32) -> dict[str, np.ndarray]:
    """The integer model's arrays from a float VAE's ``state_dict`` (NumPy arrays; the
    decoder is ``decoder.{0,2,4}`` of :class:`recray.models.vae.MnistVAE`): what
    :func:`save_int_decoder` writes. Build-time only (float64 here); the arrays are then
    the model."""
    arrays: dict[str, np.ndarray] = {}
    frac = Z_FRAC
    keys = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("decoder.")})
    for i, name in enumerate(keys):
        w = np.asarray(state[f"{name}.weight"], np.float64).T  # (in, out)
        b = np.asarray(state[f"{name}.bias"], np.float64)
        s = _column_shifts(w)
        arrays[f"w{i}"] = np.rint(w * 2.0**s).astype(np.int16)
        arrays[f"b{i}"] = np.rint(b * 2.0 ** (frac + s)).astype(np.int64)
        arrays[f"shift{i}"] = s
        frac = ACT_FRAC
    j = np.arange(LOGS_MIN << LOGS_FRAC, (LOGS_MAX << LOGS_FRAC) + 1, dtype=np.float64)
    arrays["inv_scale"] = np.rint(np.exp(-j / (1 << LOGS_FRAC)) * (1 << INV_FRAC)).astype(np.int64)
    k = np.arange(-T_MAX << T_FRAC, T_MAX << T_FRAC, dtype=np.float64) + 0.5
    top = float(FREE << TABLE_FRAC)
    lg = np.rint(top / (1.0 + np.exp(-k / (1 << T_FRAC)))).astype(np.int64)
    arrays["logistic"] = np.maximum.accumulate(lg)
    arrays["int_format"] = np.array(INT_FORMAT, dtype=np.int64)
    arrays["latent_dim"] = np.array(latent_dim, dtype=np.int64)
    return arrays


def from_arrays(arrays: dict[str, np.ndarray], checksum: str | None = None) -> IntDecoder:
    """An :class:`IntDecoder` from the file's arrays (checks their format and ranges)."""
    fmt = int(arrays.get("int_format", -1))
    if fmt != INT_FORMAT:
        raise FormatError(
            f"integer decoder of format {fmt}; this recray computes format {INT_FORMAT}"
        )
    n = len([k for k in arrays if k.startswith("shift")])
    ws = tuple(arrays[f"w{i}"].astype(np.int64) for i in range(n))
    bs = tuple(arrays[f"b{i}"].astype(np.int64) for i in range(n))
    shifts = tuple(arrays[f"shift{i}"].astype(np.int64) for i in range(n))
    lg, inv = arrays["logistic"].astype(np.int64), arrays["inv_scale"].astype(np.int64)
    ok = (
        n >= 1
        and ws[-1].shape[1] == 5 * PIXELS
        and all(int(np.abs(w).max()) < (1 << (WEIGHT_BITS - 1)) for w in ws)
        and all(w.shape[0] <= 256 for w in ws)
        and all(s.shape == (w.shape[1],) for s, w in zip(shifts, ws, strict=True))
        and all(int(s.min()) > PARAM_FRAC - min(Z_FRAC, ACT_FRAC) for s in shifts)
        and all(int(s.max()) <= MAX_SHIFT for s in shifts)
        and lg.shape == (2 * (T_MAX << T_FRAC),)
        and inv.shape == (((LOGS_MAX - LOGS_MIN) << LOGS_FRAC) + 1,)
        and bool(np.all(np.diff(lg) >= 0))
        and 0 <= int(lg.min()) and int(lg.max()) <= FREE << TABLE_FRAC
        and 0 < int(inv.min()) and int(inv.max()) < 1 << 31
        and all(int(np.abs(b).max()) < 1 << 46 for b in bs)
    )  # fmt: skip
    if not ok:
        raise FormatError("integer decoder arrays are out of the ranges the format bounds")
    return IntDecoder(ws, bs, shifts, inv, lg, int(arrays["latent_dim"]), checksum)


# ------------------------------------------------------------------- save and load
def int_decoder_path(weights_path) -> Path:
    """Where the integer decoder of the float weights ``weights_path`` lives:
    ``<stem>_intdec.npz`` next to them (its card: ``<stem>_intdec.json``)."""
    p = Path(weights_path)
    return p.with_name(p.stem + "_intdec.npz")


def save_int_decoder(arrays: dict[str, np.ndarray], path, card: dict | None = None) -> str:
    """Write the arrays (``.npz``) and the JSON card next to them; returns the SHA-256."""
    path = Path(path)
    np.savez(path, **arrays)
    sha = file_sha256(path)
    doc = {**(card or {}), "int_format": INT_FORMAT, "weights_sha256": sha}
    path.with_suffix(".json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return sha


def load_int_decoder(path) -> IntDecoder:
    """The integer decoder at ``path`` after checking its SHA-256 against its card."""
    path = Path(path)
    cp = path.with_suffix(".json")
    try:
        card = json.loads(cp.read_text())
    except FileNotFoundError:
        raise FormatError(
            f"integer decoder card {str(cp)!r} does not exist; it must sit next to "
            f"{str(path)!r} (jobs/quantize_mnist_vae.py writes both)"
        ) from None
    except ValueError as exc:
        raise FormatError(f"integer decoder card {str(cp)!r} is not valid JSON: {exc}") from None
    sha = verified_sha256(
        path,
        card.get("weights_sha256"),
        f"integer decoder {str(path)!r}",
        "restore it (git checkout) or rebuild it with jobs/quantize_mnist_vae.py",
    )
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return from_arrays(arrays, checksum=sha)


def build_int_decoder(weights_path=None, out_path=None) -> str:
    """Quantize the float VAE at ``weights_path`` (default: the shipped one) into its
    integer decoder at ``out_path`` (default :func:`int_decoder_path`) with its card;
    returns the SHA-256. The arrays are a deterministic function of the float weights, but
    the ``.npz`` bytes carry a zip timestamp: the shipped file, not a rebuild, is what runs
    record and must match."""
    import platform

    from recray.models.vae import DEFAULT_WEIGHTS, load_mnist_vae

    model = load_mnist_vae(weights_path or DEFAULT_WEIGHTS)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    arrays = quantize_decoder(state, model.config.latent_dim)
    out = Path(out_path or int_decoder_path(weights_path or DEFAULT_WEIGHTS))
    card = {
        "model": "recray MNIST VAE, integer decoder tables (recray.models.intdec)",
        "source_weights_sha256": model.model_checksum,
        "quantization": {
            "method": "post-training, round to nearest; no fine-tune",
            "weights": f"int{WEIGHT_BITS}, one power-of-two scale per output unit",
            "latent": f"rint(z * 2^{Z_FRAC}), clipped to +-{Z_CLIP}",
            "activations": f"Q{ACT_FRAC}, clipped to [0, 2^{ACT_MAX.bit_length() - 1 - ACT_FRAC}]",
            "mixture_logits_means": f"Q{PARAM_FRAC}; means clipped to +-{MEAN_CLIP}",
            "log_scales": f"Q{LOGS_FRAC}, clipped to [{LOGS_MIN}, {LOGS_MAX}]",
            "inverse_scales": f"table of exp(-log_s) in Q{INV_FRAC}",
            "logistic": f"table at steps of 2^-{T_FRAC} on [-{T_MAX}, {T_MAX}], "
            f"in units of 2^-{TABLE_FRAC} / (2^{PRECISION} - {LEVELS})",
            "tables": f"nonnegative integers summing to 2^{PRECISION} - {LEVELS} per pixel; "
            f"the range coder codes level v with (w_v + 1) / 2^{PRECISION}",
        },
        "built_with": {"numpy": np.__version__, "cpu": platform.machine()},
    }
    return save_int_decoder(arrays, out, card)


def add_card_results(path, results: dict) -> None:
    """Record measured ``results`` in the card of the integer decoder at ``path`` (the
    card is not covered by the checksum; the weights file is left as it is)."""
    cp = Path(path).with_suffix(".json")
    card = json.loads(cp.read_text())
    card["results"] = results
    cp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
