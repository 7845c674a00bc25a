"""The TCP front: one reader task and one writer task per connection.

The reader decodes every complete frame in each chunk and calls the handlers directly (no task per
request); replies are appended to the connection's outgoing buffer and sent without waking another
task: once per chunk by the reader, or at once by a reply that arrives later (a commit or a peer
answering) when nothing else is owed on the connection. The writer task only gathers replies for a
connection that pipelines requests (woken, it lets the scheduler run once more, so the replies other
tasks of that pass complete share its write), and takes over whatever the socket would not accept at
once.

Who may do what (`dynd.protocol.auth`): the hello decides which roles a connection holds, and
every request is checked against `messages.required_role` before the node sees it; a request the
connection holds no role for is answered `unauthorized` and changes nothing.
- No cluster secret (loopback only, or a network the operator declared trusted): every role.
- With a secret: `client` unless client tokens are configured; `admin` from the node's own host
  (loopback) or with an admin token; a token grants its role; a peer proves the secret with the
  challenge-response in `auth`, and holds every role. A peer whose name is not a member (a node
  joining) may only gossip. A bad token, a failed proof or another cluster's id: refused, closed.

Limits: the hello must be done within `handshake_timeout_ms`, in frames of at most
`handshake_frame_bytes_max`; after it, a frame must arrive whole within `frame_timeout_ms` of its
first byte; an idle connection closes after `idle_timeout_ms`, or `idle_timeout_anonymous_ms` when
it proved nothing (no token, no secret, not local) (deadlines may act up to 1/64 of the timeout
late, see `DEADLINE_SLACK_DIVISOR`); the reader stops reading while `connection_inflight_max`
requests await their replies or `connection_outbuf_bytes_max` bytes await sending. Partly received
frames of all connections together may hold `partial_frames_bytes_max`: the connection whose bytes
would pass that is closed. At `connections_max`, a new connection takes the slot of the anonymous
connection idle the longest, or is told so and closed when there is none.

TLS (`security.server_ssl` set): every connection runs through a `TlsLayer` (`dynd.protocol.tls`):
chunks are decrypted before the frame decoder, and what is queued is encrypted as one batch just
before each write. The TLS handshake counts as part of the hello, within `handshake_timeout_ms`. A
plain-TCP client is told in its own framing that the port speaks TLS; a failed handshake or a bad
record is a refused hello, and the alert that says why is sent before the close.

Errors never escape a connection: a bad frame gets an error reply (and, when the stream cannot be
resynchronised, a close); an unexpected exception in a handler is logged and answered `internal`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import trio

from dynd.core.limits import Limits
from dynd.core.membership import REMOVED
from dynd.protocol import PROTOCOL_VERSION, auth, codec, messages
from dynd.protocol.messages import error_reply, required_role
from dynd.protocol.errors import BadFrame, BadRequest, DynError, Overloaded, ProtocolMismatch, Unauthorized, UnknownOp
from dynd.protocol.framing import FrameDecoder, FrameTooLarge, encode_frame
from dynd.core.node import Node
from dynd.shell import security as events
from dynd.shell.arrival import ArrivalReader
from dynd.shell.memory import LARGE_BUFFER_BYTES, MemoryGiver
from dynd.shell.security import Security
from dynd.protocol.tls import TlsError, TlsLayer

log = logging.getLogger("dynd.server")

RECEIVE_CHUNK_BYTES = 256 * 1024
# A read deadline lands at most 1/DEADLINE_SLACK_DIVISOR of its timeout late, so that most reads
# leave it where it is (moving a trio deadline costs event-loop work).
DEADLINE_SLACK_DIVISOR = 64
CLOSE_LINGER_S = 2.0
# How long one connection's frames may hold the event loop before the reader lets the others
# run: a pipeline of thousands of frames in one 256 KiB read would otherwise hold it for its whole
# length (tens of milliseconds), and every other client would wait that long. Checked every
# FRAMES_PER_CLOCK_READ frames, so a short burst pays nothing.
TURN_S = 0.0003
FRAMES_PER_CLOCK_READ = 4
# A request the shell answers itself, as `Node.handle` would: the message, and where its reply goes.
ShellHandler = Callable[[Any, Callable[[Any], None]], None]



class Connection:
    def __init__(self, stream: trio.SocketStream, node: Node, limits: Limits, peer: str, server: Server) -> None:
        self.stream = stream
        self.node = node
        self.limits = limits
        self.peer = peer
        self.server = server
        self.security = server.security
        self.local = auth.is_loopback_host(peer.rsplit(":", 1)[0].strip("[]"))
        self.greeted = False  # the hello (and, for a peer, its proof) is done
        self.roles: frozenset[str] = frozenset()
        self.credentialed = False  # proved something (a token, the secret) or local: the long idle timeout
        self.proven = False  # proved a token or the secret: never closed to make room for others
        self.peer_name: str | None = None  # a peer's name, once proved (or claimed, with no secret)
        self._awaiting_proof: tuple[str, bytes, bytes] | None = None  # (dialer, its nonce, ours)
        self.last_active = trio.current_time()
        self.evicted = False
        self._read_scope: trio.CancelScope | None = None
        self._partial_bytes = 0  # this connection's share of the server's partly received frames
        self.partial_peak = 0  # the most it ever held: a large buffer is worth giving back
        self._decoder = FrameDecoder(limits.handshake_frame_bytes_max)
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
        server_ssl = self.security.server_ssl
        self.tls = TlsLayer.server(server_ssl) if server_ssl is not None else None
        self._unsent = b""  # with TLS: encrypted bytes a short write left, sent before anything else

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
        if self.tls is not None:
            data = self._seal(data)
        try:
            sent = os.write(self._fd, data)
        except OSError:  # it would block, or the peer is gone (the writer's send then ends the connection)
            sent = 0
        if sent == len(data):
            self._outgoing.clear()
            self._outgoing_bytes = 0
            self._maybe_drained()
            return
        if self.tls is not None:  # encrypted already: it must not be sealed again
            self._outgoing.clear()
            self._unsent = data[sent:]
        else:
            self._outgoing[:] = [data[sent:]]
        self._outgoing_bytes = len(data) - sent
        self._wake_writer.set()

    async def writer(self) -> None:
        while True:
            if not self._outgoing and not self._tls_owed():
                if self.closing:
                    return
                await self._wake_writer.wait()
                # One more pass of the scheduler first, so the replies that other tasks woken
                # alongside this one complete go out in this same write.
                await trio.lowlevel.checkpoint()
                self._wake_writer = trio.Event()
                continue
            data = b"".join(self._outgoing)
            self._outgoing.clear()
            self._outgoing_bytes = 0
            if self.tls is not None:
                data = self._seal(data)
            self._writer_sending = True
            await self.stream.send_all(data)
            self._writer_sending = False
            self._maybe_drained()

    def _seal(self, plain: bytes) -> bytes:
        """TLS: encrypt what is queued as one batch; return it after whatever the layer (handshake
        records, an alert) or a short write left. A failed or closed session seals nothing more."""
        assert self.tls is not None
        if plain:
            try:
                self.tls.send(plain)
            except TlsError:
                pass  # the reader has ended the connection or is about to
        data = self.tls.outgoing()
        if self._unsent:
            data, self._unsent = self._unsent + data, b""
        return data

    def _tls_owed(self) -> bool:
        return self.tls is not None and (bool(self._unsent) or self.tls.wants_write)

    def _tls_failed(self, error: TlsError) -> None:
        """The TLS session ended. Say why where the peer can read it (an alert, or a frame in the
        clear for a plain-TCP client); the reader then closes the connection."""
        if error.clean:
            return
        self.security.events.record(events.HELLO_REFUSED, self.peer, f"TLS: {error.message}")
        if error.not_tls:
            refusal = BadRequest("this node speaks TLS only: connect with TLS (dynctl --tls-ca, open_client(ssl_context=...))")
            self._unsent += encode_frame(codec.encode_message(error_reply(None, refusal)))
        if not self._writer_sending:
            self._flush()

    def finish_reading(self) -> None:
        self.closing = True
        self._holding = False
        self._wake_writer.set()

    # ---- requests ----

    async def _take_turns(self) -> None:
        """Between batches of a long pipeline: send what is answered, and let every other
        connection have its turn, so one client's thousands of frames cannot stall the rest."""
        self._holding = False
        if (self._outgoing or self._tls_owed()) and not self._writer_sending:
            self._flush()
        # A schedule point that is no cancel point: a read deadline is for reads, not for this
        # pause (a shielded scope around a checkpoint did the same, at the cost of making a
        # cancel scope on every turn).
        await trio.lowlevel.cancel_shielded_checkpoint()
        self._holding = True

    def evict(self) -> None:
        """Close this idle connection to make room for a new one."""
        self.evicted = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    def _track_partial(self, held: int) -> bool:
        """Account this connection's partly received bytes; False when they grew past the
        server-wide cap (only a connection adding to the total is closed for it)."""
        grew = held > self._partial_bytes
        self.server.partial_bytes += held - self._partial_bytes
        self._partial_bytes = held
        self.partial_peak = max(self.partial_peak, held)
        return not grew or self.server.partial_bytes <= self.limits.partial_frames_bytes_max

    def release(self) -> None:
        self._track_partial(0)

    async def reader(self) -> None:
        decoder = self._decoder
        # One cancel scope for the connection's life, its deadline moved before each read when it
        # falls outside [due, due + slack]: cheaper than a new scope per read. Reads are its only
        # checkpoints besides the wait for replies to drain, which it must not cover, so the
        # deadline is lifted before that wait.
        started = trio.current_time()
        arrivals = ArrivalReader(self._fd)
        try:
            await self._read_frames(decoder, started, arrivals)
        finally:
            arrivals.release()

    async def _read_frames(self, decoder: FrameDecoder, started: float, arrivals: ArrivalReader) -> None:
        frame_started: float | None = None
        with trio.CancelScope() as read_deadline:
            self._read_scope = read_deadline
            while True:
                if not self.greeted:  # the whole hello, however it is sent, within one deadline
                    timeout_s = self.limits.handshake_timeout_ms / 1000
                    due = started + timeout_s
                elif frame_started is not None:
                    timeout_s = self.limits.frame_timeout_ms / 1000
                    due = frame_started + timeout_s
                else:
                    idle_ms = self.limits.idle_timeout_ms if self.credentialed else self.limits.idle_timeout_anonymous_ms
                    timeout_s = idle_ms / 1000
                    due = trio.current_time() + timeout_s
                slack_s = timeout_s / DEADLINE_SLACK_DIVISOR
                if not due <= read_deadline.deadline <= due + slack_s:
                    read_deadline.deadline = due + slack_s
                # One pass through the scheduler per chunk: wait, then read what is there. (A trio
                # stream's receive would also pass through it after every successful read.)
                await trio.lowlevel.wait_readable(self._fd)
                try:
                    chunk, waited_s = arrivals.read(RECEIVE_CHUNK_BYTES)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                self.last_active = now = trio.current_time()
                received_us = int((now - waited_s) * 1_000_000)
                self.server.touch(self)
                if self.tls is not None:
                    try:
                        chunk = self.tls.receive(chunk)
                    except TlsError as exc:
                        self._tls_failed(exc)
                        return
                    if not chunk:  # the handshake, or part of a record: nothing to decode yet
                        if frame_started is None and self.greeted:
                            frame_started = trio.current_time()  # a record sent slowly meets the frame deadline too
                        if self.tls.wants_write and not self._writer_sending:
                            self._flush()
                        continue
                try:
                    frames = decoder.feed(chunk)
                except FrameTooLarge as exc:
                    log.info("closing %s: %s", self.peer, exc.message)
                    self.server.frames_refused += 1
                    if not self.greeted:
                        self.security.events.record(events.CONNECTION_LIMIT, self.peer, f"before its hello: {exc.message}")
                    self.send(error_reply(None, exc))
                    return
                if not self._track_partial(decoder.buffered_bytes):
                    limit = self.limits.partial_frames_bytes_max
                    self.security.events.record(events.CONNECTION_LIMIT, self.peer, f"partly received frames of all connections over {limit} bytes")
                    self.send(error_reply(None, Overloaded(f"closing: partly received frames exceed partial_frames_bytes_max={limit}")))
                    return
                self._holding = True
                turn_ends = trio.current_time() + TURN_S if len(frames) > FRAMES_PER_CLOCK_READ else math.inf
                for index, frame in enumerate(frames, 1):
                    if not self.dispatch(frame, received_us):
                        return
                    if index % FRAMES_PER_CLOCK_READ == 0 and index < len(frames) and trio.current_time() > turn_ends:
                        await self._take_turns()
                        turn_ends = trio.current_time() + TURN_S
                self._holding = False
                # A frame's deadline runs from its first byte we read, or from the end of the chunk
                # before it (the time spent serving that chunk is ours, not the client's).
                if decoder.has_partial_frame:
                    if frame_started is None or frames:
                        frame_started = trio.current_time()
                else:
                    frame_started = None
                if (self._outgoing or self._tls_owed()) and not self._writer_sending:
                    self._flush()
                if self.inflight >= self.limits.connection_inflight_max or self._outgoing_bytes >= self.limits.connection_outbuf_bytes_max:
                    read_deadline.deadline = math.inf
                    self._drained = trio.Event()
                    await self._drained.wait()
                    if frame_started is not None:
                        # The rest of a frame may have waited unread in the socket all that time:
                        # the client's frame deadline runs from when we read again, not before.
                        frame_started = trio.current_time()
        if read_deadline.cancelled_caught:
            if self.evicted:
                self.send(error_reply(None, Overloaded("closing this idle connection: the node is at connections_max")))
                return
            what = "no hello" if not self.greeted else "an incomplete frame" if frame_started is not None else "no request"
            log.info("closing %s: %s within the deadline", self.peer, what)
            self.send(error_reply(None, BadFrame(f"closing: {what} within the deadline")))

    def dispatch(self, frame: bytes, received_us: int | None = None) -> bool:
        """Handle one frame; False means close the connection. `received_us`: when its bytes
        reached this host (`dynd.shell.arrival`), where the node starts timing it."""
        try:
            message = codec.decode_message(frame)
        except BadFrame as exc:
            self.server.frames_refused += 1
            self.send(error_reply(None, exc))
            return self.greeted
        except (BadRequest, UnknownOp) as exc:
            self.server.frames_refused += 1
            self.send(error_reply(codec.request_id_of(exc), exc))
            return self.greeted
        if not self.greeted:
            return self._handshake(message)
        request_id: int | None = getattr(message, "id", None)
        role = required_role(message)
        if role is not None and (role not in self.roles or (role == auth.PEER and not self._may_act_as_peer(message))):
            self._unauthorized(message, role)
            return True
        self.inflight += 1
        try:
            shell_handler = self.server.shell_handlers.get(type(message))
            if shell_handler is None:
                self.node.handle(message, self._complete, received_us)
            else:
                shell_handler(message, self._complete)
        except Exception as exc:
            log.exception("request %s from %s failed", request_id, self.peer)
            self._complete(error_reply(request_id, DynError(f"internal error: {exc!r}")))
        return True

    # ---- the hello ----

    def _handshake(self, message: Any) -> bool:
        """One frame of the hello; False closes the connection."""
        if self._awaiting_proof is not None:
            return self._peer_proof(message)
        if not isinstance(message, messages.Hello):
            self.send(error_reply(getattr(message, "id", None), BadRequest("the first frame must be a hello")))
            return False
        if message.version != PROTOCOL_VERSION:
            self.send(error_reply(None, ProtocolMismatch(f"this node speaks protocol {PROTOCOL_VERSION}, not {message.version}")))
            return False
        security = self.security
        if message.cluster and message.cluster != security.cluster_id:
            return self._refuse_hello("the hello names another cluster")
        roles: set[str] = set()
        if security.open:
            roles |= auth.ALL_ROLES
            self.credentialed = self.local or message.node is not None
            self.proven = message.node is not None  # no secret to prove: a node's word is taken
            self.peer_name = message.node
        else:
            if not security.tokens.has_client_tokens:
                roles.add(auth.CLIENT)
            if self.local:
                roles |= auth.ROLE_GRANTS[auth.ADMIN]
                self.credentialed = True
        if message.token is not None:
            granted = security.tokens.role_of(message.token)
            if granted is None:
                return self._refuse_hello("the token is not valid here")
            roles |= auth.ROLE_GRANTS[granted]
            self.credentialed = self.proven = True
        if message.node is not None and message.nonce is not None and security.keyring is not None:
            return self._peer_challenge(message, security.keyring, frozenset(roles))
        if not roles:
            return self._refuse_hello("this node requires a client token (none was given)")
        self.roles = frozenset(roles)
        self._greeted()
        self.send(messages.HelloOk(version=PROTOCOL_VERSION, node=self.node.name, roles=sorted(self.roles)))
        return True

    def _peer_challenge(self, hello: messages.Hello, keyring: auth.Keyring, roles: frozenset[str]) -> bool:
        """A peer's hello: prove the secret over both nonces, then wait for its proof."""
        assert hello.node is not None and hello.nonce is not None
        if len(hello.nonce) != auth.NONCE_BYTES or not 0 < len(hello.node) <= 64:
            return self._refuse_hello(f"a peer hello needs a name of 1-64 characters and a {auth.NONCE_BYTES}-byte nonce")
        ours = auth.new_nonce()
        self._awaiting_proof = (hello.node, hello.nonce, ours)
        self.roles = roles  # until the proof arrives, what it holds without one
        cluster = self.security.cluster_id
        proof = auth.make_proof(keyring, auth.LISTENER, cluster, hello.node, self.node.name, hello.nonce, ours)
        self.send(messages.HelloOk(version=PROTOCOL_VERSION, node=self.node.name, roles=sorted(roles), cluster=cluster, nonce=ours, proof=proof))
        return True

    def _peer_proof(self, message: Any) -> bool:
        assert self._awaiting_proof is not None
        dialer, theirs, ours = self._awaiting_proof
        self._awaiting_proof = None
        if not isinstance(message, messages.HelloProof):
            return self._refuse_hello("a peer hello must be followed by its hello_proof")
        keyring = self.security.keyring
        cluster = self.security.cluster_id
        if keyring is None or not auth.check_proof(keyring, message.proof, auth.DIALER, cluster, dialer, self.node.name, theirs, ours):
            return self._refuse_hello(f"{dialer!r} did not prove the cluster secret")
        self.roles = auth.ALL_ROLES
        self.credentialed = self.proven = True
        self.peer_name = dialer
        self._greeted()
        self.send(messages.HelloProofOk(roles=sorted(self.roles)))
        return True

    def _greeted(self) -> None:
        self.greeted = True
        self._decoder.set_frame_bytes_max(self.limits.frame_bytes_max)

    def _refuse_hello(self, reason: str) -> bool:
        self.server.connections_refused += 1
        self.security.events.record(events.HELLO_REFUSED, self.peer, reason)
        self.send(error_reply(None, Unauthorized(f"hello refused: {reason}")))
        return False

    # ---- roles ----

    def _may_act_as_peer(self, message: Any) -> bool:
        """A proved peer that is not a member (yet) may only gossip: that is how a node joins."""
        if self.security.open or isinstance(message, messages.Gossip):
            return True
        member = self.node.cluster.membership.members.get(self.peer_name or "")
        return member is not None and member.status != REMOVED

    def _unauthorized(self, message: Any, role: str) -> None:
        held = ", ".join(sorted(self.roles)) or "no role"
        if role == auth.PEER and role in self.roles:
            reason = f"{self.peer_name!r} is not a member of this cluster (a joining node may only gossip)"
        elif role == auth.PEER:
            reason = f"{message.OP} is for the cluster's own nodes (the peer role; this connection holds {held})"
        elif role == auth.ADMIN:
            reason = f"{message.OP} needs an admin token or a connection from the node's own host (this connection holds {held})"
        else:
            reason = f"{message.OP} needs a client token (this connection holds {held})"
        self.server.frames_refused += 1
        self.security.events.record(events.UNAUTHORIZED, self.peer, reason)
        self.send(error_reply(getattr(message, "id", None), Unauthorized(reason)))


