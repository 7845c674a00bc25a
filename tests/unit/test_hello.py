"""The hello and the roles it grants, against the real `Server` in this process.

A socketpair has no IP address, so a connection over it is what a remote stranger's is (not the
node's own host); a TCP connection on 127.0.0.1 is a local one. The node behind the server is a
fake that records what reaches it: a refused request must never get there.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from dynd.client import PeerCredentials, open_client
from dynd.core.limits import Limits
from dynd.core.membership import JOINED, Member
from dynd.protocol import PROTOCOL_VERSION, auth, codec, messages
from dynd.protocol.errors import Unauthorized
from dynd.protocol.framing import FrameDecoder, encode_frame
from dynd.shell.security import Security
from dynd.shell.server import Server

CLUSTER = "c0ffee"
SECRET_A = b"a" * 32
SECRET_B = b"b" * 32
ADMIN_TOKEN = "admin-token-0123456789"
CLIENT_TOKEN = "client-token-0123456789"


class _Membership:
    def __init__(self, names: tuple[str, ...]) -> None:
        self.members = {name: Member(name, "127.0.0.1:1", JOINED) for name in names}


class _Cluster:
    def __init__(self, names: tuple[str, ...]) -> None:
        self.membership = _Membership(names)


class FakeNode:
    """Answers every request it gets with a pong, and remembers it."""

    def __init__(self, name: str = "n1", members: tuple[str, ...] = ("n1", "n2", "n3")) -> None:
        self.name = name
        self.cluster = _Cluster(members)
        self.handled: list[Any] = []

    def handle(self, message: Any, reply: Any, received_us: int | None = None) -> None:
        self.handled.append(message)
        reply(messages.Pong(id=getattr(message, "id", 0) or 0, node=self.name))


def security(keyring: tuple[bytes, ...] | None = (SECRET_A,), tokens: str = "") -> Security:
    return Security(
        cluster_id=CLUSTER,
        keyring=auth.Keyring(keyring) if keyring is not None else None,
        tokens=auth.load_tokens(tokens),
    )


class Raw:
    """A framed connection that sends whatever the test says."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(1 << 24)
        self.frames: list[bytes] = []

    async def send(self, message: Any) -> None:
        await self.sock.send(encode_frame(codec.encode_message(message)))

    async def receive(self) -> Any:
        with trio.fail_after(5):
            while not self.frames:
                try:
                    chunk = await self.sock.recv(65536)
                except ConnectionResetError:
                    return None
                if not chunk:
                    return None
                self.frames += self.decoder.feed(chunk)
        return codec.decode_message(self.frames.pop(0))


@asynccontextmanager
async def remote_connection(server: Server) -> AsyncIterator[Raw]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, trio.SocketStream(trio.socket.from_stdlib_socket(theirs)))
        with trio.socket.from_stdlib_socket(ours) as sock:
            yield Raw(sock)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def listening(server: Server) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def hello(**fields: Any) -> messages.Hello:
    return messages.Hello(version=PROTOCOL_VERSION, agent="test", **fields)


async def test_without_a_secret_every_connection_holds_every_role() -> None:
    node = FakeNode()
    server = Server(node, Limits(), security(keyring=None))  # type: ignore[arg-type]
    async with remote_connection(server) as conn:
        await conn.send(hello())
        reply = await conn.receive()
        assert set(reply.roles) == set(auth.ROLES)
        await conn.send(messages.ClusterRemove(id=1, node="n2"))
        assert isinstance(await conn.receive(), messages.Pong)
    assert [type(m) for m in node.handled] == [messages.ClusterRemove]


