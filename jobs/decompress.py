"""``ray job submit`` entrypoint: ``recray decompress`` on the job's cluster, then a summary.

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- \
        python jobs/decompress.py /data/runs/ds-sp-pfr --out /data/runs/ds-sp-pfr.z.parquet

Arguments are those of ``recray decompress``, plus ``--inspect``: after decoding, print the
run's bitrate and diagnostics (``recray inspect``) into the job's log. ``--out`` must be
absolute (or a URI). Exit code: the first non-zero one of the commands, else 0.
"""

import sys

from recray.cluster.jobs import run

if __name__ == "__main__":
    argv = sys.argv[1:]
    summary = "--inspect" in argv
    argv = [a for a in argv if a != "--inspect"]
    rc = run("decompress", argv)
    if rc == 0 and summary and argv and not argv[0].startswith("-"):
        rc = run("inspect", [argv[0]])
    sys.exit(rc)
