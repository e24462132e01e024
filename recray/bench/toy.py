"""``recray bench toy``: the paper's Figure 3 and the allocation ablation on 5-D toys.

For each family and sweep value (see :mod:`recray.bench.targets`) it codes ``runs`` blocks
(one per run, distinct stream ids) with

* ``pfr`` and ``sp-pfr`` (bits ``B = round(D_KL)`` allocated by per-dimension KL): mean
  search steps and mean codelength (the exact bits of the coded index);
* ``sp-pfr`` with the other allocations (``uniform``, ``random``, ``collapsed-only``);
* ``orc`` and ``sp-orc`` at one fixed budget ``N``: bias of the decoded samples
  (``z = (x - mu)/sigma`` should be N(0, 1): its mean, standard deviation and a KS p-value).

Searches whose predicted mean cost ``E[2^D_inf]`` exceeds the benchmark's cap are not run;
their record carries the prediction and ``mean_steps = None``.
JSON records: ``{family, t, d_kl, d_inf, method, mean_steps, mean_nbits, runs, ...}``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import stats

from recray import rec
from recray.bench import targets as tg
from recray.plan import allocate_bits

#: The "collapsed dimension only" ablation puts all B bits into one dimension; beyond this
#: many its table costs more than it shows (its steps are already PFR's at 12 bits).
COLLAPSED_ONLY_MAX_BITS = 12


@dataclass(frozen=True)
class ToyConfig:
    runs: int = 100
    orc_runs: int = 200
    orc_budget: int = 2**14
    pfr_step_cap: float = 2.0**21  # do not run pfr above this predicted mean
    sp_step_cap: float = 2.0**18
    ablation_families: tuple = ("shifted", "narrow", "typical")
    seed: int = 0

    @classmethod
    def quick(cls) -> ToyConfig:
        return cls(
            runs=40,
            orc_runs=100,
            orc_budget=2**10,
            pfr_step_cap=2.0**15,
            sp_step_cap=2.0**14,
            ablation_families=("typical",),
        )


def allocate_rows(kl_d: np.ndarray, strategy: str, seed: int) -> np.ndarray:
    """Bits per run: ``B = round(total KL)`` (at most 62), split by ``strategy``."""
    out = np.zeros(kl_d.shape, dtype=np.int64)
    for r in range(kl_d.shape[0]):  # a benchmark's setup loop over runs, not a hot path
        B = int(min(62, math.floor(kl_d[r].sum() + 0.5)))
        if strategy == "collapsed-only":
            B = min(B, COLLAPSED_ONLY_MAX_BITS)
        out[r] = allocate_bits(np.maximum(kl_d[r], 0.0), B, strategy, seed=seed + r)
    return out


def _record(family, t, mu, sigma, method, **extra):
    kl = tg.kl_bits_per_dim(mu, sigma).sum(axis=1)
    dinf = tg.dinf_bits_per_dim(mu, sigma).sum(axis=1)
    rec_ = {
        "family": family,
        "t": float(t),
        "d_kl": float(kl.mean()),
        "d_inf": float(dinf.mean()),
        "method": method,
    }
    rec_.update(extra)
    return rec_


def _stream_ids(family: str, t: float, runs: int) -> np.ndarray:
    base = (tg.FAMILIES.index(family) + 1) * 10**9 + int(round(t * 1e4)) * 10**3
    return base + np.arange(runs, dtype=np.int64)


def run_exact(family, t, cfg: ToyConfig, method, allocation="mi", backend=None):
    mu, sigma = tg.targets(family, t, cfg.runs, cfg.seed)
    kl_d = tg.kl_bits_per_dim(mu, sigma)
    bits = allocate_rows(kl_d, allocation, cfg.seed) if method == "sp-pfr" else None
    ids = _stream_ids(family, t, cfg.runs)
    _, dinf = rec.exact_feasible(mu, sigma, bits=bits, method=method, backend=backend)
    predicted = float(np.mean(2.0**dinf))
    cap = cfg.pfr_step_cap if method == "pfr" else cfg.sp_step_cap
    name = method if method == "pfr" else f"{method}/{allocation}"
    base = dict(
        allocation=allocation if method == "sp-pfr" else None,
        predicted_steps=predicted,
        dinf_prime=float(dinf.mean()),
        partition_bits=float(0.0 if bits is None else bits.sum(axis=1).mean()),
    )
    if predicted > cap:
        return _record(
            family,
            t,
            mu,
            sigma,
            name,
            mean_steps=None,
            mean_nbits=None,
            runs=0,
            seconds=0.0,
            **base,
        )
    runs = cfg.runs if predicted <= cap / 16 else max(8, cfg.runs // 5)
    sl = slice(0, runs)
    t0 = time.perf_counter()
    res = rec.encode(
        mu[sl],
        sigma[sl],
        bits=None if bits is None else bits[sl],
        method=method,
        seed=cfg.seed,
        stream_ids=ids[sl],
        max_steps=1 << 30,
        on_cap="keep",
        backend=backend,
    )
    sec = time.perf_counter() - t0
    return _record(
        family,
        t,
        mu[sl],
        sigma[sl],
        name,
        mean_steps=float(res.steps.mean()),
        mean_nbits=float(res.nbits.mean()),
        runs=runs,
        seconds=sec,
        capped=int(res.capped.sum()),
        **base,
    )


def run_budget(family, t, cfg: ToyConfig, method, backend=None):
    mu, sigma = tg.targets(family, t, cfg.orc_runs, cfg.seed + 1)
    kl_d = tg.kl_bits_per_dim(mu, sigma)
    bits = allocate_rows(kl_d, "mi", cfg.seed) if method == "sp-orc" else None
    ids = _stream_ids(family, t, cfg.orc_runs) + 500
    t0 = time.perf_counter()
    res = rec.encode(
        mu,
        sigma,
        bits=bits,
        method=method,
        seed=cfg.seed,
        stream_ids=ids,
        n_samples=cfg.orc_budget,
        backend=backend,
    )
    sec = time.perf_counter() - t0
    z = ((res.samples - mu) / sigma)[:, : tg.INFORMATIVE].reshape(-1)
    return _record(
        family,
        t,
        mu,
        sigma,
        method,
        mean_steps=float(res.steps.mean()),
        mean_nbits=float(res.nbits.mean()),
        runs=cfg.orc_runs,
        seconds=sec,
        n_samples=cfg.orc_budget,
        z_mean=float(z.mean()),
        z_std=float(z.std()),
        ks_pvalue=float(stats.kstest(z, "norm").pvalue),
    )


def run_toy(cfg: ToyConfig, backend=None, progress=None) -> list[dict]:
    jobs = []
    for fam in tg.FAMILIES:
        for t in tg.sweep(fam, quick=cfg.runs < 100):
            jobs.append(("exact", fam, t, "pfr", "mi"))
            jobs.append(("exact", fam, t, "sp-pfr", "mi"))
            if fam in cfg.ablation_families:
                for alloc in ("uniform", "random", "collapsed-only"):
                    jobs.append(("exact", fam, t, "sp-pfr", alloc))
    for t in tg.sweep("typical", quick=cfg.runs < 100):
        if t <= 24:  # plain ORC is visibly biased well before this
            jobs.append(("budget", "typical", t, "orc", None))
        jobs.append(("budget", "typical", t, "sp-orc", None))
    records = []
    bar = progress(total=len(jobs), desc="bench toy", unit="case") if progress else None
    for kind, fam, t, method, alloc in jobs:
        if kind == "exact":
            records.append(run_exact(fam, t, cfg, method, alloc, backend))
        else:
            records.append(run_budget(fam, t, cfg, method, backend))
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return records


# ----------------------------------------------------------------------------- summary
def _steps(r):
    return r["mean_steps"] if r["mean_steps"] is not None else r["predicted_steps"]


def largest_kl_under(records, method, limit=2.0**16):
    """Largest KL (typical family) whose mean steps stay under ``limit``.

    Returns ``(kl, interpolated, at_sweep_max)``: ``kl`` is the largest swept KL under the
    limit (measured steps, else predicted); ``interpolated`` the crossing found by linear
    interpolation of log2(steps) between that point and the next (None when no point of the
    sweep crosses); ``at_sweep_max`` says the sweep ended before the limit was reached.
    """
    rows = sorted(
        (r for r in records if r["family"] == "typical" and r["method"] == method),
        key=lambda r: r["d_kl"],
    )
    ok = [r for r in rows if _steps(r) < limit]
    if not ok:
        return None, None, False
    best = ok[-1]
    later = [r for r in rows if r["d_kl"] > best["d_kl"] and _steps(r) >= limit]
    if not later:
        return best["d_kl"], None, True
    nxt = later[0]
    a, b = math.log2(_steps(best)), math.log2(_steps(nxt))
    frac = (math.log2(limit) - a) / (b - a)
    return best["d_kl"], best["d_kl"] + frac * (nxt["d_kl"] - best["d_kl"]), False


def largest_unbiased_kl(records, method, alpha=0.01):
    """Largest KL at which the fixed-budget method's samples still pass the KS test."""
    rows = sorted(
        (r for r in records if r["method"] == method and "ks_pvalue" in r), key=lambda r: r["d_kl"]
    )
    good = None
    for r in rows:
        if r["ks_pvalue"] < alpha:
            break
        good = r["d_kl"]
    return good


