"""This checkout beside another revision of dynd, as ratios measured in one run.

    python tests/bench/revisions.py --base REV [--rounds 4] [--seconds 6] [--concurrency 32]
                                    [--value-size BYTES] [--base-args ARGS] [--this-args ARGS]

Checks REV out into a temporary git worktree, starts a three-node cluster (N=3 R=2 W=2) of each
(REV's by `python -m dynd` run inside its worktree, this checkout's the same way here), and runs
this checkout's `dynctl --json bench` for inserts and gets against each, rounds interleaved and
alternating which goes first. Prints, per workload, the median ops/s of each, the median of the
per-round ratios (this / base) with their range, and server CPU per operation (every process of
the cluster, LMDB writers included). These machines drift by up to 2x within an hour: only the
ratios of one run mean anything, and 4 rounds or more are needed to tell 10% apart.

`--base-args` and `--this-args` add dynd flags to every node of one side: with `--base HEAD`
they compare one revision with itself under two settings, e.g. `--base-args=--no-metrics`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import cpu_seconds
from foundation import HOST, free_port, run_bench, venv_command

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ("insert", "get")
READY_DEADLINE_S = 30.0


def start_cluster(tree: Path, prefix: str, scratch: Path, extra_args: list[str]) -> tuple[list[int], list[subprocess.Popen[bytes]]]:
    from dynd.client import BlockingClient
    from dynd.protocol.errors import DynError

    ports = [free_port() for _ in range(3)]
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for index, port in enumerate(ports):
        argv = [sys.executable, "-m", "dynd", "--name", f"{prefix}{index}", "--listen", f"{HOST}:{port}", "--data-dir", str(scratch / f"{prefix}{index}")]
        argv += ["--replicas", "3", "--r", "2", "--w", "2"] if index == 0 else ["--join", f"{HOST}:{ports[0]}"]
        argv += extra_args
        with open(scratch / f"{prefix}{index}.log", "wb") as log:
            procs.append(subprocess.Popen(argv, cwd=tree, env=env, stderr=log, stdin=subprocess.DEVNULL))
    deadline = time.monotonic() + READY_DEADLINE_S
    while True:
        try:
            with BlockingClient(f"{HOST}:{ports[0]}") as client:
                if sum(m.status == "joined" and m.liveness == "alive" for m in client.cluster_status().members) == 3:
                    return ports, procs
        except DynError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {prefix} cluster did not form; see {scratch}/{prefix}*.log")
        time.sleep(0.2)  # poll interval while the cluster forms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=1024, help="bytes per value (dynctl bench --value-size)")
    parser.add_argument("--base-args", default="", help="dynd flags for the base side's nodes")
    parser.add_argument("--this-args", default="", help="dynd flags for this checkout's nodes")
    args = parser.parse_args(argv)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="dynd-revisions-") as scratch_dir:
        scratch = Path(scratch_dir)
        base_tree = scratch / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_tree), args.base], check=True)
        clusters = {}
        try:
            clusters["base"] = start_cluster(base_tree, "b", scratch, shlex.split(args.base_args))
            clusters["this"] = start_cluster(ROOT, "t", scratch, shlex.split(args.this_args))
            for round_index in range(args.rounds):
                order = ["base", "this"] if round_index % 2 == 0 else ["this", "base"]
                for workload in WORKLOADS:
                    for label in order:
                        ports, procs = clusters[label]
                        command = [
                            *venv_command("dynctl", "dynctl"), "--node", f"{HOST}:{ports[0]}", "--json", "bench", "--workload", workload,
                            "--concurrency", str(args.concurrency), "--seconds", f"{args.seconds:g}",
                            "--value-size", str(args.value_size),
                        ]  # fmt: skip
                        before = cpu_seconds([p.pid for p in procs])
                        result = run_bench(command, args.seconds)
                        used = cpu_seconds([p.pid for p in procs]) - before
                        results.setdefault((label, workload), []).append((result["ops_per_s"], used / result["ops"] * 1e6 if result["ops"] else float("nan")))
        finally:
            for _, procs in clusters.values():
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(timeout=30)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
    flags = f" (base flags: {args.base_args or 'none'}; this: {args.this_args or 'none'})" if args.base_args or args.this_args else ""
    print(f"this checkout against {args.base}{flags}: 3 nodes, N=3 R=2 W=2, {args.value_size} B values, concurrency {args.concurrency}, {args.seconds:g} s, {args.rounds} interleaved rounds")
    for workload in WORKLOADS:
        base, this = results[("base", workload)], results[("this", workload)]
        ratios = [t[0] / b[0] for b, t in zip(base, this) if b[0]]
        print(
            f"{workload:>7}: base {statistics.median(b[0] for b in base):,.0f} ops/s, this {statistics.median(t[0] for t in this):,.0f} ops/s, "
            f"ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}); server CPU us/op "
            f"{statistics.median(b[1] for b in base):.0f} -> {statistics.median(t[1] for t in this):.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
