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

State of a member, and how updates merge (name, status, incarnation):
    each member's state is ordered by (incarnation, rank), rank alive 0 < suspect 1 < dead 2;
    an update replaces the state it is greater than and is ignored otherwise. So a higher
    incarnation overrides anything (a suspect or dead member that refutes comes back alive), and
    at equal incarnation dead > suspect > alive. Within the bounds below states only grow (a
    lattice), so all nodes converge. Updates about names not in the member list are ignored.

    transition                     | cause
    -------------------------------+---------------------------------------------------------
    alive@i   -> suspect@i         | our probe got no ack by the period's end, or suspect@i heard
    suspect@i -> dead@i            | suspicion timeout, or dead@i heard
    any@i     -> alive@j (j > i)   | the member refuted (heard from it directly, or gossiped)
    any@i     -> suspect/dead@j    | heard, i < j <= i + INCARNATION_STEP_MAX (or j = i and a
                                   | higher rank)
    any@i     -> (ignored)         | a third party's update at j > i + INCARNATION_STEP_MAX
                                   | (counted: incarnation_jumps)
    any@i     -> alive@j (j < i)   | the member itself speaks (the header of its own datagram)
                                   | at j with i > j + INCARNATION_STEP_MAX: our view is beyond
                                   | anything it has claimed, so its word wins (counted:
                                   | views_reset). The only step down, and only outside the
                                   | bounds: an honest verdict is never above the member's own
                                   | incarnation, which only grows within a boot.

