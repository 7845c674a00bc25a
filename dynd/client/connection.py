"""The client library: `open_client` (async, trio) and `BlockingClient` (plain scripts).

    async with open_client("127.0.0.1:7400") as client:
        result = await client.get(b"cart:42")          # GetResult(values=[...], context=b"...")
        context = await client.put(b"cart:42", b"...", context=result.context)

One connection carries many requests at once: each request gets an id, one task reads replies and
wakes the caller waiting for that id, and one task flushes queued frames in batches (a request
sent while no other is in flight goes out at once instead). Failures raise
`DynError` subclasses from `dynd.protocol.errors`: `Unreachable` when the node cannot be reached or
the connection drops, `Timeout` when no reply comes in time, and the node's own error otherwise.

TLS: give `ssl_context` (for a client, `dynd.shell.tls.client_context(ca_file)`, which checks the
host name; a node uses its own mutual-TLS context). The same fd-based reads and writes run through a
sans-IO `TlsLayer`: replies are decrypted before the frame decoder, and requests are encrypted as
one batch before each write. A refused certificate raises `Unauthorized`; a node that does not
speak TLS, `Unreachable` saying so.
"""

from __future__ import annotations

import itertools
import math
import logging
import os
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from dynd.core.partition import partition_of
from dynd.core.preflist import preference_list
from dynd.core.ring import Ring
from dynd.protocol import PROTOCOL_VERSION, auth, codec, messages
from dynd.protocol.address import parse_address
from dynd.protocol.errors import BadFrame, DynError, Internal, StaleRing, Timeout, Unauthorized, Unreachable, error_from_code
from dynd.protocol.framing import FrameDecoder, encode_frame
from dynd.shell.tls import TlsError, TlsLayer

log = logging.getLogger("dynd.client")

DEFAULT_TIMEOUT_S = 5.0
REPLY_FRAME_BYTES_MAX = 64 * 1024 * 1024
RECEIVE_CHUNK_BYTES = 256 * 1024
AVOID_FAILED_S = 5.0  # a routing client tries a node that just failed only after the others

KeyLike = bytes | str


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """How a node introduces itself to another: its name, its cluster ("" while joining: the
    listener's is taken) and the keyring that proves the cluster secret (None: no secret)."""

    name: str
    cluster: str
    keyring: auth.Keyring | None


@dataclass(frozen=True, slots=True)
class Sibling:
    value: bytes
    dot: tuple[str, int]
    clock: dict[str, int]


@dataclass(frozen=True, slots=True)
class GetResult:
    """`values` is empty when the key is not found (or deleted); `context` is opaque."""

    values: list[bytes]
    context: bytes
    siblings: list[Sibling]

    @property
    def found(self) -> bool:
        return bool(self.values)


def _key_bytes(key: KeyLike) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


class _Waiter:
    """A request awaiting its reply: either a task waiting on `event`, or a `callback` to run."""

    __slots__ = ("event", "reply", "callback", "deadline")

    def __init__(self, callback: Callable[[Any], None] | None = None, deadline: float = 0.0) -> None:
        self.event = trio.Event()
        self.reply: messages.Message | BaseException | None = None
        self.callback = callback
        self.deadline = deadline

    def resolve(self, reply: messages.Message | BaseException) -> None:
        self.reply = reply
        if self.callback is not None:
            callback, self.callback = self.callback, None
            if isinstance(reply, messages.ErrorReply):
                reply = error_from_code(reply.code, reply.message)
            try:
                callback(reply)
            except Exception:  # the callback's bug must not break the connection for everyone else
                log.exception("a reply callback failed")
        else:
            self.event.set()


