"""Decode a ``recray codec mnist`` run under the CPU code paths other machines take.

Each environment runs ``recray codec mnist decompress RUN --verify`` in a fresh process
with environment variables that switch the kernels of torch (ATen CPU capability, oneDNN
ISA, MKL's reproducible mode), of OpenBLAS (core type), of NumPy (SIMD dispatch) and the
thread counts. A lossless codec must decode every image identically in all of them; the
result of each row is ``"ok"`` or the decoder's error (the first image that failed).

Guarantees and requirements: the rows run one after another on this machine with this
interpreter (``python``); what they exercise is the set of kernels this CPU can be told
to take, not another architecture (ARM, GPU) or another library build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

# NumPy's dispatch targets above the x86-64-v2 baseline (AVX2/FMA3 and AVX-512 groups)
NUMPY_NO_SIMD = "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"

ENVIRONMENTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("same environment", {}),
    ("ATEN_CPU_CAPABILITY=default (torch kernels of a CPU without AVX2)",
     {"ATEN_CPU_CAPABILITY": "default"}),
    ("MKL_CBWR=COMPATIBLE (MKL's reproducible mode)", {"MKL_CBWR": "COMPATIBLE"}),
    ("DNNL_MAX_CPU_ISA=SSE41", {"DNNL_MAX_CPU_ISA": "SSE41"}),
    ("OPENBLAS_CORETYPE=Prescott", {"OPENBLAS_CORETYPE": "Prescott"}),
    ("OPENBLAS_CORETYPE=Haswell", {"OPENBLAS_CORETYPE": "Haswell"}),
    ("OMP_NUM_THREADS=1", {"OMP_NUM_THREADS": "1"}),
    ("OMP_NUM_THREADS=2", {"OMP_NUM_THREADS": "2"}),
    (f"NumPy SIMD dispatch disabled (NPY_DISABLE_CPU_FEATURES={NUMPY_NO_SIMD})",
     {"NPY_DISABLE_CPU_FEATURES": NUMPY_NO_SIMD}),
    ("all of the above at once (OMP_NUM_THREADS=2, OPENBLAS_CORETYPE=Prescott)",
     {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "DNNL_MAX_CPU_ISA": "SSE41",
      "OPENBLAS_CORETYPE": "Prescott", "OMP_NUM_THREADS": "2",
      "NPY_DISABLE_CPU_FEATURES": NUMPY_NO_SIMD}),
)  # fmt: skip


def decode_in(
    run_dir: str,
    out_dir: str,
    env: dict[str, str],
    *,
    python: str = sys.executable,
    pythonpath: str | None = None,
    timeout: float = 600,
) -> dict:
    """Decode ``run_dir`` into ``out_dir`` with ``--verify`` in a fresh process whose
    environment is this one plus ``env``; ``{"result": "ok" | error, "seconds": ...}``."""
    full = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **env)
    if pythonpath:
        full["PYTHONPATH"] = pythonpath
    cmd = [python, "-m", "recray", "codec", "mnist", "decompress", run_dir, "--out", out_dir]
    t0 = time.perf_counter()
    r = subprocess.run(
        [*cmd, "--verify"], env=full, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - t0
    if r.returncode == 0 and "identical to the source" in r.stdout:
        return {"result": "ok", "seconds": seconds}
    lines = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
    return {"result": lines[-1] if lines else f"exit code {r.returncode}", "seconds": seconds}


def decode_matrix(
    run_dir: str,
    work_dir: str,
    envs=ENVIRONMENTS,
    *,
    python: str = sys.executable,
    pythonpath: str | None = None,
    report=None,
) -> list[dict]:
    """One row per environment of ``envs`` (see :func:`decode_in`)."""
    rows = []
    for k, (name, env) in enumerate(envs):
        row = {"environment": name, "env": env}
        row |= decode_in(
            run_dir, os.path.join(work_dir, f"dec-{k}"), env, python=python, pythonpath=pythonpath
        )
        rows.append(row)
        if report:
            report(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| decoder environment | result |", "| --- | --- |"]
    lines += [f"| {r['environment']} | {r['result']} |" for r in rows]
    return "\n".join(lines)
