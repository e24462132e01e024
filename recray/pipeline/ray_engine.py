"""The Ray engine: one actor-pool runner for every stage that works part by part.

:func:`run_tasks` runs ``make_worker()(task)`` for a list of tasks on a Ray Data actor pool
(``map_batches`` with a callable class, one task per call): each actor builds its worker
once (a codec spec, a model, tables), errors come back typed, retries and restarts are
Ray's, Ray's logs stay quiet unless ``--verbose``. The stages on it:

* latent runs (:func:`run_ray`): a task is a shard ``(k, start, stop)``; the worker reads
  the shard's rows, codes them and writes ``part-NNNNN.parquet``; the driver receives
  ``(rows, bytes, sha256, totals)`` per shard and writes the manifest;
* decoding runs (:func:`decode_on_ray`): a task is a part file;
* a codec's per-part stages (:func:`map_parts`, via :mod:`recray.pipeline.parts`): MNIST's
  pixel coder and decoder, the INR codec's tiles.

* **Work unit**: one shard, coded whole by one actor (:func:`~recray.pipeline.local_engine.
  code_shard`, the in-process engine's own per-shard code, so both write the same bytes).
  The actor reads only the row groups of its rows (each once) and validates them (errors
  name the item and the field), codes them in batches of ``batch_size`` items and writes
  the part (and its rejected items) itself through a
  :class:`~recray.format.run.PartCommitter`: storage every node shares is required. The
  driver never touches a row: it receives one small summary per shard and writes the
  manifest from them. Shards are the unit of parallelism, so a run needs at least as many
  shards as actors to use them all (``--shard-rows``).
* **Actors**: :class:`TaskActor` is the callable class held by the actor pool
  (``ActorPoolStrategy(size=actors)``); its worker for shards is :class:`ShardWorker`, which
  builds the codec spec once. On GPU nodes
  actors take ``num_gpus=1`` and the CuPy backend; on CPUs they take a *fraction* of a CPU
  (``actor_cpus``), so that Ray Data's own tasks always find a slot.
* **Errors**: an actor never lets a :class:`~recray.errors.RecrayError` escape (Ray would
  hand it to the driver as text inside a ``RayTaskError``): it returns it as a row whose
  ``_error`` column holds the error's type, message and location, and the driver raises
  the same typed error. Under ``on_bad_item="skip"`` a search failure is a reject, written
  by the actor with the shard's part.
* **Faults**: Ray does the retrying; actors get ``max_restarts`` / ``max_task_retries``
  (``retries``), so a node that dies takes its in-flight shards with it and Ray runs them
  again elsewhere. A part file is its shard's commit: a shard retried after its part was
  written is not coded again (its summary is read back), so nothing is ever duplicated;
  ``--resume`` skips committed shards.

Nothing here knows the inside of the search (that is :mod:`recray.rec`) or the message
format (:mod:`recray.format`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import socket
import sys
import time
import warnings
from dataclasses import replace
from functools import partial

import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy

from recray import errors
from recray.errors import BackendError, ClusterError, RecrayError
from recray.latents.io import RowIndex
from recray.pipeline.codec import CodecSpec
from recray.pipeline.local_engine import code_shard
from recray.pipeline.options import DEFAULT_CONNECT_TIMEOUT_S, RayOptions
from recray.pipeline.progress import tick_total
from recray.pipeline.validate import Scan

TASK = "_task"  # the task's position in the list
PAYLOAD = "_payload"  # the task, pickled
RESULT = "_result"  # the worker's value, pickled
ERROR = "_error"  # JSON of a RecrayError the worker raised (null when it returned)


def _probe(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` does not accept a TCP connection within ``timeout`` s (or None)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def check_address(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
    """Fail fast, with one line, when no Ray cluster answers at ``address`` (``auto``,
    ``ray://host:port`` or ``host:port``): the host is resolved and its port tried within
    ``timeout`` seconds, before ``ray.init`` (which would retry for minutes)."""
    what = (
        "check that the cluster is up (ray status on its head), the address and port, and "
        "that this machine can reach it (firewall, VPN); --connect-timeout sets the wait"
    )
    target = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        reason = "no cluster address recorded"
        try:
            target = canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError) as exc:
            target, reason = None, str(exc).splitlines()[0]
        if target is None:
            raise ClusterError(
                f"--address auto: no Ray cluster found on this machine ({reason}); start one "
                "(ray start --head) or give its address"
            )
    hostport = target.split("://", 1)[1] if "://" in target else target
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not host:port, ray://host:port or auto")
    host = host.strip("[]")
    why = _probe(host, int(port), timeout)
    if why is not None:
        shown = address if target == address else f"{address} ({target})"
        raise ClusterError(f"cannot reach a Ray cluster at {shown}: {why}; {what}")


@contextlib.contextmanager
def quiet_ray(verbose: bool):
    """Ray's own logging at ERROR and above unless ``verbose`` (its C++ components only
    fatal lines), and the Python warnings Ray's modules issue (e.g. Ray Data's note that an
    actor pool got fewer inputs than actors) hidden: the run's terminal shows recray's
    lines, the progress bar and the result. The environment, logger levels and warning
    filters are restored afterwards."""
    names = ("ray", "ray.data", "ray.train", "ray.tune")
    saved_levels = {n: logging.getLogger(n).level for n in names}
    saved_env = {k: os.environ.get(k) for k in ("RAY_BACKEND_LOG_LEVEL",)}
    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.filterwarnings("ignore", module=r"ray\.")
            yield
    finally:
        for n, lv in saved_levels.items():
            logging.getLogger(n).setLevel(lv)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _stderr_silenced():
    """The process's stderr (file descriptor 2) to /dev/null for the block: what Ray's C++
    side prints while it starts or joins a cluster (its log-level notice, one warning per
    failed connection attempt) cannot be turned off otherwise. A failure is still raised,
    and reported in one line by the caller."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _connect_budget(target: str | None, timeout: float):
    """Bound ``ray.init``'s own connection attempts (one a second, 20 by default) by
    ``timeout`` when joining ``target``: a port that answers TCP but is no Ray GCS then
    fails in time too. Ray reads this budget from ``RAY_gcs_server_port_wait_time_s``
    when it connects; a value the user set is kept."""
    key = "RAY_gcs_server_port_wait_time_s"
    saved = os.environ.get(key)
    if target and saved is None:
        os.environ[key] = str(max(1, math.ceil(timeout)))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)


