"""``ray job submit`` against a real head node: the ``jobs/`` entrypoints compress and
decode a small data set on the cluster, and the run equals an in-process run bit for bit.

The head node is ``ray start --head --block`` on free ports in its own short temporary
directory (``recray.cluster.local_head``); the test stops exactly that process (SIGTERM)
and checks that nothing it started outlives it. It never runs ``ray stop``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from recray.cli.main import main
from recray.cluster import jobs
from recray.cluster.local_head import QUIET_ENV, _psutil, start_head, start_worker
from recray.format.run import Run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
CODEC = ["--block-bits", "8", "--seed", "3", "--on-unbounded", "orc"]


def _processes_naming(path: str) -> list[tuple[int, str]]:
    ps = _psutil()
    out = []
    for p in ps.process_iter(["pid", "name", "cmdline"]):
        try:
            if path in " ".join(p.info["cmdline"] or ()) and p.pid != os.getpid():
                if p.status() != ps.STATUS_ZOMBIE:
                    out.append((p.pid, p.info["name"]))
        except (ps.NoSuchProcess, ps.AccessDenied):
            pass
    return out


def _assert_stopped_cleanly(node, report) -> None:
    # `ray start --block` tears its node down on SIGTERM: no core daemon may be left for
    # stop() to clean up, and nothing of the node may be alive afterwards
    core = [s for s in report.survivors if s[1] in ("raylet", "gcs_server")]
    assert core == [], f"`ray start --block` left {core} running"
    assert report.alive_after == []
    assert _processes_naming(node.temp_dir) == []


@pytest.fixture
def head():
    h = start_head(num_cpus=2)
    try:
        yield h
    finally:
        report = h.stop()
        print(f"head stopped: {report}")
        _assert_stopped_cleanly(h, report)
        assert not os.path.exists(h.temp_dir)


def _submit(head, submission_id: str, script: str, *args: str) -> str:
    env = dict(os.environ, **QUIET_ENV)
    env.pop("RAY_ADDRESS", None)
    cmd = [RAY, "job", "submit", "--address", head.dashboard_url]
    cmd += ["--submission-id", submission_id, "--working-dir", REPO]
    cmd += ["--runtime-env", os.path.join(REPO, "jobs", "runtime_env.yaml")]
    cmd += ["--", "python", script, *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    logs = r.stdout + r.stderr
    from ray.job_submission import JobStatus, JobSubmissionClient

    status = JobSubmissionClient(head.dashboard_url).get_job_status(submission_id)
    assert r.returncode == 0 and status == JobStatus.SUCCEEDED, f"job {status}:\n{logs}"
    return logs


def _rows(run_dir: str) -> dict:
    run = Run.open(run_dir)  # checks manifest, part sizes and SHA-256
    rows = {}
    for b in run.iter_rows(columns=["id", "message", "nbits", "crc32"]):
        for i, m, n, c in zip(*(b.column(k).to_pylist() for k in range(4)), strict=True):
            assert i not in rows, f"item {i} written twice"
            rows[i] = (m, n, c)
    return rows


def _z(path: str) -> dict:
    t = pq.read_table(path)
    return dict(zip(t["id"].to_pylist(), np.asarray(t["z"].to_pylist()), strict=True))


def test_job_compress_and_decompress_match_in_process_run(head, tmp_path):
    t0 = time.monotonic()
    ds = tmp_path / "ds"
    assert main(["datasets", "synth", "--n", "200", "--dim", "16", "--out", str(ds)]) == 0
    lat, prior = str(ds / "latents.parquet"), str(ds / "prior.json")

    opts = jobs.command_options("compress")
    on_cluster = ["--engine", "ray"] if "--engine" in opts else []
    on_cluster += ["--actors", "1"] if "--actors" in opts else []
    in_process = ["--engine", "local"] if "--engine" in opts else []

    job_run, job_z = str(tmp_path / "job-run"), str(tmp_path / "job-z.parquet")
    logs = _submit(
        head,
        "rr-compress",
        "jobs/compress.py",
        *[lat, "--prior", prior, "--out", job_run, *CODEC, *on_cluster],
    )
    assert "items                 200" in logs
    logs = _submit(
        head, "rr-decompress", "jobs/decompress.py", job_run, "--out", job_z, "--inspect"
    )
    assert "decoded 200 items" in logs and "bits/item" in logs

    local_run, local_z = str(tmp_path / "local-run"), str(tmp_path / "local-z.parquet")
    assert main(["compress", lat, "--prior", prior, "--out", local_run, *CODEC, *in_process]) == 0
    assert main(["decompress", local_run, "--out", local_z, "--prior", prior]) == 0

    # the same messages, bit for bit, for every item, exactly once
    job_rows, local_rows = _rows(job_run), _rows(local_run)
    assert len(job_rows) == 200 and job_rows == local_rows
    # and the job decodes them to exactly the latents the in-process run decodes
    jz, lz = _z(job_z), _z(local_z)
    assert jz.keys() == lz.keys() and all(np.array_equal(jz[i], lz[i]) for i in lz)
    print(f"submit, compress, decode on the cluster and locally: {time.monotonic() - t0:.1f} s")


def test_relative_output_is_refused_before_anything_runs(capsys):
    assert jobs.run("compress", ["x.parquet", "--prior", "p.json", "--out", "runs/a"]) == 2
    assert "relative" in capsys.readouterr().err
    assert jobs.relative_output(["r", "--out", "s3://bucket/run"]) is None
    assert jobs.relative_output(["r", "--out=/abs/run"]) is None


def test_address_auto_only_inside_a_job_and_only_where_the_command_takes_it(monkeypatch):
    argv = ["lat.parquet", "--prior", "p.json", "--out", "/r"]
    assert jobs.cli_argv("compress", argv, {}) == ["compress", *argv]
    monkeypatch.setattr(jobs, "command_options", lambda c: {"--out", "--address"})
    in_job = {"RAY_ADDRESS": "10.0.0.1:6379"}
    assert jobs.cli_argv("compress", argv, in_job)[-2:] == ["--address", "auto"]
    mine = [*argv, "--address", "10.0.0.2:6379"]
    assert jobs.cli_argv("compress", mine, in_job) == ["compress", *mine]
    monkeypatch.setattr(jobs, "command_options", lambda c: {"--out"})
    assert jobs.cli_argv("compress", argv, in_job) == ["compress", *argv]


def test_local_head_with_a_worker_node_stops_exactly_what_it_started():
    h = start_head(num_cpus=1)
    nodes = [h]
    try:
        w = start_worker(h, num_cpus=1)
        nodes.append(w)
        mine = {p.pid: p.name() for p in w.processes()}
        assert "raylet" in mine.values() and "gcs_server" not in mine.values()
        head_own = {c.pid for c in _psutil().Process(h.pid).children(recursive=True)}
        assert head_own.isdisjoint(mine)  # the worker node counts only its own processes
    finally:
        reports = [(n, n.stop()) for n in reversed(nodes)]
    for n, r in reports:
        _assert_stopped_cleanly(n, r)
    assert not os.path.exists(h.temp_dir)
