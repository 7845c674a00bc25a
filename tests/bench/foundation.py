"""How close is one dynd node to the ceiling of its own stack?

    python tests/bench/foundation.py [--seconds 10] [--rounds 1] [--concurrency 32] [--value-size 1024]

Starts the echo server (tests/bench/echo_server.py: same framing and client, no work) and a
one-node dynd in a temporary data directory, waits until each accepts connections, runs
`dynctl --json bench` for puts and gets against each, stops both by PID, and prints ops/s and p99.9
for each with the ratio dynd/echo. The load generator shares the machine's cores with the server
under test, so compare ratios from one machine, not absolute numbers across machines.

A shared VM's speed drifts by tens of percent within minutes, so `--rounds N` runs each workload N
times, echo and dynd back to back in each round (echo first in odd rounds, dynd first in even
ones), and reports medians with their range; the ratio is each round's dynd over the same round's
echo, its median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
ECHO_SERVER = HERE / "echo_server.py"
READY_DEADLINE_S = 30.0
READY_POLL_INTERVAL_S = 0.05
STOP_DEADLINE_S = 15.0
# Untimed preloading and connection set-up come on top of --seconds; this bounds them.
BENCH_SETUP_ALLOWANCE_S = 120.0
WORKLOADS = ("put", "get")

console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Server:
    label: str
    argv: list[str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


class StartupFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def venv_command(name: str, module: str) -> list[str]:
    """The console script installed beside this interpreter, or `python -m module` without one."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def start(server: Server) -> None:
    with server.log_path.open("wb") as log:  # a file, so a chatty server never blocks on a full pipe
        server.process = subprocess.Popen(server.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def wait_until_accepting(server: Server) -> None:
    assert server.process is not None
    deadline = time.monotonic() + READY_DEADLINE_S
    while True:
        if server.process.poll() is not None:
            raise StartupFailed(
                f"{server.label} exited with {server.process.returncode}:\n{server.log_path.read_text()}"
            )
        try:
            with socket.create_connection((HOST, server.port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StartupFailed(
                f"{server.label} not accepting within {READY_DEADLINE_S:g} s:\n{server.log_path.read_text()}"
            )
        time.sleep(READY_POLL_INTERVAL_S)  # poll interval; readiness itself is the connect above


def stop(server: Server) -> None:
    process = server.process
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        console.print(f"{server.label} (pid {process.pid}) ignored SIGTERM for {STOP_DEADLINE_S:g} s; killing it")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_DEADLINE_S)


def run_bench(command: list[str], seconds: float) -> dict[str, Any]:
    console.print(f"$ {shlex.join(command)}")
    completed = subprocess.run(command, check=False, capture_output=True, timeout=seconds + BENCH_SETUP_ALLOWANCE_S)
    if completed.returncode != 0:
        raise RuntimeError(
            f"bench failed with exit {completed.returncode}:\n{completed.stderr.decode(errors='replace')}"
        )
    result: dict[str, Any] = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    return result


def order(labels: list[str], round_index: int) -> list[str]:
    """Alternate which server goes first, so a drift in the machine's speed within a round does
    not always favour the same one."""
    return labels if round_index % 2 == 0 else labels[::-1]


def report(results: dict[tuple[str, str], list[dict[str, Any]]], commands: list[list[str]], args: argparse.Namespace) -> None:
    out = Console(highlight=False)
    out.print("Commands used:")
    for command in commands:
        out.print(f"  {shlex.join(command)}", soft_wrap=True)
    rounds = f", median of {args.rounds} interleaved rounds (range)" if args.rounds > 1 else ""
    table = Table(
        title=f"dynd vs the echo ceiling: {args.value_size} B values, concurrency {args.concurrency}, "
        f"{args.seconds:g} s each{rounds}; latency in ms; ratio = dynd/echo",
        title_justify="left",
    )
    for column in ("workload", "echo ops/s", "dynd ops/s", "ratio", "echo p99.9", "dynd p99.9", "ratio"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    for workload in WORKLOADS:
        echo, dynd = results[("echo", workload)], results[("dynd", workload)]
        table.add_row(
            workload,
            median_range([run["ops_per_s"] for run in echo], "{:,.0f}"),
            median_range([run["ops_per_s"] for run in dynd], "{:,.0f}"),
            median_range(ratios(dynd, echo, "ops_per_s"), "{:.2f}"),
            median_range([run["p999_ms"] for run in echo], "{:.2f}"),
            median_range([run["p999_ms"] for run in dynd], "{:.2f}"),
            median_range(ratios(dynd, echo, "p999_ms"), "{:.2f}"),
        )
    Console(highlight=False, width=max(out.width, 130)).print(table)
    errors = {f"{label} {workload}": sum(run["errors"] for run in runs) for (label, workload), runs in results.items()}
    errors = {name: count for name, count in errors.items() if count}
    if errors:
        out.print(f"errors during the runs: {errors}")


def ratios(numerators: list[dict[str, Any]], denominators: list[dict[str, Any]], field: str) -> list[float]:
    """Round by round: each dynd figure over the echo figure of the same round."""
    return [top[field] / bottom[field] for top, bottom in zip(numerators, denominators) if top[field] and bottom[field]]


def median_range(values: list[float | None], form: str) -> str:
    present = [value for value in values if value is not None]
    if not present:
        return "-"
    middle = form.format(statistics.median(present))
    if len(present) == 1:
        return middle
    return f"{middle} ({form.format(min(present))}-{form.format(max(present))})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed phase of each bench run (default 10)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=1024, metavar="BYTES")
    parser.add_argument("--rounds", type=int, default=1, metavar="N", help="run each workload N times, interleaved; report medians")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    with tempfile.TemporaryDirectory(prefix="dynd-foundation-") as scratch_dir:
        scratch = Path(scratch_dir)
        echo_port, dynd_port = free_port(), free_port()
        servers = {
            "echo": Server(
                "echo server",
                [
                    sys.executable,
                    str(ECHO_SERVER),
                    "--listen",
                    f"{HOST}:{echo_port}",
                    "--value-size",
                    str(args.value_size),
                ],
                echo_port,
                scratch / "echo.log",
            ),
            "dynd": Server(
                "dynd",
                [
                    *venv_command("dynd", "dynd"),
                    "--name",
                    "bench1",
                    "--listen",
                    f"{HOST}:{dynd_port}",
                    "--data-dir",
                    str(scratch / "data"),
                ],
                dynd_port,
                scratch / "dynd.log",
            ),
        }
        commands = [server.argv for server in servers.values()]
        results: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in ((label, w) for label in servers for w in WORKLOADS)}
        try:
            for server in servers.values():
                start(server)
            for server in servers.values():
                wait_until_accepting(server)
            for round_index in range(args.rounds):
                for workload, label in [(w, label) for w in WORKLOADS for label in order(list(servers), round_index)]:
                    server = servers[label]
                    command = [
                        *venv_command("dynctl", "dynctl"), "--node", server.address, "--json", "bench",
                        "--workload", workload, "--concurrency", str(args.concurrency),
                        "--value-size", str(args.value_size), "--seconds", f"{args.seconds:g}",
                    ]  # fmt: skip
                    if round_index == 0:
                        commands.append(command)
                    results[(label, workload)].append(run_bench(command, args.seconds))
        except (StartupFailed, RuntimeError, subprocess.TimeoutExpired) as exc:
            console.print(f"foundation: {exc}")
            return 1
        finally:
            for server in servers.values():
                stop(server)
        report(results, commands, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