Incarnations may only grow by a bounded step (INCARNATION_STEP_MAX), so one datagram, even from a
real peer, can never kill a member for good. Every datagram's header carries its sender's own
incarnation, believed without a bound (after the MAC, replay and source checks: the sender speaks
for itself), so an observer that restarted, and knows everyone at 0, learns each member's real
incarnation from the member itself within a round, and ignores gossip far above it meanwhile.
A member held at an incarnation far above its own, by pushes of INCARNATION_STEP_MAX at a time,
recovers as soon as it sends this node a datagram (a ping, or the ack to our probe: dead members
stay in the rotation). A verdict at 2^63-1 about a member whose own incarnation is within a step
of it cannot be refuted; reaching one takes 2^53 authenticated datagrams, and a restart of the
member clears it (a process starts at incarnation 0, so the verdict is then beyond a step of the
member's word, everywhere it hears from the member).

About itself a node is always alive. When it hears it is suspect or dead at incarnation i >= its
own (and i <= own + INCARNATION_STEP_MAX), it takes incarnation i + 1 and spreads alive@(i + 1) (a
refutation). When it hears alive at a higher incarnation than its own (within the step; it
restarted at 0, say), it adopts that number, so its next refutation beats whatever others hold.
An update about itself more than INCARNATION_STEP_MAX above its own is ignored, counted and logged
(at most once per LOG_INTERVAL_MS): it is not refuted, since no honest member holds it.

Dissemination: every update this node learns or makes is piggybacked on its pings, ping-reqs and
acks, fewest transmissions first (so the most recent first), up to `swim_piggyback_max` per
datagram and as many as fit, each about `swim_retransmit_mult` * ceil(log2(n + 1)) times.
A ping (direct or relayed) always carries first the target's own state in our view, so a
suspected or dead member learns it from the next ping and refutes in its ack.

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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from dynd.core.limits import Limits
from dynd.protocol import swim_wire as wire
from dynd.protocol.auth import Keyring
from dynd.protocol.swim_wire import ACK, ALIVE, DEAD, PING, PING_REQ, SUSPECT, BadDatagram, BadMac, Datagram, Update

log = logging.getLogger("dynd.swim")

STATUS_NAMES = {ALIVE: "alive", SUSPECT: "suspect", DEAD: "dead"}
STALL_TICKS = 2  # a tick later than this many tick intervals (and half a ping timeout): this node was not running
SEQ_MODULUS = 2**63
RELAYS_MAX = 1024  # ping-reqs being served at once; more are dropped
# The most a third party may raise what this node knows of a member's incarnation in one update
# (and the most an update about this node may exceed its own). Honest members step by one per
# refutation, so 1024 leaves room for every refutation a member can make while this node misses
# its datagrams, and 2^63 is 2^53 authenticated datagrams away.
INCARNATION_STEP_MAX = 1024
WINDOW_BITS = 64  # the replay window: this many mseqs at and below the highest seen
_WINDOW_MASK = (1 << WINDOW_BITS) - 1
WINDOWS_SPARE = 64  # replay windows kept for former members, beyond one per member
LOG_INTERVAL_MS = 10_000  # warnings about the same kind of hostile input: at most one per interval

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
class SwimStats:
    pings_sent: int = 0  # direct probes and pings made for others' ping-reqs
    pings_received: int = 0
    acks_sent: int = 0  # direct acks and relayed acks
    acks_received: int = 0  # acks that completed one of our probes
    acks_late: int = 0  # acks for probes already judged or unknown
    acks_relayed: int = 0
    indirect_probes: int = 0  # ping-reqs sent
    ping_reqs_received: int = 0
    ping_reqs_dropped: int = 0  # beyond RELAYS_MAX
    suspicions: int = 0  # members this node suspected or learned to suspect
    refutations: int = 0  # times this node refuted a suspicion of itself
    dead_verdicts: int = 0  # members this node marked dead (timeout or gossip)
    recoveries: int = 0  # suspect or dead members seen alive again
    bad_datagrams: int = 0  # too large, a MAC that fails, or malformed
    bad_macs: int = 0  # of bad_datagrams: the MAC failed (forged, corrupted, another secret)
    wrong_cluster: int = 0
    unknown_senders: int = 0
    source_mismatches: int = 0  # the source address is not the sender's member address
    replays: int = 0  # an mseq seen before, older than the window, or from an older boot
    incarnation_jumps: int = 0  # updates ignored: more than INCARNATION_STEP_MAX above what we know
    views_reset: int = 0  # a member's own word overruled our view of it (far above its claim)
    misdirected: int = 0  # a ping for another name, a ping-req about a non-member
    answers_dropped: int = 0  # an answer that could not fit the size of the question
    stalls: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _Member:
    name: str
    address: str
    status: int = ALIVE
    incarnation: int = 0
    suspect_deadline_ms: int = 0


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
    indirect_at_ms: int
    deadline_ms: int
    indirect_sent: bool = False


@dataclass(slots=True)
class _Relay:
    requester: str
    requester_seq: int
    target: str
    answer_bytes_max: int  # the size of the ping-req: the relayed ack may not be larger
    expires_ms: int


@dataclass(slots=True)
class _Broadcast:
    update: Update
    transmits: int
    order: int  # larger is newer


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
        self.own_incarnation = incarnation
        self.boot = boot
        self._cluster_id: Callable[[], str] = cluster_id if callable(cluster_id) else (lambda: cluster_id)
        self._keyring = keyring
        self.on_security_event = on_security_event
        self.on_change: list[Callable[[str, str], None]] = []
        self.stats = SwimStats()
        self._mseq = 0  # of the last datagram sent
        self._windows: dict[str, _Window] = {}  # replay windows, by sender name
        self._logged_ms: dict[str, int] = {}  # rate limit of warnings, by kind
        self._members: dict[str, _Member] = {}
        self._order: list[str] = []  # this round's probe order
        self._order_pos = 0
        self._probes: dict[int, _Probe] = {}  # by seq
        self._relays: dict[int, _Relay] = {}  # by the seq of our ping to the target
        self._broadcasts: dict[str, _Broadcast] = {}  # by member name, one (the latest) per name
        self._broadcast_order = 0
        self._urgent: dict[str, None] = {}  # members reported failing: an ordered set
        self._last_probe_ms: dict[str, int] = {}
        self._seq = int(rng.random() * 2**32)
        now = now_ms()
        self._last_tick_ms = now
        self._next_probe_ms = now + int(rng.random() * limits.swim_period_ms)  # nodes started together spread out

    @property
    def cluster_id(self) -> str:
        return self._cluster_id()

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
            self._members[name] = _Member(name, address)
            remaining = len(self._order) - self._order_pos
            self._order.insert(self._order_pos + int(self.rng.random() * (remaining + 1)), name)
        for name in [name for name in self._members if name not in members]:
            del self._members[name]
            self._broadcasts.pop(name, None)
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
            if now >= probe.deadline_ms:
                del self._probes[probe.seq]
                self._probe_failed(probe.target, now)
            elif not probe.indirect_sent and now >= probe.indirect_at_ms:
                probe.indirect_sent = True
                self._send_ping_reqs(probe, out)
        for member in list(self._members.values()):
            if member.status == SUSPECT and now >= member.suspect_deadline_ms:
                self._set_state(member, DEAD, member.incarnation, now)
        for seq in [seq for seq, relay in self._relays.items() if now >= relay.expires_ms]:
            del self._relays[seq]
        if now >= self._next_probe_ms:
            self._next_probe_ms = max(self._next_probe_ms + self.limits.swim_period_ms, now + self.limits.tick_interval_ms)
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
        self._heard_from(sender, datagram.incarnation, now)
        for update in datagram.updates:
            self._apply(update, now, datagram.sender)
        out: list[tuple[str, bytes]] = []
        if datagram.kind == PING:
            self.stats.pings_received += 1
            # a pinger we hold suspect or dead hears so first, and refutes at once
            candidates = self._candidates() if sender.status == ALIVE else [Update(sender.name, sender.status, sender.incarnation), *self._candidates(skip=sender.name)]
            self._send(sender.address, ACK, datagram.seq, "", candidates, len(payload), out)
        elif datagram.kind == PING_REQ:
            self.stats.ping_reqs_received += 1
            if len(self._relays) >= RELAYS_MAX:
                self.stats.ping_reqs_dropped += 1
                return out
            seq = self._next_seq()
            self._relays[seq] = _Relay(datagram.sender, datagram.seq, datagram.target, len(payload), now + self.limits.swim_period_ms)
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

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        """A warning, at most one of each kind per LOG_INTERVAL_MS (hostile input must not flood the log)."""
        now = self.now_ms()
        last = self._logged_ms.get(kind)
        if last is not None and now < last + LOG_INTERVAL_MS:
            log.debug(message, *args)
            return
        self._logged_ms[kind] = now
        log.warning(message, *args)

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
        self._probes[seq] = _Probe(seq, target, now + self.limits.swim_ping_timeout_ms, now + self.limits.swim_period_ms)
        self._last_probe_ms[target] = now
        self._send_ping(self._members[target], seq, out)

    def _send_ping(self, target: _Member, seq: int, out: list[tuple[str, bytes]]) -> None:
        candidates = [Update(target.name, target.status, target.incarnation), *self._candidates(skip=target.name)]
        if self._send(target.address, PING, seq, target.name, candidates, self.limits.datagram_bytes_max, out):
            self.stats.pings_sent += 1

    def _send_ping_reqs(self, probe: _Probe, out: list[tuple[str, bytes]]) -> None:
        target = self._members.get(probe.target)
        if target is None:
            return
        helpers = [m.name for m in self._members.values() if m.status == ALIVE and m.name != probe.target]
        for name in self.rng.sample(helpers, min(self.limits.swim_indirect_probes, len(helpers))):
            candidates = [Update(target.name, target.status, target.incarnation), *self._candidates(skip=target.name)]
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
            if requester is not None and self._send(requester.address, ACK, relay.requester_seq, relay.target, self._candidates(), relay.answer_bytes_max, out):
                self.stats.acks_relayed += 1
            return
        self.stats.acks_late += 1

    def _probe_failed(self, name: str, now: int) -> None:
        member = self._members.get(name)
        if member is not None and member.status == ALIVE:
            self._set_state(member, SUSPECT, member.incarnation, now)

    def _postpone(self, lag: int) -> None:
        self.stats.stalls += 1
        level = logging.INFO if lag > self.limits.swim_ping_timeout_ms else logging.DEBUG
        log.log(level, "failure detector ran %d ms late: its deadlines move as much", lag)
        for probe in self._probes.values():
            probe.indirect_at_ms += lag
            probe.deadline_ms += lag
        for member in self._members.values():
            member.suspect_deadline_ms += lag
        for relay in self._relays.values():
            relay.expires_ms += lag
        self._next_probe_ms += lag
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

    # ---- state ----

    def _heard_from(self, member: _Member, incarnation: int, now: int) -> None:
        """The sender's own word about itself (its header): alive at `incarnation`, believed
        without a bound; and, if our view of it is beyond anything it claims, instead of that view."""
        if member.incarnation > incarnation + INCARNATION_STEP_MAX:
            self.stats.views_reset += 1
            self._warn(
                "view_reset",
                "member %s says it is at incarnation %d; this node held it %s@%d: believing the member",
                member.name,
                incarnation,
                STATUS_NAMES[member.status],
                member.incarnation,
            )
            self._set_state(member, ALIVE, incarnation, now)
        elif incarnation > member.incarnation:
            self._set_state(member, ALIVE, incarnation, now)

    def _apply(self, update: Update, now: int, sender: str) -> None:
        if update.name == self.name:
            self._apply_about_self(update, sender)
            return
        member = self._members.get(update.name)
        if member is None:
            return
        if update.name != sender and update.incarnation > member.incarnation + INCARNATION_STEP_MAX:
            self.stats.incarnation_jumps += 1
            log.debug(
                "ignoring %s@%d about %s from %s: more than %d above %d",
                STATUS_NAMES[update.status],
                update.incarnation,
                update.name,
                sender,
                INCARNATION_STEP_MAX,
                member.incarnation,
            )
            return
        if (update.incarnation, update.status) > (member.incarnation, member.status):
            self._set_state(member, update.status, update.incarnation, now)

    def _apply_about_self(self, update: Update, sender: str) -> None:
        if update.incarnation > self.own_incarnation + INCARNATION_STEP_MAX:
            self.stats.incarnation_jumps += 1
            self._warn(
                "self_jump",
                "ignoring %s@%d about this node from %s: more than %d above its incarnation %d",
                STATUS_NAMES[update.status],
                update.incarnation,
                sender,
                INCARNATION_STEP_MAX,
                self.own_incarnation,
            )
        elif update.status == ALIVE:
            self.own_incarnation = max(self.own_incarnation, update.incarnation)
        elif update.incarnation >= wire.INT_MAX:
            self._warn(
                "cannot_refute",
                "cannot refute %s@%d about this node: no higher incarnation; restarting this node clears it",
                STATUS_NAMES[update.status],
                update.incarnation,
            )
        elif update.incarnation >= self.own_incarnation:
            self.own_incarnation = update.incarnation + 1
            self.stats.refutations += 1
            log.info("refuting %s@%d about this node with incarnation %d", STATUS_NAMES[update.status], update.incarnation, self.own_incarnation)
            self._broadcast(Update(self.name, ALIVE, self.own_incarnation))
            self._probe_some_soon()
        else:
            # A verdict about an older incarnation: we already refuted it, but whoever still
            # holds it (a member that restarted and never heard our refutation, say) must hear
            # our current one, or it keeps us suspect, then dead, for good.
            self._broadcast(Update(self.name, ALIVE, self.own_incarnation))

    def _set_state(self, member: _Member, status: int, incarnation: int, now: int) -> None:
        old_status = member.status
        member.status, member.incarnation = status, incarnation
        if status == SUSPECT:
            member.suspect_deadline_ms = now + self.limits.swim_suspicion_timeout_ms
            self.stats.suspicions += 1
        elif status == DEAD:
            self.stats.dead_verdicts += 1
        elif old_status != ALIVE:
            self.stats.recoveries += 1
        self._broadcast(Update(member.name, status, incarnation))
        if status != old_status:
            log.info("member %s is %s (incarnation %d)", member.name, STATUS_NAMES[status], incarnation)
            for callback in self.on_change:
                callback(member.name, STATUS_NAMES[status])

    # ---- dissemination ----

    def _broadcast(self, update: Update) -> None:
        self._broadcast_order += 1
        self._broadcasts[update.name] = _Broadcast(update, 0, self._broadcast_order)

    def _retransmits_max(self) -> int:
        return self.limits.swim_retransmit_mult * max(1, math.ceil(math.log2(len(self._members) + 2)))

    def _candidates(self, skip: str = "") -> list[Update]:
        queued = sorted(self._broadcasts.values(), key=lambda b: (b.transmits, -b.order))
        return [b.update for b in queued if b.update.name != skip]

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
        limit = self._retransmits_max()
        for index in chosen:
            name = candidates[index].name
            queued = self._broadcasts.get(name)
            if queued is not None and queued.update == candidates[index]:
                queued.transmits += 1
                if queued.transmits >= limit:
                    del self._broadcasts[name]
        if kind == ACK:
            self.stats.acks_sent += 1
        out.append((address, payload))
        return True
