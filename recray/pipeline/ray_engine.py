"""The Ray engine: a Ray Data pipeline that codes a latent data set on an actor pool whose
actors commit their own parts.

    pending shards (k, start, stop) --map_batches(ShardCoder, ActorPoolStrategy)-->
        each actor: read the shard's rows, code them, write part-NNNNN.parquet
        --> the driver: (shard, rows, bytes, sha256, totals) per shard --> manifest

* **Work unit**: one shard, coded whole by one actor (:func:`~recray.pipeline.local_engine.
  code_shard`, the in-process engine's own per-shard code, so both write the same bytes).
  The actor reads only the row groups of its rows (each once) and validates them (errors
  name the item and the field), codes them in batches of ``batch_size`` items and writes
  the part (and its rejected items) itself through a
  :class:`~recray.format.run.PartCommitter`: storage every node shares is required. The
  driver never touches a row: it receives one small summary per shard and writes the
  manifest from them. Shards are the unit of parallelism, so a run needs at least as many
  shards as actors to use them all (``--shard-rows``).
* **Actors**: :class:`ShardCoder` is a callable class held by an actor pool
  (``ActorPoolStrategy(size=actors)``). Each actor builds the codec spec once. On GPU nodes
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
import socket
import sys
import time
import warnings
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc
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

SHARD = "_shard"
PART = "_part"  # the part a decoded row comes from
NBITS = "_nbits"  # its message's length in bits
SUMMARY = "_summary"  # JSON: the part's rows, bytes, sha256 and totals
ERROR = "_error"  # JSON of a fatal error, null for a committed shard


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


class ShardCoder:
    """The actor's callable: codes and commits whole shards, one row ``(_shard, _summary,
    _error)`` each (the summary as JSON; a fatal error as ``_error``)."""

    def __init__(
        self,
        index: RowIndex,
        spec: CodecSpec,
        schema: pa.Schema,
        committer,
        scan: Scan,
        batch_size: int,
        on_bad: str = "fail",
        hook=None,
    ):
        self.index = index
        self.spec = spec
        self.schema = schema
        self.committer = committer
        self.scan = scan
        self.batch_size = batch_size
        self.on_bad = on_bad
        self.hook = hook
        from recray.backend import get_backend

        # fail at start-up, not on the first shard; the label goes back with each summary,
        # so the driver need not resolve "auto" itself (importing Numba and probing CUDA)
        self.backend_label = get_backend(spec.backend).label

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = {SHARD: [], SUMMARY: [], ERROR: []}
        for k, a, b in zip(
            *(batch.column(c).to_pylist() for c in ("shard", "start", "stop")), strict=True
        ):
            summary = error = None
            try:
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
                    )
            except RecrayError as exc:  # back to the driver as a row, with its type
                error = _error_doc(exc, True)
            out[SHARD].append(k)
            if summary is not None:
                summary = summary | {"backend": self.backend_label}
            out[SUMMARY].append(None if summary is None else json.dumps(summary))
            out[ERROR].append(error)
        return pa.table(
            {
                SHARD: pa.array(out[SHARD], pa.int64()),
                SUMMARY: pa.array(out[SUMMARY], pa.string()),
                ERROR: pa.array(out[ERROR], pa.string()),
            }
        )


class PartDecoder:
    """The actor's callable for ``decompress``: decodes whole parts, the rows ``id``, ``z``
    of each plus ``_part``, ``_nbits`` (its message's bits) and ``_error`` (a fatal error,
    with its type, as one row)."""

    def __init__(self, run, spec: CodecSpec, schema: pa.Schema, batch_size: int):
        self.run = run
        self.spec = spec
        self.schema = schema
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        from recray.pipeline.decode import decode_part

        out = []
        for file in batch.column("part").to_pylist():
            try:
                for t, nbits in decode_part(
                    self.run, file, self.spec, self.schema, self.batch_size
                ):
                    out.append(self._tag(t, file, nbits, None))
            except RecrayError as exc:
                err = pa.table({f.name: pa.nulls(1, f.type) for f in self.schema})
                out.append(self._tag(err, file, pa.array([0], pa.int64()), _error_doc(exc, True)))
        if not out:  # parts that hold no item (every one rejected at compress)
            empty = self.schema.empty_table()
            return self._tag(empty, "", pa.array([], pa.int64()), None)
        return pa.concat_tables(out)

    def _tag(self, t: pa.Table, file: str, nbits, error) -> pa.Table:
        n = t.num_rows
        return (
            t.append_column(PART, pa.array([file] * n, pa.string()))
            .append_column(NBITS, nbits.cast(pa.int64()))
            .append_column(ERROR, pa.array([error] * n, pa.string()))
        )


def decode_on_ray(run, spec: CodecSpec, schema: pa.Schema, *, batch_size: int, opts: RayOptions):
    """``(table, rows, nbits)`` of every part of ``run`` in part order, decoded on a Ray
    actor pool (one part per task); the tables are cut exactly as the in-process decoder
    cuts them (``batch_size`` rows per part batch), so the file written from them is the
    same. A fatal error (a message that fails its CRC) is raised with its type."""
    parts = run.manifest["parts"]
    with ray_session(opts.address, opts.connect_timeout, opts.verbose):
        backend, actors, actor_res = _resources(spec, opts)
        spec = replace(spec, backend=backend)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = opts.verbose
        ctx.print_on_execution_start = False
        ctx.execution_options.preserve_order = True
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ray.data.from_items(
                [{"part": p["file"]} for p in parts], override_num_blocks=len(parts)
            ).map_batches(
                PartDecoder,
                fn_constructor_kwargs={
                    "run": run,
                    "spec": spec,
                    "schema": schema,
                    "batch_size": batch_size,
                },
                batch_size=1,
                batch_format="pyarrow",
                compute=ActorPoolStrategy(size=min(actors, len(parts))),
                scheduling_strategy="SPREAD",
                max_restarts=opts.retries,
                max_task_retries=opts.retries,
                resources=opts.resources,
                **actor_res,
            )
        rows = {p["file"]: p["rows"] for p in parts}
        pending: list[pa.Table] = []
        have = 0
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                if batch.column(ERROR).null_count < batch.num_rows:
                    i = next(j for j, e in enumerate(batch.column(ERROR).to_pylist()) if e)
                    _raise_from_doc(json.loads(batch.column(ERROR)[i].as_py()))
                # a part's rows arrive in order, possibly in several blocks: gather the
                # part, then hand it out in the in-process decoder's batches
                for file in _runs_of(batch.column(PART).to_pylist()):
                    piece = batch.filter(pc.equal(batch.column(PART), file))
                    pending.append(piece)
                    have += piece.num_rows
                    if have == rows[file]:
                        whole = pa.concat_tables(pending)
                        pending, have = [], 0
                        for a in range(0, whole.num_rows, batch_size):
                            t = whole.slice(a, batch_size)
                            yield t.select(schema.names), t.num_rows, t.column(NBITS)
        except RecrayError:
            raise
        except Exception as exc:
            _reraise(exc, None)


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


def _runs_of(values: list) -> list:
    """The distinct values of a list in order of first appearance."""
    return list(dict.fromkeys(values))


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
    """``make_worker()(task)`` for every task, on a pool of Ray actors (each builds its
    worker once: a model, tables), yielded in task order: what a codec's per-part stage
    runs on Ray (:mod:`recray.pipeline.parts`). ``make_worker`` must be picklable; a
    :class:`RecrayError` raised by a worker is raised here with its type."""
    from ray.util import ActorPool

    if not tasks:
        return
    with ray_session(opts.address, opts.connect_timeout, opts.verbose):
        actors = opts.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        kw = _task_options(opts, cpus)
        kw.pop("max_retries")
        kw |= {"max_restarts": opts.retries, "max_task_retries": opts.retries}
        pool = [
            _PartWorker.options(**kw).remote(make_worker)
            for _ in range(max(1, min(actors, len(tasks))))
        ]
        try:
            for status, value in ActorPool(pool).map(lambda a, t: a.run.remote(t), tasks):
                if status == "error":
                    _raise_from_doc(json.loads(value))
                yield value
        except RecrayError:
            raise
        except Exception as exc:
            _reraise(exc, "a Ray actor failed", opts.verbose)
        finally:
            for a in pool:
                ray.kill(a)


@ray.remote
class _PartWorker:
    def __init__(self, make_worker):
        self.work = make_worker()

    def run(self, task):
        return _checked_call(self.work, task)


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
        spec = replace(spec, backend=backend)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = opts.verbose
        ctx.print_on_execution_start = False
        with warnings.catch_warnings():
            # Ray 2.60 takes retries and restarts only through the remote-args dicts (named
            # parameters come with 2.64); we pin 2.60, so the deprecation notice is noise
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            shards = ray.data.from_items(
                [{"shard": k, "start": a, "stop": b} for k, a, b in pending],
                override_num_blocks=len(pending),
            )
            ds = shards.map_batches(
                ShardCoder,
                fn_constructor_kwargs={
                    "index": index,
                    "spec": spec,
                    "schema": schema,
                    "committer": writer.committer,
                    "scan": scan,
                    "batch_size": batch_size,
                    "on_bad": on_bad,
                    "hook": opts.on_batch,
                },
                batch_size=1,  # one shard per call: a retry redoes one shard at most
                batch_format="pyarrow",
                compute=ActorPoolStrategy(size=actors),
                scheduling_strategy="SPREAD",  # one actor per node first: a lost node
                # takes as few actors as possible, and the rest have room for restarts
                max_restarts=opts.retries,
                max_task_retries=opts.retries,
                resources=opts.resources,
                **actor_res,
            )
        driver_s = 0.0  # time the driver spends per shard (its serial part)
        todo = {k for k, _, _ in pending}
        labels = []  # the backend the actors resolved
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                t0 = time.perf_counter()
                for k, summary, error in zip(
                    *(batch.column(c).to_pylist() for c in (SHARD, SUMMARY, ERROR)), strict=True
                ):
                    if error is not None:
                        _raise_from_doc(json.loads(error))
                    s = json.loads(summary)
                    labels.append(s.pop("backend", None))
                    writer.record(k, s)
                    todo.discard(k)
                    if progress is not None:
                        tick_total(progress, s["rows"] + s["rejects"], 8 * s["payload_bytes"],
                                   s["rows"])  # fmt: skip
                driver_s += time.perf_counter() - t0
        except RecrayError:
            raise
        except Exception as exc:
            _reraise(
                exc,
                "the Ray pipeline failed",
                opts.verbose,
                "committed parts are kept: run again with --resume; --verbose shows Ray's "
                "traceback",
            )
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
