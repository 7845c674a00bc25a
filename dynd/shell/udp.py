"""The failure detector's datagrams: one UDP socket on the node's listen host and TCP port number.

`bind` binds the socket (the daemon does it before anything else at start) and `run` (binding
first, unless `bind` did) reads datagrams and hands each to `swim.receive`; what the detector
returns, and what the node's tick passes to `flush(swim.tick())`, goes through a bounded queue to
one sender task. `flush` never blocks: with the queue full, datagrams are dropped and counted (the
detector copes with loss). Addresses are "host:port"; host names are resolved off the event loop
and cached for `RESOLVE_TTL_S`.

Source addresses: the detector drops a datagram whose source is not its sender's registered member
address. A member registered by host name ("db3.example:7400") sends from an IP address, so the
endpoint keeps a reverse map from each resolved socket address to the registered string it came
from, and hands the detector that string; any other source is passed as "ip:port" (an IPv4 address
seen through an IPv6 socket as ::ffff:a.b.c.d is passed as a.b.c.d). Members' addresses are
resolved as soon as the detector lists them (checked every `RESOLVE_POLL_S`), not only when
sending to them, so a member's first datagram already maps to its registered address.

Nothing stops the loops but cancellation: a socket error, an unresolvable address, a bad datagram
or even a bug in the detector is logged at debug (the bug with its traceback) and counted.
"""

from __future__ import annotations

import logging
import socket as stdlib_socket
from dataclasses import dataclass, fields
from typing import Any, Protocol

import trio

from dynd.protocol.address import format_address, parse_address

log = logging.getLogger("dynd.udp")

SEND_QUEUE_MAX = 1024  # datagrams waiting for the sender task
RESOLVE_TTL_S = 60.0
RESOLVE_POLL_S = 0.1  # how often the member list is checked for addresses not yet resolved
RESOLVE_RETRY_S = 5.0  # an address that failed to resolve is tried again after this long
ERROR_BACKOFF_S = 0.01  # after a receive error, so a persistent one cannot spin the loop


class Detector(Protocol):
    def receive(self, source_address: str, payload: bytes) -> list[tuple[str, bytes]]: ...

    def member_addresses(self) -> list[str]: ...


