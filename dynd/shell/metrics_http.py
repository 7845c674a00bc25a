"""GET /metrics over a tiny HTTP/1.1 responder (trio), for a Prometheus scraper.

One request per connection, answered with `Connection: close`. Limits, so a stranger who reaches
the port cannot hold resources: the request head is at most REQUEST_HEAD_BYTES_MAX and must arrive
within REQUEST_TIMEOUT_S; the answer must be taken within the same time; at most
CONNECTIONS_MAX connections are served at once (more are closed at once, unanswered).
A request body is never read. GET /metrics -> 200; HEAD or another method -> 405; another path
-> 404; a malformed or oversized head -> 400 or 431.

What is served holds no keys, values or credentials: request counts, latencies, backlogs and
member names (`dynd.shell.prometheus`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from dynd.shell.prometheus import CONTENT_TYPE

log = logging.getLogger("dynd.metrics")

REQUEST_HEAD_BYTES_MAX = 8 * 1024
REQUEST_TIMEOUT_S = 5.0
CONNECTIONS_MAX = 16
METRICS_PATH = "/metrics"

Scrape = Callable[[], bytes]  # the exposition text, built when asked


class MetricsServer:
    def __init__(self, scrape: Scrape, *, connections_max: int = CONNECTIONS_MAX, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self._scrape = scrape
        self._connections_max = connections_max
        self._open = 0
        self._timeout_s = timeout_s

    async def handle(self, stream: trio.abc.Stream) -> None:
        """`trio.serve_listeners` handler: one request, one answer, close."""
        async with stream:
            if self._open >= self._connections_max:
                return  # over the connection limit: close unanswered
            self._open += 1
            try:
                with trio.move_on_after(self._timeout_s):
                    await self._serve_one(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the scraper went away; nothing to answer
            finally:
                self._open -= 1

    async def _serve_one(self, stream: trio.abc.Stream) -> None:
        head = await _read_head(stream)
        if head is None:
            await _respond(stream, 431, "Request Header Fields Too Large", b"request head too large\n")
            return
        status, reason, body, content_type, extra = self.answer(head)
        await _respond(stream, status, reason, body, content_type, extra)

    def answer(self, head: bytes) -> tuple[int, str, bytes, str, str]:
        """Status, reason, body, content type and extra header lines for one request head."""
        text_type = "text/plain; charset=utf-8"
        request_line = head.split(b"\r\n", 1)[0]
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, "Bad Request", b"bad request line\n", text_type, ""
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != METRICS_PATH.encode():
            return 404, "Not Found", b"only /metrics is served here\n", text_type, ""
        if method != b"GET":
            return 405, "Method Not Allowed", b"only GET\n", text_type, "Allow: GET\r\n"
        return 200, "OK", self._scrape(), CONTENT_TYPE, ""


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    """The bytes before the blank line ending the request head; None when it exceeds the limit.
    A peer that closes early yields what it sent (then answered as a bad request)."""
    buffer = bytearray()
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > REQUEST_HEAD_BYTES_MAX:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return bytes(buffer)
        buffer += chunk
    return None if end > REQUEST_HEAD_BYTES_MAX else bytes(buffer[:end])


async def _respond(stream: trio.abc.Stream, status: int, reason: str, body: bytes, content_type: str = "text/plain; charset=utf-8", extra: str = "") -> None:
    header = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    await stream.send_all(header.encode("ascii") + body)
