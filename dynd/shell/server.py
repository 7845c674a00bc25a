"""The TCP front: one reader task and one writer task per connection.

The reader decodes every complete frame in each chunk and calls the handlers directly (no task per
request); replies are appended to the connection's outgoing buffer and the writer flushes them in
one send per batch. Limits: a frame must arrive whole within `frame_timeout_ms` of its first byte;
an idle connection closes after `idle_timeout_ms`; the reader stops reading while
`connection_inflight_max` requests await their replies or `connection_outbuf_bytes_max` bytes await
sending; connections beyond `connections_max` are told so and closed.

Errors never escape a connection: a bad frame gets an error reply (and, when the stream cannot be
resynchronised, a close); an unexpected exception in a handler is logged and answered `internal`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio

from dynd.core.limits import Limits
from dynd.protocol import PROTOCOL_VERSION, codec, messages
from dynd.protocol.messages import error_reply
from dynd.protocol.errors import BadFrame, BadRequest, DynError, Overloaded, ProtocolMismatch, UnknownOp
from dynd.protocol.framing import FrameDecoder, FrameTooLarge, encode_frame
from dynd.core.node import Node

log = logging.getLogger("dynd.server")

RECEIVE_CHUNK_BYTES = 256 * 1024
CLOSE_LINGER_S = 2.0



class Connection:
    def __init__(self, stream: trio.SocketStream, node: Node, limits: Limits, peer: str) -> None:
        self.stream = stream
        self.node = node
        self.limits = limits
        self.peer = peer
        self.greeted = False
        self.closing = False  # the reader is done: the writer drains what is queued, then stops
        self.closed = False  # replies arriving now have no one to go to
        self.inflight = 0
        self._outgoing: list[bytes] = []
        self._outgoing_bytes = 0
        self._wake_writer = trio.Event()
        self._drained = trio.Event()
        self._drained.set()

    # ---- replies ----

    def send(self, message: messages.Message) -> None:
        self.send_payload(codec.encode_message(message))

    def send_payload(self, payload: bytes) -> None:
        if self.closed:
            return
        frame = encode_frame(payload)
        self._outgoing.append(frame)
        self._outgoing_bytes += len(frame)
        self._wake_writer.set()

    def _complete(self, reply: messages.Message | bytes) -> None:
        """A request's answer, now or later: a message, or a payload already encoded."""
        self.inflight -= 1
        if isinstance(reply, bytes):
            self.send_payload(reply)
        else:
            self.send(reply)
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.inflight < self.limits.connection_inflight_max and self._outgoing_bytes < self.limits.connection_outbuf_bytes_max:
            self._drained.set()

    async def writer(self) -> None:
        while True:
            if not self._outgoing:
                if self.closing:
                    return
                await self._wake_writer.wait()
                self._wake_writer = trio.Event()
                continue
            data = b"".join(self._outgoing)
            self._outgoing.clear()
            self._outgoing_bytes = 0
            await self.stream.send_all(data)
            self._maybe_drained()

    def finish_reading(self) -> None:
        self.closing = True
        self._wake_writer.set()

    # ---- requests ----

    async def reader(self) -> None:
        decoder = FrameDecoder(self.limits.frame_bytes_max)
        frame_started: float | None = None
        # One cancel scope for the connection's life, its deadline moved before each read: cheaper
        # than a new scope per read, and it never covers the wait for replies to drain.
        with trio.CancelScope() as read_deadline:
            while True:
                if frame_started is not None:
                    read_deadline.deadline = frame_started + self.limits.frame_timeout_ms / 1000
                elif not self.greeted:
                    read_deadline.deadline = trio.current_time() + self.limits.handshake_timeout_ms / 1000
                else:
                    read_deadline.deadline = trio.current_time() + self.limits.idle_timeout_ms / 1000
                chunk = await self.stream.receive_some(RECEIVE_CHUNK_BYTES)
                read_deadline.deadline = math.inf
                if not chunk:
                    return
                try:
                    frames = decoder.feed(chunk)
                except FrameTooLarge as exc:
                    log.info("closing %s: %s", self.peer, exc.message)
                    self.send(error_reply(None, exc))
                    return
                if decoder.has_partial_frame:
                    if frame_started is None or frames:
                        frame_started = trio.current_time()
                else:
                    frame_started = None
                for frame in frames:
                    if not self.dispatch(frame):
                        return
                if self.inflight >= self.limits.connection_inflight_max or self._outgoing_bytes >= self.limits.connection_outbuf_bytes_max:
                    self._drained = trio.Event()
                    await self._drained.wait()
        if read_deadline.cancelled_caught:
            what = "an incomplete frame" if frame_started is not None else "no request"
            log.info("closing %s: %s within the deadline", self.peer, what)
            self.send(error_reply(None, BadFrame(f"closing: {what} within the deadline")))

    def dispatch(self, frame: bytes) -> bool:
        """Handle one frame; False means close the connection."""
        try:
            message = codec.decode_message(frame)
        except BadFrame as exc:
            self.send(error_reply(None, exc))
            return self.greeted
        except (BadRequest, UnknownOp) as exc:
            self.send(error_reply(codec.request_id_of(exc), exc))
            return self.greeted
        if not self.greeted:
            return self._hello(message)
        request_id: int | None = getattr(message, "id", None)
        self.inflight += 1
        try:
            self.node.handle(message, self._complete)
        except Exception as exc:
            log.exception("request %s from %s failed", request_id, self.peer)
            self._complete(error_reply(request_id, DynError(f"internal error: {exc!r}")))
        return True

    def _hello(self, message: Any) -> bool:
        if not isinstance(message, messages.Hello):
            self.send(error_reply(getattr(message, "id", None), BadRequest("the first frame must be a hello")))
            return False
        if message.version != PROTOCOL_VERSION:
            self.send(error_reply(None, ProtocolMismatch(f"this node speaks protocol {PROTOCOL_VERSION}, not {message.version}")))
            return False
        self.greeted = True
        self.send(messages.HelloOk(version=PROTOCOL_VERSION, node=self.node.name))
        return True


class Server:
    def __init__(self, node: Node, limits: Limits) -> None:
        self.node = node
        self.limits = limits
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        peer = _peer_name(stream)
        if self.connections >= self.limits.connections_max:
            await _refuse(stream, Overloaded(f"too many connections (connections_max={self.limits.connections_max})"))
            return
        self.connections += 1
        connection = Connection(stream, self.node, self.limits, peer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, connection, nursery.cancel_scope)
                try:
                    await connection.reader()
                finally:
                    # Let the writer send what is queued (such as the error that ends this
                    # connection), but not forever.
                    connection.finish_reading()
                    nursery.cancel_scope.deadline = trio.current_time() + CLOSE_LINGER_S
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer went away
        except* Exception:
            log.exception("connection from %s failed", peer)  # never let one connection stop the server
        finally:
            connection.closed = True
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    async def _write(self, connection: Connection, scope: trio.CancelScope) -> None:
        try:
            await connection.writer()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            scope.cancel()


async def _refuse(stream: trio.SocketStream, error: DynError) -> None:
    with trio.move_on_after(1):
        try:
            await stream.send_all(encode_frame(codec.encode_message(error_reply(None, error))))
        except (trio.BrokenResourceError, OSError):
            pass
    await trio.aclose_forcefully(stream)


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "unknown peer"
