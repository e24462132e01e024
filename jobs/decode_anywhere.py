"""Decode a ``recray codec mnist`` run under other CPU code paths (the issue-14 table).

    python jobs/decode_anywhere.py RUN_DIR [--json out.json]

Prints one markdown row per environment of :data:`recray.bench.decode_envs.ENVIRONMENTS`.
"""

import argparse
import json
import os
import sys
import tempfile

from recray.bench.decode_envs import decode_matrix, format_rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="recray-decode-envs-") as work:
        rows = decode_matrix(
            a.run,
            work,
            pythonpath=here,
            report=lambda r: print(r["environment"], "->", r["result"], flush=True),
        )
    print(format_rows(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"run": a.run, "rows": rows}, f, indent=1)
    return 0 if all(r["result"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
