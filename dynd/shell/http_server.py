"""The HTTP door's transport: HTTP/1.1 over trio, parsed by h11 (sans-IO), one task per connection.

What a request means is `dynd.shell.riak_api`'s; this module only reads requests whole, within
limits, hands each to the app with the roles its sender holds, and writes the answers back in
order. h11 keeps the connection's state: keep-alive, pipelined requests (read one at a time: the
next is not parsed until this one is answered, so answers go out in order and bytes a client
sends ahead wait in the socket), `Expect: 100-continue`, chunked bodies, HEAD.

Limits (`dynd.core.limits`), so a stranger who reaches the port holds little:
- `http_connections_max` connections at once; one more is answered 503 and closed.
- The request line and headers within `http_header_bytes_max` (431 otherwise), a body within
  `http_body_bytes_max`: a Content-Length above it is answered 413 before any of the body is read,
  a chunked body that grows past it is cut off with 413. Either way the connection then closes.
  Bodies being received on all connections together may hold `partial_frames_bytes_max` (the
  CBOR port's bound on partly received frames): the request whose bytes pass it gets 503.
- A request must arrive whole within `http_request_timeout_ms` of its first byte (slowloris, on
  headers or body: 408 and close); a kept-alive connection with no request for
  `http_idle_timeout_ms` is closed; an answer the client does not take within the request
  timeout closes the connection.
- A request in an HTTP version other than 1.0 or 1.1 is answered 505, then closed.
- Anything h11 cannot parse (a bad request line, bad headers, bad chunked framing, a second
  Content-Length, both Content-Length and Transfer-Encoding) is answered 400 with what h11 said, then closed.
Nothing a bad request does reaches the node: it is refused here, before the app sees it.

Who may do what, by the rule of the CBOR port (`dynd.shell.server`): with no cluster secret
(loopback only, or a network declared trusted) every request holds every role. With a secret:
the client role unless client tokens are configured; the admin role from the node's own host;
`Authorization: Bearer TOKEN` adds the token's role (the tokens of `client_tokens_file`); a bad
token is refused with 401. Never the peer role: peers talk only on the CBOR port.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import h11
import trio

from dynd.core.limits import Limits
from dynd.protocol import auth
from dynd.shell import security as events
from dynd.shell.security import Security

log = logging.getLogger("dynd.http")

RECEIVE_BYTES = 64 * 1024
LINGER_S = 1.0  # after a refusal: how long the answer may take to go out, and the client to stop sending
SERVER_HEADER = b"dynd"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request, read whole. `headers`: (lowercase name, value) as h11 gives them; `roles`:
    what its sender may do (`roles_for`); `local`: it came from this host."""

    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    roles: frozenset[str]
    local: bool
    token_refused: bool = False  # a bearer token was given and is not valid here
    http_version: bytes = b"1.1"

    def header(self, name: bytes) -> bytes | None:
        """The value of header `name` (lowercase); several are joined with ", " as RFC 9110 allows."""
        values = [value for key, value in self.headers if key == name]
        return b", ".join(values) if values else None

    def header_list(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


@dataclass(slots=True)
class HttpResponse:
    """An answer. `chunks`: the body in pieces, sent with chunked transfer encoding (then `body`
    is ignored); else `body` with its Content-Length."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunks: list[bytes] | None = None


App = Callable[[HttpRequest], Awaitable[HttpResponse]]


def roles_for(security: Security, local: bool, authorization: bytes | None) -> tuple[frozenset[str], bool]:
    """(roles, refused) of a request: the hello rules of the CBOR port, with the token of an
    `Authorization: Bearer TOKEN` header. `refused`: a token was given and is not valid here."""
    roles: set[str] = set()
    if security.open:
        roles |= {auth.CLIENT, auth.ADMIN}
    else:
        if not security.tokens.has_client_tokens:
            roles.add(auth.CLIENT)
        if local:
            roles |= auth.ROLE_GRANTS[auth.ADMIN]
    if authorization is not None:
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        granted = security.tokens.role_of(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if granted is None:
            return frozenset(roles), True
        roles |= auth.ROLE_GRANTS[granted]
    roles.discard(auth.PEER)
    return frozenset(roles), False


class HttpServer:
    """`handle` is the `trio.serve_listeners` handler of `http_listen`."""

    def __init__(self, app: App, limits: Limits, security: Security) -> None:
        self.app = app
        self.limits = limits
        self.security = security
        self.connections = 0
        self.connections_refused = 0
        self.requests_refused = 0  # malformed, oversize or too slow: answered here, never by the app
        self.body_bytes = 0  # request bodies being received, all connections together

    async def handle(self, stream: trio.SocketStream) -> None:
        peer = _peer_of(stream)
        local = auth.is_loopback_host(peer.rsplit(":", 1)[0].strip("[]"))
        try:
            if self.connections >= self.limits.http_connections_max:
                self.connections_refused += 1
                self.security.events.record(events.CONNECTION_LIMIT, peer, f"HTTP: refused at http_connections_max={self.limits.http_connections_max}")
                with trio.move_on_after(1):
                    await stream.send_all(_raw_refusal(503, b"too many connections (http_connections_max)\n"))
                return
            self.connections += 1
            try:
                await self._serve(stream, peer, local)
            finally:
                self.connections -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        except Exception:
            log.exception("HTTP connection from %s failed", peer)  # never let one connection stop the server
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream, peer: str, local: bool) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.http_header_bytes_max)
        while True:
            request = await self._read_request(conn, stream, peer, local)
            if request is None:
                return
            try:
                response = await self.app(request)
            except Exception as exc:
                log.exception("HTTP %s %r from %s failed", request.method, request.target[:200], peer)
                response = HttpResponse(500, [("Content-Type", "text/plain")], f"internal error: {exc!r}\n".encode())
            if not await self._send(conn, stream, response, request.method == "HEAD"):
                return
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                return

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream, peer: str, local: bool) -> HttpRequest | None:
        """The next request whole, or None when the connection is to close (answered already if
        the client is owed an answer)."""
        body = bytearray()
        try:
            return await self._read(conn, stream, peer, local, body)
        finally:
            self.body_bytes -= len(body)  # the app has its own copy, or there is none

    async def _read(self, conn: h11.Connection, stream: trio.SocketStream, peer: str, local: bool, body: bytearray) -> HttpRequest | None:
        limits = self.limits
        started = bool(conn.trailing_data[0])  # pipelined bytes of this request are here already
        timeout_s = (limits.http_request_timeout_ms if started else limits.http_idle_timeout_ms) / 1000
        head: h11.Request | None = None
        with trio.move_on_after(timeout_s) as scope:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint if exc.error_status_hint in (400, 413, 414, 431) else 400
                    await self._refuse(conn, stream, peer, status, f"malformed request: {exc}")
                    return None
                if event is h11.NEED_DATA:
                    if conn.they_are_waiting_for_100_continue:
                        await self._send_bytes(stream, conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if data and not started:
                        started = True
                        scope.deadline = trio.current_time() + limits.http_request_timeout_ms / 1000
                    try:
                        conn.receive_data(data)
                    except RuntimeError:  # data after the client closed its side: nothing more to read
                        return None
                    continue
                if isinstance(event, h11.Request):
                    head = event
                    # h11 bounds a head only while it is incomplete: one that arrives whole in a
                    # single read is measured here.
                    head_bytes = len(event.method) + len(event.target) + 12 + sum(len(n) + len(v) + 4 for n, v in event.headers)
                    if head_bytes > limits.http_header_bytes_max:
                        await self._refuse(conn, stream, peer, 431, f"the request line and headers are over http_header_bytes_max={limits.http_header_bytes_max}")
                        return None
                    names = {name for name, _ in event.headers}
                    if b"transfer-encoding" in names and b"content-length" in names:  # request smuggling's shape (RFC 9112 6.1)
                        await self._refuse(conn, stream, peer, 400, "a request may not carry both Transfer-Encoding and Content-Length")
                        return None
                    if event.http_version not in (b"1.0", b"1.1"):
                        await self._refuse(conn, stream, peer, 505, f"HTTP/{event.http_version.decode('ascii', 'replace')} is not spoken here: HTTP/1.1")
                        return None
                    length = _content_length(event.headers)
                    if length is not None and length > limits.http_body_bytes_max:
                        await self._refuse(conn, stream, peer, 413, f"a body of {length} bytes is over http_body_bytes_max={limits.http_body_bytes_max}")
                        return None
                    continue
                if isinstance(event, h11.Data):
                    body += event.data
                    self.body_bytes += len(event.data)
                    if len(body) > limits.http_body_bytes_max:
                        await self._refuse(conn, stream, peer, 413, f"the body is over http_body_bytes_max={limits.http_body_bytes_max}")
                        return None
                    if self.body_bytes > limits.partial_frames_bytes_max:
                        await self._refuse(conn, stream, peer, 503, f"bodies being received by all connections are over partial_frames_bytes_max={limits.partial_frames_bytes_max}")
                        return None
                    continue
                if isinstance(event, h11.EndOfMessage):
                    break
                return None  # ConnectionClosed, or PAUSED (not expected at a cycle's start)
        if scope.cancelled_caught:
            if started:
                await self._refuse(conn, stream, peer, 408, f"the request did not arrive whole within http_request_timeout_ms={limits.http_request_timeout_ms}")
            return None
        assert head is not None
        headers = [(name, value) for name, value in head.headers]
        authorization = next((value for name, value in headers if name == b"authorization"), None)
        roles, refused = roles_for(self.security, local, authorization)
        if refused:
            self.security.events.record(events.HELLO_REFUSED, peer, "HTTP: the bearer token is not valid here")
        return HttpRequest(
            method=head.method.decode("ascii", "replace"),
            target=head.target,
            headers=headers,
            body=bytes(body),
            roles=roles,
            local=local,
            token_refused=refused,
            http_version=head.http_version,
        )

    async def _refuse(self, conn: h11.Connection, stream: trio.SocketStream, peer: str, status: int, message: str) -> None:
        """Answer a request the transport refuses (if an answer can still be sent), then the
        connection closes."""
        self.requests_refused += 1
        self.security.events.record(events.CONNECTION_LIMIT, peer, f"HTTP {status}: {message}")
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = HttpResponse(status, [("Content-Type", "text/plain"), ("Connection", "close")], (message + "\n").encode())
        with trio.move_on_after(LINGER_S):
            try:
                await self._send(conn, stream, response, head_only=False)
                # Close gently: a client still sending (the body of a 413, say) would otherwise
                # get a reset that can destroy the answer before it reads it. What it sends
                # meanwhile is read and dropped, for at most LINGER_S.
                await stream.send_eof()
                while await stream.receive_some(RECEIVE_BYTES):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, response: HttpResponse, head_only: bool) -> bool:
        """Write one answer; False when the connection must close (the client is gone or slow)."""
        headers = [(b"server", SERVER_HEADER), *((name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers)]
        if response.chunks is None:
            headers.append((b"content-length", str(len(response.body)).encode()))
        try:
            with trio.move_on_after(self.limits.http_request_timeout_ms / 1000) as scope:
                out = [conn.send(h11.Response(status_code=response.status, headers=headers, reason=_reason(response.status)))]
                if not head_only:
                    pieces = response.chunks if response.chunks is not None else [response.body]
                    out += [conn.send(h11.Data(data=piece)) for piece in pieces if piece]
                out.append(conn.send(h11.EndOfMessage()))
                await self._send_bytes(stream, b"".join(part for part in out if part))
            return not scope.cancelled_caught
        except h11.LocalProtocolError as exc:
            log.error("HTTP answer could not be written: %s", exc)
            return False

    @staticmethod
    async def _send_bytes(stream: trio.SocketStream, data: bytes | None) -> None:
        if data:
            await stream.send_all(data)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _raw_refusal(status: int, body: bytes) -> bytes:
    reason = {503: b"Service Unavailable"}.get(status, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\nServer: dynd\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (status, reason, len(body))
        + body
    )


def _peer_of(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, ValueError, AttributeError):  # gone, not an IP socket, or no socket (a test's memory stream)
        return "unknown peer"
