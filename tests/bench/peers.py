"""dynd beside etcd and the echo ceiling, one driver for all, ratios from one run.

    python tests/bench/peers.py [--rounds 2] [--seconds 8] [--concurrency 32] [--value-size 1024]
                                [--no-etcd]          (or: make peers)

Starts, on 127.0.0.1 in a temporary directory:
- a three-node dynd (N=3 R=2 W=2) from this checkout;
- a three-member etcd (default durability: the WAL fsyncs every commit), when `etcd` is on PATH;
- the echo server (tests/bench/echo_server.py): dynd's framing and client, no work; the ceiling of
  this Python stack on one process.
Then runs tests/bench/peers_driver.py (the same driver for every target) for fresh-key inserts and
for gets, every target in every round, rounds interleaved and the order of targets rotated each
round. Server CPU per operation is the user+system time, during the run, of every process of the
target: the three dynd nodes and their children (LMDB writer processes), the three etcd members.
Prints medians over the rounds, with ratios taken within each round (dynd/etcd, dynd/echo).

The driver and the servers share this machine's cores, and shared machines drift by up to 2x within
the hour: compare ratios from one run, never absolute figures across runs. etcd is driven through its
JSON gateway, which costs it some CPU that its gRPC clients would not spend.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from foundation import ECHO_SERVER, HOST, free_port
from revisions import start_cluster

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DRIVER = HERE / "peers_driver.py"
WORKLOADS = ("insert", "get")
ETCD_READY_DEADLINE_S = 30.0
ETCD_QUOTA_BYTES = 8 * 1024**3  # repeated 1 KiB insert runs must not hit the 2 GiB default alarm
STOP_DEADLINE_S = 15.0
DRIVER_SETUP_ALLOWANCE_S = 120.0


class Target:
    def __init__(self, label: str, kind: str, addresses: list[str], processes: list[subprocess.Popen[bytes]]) -> None:
        self.label = label
        self.kind = kind
        self.addresses = addresses
        self.processes = processes

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]


def start_etcd(scratch: Path) -> Target:
    client_ports = [free_port() for _ in range(3)]
    peer_ports = [free_port() for _ in range(3)]
    cluster = ",".join(f"m{i}=http://{HOST}:{peer_ports[i]}" for i in range(3))
    processes = []
    for i in range(3):
        argv = [
            "etcd", "--name", f"m{i}", "--data-dir", str(scratch / f"etcd{i}"),
            "--listen-client-urls", f"http://{HOST}:{client_ports[i]}", "--advertise-client-urls", f"http://{HOST}:{client_ports[i]}",
            "--listen-peer-urls", f"http://{HOST}:{peer_ports[i]}", "--initial-advertise-peer-urls", f"http://{HOST}:{peer_ports[i]}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new", "--initial-cluster-token", "dynd-peers",
            "--quota-backend-bytes", str(ETCD_QUOTA_BYTES), "--log-level", "warn",
        ]  # fmt: skip
        with open(scratch / f"etcd{i}.log", "wb") as log:
            processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
    addresses = [f"{HOST}:{port}" for port in client_ports]
    deadline = time.monotonic() + ETCD_READY_DEADLINE_S
    while not all(_etcd_healthy(address) for address in addresses):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            stop(processes)
            raise RuntimeError(f"etcd did not become healthy; logs in {scratch}/etcd*.log")
        time.sleep(0.2)  # poll interval while the members elect a leader
    return Target("etcd 3 members", "etcd", addresses, processes)


def _etcd_healthy(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/health", timeout=1.0) as reply:
            return bool(json.load(reply).get("health") == "true")
    except (OSError, ValueError):
        return False


def start_echo(scratch: Path) -> Target:
    from foundation import Server, start, wait_until_accepting

    port = free_port()
    server = Server("echo", [sys.executable, str(ECHO_SERVER), "--listen", f"{HOST}:{port}"], port, scratch / "echo.log")
    start(server)
    wait_until_accepting(server)
    assert server.process is not None
    return Target("echo ceiling", "echo", [server.address], [server.process])


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_DEADLINE_S)


def run_driver(target: Target, workload: str, args: argparse.Namespace) -> tuple[dict[str, Any], float | None]:
    command = [
        sys.executable, str(DRIVER), "--target", target.kind, "--addresses", ",".join(target.addresses),
        "--workload", workload, "--seconds", f"{args.seconds:g}", "--concurrency", str(args.concurrency),
        "--value-size", str(args.value_size), "--server-pids", ",".join(map(str, target.pids())),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, check=False, timeout=args.seconds + DRIVER_SETUP_ALLOWANCE_S)
    if completed.returncode != 0:
        raise RuntimeError(f"the driver failed against {target.label}:\n{completed.stderr.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(completed.stdout.decode().splitlines()[-1])
    return result, (result["server_cpu_s"] / result["ops"] * 1e6 if result["ops"] else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--no-etcd", action="store_true", help="skip etcd even when it is installed")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds and --seconds must be positive")
    with_etcd = not args.no_etcd and shutil.which("etcd") is not None
    results: dict[tuple[str, str], list[tuple[dict[str, Any], float | None]]] = {}
    with tempfile.TemporaryDirectory(prefix="dynd-peers-") as scratch_dir:
        scratch = Path(scratch_dir)
        targets: list[Target] = []
        try:
            ports, procs = start_cluster(ROOT, "d", scratch, [])
            targets.append(Target("dynd 3 nodes", "dynd", [f"{HOST}:{port}" for port in ports], procs))
            if with_etcd:
                targets.append(start_etcd(scratch))
            targets.append(start_echo(scratch))
            for round_index in range(args.rounds):
                shift = round_index % len(targets)
                order = targets[shift:] + targets[:shift]
                for workload in WORKLOADS:
                    for target in order:
                        print(f"round {round_index + 1}/{args.rounds}: {workload} against {target.label}", file=sys.stderr)
                        results.setdefault((target.label, workload), []).append(run_driver(target, workload, args))
        finally:
            for target in targets:
                stop(target.processes)
    report(results, targets, args, with_etcd)
    return 0


def report(results: dict[tuple[str, str], list[tuple[dict[str, Any], float | None]]], targets: list[Target], args: argparse.Namespace, with_etcd: bool) -> None:
    def median(values: list[float | None]) -> float | None:
        present = [value for value in values if value is not None]
        return statistics.median(present) if present else None

    def ratio(label: str, other: str, workload: str) -> str:
        mine, theirs = results[(label, workload)], results[(other, workload)]
        per_round = [m[0]["ops_per_s"] / t[0]["ops_per_s"] for m, t in zip(mine, theirs) if t[0]["ops_per_s"]]
        return f"{statistics.median(per_round):.2f}x" if per_round else "-"

    print(
        f"peers: {args.value_size} B values, {args.concurrency} connections, {args.seconds:g} s per run, "
        f"medians of {args.rounds} interleaved rounds; dynd N=3 R=2 W=2" + ("" if with_etcd else "; etcd not installed or skipped")
    )
    header = ["target", "insert ops/s", "p99.9 ms", "CPU us/insert", "get ops/s", "p99.9 ms", "CPU us/get", "errors"]
    rows = []
    for target in targets:
        row = [target.label]
        errors = 0
        for workload in WORKLOADS:
            runs = results[(target.label, workload)]
            ops, p999, cpu = median([r[0]["ops_per_s"] for r in runs]), median([r[0]["p999_ms"] for r in runs]), median([r[1] for r in runs])
            errors += sum(r[0]["errors"] for r in runs)
            row += [f"{ops:,.0f}" if ops else "-", f"{p999:.1f}" if p999 else "-", f"{cpu:.0f}" if cpu else "-"]
        rows.append([*row, str(errors)])
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
    dynd = targets[0].label
    for other in (t.label for t in targets[1:]):
        print(f"dynd / {other}: insert {ratio(dynd, other, 'insert')}, get {ratio(dynd, other, 'get')} (median of per-round ratios)")
    print("echo ceiling: its insert row is a put of a fresh key answered from a canned reply; one process, no storage.")


if __name__ == "__main__":
    sys.exit(main())
