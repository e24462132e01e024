"""``recray bench mnist``: the lossless MNIST table: bits per image and per pixel from the
bytes written, and encode time per image, for the REC settings of the codec against the
-ELBO (the ideal) and classical per-image codecs (PNG, WebP lossless, lzma).

Each REC setting is a full ``recray codec mnist compress`` run (latents through the REC
pipeline, Ray by default; pixels in the same messages). The first setting's run is decoded
again and compared byte for byte with the source images.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from recray.pipeline.options import RayOptions


@dataclass(frozen=True)
class Setting:
    """One REC configuration of the codec; ``limit`` caps the images for slow settings
    (``None``: all the images of the run)."""

    method: str
    block_bits: float
    n_samples: int = 1 << 16
    limit: int | None = None
    collapsed_block_size: int = 8  # 0: collapsed dims spread over the informative blocks

    @property
    def name(self) -> str:
        n = f", N=2^{int(np.log2(self.n_samples))}" if self.method.endswith("orc") else ""
        spread = ", collapsed spread" if self.collapsed_block_size == 0 else ""
        return f"{self.method.upper()} {self.block_bits:g}-bit blocks{n}{spread}"


FULL = (
    Setting("orc", 16, collapsed_block_size=0),  # the RECOMBINER-style baseline
    Setting("orc", 16),  # the same with the plan's separate collapsed blocks
    Setting("sp-pfr", 16),
    Setting("sp-pfr", 32),
    Setting("sp-orc", 32, 1 << 14),
    Setting("sp-pfr", 48, limit=1000),
    Setting("sp-orc", 48, 1 << 14, limit=1000),
)
DEMO = (Setting("orc", 16, collapsed_block_size=0), Setting("sp-pfr", 32))


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
) -> dict:
    """The table's rows on the first ``limit`` test images (all 10,000 by default)."""
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
            out = os.path.join(
                work,
                f"run-{s.method}-{int(s.block_bits)}-{s.n_samples}-{s.collapsed_block_size}-{m}",
            )
            r = mnist.compress(
                out,
                limit=m,
                method=s.method,
                block_bits=s.block_bits,
                n_samples=s.n_samples,
                collapsed_block_size=s.collapsed_block_size,
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
                "neg_elbo_same_images": float(elbo.total[:m].mean()),
            }
            row["over_neg_elbo_pct"] = 100 * (
                row["bits_per_image"] / row["neg_elbo_same_images"] - 1
            )
            if k == 0:
                dec = mnist.decompress(out, os.path.join(work, "decoded"), verify=True)
                row["verified_round_trip"] = bool(dec.get("verified"))
            rows.append(row)
            if report:
                report(row)
    t0 = time.perf_counter()
    for name, b in mnist_baselines(images).items():
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


def format_table(r: dict) -> str:
    lines = [
        f"{'':<48} {'images':>6} {'bits/image':>10} {'bits/px':>8} {'latent bits':>11} "
        f"{'ms/image':>9}"
    ]
    for x in r["rows"]:
        lat = x.get("latent_bits_per_image")
        ms = x.get("encode_ms_per_image")
        lines.append(
            f"{x['row']:<48} {x['images']:>6} {x['bits_per_image']:>10.1f} "
            f"{x['bits_per_pixel']:>8.3f} {'' if lat is None else f'{lat:.1f}':>11} "
            f"{'' if ms is None else f'{ms:.1f}':>9}"
        )
    return "\n".join(lines)
