"""The Ray engine on a simulated multi-node cluster (``ray.cluster_utils.Cluster``: a head
and two worker nodes on this machine): the same bytes as the in-process engine for any
number of actors and batch size; bad input named before coding; errors raised inside an
actor reach the caller with their type (or become rejects under ``on_bad_item="skip"``); a
busy worker node killed ungracefully while its actor holds a batch, and Ray's retry of that
batch seen; the driver killed, killed again during its resume, and the run resumed."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from conftest import rehash_part
from ray.cluster_utils import Cluster

from recray.errors import InputError, SearchBudgetError
from recray.latents import synthesize
from recray.pipeline import driver
from recray.pipeline.options import RayOptions

# actors live on the worker nodes only (the head has no "encoder" resource), so killing a
# worker always kills an actor; each worker fits two actors, so the survivor has room
ENCODER = {"encoder": 1}
ACTOR = {"encoder": 0.5}
SETTINGS = dict(block_bits=12.0, shard_rows=250, on_unbounded="orc", max_steps=1 << 16)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={
            "num_cpus": 1,
            # a removed node is declared dead in ~3 s instead of ~15 s
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 1000,
                "health_check_failure_threshold": 2,
            },
        },
    )
    c.add_node(num_cpus=1, resources=ENCODER)
    c.add_node(num_cpus=1, resources=ENCODER)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray-data")
    lat, pri = synthesize(2000, 16, str(d), seed=11)
    ref = str(d / "reference")
    driver.compress(lat, pri, ref, engine="local", batch_size=500, **SETTINGS)
    return lat, pri, ref


def _files(run_dir):
    return {f: open(os.path.join(run_dir, f), "rb").read() for f in sorted(os.listdir(run_dir))}


def _ray(cluster, actors, **kw):
    return dict(
        engine="ray",
        ray_options=RayOptions(address=cluster.address, actors=actors, resources=ACTOR, **kw),
    )


@pytest.mark.parametrize("actors,batch_size", [(1, 64), (2, 333)])
def test_same_bytes_as_in_process_for_any_pool_and_batch(
    cluster, data, tmp_path, actors, batch_size
):
    lat, pri, ref = data
    out = str(tmp_path / "run")
    info = driver.compress(
        lat, pri, out, batch_size=batch_size, **SETTINGS, **_ray(cluster, actors)
    )
    assert info["actors"] == actors and info["engine"] == "ray"
    assert _files(out) == _files(ref)


@ray.remote(num_cpus=0)
class _Rendezvous:
    """Counts the tasks that have started."""

    def __init__(self):
        self.started = set()

    def arrive(self, task):
        self.started.add(task)

    def count(self):
        return len(self.started)


def test_each_actor_takes_one_task_at_a_time(cluster):
    """Tasks are whole shards: with as many tasks as actors, each actor codes one, at the
    same time. (Ray Data's default queues several tasks on the first actor to start, and
    that actor then coded both shards of a 2-shard run while the other idled.)"""
    from recray.pipeline.ray_engine import ray_session, run_tasks

    rv = _Rendezvous.remote()

    def make_worker():  # local, so the actors get it by value
        def meet(task):
            """Wait (up to 30 s) until both tasks have started, then name this process:
            tasks queued behind each other on one actor never meet."""
            ray.get(rv.arrive.remote(task))
            deadline = time.monotonic() + 30.0
            while ray.get(rv.count.remote()) < 2:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.05)
            return os.getpid()

        return meet

    opts = RayOptions(address=cluster.address, actors=2, resources=ACTOR, retries=0)
    with ray_session(cluster.address):
        got = dict(
            run_tasks(
                make_worker,
                [0, 1],
                opts=opts,
                actors=2,
                actor_res={"num_cpus": opts.actor_cpus},
            )
        )
    assert None not in got.values(), f"a task ran alone: {got}"
    assert len(set(got.values())) == 2


def test_per_block_budget_gives_the_same_bytes_on_ray(cluster, data, tmp_path):
    """orc with per-block budgets from the blocks' information (``n_samples="kl"``, message
    codec version 4): the Ray engine writes the in-process engine's files."""
    lat, pri, _ = data
    kw = dict(method="orc", n_samples="kl", kl_offset_bits=1.0, **SETTINGS)
    here = str(tmp_path / "local")
    driver.compress(lat, pri, here, engine="local", batch_size=500, **kw)
    out = str(tmp_path / "ray")
    driver.compress(lat, pri, out, batch_size=333, **kw, **_ray(cluster, 2))
    assert _files(out) == _files(here)
    hdr = json.load(open(os.path.join(out, "plan.json")))
    assert hdr["n_samples"] == "kl" and len(set(hdr["block_n_samples"])) > 1


