"""What the ``jobs/`` entrypoints share: forward the arguments of a ``ray job submit``
entrypoint to the ``recray`` command line, on the cluster the job runs in.

Inside a Ray job, ``RAY_ADDRESS`` names the job's cluster, so a plain ``ray.init()``
connects to it. Where the command has an ``--address`` option, it is given
``--address auto`` as well (unless the caller chose one), so the run is pinned to the
job's cluster and never starts a local Ray instance on the node by mistake.

A job's working directory is a temporary copy of ``--working-dir`` on the node, deleted
when the job ends: an output path relative to it would be lost. Output paths must be
absolute (on storage the cluster's nodes share) or URIs; a relative one is bad input
(exit code 2) before anything runs.
"""

from __future__ import annotations

import os
import sys

from recray.cli.main import build_parser, main


def command_options(command: str) -> set[str]:
    """The option strings (``--out``, ...) of ``recray <command>`` in this version."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # the subparsers action
    return {s for a in sub.choices[command]._actions for s in a.option_strings}


def _given(argv: list[str], option: str) -> str | None:
    for i, a in enumerate(argv):
        if a == option and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None


def cli_argv(command: str, argv: list[str], environ=None) -> list[str]:
    """``["<command>", *argv]``, plus ``--address auto`` when running inside a Ray job
    (``RAY_ADDRESS`` set), the command takes ``--address`` and none was given."""
    environ = os.environ if environ is None else environ
    out = [command, *argv]
    if (
        environ.get("RAY_ADDRESS")
        and "--address" in command_options(command)
        and _given(argv, "--address") is None
        and not any(a in ("-h", "--help") for a in argv)
    ):
        out += ["--address", "auto"]
    return out


def relative_output(argv: list[str]) -> str | None:
    """The ``--out`` value if it is a relative local path (lost with the job's working
    directory), else ``None``."""
    out = _given(argv, "--out")
    if out is None or "://" in out or os.path.isabs(out):
        return None
    return out


def run(command: str, argv: list[str] | None = None) -> int:
    """Run ``recray <command> argv...`` for a job entrypoint; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    rel = relative_output(argv)
    if rel is not None:
        print(
            f"recray: error: --out {rel!r} is relative: a Ray job runs in a temporary copy "
            "of its working directory, deleted when the job ends; give an absolute path "
            "on storage the cluster shares (or a URI)",
            file=sys.stderr,
        )
        return 2
    return main(cli_argv(command, argv))
