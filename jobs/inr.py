"""``ray job submit`` entrypoint for the INR codec: ``recray codec inr compress|decompress``
and ``recray bench inr`` on the job's cluster.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/inr.py compress --split test --limit 100 --rate 1 --actors 4 \\
            --out /shared/runs/inr-r1
    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/inr.py decompress /shared/runs/inr-r1 --out /shared/tiles/inr-r1
    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/inr.py bench --limit 100 --json /shared/figures/inr.json

Inside a Ray job (``RAY_ADDRESS`` set) ``compress`` joins the job's cluster
(``--address auto`` unless given). Output paths must be absolute (the job's working
directory is deleted when it ends); the exit code is the command's.
"""

import os
import sys

from recray.cli.main import main
from recray.cluster.jobs import _given, relative_output

USAGE = "usage: python jobs/inr.py compress|decompress|bench [recray arguments]"


def argv_for(args: list[str], environ=os.environ) -> list[str] | None:
    """The ``recray`` arguments of a job's arguments (``None`` if the verb is unknown)."""
    if not args or args[0] not in ("compress", "decompress", "bench"):
        return None
    verb, rest = args[0], list(args[1:])
    if verb == "bench":
        return ["bench", "inr", *rest]
    if verb == "compress" and environ.get("RAY_ADDRESS") and _given(rest, "--address") is None:
        rest += ["--address", "auto"]
    return ["codec", "inr", verb, *rest]


def relative_path(args: list[str]) -> str | None:
    """A relative ``--out`` or ``--json`` (lost with the job's working directory), if any."""
    rel = relative_output(args)
    js = _given(args, "--json")
    if rel is None and js is not None and "://" not in js and not os.path.isabs(js):
        return js
    return rel


if __name__ == "__main__":
    argv = argv_for(sys.argv[1:])
    if argv is None:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    rel = relative_path(sys.argv[2:])
    if rel is not None:
        print(
            f"recray: error: output {rel!r} is relative: a Ray job's working directory is "
            "deleted when the job ends; give an absolute path on shared storage",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.exit(main(argv))
