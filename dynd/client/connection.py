"""One connection to one node: `open_client` connects, says hello and yields a `Client`.

One connection carries many requests at once: each request gets an id, one task reads replies and
wakes the caller waiting for that id, and one task flushes queued frames in batches, one write per
pass of the scheduler after the one that woke it (a request sent while no other is in flight goes
out at once instead). Failures raise `DynError` subclasses
from `dynd.protocol.errors`: `Unreachable` when the node cannot be reached or the connection
drops, `Timeout` when no reply comes in time, and the node's own error otherwise.

TLS: the same fd-based reads and writes run through a sans-IO `TlsLayer` (`dynd.protocol.tls`):
replies are decrypted before the frame decoder, and requests are encrypted as one batch before
each write. A refused certificate raises `Unauthorized`; a node that does not speak TLS,
`Unreachable` saying so.

A reply goes to a `Waiter`. The request methods (`get`, `put`, ...) wait for theirs; a transport
built on this connection (a node's links to its peers, `dynd.shell.peer_transport`) passes its
own waiter to `submit`, and uses `start_soon` and `withdraw` to run and expire them.
"""

from __future__ import annotations

import itertools
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from dynd.client.errors import FIRST_BYTES_KEPT, CannotConnect, copy_error, is_known_server, not_a_dynd_node
from dynd.client.results import (
    DEFAULT_TIMEOUT_S,
    HELLO_REPLY_BYTES_MAX,
    REPLY_FRAME_BYTES_MAX,
    GetResult,
    KeyLike,
    Sibling,
    client_hello,
    expect,
    get_result,
    key_bytes,
    meta_entries,
)
from dynd.protocol import PROTOCOL_VERSION, auth, codec, messages
from dynd.protocol.address import parse_address
from dynd.protocol.errors import BadFrame, BadRequest, DynError, Timeout, Unauthorized, Unreachable, error_from_code
from dynd.protocol.framing import FrameDecoder, encode_frame
from dynd.protocol.tls import TlsError, TlsLayer

log = logging.getLogger("dynd.client")

RECEIVE_CHUNK_BYTES = 256 * 1024

# Re-exported: they were defined here before `dynd.client.results` held them.
__all__ = [
    "DEFAULT_TIMEOUT_S",
    "REPLY_FRAME_BYTES_MAX",
    "Client",
    "GetResult",
    "KeyLike",
    "PeerCredentials",
    "Sibling",
    "Waiter",
    "expect",
    "key_bytes",
    "open_client",
    "unwrap_group",
]


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """How a node introduces itself to another: its name, its cluster ("" while joining: the
    listener's is taken) and the keyring that proves the cluster secret (None: no secret)."""

    name: str
    cluster: str
    keyring: auth.Keyring | None


class Waiter(Protocol):
    """Where one request's reply goes. `resolve` runs once, from the connection's reader task (or
    at once, from `submit`, on a broken connection), with the reply or the `DynError` that ended
    the wait: the connection removes a waiter before it resolves it."""

    def resolve(self, reply: messages.Message | DynError) -> None: ...


class _AwaitedReply:
    """The waiter of a task awaiting its reply (`Client._call`)."""

    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: messages.Message | DynError | None = None

    def resolve(self, reply: messages.Message | DynError) -> None:
        self.reply = reply
        self.event.set()


