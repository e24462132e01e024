"""``recray bench scale``: items/s of the Ray engine with 1 and 2 actors on a local Ray,
and through a simulated multi-node cluster (``ray.cluster_utils.Cluster``: a head and
worker nodes on this machine), against the in-process engine.

Every run codes the same synthetic data set with the same settings and must write the
same bytes as the in-process run (checked). Ray's start-up is excluded (Ray is up before
the clock starts); the actor pool's start-up is included, as a user pays it per run.

Also reported: the driver's serial time (regrouping rows, committing parts, the duplicate
id check and the manifest), from which ``docs/SCALING.md`` bounds larger clusters.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time

from recray.latents import synthesize
from recray.pipeline import driver
from recray.pipeline.options import RayOptions


def _digest(run_dir: str) -> str:
    h = hashlib.sha256()
    for f in sorted(os.listdir(run_dir)):
        h.update(f.encode())
        with open(os.path.join(run_dir, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def run_scale(
    n: int = 4000,
    dim: int = 32,
    block_bits: float = 16.0,
    batch_size: int = 128,
    shard_rows: int = 500,
    actors: tuple[int, ...] = (1, 2),
    cluster_workers: int = 2,
    seed: int = 0,
    workdir: str | None = None,
    progress=None,
) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_worker_niceness", "0")  # see recray.pipeline.ray_engine
    work = workdir or tempfile.mkdtemp(prefix="recray-bench-scale-")
    lat, pri = synthesize(n, dim, os.path.join(work, f"synth-{n}x{dim}"), seed=seed)
    settings = dict(
        block_bits=block_bits,
        batch_size=batch_size,
        shard_rows=shard_rows,
        on_unbounded="orc",
        max_steps=1 << 20,
        seed=seed,
    )
    records = []

    def one(setup: str, engine: str, n_actors: int, opts: RayOptions | None):
        out = os.path.join(work, f"run-{setup}-{n_actors}")
        t0 = time.perf_counter()
        info = driver.compress(lat, pri, out, engine=engine, ray_options=opts, **settings)
        wall = time.perf_counter() - t0
        rec = {
            "setup": setup,
            "engine": engine,
            "actors": n_actors,
            "items": n,
            "wall_s": wall,
            "items_per_s": n / wall,
            "driver_s": info["driver_seconds"],
            "publish_s": info["publish_seconds"],
            "bits_per_item": info["bits_per_item"],
            "digest": _digest(out),
        }
        records.append(rec)
        if progress:
            progress(rec)
        return rec

    base = one("in-process", "local", 0, None)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(include_dashboard=False, logging_level="warning")
    try:
        for a in actors:
            one("local-ray", "ray", a, RayOptions(actors=a))
    finally:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(cluster_workers):
            cluster.add_node(num_cpus=1, resources={"encoder": 1})
        cluster.wait_for_nodes()
        one(
            f"cluster-{cluster_workers}-workers",
            "ray",
            cluster_workers,
            RayOptions(address=cluster.address, actors=cluster_workers, resources={"encoder": 1}),
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
    ray_runs = {r["actors"]: r for r in records if r["setup"] == "local-ray"}
    summary = {
        "identical_bytes": all(r["digest"] == base["digest"] for r in records),
        "cpus": os.cpu_count(),
    }
    if 1 in ray_runs:
        r1 = ray_runs[1]["items_per_s"]
        summary["per_actor_items_per_s"] = r1
        for a, r in ray_runs.items():
            if a > 1:
                summary[f"efficiency_{a}_actors"] = r["items_per_s"] / (a * r1)
        cl = records[-1]
        summary["efficiency_cluster"] = cl["items_per_s"] / (cl["actors"] * r1)
    serial = [r["driver_s"] + r["publish_s"] for r in records if r["engine"] == "ray"]
    summary["driver_serial_items_per_s"] = n / max(min(serial), 1e-9) if serial else None
    return {
        "config": settings | {"n": n, "dim": dim, "method": "sp-pfr"},
        "records": records,
        "summary": summary,
    }


def format_result(r: dict) -> str:
    lines = [
        f"{'setup':<22} {'actors':>6} {'wall s':>8} {'items/s':>9} {'driver s':>9} "
        f"{'publish s':>9} {'bits/item':>9}"
    ]
    for x in r["records"]:
        lines.append(
            f"{x['setup']:<22} {x['actors']:>6} {x['wall_s']:>8.1f} {x['items_per_s']:>9.1f} "
            f"{x['driver_s']:>9.2f} {x['publish_s']:>9.2f} {x['bits_per_item']:>9.2f}"
        )
    lines.append("")
    for k, v in r["summary"].items():
        lines.append(f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}")
    return "\n".join(lines)


def run_driver_cost(
    n: int = 200_000,
    dim: int = 16,
    block_bits: float = 4.0,
    batch_size: int = 2000,
    shard_rows: int = 10_000,
    actors: int = 2,
    decompress: bool = True,
    validate_on_ray: bool | None = None,
    seed: int = 0,
    workdir: str | None = None,
) -> dict:
    """The driver's per-item cost of a compress (and a decompress) on a local Ray with
    ``actors`` actors: wall time and items/s, and the driver process's CPU time per item,
    its main thread alone (``time.thread_time``: the validation pass when it ran here,
    dispatching, the summaries, the manifest) and the whole process (Ray's and Ray Data's
    threads in the driver included). Ray's start-up and the first run's imports are
    excluded. ``validate_on_ray``: see
    :class:`~recray.pipeline.options.RayOptions` (``None``: the default, by size). Only
    public entry points are used, so the same function measures older code for a
    before/after."""
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")  # see recray.pipeline.ray_engine
    work = workdir or tempfile.mkdtemp(prefix="recray-bench-driver-")
    lat, pri = synthesize(n, dim, os.path.join(work, f"synth-{n}x{dim}"), seed=seed)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(include_dashboard=False, logging_level="error", log_to_driver=False)
    # one-off costs outside the clock: the imports a first run pays (Ray Data, the engine,
    # Numba and its CUDA probe behind the backend label)
    import ray.data  # noqa: F401

    import recray.pipeline.ray_engine  # noqa: F401
    from recray.backend import get_backend

    get_backend("auto")
    extra = {} if validate_on_ray is None else {"validate_on_ray": validate_on_ray}
    opts = RayOptions(actors=actors, **extra)
    out = os.path.join(work, "run")
    try:
        t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
        info = driver.compress(
            lat,
            pri,
            out,
            block_bits=block_bits,
            batch_size=batch_size,
            shard_rows=shard_rows,
            on_unbounded="orc",
            max_steps=1 << 20,
            seed=seed,
            engine="ray",
            ray_options=opts,
        )
        wall = time.perf_counter() - t0
        main_cpu, proc_cpu = time.thread_time() - c0, time.process_time() - p0
        rec = {
            "compress": {
                "wall_s": wall,
                "items_per_s": n / wall,
                "bits_per_item": info["bits_per_item"],
                "validation_s": info.get("validation_seconds"),
                "driver_s": info.get("driver_seconds"),
                "publish_s": info.get("publish_seconds"),
                "driver_main_thread_cpu_s": main_cpu,
                "driver_process_cpu_s": proc_cpu,
                "driver_main_thread_us_per_item": 1e6 * main_cpu / n,
                "driver_process_us_per_item": 1e6 * proc_cpu / n,
            }
        }
        if decompress:
            z = os.path.join(work, "z.parquet")
            t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
            driver.decompress(out, z, engine="ray", ray_options=opts, batch_size=batch_size)
            wall = time.perf_counter() - t0
            rec["decompress"] = {
                "wall_s": wall,
                "items_per_s": n / wall,
                "driver_main_thread_cpu_s": time.thread_time() - c0,
                "driver_process_cpu_s": time.process_time() - p0,
            }
    finally:
        ray.shutdown()
    cfg = dict(n=n, dim=dim, block_bits=block_bits, batch_size=batch_size,
               shard_rows=shard_rows, actors=actors, cpus=os.cpu_count(),
               validate_on_ray=validate_on_ray)  # fmt: skip
    return {"config": cfg, **rec}


def format_driver_cost(r: dict) -> str:
    c = r["compress"]
    lines = [
        "config: " + ", ".join(f"{k} {v}" for k, v in r["config"].items()),
        f"compress on Ray: {c['wall_s']:.1f} s, {c['items_per_s']:,.0f} items/s, "
        f"{c['bits_per_item']:.2f} bits/item; validation pass {c['validation_s']:.1f} s",
        f"  driver CPU: main thread {c['driver_main_thread_cpu_s']:.2f} s "
        f"({c['driver_main_thread_us_per_item']:.2f} us/item), whole process "
        f"{c['driver_process_cpu_s']:.2f} s ({c['driver_process_us_per_item']:.2f} us/item)",
    ]
    if "decompress" in r:
        d = r["decompress"]
        lines.append(
            f"decompress on Ray: {d['wall_s']:.1f} s, {d['items_per_s']:,.0f} items/s "
            f"(driver main thread {d['driver_main_thread_cpu_s']:.2f} s CPU)"
        )
    return "\n".join(lines)
