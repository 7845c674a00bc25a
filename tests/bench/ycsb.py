"""YCSB's core workloads against a 3-node cluster: one table to set beside published YCSB results.

    python tests/bench/ycsb.py [--workloads a,b,c,d,f] [--seconds 8] [--concurrency 32] [--keys 10000]

Starts a 3-node dynd (N=3 R=2 W=2) from this checkout and runs `dynctl --json bench --workload W`
for each workload (loading --keys 1 KiB keys first, untimed, as YCSB's load phase does), through
the first node. Prints ops/s, p99.9 and per-operation p99.9 for each. YCSB publications use their
own record counts, value sizes (10 x 100 B fields) and client threads: compare shapes, and rerun
with their parameters for figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from foundation import HOST, run_bench, venv_command
from peers import stop
from revisions import start_cluster

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="a,b,c,d,f")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=1024)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dynd-ycsb-") as scratch_dir:
        ports, procs = start_cluster(ROOT, "y", Path(scratch_dir), [])
        try:
            for workload in args.workloads.split(","):
                command = [
                    *venv_command("dynctl", "dynctl"), "--node", f"{HOST}:{ports[0]}", "--json", "bench",
                    "--workload", workload, "--seconds", f"{args.seconds:g}", "--concurrency", str(args.concurrency),
                    "--keys", str(args.keys), "--value-size", str(args.value_size),
                ]  # fmt: skip
                rows.append(run_bench(command, args.seconds))
        finally:
            stop(procs)
    print(f"YCSB core workloads, 3 nodes N=3 R=2 W=2, {args.keys:,} keys of {args.value_size} B, concurrency {args.concurrency}, {args.seconds:g} s each")
    print("| workload | ops/s | p99.9 ms | per op: ops, p99.9 ms | errors |")
    print("|---|---|---|---|---|")
    for row in rows:
        per_op = "; ".join(f"{op} {f['ops']:,}, {f['p999_ms']:.1f}" for op, f in row["latency_by_op"].items())
        print(f"| {row['workload'].upper()} | {row['ops_per_s']:,.0f} | {row['p999_ms']:.1f} | {per_op} | {row['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
