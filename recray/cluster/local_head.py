"""A real Ray head node (and worker nodes) on this machine, started and stopped by us.

``start_head`` runs ``ray start --head --block`` as a child process with its own free ports
and its own temporary directory, and waits until the job server answers, so that
``ray job submit --address <head.dashboard_url>`` works against it. ``Head.stop`` ends
exactly what it started: it sends SIGTERM to the ``ray start --block`` process (which tears
down the GCS, raylet, dashboard, agents and workers of its node), waits, then checks every
process it had seen belonging to the node (descendants of that process, and any process
whose command line names the node's temporary directory) and terminates any survivor by
PID. It never runs ``ray stop`` (which would stop every Ray node of the user on the
machine) and never kills by name.

Used by the job-submission test and by ``cluster/local_multinode.py``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

# Environment that keeps a test or a laptop cluster quiet and self-contained.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
}

# ports `ray start` would otherwise take from fixed defaults (and so collide with another
# node on the machine); each gets a free port of its own
_HEAD_PORTS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
)
_WORKER_PORTS = _HEAD_PORTS[3:]


def _psutil():
    try:
        import psutil
    except ImportError:  # Ray vendors psutil and puts it on sys.path when imported
        import ray  # noqa: F401

        psutil = importlib.import_module("psutil")
    return psutil


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free now (held open together, so no duplicates)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_cli() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    return exe if os.path.exists(exe) else (shutil.which("ray") or "ray")


@dataclass
class StopReport:
    """What ``stop`` found: ``exit_code`` of ``ray start --block``; ``survivors``: the
    processes of the node still alive after it exited (``(pid, name)``), which ``stop``
    then terminated itself; ``alive_after``: any still alive at the end (should be empty)."""

    exit_code: int | None
    survivors: list[tuple[int, str]] = field(default_factory=list)
    alive_after: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Node:
    """One ``ray start --block`` process and the node it runs."""

    proc: subprocess.Popen
    temp_dir: str
    ports: dict[str, int]
    log_path: str
    # also count as ours any process naming temp_dir (head: the directory is ours alone;
    # worker nodes share the head's, so they count only their own descendants)
    match_temp_dir: bool = False
    _seen: set = field(default_factory=set, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def processes(self) -> list:
        """The live processes of this node: descendants of the ``ray start`` process and any
        process whose command line names the node's temporary directory."""
        ps = _psutil()
        found = {}
        try:
            root = ps.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                found[p.pid] = p
        except ps.NoSuchProcess:
            pass
        for p in ps.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or ())
            except (ps.NoSuchProcess, ps.AccessDenied):
                continue
            if self.match_temp_dir and self.temp_dir in cmd and p.pid != os.getpid():
                found.setdefault(p.pid, p)
        for p in found.values():
            try:
                self._seen.add((p.pid, p.create_time()))
            except ps.NoSuchProcess:
                pass
        return list(found.values())

    def _alive_seen(self) -> list:
        ps = _psutil()
        alive = []
        for pid, created in self._seen:
            try:
                p = ps.Process(pid)
                if p.create_time() == created and p.status() != ps.STATUS_ZOMBIE:
                    alive.append(p)
            except ps.NoSuchProcess:
                pass
        return alive

    def stop(self, timeout: float = 30.0) -> StopReport:
        """SIGTERM to ``ray start --block``, wait; then terminate any process of the node
        that outlived it (by PID, SIGTERM then SIGKILL). Idempotent."""
        ps = _psutil()
        self.processes()  # record what belongs to the node right before stopping
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # the node's processes exit on their own once the raylet and GCS are gone; give
        # them a moment before deciding who outlived the node
        deadline = time.monotonic() + 10.0
        while self._alive_seen() and time.monotonic() < deadline:
            time.sleep(0.2)
        # anything new that names our temp dir (started while we waited) counts as well
        self.processes()
        survivors = self._alive_seen()
        report = StopReport(exit_code=self.proc.returncode)
        for p in survivors:
            try:
                report.survivors.append((p.pid, p.name()))
                p.terminate()
            except ps.NoSuchProcess:
                pass
        _, still = ps.wait_procs(survivors, timeout=5)
        for p in still:
            try:
                p.kill()
            except ps.NoSuchProcess:
                pass
        ps.wait_procs(still, timeout=5)
        report.alive_after = [(p.pid, p.name()) for p in self._alive_seen()]
        return report


@dataclass
class Head(Node):
    """A head node: ``address`` (GCS, ``host:port``, for ``ray.init`` and worker nodes)
    and ``dashboard_url`` (for ``ray job submit --address``)."""

    owns_temp_dir: bool = False

    @property
    def address(self) -> str:
        # the address `ray start` wrote once the node was up (its node IP, GCS port)
        try:
            with open(os.path.join(self.temp_dir, "ray_current_cluster")) as f:
                written = f.read().strip()
        except OSError:
            written = ""
        return written or f"127.0.0.1:{self.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    def stop(self, timeout: float = 30.0) -> StopReport:
        report = super().stop(timeout)
        if self.owns_temp_dir and not report.alive_after:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return report