class Client:
    """One connection to one node. Create it with `open_client`."""

    def __init__(self, stream: trio.SocketStream, address: str, timeout_s: float, tls: TlsLayer | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.node_name = ""
        self.cluster = ""  # the node's cluster id, when it proved the secret to us
        self.roles: frozenset[str] = frozenset()  # what the node says this connection may do
        self._stream = stream
        self._tls = tls
        self._unsent = b""  # with TLS: encrypted bytes a short write left, sent before anything else
        self._ids = itertools.count(1)
        self._ring_without_locations = False  # the node refused RingGet's `locations`: it predates them
        self._waiting: dict[int, Waiter] = {}
        self._outgoing: list[bytes] = []
        self._writer_sending = False  # the writer task owns the send side until its send completes
        self._wake_writer = trio.Event()
        self._broken: DynError | None = None
        self._broken_event = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Until the hello is done, replies are short, and the first bytes tell a dynd node from
        # some other server (`dynd.client.errors`).
        self._decoder = FrameDecoder(HELLO_REPLY_BYTES_MAX)
        self._hello_done = False
        self._first_bytes = b""

    # ---- requests ----

    async def get(
        self,
        key: KeyLike,
        *,
        r: int | None = None,
        pr: int | None = None,
        timeout_s: float | None = None,
        ring: bytes | None = None,
    ) -> GetResult:
        """`r` replies (the cluster's default when None), `pr` of them from primaries themselves."""
        request = messages.Get(id=next(self._ids), key=key_bytes(key), r=r, ring=ring, pr=pr)
        return get_result(expect(await self._call(request, timeout_s), messages.GetOk, request))

    async def put(
        self,
        key: KeyLike,
        value: bytes,
        context: bytes | None = None,
        *,
        w: int | None = None,
        pw: int | None = None,
        timeout_s: float | None = None,
        ring: bytes | None = None,
        content_type: str | None = None,
        usermeta: Mapping[str, str] | None = None,
    ) -> bytes:
        """Store `value`, superseding what `context` covers; return the context covering the new write.
        `w` stores must succeed (the cluster's default when None), `pw` of them on primaries.
        `content_type` and `usermeta` are stored with the value (every reader sees them)."""
        request = messages.Put(
            id=next(self._ids), key=key_bytes(key), value=bytes(value), context=context, w=w, ring=ring, pw=pw,
            content_type=content_type, usermeta=meta_entries(usermeta),
        )  # fmt: skip
        return expect(await self._call(request, timeout_s), messages.PutOk, request).context

    async def keys(self, prefix: bytes, *, limit: int | None = None, timeout_s: float | None = None) -> messages.KeysListOk:
        """The keys starting with `prefix` (a bucket's: `dynd.protocol.buckets.bucket_prefix`),
        from a full scan of every member's store; `complete` False when some may be missing."""
        request = messages.KeysList(id=next(self._ids), prefix=bytes(prefix), limit=limit)
        return expect(await self._call(request, timeout_s), messages.KeysListOk, request)

    async def delete(
        self,
        key: KeyLike,
        context: bytes,
        *,
        w: int | None = None,
        pw: int | None = None,
        timeout_s: float | None = None,
        ring: bytes | None = None,
    ) -> bytes:
        """Write a tombstone over what `context` covers; return the tombstone's context."""
        request = messages.Delete(id=next(self._ids), key=key_bytes(key), context=context, w=w, ring=ring, pw=pw)
        return expect(await self._call(request, timeout_s), messages.DeleteOk, request).context

    # ---- cluster administration and ring ----

    async def cluster_join(self, seed: str, *, timeout_s: float | None = None) -> str:
        """Ask this node to join the cluster of `seed` (HOST:PORT); returns the node's message."""
        return await self._cluster_call(messages.ClusterJoin(id=next(self._ids), seed=seed), timeout_s)

    async def cluster_leave(self, node: str | None = None, *, timeout_s: float | None = None) -> str:
        """Hand off `node`'s partitions (this node's when None), then remove it from the cluster."""
        return await self._cluster_call(messages.ClusterLeave(id=next(self._ids), node=node), timeout_s)

    async def cluster_remove(self, node: str, *, force: bool = False, timeout_s: float | None = None) -> str:
        """Drop a dead node at once; its partitions are reassigned to the others. A node that
        answers the node's probe is refused (BadRequest) unless `force`."""
        return await self._cluster_call(messages.ClusterRemove(id=next(self._ids), node=node, force=force or None), timeout_s)

    async def cluster_plan(
        self,
        action: str,
        node: str | None = None,
        *,
        seed: str | None = None,
        address: str | None = None,
        timeout_s: float | None = None,
    ) -> messages.ClusterPlanOk:
        """What a membership change would do, changing nothing: `action` is "leave" (`node`,
        default this node), "remove" (`node`) or "join" (`seed`: this node joining seed's
        cluster; or `node` and `address`: that node joining this node's cluster)."""
        request = messages.ClusterPlan(id=next(self._ids), action=action, node=node, seed=seed, address=address)
        return expect(await self._call(request, timeout_s), messages.ClusterPlanOk, request)

    async def cluster_transfers(self, *, local_only: bool = False, timeout_s: float | None = None) -> messages.ClusterTransfersOk:
        """The partition transfers in flight on every member (`local_only`: on this node only)."""
        request = messages.ClusterTransfers(id=next(self._ids), local_only=local_only or None)
        return expect(await self._call(request, timeout_s), messages.ClusterTransfersOk, request)

    async def cluster_status(self, *, local_only: bool = False, timeout_s: float | None = None) -> messages.ClusterStatusOk:
        """The cluster as this node sees it; `local_only` skips gathering each member's own
        count of pending transfers (which waits up to a second for members that do not answer)."""
        request = messages.ClusterStatus(id=next(self._ids), local_only=local_only or None)
        return expect(await self._call(request, timeout_s), messages.ClusterStatusOk, request)

    async def repair_start(self, partition: int | None = None, *, timeout_s: float | None = None) -> messages.RepairProgressOk:
        """Start an anti-entropy exchange now on this node (every partition it holds when None)."""
        request = messages.RepairStart(id=next(self._ids), partition=partition)
        return expect(await self._call(request, timeout_s), messages.RepairProgressOk, request)

    async def repair_status(self, run: int, *, timeout_s: float | None = None) -> messages.RepairProgressOk:
        request = messages.RepairStatus(id=next(self._ids), run=run)
        return expect(await self._call(request, timeout_s), messages.RepairProgressOk, request)

    async def backup_start(self, *, timeout_s: float | None = None) -> messages.BackupStartOk:
        """Start a consistent copy of this node's store (admin); read it with `backup_read`."""
        request = messages.BackupStart(id=next(self._ids))
        return expect(await self._call(request, timeout_s), messages.BackupStartOk, request)

    async def backup_read(self, backup: int, offset: int, *, timeout_s: float | None = None) -> messages.BackupChunk:
        """The next bytes of backup `backup` from `offset` (empty when the copy has not got further
        yet); once `done`, the reply carries the copy's size and SHA-256."""
        request = messages.BackupRead(id=next(self._ids), backup=backup, offset=offset)
        return expect(await self._call(request, timeout_s), messages.BackupChunk, request)

    async def backup_end(self, backup: int, *, timeout_s: float | None = None) -> None:
        """Stop backup `backup` and let the node delete its copy."""
        request = messages.BackupEnd(id=next(self._ids), backup=backup)
        expect(await self._call(request, timeout_s), messages.BackupEndOk, request)

    async def log_level(self, level: str, *, timeout_s: float | None = None) -> messages.LogLevelOk:
        """Set the node's log level while it runs (DEBUG, INFO, WARNING, ERROR; admin role); the
        reply names the level now in force and the one before. An unknown level: BadRequest."""
        request = messages.LogLevelSet(id=next(self._ids), level=level)
        return expect(await self._call(request, timeout_s), messages.LogLevelOk, request)

    async def stats(self, *, timeout_s: float | None = None) -> messages.StatsOk:
        """This node's latency summaries, counters and gauges (admin)."""
        request = messages.StatsGet(id=next(self._ids))
        return expect(await self._call(request, timeout_s), messages.StatsOk, request)

    async def info(self, *, timeout_s: float | None = None) -> messages.InfoOk:
        """Who and where this node is, and its store (admin)."""
        request = messages.InfoGet(id=next(self._ids))
        return expect(await self._call(request, timeout_s), messages.InfoOk, request)

    async def ring(self, *, timeout_s: float | None = None) -> messages.RingOk:
        """The node's current ring: owners per partition, node addresses, N, R, W, and the nodes'
        locations (a node too old to know locations answers without them: all unknown)."""
        if not self._ring_without_locations:
            request = messages.RingGet(id=next(self._ids), locations=True)
            try:
                return expect(await self._call(request, timeout_s), messages.RingOk, request)
            except BadRequest as error:
                if "unknown field" not in error.message:
                    raise
                self._ring_without_locations = True  # an older node: ask it plainly from now on
        request = messages.RingGet(id=next(self._ids))
        return expect(await self._call(request, timeout_s), messages.RingOk, request)

    async def gossip(self, membership: bytes, *, timeout_s: float | None = None) -> bytes:
        """Node-to-node: push our membership (may be empty), get the peer's merged one back."""
        request = messages.Gossip(id=next(self._ids), membership=membership)
        return expect(await self._call(request, timeout_s), messages.GossipOk, request).membership

    async def _cluster_call(self, request: messages.Message, timeout_s: float | None) -> str:
        return expect(await self._call(request, timeout_s), messages.ClusterOk, request).message

    async def ping(self, *, timeout_s: float | None = None) -> str:
        request = messages.Ping(id=next(self._ids))
        return expect(await self._call(request, timeout_s), messages.Pong, request).node

    # ---- the connection's state ----

    @property
    def usable(self) -> bool:
        return self._broken is None

    async def broken_or(self, other: trio.Event) -> None:
        """Return once the connection breaks or `other` is set."""

        async def watch(event: trio.Event, scope: trio.CancelScope) -> None:
            await event.wait()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, self._broken_event, nursery.cancel_scope)
            nursery.start_soon(watch, other, nursery.cancel_scope)

    # ---- for transports built on this connection ----

    def submit(self, build: Callable[[int], messages.Message], waiter: Waiter) -> None:
        """Send `build(request_id)` with a fresh id; its reply goes to `waiter`. Never awaits."""
        if self._broken is not None:
            waiter.resolve(copy_error(self._broken))
            return
        request = build(next(self._ids))
        self._waiting[request.id] = waiter  # type: ignore[attr-defined]
        self._send(request)

    def withdraw(self, which: Callable[[Waiter], bool]) -> list[Waiter]:
        """Remove and return the waiting requests `which` picks, unresolved: a reply that comes
        for one later is dropped (the caller resolves them, with a timeout say)."""
        picked = [request_id for request_id, waiter in self._waiting.items() if which(waiter)]
        return [self._waiting.pop(request_id) for request_id in picked]

    def start_soon(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run `task` beside the connection's reader and writer; it is cancelled when the
        connection closes, and an error it raises closes the connection."""
        assert self._nursery is not None, "the connection is not open"
        self._nursery.start_soon(task)

    # ---- machinery ----

    async def _call(self, request: Any, timeout_s: float | None) -> messages.Message:
        if self._broken is not None:
            raise copy_error(self._broken)
        waiter = _AwaitedReply()
        self._waiting[request.id] = waiter
        self._send(request)
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            with trio.move_on_after(limit):
                await waiter.event.wait()
        finally:  # also when the caller's own scope cancels us: no waiter is left behind
            self._waiting.pop(request.id, None)
        reply = waiter.reply
        if reply is None:
            raise Timeout(f"no reply from {self.address} within {limit:g} s")
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, messages.ErrorReply):
            raise error_from_code(reply.code, reply.message)
        return reply

    def _send(self, message: messages.Message) -> None:
        self._outgoing.append(encode_frame(codec.encode_message(message)))
        if len(self._waiting) > 1 or self._writer_sending or len(self._outgoing) > 1:
            # Other requests are in flight (a pipelining caller such as a node's peer link): the
            # writer task gathers what this turn of the event loop queues into one send.
            self._wake_writer.set()
            return
        # The only request in flight: a plain write on the non-blocking socket costs less than
        # waking the writer task. What the socket does not take, and any error, goes to the writer.
        data = self._outgoing.pop()
        if self._tls is not None:
            data = self._seal(data)
        try:
            sent = os.write(self._stream.socket.fileno(), data)  # fileno() is -1 once closed: OSError
        except OSError:
            sent = 0
        if sent < len(data):
            if self._tls is not None:  # encrypted already: it must not be sealed again
                self._unsent = data[sent:]
            else:
                self._outgoing.append(data[sent:])
            self._wake_writer.set()

    def _seal(self, plain: bytes) -> bytes:
        """TLS: encrypt `plain` (queued by the layer until its handshake is done); return it after
        whatever the layer (handshake records) or a short write left. A failed session seals
        nothing more: the reader has failed every request already."""
        assert self._tls is not None
        if plain:
            try:
                self._tls.send(plain)
            except TlsError:
                pass
        data = self._tls.outgoing()
        if self._unsent:
            data, self._unsent = self._unsent + data, b""
        return data

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

    async def _await_handshake_reply(self, what: str, deadline: float) -> messages.Message:
        waiter = _AwaitedReply()
        self._waiting[0] = waiter  # the hello replies have no id; the reader files them under 0
        with trio.move_on_at(deadline):
            await waiter.event.wait()
        self._waiting.pop(0, None)
        reply = waiter.reply
        if reply is None:
            raise Timeout(f"no {what} reply from {self.address} within {self.timeout_s:g} s")
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, messages.ErrorReply):
            raise error_from_code(reply.code, reply.message)
        return reply

    async def _handshake(
        self, agent: str, deadline: float, *, token: str | None, peer: PeerCredentials | None, expect_node: str | None
    ) -> None:
        """The hello; as a peer with a secret, the mutual proof of it (`dynd.protocol.auth`)."""
        keyring = peer.keyring if peer is not None else None
        nonce = auth.new_nonce() if keyring is not None else None
        self._send(
            messages.Hello(
                version=PROTOCOL_VERSION,
                agent=agent,
                token=token,
                node=peer.name if peer is not None else None,
                cluster=(peer.cluster or None) if peer is not None else None,
                nonce=nonce,
            )
        )
        reply = await self._await_handshake_reply("hello", deadline)
        if not isinstance(reply, messages.HelloOk):
            raise BadFrame(f"expected hello_ok from {self.address}, got {type(reply).__name__}")
        if expect_node is not None and reply.node != expect_node:
            raise Unreachable(f"{self.address} is node {reply.node!r}, not {expect_node!r}")
        self.node_name = reply.node
        self.roles = frozenset(reply.roles or ())
        self._hello_done = True  # a dynd node: from now on a bad frame is the node's bug, not a stranger
        self._decoder.set_frame_bytes_max(REPLY_FRAME_BYTES_MAX)
        if keyring is None or peer is None or nonce is None:
            return
        cluster = reply.cluster or ""
        if reply.proof is None or reply.nonce is None:
            raise Unauthorized(f"{self.address} ({reply.node}) has no cluster secret, and this node has one")
        if peer.cluster and cluster != peer.cluster:
            raise Unauthorized(f"{self.address} ({reply.node}) belongs to another cluster")
        if not auth.check_proof(keyring, reply.proof, auth.LISTENER, cluster, peer.name, reply.node, nonce, reply.nonce):
            raise Unauthorized(f"{self.address} ({reply.node}) did not prove the cluster secret")
        self._send(messages.HelloProof(proof=auth.make_proof(keyring, auth.DIALER, cluster, peer.name, reply.node, nonce, reply.nonce)))
        proved = await self._await_handshake_reply("hello_proof", deadline)
        if not isinstance(proved, messages.HelloProofOk):
            raise BadFrame(f"expected hello_proof_ok from {self.address}, got {type(proved).__name__}")
        self.cluster = cluster
        self.roles = frozenset(proved.roles)

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            # One more pass of the scheduler first: the tasks woken alongside this one (readers
            # of other connections, replies being delivered) queue their requests too, and
            # they go out in this same write.
            await trio.lowlevel.checkpoint()
            self._wake_writer = trio.Event()
            if not self._outgoing and not (self._tls is not None and (self._unsent or self._tls.wants_write)):
                continue
            data = b"".join(self._outgoing)
            self._outgoing.clear()
            if self._tls is not None:
                data = self._seal(data)
            self._writer_sending = True
            try:
                await self._send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._fail_all(Unreachable(f"connection to {self.address} lost: {exc}"))
                return
            self._writer_sending = False

    async def _send_all(self, data: bytes) -> None:
        """The stream's send_all, after trying a plain write first (which usually takes it all
        without the scheduler pass send_all makes)."""
        try:
            sent = os.write(self._stream.socket.fileno(), data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            await self._stream.send_all(memoryview(data)[sent:])

    async def _reader(self) -> None:
        decoder = self._decoder
        fd = self._stream.socket.fileno()  # the stream closes only after this task has ended
        while True:
            try:
                # Wait, then read what is there: one pass through the scheduler per chunk, where
                # the stream's receive_some makes another after each successful read.
                await trio.lowlevel.wait_readable(fd)
                chunk = os.read(fd, RECEIVE_CHUNK_BYTES)
            except BlockingIOError:
                continue
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._fail_all(Unreachable(f"connection to {self.address} lost: {exc}"))
                return
            if not chunk:
                if not self._hello_done and decoder.has_partial_frame:
                    self._fail_all(not_a_dynd_node(self.address, self._first_bytes))
                else:
                    self._fail_all(Unreachable(f"{self.address} closed the connection"))
                return
            if self._tls is not None:
                raw = chunk
                try:
                    chunk = self._tls.receive(chunk)
                except TlsError as exc:
                    self._fail_all(self._tls_error(exc, raw))
                    return
                if self._tls.wants_write:  # handshake records, and the requests queued behind them
                    self._wake_writer.set()
                if not chunk:
                    continue
            if not self._hello_done and len(self._first_bytes) < FIRST_BYTES_KEPT:
                self._first_bytes += chunk[: FIRST_BYTES_KEPT - len(self._first_bytes)]
            try:
                frames = decoder.feed(chunk)
                for frame in frames:
                    self._deliver(codec.decode_message(frame))
            except DynError as exc:
                # Bytes that are no frame or no CBOR map, before the hello: not a dynd node. A
                # well-formed message of an unknown op or field is a dynd of another version.
                if not self._hello_done and isinstance(exc, BadFrame):
                    self._fail_all(not_a_dynd_node(self.address, self._first_bytes))
                else:
                    self._fail_all(BadFrame(f"bad reply from {self.address}: {exc.message}"))
                return

    def _deliver(self, reply: messages.Message) -> None:
        request_id = getattr(reply, "id", 0)
        if request_id is None:  # an error about a frame the node could not read: fail everyone
            assert isinstance(reply, messages.ErrorReply)
            self._fail_all(error_from_code(reply.code, reply.message))
            return
        waiter = self._waiting.pop(request_id, None)
        if waiter is not None:  # a reply after our timeout has no one to go to
            waiter.resolve(reply)

    def _fail_all(self, error: DynError) -> None:
        self._broken = error
        self._broken_event.set()
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            waiter.resolve(copy_error(error))


def unwrap_group(group: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
    """The one error inside nested single-member groups, or the group itself."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


