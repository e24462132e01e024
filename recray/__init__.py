"""recray: relative entropy coding with space partitioning, batched on NumPy/CuPy,
distributed with Ray, written to Arrow/Parquet.

``from recray import rec`` gives ``rec.encode`` / ``rec.decode``; ``recray.plan`` builds
codec plans.
"""

__version__ = "0.1.0"
