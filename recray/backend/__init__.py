"""The backend switch: the array module around the search, and the search itself.

Algorithm code asks :func:`get_backend` for a :class:`Backend` and uses ``be.xp`` (the array
module) and ``be.special`` (``ndtri``, ``log_ndtr``) only; it never imports numpy/cupy
itself for array work. ``be.kernel`` says who runs the search:

| name | search | around it |
| --- | --- | --- |
| ``numpy`` | the batched NumPy reference (:mod:`recray.rec.search`) | NumPy |
| ``cupy`` | the same reference on CuPy arrays | CuPy |
| ``numba`` | the compiled CPU kernel (:mod:`recray.rec.kernels.cpu`) | NumPy |
| ``cuda`` | the compiled GPU kernel (:mod:`recray.rec.kernels.gpu`) | NumPy, device arrays |

All four give the same indices, step counts and decoded bits (RNG recipe version 2).
Resolution order: the explicit ``name`` argument, then the ``RECRAY_BACKEND`` environment
variable, then ``"auto"``: ``cuda`` where a CUDA GPU is usable, else ``numba`` where Numba
imports, else ``numpy``. Asking for ``cuda`` or ``cupy`` by name where it cannot run raises
:class:`BackendError`: a GPU backend never falls back to the CPU silently. (``cuda`` also
runs under Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1``, as the tests do; its
``label`` then says so.)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from recray.errors import BackendError

BACKENDS = ("numpy", "cupy", "numba", "cuda")
CHOICES = BACKENDS + ("auto",)


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
    kernel: str | None = None  # None: the array reference; "cpu" / "gpu": a compiled kernel
    label: str = ""

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name)

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        if self.xp is np:
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def errstate(self):
        """Silence floating-point warnings of branches that ``where`` later discards."""
        if self.xp is np:
            return np.errstate(all="ignore")
        import contextlib

        return contextlib.nullcontext()


_CACHE: dict[str, Backend] = {}


def resolve_name(name: str | None = None) -> str:
    chosen = name if name is not None else os.environ.get("RECRAY_BACKEND", "auto")
    chosen = str(chosen).strip().lower()
    if chosen not in CHOICES:
        raise BackendError(
            f"unknown backend {chosen!r} (from "
            f"{'the backend argument' if name is not None else 'RECRAY_BACKEND'}): "
            f"choose one of {', '.join(CHOICES)}"
        )
    if chosen == "auto":
        chosen = auto_name()
    return chosen


def auto_name() -> str:
    """The fastest backend usable here: ``cuda``, else ``numba``, else ``numpy``."""
    if cuda_available(simulator=False, quick=True):
        return "cuda"
    if numba_available():
        return "numba"
    return "numpy"


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # ImportError, or a broken llvmlite
        return False
    return True


#: Signs of an NVIDIA driver on Linux: its loaded kernel module, its control device
#: (containers with GPUs get it too) and WSL2's GPU device.
_NVIDIA_SIGNS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")


def _cuda_state(quick: bool = False) -> tuple[bool, bool, str]:
    """(usable, simulated, why not). ``quick``: on Linux with no sign of an NVIDIA driver,
    answer without importing ``numba.cuda`` and probing the driver (0.2-0.4 s that every
    CPU-only run would pay to resolve ``auto``); an explicit ``cuda`` always probes."""
    try:
        from numba import config

        if config.ENABLE_CUDASIM:
            return True, True, ""
        linux = sys.platform.startswith("linux")
        if quick and linux and not any(map(os.path.exists, _NVIDIA_SIGNS)):
            return False, False, "no NVIDIA driver here"
        from numba import cuda

        if not cuda.is_available():
            return False, False, "numba-cuda sees no usable CUDA GPU and driver"
        return True, False, ""
    except Exception as exc:  # ImportError (no numba-cuda), driver errors
        return False, False, f"{type(exc).__name__}: {exc}"


def cuda_available(simulator: bool = True, quick: bool = False) -> bool:
    """True when the ``cuda`` kernel backend can run (under the simulator only if
    ``simulator``; ``quick``: see :func:`_cuda_state`)."""
    ok, sim, _ = _cuda_state(quick)
    return ok and (simulator or not sim)


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
    if chosen in ("numpy", "numba", "cuda"):
        import scipy.special as sps

        special = Special(ndtri=sps.ndtri, log_ndtr=sps.log_ndtr)
        if chosen == "numpy":
            be = Backend("numpy", np, special)
        elif chosen == "numba":
            if not numba_available():
                raise BackendError(
                    "backend 'numba' is not usable here: Numba does not import; "
                    "pip install numba (a dependency of recray), or use backend='numpy'"
                )
            be = Backend("numba", np, special, kernel="cpu")
        else:
            ok, sim, why = _cuda_state()
            if not ok:
                raise BackendError(
                    f"backend 'cuda' is not usable here ({why}); install the 'gpu' extra "
                    "(pip install 'recray[gpu]') on a machine with a CUDA GPU, or use "
                    "backend='numba' (CPU)"
                )
            be = Backend("cuda", np, special, kernel="gpu", label="cuda-simulator" if sim else "")
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