@asynccontextmanager
async def open_client(
    address: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    agent: str = "dynd.client",
    token: str | None = None,
    peer: PeerCredentials | None = None,
    expect_node: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Client]:
    """Connect to a node, say hello, and yield a `Client`; the connection closes on exit.

    `timeout_s` bounds connecting and the hello together, and then each request. `token`: a
    client or admin token, when the node asks for one. `peer` and `expect_node` are for nodes
    talking to nodes: prove the cluster secret, and refuse a node of another name. `ssl_context`:
    speak TLS (the TLS handshake runs within `timeout_s` too).
    """
    host, port = parse_address(address)
    tls = TlsLayer.client(ssl_context, server_hostname=host) if ssl_context is not None else None
    deadline = trio.current_time() + timeout_s
    try:
        with trio.fail_at(deadline):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise CannotConnect(f"connecting to {address} timed out after {timeout_s:g} s") from None
    except OSError as exc:
        raise CannotConnect(f"cannot connect to {address}: {_connect_reason(exc)}") from None
    client = Client(stream, address, timeout_s, tls)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            nursery.start_soon(client._writer)
            client._nursery = nursery
            await client._handshake(agent, deadline, token=token, peer=peer, expect_node=expect_node)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery is ours, not the caller's: hand back the single error it wraps, so
        # `except DynError` (or the caller's own exception types) works as written.
        error = unwrap_group(group)
        if error is group:
            raise
        raise error from None
    finally:
        await stream.aclose()


def _connect_reason(exc: OSError) -> str:
    """The OS's reason ("Connection refused"), which trio keeps on the underlying errors."""
    causes: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        causes += list(exc.__cause__.exceptions)
    elif exc.__cause__ is not None:
        causes.append(exc.__cause__)
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return str(exc)