CALLBACK_SWEEP_S = 0.1


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
        self._waiting: dict[int, _Waiter] = {}
        self._outgoing: list[bytes] = []
        self._writer_sending = False  # the writer task owns the send side until its send completes
        self._wake_writer = trio.Event()
        self._broken: DynError | None = None
        self._broken_event = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._sweeping = False

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
        request_id = next(self._ids)
        reply = await self._call(messages.Get(id=request_id, key=_key_bytes(key), r=r, ring=ring, pr=pr), timeout_s)
        if not isinstance(reply, messages.GetOk):
            raise Internal(f"unexpected reply {type(reply).__name__} to get")
        siblings = [
            Sibling(view.value, (view.actor, view.counter), {entry.actor: entry.counter for entry in view.clock})
            for view in reply.siblings
        ]
        return GetResult([s.value for s in siblings], reply.context, siblings)

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
    ) -> bytes:
        """Store `value`, superseding what `context` covers; return the context covering the new write.
        `w` stores must succeed (the cluster's default when None), `pw` of them on primaries."""
        request_id = next(self._ids)
        message = messages.Put(id=request_id, key=_key_bytes(key), value=bytes(value), context=context, w=w, ring=ring, pw=pw)
        reply = await self._call(message, timeout_s)
        if not isinstance(reply, messages.PutOk):
            raise Internal(f"unexpected reply {type(reply).__name__} to put")
        return reply.context

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
        request_id = next(self._ids)
        message = messages.Delete(id=request_id, key=_key_bytes(key), context=context, w=w, ring=ring, pw=pw)
        reply = await self._call(message, timeout_s)
        if not isinstance(reply, messages.DeleteOk):
            raise Internal(f"unexpected reply {type(reply).__name__} to delete")
        return reply.context

    # ---- cluster administration and ring ----

    async def cluster_join(self, seed: str, *, timeout_s: float | None = None) -> str:
        """Ask this node to join the cluster of `seed` (HOST:PORT); returns the node's message."""
        return await self._cluster_call(messages.ClusterJoin(id=next(self._ids), seed=seed), timeout_s)

    async def cluster_leave(self, node: str | None = None, *, timeout_s: float | None = None) -> str:
        """Hand off `node`'s partitions (this node's when None), then remove it from the cluster."""
        return await self._cluster_call(messages.ClusterLeave(id=next(self._ids), node=node), timeout_s)

    async def cluster_remove(self, node: str, *, timeout_s: float | None = None) -> str:
        """Drop a dead node at once; its partitions are reassigned to the others."""
        return await self._cluster_call(messages.ClusterRemove(id=next(self._ids), node=node), timeout_s)

    async def cluster_status(self, *, local_only: bool = False, timeout_s: float | None = None) -> messages.ClusterStatusOk:
        """The cluster as this node sees it; `local_only` skips gathering each member's own
        count of pending transfers (which waits up to a second for members that do not answer)."""
        reply = await self._call(messages.ClusterStatus(id=next(self._ids), local_only=local_only or None), timeout_s)
        if not isinstance(reply, messages.ClusterStatusOk):
            raise Internal(f"unexpected reply {type(reply).__name__} to cluster_status")
        return reply

    async def repair_start(self, partition: int | None = None, *, timeout_s: float | None = None) -> messages.RepairProgressOk:
        """Start an anti-entropy exchange now on this node (every partition it holds when None)."""
        reply = await self._call(messages.RepairStart(id=next(self._ids), partition=partition), timeout_s)
        if not isinstance(reply, messages.RepairProgressOk):
            raise Internal(f"unexpected reply {type(reply).__name__} to repair_start")
        return reply

    async def repair_status(self, run: int, *, timeout_s: float | None = None) -> messages.RepairProgressOk:
        reply = await self._call(messages.RepairStatus(id=next(self._ids), run=run), timeout_s)
        if not isinstance(reply, messages.RepairProgressOk):
            raise Internal(f"unexpected reply {type(reply).__name__} to repair_status")
        return reply

    async def ring(self, *, timeout_s: float | None = None) -> messages.RingOk:
        """The node's current ring: owners per partition, node addresses, N, R, W."""
        reply = await self._call(messages.RingGet(id=next(self._ids)), timeout_s)
        if not isinstance(reply, messages.RingOk):
            raise Internal(f"unexpected reply {type(reply).__name__} to ring_get")
        return reply

    async def gossip(self, membership: bytes, *, timeout_s: float | None = None) -> bytes:
        """Node-to-node: push our membership (may be empty), get the peer's merged one back."""
        reply = await self._call(messages.Gossip(id=next(self._ids), membership=membership), timeout_s)
        if not isinstance(reply, messages.GossipOk):
            raise Internal(f"unexpected reply {type(reply).__name__} to gossip")
        return reply.membership

    async def _cluster_call(self, request: Any, timeout_s: float | None) -> str:
        reply = await self._call(request, timeout_s)
        if not isinstance(reply, messages.ClusterOk):
            raise Internal(f"unexpected reply {type(reply).__name__} to {request.OP}")
        return reply.message

    async def ping(self, *, timeout_s: float | None = None) -> str:
        reply = await self._call(messages.Ping(id=next(self._ids)), timeout_s)
        if not isinstance(reply, messages.Pong):
            raise Internal(f"unexpected reply {type(reply).__name__} to ping")
        return reply.node

    # ---- callback requests, for nodes talking to nodes ----

    @property
    def usable(self) -> bool:
        return self._broken is None

    def call_with_callback(
        self, build: Callable[[int], Any], on_reply: Callable[[Any], None], timeout_s: float
    ) -> None:
        """Send `build(request_id)` and call `on_reply(reply or DynError)` later, never awaiting."""
        if self._broken is not None:
            on_reply(_copy_error(self._broken))
            return
        request = build(next(self._ids))
        self._waiting[request.id] = _Waiter(on_reply, trio.current_time() + timeout_s)
        self._send(request)
        if not self._sweeping and self._nursery is not None:
            self._sweeping = True  # only connections that use callbacks pay for the sweeper
            self._nursery.start_soon(self._sweeper)

    async def broken_or(self, other: trio.Event) -> None:
        """Return once the connection breaks or `other` is set."""

        async def watch(event: trio.Event, scope: trio.CancelScope) -> None:
            await event.wait()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, self._broken_event, nursery.cancel_scope)
            nursery.start_soon(watch, other, nursery.cancel_scope)

    async def _sweeper(self) -> None:
        """Expire callback requests whose peer never answered."""
        while True:
            await trio.sleep(CALLBACK_SWEEP_S)
            now = trio.current_time()
            expired = [
                request_id
                for request_id, waiter in self._waiting.items()
                if waiter.callback is not None and waiter.deadline <= now
            ]
            for request_id in expired:
                waiter = self._waiting.pop(request_id)
                waiter.resolve(Timeout(f"no reply from {self.address} in time"))

    # ---- machinery ----

    async def _call(self, request: Any, timeout_s: float | None) -> messages.Message:
        if self._broken is not None:
            raise _copy_error(self._broken)
        waiter = _Waiter()
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

    def _tls_error(self, error: TlsError) -> DynError:
        if error.clean:
            return Unreachable(f"{self.address} closed the connection")
        if error.refused:
            return Unauthorized(f"TLS with {self.address}: {error.message}")
        if error.not_tls:
            return Unreachable(f"{self.address} does not speak TLS (is TLS configured on that node?): {error.message}")
        return Unreachable(f"TLS with {self.address} failed: {error.message}")

    async def _await_handshake_reply(self, what: str, deadline: float) -> messages.Message:
        waiter = _Waiter()
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
        decoder = FrameDecoder(REPLY_FRAME_BYTES_MAX)
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
                self._fail_all(Unreachable(f"{self.address} closed the connection"))
                return
            if self._tls is not None:
                try:
                    chunk = self._tls.receive(chunk)
                except TlsError as exc:
                    self._fail_all(self._tls_error(exc))
                    return
                if self._tls.wants_write:  # handshake records, and the requests queued behind them
                    self._wake_writer.set()
                if not chunk:
                    continue
            try:
                frames = decoder.feed(chunk)
                for frame in frames:
                    self._deliver(codec.decode_message(frame))
            except DynError as exc:
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
            waiter.resolve(_copy_error(error))


