"""Three nodes with everything running (failure detection, hints, anti-entropy), one node down,
and the foreground cost of anti-entropy, in one run.

    python tests/bench/availability.py [--seconds 10] [--concurrency 32] [--value-size 1024]

Cluster A (anti-entropy at its default period, or --ae-interval-ms): inserts of fresh keys and
gets, then the same inserts with one of the three nodes killed (N=3 R=2 W=2: the
coordinator and the one other live primary make W, hints keep the third's copy). Cluster B: the
same inserts and gets with anti-entropy off. The p99.9 of A against B is the foreground price of
anti-entropy (issue 6: under 20% worse). Compare within one run: the load generator shares the
two cores with the servers.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster import cpu_seconds, dynd, wait_for_members
from foundation import Server, StartupFailed, console, free_port, run_bench, start, stop, venv_command, wait_until_accepting
from rich.table import Table

from dynd.core.limits import Limits

AE_OFF = "[limits]\nae_interval_ms = 86400000\n"
DEAD_DEADLINE_S = 30.0


def start_cluster(scratch: Path, label: str, config_text: str) -> list[Server]:
    config = scratch / f"{label}.toml"
    config.write_text(config_text)
    ports = [free_port() for _ in range(3)]
    first = dynd(f"{label}1", ports[0], scratch / f"{label}1", scratch / f"{label}1.log", "--config", str(config), "--replicas", "3", "--r", "2", "--w", "2")
    rest = [dynd(f"{label}{i + 1}", ports[i], scratch / f"{label}{i + 1}", scratch / f"{label}{i + 1}.log", "--config", str(config), "--join", first.address) for i in (1, 2)]
    nodes = [first, *rest]
    for node in nodes:
        start(node)
        wait_until_accepting(node)
    wait_for_members(first.address, 3)
    return nodes


def wait_dead(observer: Server, victim: str) -> float:
    from dynd.client import BlockingClient

    started = time.monotonic()
    while time.monotonic() - started < DEAD_DEADLINE_S:
        with BlockingClient(observer.address) as client:
            if any(m.name == victim and m.liveness == "dead" for m in client.cluster_status(local_only=True).members):
                return time.monotonic() - started
        time.sleep(0.1)
    raise StartupFailed(f"{victim} was not declared dead within {DEAD_DEADLINE_S:g} s")


def measure(servers: list[Server], target: Server, workload: str, args: argparse.Namespace) -> tuple[dict[str, Any], float | None]:
    command = [
        *venv_command("dynctl", "dynctl"), "--node", target.address, "--json", "bench", "--workload", workload,
        "--concurrency", str(args.concurrency), "--value-size", str(args.value_size), "--seconds", f"{args.seconds:g}",
    ]  # fmt: skip
    pids = [s.process.pid for s in servers if s.process is not None and s.process.poll() is None]
    before = cpu_seconds(pids)
    result = run_bench(command, args.seconds)
    used = cpu_seconds(pids) - before
    return result, (used / result["ops"] * 1000 if result["ops"] else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=1024, metavar="BYTES")
    parser.add_argument("--ae-interval-ms", type=int, default=Limits().ae_interval_ms, help="anti-entropy period of cluster A")
    args = parser.parse_args(argv)
    ae_on = f"[limits]\nae_interval_ms = {args.ae_interval_ms}\n"
    rows: list[tuple[str, str, dict[str, Any], float | None]] = []
    with tempfile.TemporaryDirectory(prefix="dynd-availability-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        started: list[Server] = []
        try:
            for label, config in (("on", ae_on), ("off", AE_OFF)):
                nodes = start_cluster(scratch, label, config)
                started += nodes
                name = f"anti-entropy every {args.ae_interval_ms / 1000:g} s" if label == "on" else "anti-entropy off"
                for workload in ("insert", "get"):
                    result, cpu = measure(nodes, nodes[0], workload, args)
                    rows.append((name, workload, result, cpu))
                if label == "on":
                    victim = nodes[2]
                    assert victim.process is not None
                    victim.process.send_signal(signal.SIGKILL)
                    victim.process.wait()
                    detected = wait_dead(nodes[0], victim.label)
                    console.print(f"{victim.label} killed; {nodes[0].label} declared it dead after {detected:.1f} s")
                    result, cpu = measure(nodes[:2], nodes[0], "insert", args)
                    rows.append(("one of three down", "insert", result, cpu))
                for node in nodes:
                    stop(node)
        except (StartupFailed, RuntimeError) as exc:
            console.print(f"availability bench: {exc}")
            return 1
        finally:
            for server in started:
                stop(server)
    table = Table(title=f"3 nodes, N=3 R=2 W=2, {args.value_size} B values, concurrency {args.concurrency}, {args.seconds:g} s each")
    for column in ("cluster", "workload", "ops/s", "p99.9 ms", "server CPU ms/op"):
        table.add_column(column, justify="right" if column not in ("cluster", "workload") else "left")
    for label, workload, result, cpu_ms in rows:
        table.add_row(label, workload, f"{result['ops_per_s']:,.0f}", f"{result['p999_ms']:.1f}", "-" if cpu_ms is None else f"{cpu_ms:.2f}")
    type(console)(highlight=False).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
