"""One host with `dynd --workers 2` beside the same host with `--workers 1`, as ratios of one run.

    python tests/bench/workers.py [--rounds 3] [--seconds 6] [--concurrency 32] [--value-size 1024]
                                  [--replicas 1] [--drivers 1]

Starts both on 127.0.0.1 at once (each its own cluster), then runs `dynctl --json bench --routed`
(client-driven: each request goes straight to the worker that owns the key) for inserts of fresh
keys and for gets against each, rounds interleaved and alternating which goes first. Prints per
workload the median ops/s of each, the median of the per-round ratios (2 workers / 1) with their
range, server CPU per operation (every process of the host: supervisor, workers, writer
processes), the load driver's CPU, and how busy the whole machine was while each ran (from
/proc/stat, all cores).

`--replicas 1` (the default) gives both sides the same work per operation: one copy of each key,
as a host of a large cluster holds its share of the replicas whatever its worker count. With
`--replicas 2` or 3, two workers are two replicas of one another, so each write is stored twice
on the host where one worker stores it once: that compares something else.

On these 2-core machines the load driver (`--drivers` dynctl processes) shares the cores with the
servers: two workers can use at most what the driver leaves, so read the machine's busy share
beside the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundation import BENCH_SETUP_ALLOWANCE_S, HOST, venv_command

WORKLOADS = ("insert", "get")
READY_DEADLINE_S = 60.0
STOP_DEADLINE_S = 30.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PORT_GAP = 10  # the two hosts' port ranges


@dataclass
class Host:
    label: str
    workers: int
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of `root` and every living descendant."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    wanted, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in wanted:
                wanted.add(pid)
                frontier.append(pid)
    return sum(stats[pid][1] for pid in wanted if pid in stats) / TICKS_PER_S


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def start_host(label: str, workers: int, port: int, scratch: Path, replicas: int) -> Host:
    quorum = str(min(2, replicas))
    argv = [
        *venv_command("dynd", "dynd"), "--name", label, "--listen", f"{HOST}:{port}", "--data-dir", str(scratch / label),
        "--workers", str(workers), "--replicas", str(replicas), "--r", quorum, "--w", quorum,
    ]  # fmt: skip
    with open(scratch / f"{label}.log", "wb") as log:
        proc = subprocess.Popen(argv, stderr=log, stdout=log, stdin=subprocess.DEVNULL, start_new_session=True)
    return Host(label, workers, port, proc)


def wait_settled(host: Host, scratch: Path) -> None:
    from dynd.client import BlockingClient
    from dynd.protocol.errors import DynError

    deadline = time.monotonic() + READY_DEADLINE_S
    while True:
        if host.proc.poll() is not None:
            raise RuntimeError(f"{host.label} exited with {host.proc.returncode}; see {scratch}/{host.label}.log")
        try:
            with BlockingClient(host.address) as client:
                members = client.cluster_status().members
            if len(members) == host.workers and all(m.status == "joined" and m.liveness == "alive" and not m.transfers_pending for m in members):
                return
        except DynError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host.label} did not settle; see {scratch}/{host.label}.log")
        time.sleep(0.2)  # poll interval while the workers form their cluster


def run_drivers(command: list[str], drivers: int, seconds: float) -> tuple[list[dict[str, Any]], float]:
    """Run `drivers` copies of the bench command at once; their JSON results and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL) for _ in range(drivers)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + BENCH_SETUP_ALLOWANCE_S)
        if proc.returncode != 0:
            raise RuntimeError(f"bench failed with exit {proc.returncode}:\n{err.decode(errors='replace')}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return results, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(host: Host, workload: str, args: argparse.Namespace) -> dict[str, float]:
    command = [
        *venv_command("dynctl", "dynctl"), "--node", host.address, "--json", "bench", "--routed", "--workload", workload,
        "--concurrency", str(args.concurrency), "--seconds", f"{args.seconds:g}", "--value-size", str(args.value_size),
    ]  # fmt: skip
    server_before = tree_cpu_seconds(host.proc.pid)
    busy_before, total_before = machine_ticks()
    started = time.monotonic()
    results, driver_cpu = run_drivers(command, args.drivers, args.seconds)
    wall = time.monotonic() - started
    busy_after, total_after = machine_ticks()
    server_cpu = tree_cpu_seconds(host.proc.pid) - server_before
    ops = sum(r["ops"] for r in results)
    return {
        "ops_per_s": sum(r["ops_per_s"] for r in results),
        "server_us_per_op": server_cpu / ops * 1e6 if ops else float("nan"),
        "server_cores": server_cpu / wall,  # includes the drivers' untimed set-up phase; a share, not a rate
        "driver_cores": driver_cpu / wall,
        "machine_busy": (busy_after - busy_before) / max(1, total_after - total_before),
    }


def stop_host(host: Host) -> int | None:
    host.proc.terminate()
    try:
        return host.proc.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        host.proc.kill()
        host.proc.wait()
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--replicas", type=int, default=1, help="N of both hosts' clusters (R = W = min(2, N))")
    parser.add_argument("--drivers", type=int, default=1, help="dynctl bench processes at once")
    parser.add_argument("--base-port", type=int, default=17_700)
    args = parser.parse_args(argv)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="dynd-workers-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        hosts = [start_host("one", 1, args.base_port, scratch, args.replicas), start_host("two", 2, args.base_port + PORT_GAP, scratch, args.replicas)]
        try:
            for host in hosts:
                wait_settled(host, scratch)
            for round_index in range(args.rounds):
                order = hosts if round_index % 2 == 0 else hosts[::-1]
                for workload in WORKLOADS:
                    for host in order:
                        results.setdefault((host.label, workload), []).append(measure(host, workload, args))
        finally:
            codes = {host.label: stop_host(host) for host in hosts}
    quorum = min(2, args.replicas)
    print(
        f"one host on 127.0.0.1, --workers 2 against --workers 1 (each its own cluster, N={args.replicas} R=W={quorum}); "
        f"dynctl bench --routed, {args.drivers} driver(s), concurrency {args.concurrency}, {args.value_size} B values, "
        f"{args.seconds:g} s, {args.rounds} interleaved rounds; {os.cpu_count()} cores; exit codes at stop: {codes}"
    )
    for workload in WORKLOADS:
        one, two = results[("one", workload)], results[("two", workload)]
        ratios = [b["ops_per_s"] / a["ops_per_s"] for a, b in zip(one, two) if a["ops_per_s"]]

        def med(runs: list[dict[str, float]], key: str) -> float:
            return statistics.median(run[key] for run in runs)

        print(
            f"{workload:>7}: 1 worker {med(one, 'ops_per_s'):,.0f} ops/s, 2 workers {med(two, 'ops_per_s'):,.0f} ops/s, "
            f"ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}); "
            f"server CPU us/op {med(one, 'server_us_per_op'):.0f} -> {med(two, 'server_us_per_op'):.0f}; "
            f"cores used by servers {med(one, 'server_cores'):.2f} -> {med(two, 'server_cores'):.2f}, "
            f"by the driver {med(one, 'driver_cores'):.2f} -> {med(two, 'driver_cores'):.2f}; "
            f"machine busy {med(one, 'machine_busy'):.0%} -> {med(two, 'machine_busy'):.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