def _copy_error(error: DynError) -> DynError:
    """A fresh exception per waiter (one instance raised in many tasks would share a traceback)."""
    return error_from_code(error.code, error.message)


def _unwrap(group: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
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
        raise Unreachable(f"connecting to {address} timed out after {timeout_s:g} s") from None
    except OSError as exc:
        raise Unreachable(f"cannot connect to {address}: {_connect_reason(exc)}") from None
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
        error = _unwrap(group)
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


T = TypeVar("T")


class BlockingClient:
    """The same calls without async: a private thread runs trio and the connection.

        with BlockingClient("127.0.0.1:7400") as client:
            client.put("greeting", b"hello")
    """

    def __init__(
        self, address: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, token: str | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._token_credential = token
        self._ssl_context = ssl_context
        self._ready = threading.Event()
        self._client: Client | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(address, timeout_s), daemon=True, name="dynd-client")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self, address: str, timeout_s: float) -> None:
        async def main() -> None:
            try:
                async with open_client(address, timeout_s=timeout_s, token=self._token_credential, ssl_context=self._ssl_context) as client:
                    self._client = client
                    self._token = trio.lowlevel.current_trio_token()
                    self._stop = trio.Event()
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:  # reported to the constructing thread
                self._error = exc
            finally:
                self._ready.set()

        trio.run(main)

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self._client is None or self._token is None:
            raise Unreachable("client is closed")

        async def call() -> T:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(call, trio_token=self._token)

    def get(self, key: KeyLike, *, r: int | None = None, pr: int | None = None) -> GetResult:
        assert self._client is not None
        return self._call(self._client.get, key, r=r, pr=pr)

    def put(self, key: KeyLike, value: bytes, context: bytes | None = None, *, w: int | None = None, pw: int | None = None) -> bytes:
        assert self._client is not None
        return self._call(self._client.put, key, value, context, w=w, pw=pw)

    def delete(self, key: KeyLike, context: bytes, *, w: int | None = None, pw: int | None = None) -> bytes:
        assert self._client is not None
        return self._call(self._client.delete, key, context, w=w, pw=pw)

    def ping(self) -> str:
        assert self._client is not None
        return self._call(self._client.ping)

    def cluster_status(self, *, local_only: bool = False) -> messages.ClusterStatusOk:
        assert self._client is not None
        return self._call(self._client.cluster_status, local_only=local_only)

    def repair_start(self, partition: int | None = None) -> messages.RepairProgressOk:
        assert self._client is not None
        return self._call(self._client.repair_start, partition)

    def repair_status(self, run: int) -> messages.RepairProgressOk:
        assert self._client is not None
        return self._call(self._client.repair_status, run)

    def cluster_join(self, seed: str) -> str:
        assert self._client is not None
        return self._call(self._client.cluster_join, seed)

    def cluster_leave(self, node: str | None = None) -> str:
        assert self._client is not None
        return self._call(self._client.cluster_leave, node)

    def cluster_remove(self, node: str) -> str:
        assert self._client is not None
        return self._call(self._client.cluster_remove, node)

    def ring(self) -> messages.RingOk:
        assert self._client is not None
        return self._call(self._client.ring)

    def close(self) -> None:
        if self._token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join()
        self._client = None

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class KeyPlacement:
    partition: int
    primaries: tuple[str, ...]
    fallbacks: tuple[str, ...]


