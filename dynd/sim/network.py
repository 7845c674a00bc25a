"""The simulated network: every node's Network port, and the clients' links, over one virtual clock.

Rules:
- Every request and reply is encoded with `codec.encode_message` and decoded with
  `codec.decode_message` at the far end, so the simulator also exercises the wire codec.
- Each message copy gets its own delay drawn from the seeded RNG (plus any extra delay faults
  add), so messages reorder. A message may be lost, or duplicated (the request is delivered twice;
  the sender's callback still fires once: the second reply finds nothing waiting).
- Links are cut one way at a time: a partition is a set of cut (from host, to host) pairs. A
  message on a cut link is lost. Clients sit outside every partition.
- A request that reaches an address where no process listens (the node is down) is answered
  `Unreachable` (a refused connection), if the way back is open; otherwise the sender times out.
- A request not answered within `request_timeout_ms` is answered `Timeout` by the sender's port.
- Callbacks belong to the sender's process: a crashed process never sees them.
- Protocol checks: a node that replies twice to one delivery, a reply whose id is not the
  request's, or a payload the codec refuses is reported as a failure.
- `traffic` counts what is put on the wire, by kind: the message's type name (a pre-encoded reply,
  which only a get sends, counts as its request's name plus "Ok"), "datagram" for the failure
  detector's, "refused" for a refused connection. Given a `traffic.clock` (a benchmark gives
  `time.process_time`: the simulator itself reads no real clock), it also adds up the time each
  receiving process spends decoding and handling each kind, and (with a probe) the time of the
  handlings that changed the receiver's state (tests/bench/scale.py); what it reads changes
  nothing the run does.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dynd.protocol import codec, messages
from dynd.protocol.errors import DynError, Timeout, Unreachable, error_from_code
from dynd.sim.loop import Loop, Timer
from dynd.sim.process import Process


@dataclass
class NetConfig:
    delay_min_ms: int = 1
    delay_max_ms: int = 8
    loss: float = 0.01
    duplicate: float = 0.01


@dataclass
class NetStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    refused: int = 0
    timeouts: int = 0


@dataclass
class Traffic:
    """What went on the wire by kind and, given a `clock` (seconds), the time receivers spent on each
    kind by it; with a `probe` too (a host name -> any value: the bench gives the node's membership
    digest), the time and count of the handlings after which the probe read differently, that is
    the ones that changed what it looks at."""

    messages: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    cpu_s: Counter[str] = field(default_factory=Counter)
    changed_cpu_s: Counter[str] = field(default_factory=Counter)
    changed: Counter[str] = field(default_factory=Counter)
    clock: Callable[[], float] | None = None
    probe: Callable[[str], object] | None = None

    def sent(self, kind: str, size: int) -> None:
        self.messages[kind] += 1
        self.bytes[kind] += size

    def run_timed(self, host: str, handle: Callable[[], str]) -> None:
        """Run `handle` inside `host`'s process; it returns the kind it handled ("": nothing)."""
        clock = self.clock
        assert clock is not None, "run_timed needs a clock"
        before = self.probe(host) if self.probe is not None else None
        started = clock()
        kind = handle()
        spent = clock() - started
        if not kind:
            return
        self.cpu_s[kind] += spent
        if self.probe is not None and self.probe(host) != before:
            self.changed_cpu_s[kind] += spent
            self.changed[kind] += 1

    def snapshot(self) -> Traffic:
        return Traffic(*(Counter(c) for c in self._counters()), self.clock, self.probe)

    def since(self, before: Traffic) -> Traffic:
        """What happened between `before` (a snapshot) and now."""
        return Traffic(*(now - then for now, then in zip(self._counters(), before._counters())), self.clock, self.probe)

    def _counters(self) -> tuple[Counter[str], ...]:
        return (self.messages, self.bytes, self.cpu_s, self.changed_cpu_s, self.changed)


DATAGRAM = "datagram"
REFUSED = "refused"


@dataclass
class Modifiers:
    """What active network faults add, by fault id."""

    loss: dict[int, float] = field(default_factory=dict)
    duplicate: dict[int, float] = field(default_factory=dict)
    delay_ms: dict[int, int] = field(default_factory=dict)
    cuts: dict[int, frozenset[tuple[str, str]]] = field(default_factory=dict)


