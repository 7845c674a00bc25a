"""One load driver for dynd, the echo server and etcd, so `peers.py` compares stores, not clients.

    python tests/bench/peers_driver.py --target dynd|echo|etcd --addresses H:P[,H:P...]
        --workload insert|get [--seconds 10] [--ops MAX] [--concurrency 32] [--value-size 1024] [--keys 1000]

C workers (trio tasks) each get their own connection, spread round-robin over the addresses (each
dynd node coordinates what it receives; each etcd member forwards writes to its leader). insert
writes a fresh key per operation; get first writes `--keys` keys (untimed), then reads them in turn.
Prints one JSON line: ops, errors, ops_per_s, p50/p99/p999/max in ms, and with --server-pids the
user+system CPU seconds those processes and their children spent during the timed phase only.

dynd and the echo server speak dynd's protocol through `dynd.client.Client`. etcd is driven through
its v3 gRPC gateway (JSON over HTTP/1.1, keep-alive, one request in flight per connection), with
etcd's default linearizable reads, by the small client below: an HTTP client library would add a
dependency for four lines of protocol. The gateway costs etcd some CPU that gRPC would not; the
etcd rows are therefore a slight underestimate of etcd, which `peers.py` states.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
import time
from array import array
from contextlib import AsyncExitStack
from typing import Any, Protocol

import trio
from cluster import cpu_seconds

from dynd.protocol.errors import DynError

CONNECT_DEADLINE_S = 10.0
HTTP_HEADER_BYTES_MAX = 64 * 1024
RECEIVE_BYTES = 64 * 1024


class KeyValueConnection(Protocol):
    async def put(self, key: bytes, value: bytes) -> None: ...
    async def get(self, key: bytes) -> None: ...


class DyndConnection:
    """dynd and the echo server: puts without a context (inserts and first writes)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    async def open(cls, address: str, stack: AsyncExitStack) -> DyndConnection:
        from dynd.client import open_client

        return cls(await stack.enter_async_context(open_client(address, agent="peers-driver", timeout_s=CONNECT_DEADLINE_S)))

    async def put(self, key: bytes, value: bytes) -> None:
        await self._client.put(key, value)

    async def get(self, key: bytes) -> None:
        result = await self._client.get(key)
        if not result.found:
            raise LookupError(key)


class HttpError(RuntimeError):
    pass


