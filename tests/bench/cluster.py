"""Three-node cluster throughput next to one node and the echo ceiling, in one run.

    python tests/bench/cluster.py [--seconds 10] [--rounds 1] [--concurrency 32] [--value-size 1024]

Starts the echo server, a one-node dynd and a three-node cluster (N=3 R=2 W=2) on 127.0.0.1, then
runs `dynctl --json bench` for inserts of fresh keys and for gets against each (the cluster both
through one node and with --routed, client-driven coordination). Server CPU per operation is the
CPU time the servers' processes (writer processes included) spent during the run, per op. The load
generator shares the two cores with the servers, so compare within one run.

These machines are noisy (the echo ceiling alone has moved by half between runs an hour apart),
so `--rounds N` runs every row N times, one round after another through all the rows, and shows
the median with the range; "of echo" is each round's ops/s over the same round's echo ceiling
for that workload (puts for insert), its median over the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from foundation import ECHO_SERVER, HOST, Server, StartupFailed, console, free_port, run_bench, start, stop, venv_command, wait_until_accepting
from rich.table import Table

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
WORKLOADS = ("insert", "get")


def cpu_seconds(root_pids: list[int]) -> float:
    """utime+stime of the given processes and their children (the LMDB writer processes)."""
    total = 0
    pids = set(root_pids)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid in pids or ppid in pids:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS_PER_S


def dynd(name: str, port: int, data: Path, log: Path, *extra: str) -> Server:
    argv = [*venv_command("dynd", "dynd"), "--name", name, "--listen", f"{HOST}:{port}", "--data-dir", str(data), *extra]
    return Server(name, argv, port, log)


def wait_for_members(address: str, members: int) -> None:
    from dynd.client import BlockingClient

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with BlockingClient(address) as client:
            if sum(m.status == "joined" for m in client.cluster_status().members) == members:
                return
        time.sleep(0.1)
    raise StartupFailed(f"the cluster did not reach {members} members")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=1024, metavar="BYTES")
    parser.add_argument("--rounds", type=int, default=1, metavar="N", help="run every row N times, interleaved; report medians")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rows: list[tuple[str, str, dict[str, Any], float | None]] = []
    with tempfile.TemporaryDirectory(prefix="dynd-cluster-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        echo_port = free_port()
        echo = Server("echo", [sys.executable, str(ECHO_SERVER), "--listen", f"{HOST}:{echo_port}", "--value-size", str(args.value_size)], echo_port, scratch / "echo.log")
        single_port = free_port()
        single = dynd("solo", single_port, scratch / "solo", scratch / "solo.log", "--replicas", "1", "--r", "1", "--w", "1")
        ports = [free_port() for _ in range(3)]
        first = dynd("c1", ports[0], scratch / "c1", scratch / "c1.log", "--replicas", "3", "--r", "2", "--w", "2")
        cluster = [first] + [dynd(f"c{i + 1}", ports[i], scratch / f"c{i + 1}", scratch / f"c{i + 1}.log", "--join", first.address) for i in (1, 2)]
        everyone = [echo, single, *cluster]
        try:
            for server in everyone:
                start(server)
                wait_until_accepting(server)
            wait_for_members(first.address, 3)
            targets = [("echo ceiling", [echo], []), ("1 node", [single], []), ("3 nodes", cluster, []), ("3 nodes, routed", cluster, ["--routed"])]
            for label, servers, extra, workload in [(*t, w) for _ in range(args.rounds) for t in targets for w in WORKLOADS]:
                command = [
                    *venv_command("dynctl", "dynctl"), "--node", servers[0].address, "--json", "bench",
                    "--workload", "put" if label == "echo ceiling" and workload == "insert" else workload,
                    "--concurrency", str(args.concurrency), "--value-size", str(args.value_size),
                    "--seconds", f"{args.seconds:g}", *extra,
                ]  # fmt: skip
                pids = [s.process.pid for s in servers if s.process is not None]
                before = cpu_seconds(pids)
                result = run_bench(command, args.seconds)
                used = cpu_seconds(pids) - before
                rows.append((label, workload, result, used / result["ops"] * 1000 if result["ops"] else None))
        except (StartupFailed, RuntimeError) as exc:
            console.print(f"cluster bench: {exc}")
            return 1
        finally:
            for server in everyone:
                stop(server)
    rounds = f", median of {args.rounds} interleaved rounds (range)" if args.rounds > 1 else ""
    table = Table(title=f"{args.value_size} B values, concurrency {args.concurrency}, {args.seconds:g} s each{rounds}; N=3 R=2 W=2")
    for column in ("target", "workload", "ops/s", "of echo", "p99.9 ms", "server CPU ms/op"):
        table.add_column(column, justify="right" if column not in ("target", "workload") else "left")
    per_round = len(rows) // args.rounds
    echo_of = {(r, w): rows[r * per_round + i][2]["ops_per_s"] for r in range(args.rounds) for i, w in enumerate(WORKLOADS)}
    for index in range(per_round):
        label, workload = rows[index][0], rows[index][1]
        runs = [rows[r * per_round + index] for r in range(args.rounds)]
        ops = [run[2]["ops_per_s"] for run in runs]
        ratios = [run[2]["ops_per_s"] / echo_of[(r, workload)] for r, run in enumerate(runs) if echo_of[(r, workload)]]
        cpus = [run[3] for run in runs if run[3] is not None]
        table.add_row(
            label,
            workload,
            _median_range(ops, "{:,.0f}"),
            "-" if label == "echo ceiling" or not ratios else _median_range(ratios, "{:.2f}"),
            _median_range([run[2]["p999_ms"] for run in runs], "{:.1f}"),
            _median_range(cpus, "{:.2f}") if cpus else "-",
        )
    Console = type(console)
    Console(highlight=False, width=max(console.width, 130)).print(table)
    return 0


def _median_range(values: list[float], form: str) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return form.format(middle)
    return f"{form.format(middle)} ({form.format(min(values))}-{form.format(max(values))})"


if __name__ == "__main__":
    sys.exit(main())
