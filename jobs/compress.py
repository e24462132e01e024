"""``ray job submit`` entrypoint: ``recray compress`` on the job's cluster.

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- \
        python jobs/compress.py /data/ds/latents.parquet --prior /data/ds/prior.json \
            --out /data/runs/ds-sp-pfr

Arguments are those of ``recray compress``; inside the job ``--address auto`` is added
where the command has that option, so the run uses the job's cluster. ``--out`` must be
absolute (or a URI): the job's working directory is a temporary copy. Exit code: the
command's (0 ok, 2 bad input).
"""

import sys

from recray.cluster.jobs import run

if __name__ == "__main__":
    sys.exit(run("compress"))