@contextlib.contextmanager
def ray_session(
    address: str | None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    verbose: bool = False,
):
    """An initialized Ray for the duration of the block: reuses one that is already up,
    otherwise joins ``address`` (or ``RAY_ADDRESS``, or starts a local one) and shuts it
    down afterwards. An address where no cluster answers fails within ``connect_timeout``
    seconds with one line (:class:`~recray.errors.ClusterError`). Ray's logs stay below
    the terminal unless ``verbose`` (:func:`quiet_ray`)."""
    if ray.is_initialized():
        with quiet_ray(verbose):
            yield
        return
    target = address or os.environ.get("RAY_ADDRESS")
    kw = {"address": address} if address else {}
    if not target:
        kw["include_dashboard"] = False
        # Ray nices its workers to 15 by default; on a machine shared with other work that
        # starves the actors, which *are* this run's work (measured 3-6x slower here)
        os.environ.setdefault("RAY_worker_niceness", "0")
    with quiet_ray(verbose), _connect_budget(target, connect_timeout):
        if target:
            check_address(target, connect_timeout)
        try:
            with contextlib.nullcontext() if verbose else _stderr_silenced():
                ray.init(
                    logging_level=logging.INFO if verbose else logging.ERROR,
                    log_to_driver=verbose,
                    **kw,
                )
        except (ConnectionError, TimeoutError) as exc:
            raise ClusterError(
                f"cannot join the Ray cluster at {target}: {str(exc).splitlines()[0]} "
                f"(the port answers, but no Ray GCS within {connect_timeout:g} s); check the "
                "address and port: host:port is the GCS port (6379 by default), ray:// the "
                "client server's (10001)"
            ) from None
        try:
            yield
        finally:
            ray.shutdown()


