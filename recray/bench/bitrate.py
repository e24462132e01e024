"""``recray bench bitrate``: bits per item against the sum of KL on a synthetic set, for
sp-pfr, sp-orc, pfr and orc at block budgets of 16 and 32 bits.

Every figure comes from a real run directory: bits/item are the message bytes written
(``recray inspect``), time is the wall time of ``compress``, bias is the standard deviation
of ``(z - mu) / sigma`` over the informative dimensions (exact methods: 1).

Exact methods run with ``max_steps = 2^22`` and ``--on-unbounded orc``: the rare blocks
that would need more (near-collapsed dimensions, far-tail posteriors) are coded by the
fixed-budget twin and counted (``fallback``); without it one block of 2^26 steps costs
minutes. Every method has a step budget (2^27 candidates): methods whose predicted cost per item
(``E[2^D_inf]`` summed over blocks for exact methods, ``N`` per block for fixed-budget ones)
would exceed it run on the first items only (a note says how many), or are reported as not
feasible when fewer than 10 items fit.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from recray import rec
from recray.latents import read_prior, synthesize
from recray.pipeline import driver
from recray.pipeline.codec import CodecSpec, block_rows
from recray.plan import build_plan

METHODS = ("sp-pfr", "sp-orc", "pfr", "orc")
BLOCK_BITS = (16.0, 32.0)


def predicted_steps_per_item(mu, sigma, prior, block_bits, method, seed=0) -> float:
    """Mean over items of the summed ``2^D_inf[Q||P']`` of their blocks (exact methods)."""
    plan = build_plan(prior.mi_bits, block_bits, seed=seed)
    spec = CodecSpec(
        plan=plan, method=method, seed=seed, prior_mu=prior.mu, prior_sigma=prior.sigma
    )
    total = np.zeros(mu.shape[0])
    for grp in spec.groups():
        m_r, s_r, pm, ps, bits = block_rows(grp, mu, sigma, spec)
        _, dinf = rec.exact_feasible(
            m_r, s_r, prior_mu=pm, prior_sigma=ps, bits=bits, method=method
        )
        total += (2.0**dinf).reshape(mu.shape[0], -1).sum(axis=1)
    return float(total.mean())


def _load(lat_path, n):
    t = pq.read_table(lat_path).slice(0, n)
    vec = lambda c: np.stack(t.column(c).to_numpy(zero_copy_only=False)).astype(float)  # noqa
    return t, vec("mu"), vec("sigma")


def run_bitrate(
    n: int = 2000,
    dim: int = 32,
    seed: int = 0,
    n_samples: int = 1 << 16,
    step_budget: float = 2.0**27,
    max_steps: int = 1 << 22,
    workdir: str | None = None,
    methods=METHODS,
    block_bits=BLOCK_BITS,
    progress=None,
) -> list[dict]:
    work = workdir or tempfile.mkdtemp(prefix="recray-bitrate-")
    lat, pri = synthesize(n, dim, os.path.join(work, "synth"), seed=seed)
    prior = read_prior(pri)
    table, mu, sigma = _load(lat, n)
    informative = prior.mi_bits >= 0.01
    records = []
    jobs = [(bb, m) for bb in block_bits for m in methods]
    bar = progress(total=len(jobs), desc="bench bitrate", unit="run") if progress else None
    for bb, method in jobs:
        rec_ = {"method": method, "block_bits": bb, "n_samples": n_samples}
        if method in rec.EXACT_METHODS:
            pred = predicted_steps_per_item(mu[:200], sigma[:200], prior, bb, method, seed)
        else:  # fixed budget: N candidates per block
            pred = float(n_samples * build_plan(prior.mi_bits, bb, seed=seed).n_blocks)
        rec_["predicted_steps_per_item"] = pred
        n_run = int(min(n, step_budget / pred))
        if n_run < 10:
            rec_.update(items=0, note=f"not feasible: ~{pred:.2g} steps per item")
            records.append(rec_)
            if bar:
                bar.update(1)
            continue
        sub = os.path.join(work, f"sub-{n_run}.parquet")
        if not os.path.exists(sub):
            pq.write_table(table.slice(0, n_run), sub)
        out = os.path.join(work, f"run-{method}-{int(bb)}")
        t0 = time.perf_counter()
        info = driver.compress(
            sub,
            pri,
            out,
            method=method,
            block_bits=bb,
            n_samples=n_samples,
            seed=seed,
            debug_samples=True,
            max_steps=max_steps,
            on_unbounded="orc",
            engine="local",  # per-item time of the search, without Ray's start-up
        )
        sec = time.perf_counter() - t0
        z = np.concatenate(
            [
                np.stack(
                    pq.read_table(os.path.join(out, p["file"]), columns=["z_debug"])
                    .column("z_debug")
                    .to_numpy(zero_copy_only=False)
                )
                for p in driver.Run.open(out, verify_parts=False).manifest["parts"]
            ]
        )
        scores = ((z - mu[:n_run]) / sigma[:n_run])[:, informative]
        rec_.update(
            items=n_run,
            n_blocks=info["n_blocks"],
            bits_per_item=info["bits_per_item"],
            kl_bits_per_item=info["mean_kl_bits_per_item"],
            overhead_pct=info["overhead_over_kl_pct"],
            mean_steps_per_item=info["mean_steps_per_item"],
            seconds_per_item=sec / n_run,
            z_std=float(scores.std()),
            fallback_blocks=info["fallback_blocks"],
            note="" if n_run == n else f"first {n_run} items (step budget)",
        )
        records.append(rec_)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return records


def format_table(records) -> str:
    lines = [
        "| method | block bits | blocks | items | KL/item | bits/item | overhead | "
        "steps/item | ms/item | z std | fallback blocks | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        if not r.get("items"):
            lines.append(
                f"| {r['method']} | {r['block_bits']:g} | - | 0 | - | - | - | "
                f"- | - | - | - | {r['note']} |"
            )
            continue
        lines.append(
            f"| {r['method']} | {r['block_bits']:g} | {r['n_blocks']} | {r['items']} | "
            f"{r['kl_bits_per_item']:.1f} | {r['bits_per_item']:.1f} | "
            f"{r['overhead_pct']:.1f} % | {r['mean_steps_per_item']:.3g} | "
            f"{1e3 * r['seconds_per_item']:.2f} | {r['z_std']:.3f} | "
            f"{r.get('fallback_blocks', 0)} | {r['note']} |"
        )
    return "\n".join(lines)
