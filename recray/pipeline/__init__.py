"""The pipeline: posteriors -> blocks -> search -> indices -> messages -> Parquet, and back.

* ``codec.py``: per-batch steps, pure functions of a batch of items (no I/O, no Ray);
* ``shards.py``: the unit of work and commit (shard = consecutive items = one part);
* ``local_engine.py`` / ``ray_engine.py``: run the shards in this process or on a Ray Data
  actor pool whose actors commit the parts they code; both write the same bytes;
* ``decode.py``: a part decoded (what both engines of ``decompress`` run per part);
* ``validate.py``: the validation pass before coding; ``progress.py``: the progress bar;
* ``driver.py``: ``compress`` / ``decompress`` / ``inspect`` over a whole data set.
"""