class TaskActor:
    """The actor pool's callable class: builds ``make_worker()`` once, then runs one task per
    row of each batch; a :class:`RecrayError` comes back as the row's ``_error`` (its type,
    message and location) instead of escaping into a Ray traceback."""

    def __init__(self, make_worker):
        self.work = make_worker()

    def __call__(self, batch: pa.Table) -> pa.Table:
        results, errs = [], []
        for payload in batch.column(PAYLOAD).to_pylist():
            try:
                results.append(pickle.dumps(self.work(pickle.loads(payload)), protocol=5))
                errs.append(None)
            except RecrayError as exc:
                results.append(None)
                errs.append(_error_doc(exc, True))
        return pa.table(
            {
                TASK: batch.column(TASK),
                RESULT: pa.array(results, pa.binary()),
                ERROR: pa.array(errs, pa.string()),
            }
        )


def run_tasks(
    make_worker,
    tasks: list,
    *,
    opts: RayOptions,
    actors: int,
    actor_res: dict,
    ordered: bool = False,
    what: str = "the Ray pipeline failed",
    hint: str = "--verbose shows Ray's traceback",
):
    """``(i, make_worker()(tasks[i]))`` for every task, computed on a Ray Data pool of
    ``actors`` actors with resources ``actor_res`` (each builds its worker once; one task per
    call, so a retry redoes one task at most), in completion order or, with ``ordered``, in
    task order. Actors are restarted and tasks retried ``opts.retries`` times; a
    :class:`RecrayError` a worker raised is raised here with its type; Ray's own failures
    as one :class:`~recray.errors.ClusterError` line ``"{what}: ... ({hint})"``. Call inside
    :func:`ray_session`. ``make_worker`` and the tasks must be picklable."""
    if not tasks:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = opts.verbose
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = ordered
    with warnings.catch_warnings():
        # Ray 2.60 takes retries and restarts only through the remote-args dicts (named
        # parameters come with 2.64); we pin 2.60, so the deprecation notice is noise
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        rows = [{TASK: i, PAYLOAD: pickle.dumps(t, protocol=5)} for i, t in enumerate(tasks)]
        ds = ray.data.from_items(rows, override_num_blocks=len(tasks)).map_batches(
            TaskActor,
            fn_constructor_kwargs={"make_worker": make_worker},
            batch_size=1,  # one task per call: a retry redoes one task at most
            batch_format="pyarrow",
            # one task in flight per actor: a task is a whole shard, and a second one
            # queued on the first actor to start leaves another idle (Ray Data queues
            # several per actor by default; measured: 131,072 items in 2 shards on 2
            # actors, 76-79 s with both shards coded by one actor, 68 s with one each)
            compute=ActorPoolStrategy(
                size=max(1, min(actors, len(tasks))), max_tasks_in_flight_per_actor=1
            ),
            scheduling_strategy="SPREAD",  # one actor per node first: a lost node
            # takes as few actors as possible, and the rest have room for restarts
            max_restarts=opts.retries,
            max_task_retries=opts.retries,
            resources=opts.resources,
            **actor_res,
        )
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            cols = (batch.column(c).to_pylist() for c in (TASK, RESULT, ERROR))
            for i, value, error in zip(*cols, strict=True):
                if error is not None:
                    _raise_from_doc(json.loads(error))
                yield i, pickle.loads(value)
    except RecrayError:
        raise
    except Exception as exc:
        _reraise(exc, what, opts.verbose, hint)


