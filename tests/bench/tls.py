"""What does TLS cost per operation? The same workload against dynd with TLS off and on, in one run.

    python tests/bench/tls.py [--seconds 10] [--rounds 3] [--nodes 1] [--concurrency 32] [--connections 4] [--value-size 1024]

Makes a CA and node certificates with trustme in a temporary directory, starts two identical dynd
deployments on 127.0.0.1 (`--nodes 1`: one node each; `--nodes 3`: a 3-node cluster each, N=3 R=W=2,
whose peers then talk mutual TLS too), one plain and one with `[security] tls_cert_file,
tls_key_file, tls_ca_file`, and drives each from this process with `dynd.client` (C tasks over K
connections; each task overwrites its own keys with the context of its last put; gets read keys
written before the timed phase). It reports for each workload, per deployment: ops/s, p99, and CPU
per operation of the servers (their processes and children, from /proc, sampled at the edges of
the timed phase) and of this client; then the ratios TLS / plain.

A shared 2-core VM drifts by tens of percent within minutes, so the deployments run back to back in
each round, alternating which goes first, and the ratios are each round's TLS figure over the same
round's plain one, their median over the rounds (with the range). The load generator shares the
cores with the servers: compare ratios, not absolute figures across machines.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dynd.client import Client, open_client  # noqa: E402
from dynd.protocol.tls import client_context  # noqa: E402
from tests.support.procs import DyndProcess, free_port  # noqa: E402

WORKLOADS = ("put", "get")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PREFIX = b"tlsbench"


# ---- CPU of a process tree ----


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants still running (dynd's committer is a child)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the load ----


@dataclass
class Outcome:
    ops: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000 if ordered else 0.0

    @property
    def server_us_per_op(self) -> float:
        return self.server_cpu_s / self.ops * 1e6 if self.ops else 0.0

    @property
    def client_us_per_op(self) -> float:
        return self.client_cpu_s / self.ops * 1e6 if self.ops else 0.0


async def drive(addresses: list[str], pids: list[int], workload: str, args: argparse.Namespace, ssl_context: Any) -> Outcome:
    outcome = Outcome()
    value = secrets.token_bytes(args.value_size)
    keys_per_worker = 4
    async with trio.open_nursery() as nursery:
        clients: list[Client] = []
        for index in range(args.connections):
            ready = trio.Event()
            holder: list[Client] = []

            async def hold(address: str, ready: trio.Event = ready, holder: list[Client] = holder) -> None:
                async with open_client(address, timeout_s=30.0, agent="bench:tls", ssl_context=ssl_context) as client:
                    holder.append(client)
                    ready.set()
                    await trio.sleep_forever()

            nursery.start_soon(hold, addresses[index % len(addresses)])
            await ready.wait()
            clients.append(holder[0])

        def keys(worker: int) -> list[bytes]:
            return [PREFIX + f":{workload}:{worker}:{k}".encode() for k in range(keys_per_worker)]

        contexts: dict[bytes, bytes | None] = {}
        # Untimed: every key written once, so gets find a value and puts overwrite one version.
        async with trio.open_nursery() as preload:
            for worker in range(args.concurrency):

                async def write(worker: int = worker) -> None:
                    client = clients[worker % len(clients)]
                    for key in keys(worker):
                        found = await client.get(key)
                        contexts[key] = await client.put(key, value, found.context or None)

                preload.start_soon(write)

        stop_at = 0.0

        async def worker_loop(worker: int) -> None:
            client = clients[worker % len(clients)]
            mine = keys(worker)
            turn = 0
            while True:
                key = mine[turn % len(mine)]
                turn += 1
                started = time.perf_counter()
                if started >= stop_at:
                    return
                try:
                    if workload == "put":
                        contexts[key] = await client.put(key, value, contexts[key])
                    else:
                        await client.get(key)
                except Exception:  # noqa: BLE001  (counted; the run goes on)
                    outcome.errors += 1
                    continue
                outcome.latencies_s.append(time.perf_counter() - started)
                outcome.ops += 1

        server_before = sum(tree_cpu_s(pid) for pid in pids)
        client_before = own_cpu_s()
        began = time.perf_counter()
        stop_at = began + args.seconds
        async with trio.open_nursery() as workers:
            for worker in range(args.concurrency):
                workers.start_soon(worker_loop, worker)
        outcome.seconds = time.perf_counter() - began
        outcome.server_cpu_s = sum(tree_cpu_s(pid) for pid in pids) - server_before
        outcome.client_cpu_s = own_cpu_s() - client_before
        nursery.cancel_scope.cancel()
    return outcome


# ---- deployments ----


def make_pki(directory: Path, names: list[str]) -> dict[str, str]:
    import trustme  # a test extra: pip install -e '.[test]'

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    files = {"ca": str(directory / "ca.pem")}
    for name in names:
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(directory / f"{name}.pem"))
        files[name] = str(directory / f"{name}.pem")
    return files


class Deployment:
    def __init__(self, label: str, scratch: Path, nodes: int, pki: dict[str, str] | None) -> None:
        self.label = label
        self.ssl_context = client_context(pki["ca"]) if pki is not None else None
        self.nodes: list[DyndProcess] = []
        for i in range(1, nodes + 1):
            name = f"{label}{i}"
            config = "[limits]\nrequest_timeout_ms = 5000\n"
            if pki is not None:
                config += f'\n[security]\ntls_cert_file = "{pki[name]}"\ntls_key_file = "{pki[name]}"\ntls_ca_file = "{pki["ca"]}"\n'
            args = ("--join", self.nodes[0].address) if self.nodes else ("--replicas", str(min(3, nodes)), "--r", str(min(2, nodes)), "--w", str(min(2, nodes)), "--partitions", "64")
            node = DyndProcess(scratch / name, name=name, config_text=config, port=free_port(), extra_args=args)
            if pki is not None:
                node.wait_ready = _tls_ready(node, self.ssl_context)  # type: ignore[method-assign]
            self.nodes.append(node)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes]

    def argv(self) -> list[str]:
        return self.nodes[0].argv()


def _tls_ready(node: DyndProcess, ssl_context: Any) -> Callable[..., str]:
    def wait_ready(timeout_s: float = 30.0) -> str:
        async def ping() -> str:
            async with open_client(node.address, timeout_s=1.0, ssl_context=ssl_context) as client:
                return await client.ping()

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return trio.run(ping)
            except Exception as exc:  # noqa: BLE001  (not ready yet)
                if node.proc is not None and node.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{node.name} did not start: {exc}\n{node.stderr_tail()}") from None
                time.sleep(0.05)

    return wait_ready


async def settle(deployment: Deployment, expected: int) -> None:
    """Wait until the first node sees every member joined (a cluster, before timing it)."""
    deadline = trio.current_time() + 60
    while True:
        async with open_client(deployment.addresses[0], ssl_context=deployment.ssl_context) as client:
            status = await client.cluster_status(local_only=True)
        if sum(1 for m in status.members if m.status == "joined" and m.liveness == "alive") == expected and not any(m.transfers_pending for m in status.members):
            return
        if trio.current_time() > deadline:
            raise RuntimeError(f"{deployment.label} did not settle")
        await trio.sleep(0.2)


# ---- report ----


def median_range(values: list[float], form: str) -> str:
    if not values:
        return "-"
    middle = form.format(statistics.median(values))
    return middle if len(values) == 1 else f"{middle} ({form.format(min(values))}-{form.format(max(values))})"


def report(results: dict[tuple[str, str], list[Outcome]], args: argparse.Namespace, argvs: list[list[str]]) -> None:
    print(f"Command: {shlex.join([sys.executable, *sys.argv])}")
    for argv in argvs:
        print(f"  node: {shlex.join(argv)}")
    rounds = f"median of {args.rounds} rounds (range)" if args.rounds > 1 else "one round"
    print(
        f"\nTLS off vs on: {args.nodes} node(s) each, {args.value_size} B values, concurrency {args.concurrency} over "
        f"{args.connections} connections, {args.seconds:g} s per run, {rounds}; us/op: CPU per operation; ratio: tls/plain\n"
    )
    header = (
        "workload", "ops/s plain", "ops/s tls", "ratio", "p99 ms plain", "p99 ms tls",
        "server us/op plain", "server us/op tls", "ratio", "client us/op plain", "client us/op tls", "ratio",
    )  # fmt: skip
    rows = [header]
    for workload in WORKLOADS:
        plain, tls = results[("plain", workload)], results[("tls", workload)]

        def ratio(metric: Callable[[Outcome], float]) -> list[float]:
            return [metric(t) / metric(p) for p, t in zip(plain, tls) if metric(p)]

        rows.append(
            (
                workload,
                median_range([o.ops_per_s for o in plain], "{:,.0f}"),
                median_range([o.ops_per_s for o in tls], "{:,.0f}"),
                median_range(ratio(lambda o: o.ops_per_s), "{:.2f}"),
                median_range([o.p99_ms for o in plain], "{:.2f}"),
                median_range([o.p99_ms for o in tls], "{:.2f}"),
                median_range([o.server_us_per_op for o in plain], "{:.0f}"),
                median_range([o.server_us_per_op for o in tls], "{:.0f}"),
                median_range(ratio(lambda o: o.server_us_per_op), "{:.2f}"),
                median_range([o.client_us_per_op for o in plain], "{:.0f}"),
                median_range([o.client_us_per_op for o in tls], "{:.0f}"),
                median_range(ratio(lambda o: o.client_us_per_op), "{:.2f}"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))))
    errors = {f"{label} {workload}": sum(o.errors for o in runs) for (label, workload), runs in results.items()}
    if any(errors.values()):
        print(f"\nerrors during the runs: {errors}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=1, choices=(1, 3))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--value-size", type=int, default=1024, metavar="BYTES")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dynd-tls-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        pki = make_pki(scratch, [f"tls{i}" for i in range(1, args.nodes + 1)])
        deployments = {"plain": Deployment("plain", scratch, args.nodes, None), "tls": Deployment("tls", scratch, args.nodes, pki)}
        results: dict[tuple[str, str], list[Outcome]] = {(label, w): [] for label in deployments for w in WORKLOADS}
        try:
            for deployment in deployments.values():
                deployment.start()
                if args.nodes > 1:
                    trio.run(settle, deployment, args.nodes)
            for round_index in range(args.rounds):
                labels = list(deployments) if round_index % 2 == 0 else list(deployments)[::-1]
                for workload in WORKLOADS:
                    for label in labels:
                        deployment = deployments[label]
                        outcome = trio.run(drive, deployment.addresses, deployment.pids, workload, args, deployment.ssl_context)
                        results[(label, workload)].append(outcome)
                        print(
                            f"round {round_index + 1} {workload:>3} {label:>5}: {outcome.ops_per_s:8,.0f} ops/s, "
                            f"server {outcome.server_us_per_op:5.0f} us/op, client {outcome.client_us_per_op:5.0f} us/op",
                            file=sys.stderr,
                        )
        finally:
            for deployment in deployments.values():
                deployment.stop()
        report(results, args, [d.argv() for d in deployments.values()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
