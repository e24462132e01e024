"""The ``recray`` command line; :func:`recray.cli.main.main` takes ``argv`` and returns an
exit code, so tests call it directly."""