class Server:
    def __init__(
        self, node: Node, limits: Limits, security: Security | None = None, shell_handlers: Mapping[type, ShellHandler] | None = None
    ) -> None:
        """`shell_handlers`: requests the process answers rather than the node (the log level, say:
        the shell's state, which the core must not know), by message type; role-checked like any."""
        self.node = node
        self.limits = limits
        self.security = security if security is not None else Security()
        self.shell_handlers: Mapping[type, ShellHandler] = shell_handlers or {}
        self.connections = 0
        # since start, for the node's stats: connections refused (over connections_max, or their
        # hello refused) and frames refused (undecodable, unknown, or above the connection's role)
        self.connections_refused = 0
        self.frames_refused = 0
        self.partial_bytes = 0  # partly received frames, all connections together
        self.memory = MemoryGiver()
        self._open: dict[Connection, None] = {}  # least recently active first

    def touch(self, connection: Connection) -> None:
        """`connection` just received something: it moves to the back of the eviction order."""
        self._open.pop(connection, None)
        self._open[connection] = None

    def _idle_anonymous(self) -> Connection | None:
        """The connection that proved nothing (no token, no secret; local or not) and has been
        idle the longest, if any: the first such from the front of the activity order."""
        for connection in self._open:
            if not connection.proven and not connection.inflight and not connection.evicted:
                return connection
        return None

    async def handle(self, stream: trio.SocketStream) -> None:
        peer = _peer_name(stream)
        if self.connections >= self.limits.connections_max:
            victim = self._idle_anonymous()
            if victim is None:
                self.connections_refused += 1
                self.security.events.record(events.CONNECTION_LIMIT, peer, f"refused: connections_max={self.limits.connections_max}")
                if self.security.server_ssl is not None:  # a TLS client could not read a frame in the clear
                    await trio.aclose_forcefully(stream)
                    return
                await _refuse(stream, Overloaded(f"too many connections (connections_max={self.limits.connections_max})"))
                return
            self.security.events.record(events.EVICTED, victim.peer, "idle and anonymous, closed to make room")
            victim.evict()
        self.connections += 1
        connection = Connection(stream, self.node, self.limits, peer, self)
        self._open[connection] = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, connection, nursery.cancel_scope)
                try:
                    await connection.reader()
                finally:
                    connection.release()  # its partial frame is dropped now, not after the linger
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
            connection.release()
            self._open.pop(connection, None)
            self.connections -= 1
            await trio.aclose_forcefully(stream)
            if connection.partial_peak >= LARGE_BUFFER_BYTES:
                await self.memory.large_buffer_freed()

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
    except (OSError, ValueError):  # gone already, or not an IP socket (a local socketpair)
        return "unknown peer"
