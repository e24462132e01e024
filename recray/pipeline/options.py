"""Options of the Ray engine (here so that callers need not import Ray)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Seconds to wait for a Ray cluster at an explicit address before failing.
DEFAULT_CONNECT_TIMEOUT_S = 30.0

#: From this many input items on, the Ray engine validates on Ray tasks by default: below,
#: the driver's pass (~6.5 us per item, under ~7 s) costs less than starting the task
#: workers (each imports recray and compiles its kernels: ~7 s on a loaded 2-core box).
VALIDATE_ON_RAY_ROWS = 1 << 20


@dataclass(frozen=True)
class RayOptions:
    """How the run uses Ray.

    ``address``: ``None`` starts a local Ray (or uses ``RAY_ADDRESS`` / an initialized
    Ray), ``"auto"`` joins the cluster on this machine, ``"ray://host:10001"`` a remote
    one. ``actors``: actor pool size (default: one per GPU, else one per CPU).
    ``actor_cpus``: CPUs each NumPy actor reserves (fractional on purpose, see the module
    docstring). ``retries``: read-task retries and actor restarts / task retries.
    ``resources``: custom Ray resources each actor asks for (e.g. ``{"encoder": 1}`` to
    keep actors on nodes started with ``--resources '{"encoder": 2}'``).
    ``on_batch``: instrumentation, called inside the actor before it codes a batch, with
    the batch's shard and row numbers (int64 arrays); it must be picklable (cloudpickle).
    The fault tests use it to hold actors mid-batch and see which node retried what.
    ``connect_timeout``: seconds to wait for a cluster at ``address`` / ``RAY_ADDRESS``
    before failing with one line. ``verbose``: Ray's own logs, worker output and Ray Data's
    per-operator progress bars (off by default). ``validate_on_ray``: where the validation
    pass runs: Ray tasks (``True``: the driver's work is O(shards)), the driver (``False``:
    shard by shard, the ids spilled to files, memory O(shard), time ~6.5 us per item) or,
    by default, Ray tasks from :data:`VALIDATE_ON_RAY_ROWS` items on (below that, starting
    task workers costs more than the driver's pass).
    """

    address: str | None = None
    actors: int | None = None
    actor_cpus: float = 0.5
    retries: int = 4
    resources: dict | None = None
    on_batch: Callable | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    verbose: bool = False
    validate_on_ray: bool | None = None
