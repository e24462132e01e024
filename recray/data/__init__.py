"""Data sets that recray's codecs and benchmarks read (obtained offline, checksum-pinned)."""
