"""Helpers for the HTTP door's integration tests: a 3-node cluster with `--http-listen` on every
node, and a plain HTTP client (http.client) that returns status, headers and body."""

from __future__ import annotations

import contextlib
import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import FAST_TIMERS, poll_until, settled, start_node
from tests.support.procs import DyndProcess, free_port

HTTP_TIMEOUT_S = 10.0


@dataclass
class HttpNode:
    node: DyndProcess
    http: str  # HOST:PORT of its HTTP door


@contextlib.contextmanager
def http_cluster(base: Path, prefix: str, size: int = 3, config_text: str = FAST_TIMERS) -> Iterator[list[HttpNode]]:
    nodes: list[HttpNode] = []
    try:
        for index in range(1, size + 1):
            http = f"127.0.0.1:{free_port()}"
            seed = nodes[0].node if nodes else None
            nodes.append(HttpNode(start_node(base, f"{prefix}{index}", seed, ("--http-listen", http), config_text=config_text), http))
        poll_until(f"{size} members everywhere", lambda: settled([n.node for n in nodes], {n.node.name for n in nodes}))
        yield nodes
    finally:
        for each in nodes:
            each.node.stop()
            each.node.cleanup()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(address: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    """One request on a fresh connection."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()
