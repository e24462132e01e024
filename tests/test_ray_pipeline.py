"""The Ray engine on a simulated multi-node cluster (``ray.cluster_utils.Cluster``: a head
and two worker nodes on this machine): the same bytes as the in-process engine for any
number of actors and batch size; bad input named from inside a Ray read task; a worker node
killed mid-run; the driver killed and the run resumed."""

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
from ray.cluster_utils import Cluster

from recray.errors import InputError
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


def test_bad_input_is_named_from_a_ray_read_task(cluster, data, tmp_path):
    lat, pri, _ = data
    t = pq.read_table(lat).slice(0, 600)
    sigma = np.stack(t.column("sigma").to_numpy(zero_copy_only=False))
    sigma[437, 5] = np.nan
    t = t.set_column(t.schema.get_field_index("sigma"), "sigma", pa.array(list(sigma)))
    bad = str(tmp_path / "bad.parquet")
    pq.write_table(t, bad)
    bad_id = t.column("id")[437].as_py()
    out = str(tmp_path / "run")
    with pytest.raises(InputError, match=rf"item {bad_id}: sigma\[5\] = nan is not finite"):
        driver.compress(bad, pri, out, batch_size=100, **SETTINGS, **_ray(cluster, 2))
    assert os.listdir(tmp_path) == ["bad.parquet"]  # nothing published, no partial left


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


def test_worker_node_killed_mid_run(cluster, data, tmp_path):
    lat, pri, ref = data
    out = str(tmp_path / "run")
    result = {}

    def work():
        try:
            result["info"] = driver.compress(
                lat, pri, out, batch_size=25, **SETTINGS, **_ray(cluster, 2, retries=4)
            )
        except BaseException as exc:  # reported below
            result["error"] = exc

    th = threading.Thread(target=work)
    th.start()
    _wait_for_parts(str(tmp_path / ".run.partial"), 1)
    victim = next(iter(cluster.worker_nodes))
    cluster.remove_node(victim)
    th.join(timeout=300)
    cluster.add_node(num_cpus=1, resources=ENCODER)  # back to two workers for later tests
    cluster.wait_for_nodes()
    assert not th.is_alive(), "the run did not finish after a node died"
    assert "error" not in result, result.get("error")
    done = [f for f in os.listdir(out) if f.endswith(".parquet")]
    assert len(done) == 8  # 2000 items / 250 per shard, each item once (same bytes)
    assert _files(out) == _files(ref)


DRIVER = """
import sys
from recray.pipeline import driver
from recray.pipeline.options import RayOptions
lat, pri, out, address = sys.argv[1:5]
driver.compress(lat, pri, out, batch_size=25, block_bits=12.0, shard_rows=250,
                on_unbounded="orc", max_steps=1 << 16, engine="ray",
                ray_options=RayOptions(address=address, actors=2, resources={"encoder": 0.5}))
"""


def test_driver_killed_then_resumed(cluster, data, tmp_path):
    lat, pri, ref = data
    out = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, lat, pri, out, cluster.address],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_parts(str(tmp_path / ".run.partial"), 2, proc=proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not os.path.exists(out)
    kept = sorted(f for f in os.listdir(tmp_path / ".run.partial") if f.endswith(".parquet"))
    assert 2 <= len(kept) < 8
    info = driver.compress(
        lat, pri, out, batch_size=100, resume=True, **SETTINGS, **_ray(cluster, 2)
    )
    assert info["resumed_shards"] == len(kept)
    assert _files(out) == _files(ref)