class EtcdConnection:
    """etcd v3 over its JSON gateway: POST /v3/kv/put and /v3/kv/range on one keep-alive connection."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self._stream = stream
        self._host = host.encode()
        self._buffer = bytearray()

    @classmethod
    async def open(cls, address: str, stack: AsyncExitStack) -> EtcdConnection:
        host, port = address.rsplit(":", 1)
        with trio.fail_after(CONNECT_DEADLINE_S):
            stream = await trio.open_tcp_stream(host, int(port))
        await stack.enter_async_context(stream)
        return cls(stream, address)

    async def put(self, key: bytes, value: bytes) -> None:
        await self._post(b"/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    async def get(self, key: bytes) -> None:
        reply = await self._post(b"/v3/kv/range", {"key": _b64(key)})
        if not reply.get("kvs"):
            raise LookupError(key)

    async def _post(self, path: bytes, body: dict[str, str]) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        await self._stream.send_all(head % (path, self._host, len(payload)) + payload)
        status, headers = await self._read_head()
        if headers.get(b"transfer-encoding") == b"chunked":
            body_bytes = await self._read_chunked()
        else:
            body_bytes = await self._read_exactly(int(headers.get(b"content-length", b"0")))
        if status != 200:
            raise HttpError(f"etcd answered {status}: {body_bytes[:200]!r}")
        reply: dict[str, Any] = json.loads(body_bytes)
        return reply

    async def _fill(self) -> None:
        chunk = await self._stream.receive_some(RECEIVE_BYTES)
        if not chunk:
            raise HttpError("etcd closed the connection")
        self._buffer += chunk

    async def _read_line_block(self, end: bytes) -> bytes:
        while (at := self._buffer.find(end)) < 0:
            if len(self._buffer) > HTTP_HEADER_BYTES_MAX:
                raise HttpError("response header too long")
            await self._fill()
        block = bytes(self._buffer[:at])
        del self._buffer[: at + len(end)]
        return block

    async def _read_head(self) -> tuple[int, dict[bytes, bytes]]:
        lines = (await self._read_line_block(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int((await self._read_line_block(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._read_line_block(b"\r\n")
                return bytes(body)
            body += await self._read_exactly(size)
            await self._read_exactly(2)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


OPENERS = {"dynd": DyndConnection.open, "echo": DyndConnection.open, "etcd": EtcdConnection.open}


def percentile_ms(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[max(1, math.ceil(fraction * len(ordered))) - 1] * 1000.0, 3)


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    addresses = args.addresses.split(",")
    value = os.urandom(args.value_size)
    run_tag = os.urandom(4).hex().encode()
    async with AsyncExitStack() as stack:
        opener = OPENERS[args.target]
        connections = [await opener(addresses[worker % len(addresses)], stack) for worker in range(args.concurrency)]
        return await _drive_connections(args, connections, value, run_tag)


async def _drive_connections(args: argparse.Namespace, connections: list[Any], value: bytes, run_tag: bytes) -> dict[str, Any]:
    keys = [b"peers:%s:%08d" % (run_tag, index) for index in range(args.keys)]
    if args.workload == "get":
        async with trio.open_nursery() as nursery:  # untimed: every get then finds a value
            for worker, connection in enumerate(connections):
                nursery.start_soon(_load, connection, keys[worker :: args.concurrency], value)
    server_pids = [int(pid) for pid in args.server_pids.split(",")] if args.server_pids else []
    cpu_before = cpu_seconds(server_pids)
    latencies = array("d")
    errors = {"count": 0}
    started_ops = [0]
    started = time.perf_counter()
    deadline = started + args.seconds

    async def worker(index: int, connection: KeyValueConnection) -> None:
        sequence = 0
        mine = keys[index :: args.concurrency] or keys
        while time.perf_counter() < deadline and (args.ops is None or started_ops[0] < args.ops):
            started_ops[0] += 1
            sequence += 1
            begun = time.perf_counter()
            try:
                if args.workload == "insert":
                    await connection.put(b"peers:%s:%04d:%010d" % (run_tag, index, sequence), value)
                else:
                    await connection.get(mine[sequence % len(mine)])
            except (LookupError, HttpError, DynError) as exc:  # counted; the run goes on
                errors["count"] += 1
                if errors["count"] == 1:
                    print(f"first error: {exc!r}", file=sys.stderr)
            else:
                latencies.append(time.perf_counter() - begun)

    async with trio.open_nursery() as nursery:
        for index, connection in enumerate(connections):
            nursery.start_soon(worker, index, connection)
    elapsed = time.perf_counter() - started
    server_cpu_s = cpu_seconds(server_pids) - cpu_before
    ordered = sorted(latencies)
    return {
        "target": args.target,
        "workload": args.workload,
        "ops": len(ordered),
        "errors": errors["count"],
        "elapsed_s": round(elapsed, 3),
        "ops_per_s": round(len(ordered) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": percentile_ms(ordered, 0.5),
        "p99_ms": percentile_ms(ordered, 0.99),
        "p999_ms": percentile_ms(ordered, 0.999),
        "max_ms": round(ordered[-1] * 1000.0, 3) if ordered else None,
        "server_cpu_s": round(server_cpu_s, 3) if server_pids else None,
    }


async def _load(connection: KeyValueConnection, keys: list[bytes], value: bytes) -> None:
    for key in keys:
        await connection.put(key, value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(OPENERS), required=True)
    parser.add_argument("--addresses", required=True, help="host:port[,host:port...]")
    parser.add_argument("--workload", choices=("insert", "get"), required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--ops", type=int, default=None, help="stop after this many operations")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--server-pids", default="", help="pid[,pid...]: report their CPU (children included)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.keys < 1 or (args.ops is not None and args.ops < 1):
        parser.error("--seconds, --concurrency, --keys and --ops must be positive")
    print(json.dumps(trio.run(drive, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