def summarize(records) -> dict:
    """The issue's targets, computed from the records."""
    typ = {(r["method"], r["t"]): r for r in records if r["family"] == "typical"}
    out = {}
    r_sp, r_pfr = typ.get(("sp-pfr/mi", 16)), typ.get(("pfr", 16))
    if r_sp:
        out["typical_kl16_sp_pfr_mean_steps"] = r_sp["mean_steps"]
        out["typical_kl16_d_kl"] = r_sp["d_kl"]
        out["typical_kl16_sp_pfr_mean_nbits"] = r_sp["mean_nbits"]
        kl = r_sp["d_kl"]
        out["typical_kl16_nbits_bound"] = kl + math.log2(kl + 1) + 2
    if r_pfr:
        out["typical_kl16_pfr_mean_steps"] = r_pfr["mean_steps"]
        out["typical_kl16_pfr_predicted_steps"] = r_pfr["predicted_steps"]
    for name, method in (("sp_pfr", "sp-pfr/mi"), ("pfr", "pfr")):
        kl, interp, at_max = largest_kl_under(records, method)
        out[f"largest_kl_under_2^16_{name}"] = kl
        out[f"largest_kl_under_2^16_{name}_interpolated"] = interp
        out[f"largest_kl_under_2^16_{name}_is_sweep_max"] = at_max
    sp = out["largest_kl_under_2^16_sp_pfr"]
    pf = out["largest_kl_under_2^16_pfr_interpolated"] or out["largest_kl_under_2^16_pfr"]
    if sp and pf:
        out["largest_kl_ratio_sp_pfr_over_pfr"] = sp / pf
    for fam in tg.FAMILIES:
        excess = [
            r["mean_nbits"] - (r["d_kl"] + math.log2(r["d_kl"] + 1) + 2)
            for r in records
            if r["family"] == fam and r["method"] == "sp-pfr/mi" and r["mean_nbits"] is not None
        ]
        out[f"sp_pfr_max_nbits_minus_bound_{fam}"] = max(excess) if excess else None
    for method in ("orc", "sp-orc"):
        out[f"largest_unbiased_kl_{method}"] = largest_unbiased_kl(records, method)
    return out


