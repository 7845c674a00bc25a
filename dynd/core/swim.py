"""Failure detection: SWIM (Das, Gupta and Motivala, 2002) over datagrams. Pure.

The daemon (`dynd.shell.udp`) and the simulator feed datagrams to `receive` and call `tick` every
`tick_interval_ms`; both return the datagrams to send as (address, payload). Time comes from
`now_ms` and randomness from `rng`. The member list comes from the membership (`set_members`):
the detector only says who looks alive; it never adds or removes members.

Probing, each node on its own:
- Every `swim_period_ms` it pings one member, round-robin over the member list shuffled anew
  each round (a new member is inserted at a random place in the rest of the round). Dead
  members stay in the rotation, so a member that comes back is seen again.
- No ack within `swim_ping_timeout_ms`: it asks k = `swim_indirect_probes` alive members to ping
  the target and relay the ack (ping-req). An ack that arrives directly or relayed at any time
  before the period's end counts.
- No ack by the period's end (`swim_period_ms` after the ping): an alive target becomes suspect,
  at its incarnation. A suspect that is not refuted within `swim_suspicion_timeout_ms` of this
  node learning of the suspicion becomes dead.

Each member's state (alive, suspect, dead at an incarnation), how updates about it merge, how this
node refutes a suspicion of itself, and which updates are piggybacked on the next datagrams are
the member table's (`dynd.core.swim_members`). A ping (direct or relayed) always carries first
the target's own state in our view, so a suspected or dead member learns it from the next ping and
refutes in its ack.

Datagrams (`dynd.protocol.swim_wire`, version 2: body || MAC), checked in this order; a datagram
that fails a check is dropped, counted, and changes nothing; `receive` never raises on bad input:
1. size (`datagram_bytes_max`), then the MAC against every secret of the keyring (in constant time,
   before any parsing: `bad_macs`; with no keyring, the no-secret key), then strict CBOR and typed
   fields (`bad_datagrams` counts all three);
2. the cluster id (`wrong_cluster`), the sender a member (`unknown_senders`);
3. the source address must be the sender's registered member address (`source_mismatches`);
4. the replay window (`replays`): per sender (boot, highest mseq, a 64-bit bitmap of the mseqs
   below it), as IPsec's anti-replay window: a datagram from an older boot than the latest seen
   from that sender, a repeated mseq, or one more than 63 below the highest is a replay; a newer
   boot resets the sender's window (it restarted). Windows outlive a member's removal (up to
   WINDOWS_SPARE former members), so a member removed and added again cannot be fed its old
   datagrams.
Then the header's incarnation is applied as the sender's word about itself, then the updates.
Bad MACs, wrong clusters, replays and source mismatches are also passed to `on_security_event`
(kind, source address, detail), which the daemon logs rate-limited.

Sending: every datagram carries the cluster id, this node's boot (the caller's: it grows with
every start), the next mseq (one more per datagram sent), its own incarnation, and a MAC made with
`keyring.current`. `set_keyring` swaps the keyring (a rotation: every secret of it is accepted).
- Answers go to the member's registered address, never to the datagram's source address, so a
  forged source cannot turn the detector against a third party. And no answer is larger than the
  datagram it answers (piggyback is trimmed to fit; an answer that cannot fit is dropped and
  counted): an ack is at most the ping's size, a relayed ack at most the ping-req's.
- A ping from a name not in the member list is not answered: membership gossip over TCP brings a
  joining node in, and from then on it is answered.

Local evidence from requests (the coordinators' view of TCP):
- `report_failure(name)`: a request to it failed. It is probed at the next tick, out of turn (at
  most one extra probe per member per period). Its status does not change by itself: a suspicion
  still needs a failed probe, so one broken TCP connection cannot mark a member suspect, yet a
  member that refuses connections is suspect one period after the failure, not a round later.
- `report_success(name)`: a request to it succeeded: a probe of it in flight counts as acked and a
  pending out-of-turn probe is dropped. Only the member itself can refute a suspicion.

Timers, all named timeouts on the node's monotonic clock (`now_ms`; a wall clock that steps must
not fire a round of verdicts or hold probing off): the next probe, each probe's ping-req and
verdict deadlines, each relay's expiry, each suspicion (the member table's).

Pauses of this node: when a tick comes later than two tick intervals and half a ping timeout (the
process was stopped or the event loop blocked), every deadline this node runs (probes,
suspicions, relays, the next probe) moves later by the delay, so acks and refutations waiting in
the socket are read before time spent not looking is held against anyone; and k members are
probed at once, so this node hears at once whether it is suspected. A refutation, too, is
followed by k probes out of turn, which carry it to most members at once. (`tick` must be called
every `tick_interval_ms`, as the node does.)

Unknown names: `status` says "alive" and `usable` True for a name not in the member list (so a
coordinator acts as without a detector until the membership reaches it); `incarnation` says 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dynd.core.limits import Limits
from dynd.core.swim_members import INCARNATION_STEP_MAX, STATUS_NAMES, Member, MemberTable, SwimStats
from dynd.core.timeouts import Timeout
from dynd.protocol import swim_wire as wire
from dynd.protocol.auth import Keyring
from dynd.protocol.swim_wire import ACK, ALIVE, DEAD, PING, PING_REQ, SUSPECT, BadDatagram, BadMac, Datagram, Update

# What other modules import from here (some of it defined in the member table's module).
__all__ = [
    "BAD_MAC", "INCARNATION_STEP_MAX", "REPLAY", "SOURCE_MISMATCH", "STATUS_NAMES", "WINDOW_BITS", "WRONG_CLUSTER",
    "SecurityEventHook", "Swim", "SwimRandom", "SwimStats",
]  # fmt: skip

log = logging.getLogger("dynd.swim")

STALL_TICKS = 2  # a tick later than this many tick intervals (and half a ping timeout): this node was not running
SEQ_MODULUS = 2**63
RELAYS_MAX = 1024  # ping-reqs being served at once; more are dropped
WINDOW_BITS = 64  # the replay window: this many mseqs at and below the highest seen
_WINDOW_MASK = (1 << WINDOW_BITS) - 1
WINDOWS_SPARE = 64  # replay windows kept for former members, beyond one per member

# Kinds passed to `on_security_event`; the first three are `dynd.shell.security`'s own kinds.
BAD_MAC = "bad_mac"
REPLAY = "replay"
SOURCE_MISMATCH = "source_mismatch"
WRONG_CLUSTER = "wrong_cluster"

SecurityEventHook = Callable[[str, str, str], None]  # (kind, source address, detail)


class SwimRandom(Protocol):
    def random(self) -> float: ...

    def shuffle(self, x: list[Any]) -> None: ...

    def sample(self, population: Sequence[Any], k: int) -> list[Any]: ...


@dataclass(slots=True)
class _Window:
    """What this node has seen of one sender's datagrams: its boot, the highest mseq, and a bitmap
    of the mseqs at and below it (bit k: top - k seen)."""

    boot: int
    top: int
    bits: int = 1

    def admit(self, boot: int, mseq: int) -> str:
        """Record (boot, mseq) and return "" if it is fresh; otherwise why it is a replay."""
        if boot < self.boot:
            return f"boot {boot} is older than {self.boot}"
        if boot > self.boot:  # the sender restarted: a new window
            self.boot, self.top, self.bits = boot, mseq, 1
            return ""
        if mseq > self.top:
            shift = mseq - self.top
            self.bits = ((self.bits << shift) | 1) & _WINDOW_MASK if shift < WINDOW_BITS else 1
            self.top = mseq
            return ""
        offset = self.top - mseq
        if offset >= WINDOW_BITS:
            return f"mseq {mseq} is older than the window (highest {self.top})"
        if self.bits >> offset & 1:
            return f"mseq {mseq} seen before"
        self.bits |= 1 << offset
        return ""


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    indirect: Timeout  # no ack by then: ask others to ping the target (fires once)
    verdict: Timeout  # no ack by then, direct or relayed: the target is suspect


@dataclass(slots=True)
class _Relay:
    requester: str
    requester_seq: int
    target: str
    answer_bytes_max: int  # the size of the ping-req: the relayed ack may not be larger
    expiry: Timeout  # no ack from the target by then: forget the relay


class Swim:
    def __init__(
        self,
        name: str,
        *,
        limits: Limits,
        now_ms: Callable[[], int],
        rng: SwimRandom,
        incarnation: int = 0,
        cluster_id: str | Callable[[], str] = "",
        keyring: Keyring | None = None,
        boot: int = 0,
        on_security_event: SecurityEventHook | None = None,
    ) -> None:
        """`cluster_id`: the id datagrams carry and must carry, or a function giving the current
        one (a node that joins a cluster while running takes the cluster's id). `keyring`: the
        cluster secrets (None: no secret). `boot`: grows with every start of this node (the caller
        persists it), so peers' replay windows take this process's datagrams as new."""
        self.name = name
        self.limits = limits
        self.now_ms = now_ms
        self.rng = rng
        self.boot = boot
        self._cluster_id: Callable[[], str] = cluster_id if callable(cluster_id) else (lambda: cluster_id)
        self._keyring = keyring
        self.on_security_event = on_security_event
        self.stats = SwimStats()
        self.table = MemberTable(name, limits=limits, now_ms=now_ms, stats=self.stats, incarnation=incarnation, on_refuted=self._probe_some_soon)
        self._members = self.table.members  # the same dict: the table owns it
        self._mseq = 0  # of the last datagram sent
        self._windows: dict[str, _Window] = {}  # replay windows, by sender name
        self._order: list[str] = []  # this round's probe order
        self._order_pos = 0
        self._probes: dict[int, _Probe] = {}  # by seq
        self._relays: dict[int, _Relay] = {}  # by the seq of our ping to the target
        self._urgent: dict[str, None] = {}  # members reported failing: an ordered set
        self._last_probe_ms: dict[str, int] = {}
        self._seq = int(rng.random() * 2**32)
        now = now_ms()
        self._last_tick_ms = now
        self.next_probe = Timeout("next probe", limits.swim_period_ms)
        self.next_probe.start(now, int(rng.random() * limits.swim_period_ms))  # nodes started together spread out

    @property
    def cluster_id(self) -> str:
        return self._cluster_id()

    @property
    def own_incarnation(self) -> int:
        return self.table.own_incarnation

    @property
    def on_change(self) -> list[Callable[[str, str], None]]:
        """Called with (member, "alive" | "suspect" | "dead") when a member's status changes."""
        return self.table.on_change

    def set_keyring(self, keyring: Keyring | None) -> None:
        """Seal with `keyring.current` from now on and accept any of its secrets (SIGHUP)."""
        self._keyring = keyring

    # ---- queries ----

    def status(self, name: str) -> str:
        member = self._members.get(name)
        return "alive" if member is None else STATUS_NAMES[member.status]

    def incarnation(self, name: str) -> int:
        if name == self.name:
            return self.own_incarnation
        member = self._members.get(name)
        return 0 if member is None else member.incarnation

    def usable(self, name: str) -> bool:
        member = self._members.get(name)
        return member is None or member.status != DEAD

    def member_addresses(self) -> list[str]:
        """The registered address of every other member (the shell resolves them ahead)."""
        return [m.address for m in self._members.values()]

    def members(self) -> dict[str, tuple[str, int]]:
        """name -> (status, incarnation) of every member, this node included."""
        view = {self.name: ("alive", self.own_incarnation)}
        view.update({m.name: (STATUS_NAMES[m.status], m.incarnation) for m in self._members.values()})
        return dict(sorted(view.items()))

    # ---- inputs ----

    def set_members(self, members: dict[str, str]) -> None:
        for name, address in members.items():
            if name == self.name:
                continue
            member = self._members.get(name)
            if member is not None:
                member.address = address
                continue
            self.table.add(name, address)
            remaining = len(self._order) - self._order_pos
            self._order.insert(self._order_pos + int(self.rng.random() * (remaining + 1)), name)
        for name in [name for name in self._members if name not in members]:
            self.table.remove(name)
            self._urgent.pop(name, None)
            self._last_probe_ms.pop(name, None)
            for seq in [seq for seq, probe in self._probes.items() if probe.target == name]:
                del self._probes[seq]
            for seq in [seq for seq, relay in self._relays.items() if name in (relay.target, relay.requester)]:
                del self._relays[seq]
        if len(self._windows) > len(self._members) + WINDOWS_SPARE:
            for name in [name for name in self._windows if name not in self._members]:
                del self._windows[name]

    def report_failure(self, name: str) -> None:
        if name in self._members:
            self._urgent[name] = None

    def report_success(self, name: str) -> None:
        self._urgent.pop(name, None)
        for seq in [seq for seq, probe in self._probes.items() if probe.target == name]:
            del self._probes[seq]

    def tick(self) -> list[tuple[str, bytes]]:
        now = self.now_ms()
        lag = now - self._last_tick_ms - self.limits.tick_interval_ms
        self._last_tick_ms = now
        if lag > max(STALL_TICKS * self.limits.tick_interval_ms, self.limits.swim_ping_timeout_ms // 2):
            self._postpone(lag)
        out: list[tuple[str, bytes]] = []
        for probe in list(self._probes.values()):
            if probe.verdict.fired(now):
                del self._probes[probe.seq]
                self._probe_failed(probe.target, now)
            elif probe.indirect.fired(now):
                self._send_ping_reqs(probe, out)
        self.table.expire_suspicions(now)
        for seq in [seq for seq, relay in self._relays.items() if relay.expiry.fired(now)]:
            del self._relays[seq]
        due_ms = self.next_probe.due_ms
        if due_ms is not None and self.next_probe.fired(now):
            # One probe per period on the period's own beat (not from when the tick came), but
            # never two in one tick.
            self.next_probe.start(now, max(due_ms + self.limits.swim_period_ms - now, self.limits.tick_interval_ms))
            target = self._next_target()
            if target is not None:
                self._start_probe(target, now, out)
        for name in list(self._urgent):
            if any(probe.target == name for probe in self._probes.values()):
                continue  # being probed already: its verdict is due anyway
            if now - self._last_probe_ms.get(name, now - self.limits.swim_period_ms) >= self.limits.swim_period_ms:
                del self._urgent[name]
                self._start_probe(name, now, out)
        return out

    def receive(self, source_address: str, payload: bytes) -> list[tuple[str, bytes]]:
        datagram = self._admit(source_address, payload)
        if datagram is None:
            return []
        sender = self._members[datagram.sender]
        if datagram.kind == PING and datagram.target != self.name:
            self.stats.misdirected += 1
            return []
        if datagram.kind == PING_REQ and datagram.target not in self._members:
            self.stats.misdirected += 1
            return []
        now = self.now_ms()
        self.table.heard_from(sender, datagram.incarnation, now)
        for update in datagram.updates:
            self.table.apply(update, now, datagram.sender)
        out: list[tuple[str, bytes]] = []
        if datagram.kind == PING:
            self.stats.pings_received += 1
            # a pinger we hold suspect or dead hears so first, and refutes at once
            candidates = self.table.candidates() if sender.status == ALIVE else [Update(sender.name, sender.status, sender.incarnation), *self.table.candidates(skip=sender.name)]
            self._send(sender.address, ACK, datagram.seq, "", candidates, len(payload), out)
        elif datagram.kind == PING_REQ:
            self.stats.ping_reqs_received += 1
            if len(self._relays) >= RELAYS_MAX:
                self.stats.ping_reqs_dropped += 1
                return out
            seq = self._next_seq()
            expiry = Timeout("relay", self.limits.swim_period_ms, start_ms=now)
            self._relays[seq] = _Relay(datagram.sender, datagram.seq, datagram.target, len(payload), expiry)
            self._send_ping(self._members[datagram.target], seq, out)
        else:
            self._ack(datagram, out)
        return out

    def _admit(self, source_address: str, payload: bytes) -> Datagram | None:
        """The datagram, if it passes every check in the order the module docstring gives; else
        None, counted (and reported to `on_security_event` when it may be hostile)."""
        try:
            body = wire.open_datagram(payload, self._keyring, bytes_max=self.limits.datagram_bytes_max)
            datagram = wire.decode_body(body)
        except BadMac:
            self.stats.bad_datagrams += 1
            self.stats.bad_macs += 1
            self._security_event(BAD_MAC, source_address, f"datagram of {len(payload)} bytes")
            return None
        except BadDatagram as exc:
            self.stats.bad_datagrams += 1
            log.debug("bad datagram from %s: %s", source_address, exc)
            return None
        if datagram.cluster != self.cluster_id:
            self.stats.wrong_cluster += 1
            self._security_event(WRONG_CLUSTER, source_address, f"cluster {datagram.cluster[:64]!r} from {datagram.sender!r}")
            return None
        sender = self._members.get(datagram.sender)
        if sender is None:
            self.stats.unknown_senders += 1
            log.debug("datagram from %s, not a member (%s)", datagram.sender[:64], source_address)
            return None
        if source_address != sender.address:
            self.stats.source_mismatches += 1
            self._security_event(SOURCE_MISMATCH, source_address, f"sender {sender.name} is at {sender.address}")
            return None
        window = self._windows.get(sender.name)
        if window is None:
            self._windows[sender.name] = _Window(datagram.boot, datagram.mseq)
        else:
            restarted = datagram.boot > window.boot
            replay = window.admit(datagram.boot, datagram.mseq)
            if replay:
                self.stats.replays += 1
                self._security_event(REPLAY, source_address, f"from {sender.name}: {replay}")
                return None
            if restarted:
                log.info("member %s restarted (boot %d)", sender.name, datagram.boot)
        return datagram

    def _security_event(self, kind: str, source_address: str, detail: str) -> None:
        log.debug("dropped a datagram from %s (%s): %s", source_address, kind, detail)
        if self.on_security_event is not None:
            self.on_security_event(kind, source_address, detail)

    # ---- probing ----

    def _next_target(self) -> str | None:
        for _ in range(2):
            while self._order_pos < len(self._order):
                name = self._order[self._order_pos]
                self._order_pos += 1
                if name in self._members and not any(probe.target == name for probe in self._probes.values()):
                    return name
            self._order = list(self._members)
            self.rng.shuffle(self._order)
            self._order_pos = 0
        return None

    def _start_probe(self, target: str, now: int, out: list[tuple[str, bytes]]) -> None:
        seq = self._next_seq()
        indirect = Timeout("ping-req", self.limits.swim_ping_timeout_ms, start_ms=now)
        self._probes[seq] = _Probe(seq, target, indirect, Timeout("probe verdict", self.limits.swim_period_ms, start_ms=now))
        self._last_probe_ms[target] = now
        self._send_ping(self._members[target], seq, out)

    def _send_ping(self, target: Member, seq: int, out: list[tuple[str, bytes]]) -> None:
        candidates = [Update(target.name, target.status, target.incarnation), *self.table.candidates(skip=target.name)]
        if self._send(target.address, PING, seq, target.name, candidates, self.limits.datagram_bytes_max, out):
            self.stats.pings_sent += 1

    def _send_ping_reqs(self, probe: _Probe, out: list[tuple[str, bytes]]) -> None:
        target = self._members.get(probe.target)
        if target is None:
            return
        helpers = [m.name for m in self._members.values() if m.status == ALIVE and m.name != probe.target]
        for name in self.rng.sample(helpers, min(self.limits.swim_indirect_probes, len(helpers))):
            candidates = [Update(target.name, target.status, target.incarnation), *self.table.candidates(skip=target.name)]
            if self._send(self._members[name].address, PING_REQ, probe.seq, target.name, candidates, self.limits.datagram_bytes_max, out):
                self.stats.indirect_probes += 1

    def _ack(self, datagram: Datagram, out: list[tuple[str, bytes]]) -> None:
        subject = datagram.target or datagram.sender  # a relayed ack names the member it vouches for
        probe = self._probes.get(datagram.seq)
        if probe is not None and probe.target == subject:
            del self._probes[datagram.seq]
            self.stats.acks_received += 1
            return
        relay = self._relays.get(datagram.seq)
        if relay is not None and relay.target == subject:
            del self._relays[datagram.seq]
            requester = self._members.get(relay.requester)
            if requester is not None and self._send(requester.address, ACK, relay.requester_seq, relay.target, self.table.candidates(), relay.answer_bytes_max, out):
                self.stats.acks_relayed += 1
            return
        self.stats.acks_late += 1

    def _probe_failed(self, name: str, now: int) -> None:
        member = self._members.get(name)
        if member is not None and member.status == ALIVE:
            self.table.set_state(member, SUSPECT, member.incarnation, now)

    def _postpone(self, lag: int) -> None:
        self.stats.stalls += 1
        level = logging.INFO if lag > self.limits.swim_ping_timeout_ms else logging.DEBUG
        log.log(level, "failure detector ran %d ms late: its deadlines move as much", lag)
        timeouts = [self.next_probe, *(t for p in self._probes.values() for t in (p.indirect, p.verdict)), *(r.expiry for r in self._relays.values())]
        for timeout in timeouts:
            if timeout.due_ms is not None:
                timeout.due_ms += lag
        self.table.postpone(lag)
        self._probe_some_soon()

    def _probe_some_soon(self) -> None:
        """Probe k random members out of turn: after a refutation, to spread it at once; after
        a stall, to hear at once whether others suspect this node."""
        names = list(self._members)
        for name in self.rng.sample(names, min(self.limits.swim_indirect_probes, len(names))):
            self._urgent[name] = None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % SEQ_MODULUS
        return self._seq

    # ---- sending ----

    def _send(
        self,
        address: str,
        kind: int,
        seq: int,
        target: str,
        candidates: list[Update],
        bytes_max: int,
        out: list[tuple[str, bytes]],
    ) -> bool:
        """Seal and queue one datagram from this node; count a transmission of each broadcast it carries."""
        bare = Datagram(kind, seq, self.name, target, (), self.cluster_id, self.boot, self._mseq + 1, self.own_incarnation)
        secret = self._keyring.current if self._keyring is not None else None
        packed = wire.pack(
            bare,
            candidates,
            bytes_max=min(bytes_max, self.limits.datagram_bytes_max),
            updates_max=self.limits.swim_piggyback_max,
            secret=secret,
        )
        if packed is None:
            self.stats.answers_dropped += 1
            return False
        self._mseq += 1
        payload, chosen = packed
        self.table.transmitted(candidates, chosen)
        if kind == ACK:
            self.stats.acks_sent += 1
        out.append((address, payload))
        return True
