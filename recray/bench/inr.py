"""``recray bench inr``: rate-distortion of the INR codec against classical codecs.

On ``limit`` test tiles (evenly spaced over the test split, ids in the JSON), for every
shipped rate point (or ``rates``):

* the INR codec with each coding setting (``orc-16``, ``sp-orc``, ``sp-pfr``; same model,
  same fit settings) is run through :func:`recray.codecs.inr.compress` and
  :func:`recray.codecs.inr.decompress`; **bpp** is ``8 x`` the message bytes written per
  tile over 1,024 pixels (the run's plan and prior, shared by every tile, are reported
  apart as ``header_bytes``); **PSNR** is that of the decoded 8-bit PNG tiles against the
  source (mean over tiles of the per-tile PSNR, peak 255);
* the ablation at one rate point (the middle one): SP-ORC with partition bits by mutual
  information vs random vs collapsed dimensions only (same blocks);
* JPEG, WebP, AVIF (Pillow) and JPEG XL (``imagecodecs``) over a quality sweep, each tile
  a complete file (**headers included**): per rate point the row is the quality whose mean
  bpp is closest to the ORC-16 row's measured bpp (every sweep point is in ``sweeps``).

Optionally (``scale``) the Ray fit: the same tiles' analysis on 1 and 2 Ray actors.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from recray.codecs.inr import METHODS
from recray.errors import InputError

PIXELS = 1024
CLASSICAL = ("jpeg", "webp", "avif", "jxl")
QUALITIES = {
    "jpeg": [1, 5, 10, 20, 30, 50, 70, 90, 95],
    "webp": [0, 5, 10, 20, 30, 50, 70, 90, 100],
    "avif": [0, 5, 10, 20, 30, 50, 70, 90, 100],
    "jxl": [1, 5, 10, 20, 30, 50, 70, 90, 99],
}


def interleaved(n: int, chunk: int) -> np.ndarray:
    """A permutation of ``range(n)``: every ``ceil(n / chunk)``-th item from 0, then from
    1, and so on, so that any prefix of whole chunks is spread over all ``n`` items (with
    ``chunk`` dividing ``n``, chunk ``k`` is exactly the items ``k, k + stride, ...``)."""
    stride = max(1, -(-n // max(1, chunk)))
    return np.concatenate([np.arange(k, n, stride) for k in range(stride)]).astype(np.int64)


def test_tiles(limit: int | None):
    """``limit`` test tiles evenly spaced over the split (all when ``None``), and their
    indices in the split."""
    from recray.data.tiles import load_tiles

    t = load_tiles("test")
    n = len(t)
    idx = (
        np.arange(n)
        if not limit or limit >= n
        else np.unique(np.linspace(0, n - 1, limit).round().astype(int))
    )
    return np.ascontiguousarray(t.images[idx]), idx


# ------------------------------------------------------------------------ classical
def encode_classical(codec: str, tile: np.ndarray, quality: int) -> bytes:
    """One tile as a complete file of ``codec`` at ``quality``."""
    if codec == "jxl":
        import imagecodecs

        return bytes(imagecodecs.jpegxl_encode(tile, level=quality, effort=7))
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(tile)
    if codec == "jpeg":
        im.save(buf, format="JPEG", quality=quality, optimize=True)
    elif codec == "webp":
        im.save(buf, format="WEBP", quality=quality, method=6)
    elif codec == "avif":
        im.save(buf, format="AVIF", quality=quality, speed=0)
    else:
        raise ValueError(codec)
    return buf.getvalue()


def decode_classical(codec: str, data: bytes) -> np.ndarray:
    if codec == "jxl":
        import imagecodecs

        return np.asarray(imagecodecs.jpegxl_decode(data))[..., :3]
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def classical_sweep(tiles: np.ndarray, codec: str, qualities=None) -> list[dict]:
    from recray.models.inr import psnr_db

    out = []
    for q in qualities or QUALITIES[codec]:
        t0 = time.perf_counter()
        files = [encode_classical(codec, t, q) for t in tiles]
        t1 = time.perf_counter()
        dec = np.stack([decode_classical(codec, f) for f in files])
        t2 = time.perf_counter()
        out.append(
            {
                "method": codec,
                "quality": q,
                "tiles": len(tiles),
                "bpp": 8.0 * sum(map(len, files)) / (len(tiles) * PIXELS),
                "min_file_bytes": min(map(len, files)),
                "psnr_db": float(np.mean(psnr_db(tiles, dec))),
                "encode_s_per_tile": (t1 - t0) / len(tiles),
                "decode_s_per_tile": (t2 - t1) / len(tiles),
            }
        )
    return out


# ------------------------------------------------------------------------ INR
def inr_row(tiles, idx, rate, settings, workdir, engine="local", actors=1) -> dict:
    from recray.codecs import inr
    from recray.models.inr import psnr_db
    from recray.pipeline.options import RayOptions

    name = f"{settings.method}-{settings.strategy}-{rate:g}-{engine}{actors}"
    run = os.path.join(workdir, name)
    info = inr.compress(
        tiles,
        run,
        source={"split": "test", "tile_indices": idx.tolist()},
        rate=rate,
        settings=settings,
        engine=engine,
        ray_options=RayOptions(actors=actors),
    )
    dec = inr.decompress(run, os.path.join(workdir, name + "-png"))
    tile_psnr = psnr_db(tiles[dec["ids"]], dec["images"])
    row = {
        "method": settings.method,
        "allocation": settings.strategy,
        "rate_point_bpp": rate,
        "tiles": info["tiles"],
        "bpp": info["bpp"],
        "psnr_db": float(np.mean(tile_psnr)),
        "encoder_psnr_db": info["psnr_db"],
        "kl_bpp": info["kl_bpp"],
        "analysis_kl_bpp": info["analysis_kl_bpp"],
        "blocks": info["blocks"],
        "steps_per_tile": info["steps_per_tile"],
        "fallback_blocks_per_tile": info["fallback_blocks_per_tile"],
        "header_bytes": info["header_bytes"],
        "encode_s_per_tile": info["encode_s_per_tile"],
        "decode_s_per_tile": dec["decode_seconds"] / info["tiles"],
        "block_bits": settings.resolved().block_bits,
        "budget_offset_bits": settings.resolved().budget_offset_bits,
        "laws": settings.resolved().laws,
        "laws_fit_seconds": info.get("laws_fit_seconds", 0.0),
        "n_samples": settings.n_samples,
        "fit_steps": settings.fit_steps,
        "refine_steps": settings.refine_steps,
        "stages": settings.stages,
        "anneal": settings.anneal,
        "lr": settings.lr,
        "lr_end": settings.lr_end,
        "fit_samples": settings.fit_samples,
        "model_id": _model_id(run),
        # per tile (in tile order): decoded PSNR and message bits, for paired comparisons
        "tile_psnr_db": [round(float(v), 4) for v in tile_psnr],
        "tile_bits": _tile_bits(run),
    }
    return row


def _model_id(run_dir: str) -> str:
    from recray.codecs.inr import run_model_id
    from recray.format.run import Run

    return run_model_id(Run.open(run_dir, verify_parts=False).header["codec"])


def _tile_bits(run_dir: str) -> list[int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recray.format.run import Run

    r = Run.open(run_dir, verify_parts=False)
    t = pa.concat_tables([pq.read_table(p, columns=["id", "nbits"]) for p in r.part_paths()])
    order = np.argsort(t.column("id").to_numpy())
    return [int(v) for v in t.column("nbits").to_numpy()[order]]


_MEAN_KEYS = (
    "bpp",
    "psnr_db",
    "encoder_psnr_db",
    "kl_bpp",
    "analysis_kl_bpp",
    "steps_per_tile",
    "fallback_blocks_per_tile",
    "encode_s_per_tile",
    "decode_s_per_tile",
)


def pool_rows(parts: list[dict]) -> dict:
    """One row from the rows of the same setting measured on disjoint chunks of tiles:
    tile-weighted means, per-tile lists concatenated, ``chunks`` counted."""
    n = np.array([p["tiles"] for p in parts], np.float64)
    row = dict(parts[0])
    for k in _MEAN_KEYS:
        row[k] = float(np.dot(n, [p[k] for p in parts]) / n.sum())
    row["tiles"] = int(n.sum())
    row["chunks"] = sum(p.get("chunks", 1) for p in parts)
    for k in ("tile_psnr_db", "tile_bits"):
        row[k] = [v for p in parts for v in p[k]]
    return row


def run(
    *,
    limit: int | None = 100,
    rates=None,
    methods=("orc-16", "sp-orc", "sp-pfr"),
    ablation: bool = True,
    workdir: str | None = None,
    fit: dict | None = None,
    refine_steps: int | None = None,
    stages: int | None = None,
    anneal: float | None = None,
    sp_block_bits: float | None = None,
    sp_n_samples: int | None = None,
    sp_budget_offset_bits: int | None = None,
    scale: bool = False,
    classical: bool = True,
    ablation_strategies=("mi", "random", "collapsed-only"),
    report=None,
    chunk: int | None = None,
    max_minutes: float | None = None,
    max_tiles: int | None = None,
    checkpoint=None,
    resume: dict | None = None,
) -> dict:
    """One R-D measurement of the INR codec on ``limit`` test tiles (rows per rate point
    and method, then the ablation, the classical codecs and the Ray fit timing; see
    :data:`NOTES`). ``chunk``: the INR settings run chunk by chunk of tiles, ``checkpoint``
    called with the result so far after each; ``max_minutes`` and ``max_tiles`` stop the INR
    settings after the chunk that passes that time or tile count (the first chunks, spread
    over all ``limit`` tiles; a later ``resume`` measures the rest). ``resume``: an earlier
    result or checkpoint of
    the same command (same tiles, chunk and settings): its chunks are not measured again,
    and its rows pool with the new chunks' (:func:`pool_rows`)."""
    from recray.codecs.inr import Settings
    from recray.models.inr import shipped_rates

    for name, v in (("limit", limit), ("chunk", chunk), ("max-tiles", max_tiles)):
        if v is not None and not v >= 1:
            raise InputError(f"--{name} must be >= 1; got {v}")
    if max_minutes is not None and not max_minutes > 0:
        raise InputError(f"--max-minutes must be > 0; got {max_minutes}")
    rates = sorted(rates or shipped_rates())
    tiles, idx = test_tiles(limit)
    base = Settings()
    kw = {
        # the analysis fit: fit_steps, lr, lr_end, fit_samples (default: Settings')
        **(fit or {}),
        "refine_steps": refine_steps if refine_steps is not None else base.refine_steps,
        "stages": stages if stages is not None else base.stages,
        "anneal": anneal if anneal is not None else base.anneal,
    }
    if sp_n_samples is not None and not sp_n_samples >= 1:
        raise InputError(f"--sp-n-samples must be >= 1; got {sp_n_samples}")
    sp_kw = {  # the SP settings' own (default: each preset's, and Settings')
        k: v
        for k, v in (
            ("block_bits", sp_block_bits),
            ("n_samples", sp_n_samples),
            ("budget_offset_bits", sp_budget_offset_bits),
        )
        if v is not None
    }
    rows, ablation_rows, scale_rows = [], [], []
    work = workdir or tempfile.mkdtemp(prefix="recray-bench-inr-")
    os.makedirs(work, exist_ok=True)
    t_start = time.perf_counter()
    # INR settings chunk by chunk of tiles (every setting on the same tiles), so that a
    # time cap (max_minutes, checked after each chunk) still leaves a paired comparison;
    # the chunks interleave (chunk k holds every n-th tile from k), so the tiles measured
    # before a time cap are spread over the whole split, not its first photo
    step = chunk or len(tiles)
    order = interleaved(len(tiles), step)
    tiles, idx = tiles[order], idx[order]
    parts: dict = {}
    done = 0
    if resume is not None:
        done = _resumed(resume, parts, idx, step, rates, methods, kw, sp_kw)
        rows = [pool_rows(p) for p in parts.values()]
    for c0 in range(done, len(tiles), step):
        sl = slice(c0, c0 + step)
        cw = os.path.join(work, f"tiles-{c0:05d}") if chunk else work
        for rate in rates:
            for m in methods:
                row = inr_row(tiles[sl], idx[sl], rate, _settings(m, kw, sp_kw), cw)
                parts.setdefault((rate, m), []).append(row)
                if report:
                    report(row)
        done = min(c0 + step, len(tiles))
        rows = [pool_rows(p) for p in parts.values()]
        if checkpoint:
            checkpoint(
                {
                    "rows": rows,
                    "tiles": done,
                    "tile_indices": idx[:done].tolist(),
                    "rates": rates,
                    "notes": NOTES,
                }
            )
        if max_minutes is not None and time.perf_counter() - t_start > 60 * max_minutes:
            break
        if max_tiles is not None and done >= max_tiles:
            break
    if parts:  # the tiles every setting was measured on
        tiles, idx = tiles[:done], idx[:done]
    if ablation and rates:
        mid = rates[len(rates) // 2]
        for strategy in ablation_strategies:
            same = [r for r in rows if r["rate_point_bpp"] == mid and r["method"] == "sp-orc"]
            if strategy == "mi" and same:  # the sp-orc row is this setting: not run twice
                ablation_rows.append(same[0])
                continue
            try:
                row = inr_row(
                    tiles,
                    idx,
                    mid,
                    Settings(method="sp-orc", strategy=strategy, **kw, **sp_kw),
                    work,
                )
            except Exception as exc:  # an allocation the plan cannot realize: say so
                row = {
                    "method": "sp-orc",
                    "allocation": strategy,
                    "rate_point_bpp": mid,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            ablation_rows.append(row)
            if report:
                report(row)
    sweeps = {c: classical_sweep(tiles, c) for c in CLASSICAL} if classical else {}
    for rate in rates if classical else []:
        ref = [r for r in rows if r["rate_point_bpp"] == rate and r["method"] == "orc-16"]
        target = ref[0]["bpp"] if ref else rate
        for c in CLASSICAL:
            best = min(sweeps[c], key=lambda r: abs(r["bpp"] - target))
            rows.append(best | {"rate_point_bpp": rate, "matched_to_bpp": target})
    if scale and rates:
        steps = kw.get("fit_steps", base.fit_steps)
        scale_rows = fit_scaling(tiles[: min(8, len(tiles))], rates[0], steps)
    return {
        "rows": rows,
        "ablation": ablation_rows,
        "sweeps": sweeps,
        "scale": scale_rows,
        "tiles": int(len(tiles)),
        "tile_indices": idx.tolist(),
        "rates": rates,
        "equal_psnr": bits_at_equal_psnr(rows),
        "seconds": time.perf_counter() - t_start,
        "notes": NOTES,
    }


def _settings(method: str, kw: dict, sp_kw: dict):
    """The INR settings a run measures ``method`` with: the fit settings ``kw``, and for
    the SP methods ``sp_kw`` (e.g. their block size)."""
    from recray.codecs.inr import Settings

    return Settings(method=method, **kw, **(sp_kw if method != "orc-16" else {}))


#: What a resumed row must share with the settings of the run that continues it.
_RESUME_KEYS = ("fit_steps", "lr", "lr_end", "fit_samples", "refine_steps", "stages", "anneal")
#: The plan settings a row records.
_PLAN_KEYS = ("block_bits", "budget_offset_bits", "laws", "n_samples")


def _resumed(resume, parts, idx, step, rates, methods, kw, sp_kw) -> int:
    """Seed ``parts`` with the INR rows of an earlier run's result or checkpoint
    (``resume``) and return how many tiles it measured; refuse (``InputError``, naming the
    field) unless it measured the first chunks of this run's tile order with this run's
    settings, so that a resumed row pools only like with like."""
    from recray.models.inr import default_model_id

    if not isinstance(resume, dict):
        raise InputError("resume: not a result of recray bench inr (a JSON object)")
    done = int(resume.get("tiles", 0))
    if done % step or list(resume.get("tile_indices", [])) != idx[:done].tolist():
        raise InputError(
            "resume: its tile_indices are not the first whole chunks of this run's tiles "
            f"(--limit and --chunk must be those of the run it continues; chunk {step})"
        )
    rows = {(r["rate_point_bpp"], r["method"]): r for r in resume.get("rows", []) if "method" in r}
    for rate in rates:
        for m in methods:
            row = rows.get((rate, m))
            if row is None:
                raise InputError(f"resume: no row for rate {rate:g}, method {m}")
            want = _settings(m, kw, sp_kw).resolved()
            checks = [(k, getattr(want, k)) for k in _RESUME_KEYS + _PLAN_KEYS]
            for k, need in checks + [("model_id", default_model_id(rate)), ("tiles", done)]:
                have = row.get(k)
                if have != need:
                    raise InputError(
                        f"resume: rate {rate:g}, method {m}: field {k} is {have!r}, "
                        f"this run's is {need!r}"
                    )
            parts[(rate, m)] = [row]
    return done


NOTES = [
    "bpp = 8 x message bytes written / 1024 pixels per tile; the run's plan.json and "
    "prior.json (shared by all tiles of a run) are in header_bytes, not in bpp",
    "classical codecs: one complete file per tile (headers included), quality chosen per "
    "rate point to match the orc-16 row's bpp; a codec whose smallest file is larger than "
    "that cannot match it (see min_file_bytes and sweeps)",
    "psnr_db: mean over tiles of per-tile PSNR of the decoded 8-bit tiles (peak 255)",
]


def _measurement(row: dict):
    """What makes two rows one measurement: the setting and, for an INR row, its per-tile
    bits and PSNR (deterministic, unlike its timings); a row without per-tile lists (a
    classical codec's) is one measurement with an equal row."""
    if "tile_bits" not in row:
        return json.dumps(row, sort_keys=True)
    setting = tuple(row.get(k) for k in ("rate_point_bpp", "method", "model_id", "allocation"))
    setting += tuple(row.get(k) for k in _RESUME_KEYS + _PLAN_KEYS)
    return setting + (tuple(row["tile_bits"]), tuple(row["tile_psnr_db"]))


def merge(results: list[dict]) -> dict:
    """One result from several runs of :func:`run` on the same tiles (e.g. one process per
    rate point, or runs of other fit settings), finished or taken from their checkpoints
    (``JSON.partial``): rows (one of each measurement, :func:`_measurement`), ablation and
    scale rows concatenated, sweeps of the first that has them."""
    if not results:
        raise ValueError("nothing to merge")
    idx = results[0]["tile_indices"]
    for r in results[1:]:
        if r["tile_indices"] != idx:
            raise ValueError("results measured on different tiles cannot be merged")
    key = lambda row: (row["rate_point_bpp"], row["method"], row.get("quality", -1))  # noqa: E731
    seen, rows = set(), []
    for row in (row for r in results for row in r["rows"]):
        if (same := _measurement(row)) not in seen:  # e.g. a row a resumed run carried
            seen.add(same)
            rows.append(row)
    rows.sort(key=key)
    ablation = [row for r in results for row in r.get("ablation", [])]
    for rate in {row["rate_point_bpp"] for row in ablation}:
        have = {row["allocation"] for row in ablation if row["rate_point_bpp"] == rate}
        same = [row for row in rows if row["rate_point_bpp"] == rate and row["method"] == "sp-orc"]
        if "mi" not in have and same:  # the sp-orc row is the ablation's MI setting
            ablation.insert(0, same[0])
    return {
        "rows": rows,
        "ablation": ablation,
        "sweeps": next((r["sweeps"] for r in results if r.get("sweeps")), {}),
        "scale": [row for r in results for row in r.get("scale", [])],
        "tiles": results[0]["tiles"],
        "tile_indices": idx,
        "rates": sorted(
            {row["rate_point_bpp"] for row in rows}
            | {x for r in results for x in r.get("rates", [])}
        ),
        # runs taken from a checkpoint (JSON.partial) carry no total time
        "seconds": sum(r.get("seconds") or 0.0 for r in results),
        "equal_psnr": bits_at_equal_psnr(rows),
        "notes": results[0].get("notes", NOTES),
    }


@dataclass(frozen=True)
class _Fitting:
    """Builds a tile fitter (once per Ray actor): each task returns ``(tiles, start, end)``,
    wall-clock times of its fit."""

    weights: str
    prior_file: str
    fit_steps: int

    def __call__(self):
        import torch

        from recray.codecs.inr import INRCodec, Settings, load_model, make_plan
        from recray.latents.io import read_prior

        torch.set_num_threads(1)
        s = Settings(fit_steps=self.fit_steps)
        prior = read_prior(self.prior_file)
        codec = INRCodec(load_model(self.weights), s, plan=make_plan(prior, s)[0])

        def fit(x):
            t0 = time.time()
            n = codec.analysis(x).mu.shape[0]
            return n, t0, time.time()

        return fit


def fit_scaling(tiles, rate, fit_steps) -> list[dict]:
    """The analysis fit of ``tiles`` (4 shards) on 1 and 2 actors of recray's actor pool
    (:func:`recray.pipeline.parts.map_parts`); the time is from the first shard's start to
    the last one's end (actor start-up and model loading left out)."""
    from recray.codecs.inr import model_files
    from recray.pipeline import parts
    from recray.pipeline.options import RayOptions

    w, prior_file = model_files(rate)
    out = []
    for n_act in (1, 2):
        opts = RayOptions(actors=n_act)
        with parts.session("ray", opts):
            res = list(
                parts.map_parts(
                    _Fitting(w, prior_file, fit_steps),
                    np.array_split(tiles, 4),
                    engine="ray",
                    opts=opts,
                )
            )
        done = sum(r[0] for r in res)
        secs = max(r[2] for r in res) - min(r[1] for r in res)
        out.append(
            {
                "actors": n_act,
                "tiles": int(done),
                "fit_steps": fit_steps,
                "seconds": secs,
                "s_per_tile": secs / done,
            }
        )
    return out


#: A row's analysis fit and fine-tuning: the resume keys but the annealing factor, which
#: moves a point along one fit's R-D curve.
_FIT_KEYS = tuple(k for k in _RESUME_KEYS if k != "anneal")


def _fit_of(row: dict) -> tuple:
    """A row's analysis fit and fine-tuning settings (``None`` where a row lacks one)."""
    return tuple(row.get(k) for k in _FIT_KEYS)


#: How :func:`fit_name` writes a setting that differs from the default fit.
_FIT_WORDS = {
    "fit_steps": "{:g} steps",
    "lr": "lr {:g}",
    "lr_end": "lr_end {}",
    "fit_samples": "{:g} samples",
    "refine_steps": "{:g} refine steps",
    "stages": "{:g} stages",
}


def fit_name(row: dict) -> str:
    """A row's analysis fit and fine-tuning in words, for tables and plot legends: ``""``
    for the default fit; ``"long fit"`` where it is one of the fit presets (with the
    default fine-tuning); else the settings that differ (``"1500 steps, lr 0.01"``). A key
    a row lacks counts as the default's (figure files written before it was recorded).
    Rows of one name are rows of one fit, as :func:`bits_at_equal_psnr` pairs them."""
    from recray.codecs.inr import FIT_PRESETS, Settings

    d = Settings()
    fit = {k: row.get(k, getattr(d, k)) for k in _FIT_KEYS}
    diff = [k for k in _FIT_KEYS if fit[k] != getattr(d, k)]
    if not diff:
        return ""
    for name, preset in FIT_PRESETS.items():
        if all(fit[k] == preset.get(k, getattr(d, k)) for k in _FIT_KEYS):
            return f"{name} fit"
    return ", ".join(_FIT_WORDS[k].format(fit[k]) for k in diff)


#: How :func:`plan_name` writes an SP plan setting that differs from its method's preset.
_PLAN_WORDS = {
    "block_bits": "{:g}-bit blocks",
    "n_samples": "N {:,}",
    "budget_offset_bits": "B offset {:+d}",
    "laws": "{} laws",
}


def plan_name(row: dict) -> str:
    """A row's coding plan in words where it differs from its method's preset
    (:data:`recray.codecs.inr.PRESETS`, and ``2^16`` candidates): ``""`` for the preset
    (and for rows of other codecs), else e.g. ``"16-bit blocks, N 16,384"``. Rows of one
    method and plan name are points of one R-D curve (:func:`bits_at_equal_psnr`)."""
    from recray.codecs.inr import PRESETS, Settings

    preset = PRESETS.get(row.get("method"))
    if preset is None:
        return ""
    want = {"n_samples": Settings().n_samples, **preset}
    diff = [k for k in _PLAN_WORDS if row.get(k) is not None and row[k] != want[k]]
    return ", ".join(_PLAN_WORDS[k].format(row[k]) for k in diff)


def bits_at_equal_psnr(rows: list[dict]) -> list[dict]:
    """SP-ORC's bits at ORC-16's PSNR, where SP-ORC has an R-D curve on the same model.

    ORC-16 spends a fixed 16 bits per plan block, so on one model it has one rate; SP-ORC's
    bits follow the fit's KL, so each fit setting (e.g. an ``--anneal`` factor) is a point of
    its own curve. Per rate point, model, analysis fit and SP-ORC plan (:func:`plan_name`:
    each plan is a curve of its own), for every ORC-16 row, over SP-ORC's points that no
    other of its points beats on both bits and PSNR: where two of them bracket ORC-16's
    mean PSNR, ``log2 bpp`` is interpolated linearly in PSNR between them (the closest
    pair); where all lie above it, the cheapest one bounds the bits (``bound``: SP-ORC needs
    at most those). ``change``: that bpp over ORC-16's, minus one (negative: SP-ORC needs
    fewer bits). Rows must come from the same tiles (one result of :func:`run`, or
    :func:`merge`). Returns ``[]`` where nothing brackets or bounds."""
    out = []
    # one comparison per rate point, model and analysis fit (a longer fit is another model
    # of the tile, so its SP-ORC points pair only with its own ORC-16 row)
    key = lambda row: (row["rate_point_bpp"], row.get("model_id"), _fit_of(row))  # noqa: E731
    inr_rows = [row for row in rows if row.get("method") in ("orc-16", "sp-orc")]
    for rate, model, fit in sorted({key(row) for row in inr_rows}, key=str):
        same = [row for row in inr_rows if key(row) == (rate, model, fit)]
        for plan in sorted({plan_name(r) for r in same if r["method"] == "sp-orc"}):
            sp = [r for r in same if r["method"] == "sp-orc" and plan_name(r) == plan]
            out += _equal_psnr_of(rate, model, plan, same, sp)
    return out


def _equal_psnr_of(rate, model, plan, same, sp) -> list[dict]:
    """:func:`bits_at_equal_psnr` for the SP-ORC points ``sp`` of one plan against the
    ORC-16 rows in ``same``."""
    out = []
    sp = [
        x
        for x in sp
        if not any(
            y["bpp"] <= x["bpp"]
            and y["psnr_db"] >= x["psnr_db"]
            and (y["bpp"], y["psnr_db"]) != (x["bpp"], x["psnr_db"])
            for y in sp
        )
    ]
    for ref in (row for row in same if row["method"] == "orc-16"):
        p = ref["psnr_db"]
        pairs = [
            (a, b)
            for a in sp
            for b in sp
            if a["psnr_db"] <= p <= b["psnr_db"] and a["psnr_db"] < b["psnr_db"]
        ]
        above = [x for x in sp if x["psnr_db"] >= p]
        if pairs:
            a, b = min(pairs, key=lambda ab: ab[1]["psnr_db"] - ab[0]["psnr_db"])
            t = (p - a["psnr_db"]) / (b["psnr_db"] - a["psnr_db"])
            bpp = 2.0 ** ((1.0 - t) * np.log2(a["bpp"]) + t * np.log2(b["bpp"]))
            used = (a, b)
        elif above:  # every point is above ORC-16's PSNR
            used = (min(above, key=lambda x: x["bpp"]),)
            bpp = used[0]["bpp"]
        else:
            continue
        out.append(
            {
                "rate_point_bpp": rate,
                "model_id": model,
                "fit_steps": ref.get("fit_steps"),
                "fit": fit_name(ref),
                "plan": plan,
                "reference": {k: ref.get(k) for k in ("method", "anneal", "bpp", "psnr_db")},
                "between": [{k: x.get(k) for k in ("anneal", "bpp", "psnr_db")} for x in used],
                "bound": len(used) == 1,
                "sp_orc_bpp": float(bpp),
                "change": float(bpp / ref["bpp"] - 1.0),
            }
        )
    return out


def format_table(r: dict) -> str:
    from recray.codecs.inr import Settings

    default_anneal = Settings().anneal
    lines = [f"INR codec on {r['tiles']} test tiles (bpp from bytes written, PSNR of 8-bit tiles)"]
    lines.append(
        f"{'rate pt':>7} {'method':<8} {'bpp':>8} {'PSNR dB':>8} "
        f"{'enc s/tile':>10} {'dec s/tile':>10}"
    )
    for row in r["rows"]:
        fit, plan = fit_name(row), plan_name(row)
        lines.append(
            f"{row['rate_point_bpp']:>7g} {row['method']:<8} {row['bpp']:>8.4f} "
            f"{row['psnr_db']:>8.2f} "
            f"{row['encode_s_per_tile']:>10.3f} {row['decode_s_per_tile']:>10.4f}"
            + (f"  q={row['quality']}" if "quality" in row else "")
            + (f"  {fit}" if fit else "")
            + (
                f"  anneal {row['anneal']:g}"
                if row.get("anneal", default_anneal) != default_anneal
                else ""
            )
            + (f"  {plan}" if plan else "")
        )
    for row in r.get("ablation", []):
        if "error" in row:
            lines.append(f"ablation {row['allocation']}: {row['error']}")
        else:
            lines.append(
                f"ablation sp-orc {row['allocation']:<15} bpp {row['bpp']:.4f} "
                f"PSNR {row['psnr_db']:.2f}"
            )
    for row in r.get("scale", []):
        lines.append(f"Ray fit: {row['actors']} actor(s): {row['s_per_tile']:.2f} s/tile")
    for e in bits_at_equal_psnr(r["rows"]):
        ref = e["reference"]
        how = "at most, from anneal " if e["bound"] else "interpolated between anneal "
        fit = "".join(f", {e[k]}" for k in ("fit", "plan") if e.get(k))
        lines.append(
            f"rate point {e['rate_point_bpp']:g}{fit}: sp-orc at orc-16's {ref['psnr_db']:.2f} dB "
            f"(anneal {ref['anneal']}): {e['sp_orc_bpp']:.4f} bpp against {ref['bpp']:.4f} "
            f"({100 * e['change']:+.1f}% bits; {how}"
            + " and ".join(str(x["anneal"]) for x in e["between"])
            + ")"
        )
    return "\n".join(lines)


def plot(r: dict, out_dir: str) -> str:
    import matplotlib

    from recray.codecs.inr import Settings

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 5))
    inr_rows = [row for row in r["rows"] if row["method"] in METHODS]
    # one curve per method and fit setting, over the rate points: no annealing, the default
    # factor, and the other factors together (each point marked with its factor: they are
    # further points of a method's curve, e.g. for equal_psnr)
    default = Settings().anneal

    def series(row):
        a = row.get("anneal", 0.0)
        return (fit_name(row), plan_name(row), a if a in (0.0, default) else "other")

    kinds = {series(row) for row in inr_rows}
    fits = {f for f, _, _ in kinds}
    for m in METHODS:
        for fit, plan, kind in sorted(kinds, key=str):
            rows = sorted(
                (
                    row
                    for row in inr_rows
                    if row["method"] == m and series(row) == (fit, plan, kind)
                ),
                key=lambda row: row["bpp"],
            )
            if not rows:
                continue
            label = f"INR {m}" + (f" ({plan})" if plan else "")
            if len(fits) > 1:
                label += f", {fit or 'default fit'}"
            if len({k for _, _, k in kinds}) > 1:
                label += ", anneal as marked" if kind == "other" else f", anneal {kind:g}"
            x, y = [row["bpp"] for row in rows], [row["psnr_db"] for row in rows]
            style = "o:" if kind == 0.0 else ("s--" if kind == "other" else "o-")
            if fit:
                style = "^-." if kind != "other" else "v--"
            ax.plot(x, y, style, label=label)
            if kind == "other":
                for row in rows:
                    ax.annotate(f"{row['anneal']:g}", (row["bpp"], row["psnr_db"]), fontsize=7,
                                textcoords="offset points", xytext=(4, -10))  # fmt: skip
    for c in CLASSICAL:
        pts = sorted((row["bpp"], row["psnr_db"]) for row in r["sweeps"].get(c, []))
        if pts:
            ax.plot(*zip(*pts, strict=True), ".--", alpha=0.7, label=f"{c} (file bytes)")
    ax.set_xlabel("bits per pixel (bytes written)")
    ax.set_ylabel("PSNR (dB, 8-bit)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xticks([0.25, 0.5, 1, 2, 4, 8])
    ax.set_title(f"32x32 photo tiles, {r['tiles']} test tiles")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = os.path.join(out_dir, "inr_rd.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