def format_table(records) -> str:
    lines = [
        f"{'family':8s} {'t':>7s} {'D_KL':>6s} {'D_inf':>6s} {'method':24s} "
        f"{'steps':>10s} {'bits':>6s} {'runs':>4s}  notes"
    ]
    for r in records:
        steps = (
            f"{r['mean_steps']:.3g}"
            if r["mean_steps"] is not None
            else f"~{r['predicted_steps']:.2g}*"
        )
        bits = f"{r['mean_nbits']:.1f}" if r["mean_nbits"] is not None else "-"
        notes = ""
        if "z_std" in r:
            notes = f"N={r['n_samples']} z_std={r['z_std']:.3f} ks_p={r['ks_pvalue']:.2g}"
        lines.append(
            f"{r['family']:8s} {r['t']:7.3g} {r['d_kl']:6.1f} {r['d_inf']:6.1f} "
            f"{r['method']:24s} {steps:>10s} {bits:>6s} {r['runs']:4d}  {notes}"
        )
    lines.append("* predicted mean steps E[2^D_inf] (not run: above the benchmark's cap)")
    return "\n".join(lines)


def _plot_series(ax, rows, x_key, label, style="o-"):
    """One method's mean steps against ``x_key``: filled markers measured, hollow markers
    predicted (not run), one line through both."""
    rows = sorted(rows, key=lambda r: r[x_key])
    (line,) = ax.semilogy(
        [r[x_key] for r in rows], [_steps(r) for r in rows], style[1:], label=label
    )
    for measured in (True, False):
        sel = [r for r in rows if (r["mean_steps"] is not None) == measured]
        ax.semilogy(
            [r[x_key] for r in sel],
            [_steps(r) for r in sel],
            style[0],
            color=line.get_color(),
            mfc=None if measured else "none",
        )