async def test_with_a_secret_a_stranger_gets_client_operations_and_nothing_else() -> None:
    node = FakeNode()
    server = Server(node, Limits(), security())  # type: ignore[arg-type]
    async with remote_connection(server) as conn:
        await conn.send(hello())
        assert (await conn.receive()).roles == [auth.CLIENT]
        await conn.send(messages.Put(id=1, key=b"k", value=b"v"))
        assert isinstance(await conn.receive(), messages.Pong)
        refused = [
            messages.ClusterRemove(id=2, node="n2"),
            messages.ClusterLeave(id=3, node="n3"),
            messages.Gossip(id=4, membership=b""),
            messages.SegmentKeys(id=5, partition=0, segments=[0], limit=10, tree_segments=256, tree_fanout=16),
            messages.Fetch(id=6, key=b"k"),
            messages.Replicate(id=7, key=b"k", record=b"x"),
            messages.Put(id=8, key=b"k", value=b"v", forwarded=True),
            messages.RepairStart(id=9),
        ]
        for request in refused:
            await conn.send(request)
            reply = await conn.receive()
            assert isinstance(reply, messages.ErrorReply) and reply.code == "unauthorized", request
            assert reply.id == request.id
        await conn.send(messages.Get(id=10, key=b"k"))  # the connection stays usable
        assert isinstance(await conn.receive(), messages.Pong)
    assert [type(m) for m in node.handled] == [messages.Put, messages.Get]
    assert server.security.events.counts["unauthorized"] == len(refused)


async def test_an_admin_token_grants_admin_and_a_client_token_does_not() -> None:
    node = FakeNode()
    server = Server(node, Limits(), security(tokens=f"admin {ADMIN_TOKEN}\nclient {CLIENT_TOKEN}\n"))  # type: ignore[arg-type]
    async with remote_connection(server) as conn:
        await conn.send(hello(token=ADMIN_TOKEN))
        assert set((await conn.receive()).roles) == {auth.CLIENT, auth.ADMIN}
        await conn.send(messages.ClusterRemove(id=1, node="n2"))
        assert isinstance(await conn.receive(), messages.Pong)
    async with remote_connection(server) as conn:
        await conn.send(hello(token=CLIENT_TOKEN))
        assert (await conn.receive()).roles == [auth.CLIENT]
        await conn.send(messages.ClusterRemove(id=1, node="n2"))
        assert (await conn.receive()).code == "unauthorized"
    assert [type(m) for m in node.handled] == [messages.ClusterRemove]


async def test_with_client_tokens_configured_a_hello_without_one_or_with_a_wrong_one_is_refused() -> None:
    node = FakeNode()
    server = Server(node, Limits(), security(tokens=f"client {CLIENT_TOKEN}\n"))  # type: ignore[arg-type]
    for credential in (None, "not-the-token-at-all"):
        async with remote_connection(server) as conn:
            await conn.send(hello(token=credential))
            reply = await conn.receive()
            assert isinstance(reply, messages.ErrorReply) and reply.code == "unauthorized"
            await conn.send(messages.Get(id=1, key=b"k"))
            assert await conn.receive() is None  # closed
    assert node.handled == []
    assert server.security.events.counts["hello_refused"] == 2


async def test_a_connection_from_the_nodes_own_host_holds_admin() -> None:
    node = FakeNode()
    server = Server(node, Limits(), security())  # type: ignore[arg-type]
    async with listening(server) as address:
        async with open_client(address) as client:
            assert client.roles == {auth.CLIENT, auth.ADMIN}
            await client._call(messages.ClusterRemove(id=1, node="n2"), None)  # the fake answers pong
    assert [type(m) for m in node.handled] == [messages.ClusterRemove]


async def test_peers_prove_the_secret_both_ways() -> None:
    node = FakeNode()
    server = Server(node, Limits(), security(keyring=(SECRET_A, SECRET_B)))  # type: ignore[arg-type]
    async with listening(server) as address:
        # mid-rotation: the listener proves with A and accepts B; a dialer that proves with B and
        # still accepts A talks to it, as does one that has not started the rotation
        for keyring in ((SECRET_A,), (SECRET_B, SECRET_A)):
            peer = PeerCredentials("n2", CLUSTER, auth.Keyring(keyring))
            async with open_client(address, peer=peer, expect_node="n1") as client:
                assert client.roles == auth.ALL_ROLES
                assert client.cluster == CLUSTER
                await client._call(messages.Gossip(id=1, membership=b""), None)
        with pytest.raises(Unauthorized, match="did not prove"):
            async with open_client(address, peer=PeerCredentials("n2", CLUSTER, auth.Keyring((b"x" * 32,)))):
                pass
        with pytest.raises(Unauthorized, match="did not prove"):  # B alone: too early, the listener still proves with A
            async with open_client(address, peer=PeerCredentials("n2", CLUSTER, auth.Keyring((SECRET_B,)))):
                pass
        with pytest.raises(Unauthorized, match="another cluster"):
            async with open_client(address, peer=PeerCredentials("n2", "other", auth.Keyring((SECRET_A,)))):
                pass
        with pytest.raises(Exception, match="is node 'n1', not 'n3'"):
            async with open_client(address, peer=PeerCredentials("n2", CLUSTER, auth.Keyring((SECRET_A,))), expect_node="n3"):
                pass
    assert [type(m) for m in node.handled] == [messages.Gossip, messages.Gossip]