def key_placement(ring: messages.RingOk, key: KeyLike) -> KeyPlacement:
    """Where `key` lives under `ring`: its partition, its N primaries, then the fallbacks in order."""
    return _Placer(ring).place(key)


class _Placer:
    """A ring reply turned into the core's Ring once, so placing each key is a cached lookup."""

    def __init__(self, ring: messages.RingOk) -> None:
        self.ring = Ring(partitions=len(ring.owners), owners=tuple(ring.owners))
        self.n = ring.n
        self._by_partition: dict[int, KeyPlacement] = {}

    def place(self, key: KeyLike) -> KeyPlacement:
        partition = partition_of(_key_bytes(key), self.ring.partitions)
        placement = self._by_partition.get(partition)
        if placement is None:
            preferred = preference_list(self.ring, partition, self.n)
            placement = self._by_partition[partition] = KeyPlacement(partition, preferred.primaries, preferred.fallbacks)
        return placement


class ClusterClient:
    """Client-driven coordination (paper section 6.4, Table 2): route each request to a primary.

    It fetches the ring from a node, computes each key's preference list itself and sends the
    request straight to the first primary it can reach, sparing the hop through a node that would
    forward it. The ring is refreshed every `ring_refresh_s`, and at once when a node answers
    `stale_ring` or a primary cannot be reached. Same calls as `Client`.
    """

    def __init__(
        self,
        seeds: list[str],
        nursery: trio.Nursery,
        *,
        timeout_s: float,
        ring_refresh_s: float,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.seeds = seeds
        self.token = token
        self.ssl_context = ssl_context
        self.timeout_s = timeout_s
        self.ring_refresh_s = ring_refresh_s
        self.ring: messages.RingOk | None = None
        self._placer: _Placer | None = None
        self._addresses: dict[str, str] = {}
        self._ring_fetched_at = 0.0
        self._nursery = nursery
        self._clients: dict[str, Client] = {}
        self._closers: dict[str, trio.Event] = {}
        self._connecting: dict[str, trio.Event] = {}
        self._failed_at: dict[str, float] = {}  # node -> when a request to it last failed

    async def get(self, key: KeyLike, *, r: int | None = None, pr: int | None = None) -> GetResult:
        return await self._routed(key, lambda client, ring: client.get(key, r=r, pr=pr, ring=ring))

    async def put(
        self, key: KeyLike, value: bytes, context: bytes | None = None, *, w: int | None = None, pw: int | None = None
    ) -> bytes:
        return await self._routed(key, lambda client, ring: client.put(key, value, context, w=w, pw=pw, ring=ring))

    async def delete(self, key: KeyLike, context: bytes, *, w: int | None = None, pw: int | None = None) -> bytes:
        return await self._routed(key, lambda client, ring: client.delete(key, context, w=w, pw=pw, ring=ring))

    async def refresh_ring(self) -> messages.RingOk:
        errors: list[str] = []
        known = [a.address for a in self.ring.addresses] if self.ring is not None else []
        for address in dict.fromkeys([*known, *self.seeds]):
            try:
                client = await self._client_for(address)
                ring = await client.ring()
                if self.ring is None or ring.version != self.ring.version:
                    self._placer = _Placer(ring)
                    self._addresses = {a.node: a.address for a in ring.addresses}
                self.ring = ring
                self._ring_fetched_at = trio.current_time()
                return ring
            except DynError as exc:
                errors.append(f"{address}: {exc.message}")
        raise Unreachable("no node answered for the ring: " + "; ".join(errors))

    async def _routed(self, key: KeyLike, call: Callable[[Client, bytes], Awaitable[T]]) -> T:
        if self.ring is None or trio.current_time() - self._ring_fetched_at > self.ring_refresh_s:
            await self.refresh_ring()
        for attempt in range(2):
            ring, placer = self.ring, self._placer
            assert ring is not None and placer is not None
            placement = placer.place(key)
            last: DynError | None = None
            # Primaries first; when none can be reached, a fallback coordinates (sloppy quorum).
            # Nodes that failed lately go last, so one dead or paused node costs one timeout.
            candidates = placement.primaries + placement.fallbacks
            if self._failed_at:
                now = trio.current_time()
                order = sorted(candidates, key=lambda node: now - self._failed_at.get(node, -math.inf) < AVOID_FAILED_S)
            else:
                order = candidates
            for node in order:
                address = self._addresses.get(node)
                if address is None:
                    continue
                try:
                    client = await self._client_for(address)
                    result = await call(client, ring.version)
                    self._failed_at.pop(node, None)
                    return result
                except (Unreachable, StaleRing, Timeout) as exc:
                    # A node that is down, paused or cut off: the next one coordinates. A put that
                    # timed out may still land, so a retried put can leave a duplicate sibling,
                    # never a lost write.
                    if not isinstance(exc, StaleRing):
                        self._failed_at[node] = trio.current_time()
                    last = exc
            if attempt == 0:
                await self.refresh_ring()
        raise last if last is not None else Unreachable("no primary of this key is known")

    async def _client_for(self, address: str) -> Client:
        client = self._clients.get(address)
        if client is not None and client.usable:
            return client
        pending = self._connecting.get(address)
        if pending is None:
            pending = self._connecting[address] = trio.Event()
            self._nursery.start_soon(self._connect, address, pending)
        await pending.wait()
        client = self._clients.get(address)
        if client is None:
            raise Unreachable(f"cannot connect to {address}")
        return client

    async def _connect(self, address: str, ready: trio.Event) -> None:
        closer = self._closers.setdefault(address, trio.Event())
        try:
            async with open_client(address, timeout_s=self.timeout_s, token=self.token, ssl_context=self.ssl_context) as client:
                self._clients[address] = client
                self._connecting.pop(address, None)
                ready.set()
                await client.broken_or(closer)
        except DynError:
            pass
        finally:
            self._clients.pop(address, None)
            self._connecting.pop(address, None)
            ready.set()

    def close(self) -> None:
        for closer in self._closers.values():
            closer.set()


@asynccontextmanager
async def open_cluster_client(
    seeds: str | list[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    ring_refresh_s: float = 10.0,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[ClusterClient]:
    """A `ClusterClient` that routes by the ring it fetched from one of `seeds` (HOST:PORT);
    `ssl_context`: TLS to every node it reaches."""
    seed_list = [seeds] if isinstance(seeds, str) else list(seeds)
    try:
        async with trio.open_nursery() as nursery:
            client = ClusterClient(
                seed_list, nursery, timeout_s=timeout_s, ring_refresh_s=ring_refresh_s, token=token, ssl_context=ssl_context
            )
            try:
                await client.refresh_ring()
                yield client
            finally:
                client.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = _unwrap(group)
        if error is group:
            raise
        raise error from None
