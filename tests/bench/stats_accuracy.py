"""Do the node's own latency percentiles agree with what a client measures? (issue 14's check)

    python tests/bench/stats_accuracy.py [--seconds 20] [--concurrency 32] [--workload get]

Starts a three-node cluster (N=3 R=2 W=2), runs `dynctl --json bench` against the first node,
then asks that node for its stats and prints the client's p50/p99/p99.9 beside the node's over the
last 60 s for the same op, with their ratios (node / client). The node times a request from when
its bytes reached the host to its reply, so it misses only the client's own time and the
network's: a ratio a little under 1 is expected. The bench's setup phase (one request per key)
falls in the node's window too; with the default 1,000 keys it is well under 1% of the requests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from foundation import HOST, run_bench, venv_command
from revisions import ROOT, start_cluster

OPS = {"get": ("get",), "put": ("put",), "mixed": ("get", "put"), "insert": ("put",)}


def main(argv: list[str] | None = None) -> int:
    from dynd.client import BlockingClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workload", choices=sorted(OPS), default="get")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dynd-accuracy-") as scratch:
        ports, procs = start_cluster(ROOT, "a", Path(scratch), [])
        try:
            command = [
                *venv_command("dynctl", "dynctl"), "--node", f"{HOST}:{ports[0]}", "--json", "bench", "--workload", args.workload,
                "--concurrency", str(args.concurrency), "--seconds", f"{args.seconds:g}",
            ]  # fmt: skip
            client = run_bench(command, args.seconds)
            with BlockingClient(f"{HOST}:{ports[0]}") as blocking:
                stats = blocking.stats()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    print(f"{args.workload}, concurrency {args.concurrency}, {args.seconds:g} s: client {client['ops_per_s']:,.0f} ops/s")
    for op in OPS[args.workload]:
        node = next(v for v in stats.latencies if v.op == op and v.window == "60s")
        print(f"  {op} ({node.count:,} timed by the node):")
        for label, client_key, node_us in (("p50", "p50_ms", node.p50_us), ("p99", "p99_ms", node.p99_us), ("p99.9", "p999_ms", node.p999_us)):
            print(f"    {label:>5}: client {client[client_key]:.2f} ms, node {node_us / 1000:.2f} ms, node/client {node_us / 1000 / client[client_key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