async def test_a_wrong_dialer_proof_is_refused_and_a_proof_from_another_connection_does_not_replay() -> None:
    node = FakeNode()
    server = Server(node, Limits(), security())  # type: ignore[arg-type]
    nonce = auth.new_nonce()
    async with remote_connection(server) as first:
        await first.send(hello(node="n2", cluster=CLUSTER, nonce=nonce))
        challenge = await first.receive()
        good = auth.proof(SECRET_A, auth.DIALER, CLUSTER, "n2", "n1", nonce, challenge.nonce)
        await first.send(messages.HelloProof(proof=good))
        assert set((await first.receive()).roles) == set(auth.ROLES)
    async with remote_connection(server) as second:  # the same hello and proof again: a new nonce is asked for
        await second.send(hello(node="n2", cluster=CLUSTER, nonce=nonce))
        await second.receive()
        await second.send(messages.HelloProof(proof=good))
        reply = await second.receive()
        assert isinstance(reply, messages.ErrorReply) and reply.code == "unauthorized"
        assert await second.receive() is None


async def test_a_listener_without_the_secret_cannot_pass_as_a_member() -> None:
    """A fake node answering at a member's address proves nothing: the dialer refuses it."""
    server = Server(FakeNode(name="n2"), Limits(), security(keyring=(SECRET_B,)))  # type: ignore[arg-type]
    async with listening(server) as address:
        with pytest.raises(Unauthorized, match="did not prove"):
            async with open_client(address, peer=PeerCredentials("n1", CLUSTER, auth.Keyring((SECRET_A,))), expect_node="n2"):
                pass


async def test_a_proved_peer_that_is_not_a_member_may_only_gossip() -> None:
    node = FakeNode(members=("n1", "n2"))
    server = Server(node, Limits(), security())  # type: ignore[arg-type]
    async with listening(server) as address:
        async with open_client(address, peer=PeerCredentials("joiner", "", auth.Keyring((SECRET_A,)))) as client:
            await client._call(messages.Gossip(id=1, membership=b""), None)
            with pytest.raises(Unauthorized, match="not a member"):
                await client._call(messages.Replicate(id=99, key=b"k", record=b"x"), None)
    assert [type(m) for m in node.handled] == [messages.Gossip]


async def test_hello_frames_are_small_and_the_hello_has_a_deadline() -> None:
    server = Server(FakeNode(), Limits(handshake_timeout_ms=200), security())  # type: ignore[arg-type]
    async with remote_connection(server) as conn:
        await conn.sock.send((1 << 20).to_bytes(4, "big"))  # a 1 MiB frame announced before any hello
        reply = await conn.receive()
        assert reply.code == "frame_too_large"
    async with remote_connection(server) as conn:  # says nothing: closed at the deadline
        reply = await conn.receive()
        assert isinstance(reply, messages.ErrorReply) and "no hello" in reply.message


async def test_at_connections_max_the_longest_idle_anonymous_connection_makes_room() -> None:
    node = FakeNode()
    server = Server(node, Limits(connections_max=2), security())  # type: ignore[arg-type]
    async with remote_connection(server) as idle, remote_connection(server) as busy:
        for conn in (idle, busy):
            await conn.send(hello())
            await conn.receive()
        await busy.send(messages.Get(id=1, key=b"k"))
        await busy.receive()
        async with remote_connection(server) as newcomer:
            await newcomer.send(hello())
            assert (await newcomer.receive()).roles == [auth.CLIENT]
            evicted = await idle.receive()
            assert isinstance(evicted, messages.ErrorReply) and evicted.code == "overloaded"
            await busy.send(messages.Get(id=2, key=b"k"))
            assert isinstance(await busy.receive(), messages.Pong)
    assert server.security.events.counts["evicted"] == 1