def test_decompress_on_ray_writes_the_in_process_file(cluster, data, tmp_path):
    """Parts decoded on two actors (one part per task), written in part order: the same
    file, byte for byte, as the in-process decoder's; a corrupted message is named with its
    type from inside an actor."""
    import shutil

    from recray.errors import MessageError

    _, _, ref = data
    here = str(tmp_path / "here.parquet")
    driver.decompress(ref, here, batch_size=100)
    there = str(tmp_path / "there.parquet")
    info = driver.decompress(ref, there, batch_size=100, **_ray(cluster, 2))
    assert info["items"] == 2000
    assert open(there, "rb").read() == open(here, "rb").read()
    bad = str(tmp_path / "bad")
    shutil.copytree(ref, bad)
    t = pq.read_table(os.path.join(bad, "part-00003.parquet"))
    msgs = t.column("message").to_pylist()
    msgs[7] = bytes([msgs[7][0] ^ 1]) + msgs[7][1:]
    t = t.set_column(t.schema.get_field_index("message"), "message", pa.array(msgs, pa.binary()))
    pq.write_table(t, os.path.join(bad, "part-00003.parquet"))
    rehash_part(bad, "part-00003.parquet")
    item = t.column("id")[7].as_py()
    with pytest.raises(MessageError, match=rf"item {item}: its message fails its CRC-32"):
        driver.decompress(bad, str(tmp_path / "z.parquet"), **_ray(cluster, 2))
    assert not os.path.exists(tmp_path / "z.parquet")


def test_bad_input_is_named_before_coding(cluster, data, tmp_path):
    """The validation pass runs as Ray tasks (one per shard, then one per hash range of the
    ids): the same rejects, in the same order, as the in-process pass, and nothing is left
    behind (no partial run, no id files)."""
    from recray.format.storage import resolve
    from recray.latents.io import LatentSource
    from recray.pipeline.ray_engine import validate_on_ray
    from recray.pipeline.shards import shard_ranges
    from recray.pipeline.validate import scan

    lat, pri, _ = data
    t = pq.read_table(lat).slice(0, 600)
    sigma = np.stack(t.column("sigma").to_numpy(zero_copy_only=False))
    sigma[437, 5] = np.nan
    ids = t.column("id").to_numpy().copy()
    ids[520] = ids[3]  # a repeat in another shard
    t = t.set_column(t.schema.get_field_index("sigma"), "sigma", pa.array(list(sigma)))
    t = t.set_column(0, "id", pa.array(ids))
    bad = str(tmp_path / "bad.parquet")
    pq.write_table(t, bad)
    bad_id = t.column("id")[437].as_py()
    out = str(tmp_path / "run")
    with pytest.raises(InputError, match=rf"item {bad_id}: sigma\[5\] = nan is not finite") as e:
        driver.compress(
            bad, pri, out, batch_size=100, **SETTINGS, **_ray(cluster, 2, validate_on_ray=True)
        )
    assert f"duplicate item id {ids[3]} (first at row 3)" in str(e.value)
    assert os.listdir(tmp_path) == ["bad.parquet"]  # nothing published, no partial left
    spec = driver.spec_from_header(driver.Run.open(data[2]).header, driver.read_prior(pri))
    index = LatentSource(bad, 16).row_index()
    opts = RayOptions(address=cluster.address, resources=ACTOR)
    scratch = resolve(str(tmp_path / "ids"))
    there = validate_on_ray(index, shard_ranges(600, 250), spec, scratch, opts=opts,
                            range_items=200).rejects  # fmt: skip
    here = scan(index, spec).rejects
    assert (there.rows, there.ids, there.reasons) == (here.rows, here.ids, here.reasons)
    assert len(here) == 2


