"""Benchmarks behind ``recray bench``: figures we report, never timed unit tests."""
