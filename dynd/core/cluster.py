"""A node's view of its cluster: membership kept durable, spread by gossip, changed by admin acts.

Membership itself is a pure lattice (`dynd.core.membership`); this module holds the node's current
copy, persists every change through the Storage port (meta record "membership", its snapshot
included), gossips it with one random member or seed per `gossip_interval_ms`, makes snapshots
when it is the compactor and events are settled (`dynd.core.gossip_state`), and applies the admin
acts (join through a seed, leave, remove). Every change updates the peer addresses on the Network
port and the preference lists the request handlers use.

Gossip, digest first (A asks B):
1. A sends a Gossip with its summary (digest, highest stamp, snapshot stamp and digest): about
   a hundred bytes, whatever the cluster's size.
2. B merges what the request carries (a push, step 3), then answers with its summary; when the
   digests differ, also with its events above A's snapshot, and its snapshot if it outranks A's.
3. A merges that answer. It now knows B's membership exactly, so when B lacks something of A's
   it pushes just that (a Gossip with a delta); B merges it and answers with its summary.
Equal memberships cost two summaries; a difference costs the events above the snapshot once
each way (compaction keeps them few), and a snapshot only to a node whose own is older.

Gossip with a node of 70300c4 or before (a rolling upgrade): such a node refuses a Gossip with a
summary ("unknown field"), and sends Gossips without one (the whole membership). This node
answers those with its whole membership, and after one refusal it gossips whole memberships with
that node. That works while the membership is still format 1 (no snapshot, no location); a node
records its location (and the compactor compacts) only once it has heard no older node for a
while (`dynd.core.gossip_state`). An older node shown a format-2 membership refuses it
("unsupported membership format", logged on its side), and this node logs once which node it
cannot gossip with: upgrading that node ends it. Neither side stops or crashes.

Rules:
- A change is adopted in memory at once and persisted in the background; gossip may spread it
  before it is durable, which is safe because membership only grows (a restarted node learns it
  back from its peers).
- A node alone in its own one-node cluster may join another cluster: it adopts theirs, adds its
  JOIN event and pushes the result to the seed. A joined member joining again is a no-op.
- A node serves at the address it was started with: when the membership holds another one for it
  (it restarted with a new `advertise`), it records an address event at start, and again whenever
  gossip brings an older address back (a change lost in a crash before it was stored), at most
  `ADDRESS_CLAIMS_MAX` times per start: two processes started with one name must not out-claim each
  other forever, growing the membership; past that the conflict is logged. Its location (`--location`)
  is recorded the same way, with a location event, once the cluster can read one (see above).
- Events this node recorded that a snapshot it adopts left out (it was down while the others
  compacted) are recorded again above the snapshot (`orphaned_events`), and logged.
- `reachable(member)`: connected now, or a gossip exchange with it succeeded within
  `4 * gossip_interval_ms` (SWIM failure detection replaces this with issue 5).
- Each change is checked, and its next membership made, by one function (`leave_change`,
  `remove_change`, `membership_after_join`) that both the change and its plan (`dynd.core.plan`)
  call, so a dry run shows exactly what the change would do.
- `remove` refuses a member that answers a probe (a Ping, within `gather_timeout_ms`) unless
  forced: a live member retires with `leave`, which hands its data over first.
- A node whose own status is removed is not a member: it serves no data (`not_a_member`), and
  once some member has shown it the membership that records its removal (`removal_known`), the
  others have it too and it is safe to stop. A leaving node that records its own removal pushes
  it to every member at once, so that moment comes quickly.

`StatusGather` answers `dynctl cluster status`: this node's view, with each reachable member's
own count of pending transfers, gathered for at most `STATUS_GATHER_MS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dynd.core.gossip_state import PeerKnowledge
from dynd.core.limits import Limits
from dynd.core.membership import (
    JOIN,
    JOINED,
    LEAVE,
    LEAVING,
    REMOVE,
    REMOVED,
    ClusterParams,
    Membership,
    MembershipDelta,
    MembershipError,
    orphaned_events,
)
from dynd.core.ops import PutMeta
from dynd.core.ports import Network, Storage
from dynd.core.preflist import PreferenceList, preference_list
from dynd.core.ring import Ring
from dynd.core.timeouts import Timeout
from dynd.protocol import messages
from dynd.protocol.errors import BadRequest, DynError, NotAMember

log = logging.getLogger("dynd.cluster")

MEMBERSHIP_META = "membership"
HEARD_WITHIN_GOSSIP_INTERVALS = 4
STATUS_GATHER_MS = 1_000  # how long cluster status waits for members' own transfer counts
ADDRESS_CLAIMS_MAX = 3  # address (and location) events a node records per start (see the rules above)
RETRY_DIGESTS_WITH_OLD = 0.125  # share of exchanges with an older node that try digest-first gossip again


class RandomSource(Protocol):
    def random(self) -> float: ...

    def choice(self, seq: Sequence[Any]) -> Any: ...

    def shuffle(self, x: list[Any]) -> None: ...

    def sample(self, population: Sequence[Any], k: int) -> list[Any]: ...


class Liveness(Protocol):
    def status(self, name: str) -> str: ...

    def incarnation(self, name: str) -> int: ...


class ClusterView:
    def __init__(
        self,
        name: str,
        address: str,
        membership: Membership,
        storage: Storage,
        network: Network,
        *,
        limits: Limits,
        now_ms: Callable[[], int],
        rng: RandomSource,
        seeds: Sequence[str] = (),
        location: str = "",
    ) -> None:
        """`location`: where this node runs (a path, dynd.protocol.locations), "" for unknown."""
        self.name = name
        self.address = address
        self.location = location
        self.peers = PeerKnowledge(limits, now_ms())
        self.storage = storage
        self.network = network
        self.limits = limits
        self.now_ms = now_ms
        self.rng = rng
        self.seeds = tuple(seeds)
        self.membership = membership
        self._preflists: dict[int, PreferenceList] = {}
        self._heard_at_ms: dict[str, int] = {}
        self._gossip = Timeout("gossip round", limits.gossip_interval_ms)
        self._gossip.start(now_ms(), 0)  # the first round at the first tick
        self._probes: list[tuple[Timeout, Callable[[Any], None]]] = []  # remove's liveness probes: (deadline, answer now)
        self.on_change: list[Callable[[], None]] = []
        self.removed = False  # this node's own status is removed: it is not a member
        self.removal_known = False  # ... and some member has shown it that removal
        self._address_claims = 0
        self._address_conflict_logged = False
        self._location_claims = 0
        self._location_wait_logged = False
        claimed = self._claim_location(self._claim_address(membership))
        self._adopt(claimed, force=True)
        if claimed is not membership:
            self._persist(claimed)

    # ---- what the request handlers ask ----

    @property
    def params(self) -> ClusterParams:
        return self.membership.params

    @property
    def ring(self) -> Ring:
        ring = self.membership.ring
        if ring is None:  # no joined member at all: keep serving as the only owner
            return Ring(self.params.partitions, (self.name,) * self.params.partitions)
        return ring

    def preference_list(self, partition: int) -> PreferenceList:
        cached = self._preflists.get(partition)
        if cached is None:
            cached = self._preflists[partition] = preference_list(self.ring, partition, self.params.n)
        return cached

    def ring_reply(self, request_id: int, *, with_locations: bool = False) -> messages.RingOk:
        """`with_locations`: the client asked for them (an older client would refuse the field).
        They are the ring's (what preference lists use), and those of the other active members
        (leaving ones), which the CLI groups by; the client places keys by the ring's alone."""
        ring = self.ring
        locations = None
        if with_locations:
            where = {m.name: m.location for m in self.membership.active() if m.location}
            where.update(ring.locations)
            locations = [messages.NodeLocation(node, where[node]) for node in sorted(where)]
        return messages.RingOk(
            id=request_id,
            version=self.membership.digest,
            n=self.params.n,
            r=self.params.r,
            w=self.params.w,
            owners=list(ring.owners),
            addresses=[messages.NodeAddress(m.name, m.address) for m in self.membership.active()],
            locations=locations,
        )

    def status(self, request_id: int, transfers_pending: dict[str, int], health: Liveness, hints: dict[str, int]) -> messages.ClusterStatusOk:
        """`transfers_pending`: each member's own count, as far as it is known (0 otherwise);
        `hints`: how many hints this node holds per member."""
        counts = self.ring.counts()
        # A node that is not a member runs no failure detector (the members no longer answer its
        # probes): it cannot tell who is alive, and says so rather than calling them dead.
        members = [
            messages.MemberView(
                name=m.name,
                address=m.address,
                status=m.status,
                partitions=counts.get(m.name, 0),
                reachable=self.reachable(m.name),
                transfers_pending=transfers_pending.get(m.name, 0),
                liveness="unknown" if self.removed and m.name != self.name else health.status(m.name),
                incarnation=health.incarnation(m.name),
                hints_pending=hints.get(m.name, 0),
            )
            for m in sorted(self.membership.members.values(), key=lambda m: m.name)
        ]
        return messages.ClusterStatusOk(id=request_id, node=self.name, members=members)

    def reachable(self, name: str) -> bool:
        if name == self.name or self.network.connected(name):
            return True
        heard = self._heard_at_ms.get(name)
        return heard is not None and self.now_ms() - heard < HEARD_WITHIN_GOSSIP_INTERVALS * self.limits.gossip_interval_ms

    def other_members(self) -> list[str]:
        return [m.name for m in self.membership.active() if m.name != self.name]

    def not_a_member(self) -> NotAMember:
        """The error a node that is not a member answers data requests with: where to go instead."""
        members = sorted(self.membership.active(), key=lambda m: m.name)
        where = ", ".join(f"{m.name} at {m.address}" for m in members[:3]) or "none known"
        return NotAMember(
            f"{self.name} is not a member of cluster {self.params.cluster_id} any more (it left or was removed) "
            f"and serves no data; ask a member: {where}"
        )

    # ---- changes ----

    def _adopt(self, membership: Membership, force: bool = False) -> bool:
        """Hold `membership`; True when it differs from the one held (so it must be stored).
        Followers hear of it only when members or the ring changed (a snapshot changes neither)."""
        previous = self.membership
        self.membership = membership
        if not force and membership.digest == previous.digest:
            return False
        if force or membership.ring != previous.ring or membership.members != previous.members:
            self._preflists = {}
            me = membership.members.get(self.name)
            self.removed = me is not None and me.status == REMOVED
            if not self.removed:
                self.removal_known = False
            self.network.set_addresses({m.name: m.address for m in membership.active()})
            for callback in self.on_change:
                callback()
        return True

    def _claim_address(self, membership: Membership) -> Membership:
        """`membership`, with this node at the address it serves at (see the rules above)."""
        claimed = membership.at_address(self.name, self.address)
        if claimed is membership:
            return membership
        held = membership.address_of(self.name)
        if self._address_claims < ADDRESS_CLAIMS_MAX:
            self._address_claims += 1
            log.info("%s now at %s (was %s): telling the cluster", self.name, self.address, held)
            return claimed
        if not self._address_conflict_logged:
            self._address_conflict_logged = True
            log.error(
                "the cluster keeps %s at %s, not at %s where this node serves, after %d corrections: "
                "is another node running with the name %s?",
                self.name, held, self.address, ADDRESS_CLAIMS_MAX, self.name,
            )
        return membership

    def _claim_location(self, membership: Membership) -> Membership:
        """`membership`, with this node at its location, once the cluster can read one (see the
        rules above), at most `ADDRESS_CLAIMS_MAX` times per start, as addresses."""
        held = membership.members.get(self.name)
        if not self.location or held is None or held.status == REMOVED or held.location == self.location:
            return membership
        if not self.peers.may_record_location(membership, self.name, self.now_ms()):
            if not self._location_wait_logged:
                self._location_wait_logged = True
                waiting = self.peers.waiting_for(membership, self.name)
                log.info(
                    "location %s not recorded yet: waiting for digest-first gossip from %s (a dynd of 70300c4 or before cannot read it)",
                    self.location, ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""),
                )
            return membership
        if self._location_claims >= ADDRESS_CLAIMS_MAX:
            return membership
        self._location_claims += 1
        log.info("%s now at location %s (was %s): telling the cluster", self.name, self.location, held.location or "unknown")
        return membership.at_location(self.name, self.location)

    def _recorded_again(self, before: Membership, after: Membership) -> Membership:
        """`after`, with this node's orphans (see the rules above) recorded again."""
        for event in orphaned_events(before, after, self.name):
            log.warning(
                "recording again %s of %s (stamp %d): this node made it before the snapshot at stamp %d, which does not hold it",
                event.kind, event.member, event.stamp, after.base.stamp,
            )
            after = after.again(event)
        return after

    def _decode(self, data: bytes) -> Membership:
        return Membership.decode(data, events_max=self.limits.membership_events_max, members_max=self.limits.membership_members_max)

    def _decode_delta(self, data: bytes) -> MembershipDelta:
        return MembershipDelta.decode(data, events_max=self.limits.membership_events_max, members_max=self.limits.membership_members_max)

    def _persist(self, membership: Membership) -> None:
        try:  # a refusal (disk full, overloaded) must not escape into whoever brought the news
            self.storage.submit([PutMeta(MEMBERSHIP_META, membership.encode())], _log_persist_failure)
        except DynError as exc:
            _log_persist_failure(exc)

    def _update(self, membership: Membership, force: bool = False) -> None:
        membership = self._recorded_again(self.membership, membership)
        membership = self._claim_address(membership)
        membership = self._claim_location(membership)
        previous = self.membership
        if self._adopt(membership, force):
            self._persist(membership)
            if force or membership.members != previous.members:
                log.info("membership now %s", ", ".join(f"{m.name}={m.status}" for m in sorted(membership.members.values(), key=lambda m: m.name)))

    def merge_from_peer(self, data: bytes) -> bytes:
        """Gossip receive in the form of 70300c4 and before: merge the whole membership a peer sent
        (empty: it has nothing yet, as a joining node) and answer with ours, whole."""
        if data:
            try:
                incoming = self._decode(data)
                self._update(self.membership.merge(incoming))
            except MembershipError as exc:
                raise BadRequest(str(exc)) from None
        return self.membership.encode()

    def handle_gossip(self, request: messages.Gossip) -> messages.GossipOk:
        """Answer a Gossip (see "Gossip, digest first" above); BadRequest for one that cannot be merged."""
        summary = request.summary
        if summary is None:
            if request.membership:
                self.peers.heard_old(self.now_ms())
            return messages.GossipOk(id=request.id, membership=self.merge_from_peer(request.membership))
        now = self.now_ms()
        self.peers.spoke_digests(summary.node)
        if request.delta is not None:
            try:
                self._update(self.membership.merge_delta(self._decode_delta(request.delta)))
            except MembershipError as exc:
                raise BadRequest(str(exc)) from None
            self.peers.acknowledged(summary.node, summary.stamp, now)  # a push: all it held that we lacked
        ours = self.membership
        if summary.digest == ours.digest:
            self.peers.acknowledged(summary.node, summary.stamp, now)
            return messages.GossipOk(id=request.id, membership=b"", summary=self._summary())
        delta = ours.delta_for((summary.snapshot_stamp, summary.snapshot_digest))
        return messages.GossipOk(id=request.id, membership=b"", summary=self._summary(), delta=delta.encode())

    def _summary(self) -> messages.MembershipSummary:
        m = self.membership
        return messages.MembershipSummary(node=self.name, digest=m.digest, stamp=m.stamp, snapshot_stamp=m.base.stamp, snapshot_digest=m.base.digest)

    def _note_removal_seen(self, theirs: Membership) -> None:
        """A member answered our gossip with its membership: if that records our removal, the
        members have it (they spread it among themselves), and this node may go."""
        if self.removed and not self.removal_known:
            me = theirs.members.get(self.name)
            if me is not None and me.status == REMOVED:
                self.removal_known = True

    def leave_change(self, node: str | None) -> Membership | str:
        """The membership after `node` (this node when None) leaves, or why nothing would change;
        BadRequest for a leave that may not be made."""
        target = node or self.name
        member = self.membership.members.get(target)
        if member is None or member.status == REMOVED:
            raise BadRequest(f"{target!r} is not a member")
        if member.status == LEAVING:
            return f"{target} is already leaving"
        if len([m for m in self.membership.members.values() if m.status == JOINED]) <= 1:
            raise BadRequest(f"{target} is the last member; it cannot leave")
        return self.membership.with_event(LEAVE, target, origin=self.name)

    def remove_change(self, node: str) -> Membership:
        """The membership after `node` is removed; BadRequest for a removal that may not be made."""
        member = self.membership.members.get(node)
        if member is None or member.status == REMOVED:
            raise BadRequest(f"{node!r} is not a member")
        if node == self.name:
            raise BadRequest("a node cannot remove itself; use leave")
        return self.membership.with_event(REMOVE, node, origin=self.name)

    def leave(self, node: str | None) -> str:
        change = self.leave_change(node)
        if isinstance(change, str):
            return change
        self._update(change)
        return f"{node or self.name} is leaving: its partitions move to the other members, then it is removed"

    def remove(self, node: str, done: Callable[[str | DynError], None], *, force: bool = False, liveness: str = "") -> None:
        """Remove `node`; `done` gets the message or the refusal. Unless `force`, the node is
        probed first, and one that answers is refused (BadRequest): nothing changes."""
        self.remove_change(node)  # refuse at once what may not be removed at all

        def apply() -> None:
            try:
                change = self.remove_change(node)  # again: the membership may have changed meanwhile
            except DynError as exc:
                done(exc)
                return
            self._update(change)
            done(f"{node} removed; its partitions were reassigned")

        if force:
            apply()
            return
        answered = False

        def probed(answer: Any) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            if isinstance(answer, messages.Pong) and answer.node == node:
                seen = f" ({liveness} to {self.name}'s failure detector)" if liveness else ""
                done(
                    BadRequest(
                        f"{node} is alive and answers{seen}: removing it would drop its replicas without handing them over. "
                        f"To retire it, `dynctl cluster leave {node}` hands its data to the others first; "
                        "to drop it anyway, remove it with --force"
                    )
                )
                return
            apply()

        self._probes.append((Timeout("remove probe", self.limits.gather_timeout_ms, start_ms=self.now_ms()), lambda: probed(None)))
        self.network.send(node, lambda rid: messages.Ping(id=rid), probed)

    def partition_mismatch(self, seed: str, theirs: int) -> BadRequest:
        return BadRequest(
            f"the cluster at {seed} uses {theirs} partitions and this node {self.params.partitions}; "
            "restart this node on an empty data directory with the cluster's --partitions"
        )

    def finish_leaving(self) -> None:
        """Called once a leaving node has handed everything off: record its removal, and push it
        to every member at once (each answer that shows it makes `removal_known`)."""
        me = self.membership.members.get(self.name)
        if me is not None and me.status == LEAVING:
            self._update(self.membership.with_event(REMOVE, self.name, origin=self.name))
            for member in sorted(self.other_members()):
                self._exchange(member, member=member)

    @property
    def is_leaving(self) -> bool:
        me = self.membership.members.get(self.name)
        return me is not None and me.status == LEAVING

    @property
    def is_sole_member(self) -> bool:
        active = self.membership.active()
        return len(active) == 1 and active[0].name == self.name

    def join(self, seed: str, done: Callable[[str | DynError], None]) -> None:
        """Join the cluster `seed` belongs to; `done` gets a message or an error.

        Allowed while this node is alone in its own cluster (or already a member: a no-op).
        """
        if not self.is_sole_member:
            member = self.membership.members.get(self.name)
            if member is not None and member.status == JOINED:
                done(f"{self.name} is already a member of cluster {self.params.cluster_id}")
                return

        def fetched(answer: Any) -> None:
            if isinstance(answer, DynError):
                done(type(answer)(f"cannot reach seed {seed}: {answer.message}"))
                return
            try:
                theirs = self._decode(answer.membership)
            except MembershipError as exc:
                done(BadRequest(f"seed {seed} sent a bad membership: {exc}"))
                return
            if theirs.params.partitions != self.params.partitions:
                done(self.partition_mismatch(seed, theirs.params.partitions))
                return
            change = membership_after_join(theirs, self.name, self.address, self.location)
            if isinstance(change, str):
                self._update(theirs, force=True)
                done(change)
                return
            self._update(change, force=True)
            joined = f"{self.name} joined cluster {theirs.params.cluster_id} through {seed}"
            lacking = self.membership.lacking(theirs.base.rank, theirs.events)

            def pushed(answer: Any) -> None:
                if _speaks_no_digests(answer):  # a seed of 70300c4 or before: tell it the old way
                    self._note_old_target(seed)
                    self.network.send_to_address(seed, self._whole_request, lambda again: pushed_whole(again))
                    return
                pushed_whole(answer)

            def pushed_whole(answer: Any) -> None:
                if isinstance(answer, DynError):
                    done(type(answer)(f"joined, but could not tell {seed} yet (gossip will): {answer.message}"))
                    return
                self._merge_reply(seed, answer)
                done(joined)

            self.network.send_to_address(seed, lambda rid: self._gossip_request(rid, lacking), pushed)

        self.network.send_to_address(seed, lambda rid: messages.Gossip(id=rid, membership=b""), fetched)

    def announce(self, address: str) -> None:
        """Push our membership to `address` once (after joining through it at start)."""
        self._exchange(address)

    # ---- gossip ----

    def tick(self) -> None:
        now = self.now_ms()
        if self._probes:
            due = [answer for deadline, answer in self._probes if deadline.fired(now)]
            if due:
                self._probes = [(deadline, answer) for deadline, answer in self._probes if deadline.running]
                for answer in due:
                    answer()  # no answer in time: the member does not answer
        if not self._gossip.fired(now):
            return
        # Jitter keeps nodes out of step.
        self._gossip.start(now, int(self.limits.gossip_interval_ms * (0.5 + self.rng.random())))
        self.gossip_once()
        self._compact_if_settled()
        me = self.membership.members.get(self.name)
        if self.location and me is not None and me.location != self.location:
            self._update(self.membership)  # records the location once the cluster can read it

    def gossip_once(self) -> None:
        """Exchange with one member (by name, over its open connection) or one seed (by address)."""
        members = sorted(self.other_members())
        member_addresses = {self.membership.address_of(name) for name in members}
        seeds = sorted(a for a in self.seeds if a not in member_addresses and a != self.address)
        targets = [("member", name) for name in members] + [("seed", address) for address in seeds]
        if not targets:
            return
        kind, target = self.rng.choice(targets)
        self._exchange(target, member=target if kind == "member" else None)

    def _exchange(self, target: str, member: str | None = None) -> None:
        """One gossip exchange with `target`: the member of that name when `member` is given, else
        the node at that address. Digest first, or whole memberships with an older node."""
        send = self.network.send if member is not None else self.network.send_to_address
        # An older node is asked digest first again now and then: once upgraded, it answers so.
        if target not in self.peers.old_targets or self.rng.random() < RETRY_DIGESTS_WITH_OLD:
            send(target, self._gossip_request, lambda answer: self._merge_reply(target, answer, member=member))
        elif self.membership.format == 1:  # an older node reads it
            send(target, self._whole_request, lambda answer: self._merge_reply(target, answer, member=member))
        elif not self.peers.old_targets[target]:
            self.peers.old_targets[target] = True
            log.error(
                "cannot gossip with %s: it runs a dynd of 70300c4 or before, which cannot read this membership "
                "(it holds a snapshot or locations); upgrade %s", target, target,
            )

    def _gossip_request(self, request_id: int, delta: MembershipDelta | None = None) -> messages.Gossip:
        return messages.Gossip(
            id=request_id, membership=b"", summary=self._summary(), delta=delta.encode() if delta is not None else None
        )

    def _whole_request(self, request_id: int) -> messages.Gossip:
        return messages.Gossip(id=request_id, membership=self.membership.encode())

    def _note_old_target(self, target: str) -> None:
        self.peers.heard_old(self.now_ms())
        if target not in self.peers.old_targets:
            self.peers.old_targets[target] = False
            log.warning("%s runs a dynd of 70300c4 or before (no digest-first gossip): gossiping whole memberships with it", target)

    def _merge_reply(self, source: str, answer: Any, member: str | None = None, push_back: bool = True) -> None:
        """Take in a GossipOk from `source` (see "Gossip, digest first" above)."""
        if _speaks_no_digests(answer):
            self._note_old_target(source)
            if push_back and self.membership.format == 1:  # say it again, the old way, at once
                send = self.network.send if member is not None else self.network.send_to_address
                send(source, self._whole_request, lambda again: self._merge_reply(source, again, member=member, push_back=False))
            return
        if not isinstance(answer, messages.GossipOk):
            log.debug("gossip with %s failed: %s", source, answer)
            return
        now = self.now_ms()
        if member is not None:
            self._heard_at_ms[member] = now
        summary = answer.summary
        if summary is None:  # an older node's answer: its whole membership
            try:
                theirs = self._decode(answer.membership)
                self._update(self.membership.merge(theirs))
            except MembershipError as exc:
                log.warning("gossip from %s refused: %s", source, exc)
                return
            if member is not None:
                self._note_removal_seen(theirs)
            return
        self.peers.spoke_digests(summary.node)
        self.peers.old_targets.pop(source, None)  # a seed's address, say: it speaks digest first now
        if answer.delta is not None:
            try:
                delta = self._decode_delta(answer.delta)
                self._update(self.membership.merge_delta(delta))
            except MembershipError as exc:
                log.warning("gossip from %s refused: %s", source, exc)
                return
            self.peers.acknowledged(summary.node, summary.stamp, now)
            lacking = self.membership.lacking((summary.snapshot_stamp, summary.snapshot_digest), delta.events)
            if lacking is not None and push_back:
                send = self.network.send if member is not None else self.network.send_to_address
                send(source, lambda rid: self._gossip_request(rid, lacking), lambda again: self._merge_reply(source, again, member=member, push_back=False))
        elif summary.digest == self.membership.digest:
            self.peers.acknowledged(summary.node, summary.stamp, now)
        if member is not None and self.removed and not self.removal_known and summary.digest == self.membership.digest:
            self.removal_known = True  # a member holds exactly our membership, which records our removal

    def _compact_if_settled(self) -> None:
        """The compactor folds settled events into a snapshot once `membership_compact_events` are."""
        membership = self.membership
        stamp = self.peers.settled_stamp(membership, self.name, self.now_ms())
        if stamp is None or stamp <= membership.base.stamp:
            return
        settled = sum(1 for e in membership.events if e.stamp <= stamp)
        if settled < self.limits.membership_compact_events:
            return
        compacted = membership.compacted(stamp)
        log.info("membership compacted: %d events up to stamp %d folded into a snapshot", settled, compacted.base.stamp)
        self._update(compacted)


