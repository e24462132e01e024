"""Running recray on Ray clusters: the ``ray job submit`` entrypoint glue (``jobs``) and
real local Ray nodes started and stopped by us (``local_head``)."""
