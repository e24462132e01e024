"""A codec's per-part stage, in this process or on Ray: one task per part of a run.

A codec run (e.g. ``recray codec mnist``) has stages after the latent search that work
part by part: coding the data's tail under ``p(x | z)`` and committing the codec run's
part, or decoding a part's messages back into data. :func:`map_parts` runs such a stage
with the same shard structure as ``recray decompress --engine ray``: one task per part,
on a pool of Ray actors (each builds its worker once: a model, tables) or here, one part
after another. The worker is a pure function of its part, and results come back in part
order, so both engines give the same bytes.
"""

from __future__ import annotations

import contextlib

from recray.errors import InputError
from recray.pipeline.options import RayOptions

ENGINES = ("ray", "local")


def session(engine: str, opts: RayOptions | None):
    """One Ray for several stages (``engine="ray"``; nothing otherwise): the stages inside
    reuse it instead of starting their own."""
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}; got {engine!r}")
    if engine != "ray":
        return contextlib.nullcontext()
    from recray.pipeline.ray_engine import ray_session

    opts = opts or RayOptions()
    return ray_session(opts.address, opts.connect_timeout, opts.verbose)


def map_parts(make_worker, tasks: list, *, engine: str = "local", opts: RayOptions | None = None):
    """``worker(task)`` for every task, in task order, where ``worker = make_worker()``
    (built once here, or once per actor on Ray; ``make_worker`` must then be picklable).
    A :class:`~recray.errors.RecrayError` raised by a worker is raised here with its
    type."""
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}; got {engine!r}")
    if engine == "local":
        if tasks:
            worker = make_worker()
            for t in tasks:
                yield worker(t)
        return
    from recray.pipeline.ray_engine import map_parts as on_ray

    yield from on_ray(make_worker, tasks, opts=opts or RayOptions())