def _wait_for_parts(partial, n, timeout=120.0, proc=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.isdir(partial):
            if len([f for f in os.listdir(partial) if f.endswith(".parquet")]) >= n:
                return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no {n} committed parts in {partial} after {timeout} s")


@ray.remote(num_cpus=0)
class Gate:
    """Holds the actors mid-batch until opened, and records which node coded which batch."""

    def __init__(self):
        import asyncio

        self.open = asyncio.Event()
        self.calls = []

    async def enter(self, node_id, first_row, pid):
        self.calls.append((node_id, first_row, pid))
        await self.open.wait()

    def release(self):
        self.open.set()

    def log(self):
        return list(self.calls)


def _held(gate):
    def hook(shard, rows):
        node = ray.get_runtime_context().get_node_id()
        ray.get(gate.enter.remote(node, int(rows[0]), os.getpid()))

    return hook


def test_busy_worker_node_killed_mid_batch(cluster, data, tmp_path):
    """Both actors hold a batch (the gate is closed), so the run is unfinished; the node of
    the first held batch is killed without a graceful shutdown; once the gate opens, Ray
    runs that batch again on the surviving node, and the run's bytes equal a clean run's."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    lat, pri, ref = data
    out = str(tmp_path / "run")
    head = ray.get_runtime_context().get_node_id()
    gate = Gate.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)
    ).remote()
    result = {}

    def work():
        try:
            result["info"] = driver.compress(
                lat,
                pri,
                out,
                batch_size=25,
                **SETTINGS,
                **_ray(cluster, 2, retries=4, on_batch=_held(gate)),
            )
        except BaseException as exc:  # reported below
            result["error"] = exc

    th = threading.Thread(target=work)
    th.start()
    t0 = time.time()
    while len({c[0] for c in ray.get(gate.log.remote())}) < 2:  # both nodes hold a batch
        assert time.time() - t0 < 180 and th.is_alive(), result.get("error")
        time.sleep(0.05)
    partial = tmp_path / ".run.partial"
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(partial) if f.startswith("part-")]  # nothing committed
    victim_id, victim_row, victim_pid = ray.get(gate.log.remote())[0]
    victim = next(n for n in cluster.worker_nodes if n.node_id == victim_id)
    cluster.remove_node(victim, allow_graceful=False)
    # a node that dies takes its processes with it; the simulated node's actor would
    # otherwise outlive its raylet for a moment, finish the shard once the gate opens and
    # commit it, and the retry would then (correctly) read the part back
    with contextlib.suppress(ProcessLookupError):
        os.kill(victim_pid, signal.SIGKILL)
    gate.release.remote()
    th.join(timeout=300)
    cluster.add_node(num_cpus=1, resources=ENCODER)  # back to two workers for later tests
    cluster.wait_for_nodes()
    assert not th.is_alive(), "the run did not finish after a node died"
    assert "error" not in result, result.get("error")
    calls = ray.get(gate.log.remote())
    retried = [n for n, r, _ in calls if r == victim_row]
    assert len(retried) >= 2 and retried[-1] != victim_id  # coded again, on another node
    done = [f for f in os.listdir(out) if f.endswith(".parquet")]
    assert len(done) == 8  # 2000 items / 250 per shard, each item once (same bytes)
    assert _files(out) == _files(ref)


def test_search_failures_in_actors_are_typed_or_rejects(cluster, data, tmp_path):
    """A search that hits a small max_steps inside an actor: with on_bad_item="fail" the
    caller gets SearchBudgetError (not a RayTaskError) naming the item; with "skip" the same
    rejects and bytes as the in-process engine."""
    lat, pri, _ = data
    kw = dict(
        SETTINGS,
        max_steps=1024,
        feasible_margin_bits=0.0,
        on_unbounded="error",
        adapt_above_bits=None,
    )
    local = str(tmp_path / "local")
    info = driver.compress(
        lat, pri, local, batch_size=100, engine="local", on_bad_item="skip", **kw
    )
    rej = pq.read_table(os.path.join(local, "rejects.parquet")).to_pylist()
    late = [r for r in rej if "hit max_steps" in r["reason"]]
    assert late and info["rejects"] == len(rej)
    out = str(tmp_path / "ray")
    driver.compress(lat, pri, out, batch_size=100, on_bad_item="skip", **kw, **_ray(cluster, 2))
    assert _files(out) == _files(local)
    # only the run-time failures: keep the items the validation pass admits
    early = {r["row"] for r in rej if r not in late}
    t = pq.read_table(lat)
    sub = str(tmp_path / "admitted.parquet")
    pq.write_table(t.take(pa.array([i for i in range(t.num_rows) if i not in early])), sub)
    with pytest.raises(SearchBudgetError, match=r"^item \d+, plan block \d+.*hit max_steps = 1024"):
        driver.compress(sub, pri, str(tmp_path / "fail"), batch_size=100, **kw, **_ray(cluster, 2))


DRIVER = """
import sys
from recray.pipeline import driver
from recray.pipeline.options import RayOptions
lat, pri, out, address, resume = sys.argv[1:6]
driver.compress(lat, pri, out, batch_size=25, block_bits=12.0, shard_rows=250,
                on_unbounded="orc", max_steps=1 << 16, engine="ray", resume=resume == "1",
                ray_options=RayOptions(address=address, actors=2, resources={"encoder": 0.5}))
"""


def _kill_driver_after(lat, pri, out, address, parts, partial, resume):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, lat, pri, out, address, "1" if resume else "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_parts(partial, parts, proc=proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return _settled_parts(partial)


def _settled_parts(partial, quiet=3.0, timeout=60.0):
    """The committed parts once the killed driver's actors are gone: actors commit their own
    parts, and Ray ends a dead driver's actors a moment after it, so one may still commit a
    shard it was coding. Waits until the listing has not changed for ``quiet`` seconds."""
    t0 = time.time()
    last, since = None, time.time()
    while time.time() - t0 < timeout:
        now = sorted(f for f in os.listdir(partial) if f.startswith("part-"))
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            return now
        time.sleep(0.1)
    raise AssertionError(f"parts in {partial} still changing after {timeout} s")


def test_driver_killed_then_killed_during_resume_then_resumed(cluster, data, tmp_path):
    lat, pri, ref = data
    out = str(tmp_path / "run")
    partial = str(tmp_path / ".run.partial")
    kept = _kill_driver_after(lat, pri, out, cluster.address, 2, partial, resume=False)
    assert not os.path.exists(out)
    assert 2 <= len(kept) < 8
    # the resume is killed too, after it committed more: nothing is lost either time
    more = _kill_driver_after(lat, pri, out, cluster.address, len(kept) + 2, partial, resume=True)
    assert set(kept) < set(more) and len(more) < 8
    info = driver.compress(
        lat, pri, out, batch_size=100, resume=True, **SETTINGS, **_ray(cluster, 2)
    )
    assert info["resumed_shards"] == len(more)
    assert _files(out) == _files(ref)


def test_mnist_pixel_stage_and_decode_on_ray(cluster, tmp_path, monkeypatch):
    """``recray codec mnist`` on Ray: the pixel stage of compress and the whole of decompress
    run one part per task on an actor pool and give what the in-process engine gives, byte
    for byte (the codec run's parts; the decoded images). The latent search on Ray is what
    the tests above cover; here it runs in-process to keep the test short."""
    pytest.importorskip("torch")
    from recray.codecs import mnist

    kw = dict(limit=20, method="sp-pfr", block_bits=32, laws="fixed", shard_rows=10)  # two parts
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    mnist.compress(here, engine="local", **kw)
    latent_stage = mnist.driver.compress
    monkeypatch.setattr(
        mnist.driver, "compress", lambda *a, **k: latent_stage(*a, **(k | {"engine": "local"}))
    )
    opts = _ray(cluster, 2)
    mnist.compress(there, **kw, **opts)
    parts = [f for f in sorted(os.listdir(here)) if f.startswith("part-")]
    assert len(parts) == 2
    assert {f: _files(there)[f] for f in parts} == {f: _files(here)[f] for f in parts}
    a = mnist.decompress(here, str(tmp_path / "dec-here"))
    b = mnist.decompress(here, str(tmp_path / "dec-there"), verify=True, **opts)
    assert b["images"] == 20 and b["verified"]
    a, b = np.load(a["out"]), np.load(b["out"])
    assert np.array_equal(a["ids"], b["ids"]) and np.array_equal(a["images"], b["images"])
