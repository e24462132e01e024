"""The pipeline: posteriors -> blocks -> search -> indices -> messages -> Parquet, and back.

``codec.py`` holds the per-batch steps (pure functions of a batch of items, no I/O, no Ray);
``local.py`` drives them over a data set in one process, streaming through pyarrow.
"""
