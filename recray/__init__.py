"""recray: relative entropy coding with space partitioning, batched on NumPy/CuPy,
distributed with Ray, written to Arrow/Parquet.

``from recray import rec`` gives ``rec.encode`` / ``rec.decode``; ``recray.plan`` builds
codec plans.

Importing recray sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already names a
policy. recray's parallel Numba kernels run on Numba's OpenMP threading layer, whose
threads otherwise spin for a while after each kernel call, on the cores the Python thread
and other processes need next: on 2 cores, ``recray codec mnist compress`` (SP-PFR, 48-bit
blocks) took 5.3-5.9 ms/image with the policy unset against 4.3-5.0 with it passive
(alternating runs, docs/MNIST.md). The setting takes effect in an OpenMP runtime
loaded after the import (Numba loads its own on the first parallel call); a process that
wants spinning threads sets ``OMP_WAIT_POLICY=ACTIVE`` before importing recray.
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