def _speaks_no_digests(answer: Any) -> bool:
    """A node of 70300c4 or before refuses a Gossip with a summary: its codec knows no such field."""
    return isinstance(answer, BadRequest) and "unknown field" in answer.message and "summary" in answer.message


def membership_after_join(theirs: Membership, node: str, address: str, location: str = "") -> Membership | str:
    """The membership after `node` at `address` (and `location`, when the cluster records
    locations: `Membership.location_for_join`) joins `theirs` (the cluster's, as its seed has
    it), or why nothing would change: it is a joined member at that address already."""
    member = theirs.members.get(node)
    if member is not None and member.status == JOINED and member.address == address:
        return f"{node} is already a member of cluster {theirs.params.cluster_id}"
    return theirs.with_event(JOIN, node, origin=node, address=address, location=theirs.location_for_join(location))


class StatusGather:
    """ClusterStatus requests: this node's view (`describe(request_id, pending)`, `pending` being
    each member's own count of pending transfers as far as known), after asking every other member
    for its own count. A member that does not answer within `STATUS_GATHER_MS` (a dead one) does
    not hold the operator's view back: `tick` answers with what came."""

    def __init__(
        self,
        cluster: ClusterView,
        network: Network,
        *,
        now_ms: Callable[[], int],
        transfers_pending: Callable[[], int],
        describe: Callable[[int, dict[str, int]], messages.ClusterStatusOk],
    ) -> None:
        self.cluster = cluster
        self.network = network
        self.now_ms = now_ms
        self.transfers_pending = transfers_pending
        self.describe = describe
        self._gathers: list[tuple[Timeout, Callable[[], None]]] = []  # (deadline, answer now)

    def handle(self, request: messages.ClusterStatus, reply: Callable[[Any], None]) -> None:
        pending = {self.cluster.name: self.transfers_pending()}
        others = self.cluster.other_members()
        if request.local_only or not others:
            reply(self.describe(request.id, pending))
            return
        waiting = set(others)
        replied = False

        def answer_now() -> None:
            nonlocal replied
            if not replied:
                replied = True
                reply(self.describe(request.id, pending))

        def answered(node: str) -> Callable[[Any], None]:
            def record(answer: Any) -> None:
                if isinstance(answer, messages.ClusterStatusOk):
                    pending[node] = next((m.transfers_pending for m in answer.members if m.name == node), 0)
                waiting.discard(node)
                if not waiting:
                    answer_now()

            return record

        self._gathers.append((Timeout("status gather", STATUS_GATHER_MS, start_ms=self.now_ms()), answer_now))
        for node in others:
            self.network.send(node, lambda rid: messages.ClusterStatus(id=rid, local_only=True), answered(node))

    def tick(self) -> None:
        if not self._gathers:
            return
        now = self.now_ms()
        due = [answer for deadline, answer in self._gathers if deadline.fired(now)]
        if due:
            self._gathers = [(deadline, answer) for deadline, answer in self._gathers if deadline.running]
            for answer in due:
                answer()


def _log_persist_failure(error: DynError | None) -> None:
    if error is not None:
        log.error("could not persist the membership: %s", error)