class ShardWorker:
    """Codes and commits whole shards ``(k, start, stop)`` (:func:`code_shard`, the
    in-process engine's own code, so both engines write the same bytes); returns the
    part's summary (and the backend's label). A shard retried after its part was
    committed is not coded again: its summary is read back."""

    def __init__(self, index, spec, schema, committer, scan, batch_size, on_bad, hook):
        self.index, self.spec, self.schema = index, spec, schema
        self.committer, self.scan, self.batch_size = committer, scan, batch_size
        self.on_bad, self.hook = on_bad, hook
        from recray.backend import get_backend

        # fail at start-up, not on the first shard; the label goes back with each summary,
        # so the driver need not resolve "auto" itself (importing Numba and probing CUDA)
        self.backend_label = get_backend(spec.backend).label

    def __call__(self, shard) -> dict:
        k, a, b = shard
        if self.committer.committed(k):  # a retry after the commit: read it back
            summary = self.committer.summary(k)
        else:
            summary = code_shard(
                self.index,
                (k, a, b),
                self.spec,
                self.schema,
                self.committer,
                batch_size=self.batch_size,
                scan=self.scan,
                on_bad=self.on_bad,
                hook=self.hook,
                workers=1,  # one actor per CPU already overlaps one's messages, another's search
            )
        return summary | {"backend": self.backend_label}


class PartDecodeWorker:
    """Decodes whole parts of a run: the ``(table, nbits)`` pieces of each, cut as the
    in-process decoder cuts them."""

    def __init__(self, run, spec: CodecSpec, schema: pa.Schema, batch_size: int):
        self.run, self.spec, self.schema, self.batch_size = run, spec, schema, batch_size

    def __call__(self, file: str) -> list:
        from recray.pipeline.decode import decode_part

        return list(decode_part(self.run, file, self.spec, self.schema, self.batch_size))


def decode_on_ray(run, spec: CodecSpec, schema: pa.Schema, *, batch_size: int, opts: RayOptions):
    """``(table, rows, nbits)`` of every part of ``run`` in part order, decoded on the actor
    pool (one part per task); the tables are cut exactly as the in-process decoder cuts
    them (``batch_size`` rows per part batch), so the file written from them is the same.
    A fatal error (a message that fails its CRC) is raised with its type."""
    parts = [p["file"] for p in run.manifest["parts"]]
    with ray_session(opts.address, opts.connect_timeout, opts.verbose):
        backend, actors, actor_res = _resources(spec, opts)
        worker = partial(PartDecodeWorker, run, replace(spec, backend=backend), schema, batch_size)
        for _, pieces in run_tasks(
            worker, parts, opts=opts, actors=actors, actor_res=actor_res, ordered=True
        ):
            for t, nbits in pieces:
                yield t, t.num_rows, nbits


def _reraise(exc, what, verbose=False, hint="--verbose shows Ray's traceback"):
    """Re-raise ``exc``, caught around a Ray call, as what the user should see: the recray
    error a worker raised (item, block and field intact), else one :class:`ClusterError`
    line ``"{what}: <Ray's last line> ({hint})"`` for Ray's own failures (``exc`` itself
    when ``what`` is None, with ``verbose`` or for errors that are not Ray's)."""
    cause = _recray_cause(exc)
    if cause is not None:
        raise type(cause)(str(cause), block=cause.block, dim=cause.dim) from None
    if what is None or verbose or not isinstance(exc, ray.exceptions.RayError):
        raise exc
    raise ClusterError(f"{what}: {_last_line(exc)} ({hint})") from None


def _error_doc(exc: RecrayError, fatal: bool) -> str:
    return json.dumps(
        {
            "fatal": fatal,
            "type": type(exc).__name__,
            "message": str(exc),
            "dim": exc.dim,
            "block": exc.block,
        }
    )


