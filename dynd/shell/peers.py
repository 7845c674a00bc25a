"""Connections to the other nodes: one multiplexed connection per peer, opened on demand.

This is the daemon's implementation of the core's Network port (`dynd.core.ports`).

`send(node, build, on_reply)` never awaits: it queues the request for that peer's connection (a
`PeerLink`, `dynd.shell.peer_transport`) and calls `on_reply(reply_or_error)` later from the event loop. A peer that cannot be reached fails
its queued requests with `Unreachable` and is not dialled again for `peer_retry_ms`, so callers
learn fast; the coordinators decide what a failure means.

Every connection proves the cluster secret both ways in its hello (`dynd.protocol.auth`), and a
connection to a member is refused unless the node that answers has that member's name.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from dynd.client import PeerCredentials, open_client
from dynd.core.ports import Builder, ReplyCallback
from dynd.protocol.errors import DynError, Unreachable
from dynd.shell.peer_transport import PeerLink
from dynd.shell.security import Security

log = logging.getLogger("dynd.peers")


@dataclass
class _Peer:
    name: str
    address: str
    link: PeerLink | None = None
    queued: list[tuple[Builder, ReplyCallback]] = field(default_factory=list)
    connecting: bool = False
    down_until: float = 0.0
    closed: trio.Event = field(default_factory=trio.Event)


class Peers:
    def __init__(
        self, self_name: str, nursery: trio.Nursery, *, request_timeout_s: float, retry_s: float, security: Security | None = None
    ) -> None:
        self.self_name = self_name
        self.security = security if security is not None else Security()
        self._nursery = nursery
        self._timeout_s = request_timeout_s
        self._retry_s = retry_s
        self._peers: dict[str, _Peer] = {}
        # Set once the UDP endpoint is up; until then the detector's datagrams are dropped.
        self.datagram_sink: Callable[[list[tuple[str, bytes]]], None] | None = None

    def send_datagrams(self, datagrams: list[tuple[str, bytes]]) -> None:
        if datagrams and self.datagram_sink is not None:
            self.datagram_sink(datagrams)

    def set_addresses(self, addresses: dict[str, str]) -> None:
        """Follow membership: new peers get an entry, changed addresses reconnect, gone ones close."""
        for name, address in addresses.items():
            if name == self.self_name:
                continue
            peer = self._peers.get(name)
            if peer is None or peer.address != address:
                if peer is not None:
                    peer.closed.set()
                self._peers[name] = _Peer(name, address)
        for name in list(self._peers):
            if name not in addresses:
                self._peers.pop(name).closed.set()

    def connected(self, name: str) -> bool:
        peer = self._peers.get(name)
        return peer is not None and peer.link is not None

    def send(self, name: str, build: Builder, on_reply: ReplyCallback) -> None:
        peer = self._peers.get(name)
        if peer is None:
            on_reply(Unreachable(f"{name} is not a known member"))
            return
        link = peer.link
        if link is not None and link.usable:
            link.call(build, on_reply)
            return
        if trio.current_time() < peer.down_until:
            on_reply(Unreachable(f"{name} at {peer.address} is unreachable"))
            return
        peer.queued.append((build, on_reply))
        if not peer.connecting:
            peer.connecting = True
            self._nursery.start_soon(self._connect, peer)

    def send_to_address(self, address: str, build: Builder, on_reply: ReplyCallback) -> None:
        """One request over a connection of its own (seeds are not members yet: no cached peer)."""
        self._nursery.start_soon(self._call_address, address, build, on_reply)

    async def _call_address(self, address: str, build: Builder, on_reply: ReplyCallback) -> None:
        answer: Any = None
        answered = trio.Event()

        def record(reply: Any) -> None:
            nonlocal answer
            answer = reply
            answered.set()

        # A seed may belong to a cluster this node has yet to join: name none, take the seed's.
        seed_credentials = dataclasses.replace(self._credentials(), cluster="")
        try:
            async with open_client(
                address, timeout_s=self._timeout_s, agent=f"peer:{self.self_name}", peer=seed_credentials, ssl_context=self.security.client_ssl
            ) as client:
                PeerLink(client, self._timeout_s).call(build, record)
                await answered.wait()
        except DynError as exc:
            if not answered.is_set():
                answer = exc
        on_reply(answer)

    async def _connect(self, peer: _Peer) -> None:
        try:
            async with open_client(
                peer.address,
                timeout_s=self._timeout_s,
                agent=f"peer:{self.self_name}",
                peer=self._credentials(),
                expect_node=peer.name,
                ssl_context=self.security.client_ssl,  # mutual TLS, when configured
            ) as client:
                link = peer.link = PeerLink(client, self._timeout_s)
                peer.connecting = False
                queued, peer.queued = peer.queued, []
                for build, on_reply in queued:
                    link.call(build, on_reply)
                await client.broken_or(peer.closed)
        except DynError as exc:
            level = logging.WARNING if exc.code == "unauthorized" else logging.DEBUG
            log.log(level, "peer %s at %s: %s", peer.name, peer.address, exc)
            peer.down_until = trio.current_time() + self._retry_s
        finally:
            peer.link = None
            peer.connecting = False
            queued, peer.queued = peer.queued, []
            for _, on_reply in queued:
                on_reply(Unreachable(f"{peer.name} at {peer.address} is unreachable"))

    def _credentials(self) -> PeerCredentials:
        """Read at each connect, so a rotated secret is used from the next connection on."""
        return PeerCredentials(self.self_name, self.security.cluster_id, self.security.keyring)

    def close(self) -> None:
        for peer in self._peers.values():
            peer.closed.set()
