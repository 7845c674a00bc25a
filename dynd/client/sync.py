"""`SyncClient`: one connection over a plain blocking socket, one request at a time, no trio.

For processes that live for a request or two, such as `dynctl get` or a cron job: it loads no event
loop and starts no thread, where `open_client` needs trio around it and `BlockingClient` runs trio in
a thread of its own (and lets many threads share one connection). A call sends its request and
reads until its reply; a reply that arrives after its call timed out is recognised by its id and
skipped. One thread at a time.

It says hello as the trio connection does (`dynd.client.results.client_hello`), recognises a port
that is not dynd the same way (`dynd.client.errors`) and raises the same errors: `CannotConnect`
and `NotADyndNode` (both `Unreachable`), `Unreachable` when the connection drops, `Timeout`, and the
node's own error. With `ssl_context` it speaks TLS through the protocol's sans-IO `TlsLayer`, so
certificate and not-TLS failures read as they do there.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

from dynd.client.errors import FIRST_BYTES_KEPT, CannotConnect, copy_error, is_known_server, not_a_dynd_node
from dynd.client.results import (
    DEFAULT_TIMEOUT_S,
    HELLO_REPLY_BYTES_MAX,
    REPLY_FRAME_BYTES_MAX,
    GetResult,
    KeyLike,
    client_hello,
    expect,
    get_result,
    key_bytes,
    meta_entries,
)
from dynd.protocol import codec, messages
from dynd.protocol.address import parse_address
from dynd.protocol.errors import BadFrame, DynError, Timeout, Unauthorized, Unreachable, error_from_code
from dynd.protocol.framing import FrameDecoder, encode_frame

if TYPE_CHECKING:  # ssl and the TLS layer load only when a connection uses TLS
    import ssl

    from dynd.protocol.tls import TlsError, TlsLayer

RECEIVE_CHUNK_BYTES = 256 * 1024


class SyncClient:
    """One connection to one node, blocking. Use it as a context manager (or call `close`):

        with SyncClient("127.0.0.1:7400") as client:
            context = client.put("greeting", b"hello")
            client.get("greeting").values       # [b"hello"]

    `timeout_s` bounds connecting and the hello together, then each request.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        agent: str = "dynd.client",
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.node_name = ""
        self.roles: frozenset[str] = frozenset()
        host, port = parse_address(address)
        deadline = time.monotonic() + timeout_s
        self._socket = _connect(host, port, address, timeout_s)
        self._tls: TlsLayer | None = None
        self._decoder = FrameDecoder(HELLO_REPLY_BYTES_MAX)
        self._replies: deque[messages.Message] = deque()
        self._ids = itertools.count(1)
        self._hello_done = False
        self._first_bytes = b""
        self._broken: DynError | None = None
        try:
            if ssl_context is not None:
                from dynd.protocol.tls import TlsLayer

                self._tls = TlsLayer.client(ssl_context, server_hostname=host)
            self._send(client_hello(agent, token), deadline)
            reply = self._receive(None, deadline, f"no hello reply from {address} within {timeout_s:g} s")
            if not isinstance(reply, messages.HelloOk):
                raise BadFrame(f"expected hello_ok from {address}, got {type(reply).__name__}")
        except BaseException:
            self._socket.close()
            raise
        self.node_name = reply.node
        self.roles = frozenset(reply.roles or ())
        self._hello_done = True
        self._decoder.set_frame_bytes_max(REPLY_FRAME_BYTES_MAX)

    # ---- requests ----

    def get(self, key: KeyLike, *, r: int | None = None, pr: int | None = None, timeout_s: float | None = None) -> GetResult:
        """`r` replies (the cluster's default when None), `pr` of them from primaries themselves."""
        request = messages.Get(id=next(self._ids), key=key_bytes(key), r=r, pr=pr)
        return get_result(expect(self._call(request, timeout_s), messages.GetOk, request))

    def put(
        self,
        key: KeyLike,
        value: bytes,
        context: bytes | None = None,
        *,
        w: int | None = None,
        pw: int | None = None,
        timeout_s: float | None = None,
        content_type: str | None = None,
        usermeta: Mapping[str, str] | None = None,
    ) -> bytes:
        """Store `value`, superseding what `context` covers; return the context covering the new write.
        `content_type` and `usermeta` are stored with the value (every reader sees them)."""
        request = messages.Put(
            id=next(self._ids), key=key_bytes(key), value=bytes(value), context=context, w=w, pw=pw,
            content_type=content_type, usermeta=meta_entries(usermeta),
        )  # fmt: skip
        return expect(self._call(request, timeout_s), messages.PutOk, request).context

    def delete(
        self, key: KeyLike, context: bytes, *, w: int | None = None, pw: int | None = None, timeout_s: float | None = None
    ) -> bytes:
        """Write a tombstone over what `context` covers; return the tombstone's context."""
        request = messages.Delete(id=next(self._ids), key=key_bytes(key), context=context, w=w, pw=pw)
        return expect(self._call(request, timeout_s), messages.DeleteOk, request).context

    def ping(self, *, timeout_s: float | None = None) -> str:
        request = messages.Ping(id=next(self._ids))
        return expect(self._call(request, timeout_s), messages.Pong, request).node

    # ---- the connection ----

    def close(self) -> None:
        if self._tls is not None and self._broken is None:
            self._tls.close()  # close_notify, best effort: the node does not wait for it
            try:
                self._socket.sendall(self._tls.outgoing())
            except OSError:
                pass
        self._socket.close()
        self._broken = self._broken or Unreachable("the client is closed")

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- machinery ----

    def _call(self, request: messages.Message, timeout_s: float | None) -> messages.Message:
        if self._broken is not None:
            raise copy_error(self._broken)
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        self._send(request, deadline)
        return self._receive(request.id, deadline, f"no reply from {self.address} within {limit:g} s")  # type: ignore[attr-defined]

    def _send(self, message: messages.Message, deadline: float) -> None:
        data = encode_frame(codec.encode_message(message))
        if self._tls is not None:
            self._tls.send(data)  # queued until the handshake is done
            data = self._tls.outgoing()
        self._write(data, deadline)

    def _receive(self, request_id: int | None, deadline: float, too_late: str) -> messages.Message:
        """The reply to `request_id` (None: the hello's reply); a node's error is raised, and
        Timeout(`too_late`) when the deadline passes first."""
        while True:
            while not self._replies:
                self._read_some(deadline, too_late)
            reply = self._replies.popleft()
            if isinstance(reply, messages.ErrorReply) and reply.id is None:
                raise error_from_code(reply.code, reply.message)  # about the connection, not one request
            if request_id is not None and getattr(reply, "id", None) != request_id:
                continue  # the late reply to an earlier call that timed out
            if isinstance(reply, messages.ErrorReply):
                raise error_from_code(reply.code, reply.message)
            return reply

    def _read_some(self, deadline: float, too_late: str) -> None:
        raw = self._recv(deadline, too_late)
        if not raw:
            if not self._hello_done and self._decoder.has_partial_frame:
                self._fail(not_a_dynd_node(self.address, self._first_bytes))
            self._fail(Unreachable(f"{self.address} closed the connection"))
        chunk = raw
        if self._tls is not None:
            from dynd.protocol.tls import TlsError

            try:
                chunk = self._tls.receive(raw)
            except TlsError as exc:
                self._fail(self._tls_error(exc, raw))
            if self._tls.wants_write:  # the handshake's next records, and the requests queued behind them
                self._write(self._tls.outgoing(), deadline)
        if not self._hello_done and len(self._first_bytes) < FIRST_BYTES_KEPT:
            self._first_bytes += chunk[: FIRST_BYTES_KEPT - len(self._first_bytes)]
        try:
            for frame in self._decoder.feed(chunk):
                self._replies.append(codec.decode_message(frame))
        except DynError as exc:
            if not self._hello_done and isinstance(exc, BadFrame):  # as in `dynd.client.connection`
                self._fail(not_a_dynd_node(self.address, self._first_bytes))
            self._fail(BadFrame(f"bad reply from {self.address}: {exc.message}"))

    def _recv(self, deadline: float, too_late: str) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(too_late)
        self._socket.settimeout(remaining)
        try:
            return self._socket.recv(RECEIVE_CHUNK_BYTES)
        except TimeoutError:
            raise Timeout(too_late) from None
        except OSError as exc:
            self._fail(Unreachable(f"connection to {self.address} lost: {exc.strerror or exc}"))

    def _write(self, data: bytes, deadline: float) -> None:
        if not data:
            return
        self._socket.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            self._socket.sendall(data)
        except TimeoutError:
            # Part of a frame may have gone: the stream cannot be trusted any more.
            self._fail(Timeout(f"{self.address} did not take our request within {self.timeout_s:g} s"))
        except OSError as exc:
            self._fail(Unreachable(f"connection to {self.address} lost: {exc.strerror or exc}"))

    def _tls_error(self, error: TlsError, raw: bytes) -> DynError:
        if error.clean:
            return Unreachable(f"{self.address} closed the connection")
        if error.refused:
            return Unauthorized(f"TLS with {self.address}: {error.message}")
        if error.not_tls and not self._hello_done and is_known_server(raw):
            return not_a_dynd_node(self.address, raw)  # an HTTP server, say, rather than a dynd node without TLS
        if error.not_tls:
            return Unreachable(f"{self.address} does not speak TLS (is TLS configured on that node?): {error.message}")
        return Unreachable(f"TLS with {self.address} failed: {error.message}")

    def _fail(self, error: DynError) -> NoReturn:
        self._broken = error
        raise copy_error(error)


def _connect(host: str, port: int, address: str, timeout_s: float) -> socket.socket:
    # An ASCII host goes in as bytes: as text, the resolver first loads the IDNA codec (and
    # unicodedata), a few milliseconds that an IP address or a plain name never needs.
    resolvable: str | bytes = host.encode("ascii") if host.isascii() else host
    try:
        sock = socket.create_connection((resolvable, port), timeout=timeout_s)
    except TimeoutError:
        raise CannotConnect(f"connecting to {address} timed out after {timeout_s:g} s") from None
    except OSError as exc:
        raise CannotConnect(f"cannot connect to {address}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