@dataclass(slots=True)
class UdpStats:
    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    receive_errors: int = 0
    send_errors: int = 0
    dropped_queue_full: int = 0
    unresolved: int = 0
    detector_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class UdpEndpoint:
    def __init__(self, *, datagram_bytes_max: int) -> None:
        self.datagram_bytes_max = datagram_bytes_max
        self.stats = UdpStats()
        self.bound: tuple[str, int] | None = None
        self._sock: trio.socket.SocketType | None = None
        self._family = stdlib_socket.AF_INET
        self._queue_in, self._queue_out = trio.open_memory_channel[tuple[str, bytes]](SEND_QUEUE_MAX)
        self._resolved: dict[str, tuple[Any, float]] = {}  # "host:port" -> (sockaddr, expires)
        self._registered: dict[tuple[str, int], str] = {}  # (ip, port) resolved -> the "host:port" it came from
        self._failed: dict[str, float] = {}  # address -> when resolving it may be tried again

    def flush(self, datagrams: list[tuple[str, bytes]]) -> None:
        """Queue datagrams for sending; never blocks, drops (and counts) when the queue is full."""
        for datagram in datagrams:
            try:
                self._queue_in.send_nowait(datagram)
            except trio.WouldBlock:
                self.stats.dropped_queue_full += 1

    async def bind(self, host: str, port: int) -> None:
        """Bind host:port (UDP) now, so a port in use fails a start before anything else happens."""
        infos = await trio.socket.getaddrinfo(host or None, port, type=stdlib_socket.SOCK_DGRAM, flags=stdlib_socket.AI_PASSIVE)
        if not infos:
            raise OSError(f"cannot resolve {host!r} for UDP")
        family, kind, proto, _, sockaddr = infos[0]
        sock = trio.socket.socket(family, kind, proto)
        try:
            await sock.bind(sockaddr)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._family = family
        bound = sock.getsockname()
        self.bound = (bound[0], bound[1])

    def close(self) -> None:
        """Give the socket back (a start that failed after `bind`)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run(self, swim: Detector, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Bind host:port (UDP) unless `bind` did, then serve until cancelled. `task_status.started(bound port)`."""
        if self._sock is None:
            await self.bind(host, port)
        sock = self._sock
        assert sock is not None and self.bound is not None
        with sock:
            log.info("failure detector listening on udp %s", format_address(*self.bound))
            task_status.started(self.bound[1])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, sock)
                nursery.start_soon(self._resolve_loop, swim)
                await self._receive_loop(sock, swim)

    async def _receive_loop(self, sock: trio.socket.SocketType, swim: Detector) -> None:
        # one byte more than the limit, so an oversized datagram shows as such and is refused
        buffer_bytes = self.datagram_bytes_max + 1
        while True:
            try:
                payload, source = await sock.recvfrom(buffer_bytes)
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                self.stats.receive_errors += 1
                log.debug("udp receive error: %s", exc)
                await trio.sleep(ERROR_BACKOFF_S)
                continue
            self.stats.datagrams_in += 1
            self.stats.bytes_in += len(payload)
            source_address = self.source_address(source)
            try:
                answers = swim.receive(source_address, payload)
            except Exception:  # a bug, not bad input (the detector counts and drops that)
                self.stats.detector_errors += 1
                log.debug("failure detector failed on a datagram from %s", source_address, exc_info=True)
                continue
            self.flush(answers)

    def source_address(self, sockaddr: Any) -> str:
        """The registered "host:port" a datagram's source resolves from, or its "ip:port"."""
        host, port = sockaddr[0], sockaddr[1]
        registered = self._registered.get((host, port))
        if registered is not None:
            return registered
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:") :]
        return format_address(host, port)

    async def _resolve_loop(self, swim: Detector) -> None:
        while True:
            try:
                addresses = swim.member_addresses()
            except Exception:  # a bug in the detector must not stop the endpoint
                self.stats.detector_errors += 1
                log.debug("failure detector failed to list member addresses", exc_info=True)
                addresses = []
            for address in addresses:
                cached = self._resolved.get(address)
                now = trio.current_time()
                if (cached is None or cached[1] <= now) and self._failed.get(address, now) <= now:
                    if await self._resolve(address) is None:
                        self._failed[address] = now + RESOLVE_RETRY_S
                    else:
                        self._failed.pop(address, None)
            await trio.sleep(RESOLVE_POLL_S)

    async def _send_loop(self, sock: trio.socket.SocketType) -> None:
        async for address, payload in self._queue_out:
            sockaddr = await self._resolve(address)
            if sockaddr is None:
                continue
            try:
                await sock.sendto(payload, sockaddr)
            except OSError as exc:
                self.stats.send_errors += 1
                log.debug("udp send to %s failed: %s", address, exc)
                continue
            self.stats.datagrams_out += 1
            self.stats.bytes_out += len(payload)

    async def _resolve(self, address: str) -> Any:
        cached = self._resolved.get(address)
        if cached is not None and cached[1] > trio.current_time():
            return cached[0]
        try:
            host, port = parse_address(address)
            # an IPv6 socket reaches IPv4 members through mapped addresses
            flags = stdlib_socket.AI_V4MAPPED if self._family == stdlib_socket.AF_INET6 else 0
            infos = await trio.socket.getaddrinfo(host, port, family=self._family, type=stdlib_socket.SOCK_DGRAM, flags=flags)
            sockaddr = infos[0][4]
        except (OSError, ValueError, IndexError) as exc:
            self.stats.unresolved += 1
            log.debug("cannot resolve %s for udp: %s", address, exc)
            return None
        previous = self._resolved.get(address)
        if previous is not None and self._registered.get((previous[0][0], previous[0][1])) == address:
            del self._registered[(previous[0][0], previous[0][1])]  # the name moved: its old address is no longer its
        self._resolved[address] = (sockaddr, trio.current_time() + RESOLVE_TTL_S)
        self._registered[(sockaddr[0], sockaddr[1])] = address
        return sockaddr
