"""What authentication costs, as ratios measured in one run.

    python tests/bench/security.py [--seconds 6] [--rounds 3] [--concurrency 32]

1. Per operation: a three-node cluster with a cluster secret next to one without (N=3 R=2 W=2,
   1 KiB values), `dynctl --json bench` inserts and gets through one node, rounds interleaved.
   Requests carry no MAC (a connection proves the secret once, in its hello), so what a request
   pays is the role check; the failure detector's datagrams carry their MAC in both clusters.
2. Per connection: hellos per second, with the peer proof (two HMACs each way, a second round
   trip) and without it, against the same node.
3. Per datagram: microseconds to MAC and to check a failure-detector datagram.

Both clusters share the two cores with the load generator, so compare within one run.
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

import trio
from cluster import cpu_seconds, dynd, wait_for_members
from foundation import HOST, Server, StartupFailed, console, free_port, run_bench, start, stop, venv_command, wait_until_accepting
from rich.table import Table

from dynd.client import PeerCredentials, open_client
from dynd.protocol import auth

WORKLOADS = ("insert", "get")


def start_cluster(scratch: Path, prefix: str, config: Path | None) -> list[Server]:
    extra = ("--config", str(config)) if config is not None else ()
    ports = [free_port() for _ in range(3)]
    first = dynd(f"{prefix}1", ports[0], scratch / f"{prefix}1", scratch / f"{prefix}1.log", "--replicas", "3", "--r", "2", "--w", "2", *extra)
    nodes = [first] + [
        dynd(f"{prefix}{i + 1}", ports[i], scratch / f"{prefix}{i + 1}", scratch / f"{prefix}{i + 1}.log", "--join", first.address, *extra)
        for i in (1, 2)
    ]
    for node in nodes:
        start(node)
        wait_until_accepting(node)
    wait_for_members(first.address, 3)
    return nodes


async def hellos_per_second(address: str, peer: PeerCredentials | None, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        async with open_client(address, peer=peer, agent="bench:hello"):
            done += 1
    return done / seconds


def mac_microseconds(rounds: int = 20_000) -> tuple[float, float]:
    keyring = auth.Keyring((os.urandom(32),))
    body = os.urandom(300)
    started = time.perf_counter()
    for _ in range(rounds):
        mac = auth.datagram_mac(keyring.current, body)
    made = (time.perf_counter() - started) / rounds * 1e6
    started = time.perf_counter()
    for _ in range(rounds):
        auth.check_datagram_mac(keyring, body, mac)
    return made, (time.perf_counter() - started) / rounds * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="dynd-security-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        secret_file = scratch / "secret"
        secret_file.write_text(auth.new_secret_text())
        secret_file.chmod(0o600)
        config = scratch / "secure.toml"
        config.write_text(f'[security]\ncluster_secret_file = "{secret_file}"\n')
        keyring = auth.load_keyring(secret_file.read_text())
        clusters: dict[str, list[Server]] = {}
        try:
            clusters["no secret"] = start_cluster(scratch, "open", None)
            clusters["secret"] = start_cluster(scratch, "sec", config)
            for round_index in range(args.rounds):
                order = list(clusters) if round_index % 2 == 0 else list(reversed(clusters))
                for workload in WORKLOADS:
                    for label in order:
                        nodes = clusters[label]
                        command = [
                            *venv_command("dynctl", "dynctl"), "--node", nodes[0].address, "--json", "bench",
                            "--workload", workload, "--concurrency", str(args.concurrency), "--seconds", f"{args.seconds:g}",
                        ]  # fmt: skip
                        pids = [n.process.pid for n in nodes if n.process is not None]
                        before = cpu_seconds(pids)
                        result = run_bench(command, args.seconds)
                        result["cpu_us_per_op"] = (cpu_seconds(pids) - before) / result["ops"] * 1e6 if result["ops"] else float("nan")
                        results.setdefault((label, workload), []).append(result)
            secure = clusters["secret"][0].address
            cluster_id = ""
            plain = trio.run(hellos_per_second, secure, None, 2.0)
            proved = trio.run(hellos_per_second, secure, PeerCredentials("bench", cluster_id, keyring), 2.0)
        except (StartupFailed, RuntimeError) as exc:
            console.print(f"security bench: {exc}")
            return 1
        finally:
            for nodes in clusters.values():
                for node in nodes:
                    stop(node)
    table = Table(title=f"3 nodes, N=3 R=2 W=2, 1 KiB values, concurrency {args.concurrency}, {args.seconds:g} s, median of {args.rounds} interleaved rounds")
    for column in ("workload", "no secret ops/s", "secret ops/s", "ratio", "CPU us/op (no secret / secret)"):
        table.add_column(column, justify="right")
    for workload in WORKLOADS:
        off = results[("no secret", workload)]
        on = results[("secret", workload)]
        ratios = [b["ops_per_s"] / a["ops_per_s"] for a, b in zip(off, on) if a["ops_per_s"]]
        table.add_row(
            workload,
            f"{statistics.median(r['ops_per_s'] for r in off):,.0f}",
            f"{statistics.median(r['ops_per_s'] for r in on):,.0f}",
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
            f"{statistics.median(r['cpu_us_per_op'] for r in off):.0f} / {statistics.median(r['cpu_us_per_op'] for r in on):.0f}",
        )
    console.print(table)
    made, checked = mac_microseconds()
    console.print(f"hellos/s against the node with a secret: {plain:,.0f} as a client, {proved:,.0f} as a peer proving it (ratio {proved / plain:.2f})")
    console.print(f"datagram MAC: {made:.2f} us to make, {checked:.2f} us to check (HMAC-SHA256, 300-byte body)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
