"""``ray job submit`` entrypoint for the benchmarks: runs ``recray bench ...`` on the node
the job lands on (the head node for a plain submit).

    ray job submit --working-dir . -- python jobs/bench.py toy --quick --json out/toy.json

Arguments are those of ``recray bench``; the exit code is the command's.
"""

import sys

from recray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
