"""A local multi-node Ray cluster on this machine: a head node and K worker nodes, each a
real ``ray start --block`` process on its own free ports, all in one short temporary
directory. Prints the addresses, runs until Ctrl-C (or SIGTERM), then stops exactly the
nodes it started (workers first, then the head), by PID; it never runs ``ray stop``.

    python cluster/local_multinode.py --workers 2 --cpus-per-node 1
    # in another shell, with the printed dashboard address:
    RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:PORT --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/compress.py /abs/latents.parquet \
        --prior /abs/prior.json --out /abs/run

``--fake-gpus`` gives each worker node ``num_gpus=1`` so GPU actors can be scheduled (they
run the NumPy path: there is no GPU behind it).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from recray.cluster.local_head import start_head, start_worker


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="worker nodes besides the head")
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--head-cpus", type=int, default=1)
    p.add_argument("--fake-gpus", action="store_true", help="num_gpus=1 on each worker node")
    p.add_argument("--temp-dir", default=None, help="Ray's temp dir (default: /tmp/rr*)")
    args = p.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    head = start_head(args.temp_dir, num_cpus=args.head_cpus)
    nodes = [head]
    try:
        for _ in range(args.workers):
            if stop.is_set():
                break
            nodes.append(
                start_worker(head, args.cpus_per_node, num_gpus=1 if args.fake_gpus else None)
            )
        print(f"Ray cluster: head + {len(nodes) - 1} worker nodes (temp dir {head.temp_dir})")
        print(f"  GCS address      {head.address}      (ray.init(address=...))")
        print(f"  job submission   {head.dashboard_url}   (ray job submit --address ...)")
        print("  node PIDs        " + " ".join(str(n.pid) for n in nodes))
        print("Ctrl-C stops these nodes (and only these).", flush=True)
        stop.wait()
    finally:
        print("stopping ...", flush=True)
        ok = True
        for node in reversed(nodes):  # workers first, then the head
            report = node.stop()
            ok &= not report.alive_after
            extra = f", terminated leftovers {report.survivors}" if report.survivors else ""
            print(f"  node {node.pid}: exit {report.exit_code}{extra}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
