"""The TCP front: one reader task and one writer task per connection.

The reader decodes every complete frame in each chunk and calls the handlers directly (no task per
request); replies are appended to the connection's outgoing buffer and sent without waking another
task: once per chunk by the reader, or at once by a reply that arrives later (a commit or a peer
answering) when nothing else is owed on the connection. The writer task only gathers replies for a
connection that pipelines requests, and takes over whatever the socket would not accept at once.

Limits: a frame must arrive whole within `frame_timeout_ms` of its first byte; an idle connection
closes after `idle_timeout_ms` (either may act up to 1/64 of the timeout late, see
`DEADLINE_SLACK_DIVISOR`); the reader stops reading while `connection_inflight_max` requests await
their replies or `connection_outbuf_bytes_max` bytes await sending; connections beyond
`connections_max` are told so and closed.

Errors never escape a connection: a bad frame gets an error reply (and, when the stream cannot be
resynchronised, a close); an unexpected exception in a handler is logged and answered `internal`.
"""

from __future__ import annotations

import logging
import math
import os
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
# A read deadline lands at most 1/DEADLINE_SLACK_DIVISOR of its timeout late, so that most reads
# leave it where it is (moving a trio deadline costs event-loop work).
DEADLINE_SLACK_DIVISOR = 64
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
        self._fd = stream.socket.fileno()  # the stream closes only after `closed` is set
        self._holding = False  # the reader is dispatching a chunk and flushes once after it
        self._writer_sending = False  # the writer task owns the send side until its send completes
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
        if self._holding:
            return
        if self.inflight or self._writer_sending:
            # More replies are owed here (a pipelining peer): the writer gathers them into one send.
            self._wake_writer.set()
        else:
            self._flush()

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

    def _flush(self) -> None:
        """Send what is queued without waiting (a plain write on the non-blocking socket): waking the
        writer task costs more event-loop time than the send. What the socket does not take now,
        and any error, is left to the writer task."""
        data = self._outgoing[0] if len(self._outgoing) == 1 else b"".join(self._outgoing)
        try:
            sent = os.write(self._fd, data)
        except OSError:  # it would block, or the peer is gone (the writer's send then ends the connection)
            sent = 0
        if sent == len(data):
            self._outgoing.clear()
            self._outgoing_bytes = 0
            self._maybe_drained()
            return
        self._outgoing[:] = [data[sent:]]
        self._outgoing_bytes = len(data) - sent
        self._wake_writer.set()

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
            self._writer_sending = True
            await self.stream.send_all(data)
            self._writer_sending = False
            self._maybe_drained()

    def finish_reading(self) -> None:
        self.closing = True
        self._holding = False
        self._wake_writer.set()

    # ---- requests ----

    async def reader(self) -> None:
        decoder = FrameDecoder(self.limits.frame_bytes_max)
        frame_started: float | None = None
        # One cancel scope for the connection's life, its deadline moved before each read when it
        # falls outside [due, due + slack]: cheaper than a new scope per read. Reads are its only
        # checkpoints besides the wait for replies to drain, which it must not cover, so the
        # deadline is lifted before that wait.
        with trio.CancelScope() as read_deadline:
            while True:
                if frame_started is not None:
                    timeout_s = self.limits.frame_timeout_ms / 1000
                    due = frame_started + timeout_s
                else:
                    timeout_s = (self.limits.idle_timeout_ms if self.greeted else self.limits.handshake_timeout_ms) / 1000
                    due = trio.current_time() + timeout_s
                slack_s = timeout_s / DEADLINE_SLACK_DIVISOR
                if not due <= read_deadline.deadline <= due + slack_s:
                    read_deadline.deadline = due + slack_s
                # One pass through the scheduler per chunk: wait, then read what is there. (A trio
                # stream's receive would also pass through it after every successful read.)
                await trio.lowlevel.wait_readable(self._fd)
                try:
                    chunk = os.read(self._fd, RECEIVE_CHUNK_BYTES)
                except BlockingIOError:
                    continue
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
                self._holding = True
                for frame in frames:
                    if not self.dispatch(frame):
                        return
                self._holding = False
                if self._outgoing and not self._writer_sending:
                    self._flush()
                if self.inflight >= self.limits.connection_inflight_max or self._outgoing_bytes >= self.limits.connection_outbuf_bytes_max:
                    read_deadline.deadline = math.inf
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