def _raise_from_doc(doc: dict):
    cls = getattr(errors, doc.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, RecrayError)):
        cls = RecrayError
    raise cls(doc["message"], block=doc.get("block"), dim=doc.get("dim"))


def _recray_cause(exc: BaseException) -> RecrayError | None:
    """The :class:`RecrayError` behind a Ray / Ray Data exception, if there is one (Ray
    wraps an actor's exception in ``RayTaskError`` / ``UserCodeException``)."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, RecrayError) and not hasattr(e, "cause"):
            return e
        stack.extend([cause, e.__cause__, e.__context__])
    return None


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's text: Ray puts the original error there."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _resources(spec: CodecSpec, opts: RayOptions) -> tuple[str, int, dict]:
    """Backend, pool size and per-actor resources from the cluster and the options."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    backend = spec.backend
    if backend is None or backend == "auto":
        # GPU actors run the CUDA kernel; CPU actors pick the fastest CPU backend themselves
        backend = "cuda" if gpus > 0 else None
    if backend in ("cupy", "cuda"):
        if gpus == 0:
            raise BackendError(
                f"backend {backend!r} asks for GPU actors but the Ray cluster has no GPUs; "
                "use --backend numba (or numpy) or join a cluster with GPU nodes"
            )
        actors = opts.actors or gpus
        return backend, actors, {"num_gpus": 1, "num_cpus": min(opts.actor_cpus, 1.0)}
    cpus = max(1, int(res.get("CPU", 1)))
    actors = opts.actors or cpus
    if opts.actor_cpus <= 0:
        raise BackendError(f"actor_cpus must be > 0; got {opts.actor_cpus}")
    return backend, actors, {"num_cpus": opts.actor_cpus}


def _task_options(opts: RayOptions, cpus: float | None = None) -> dict:
    if opts.actor_cpus <= 0:
        raise BackendError(f"actor_cpus must be > 0; got {opts.actor_cpus}")
    kw = {
        "num_cpus": opts.actor_cpus if cpus is None else cpus,
        "max_retries": opts.retries,
        "scheduling_strategy": "SPREAD",
    }
    if opts.resources:
        kw["resources"] = opts.resources
    return kw


def _checked_call(fn, *args):
    """``("ok", fn(*args))``, or ``("error", doc)`` for a :class:`RecrayError` (the driver
    raises it again with its type: no Ray traceback reaches the terminal)."""
    try:
        return "ok", fn(*args)
    except RecrayError as exc:
        return "error", _error_doc(exc, True)


def _gather(refs: list) -> list:
    """The values of ``refs`` (in order), each error raised again with its type."""
    try:
        out = ray.get(refs)
    except RecrayError:
        raise
    except Exception as exc:
        _reraise(exc, "a Ray task failed")
    for status, value in out:
        if status == "error":
            _raise_from_doc(json.loads(value))
    return [v for _, v in out]


def validate_on_ray(
    index: RowIndex,
    shards: list[tuple[int, int]],
    spec: CodecSpec,
    scratch,
    *,
    opts: RayOptions,
    range_items: int | None = None,
) -> Scan:
    """The validation pass of :func:`recray.pipeline.validate.scan_shards` as Ray tasks:
    one task per shard validates it and writes its ids, sorted into hash ranges, to
    ``scratch`` (storage every node reaches; the caller removes it); then one task per hash
    range finds the repeated ids. The driver holds only the shards' rejects: O(shards), not
    O(items). Same rejects, same order, as the in-process pass."""
    from recray.pipeline import validate as v

    t0 = time.perf_counter()
    ranges = v.n_ranges(index.n_rows, range_items or v.RANGE_ITEMS)
    scratch.makedirs()
    with ray_session(opts.address, opts.connect_timeout, opts.verbose):
        idx, sp = ray.put(index), ray.put(replace(spec, backend=None))
        kw = _task_options(opts)
        check = ray.remote(_call).options(**kw)
        refs = [
            check.remote(v.check_shard, idx, (k, a, b), sp, {"ranges": ranges, "sink": scratch})
            for k, (a, b) in enumerate(shards)
        ]
        checks = _gather(refs)
        files = [scratch.child(v.id_file(k)) for k in range(len(shards))]
        dups = _gather([check.remote(v.check_range, idx, h, files, {}) for h in range(ranges)])
    return v.merge_checks(index.n_rows, checks, dups, time.perf_counter() - t0)


