"""Thirty-odd malformed HTTP requests against a real node's HTTP door: bad request lines, header
floods, slowloris on headers and bodies, chunked encoding errors, huge Content-Lengths, bad
vclocks and metadata. Each gets a 4xx (or, when no answer is owed, a closed connection), never a
5xx; the node logs no traceback, keeps serving a client connected throughout (HTTP keep-alive and
CBOR), and its resident memory grows by less than 10 MB."""

from __future__ import annotations

import base64
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynd.client import BlockingClient
from tests.support.http_door import HttpNode, request
from tests.support.procs import DyndProcess, free_port

REQUEST_TIMEOUT_MS = 1500
CONFIG = f"""
[limits]
http_request_timeout_ms = {REQUEST_TIMEOUT_MS}
http_idle_timeout_ms = 20000
tick_interval_ms = 20
"""
RSS_GROWTH_MAX_BYTES = 10 * 1024 * 1024
ANSWER_DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpNode]:
    http = f"127.0.0.1:{free_port()}"
    base: Path = tmp_path_factory.mktemp("hostile-http")
    node = DyndProcess(base / "x1", name="x1", config_text=CONFIG, extra_args=("--replicas", "1", "--r", "1", "--w", "1", "--http-listen", http))
    node.start()
    try:
        yield HttpNode(node, http)
    finally:
        node.stop()
        node.cleanup()


def raw(address: str, *pieces: bytes, pause_s: float = 0.0) -> int | None:
    """Send `pieces` (pausing between them), then read until the node answers and closes or the
    deadline passes; the status of the first answer, or None when the node closed without one.
    (A refused request is answered and its connection closed; one a well-formed request keeps
    alive, so this stops at the answer's head.)"""
    host, port = address.rsplit(":", 1)
    received = b""
    with socket.create_connection((host, int(port)), timeout=ANSWER_DEADLINE_S) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
                if pause_s:
                    time.sleep(pause_s)  # the slow client itself: the delay is the attack
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node answered and closed before everything was sent
        deadline = time.monotonic() + ANSWER_DEADLINE_S
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received:
                break  # the answer's head is here: its status is all this needs
    match = re.match(rb"HTTP/1\.1 (\d{3})", received)
    return int(match.group(1)) if match else None


