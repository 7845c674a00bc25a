"""The failure detector's member table: each member's state, how updates about it merge, and which
updates go out on the next datagrams (dissemination). Pure; `dynd.core.swim` (probing, datagrams)
owns one and is its only user.

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

Timers: a suspicion is a named timeout per member on the node's monotonic clock (`now_ms`), which
`expire_suspicions` ticks; `postpone` moves every one later after a pause of this node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from dynd.core.limits import Limits
from dynd.core.timeouts import Timeout
from dynd.protocol import swim_wire as wire
from dynd.protocol.swim_wire import ALIVE, DEAD, SUSPECT, Update

log = logging.getLogger("dynd.swim")

STATUS_NAMES = {ALIVE: "alive", SUSPECT: "suspect", DEAD: "dead"}
# The most a third party may raise what this node knows of a member's incarnation in one update
# (and the most an update about this node may exceed its own). Honest members step by one per
# refutation, so 1024 leaves room for every refutation a member can make while this node misses
# its datagrams, and 2^63 is 2^53 authenticated datagrams away.
INCARNATION_STEP_MAX = 1024
LOG_INTERVAL_MS = 10_000  # warnings about the same kind of hostile input: at most one per interval


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
class Member:
    name: str
    address: str
    suspicion: Timeout  # armed while the member is suspect: when it fires unrefuted, it is dead
    status: int = ALIVE
    incarnation: int = 0


@dataclass(slots=True)
class _Broadcast:
    update: Update
    transmits: int
    order: int  # larger is newer


class MemberTable:
    """The members this node watches (not itself), their states, and the updates to spread.

    `on_refuted` runs after this node refutes a suspicion of itself (the detector probes a few
    members out of turn, which carries the refutation to them at once)."""

    def __init__(
        self,
        name: str,
        *,
        limits: Limits,
        now_ms: Callable[[], int],
        stats: SwimStats,
        incarnation: int = 0,
        on_refuted: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.limits = limits
        self.now_ms = now_ms
        self.stats = stats
        self.own_incarnation = incarnation
        self.on_refuted = on_refuted
        self.on_change: list[Callable[[str, str], None]] = []
        self.members: dict[str, Member] = {}
        self._broadcasts: dict[str, _Broadcast] = {}  # by member name, one (the latest) per name
        self._broadcast_order = 0
        self._logged_ms: dict[str, int] = {}  # rate limit of warnings, by kind

    def add(self, name: str, address: str) -> None:
        self.members[name] = Member(name, address, Timeout(f"suspicion of {name}", self.limits.swim_suspicion_timeout_ms))

    def remove(self, name: str) -> None:
        del self.members[name]
        self._broadcasts.pop(name, None)

    # ---- timers ----

    def expire_suspicions(self, now: int) -> None:
        """A suspect whose suspicion timed out unrefuted is dead."""
        for member in list(self.members.values()):
            if member.status == SUSPECT and member.suspicion.fired(now):
                self.set_state(member, DEAD, member.incarnation, now)

    def postpone(self, lag: int) -> None:
        """This node was not running for `lag` ms: no suspicion may count that time against anyone."""
        for member in self.members.values():
            if member.suspicion.due_ms is not None:
                member.suspicion.due_ms += lag

    # ---- updates ----

    def heard_from(self, member: Member, incarnation: int, now: int) -> None:
        """The sender's own word about itself (its header): alive at `incarnation`, believed
        without a bound; and, if our view of it is beyond anything it claims, instead of that view."""
        if member.incarnation > incarnation + INCARNATION_STEP_MAX:
            self.stats.views_reset += 1
            self.warn(
                "view_reset",
                "member %s says it is at incarnation %d; this node held it %s@%d: believing the member",
                member.name,
                incarnation,
                STATUS_NAMES[member.status],
                member.incarnation,
            )
            self.set_state(member, ALIVE, incarnation, now)
        elif incarnation > member.incarnation:
            self.set_state(member, ALIVE, incarnation, now)

    def apply(self, update: Update, now: int, sender: str) -> None:
        if update.name == self.name:
            self._apply_about_self(update, sender)
            return
        member = self.members.get(update.name)
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
            self.set_state(member, update.status, update.incarnation, now)

    def _apply_about_self(self, update: Update, sender: str) -> None:
        if update.incarnation > self.own_incarnation + INCARNATION_STEP_MAX:
            self.stats.incarnation_jumps += 1
            self.warn(
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
            self.warn(
                "cannot_refute",
                "cannot refute %s@%d about this node: no higher incarnation; restarting this node clears it",
                STATUS_NAMES[update.status],
                update.incarnation,
            )
        elif update.incarnation >= self.own_incarnation:
            self.own_incarnation = update.incarnation + 1
            self.stats.refutations += 1
            log.info("refuting %s@%d about this node with incarnation %d", STATUS_NAMES[update.status], update.incarnation, self.own_incarnation)
            self.broadcast(Update(self.name, ALIVE, self.own_incarnation))
            self.on_refuted()
        else:
            # A verdict about an older incarnation: we already refuted it, but whoever still
            # holds it (a member that restarted and never heard our refutation, say) must hear
            # our current one, or it keeps us suspect, then dead, for good.
            self.broadcast(Update(self.name, ALIVE, self.own_incarnation))

    def set_state(self, member: Member, status: int, incarnation: int, now: int) -> None:
        old_status = member.status
        member.status, member.incarnation = status, incarnation
        if status == SUSPECT:
            member.suspicion.start(now)
            self.stats.suspicions += 1
        else:
            member.suspicion.stop()
            if status == DEAD:
                self.stats.dead_verdicts += 1
            elif old_status != ALIVE:
                self.stats.recoveries += 1
        self.broadcast(Update(member.name, status, incarnation))
        if status != old_status:
            log.info("member %s is %s (incarnation %d)", member.name, STATUS_NAMES[status], incarnation)
            for callback in self.on_change:
                callback(member.name, STATUS_NAMES[status])

    def warn(self, kind: str, message: str, *args: Any) -> None:
        """A warning, at most one of each kind per LOG_INTERVAL_MS (hostile input must not flood the log)."""
        now = self.now_ms()
        last = self._logged_ms.get(kind)
        if last is not None and now < last + LOG_INTERVAL_MS:
            log.debug(message, *args)
            return
        self._logged_ms[kind] = now
        log.warning(message, *args)

    # ---- dissemination ----

    def broadcast(self, update: Update) -> None:
        self._broadcast_order += 1
        self._broadcasts[update.name] = _Broadcast(update, 0, self._broadcast_order)

    def candidates(self, skip: str = "") -> list[Update]:
        """The updates to piggyback, in the order they should go: fewest transmissions first."""
        queued = sorted(self._broadcasts.values(), key=lambda b: (b.transmits, -b.order))
        return [b.update for b in queued if b.update.name != skip]

    def transmitted(self, candidates: list[Update], chosen: list[int]) -> None:
        """The updates `candidates[i]` for i in `chosen` went out once more; each goes about
        `swim_retransmit_mult` * log2(n) times, then no more."""
        limit = self.limits.swim_retransmit_mult * max(1, math.ceil(math.log2(len(self.members) + 2)))
        for index in chosen:
            name = candidates[index].name
            queued = self._broadcasts.get(name)
            if queued is not None and queued.update == candidates[index]:
                queued.transmits += 1
                if queued.transmits >= limit:
                    del self._broadcasts[name]