class SimNetwork:
    def __init__(
        self,
        loop: Loop,
        rng: random.Random,
        config: NetConfig,
        report: Callable[[str, str], None],
    ) -> None:
        self.loop = loop
        self.rng = rng
        self.config = config
        self.report = report  # (checker, message): a protocol violation
        self.stats = NetStats()
        self.traffic = Traffic()
        self.faults = Modifiers()
        self.quiet = False  # after heal: no loss, no duplication, base delays only
        self.host_of_address: dict[str, str] = {}
        self.listening: dict[str, tuple[Process, Callable[[Any, Callable[[Any], None]], None]]] = {}
        self.datagram_listening: dict[str, tuple[Process, Callable[[str, bytes], None]]] = {}
        self._cut: set[tuple[str, str]] = set()
        # Exact-once reply checks: replies the node sent per delivery.
        self.drop_filter: Callable[[str, str, Any], bool] | None = None  # (from host, to host, message) -> drop

    # ---- topology ----

    def register(self, host: str, address: str) -> None:
        self.host_of_address[address] = host

    def listen(
        self,
        address: str,
        process: Process,
        handle: Callable[[Any, Callable[[Any], None]], None],
        receive_datagram: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.listening[address] = (process, handle)
        if receive_datagram is not None:
            self.datagram_listening[address] = (process, receive_datagram)

    def unlisten(self, address: str) -> None:
        self.listening.pop(address, None)
        self.datagram_listening.pop(address, None)

    def set_cut(self, fault_id: int, pairs: frozenset[tuple[str, str]]) -> None:
        self.faults.cuts[fault_id] = pairs
        self._recompute_cuts()

    def clear_cut(self, fault_id: int) -> None:
        self.faults.cuts.pop(fault_id, None)
        self._recompute_cuts()

    def _recompute_cuts(self) -> None:
        self._cut = set().union(*self.faults.cuts.values()) if self.faults.cuts else set()

    def heal(self) -> None:
        self.faults = Modifiers()
        self._cut = set()
        self.quiet = True

    def blocked(self, src: str, dst: str) -> bool:
        return (src, dst) in self._cut

    # ---- transmission ----

    def _delay(self) -> int:
        c = self.config
        delay = self.rng.randint(c.delay_min_ms, c.delay_max_ms)
        if self.faults.delay_ms and not self.quiet:
            delay += self.rng.randint(0, max(self.faults.delay_ms.values()))
        return delay

    def _loss(self) -> float:
        if self.quiet:
            return 0.0
        return min(0.5, self.config.loss + sum(self.faults.loss.values()))

    def _duplicate(self) -> float:
        if self.quiet:
            return 0.0
        return min(0.5, self.config.duplicate + sum(self.faults.duplicate.values()))

    def carry(self, src: str, dst: str, on_arrival: Callable[[], None], *, may_duplicate: bool) -> None:
        """Put one message on the wire from host `src` to host `dst`."""
        self.stats.sent += 1
        copies = 1
        if may_duplicate and self.rng.random() < self._duplicate():
            copies = 2
            self.stats.duplicated += 1
        for _ in range(copies):
            if self.blocked(src, dst) or self.rng.random() < self._loss():
                self.stats.lost += 1
                continue
            self.loop.after(self._delay(), on_arrival)


@dataclass
class _Waiting:
    on_reply: Callable[[Any], None]
    timer: Timer
    peer: str


class Endpoint:
    """The Network port of one process (a node incarnation, or a client)."""

    def __init__(self, net: SimNetwork, host: str, process: Process, timeout_ms: int, address: str = "") -> None:
        self.net = net
        self.host = host
        self.address = address  # the source address datagrams carry
        self.process = process
        self.timeout_ms = timeout_ms
        self.addresses: dict[str, str] = {}
        self._ids = 0
        self._waiting: dict[int, _Waiting] = {}
        self._connected: set[str] = set()

    # ---- the Network port ----

    def set_addresses(self, addresses: dict[str, str]) -> None:
        self.addresses = dict(addresses)

    def connected(self, node: str) -> bool:
        return node in self._connected

    def send(self, node: str, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        address = self.addresses.get(node)
        if address is None:
            on_reply(_local(Unreachable(f"{node} is not a known member")))
            return
        self.send_to_address(address, build, on_reply)

    def send_to_address(self, address: str, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        net = self.net
        self._ids += 1
        request_id = self._ids
        message = build(request_id)
        payload = codec.encode_message(message)
        dst = net.host_of_address.get(address, address)
        timer = net.loop.after(self.timeout_ms, lambda: self.process.run(lambda: self._timed_out(request_id)))
        self._waiting[request_id] = _Waiting(on_reply, timer, dst)
        net.traffic.sent(type(message).__name__, len(payload))
        if net.drop_filter is not None and net.drop_filter(self.host, dst, message):
            net.stats.lost += 1
            return
        net.carry(self.host, dst, lambda: self._arrive(address, dst, request_id, payload), may_duplicate=True)

    def send_datagrams(self, datagrams: list[tuple[str, bytes]]) -> None:
        """UDP: lost, duplicated and delayed like any message; no reply, no callback."""
        net = self.net
        for address, payload in datagrams:
            dst = net.host_of_address.get(address, address)
            net.traffic.sent(DATAGRAM, len(payload))
            net.carry(self.host, dst, lambda a=address, d=dst, p=payload: self._datagram_arrives(a, d, p), may_duplicate=True)

    # ---- machinery ----

    def _datagram_arrives(self, address: str, dst: str, payload: bytes) -> None:
        listener = self.net.datagram_listening.get(address)
        if listener is None or not listener[0].alive:
            return
        process, receive = listener
        self.net.stats.delivered += 1
        self.net.loop.trace("dgram", self.host, dst, payload)
        if self.net.traffic.clock is not None:
            process.run(lambda: self.net.traffic.run_timed(dst, lambda: receive(self.address, payload) or DATAGRAM))
        else:
            process.run(lambda: receive(self.address, payload))

    def _arrive(self, address: str, dst: str, request_id: int, payload: bytes) -> None:
        net = self.net
        listener = net.listening.get(address)
        if listener is None or not listener[0].alive:
            net.stats.refused += 1
            net.traffic.sent(REFUSED, 0)
            net.carry(dst, self.host, lambda: self.process.run(lambda: self._refused(request_id)), may_duplicate=False)
            return
        process, handle = listener
        net.stats.delivered += 1
        net.loop.trace("req", self.host, dst, payload)
        process.run(lambda: self._serve(process, handle, dst, request_id, payload))

    def _serve(self, process: Process, handle: Callable[[Any, Callable[[Any], None]], None], dst: str, request_id: int, payload: bytes) -> None:
        if self.net.traffic.clock is not None:
            self.net.traffic.run_timed(dst, lambda: self._serve_untimed(process, handle, dst, request_id, payload))
        else:
            self._serve_untimed(process, handle, dst, request_id, payload)

    def _serve_untimed(self, process: Process, handle: Callable[[Any, Callable[[Any], None]], None], dst: str, request_id: int, payload: bytes) -> str:
        """Decode and serve one request; the kind it was."""
        net = self.net
        try:
            message = codec.decode_message(payload)
        except DynError as exc:
            net.report("codec", f"{dst} could not decode a request from {self.host}: {exc}")
            return "undecodable"
        replied = False

        def reply(answer: Any) -> None:
            nonlocal replied
            if not process.alive:
                return  # the reply of a crashed process never leaves it
            if replied:
                net.report("protocol", f"{dst} replied twice to {message!r:.200}")
                return
            replied = True
            data = answer if isinstance(answer, bytes) else codec.encode_message(answer)
            net.traffic.sent(type(message).__name__ + "Ok" if isinstance(answer, bytes) else type(answer).__name__, len(data))
            net.carry(dst, self.host, lambda: self.process.run(lambda: self._answered(request_id, dst, data)), may_duplicate=False)

        handle(message, reply)
        return type(message).__name__

    def _answered(self, request_id: int, dst: str, data: bytes) -> None:
        if self.net.traffic.clock is not None:
            self.net.traffic.run_timed(self.host, lambda: self._answered_untimed(request_id, dst, data))
        else:
            self._answered_untimed(request_id, dst, data)

    def _answered_untimed(self, request_id: int, dst: str, data: bytes) -> str:
        """Decode one reply and hand it to its sender's callback; the kind it was ("" if nothing waited)."""
        waiting = self._waiting.pop(request_id, None)
        if waiting is None:
            return ""  # the reply to a duplicate, or after the timeout
        waiting.timer.cancel()
        self.net.loop.trace("rep", dst, self.host, data)
        try:
            answer: Any = codec.decode_message(data)
        except DynError as exc:
            self.net.report("codec", f"{self.host} could not decode a reply from {dst}: {exc}")
            answer = exc
        else:
            if getattr(answer, "id", request_id) != request_id:
                self.net.report("protocol", f"{dst} answered request {request_id} of {self.host} with id {answer.id}")
            if isinstance(answer, messages.ErrorReply):
                answer = error_from_code(answer.code, answer.message)
        if not isinstance(answer, (Timeout, Unreachable)):
            self._connected.add(waiting.peer)
        waiting.on_reply(answer)
        return type(answer).__name__

    def _refused(self, request_id: int) -> None:
        waiting = self._waiting.pop(request_id, None)
        if waiting is None:
            return
        waiting.timer.cancel()
        self._connected.discard(waiting.peer)
        self.net.loop.trace("refused", self.host, waiting.peer)
        waiting.on_reply(_local(Unreachable(f"{waiting.peer} refused the connection")))

    def _timed_out(self, request_id: int) -> None:
        waiting = self._waiting.pop(request_id, None)
        if waiting is None:
            return
        self.net.stats.timeouts += 1
        self._connected.discard(waiting.peer)
        self.net.loop.trace("timeout", self.host, waiting.peer)
        waiting.on_reply(_local(Timeout(f"no reply from {waiting.peer} in time")))


def _local(error: DynError) -> DynError:
    """Mark an error this port made up (no answer came), as opposed to one a node sent."""
    error.local = True  # type: ignore[attr-defined]
    return error


def is_local(error: object) -> bool:
    return getattr(error, "local", False)