def _env(temp_dir: str, extra: dict | None) -> dict:
    env = dict(os.environ)
    env.update(QUIET_ENV)
    env["RAY_TMPDIR"] = temp_dir
    # the job driver runs `python ...` through the shell of the node: make that the
    # interpreter (and the `ray` CLI) of this environment
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.pop("RAY_ADDRESS", None)
    if extra:
        env.update(extra)
    return env


def _spawn(args: list[str], temp_dir: str, env: dict, log_name: str):
    log_path = os.path.join(temp_dir, log_name)
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(
            [_ray_cli(), "start", "--block", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            # own process group: a Ctrl-C in the terminal reaches our launcher, which
            # then stops the nodes in order, instead of every process at once
            start_new_session=True,
        )
    finally:
        log.close()
    return proc, log_path


def _tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return ""


def _job_server_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/version", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_head(
    temp_dir: str | None = None,
    num_cpus: int = 2,
    *,
    num_gpus: int | None = None,
    object_store_memory: int = 256 * 1024**2,
    env: dict | None = None,
    timeout: float = 60.0,
) -> Head:
    """Start ``ray start --head --block`` on free ports; return once the job server answers.

    ``temp_dir``: Ray's root temporary directory (keep it short: Unix socket paths are
    limited to ~107 characters); by default a fresh ``/tmp/rr*`` directory that ``stop``
    removes. Raises ``RuntimeError`` (with the tail of the node's log) if the node does not
    come up within ``timeout`` seconds; the partial node is stopped first.
    """
    owns = temp_dir is None
    if owns:
        temp_dir = tempfile.mkdtemp(prefix="rr", dir="/tmp" if os.path.isdir("/tmp") else None)
    os.makedirs(temp_dir, exist_ok=True)
    ports = dict(zip(_HEAD_PORTS, free_ports(len(_HEAD_PORTS)), strict=True))
    args = ["--head", "--temp-dir", temp_dir, "--num-cpus", str(num_cpus)]
    args += ["--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1"]
    args += ["--include-dashboard", "true", "--disable-usage-stats"]
    # workers bind OS-chosen ports, not the shared default range 10002-19999
    args += ["--min-worker-port", "0", "--max-worker-port", "0"]
    args += ["--object-store-memory", str(int(object_store_memory))]
    if num_gpus is not None:
        args += ["--num-gpus", str(num_gpus)]
    for name, port in ports.items():
        args += [f"--{name}", str(port)]
    proc, log_path = _spawn(args, temp_dir, _env(temp_dir, env), "ray-start-head.log")
    head = Head(
        proc=proc,
        temp_dir=temp_dir,
        ports=ports,
        log_path=log_path,
        match_temp_dir=True,
        owns_temp_dir=owns,
    )
    deadline = time.monotonic() + timeout
    # `ray start` writes ray_current_cluster once every process of the node is up
    written = os.path.join(temp_dir, "ray_current_cluster")
    while not (os.path.exists(written) and _job_server_answers(head.dashboard_url)):
        head.processes()
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "exited" if proc.poll() is not None else f"not ready after {timeout:.0f} s"
            tail = _tail(log_path)  # before stop() removes the directory
            head.stop()
            raise RuntimeError(f"Ray head node {why}; its log ends:\n{tail}")
        time.sleep(0.25)
    head.processes()
    return head


def start_worker(
    head: Head,
    num_cpus: int = 1,
    *,
    num_gpus: int | None = None,
    resources: str | None = None,
    object_store_memory: int = 256 * 1024**2,
    env: dict | None = None,
    timeout: float = 60.0,
) -> Node:
    """Start a worker node (``ray start --address <head> --block``) on this machine, in the
    head's temporary directory, on free ports; return once it has registered with the GCS
    (its raylet is up)."""
    ports = dict(zip(_WORKER_PORTS, free_ports(len(_WORKER_PORTS)), strict=True))
    args = ["--address", head.address, "--num-cpus", str(num_cpus)]
    args += ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    args += ["--min-worker-port", "0", "--max-worker-port", "0"]
    args += ["--object-store-memory", str(int(object_store_memory))]
    if num_gpus is not None:
        args += ["--num-gpus", str(num_gpus)]
    if resources:
        args += ["--resources", resources]
    for name, port in ports.items():
        args += [f"--{name}", str(port)]
    n = sum(1 for f in os.listdir(head.temp_dir) if f.startswith("ray-start-worker"))
    proc, log_path = _spawn(
        args, head.temp_dir, _env(head.temp_dir, env), f"ray-start-worker-{n}.log"
    )
    node = Node(proc=proc, temp_dir=head.temp_dir, ports=ports, log_path=log_path)
    deadline = time.monotonic() + timeout
    ps = _psutil()
    while True:
        raylets = [p for p in node.processes() if "raylet" in p.name()]
        if raylets and _raylet_listening(ps, raylets[0], ports["node-manager-port"]):
            return node
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "exited" if proc.poll() is not None else f"not ready after {timeout:.0f} s"
            tail = _tail(log_path)
            node.stop()
            raise RuntimeError(f"Ray worker node {why}; its log ends:\n{tail}")
        time.sleep(0.25)


def _raylet_listening(ps, proc, port: int) -> bool:
    try:
        return any(c.laddr and c.laddr.port == port for c in proc.net_connections("inet"))
    except (ps.NoSuchProcess, ps.AccessDenied):
        return False
