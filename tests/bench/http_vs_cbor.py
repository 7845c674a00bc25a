"""The HTTP door against the CBOR port: gets and puts on one node, in the same run.

    python tests/bench/http_vs_cbor.py [--seconds 6] [--rounds 2] [--concurrency 32] [--value-size 1024]

Starts one dynd node (N=1) with `--http-listen`, then for each round runs the same load driver
(`peers_driver.py`: C connections, one request in flight on each, fresh keys for inserts, `--keys`
preloaded keys for gets) against the CBOR port and against the HTTP door (PUT and GET of
/buckets/bench/keys/KEY on keep-alive connections, by the small client below), alternating which
goes first. Prints ops/s, p99.9 and the node's CPU per operation (its writer child included) for
each, and the ratio HTTP/CBOR per round and its median. The driver shares the machine with the node.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
# The repository first (tests.support); this directory, for the sibling driver scripts, last.
# (Not named http.py: with tests/bench on the path, as pytest puts it, that would stand in for the
# standard library's http package.)
sys.path[0] = str(HERE.parents[1])
sys.path.append(str(HERE))
import peers_driver  # noqa: E402  (a sibling script of this directory)
from peers_driver import CONNECT_DEADLINE_S, EtcdConnection, HttpError  # noqa: E402

from tests.support.procs import DyndProcess, free_port  # noqa: E402

WORKLOADS = ("insert", "get")
DRIVER_SETUP_ALLOWANCE_S = 120.0


class RiakConnection(EtcdConnection):
    """Riak's HTTP KV interface on one keep-alive connection (the HTTP reading of `EtcdConnection`)."""

    @classmethod
    async def open(cls, address: str, stack: AsyncExitStack) -> RiakConnection:
        host, port = address.rsplit(":", 1)
        with trio.fail_after(CONNECT_DEADLINE_S):
            stream = await trio.open_tcp_stream(host, int(port))
        await stack.enter_async_context(stream)
        return cls(stream, address)

    async def put(self, key: bytes, value: bytes) -> None:
        head = b"PUT /buckets/bench/keys/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
        await self._stream.send_all(head % (key, self._host, len(value)) + value)
        status, body = await self._answer()
        if status != 204:
            raise HttpError(f"PUT answered {status}: {body[:200]!r}")

    async def get(self, key: bytes) -> None:
        await self._stream.send_all(b"GET /buckets/bench/keys/%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (key, self._host))
        status, body = await self._answer()
        if status == 404:
            raise LookupError(key)
        if status != 200:
            raise HttpError(f"GET answered {status}: {body[:200]!r}")

    async def _answer(self) -> tuple[int, bytes]:
        status, headers = await self._read_head()
        return status, await self._read_exactly(int(headers.get(b"content-length", b"0")))


def drive(argv: list[str]) -> None:
    """The driver, in its own process: peers_driver with the Riak HTTP connection added."""
    peers_driver.OPENERS["riak"] = RiakConnection.open
    peers_driver.main(argv)


def run_driver(target: str, address: str, workload: str, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    argv = [
        sys.executable, str(Path(__file__).resolve()), "--drive", "--target", target, "--addresses", address, "--workload", workload,
        "--seconds", str(args.seconds), "--concurrency", str(args.concurrency), "--value-size", str(args.value_size),
        "--keys", str(args.keys), "--server-pids", str(pid),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + DRIVER_SETUP_ALLOWANCE_S, cwd=HERE.parents[1])
    if result.returncode != 0:
        raise SystemExit(f"the driver failed ({target} {workload}):\n{result.stderr}")
    document: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return document


def main() -> int:
    if "--drive" in sys.argv:
        argv = [arg for arg in sys.argv[1:] if arg != "--drive"]
        drive(argv)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args()
    http = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="dynd-http-bench-") as root:
        node = DyndProcess(Path(root) / "b1", name="b1", extra_args=("--replicas", "1", "--r", "1", "--w", "1", "--http-listen", http))
        node.start()
        try:
            results: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for round_index in range(args.rounds):
                for workload in WORKLOADS:
                    order = ("dynd", "riak") if round_index % 2 == 0 else ("riak", "dynd")
                    for target in order:
                        address = node.address if target == "dynd" else http
                        outcome = run_driver(target, address, workload, args, node.pid)
                        results.setdefault((target, workload), []).append(outcome)
                        print(json.dumps({"round": round_index + 1, **outcome}), file=sys.stderr)
        finally:
            node.stop()
    print(f"one node (N=1), {args.concurrency} connections, {args.value_size}-byte values, {args.rounds} rounds of {args.seconds:g} s")
    print(f"{'workload':8} {'door':5} {'ops/s (median)':>15} {'p99.9 ms':>9} {'CPU us/op':>10}   HTTP/CBOR ops/s per round")
    for workload in WORKLOADS:
        cbor, riak = results[("dynd", workload)], results[("riak", workload)]
        ratios = [r["ops_per_s"] / c["ops_per_s"] for r, c in zip(riak, cbor) if c["ops_per_s"]]
        for label, runs in (("CBOR", cbor), ("HTTP", riak)):
            ops = statistics.median(run["ops_per_s"] for run in runs)
            p999 = statistics.median(run["p999_ms"] or 0 for run in runs)
            cpu = statistics.median(1e6 * run["server_cpu_s"] / run["ops"] for run in runs if run["ops"])
            errors = sum(run["errors"] for run in runs)
            tail = f"   {', '.join(f'{ratio:.2f}' for ratio in ratios)} (median {statistics.median(ratios):.2f})" if label == "HTTP" else ""
            print(f"{workload:8} {label:5} {ops:15,.0f} {p999:9.1f} {cpu:10.0f}{tail}{f'   errors {errors}' if errors else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