def _save(fig, out_dir, name, paths):
    import os

    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)


def plot(records, out_dir) -> list[str]:
    """Write the figures as PNG into ``out_dir``; returns their paths."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, fam in zip(axes, tg.FAMILIES, strict=True):
        for method, style in (("pfr", "o-"), ("sp-pfr/mi", "s-")):
            rows = [r for r in records if r["family"] == fam and r["method"] == method]
            _plot_series(ax, rows, "d_inf", method.split("/")[0], style)
        ax.axhline(2**16, color="grey", ls=":", lw=1, label="2^16")
        ax.set_title(f"{fam} (5-D, one collapsed dim)")
        ax.set_xlabel("D_inf[Q||P] (bits)")
        ax.set_ylabel("mean steps (hollow: E[2^D_inf], not run)")
        ax.legend(fontsize=8)
    _save(fig, out_dir, "toy_steps.png", paths)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, fam in zip(axes, tg.FAMILIES, strict=True):
        rows = [
            r
            for r in records
            if r["family"] == fam
            and r["mean_nbits"] is not None
            and r["method"] in ("pfr", "sp-pfr/mi")
        ]
        for method, style in (("pfr", "o"), ("sp-pfr/mi", "s")):
            sel = sorted((r for r in rows if r["method"] == method), key=lambda r: r["d_kl"])
            ax.plot(
                [r["d_kl"] for r in sel],
                [r["mean_nbits"] for r in sel],
                style + "-",
                label=method.split("/")[0],
            )
        kl = np.linspace(0.5, max([r["d_kl"] for r in rows] + [2]), 50)
        ax.plot(kl, kl, "k:", lw=1, label="D_KL")
        ax.plot(kl, kl + np.log2(kl + 1) + 2, "k--", lw=1, label="D_KL + log2(D_KL+1) + 2")
        ax.set_title(fam)
        ax.set_xlabel("D_KL[Q||P] (bits)")
        ax.set_ylabel("mean codelength (bits)")
        ax.legend(fontsize=8)
    _save(fig, out_dir, "toy_codelength.png", paths)

    fams = sorted(
        {r["family"] for r in records if r["method"] == "sp-pfr/uniform"}, key=tg.FAMILIES.index
    )
    if fams:
        fig, axes = plt.subplots(1, len(fams), figsize=(4.7 * len(fams), 4.2), squeeze=False)
        for ax, fam in zip(axes[0], fams, strict=True):
            for alloc in ("mi", "uniform", "random", "collapsed-only"):
                rows = [
                    r for r in records if r["family"] == fam and r["method"] == f"sp-pfr/{alloc}"
                ]
                _plot_series(ax, rows, "d_kl", alloc)
            ax.set_title(f"{fam}: SP-PFR bit allocation")
            ax.set_xlabel("D_KL (bits)")
            ax.set_ylabel("mean steps (hollow: predicted)")
            ax.legend(fontsize=8)
        _save(fig, out_dir, "toy_allocation.png", paths)

    rows = [r for r in records if "z_std" in r]
    if rows:
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        for method in ("orc", "sp-orc"):
            sel = sorted((r for r in rows if r["method"] == method), key=lambda r: r["d_kl"])
            ax.plot([r["d_kl"] for r in sel], [r["z_std"] for r in sel], "o-", label=method)
        ax.axhline(1.0, color="k", ls=":", lw=1)
        ax.set_xlabel("D_KL (bits)")
        ax.set_ylabel("std of (x - mu)/sigma  (exact: 1)")
        ax.set_title(f"fixed budget N = {rows[0]['n_samples']}: bias")
        ax.legend()
        _save(fig, out_dir, "toy_orc_bias.png", paths)
    return paths
