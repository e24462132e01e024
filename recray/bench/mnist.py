"""``recray bench mnist``: the lossless MNIST table: bits per image and per pixel from the
bytes written, and encode time per image, for the REC settings of the codec against the
-ELBO (the ideal) and classical per-image codecs (PNG, WebP lossless, lzma).

Each REC setting is a full ``recray codec mnist compress`` run (latents through the REC
pipeline, Ray by default; pixels in the same messages). The first setting's run is decoded
again and compared byte for byte with the source images.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from recray.errors import RecrayError
from recray.pipeline.options import RayOptions


@dataclass(frozen=True)
class Setting:
    """One REC configuration of the codec; ``limit`` caps the images for slow settings
    (``None``: all the images of the run)."""

    method: str
    block_bits: float
    n_samples: int | str = 1 << 16  # "kl": per-block N_b = 2^ceil(I_b + kl_offset_bits)
    limit: int | None = None
    collapsed_block_size: int = 8  # 0: collapsed dims spread over the informative blocks
    budget_offset_bits: int = 0  # partition bits over each informative block's information
    laws: str = "fixed"  # "learned": index laws fitted on the training set
    kl_offset_bits: float = 0.0  # n_samples="kl" only

    @property
    def budget(self) -> str:
        """``2^16`` or, for the per-block rule, ``2^ceil(I_b)`` (``2^ceil(I_b+1)``...)."""
        if self.n_samples == "kl":
            off = f"{self.kl_offset_bits:+g}" if self.kl_offset_bits else ""
            return f"2^ceil(I_b{off}) per block"
        return f"2^{int(np.log2(self.n_samples))}"

    @property
    def name(self) -> str:
        n = f", N={self.budget}" if self.method.endswith("orc") else ""
        spread = ", collapsed spread" if self.collapsed_block_size == 0 else ""
        off = f", B{self.budget_offset_bits:+d}" if self.budget_offset_bits else ""
        laws = ", learned laws" if self.laws == "learned" else ""
        blocks = "1-D blocks" if self.method == "gprs" else f"{self.block_bits:g}-bit blocks"
        return f"{self.method.upper()} {blocks}{n}{spread}{off}{laws}"

    @property
    def tag(self) -> str:
        return (
            f"{self.method}-{self.block_bits:g}-{self.n_samples}-{self.collapsed_block_size}-"
            f"{self.budget_offset_bits}-{self.laws}"
            + (f"-kl{self.kl_offset_bits:+g}" if self.n_samples == "kl" else "")
        )


def _codec_defaults() -> Setting:
    """The setting :func:`recray.codecs.mnist.compress` codes with when given no options."""
    from recray.codecs import mnist

    params = inspect.signature(mnist.compress).parameters
    return Setting(**{f.name: params[f.name].default for f in fields(Setting)})


#: The best SP setting (issue 11), the codec's default: one SP-ORC block holding the whole
#: latent (collapsed dims included), 4 partition bits under its information, 2^10
#: candidates, learned index laws.
BEST_SP = _codec_defaults()
#: ``recray bench mnist``: the summary table's settings.
FULL = (
    Setting("orc", 16, collapsed_block_size=0),  # the RECOMBINER-style baseline
    Setting("orc", 16, "kl", collapsed_block_size=0),  # the same, per-block N from the KL
    BEST_SP,
    Setting("orc", 16),  # the same with the plan's separate collapsed blocks
    Setting("sp-pfr", 16),
    Setting("sp-pfr", 32),
    Setting("sp-orc", 32, 1 << 14),
    Setting("sp-pfr", 48, limit=1000),
    Setting("sp-orc", 48, 1 << 14, limit=1000),
)
#: The RECOMBINER-style fixed-budget baseline (16-bit blocks, N = 2^16, collapsed spread).
FAIR_ORC = Setting("orc", 16, collapsed_block_size=0)
#: The same blocks with a per-block budget from each block's expected KL, as RECOMBINER's
#: beta-tuned blocks effectively have: N_b = 2^ceil(I_b), index in ceil(I_b) raw bits.
FAIR_ORC_KL = Setting("orc", 16, "kl", collapsed_block_size=0)
#: The demo: fair ORC-16, the best SP setting, and ORC with per-block N from the KL.
DEMO = (FAIR_ORC, BEST_SP, FAIR_ORC_KL)
#: ``jobs/bench_mnist_fair.py``: the fair fixed-budget baselines of issue 11 and the best SP
#: setting, each measured on its own (full test set).
FAIR_SETTINGS = {"orc16": FAIR_ORC, "orc-kl": FAIR_ORC_KL, "sp": BEST_SP}
#: ``recray bench mnist --grid``: blocks (block bits) x samples per block, per method.
GRID = (
    FAIR_ORC,
    Setting("orc", 16, 1 << 12, collapsed_block_size=0),
    Setting("orc", 24, 1 << 16, collapsed_block_size=0),
    Setting("orc", 48, 1 << 16, collapsed_block_size=0, limit=100),
    Setting("pfr", 8, collapsed_block_size=1, limit=100),
    Setting("sp-orc", 24, 1 << 10, collapsed_block_size=0, laws="learned"),
    Setting("sp-orc", 48, 1 << 8, collapsed_block_size=0, budget_offset_bits=-4, laws="learned"),
    BEST_SP,
    Setting("sp-orc", 48, 1 << 12, collapsed_block_size=0, budget_offset_bits=-4, laws="learned"),
    Setting("sp-pfr", 16),
    Setting("sp-pfr", 16, laws="learned"),
    Setting("sp-pfr", 24, collapsed_block_size=0, budget_offset_bits=-2, laws="learned"),
    Setting("sp-pfr", 32, laws="learned"),
    Setting("gprs", 0.5, collapsed_block_size=1, limit=100),
)


def run_mnist_table(
    *,
    limit: int | None = None,
    settings=FULL,
    engine: str = "ray",
    ray_options: RayOptions | None = None,
    workdir: str | None = None,
    data_dir=None,
    progress=None,
    report=None,
    decode_all: bool = False,
    bias: bool = False,
    baselines: bool = True,
) -> dict:
    """The table's rows on the first ``limit`` test images (all 10,000 by default).
    ``decode_all``: decode (and verify) every row's run, timing it (else the first only);
    ``bias``: add :func:`latent_bias` (KS of the decoded latents' z-scores) to each row;
    ``baselines``: the classical codecs' rows (PNG, WebP, lzma)."""
    from recray.bench.mnist_baselines import mnist_baselines
    from recray.codecs import mnist
    from recray.models.vae import neg_elbo_bits

    work = workdir or tempfile.mkdtemp(prefix="recray-bench-mnist-")
    images = mnist._images("test", limit, data_dir)
    n = images.shape[0]
    model = mnist._model(None)
    t0 = time.perf_counter()
    elbo = neg_elbo_bits(model, images)
    rows = [
        {
            "row": "-ELBO (ideal, no bits written)",
            "images": n,
            "bits_per_image": float(elbo.total.mean()),
            "bits_per_pixel": float(elbo.total.mean()) / mnist.PIXELS,
            "latent_bits_per_image": float(elbo.kl.mean()),
            "encode_ms_per_image": 1e3 * (time.perf_counter() - t0) / n,
        }
    ]
    if report:
        report(rows[-1])
    with contextlib.ExitStack() as stack:
        if engine == "ray":  # one Ray for the whole table (each run still starts its pool)
            from recray.pipeline.ray_engine import ray_session

            opts = ray_options or RayOptions()
            stack.enter_context(ray_session(opts.address, opts.connect_timeout, opts.verbose))
        for k, s in enumerate(settings):
            m = min(n, s.limit) if s.limit else n
            out = os.path.join(work, f"run-{s.tag}-{m}")
            try:
                row = _setting_row(s, out, m, k, elbo, images, work, decode_all, bias,
                                   engine, ray_options, data_dir, progress)  # fmt: skip
            except RecrayError as exc:  # a setting that cannot run is a row that says so
                row = {"row": s.name, "setting": asdict(s), "images": m, "failed": str(exc)}
            rows.append(row)
            if report:
                report(row)
    t0 = time.perf_counter()
    for name, b in (mnist_baselines(images) if baselines else {}).items():
        rows.append(
            {
                "row": name,
                "images": n,
                "bits_per_image": b.bits_per_image,
                "bits_per_pixel": b.bits_per_pixel,
            }
        )
        if report:
            report(rows[-1])
    return {"images": n, "rows": rows, "baseline_seconds": time.perf_counter() - t0}


def _setting_row(s, out, m, k, elbo, images, work, decode_all, bias, engine, ray_options,
                 data_dir, progress) -> dict:  # fmt: skip
    """One setting's row: compress the first ``m`` images into ``out``, decode, measure."""
    from recray.codecs import mnist

    r = mnist.compress(
        out,
        limit=m,
        method=s.method,
        block_bits=s.block_bits,
        n_samples=s.n_samples,
        collapsed_block_size=s.collapsed_block_size,
        budget_offset_bits=s.budget_offset_bits,
        laws=s.laws,
        kl_offset_bits=s.kl_offset_bits,
        engine=engine,
        ray_options=ray_options,
        data_dir=data_dir,
        progress=progress,
    )
    row = {
        "row": s.name,
        "setting": asdict(s),
        "images": m,
        "bits_per_image": r["bits_per_image"],
        "bits_per_pixel": r["bits_per_pixel"],
        "latent_bits_per_image": r["latent_only_bits_per_image"],
        "kl_bits_per_image": r["kl_bits_per_image"],
        "pixel_ideal_bits_per_image": r["pixel_ideal_bits_per_image"],
        "encode_ms_per_image": r["encode_ms_per_image"],
        "rec_ms_per_image": r["rec_ms_per_image"],
        "fallback_blocks": r["fallback_blocks"],
        "laws": r["laws"],
        "laws_fit_seconds": r["laws_fit_seconds"],
        "neg_elbo_same_images": float(elbo.total[:m].mean()),
        "neg_elbo_kl_same_images": float(elbo.kl[:m].mean()),
    }
    row["over_neg_elbo_pct"] = 100 * (row["bits_per_image"] / row["neg_elbo_same_images"] - 1)
    if k == 0 or decode_all:
        t_dec = time.perf_counter()
        dec = mnist.decompress(out, os.path.join(work, f"decoded-{s.tag}"), verify=True)
        row["decode_ms_per_image"] = 1e3 * (time.perf_counter() - t_dec) / m
        row["verified_round_trip"] = bool(dec.get("verified"))
    if bias:
        row |= latent_bias(out, images[:m])
    return row


def latent_bias(run_dir: str, images) -> dict:
    """The bias of a run's latents: KS statistic and p-value of the z-scores
    ``(z - mu) / sigma`` of the decoded latents against N(0, 1), over every informative
    dimension of every image (exact methods: p-value uniform; biased ones: small)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy import stats

    from recray.codecs import mnist
    from recray.format.messages import decode_blocks
    from recray.format.run import Run
    from recray.latents.io import Prior
    from recray.models.vae import posteriors
    from recray.pipeline.codec import decode_indices
    from recray.pipeline.driver import spec_from_header

    run = Run.open(run_dir, verify_parts=False)
    prior = Prior.from_dict(json.loads(run.prior_json), where="run prior")
    spec = spec_from_header(run.header, prior)
    t = pa.concat_tables([pq.read_table(p, columns=["id", "message"]) for p in run.part_paths()])
    ids = t.column("id").to_numpy()
    msgs = t.column("message").to_pylist()
    bins, local, extra = decode_blocks(msgs, spec.layout, item_ids=ids)
    z = decode_indices(ids, bins, local, spec, extra if spec.layout.adaptive else None)
    mu, sigma = posteriors(mnist._model(None), images[ids])
    informative = np.asarray(prior.mi_bits) >= spec.plan.collapse_threshold
    zs = ((z - mu) / sigma)[:, informative].ravel()
    ks = stats.kstest(zs, "norm")
    return {
        "ks_latent_z": float(ks.statistic),
        "ks_latent_p": float(ks.pvalue),
        "latent_z_std": float(zs.std()),
    }


def plot_grid(r: dict, path: str) -> None:
    """Bits per image against encode time per image, one series per method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by: dict[str, list] = {}
    for x in r["rows"]:
        if "setting" in x and "failed" not in x:
            by.setdefault(x["setting"]["method"], []).append(x)
    for method, rows in by.items():
        rows = sorted(rows, key=lambda x: x["encode_ms_per_image"])
        ax.plot(
            [x["encode_ms_per_image"] for x in rows],
            [x["bits_per_image"] for x in rows],
            "o-",
            label=method.upper(),
        )
    elbo = [x for x in r["rows"] if x["row"].startswith("-ELBO")]
    if elbo:
        ax.axhline(elbo[0]["bits_per_image"], color="k", ls="--", lw=1, label="-ELBO")
    ax.set_xscale("log")
    ax.set_xlabel("encode ms / image (latent search + pixels)")
    ax.set_ylabel("bits / image (bytes written)")
    ax.set_title(f"MNIST lossless, first {r['images']} test images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_grid(r: dict) -> str:
    """The grid as a Markdown table."""
    head = (
        "| setting | images | bits/image | latent | pixels | over -ELBO | KS z (p) | "
        "encode ms | decode ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for x in r["rows"]:
        if "setting" not in x and not x["row"].startswith("-ELBO"):
            continue
        if "failed" in x:
            lines.append(f"| {x['row']} | {x['images']} | failed: {x['failed'][:120]} |")
            continue
        lat = x.get("latent_bits_per_image")
        pix = x.get("pixel_ideal_bits_per_image")
        over = x.get("over_neg_elbo_pct")
        ks = x.get("ks_latent_z")
        dec = x.get("decode_ms_per_image")
        ksp = x.get("ks_latent_p")
        lines.append(
            f"| {x['row']} | {x['images']} | {x['bits_per_image']:.1f} | "
            f"{'' if lat is None else f'{lat:.2f}'} | {'' if pix is None else f'{pix:.1f}'} | "
            f"{'' if over is None else f'{over:+.2f}%'} | "
            f"{'' if ks is None else f'{ks:.3f} ({ksp:.2g})'} | "
            f"{x.get('encode_ms_per_image', 0):.1f} | {'' if dec is None else f'{dec:.1f}'} |"
        )
    return "\n".join(lines)


def format_table(r: dict) -> str:
    w = max([48] + [len(x["row"]) for x in r["rows"]])  # the label column fits every row
    lines = [
        f"{'':<{w}} {'images':>6} {'bits/image':>10} {'bits/px':>8} {'latent bits':>11} "
        f"{'ms/image':>9}"
    ]
    for x in r["rows"]:
        if "failed" in x:
            lines.append(f"{x['row']:<{w}} {x['images']:>6} failed: {x['failed'][:80]}")
            continue
        lat = x.get("latent_bits_per_image")
        ms = x.get("encode_ms_per_image")
        lines.append(
            f"{x['row']:<{w}} {x['images']:>6} {x['bits_per_image']:>10.1f} "
            f"{x['bits_per_pixel']:>8.3f} {'' if lat is None else f'{lat:.1f}':>11} "
            f"{'' if ms is None else f'{ms:.1f}':>9}"
        )
    return "\n".join(lines)
