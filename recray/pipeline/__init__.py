"""The pipeline: posteriors -> blocks -> search -> indices -> messages -> Parquet, and back.

* ``codec.py``: per-batch steps, pure functions of a batch of items (no I/O, no Ray);
* ``shards.py``: the unit of work and commit (shard = consecutive items = one part);
* ``local_engine.py`` / ``ray_engine.py``: run the shards in this process or on a Ray Data
  actor pool; both write the same bytes;
* ``driver.py``: ``compress`` / ``decompress`` / ``inspect`` over a whole data set.
"""
