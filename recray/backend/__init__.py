"""The array-backend switch: one code path for NumPy (CPU) and CuPy (GPU).

Algorithm code asks :func:`get_backend` for a :class:`Backend` and uses ``be.xp`` (the array
module) and ``be.special`` (``ndtri``, ``log_ndtr``) only; it never imports numpy/cupy
itself for array work. Resolution order: the explicit ``name`` argument, then the
``RECRAY_BACKEND`` environment variable, then ``"numpy"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from recray.errors import BackendError

BACKENDS = ("numpy", "cupy")


@dataclass(frozen=True)
class Special:
    """The special functions the algorithms need, from scipy.special or cupyx.scipy.special."""

    ndtri: Any
    log_ndtr: Any


@dataclass(frozen=True)
class Backend:
    """An array module and its special functions.

    ``xp`` is ``numpy`` or ``cupy``; ``asarray`` moves host data to the device;
    ``to_numpy`` brings device data back to the host (a no-op for NumPy).
    """

    name: str
    xp: ModuleType
    special: Special

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        if self.name == "numpy":
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def errstate(self):
        """Silence floating-point warnings of branches that ``where`` later discards."""
        if self.name == "numpy":
            return np.errstate(all="ignore")
        import contextlib

        return contextlib.nullcontext()


_CACHE: dict[str, Backend] = {}


def resolve_name(name: str | None = None) -> str:
    chosen = name if name is not None else os.environ.get("RECRAY_BACKEND", "numpy")
    chosen = str(chosen).strip().lower()
    if chosen not in BACKENDS:
        raise BackendError(
            f"unknown backend {chosen!r} (from "
            f"{'the backend argument' if name is not None else 'RECRAY_BACKEND'}): "
            f"choose one of {', '.join(BACKENDS)}"
        )
    return chosen


def get_backend(name: str | Backend | None = None) -> Backend:
    """Return the backend called ``name`` (or the default, see module docstring).

    Raises :class:`BackendError` when CuPy is asked for but cannot be imported or sees no
    CUDA device.
    """
    if isinstance(name, Backend):
        return name
    chosen = resolve_name(name)
    if chosen in _CACHE:
        return _CACHE[chosen]
    if chosen == "numpy":
        import scipy.special as sps

        be = Backend("numpy", np, Special(ndtri=sps.ndtri, log_ndtr=sps.log_ndtr))
    else:
        try:
            import cupy
            import cupyx.scipy.special as cps

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no CUDA device visible")
        except Exception as exc:  # ImportError, CUDARuntimeError, RuntimeError
            raise BackendError(
                f"backend 'cupy' is not usable here ({exc}); install the 'gpu' extra "
                "(pip install 'recray[gpu]') on a machine with a CUDA GPU, or use "
                "backend='numpy'"
            ) from exc
        be = Backend("cupy", cupy, Special(ndtri=cps.ndtri, log_ndtr=cps.log_ndtr))
    _CACHE[chosen] = be
    return be


def cupy_available() -> bool:
    """True when the CuPy backend can be used (for test skips)."""
    try:
        get_backend("cupy")
    except BackendError:
        return False
    return True