def _call(fn, *args):
    """A Ray task's body: ``fn(*args[:-1], **args[-1])`` as :func:`_checked_call` returns it."""
    *pos, kw = args
    return _checked_call(lambda: fn(*pos, **kw))


def map_parts(make_worker, tasks: list, *, opts: RayOptions, cpus: float | None = None):
    """``make_worker()(task)`` for every task, on the actor pool (each actor builds its
    worker once: a model, tables), yielded in task order: what a codec's per-part stage
    runs on Ray (:mod:`recray.pipeline.parts`). ``make_worker`` must be picklable; a
    :class:`RecrayError` raised by a worker is raised here with its type."""
    if not tasks:
        return
    with ray_session(opts.address, opts.connect_timeout, opts.verbose):
        actors = opts.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        res = {"num_cpus": _task_options(opts, cpus)["num_cpus"]}
        for _, value in run_tasks(
            make_worker,
            tasks,
            opts=opts,
            actors=actors,
            actor_res=res,
            ordered=True,
            what="a Ray actor failed",
        ):
            yield value


def run_ray(
    index: RowIndex,
    pending: list[tuple[int, int, int]],
    spec: CodecSpec,
    schema: pa.Schema,
    writer,
    *,
    batch_size: int,
    opts: RayOptions,
    scan: Scan,
    on_bad: str = "fail",
    progress=None,
) -> dict:
    """Code the ``pending`` shards ``(k, start, stop)`` on Ray and commit each one through
    ``writer`` as it completes, with its rejected items (``scan``'s, and with
    ``on_bad="skip"`` those a search failed on); a fatal error is raised with its type.
    Returns ``{"actors", "backend"}`` as used and ``driver_seconds``, the time the driver
    itself spent on rows (the serial part)."""
    if not pending:
        return {"actors": 0, "backend": spec.backend, "driver_seconds": 0.0}
    with ray_session(opts.address, opts.connect_timeout, opts.verbose):
        backend, actors, actor_res = _resources(spec, opts)
        worker = partial(
            ShardWorker,
            index,
            replace(spec, backend=backend),
            schema,
            writer.committer,
            scan,
            batch_size,
            on_bad,
            opts.on_batch,
        )
        driver_s = 0.0  # time the driver spends per shard (its serial part)
        todo = {k for k, _, _ in pending}
        labels = []  # the backend the actors resolved
        for i, s in run_tasks(
            worker,
            pending,
            opts=opts,
            actors=actors,
            actor_res=actor_res,
            hint="committed parts are kept: run again with --resume; --verbose shows Ray's "
            "traceback",
        ):
            t0 = time.perf_counter()
            k = pending[i][0]
            labels.append(s.pop("backend", None))
            writer.record(k, s)
            todo.discard(k)
            if progress is not None:
                tick_total(progress, s["rows"] + s["rejects"], 8 * s["payload_bytes"], s["rows"])
            driver_s += time.perf_counter() - t0
        if todo:
            missing = sorted(todo)
            raise RecrayError(
                f"Ray Data finished without delivering every row of shards {missing[:5]}; "
                "run again with --resume"
            )
    if backend is None:  # CPU actors resolved "auto"; the label came with the summaries
        backend = next((b for b in labels if b), None)
        if backend is None:
            from recray.backend import get_backend

            backend = get_backend("auto").label
    return {"actors": actors, "backend": backend, "driver_seconds": driver_s}