def head(path: str = "/buckets/b/keys/k", method: str = "GET", headers: str = "", body: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body


HUGE_VCLOCK = base64.b64encode(b"\x83\x01" + b"\x99" * 6000).decode()
GARBAGE_VCLOCK = base64.b64encode(b"\x83\x01\x82\x81\x83\x61\x61\x00\x00\x80").decode()  # counter 0
PUT_TEXT = "Content-Type: text/plain\r\n"

MALFORMED: list[tuple[str, tuple[bytes, ...], set[int | None]]] = [
    ("garbage request line", (b"GARBAGE\r\n\r\n",), {400}),
    ("method alone", (b"GET\r\n\r\n",), {400}),
    ("unknown HTTP version", (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",), {400, 505}),
    ("space in the target", (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",), {400}),
    ("binary junk", (bytes(range(256)) * 4,), {400}),
    ("header without a colon", (b"GET / HTTP/1.1\r\nHost x\r\n\r\n",), {400}),
    ("no Host header", (b"GET / HTTP/1.1\r\n\r\n",), {400}),
    ("one 40 KB header", (head(headers="X-Big: " + "a" * 40_000 + "\r\n"),), {431, 400}),
    ("a flood of 4000 headers", (head(headers="".join(f"X-{i}: v\r\n" for i in range(4000))),), {431, 400}),
    ("a 30 KB request target", (head(path="/buckets/b/keys/" + "k" * 30_000),), {431, 414, 400}),
    ("a space in a header name", (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",), {400}),
    ("a NUL in a header value", (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",), {400}),
    ("two Content-Lengths", (head(method="PUT", headers=PUT_TEXT + "Content-Length: 1\r\nContent-Length: 2\r\n", body=b"ab"),), {400}),
    ("negative Content-Length", (head(method="PUT", headers=PUT_TEXT + "Content-Length: -1\r\n"),), {400}),
    ("Content-Length not a number", (head(method="PUT", headers=PUT_TEXT + "Content-Length: abc\r\n"),), {400}),
    ("Content-Length of a terabyte", (head(method="PUT", headers=PUT_TEXT + "Content-Length: 1000000000000\r\n"),), {413}),
    ("Content-Length of 30 digits", (head(method="PUT", headers=PUT_TEXT + "Content-Length: " + "9" * 30 + "\r\n"),), {413, 400}),
    ("chunk size not hex", (head(method="PUT", headers=PUT_TEXT + "Transfer-Encoding: chunked\r\n", body=b"zz\r\nab\r\n0\r\n\r\n"),), {400}),
    ("chunk without its CRLF", (head(method="PUT", headers=PUT_TEXT + "Transfer-Encoding: chunked\r\n", body=b"2\r\nabXX1\r\na\r\n0\r\n\r\n"),), {400}),
    ("Transfer-Encoding gzip", (head(method="PUT", headers=PUT_TEXT + "Transfer-Encoding: gzip\r\n", body=b"x"),), {400, 501}),
    ("chunked and Content-Length", (head(method="PUT", headers=PUT_TEXT + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", body=b"1\r\na\r\n0\r\n\r\n"),), {400}),
    (
        "a chunked upload of 2 MB",
        (head(method="PUT", headers=PUT_TEXT + "Transfer-Encoding: chunked\r\n"), *([b"10000\r\n" + b"x" * 0x10000 + b"\r\n"] * 32)),
        {413},
    ),
    ("bad vclock: not base64", (head(method="PUT", headers=PUT_TEXT + "X-Riak-Vclock: !!!\r\nContent-Length: 1\r\n", body=b"x"),), {400}),
    ("bad vclock: no context", (head(method="PUT", headers=PUT_TEXT + f"X-Riak-Vclock: {GARBAGE_VCLOCK}\r\nContent-Length: 1\r\n", body=b"x"),), {400}),
    ("bad vclock: 8 KB of token", (head(method="PUT", headers=PUT_TEXT + f"X-Riak-Vclock: {HUGE_VCLOCK}\r\nContent-Length: 1\r\n", body=b"x"),), {400}),
    ("PUT without a Content-Type", (head(method="PUT", headers="Content-Length: 1\r\n", body=b"x"),), {400}),
    ("metadata over meta_bytes_max", (head(method="PUT", headers=PUT_TEXT + "X-Riak-Meta-Big: " + "m" * 9000 + "\r\nContent-Length: 1\r\n", body=b"x"),), {400}),
    ("metadata not ASCII", (head(method="PUT", headers=PUT_TEXT + "X-Riak-Meta-A: \xe9t\xe9\r\nContent-Length: 1\r\n", body=b"x"),), {400}),
    ("a 300-byte bucket", (head(path="/buckets/" + "b" * 300 + "/keys/k"),), {400}),
    ("a query of 200 fields", (head(path="/buckets/b/keys/k?" + "&".join(f"f{i}=1" for i in range(200))),), {400}),
    ("r that is no quorum", (head(path="/buckets/b/keys/k?r=lots"),), {400}),
]

SLOW: list[tuple[str, tuple[bytes, ...], float]] = [
    ("slowloris on the headers", (b"GET / HTTP/1.1\r\n", *([b"X-Slow: 1\r\n"] * 8)), 0.3),
    ("slowloris on the body", (head(method="PUT", headers=PUT_TEXT + "Content-Length: 100\r\n"), *([b"x"] * 8)), 0.3),
]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_malformed_requests_get_4xx_and_the_node_keeps_serving(door: HttpNode) -> None:
    assert request(door.http, "PUT", "/buckets/b/keys/k", b"kept", {"Content-Type": "text/plain"}).status == 204
    host, port = door.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=ANSWER_DEADLINE_S) as steady, BlockingClient(door.node.address) as cbor:
        steady_file = steady.makefile("rb")

        def steady_get() -> bytes:
            steady.sendall(head())
            status_line = steady_file.readline()
            length = 0
            while (line := steady_file.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert status_line.startswith(b"HTTP/1.1 200"), status_line
            return steady_file.read(length)

        assert steady_get() == b"kept"
        for _ in range(3):  # warm up what a first answer allocates before the baseline
            assert raw(door.http, head(headers="Connection: close\r\n")) == 200
        baseline = rss_bytes(door.node.pid)
        outcomes = {}
        for name, pieces, expected in MALFORMED:
            outcomes[name] = raw(door.http, *pieces)
            assert outcomes[name] in expected, (name, outcomes[name])
            assert steady_get() == b"kept", f"after {name}"
        for name, pieces, pause_s in SLOW:
            started = time.monotonic()
            outcomes[name] = raw(door.http, *pieces, pause_s=pause_s)
            assert outcomes[name] == 408, (name, outcomes[name])
            assert time.monotonic() - started < pause_s * len(pieces) + ANSWER_DEADLINE_S
            assert steady_get() == b"kept", f"after {name}"
        assert len(outcomes) >= 30
        assert cbor.get(b"nothing-changed").found is False and cbor.ping() == "x1"
        growth = rss_bytes(door.node.pid) - baseline
        print(f"RSS growth over {len(outcomes)} malformed requests: {growth / 1024:.0f} KiB; outcomes {outcomes}")
        assert growth < RSS_GROWTH_MAX_BYTES, growth
    assert request(door.http, "GET", "/buckets/b/keys/k").body == b"kept"
    assert door.node.running
    log = door.node.stderr_text()
    assert "Traceback" not in log and "failed" not in log.lower().replace("failed_", ""), door.node.stderr_tail()


def test_connections_over_the_limit_are_refused_with_503(tmp_path: Path) -> None:
    http = f"127.0.0.1:{free_port()}"
    config = "[limits]\nhttp_connections_max = 2\n"
    node = DyndProcess(tmp_path / "y1", name="y1", config_text=config, extra_args=("--replicas", "1", "--r", "1", "--w", "1", "--http-listen", http))
    node.start()
    try:
        host, port = http.rsplit(":", 1)
        held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(2)]
        try:
            for sock in held:  # each is being served (an answer proves it) and kept alive
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            assert raw(http, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n") == 503
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while request(http, "GET", "/ping").status != 200:  # the slots come back once those close
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        node.stop()
        node.cleanup()
