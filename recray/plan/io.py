"""Plan files: what ``recray fit`` writes and ``recray compress --plan`` reads."""

from __future__ import annotations

import json

import numpy as np

from recray.errors import InputError, PlanError
from recray.format.storage import resolve
from recray.plan import CodecPlan


def load_plan(plan) -> CodecPlan:
    """A :class:`CodecPlan`, or the one in the plan JSON file at ``plan`` (a path or URI)."""
    if isinstance(plan, CodecPlan):
        return plan
    try:
        text = resolve(str(plan)).read_text()
    except FileNotFoundError:
        raise InputError(f"plan file {plan!r} does not exist") from None
    except OSError as exc:
        raise InputError(f"plan file {plan!r} cannot be read: {exc}") from None
    try:
        return CodecPlan.from_json(text)
    except PlanError as exc:
        raise PlanError(f"plan file {plan!r}: {exc}") from None


def write_plan(plan: CodecPlan, path: str) -> None:
    """Write ``plan`` as indented JSON (:meth:`CodecPlan.to_dict`), atomically."""
    loc = resolve(path)
    loc.write_text(json.dumps(plan.to_dict(), indent=1, sort_keys=True) + "\n")


def check_plan_for(plan: CodecPlan, prior) -> CodecPlan:
    """``plan`` if it was built for ``prior`` (the same dimension count and per-dimension
    information, which the plan's blocks and partitions come from), else a
    :class:`PlanError` naming the field."""
    if plan.dim != prior.dim:
        raise PlanError(
            f"plan field dim = {plan.dim} but the prior has D = {prior.dim}: the plan was "
            "built for another model"
        )
    mi = np.asarray(plan.mi_bits)
    if not np.array_equal(mi, prior.mi_bits):
        d = int(np.argmax(mi != prior.mi_bits))
        raise PlanError(
            f"plan field mi_bits[{d}] = {mi[d]!r} but the prior's mutual_information_bits[{d}] "
            f"= {prior.mi_bits[d]!r}: the plan was built from another prior"
        )
    return plan
