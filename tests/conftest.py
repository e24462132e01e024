import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Ray started by tests: no usage reports, no token auth, and its files in a short private
# directory (not /tmp/ray or $HOME; Unix socket paths must stay under ~107 characters)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
if "RAY_TMPDIR" not in os.environ:
    _ray_tmp = tempfile.mkdtemp(prefix="rrt")
    os.environ["RAY_TMPDIR"] = _ray_tmp
    atexit.register(shutil.rmtree, _ray_tmp, True)

from recray.backend import cupy_available, numba_available  # noqa: E402

BACKENDS = [
    "numpy",
    pytest.param(
        "numba",
        marks=pytest.mark.skipif(not numba_available(), reason="Numba not installed"),
    ),
    pytest.param(
        "cupy",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not cupy_available(), reason="CuPy with a CUDA GPU not available"),
        ],
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each test using this fixture runs on NumPy and the Numba CPU kernel, and on CuPy where
    a GPU exists. (The CUDA kernel runs in tests/test_kernels.py: under Numba's CUDA
    simulator here, on the device where one exists.)"""
    return request.param


def typical_posteriors(n, d, kl_bits_per_dim, seed, collapsed=()):
    """Targets whose average is about the prior: s = 2^-kl, mu ~ N(0, 1 - s^2) clipped to
    +-3 standard deviations (kl in bits/dim; the clip keeps rare far-tail targets, whose
    exact search is slow, out of the tests); dimensions in ``collapsed`` equal the prior."""
    rng = np.random.default_rng(seed)
    s = np.full((n, d), 2.0 ** (-np.asarray(kl_bits_per_dim, dtype=float)))
    mu = np.clip(rng.normal(size=(n, d)), -3, 3) * np.sqrt(1.0 - s**2)
    for c in collapsed:
        s[:, c] = 1.0
        mu[:, c] = 0.0
    return mu, s


def rehash_part(run_dir, part):
    """Make a run's manifest agree with an edited part again (size and SHA-256), so that a
    test reaches the checks behind the manifest's."""
    import hashlib
    import json

    man_path = os.path.join(run_dir, "manifest.json")
    with open(man_path) as f:
        man = json.load(f)
    for p in man["parts"]:
        if p["file"] == part:
            with open(os.path.join(run_dir, part), "rb") as f:
                data = f.read()
            p["bytes"], p["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    with open(man_path, "w") as f:
        json.dump(man, f)
