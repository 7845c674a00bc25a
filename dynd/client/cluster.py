"""Client-side routing: `open_cluster_client` and `key_placement`.

The client fetches the ring from a node and places each key itself, with the protocol's own hash
and walk (`dynd.protocol.keyspace`), exactly as the nodes do; it then talks to the key's first
reachable primary over a connection of its own (`dynd.client.connection`).
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import trio

from dynd.client.connection import Client, open_client, unwrap_group
from dynd.client.results import DEFAULT_TIMEOUT_S, GetResult, KeyLike, key_bytes
from dynd.protocol import messages
from dynd.protocol.errors import DynError, NotAMember, StaleRing, Timeout, Unreachable
from dynd.protocol.keyspace import check_partition_count, partition_of, preference_order, preference_split
from dynd.protocol.locations import check_location

AVOID_FAILED_S = 5.0  # a routing client tries a node that just failed only after the others

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KeyPlacement:
    partition: int
    primaries: tuple[str, ...]
    fallbacks: tuple[str, ...]


def key_placement(ring: messages.RingOk, key: KeyLike) -> KeyPlacement:
    """Where `key` lives under `ring`: its partition, its N primaries, then the fallbacks in order
    (with the ring's locations, as the nodes place it: `dynd.protocol.keyspace.preference_split`)."""
    return _Placer(ring).place(key)


def ring_locations(ring: messages.RingOk) -> dict[str, str]:
    """The known locations of the ring's nodes (those of nodes not on the ring are left out, as
    the nodes' own rings leave them out); ValueError on a malformed one."""
    nodes = set(ring.owners)
    found: dict[str, str] = {}
    for entry in ring.locations or ():
        if entry.node in nodes and entry.location:
            found[entry.node] = check_location(entry.location)
    return found


class _Placer:
    """A ring reply checked once, so placing each key is a hash and, after a partition's first
    key, a cached lookup."""

    def __init__(self, ring: messages.RingOk) -> None:
        check_partition_count(len(ring.owners))
        if ring.n < 1:
            raise ValueError(f"n_replicas must be at least 1, got {ring.n}")
        self.owners = tuple(ring.owners)
        self.partitions = len(self.owners)
        self.node_count = len(set(self.owners))
        self.n = ring.n
        self.locations = ring_locations(ring)
        self._by_partition: dict[int, KeyPlacement] = {}

    def place(self, key: KeyLike) -> KeyPlacement:
        partition = partition_of(key_bytes(key), self.partitions)
        placement = self._by_partition.get(partition)
        if placement is None:
            order = preference_order(self.owners, partition, self.node_count)
            primaries, fallbacks = preference_split(order, self.n, self.locations)
            placement = self._by_partition[partition] = KeyPlacement(partition, primaries, fallbacks)
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
                except (Unreachable, StaleRing, NotAMember, Timeout) as exc:
                    # A node that is down, paused or cut off: the next one coordinates. A put that
                    # timed out may still land, so a retried put can leave a duplicate sibling,
                    # never a lost write. One that left the cluster (NotAMember) or that our ring
                    # calls a primary wrongly (StaleRing): the next one, then a fresh ring.
                    if not isinstance(exc, (StaleRing, NotAMember)):
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
        error = unwrap_group(group)
        if error is group:
            raise
        raise error from None
