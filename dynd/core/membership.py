"""Cluster membership: a snapshot and the admin events above it, from which every node derives the ring.

Rules:
- The first node creates the cluster: its parameters (cluster id, N, R, W, Q) are fixed then and
  travel with the membership. Memberships of different clusters never merge.
- Each admin act adds one event (`dynd.core.member_events`): join (member, address, location),
  leave, remove. Events never change; two nodes merge by union, so gossip converges.
- A member that starts at another address than the membership holds for it (a new `advertise`)
  adds an address event; one that starts with another location adds a location event. Each
  changes that one field and nothing else, and only the member itself records one. A location
  change may move partitions (claim places replicas by location); an address change never does.
- The node that records an event stamps it with one more than the highest stamp it has seen.
  Every node orders events by (stamp, origin, kind, member, address, location) and folds them
  into the same member table and ring (`dynd.core.membership_fold`), even when a late event sorts
  before ones already applied: the fold goes back to a checkpoint before it and replays from there.
- Member status: joined -> leaving (leave) -> removed (remove), or joined -> removed. Only joined
  members own partitions. A leaving member still serves and hands its data to the new owners, then
  records its own removal. A later join of a removed member brings it back.

Snapshots (compaction):
- A membership is a snapshot (`Snapshot`: the table and ring of every event at or below its stamp
  that it folded in) and the events above its stamp. One member, the compactor, folds settled
  events into a new snapshot (`compacted`); the snapshot travels like events do (persisted in the
  meta record with them, gossiped), so a node that was down catches up from it.
- Merging keeps the snapshot of higher rank (stamp, then digest) and drops every event at or below
  its stamp. The ring is therefore a function of (snapshot, events above it), which gossip makes
  equal on every node: every node folds the same ring, whatever any node considers settled, and
  whichever events any node held when a snapshot was made.
- What "settled" buys is that a snapshot equals the fold of every event: it does when every event
  at or below the snapshot's stamp reached the compactor first. The compactor counts an event
  settled when every active member it heard from lately (a majority at least) has shown it all
  the events it held, at a stamp at or above the event's (`dynd.core.gossip_state`): such a
  member stamps its later events above what it showed, so it can bring no other event that low.
- A member down all along may hold events below a snapshot that it made (an address change at
  its restart, an admin act it took just before it went down). Those are *orphans*: when that
  member adopts the snapshot, the events it recorded that the snapshot does not hold are recorded
  again above it (`orphaned_events`); only their origin does that, once, so every node still
  agrees. Such an event then applies after the snapshot's events rather than among them; nothing
  is lost. Other nodes drop their copies with the rest of what is below the snapshot.
- Which events of an origin a snapshot holds is told by `covered` (its highest stamp per origin):
  an origin's events reach the others in stamp order (an exchange sends all it holds), so those
  at or below it are in. The one exception: a node that lost its newest event in a crash before
  storing it, after a peer saw it, and then stamped a new event alike; the new one counts as held.
- Adopting a snapshot folded from exactly the events a node holds below it (same parent, same
  `folded` digest) replays nothing: the node's fold is rebased onto it.

Formats (`encode`, `decode`): format 1 is [1, params, events of 5 fields], what nodes up to
70300c4 read and write; a membership with no snapshot and no location is still written so.
Format 2 is [2, params, snapshot or null, events of 6 fields]. A node reads both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import cbor2

from dynd.core.limits import Limits
from dynd.core.member_events import (
    ADDRESS,
    DIGEST_BYTES,
    EMPTY_SNAPSHOT,
    EVENT_KINDS,
    FORMAT_1_KINDS,
    JOIN,
    JOINED,
    LEAVE,
    LEAVING,
    LOCATION,
    REMOVE,
    REMOVED,
    ClusterParams,
    Member,
    MemberEvent,
    MembershipError,
    Snapshot,
    check_member_location,
    events_digest,
    parse_event,
)
from dynd.core.membership_fold import Fold, extend, rebased, start, state_at
from dynd.core.partition import check_partition_count
from dynd.core.ring import Ring
from dynd.protocol.codec import loads_strict
from dynd.protocol.errors import DynError

__all__ = [
    "ADDRESS", "EVENT_KINDS", "JOIN", "JOINED", "LEAVE", "LEAVING", "LOCATION", "REMOVE", "REMOVED",
    "ClusterParams", "Member", "MemberEvent", "Membership", "MembershipDelta", "MembershipError", "Snapshot",
    "create", "orphaned_events",
]  # fmt: skip

MEMBERSHIP_FORMAT = 2
_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Membership:
    params: ClusterParams
    events: frozenset[MemberEvent] = field(default_factory=frozenset)  # all above base.stamp
    base: Snapshot = EMPTY_SNAPSHOT
    # What this value's fold grows from: the membership it was made from (same snapshot, a subset
    # of its events), or (events, fold) already made; None: fold from the snapshot. Dropped once
    # the fold is made, so a long line of values does not hold its ancestors.
    _seed: Any = field(default=None, compare=False, repr=False)

    # ---- derived state, computed once per value ----

    @cached_property
    def ordered_events(self) -> tuple[MemberEvent, ...]:
        return tuple(sorted(self.events))

    @cached_property
    def _fold(self) -> Fold:
        pending: list[Membership] = []  # values whose fold is still to make, newest first
        value = self
        while "_fold" not in value.__dict__:
            pending.append(value)
            if not isinstance(value._seed, Membership):
                break
            value = value._seed
        for value in reversed(pending):
            value.__dict__["_fold"] = value._grow_fold()
            object.__setattr__(value, "_seed", None)
        return self.__dict__["_fold"]  # type: ignore[no-any-return]

    def _grow_fold(self) -> Fold:
        seed = self._seed
        if isinstance(seed, Membership):
            seed_events, seed_fold = seed.events, seed.__dict__["_fold"]
        elif seed is not None:
            seed_events, seed_fold = seed
        else:
            seed_events, seed_fold = frozenset(), None
        if seed_fold is None or seed_fold.base.digest != self.base.digest or not seed_events <= self.events:
            seed_events, seed_fold = frozenset(), start(self.base, partitions=self.params.partitions, n_replicas=self.params.n)
        return extend(seed_fold, self.events - seed_events)

    @property
    def members(self) -> dict[str, Member]:
        """Every member ever joined, by name (the caller must not change the dict)."""
        return self._fold.members

    @property
    def ring(self) -> Ring | None:
        return self._fold.ring

    @property
    def locations(self) -> dict[str, str]:
        """The location of each member that owns partitions (joined), "" when unknown: what claim places by."""
        return {name: m.location for name, m in self.members.items() if m.status == JOINED}

    @cached_property
    def stamp(self) -> int:
        """The highest stamp this membership holds (its snapshot's included)."""
        return max((e.stamp for e in self.events), default=self.base.stamp)

    @cached_property
    def digest(self) -> bytes:
        """Equal for equal memberships (same snapshot, same events above it): gossip compares
        digests first and moves events only when they differ."""
        return hashlib.blake2b(
            cbor2.dumps([self.params.cluster_id, self.base.digest, [e.to_plain() for e in self.ordered_events]]),
            digest_size=DIGEST_BYTES,
        ).digest()

    def address_of(self, name: str) -> str | None:
        member = self.members.get(name)
        return member.address if member is not None else None

    def active(self) -> list[Member]:
        """Members that serve requests: joined or leaving."""
        return [m for m in self.members.values() if m.status != REMOVED]

    @property
    def all_located(self) -> bool:
        """Every active member has a known location: the cluster records locations (and every
        member runs a dynd that reads them)."""
        return all(m.location for m in self.active())

    def location_for_join(self, location: str) -> str:
        """The location a join into this membership carries: `location`, when the cluster records
        locations already; else "" (nodes of 70300c4 or before may still be members, and they
        cannot read a location: it follows as a location event once they are gone)."""
        return location if self.all_located else ""

    # ---- changes ----

    def with_event(self, kind: str, member: str, origin: str, address: str = "", location: str = "") -> Membership:
        if kind not in EVENT_KINDS:
            raise MembershipError(f"unknown membership change {kind!r}")
        if kind != JOIN and member not in self.members:
            raise MembershipError(f"{member!r} is not a member of this cluster")
        if kind == ADDRESS and not address:
            raise MembershipError(f"an address change of {member!r} needs the new address")
        if kind == LOCATION and not location:
            raise MembershipError(f"a location change of {member!r} needs the new location")
        check_member_location(location, f"location of {member!r}")
        event = MemberEvent(self.stamp + 1, origin, kind, member, address, location)
        return Membership(self.params, self.events | {event}, self.base, _seed=self)

    def at_address(self, member: str, address: str) -> Membership:
        """This membership with `member` (an active member) at `address`: itself when the member
        is there already or is not active, else with one address event more, recorded by the member."""
        held = self.members.get(member)
        if held is None or held.status == REMOVED or held.address == address:
            return self
        return self.with_event(ADDRESS, member, origin=member, address=address)

    def at_location(self, member: str, location: str) -> Membership:
        """This membership with `member` (an active member) at `location`: itself when the member
        is there already, is not active or `location` is unknown (""), else with one location
        event more, recorded by the member."""
        held = self.members.get(member)
        if not location or held is None or held.status == REMOVED or held.location == location:
            return self
        return self.with_event(LOCATION, member, origin=member, location=location)

    def again(self, event: MemberEvent) -> Membership:
        """`event` recorded anew above everything held (an orphan: see the rules above), by its
        own origin; this membership itself when the event no longer applies."""
        try:
            return self.with_event(event.kind, event.member, event.origin, event.address, event.location)
        except MembershipError:
            return self

    def merge(self, other: Membership) -> Membership:
        if other.params != self.params:
            raise MembershipError(
                f"membership of cluster {other.params.cluster_id} does not match cluster {self.params.cluster_id}"
            )
        if other.base.rank > self.base.rank:
            return other._over(self)
        if other.base.digest == self.base.digest:
            extra = other.events - self.events
        else:  # theirs is older: what it folded is in ours or was left out of ours for good
            floor = self.base.stamp
            extra = frozenset(e for e in other.events if e.stamp > floor) - self.events
        if not extra:
            return self
        return Membership(self.params, self.events | extra, self.base, _seed=self)

    def _over(self, older: Membership) -> Membership:
        """This membership merged with `older`, whose snapshot ranks lower."""
        base = self.base
        floor = base.stamp
        theirs_above = frozenset(e for e in older.events if e.stamp > floor)
        events = self.events | theirs_above
        seed: Any = self
        older_fold: Fold | None = older.__dict__.get("_fold")
        if "_fold" not in self.__dict__ and older_fold is not None and base.parent == older.base.digest:
            position = older_fold.position_of_stamp(floor)
            if events_digest(older_fold.order[:position]) == base.folded:
                seed = (theirs_above, rebased(older_fold, base, position))  # the snapshot is our own fold: no replay
        if events == self.events and seed is self:
            return self
        return Membership(self.params, events, base, _seed=seed)

    def compacted(self, stamp: int) -> Membership:
        """This membership with every event at or below `stamp` folded into a new snapshot
        (itself when there is none). The fold is kept: nothing is replayed."""
        fold = self._fold
        position = fold.position_of_stamp(stamp)
        if position == 0:
            return self
        folded = fold.order[:position]
        members, ring = state_at(fold, position)
        covered = dict(self.base.covered)
        for event in folded:
            covered[event.origin] = max(covered.get(event.origin, 0), event.stamp)
        snapshot = Snapshot(
            stamp=folded[-1].stamp,
            members=tuple(sorted(members.values(), key=lambda m: m.name)),
            ring=ring,
            covered=tuple(sorted(covered.items())),
            parent=self.base.digest,
            folded=events_digest(folded),
        )
        above = frozenset(fold.order[position:])
        return Membership(self.params, above, snapshot, _seed=(above, rebased(fold, snapshot, position)))

    # ---- what gossip sends ----

    def delta_for(self, their_rank: tuple[int, bytes]) -> MembershipDelta:
        """What a node whose snapshot has `their_rank` may lack: our snapshot when it outranks
        theirs, and our events that would survive a merge into theirs."""
        if self.base.rank > their_rank:
            return MembershipDelta(self.params, self.base, self.events)
        floor = their_rank[0]
        return MembershipDelta(self.params, None, frozenset(e for e in self.events if e.stamp > floor))

    def lacking(self, their_rank: tuple[int, bytes], their_events: frozenset[MemberEvent]) -> MembershipDelta | None:
        """What a node whose snapshot has `their_rank` and whose events above it are
        `their_events` lacks of ours; None when nothing."""
        if self.base.rank > their_rank:
            return MembershipDelta(self.params, self.base, self.events)
        floor = their_rank[0]
        missing = frozenset(e for e in self.events if e.stamp > floor) - their_events
        return MembershipDelta(self.params, None, missing) if missing else None

    def merge_delta(self, delta: MembershipDelta) -> Membership:
        if delta.snapshot is not None:
            return self.merge(Membership(delta.params, delta.events, delta.snapshot))
        floor = self.base.stamp
        return self.merge(Membership(delta.params, frozenset(e for e in delta.events if e.stamp > floor), self.base))

    # ---- encoding ----

    @cached_property
    def format(self) -> int:
        """1 when a node of 70300c4 or before can read this membership (no snapshot, no location), else 2."""
        return 1 if self.base.empty and all(e.kind in FORMAT_1_KINDS and not e.location for e in self.events) else 2

    @cached_property
    def _encoded(self) -> bytes:
        if self.format == 1:
            p = self.params
            return cbor2.dumps([1, [p.cluster_id, p.n, p.r, p.w, p.partitions], [e.to_plain()[:5] for e in self.ordered_events]])
        return MembershipDelta(self.params, None if self.base.empty else self.base, self.events).encode()

    def encode(self) -> bytes:
        """Format 1 when it can say everything (a node of 70300c4 or before reads it), else 2."""
        return self._encoded

    @staticmethod
    def decode(
        data: bytes, *, events_max: int = _DEFAULT_LIMITS.membership_events_max, members_max: int = _DEFAULT_LIMITS.membership_members_max
    ) -> Membership:
        """Parse a membership from a peer or from disk; anything malformed raises MembershipError."""
        delta = MembershipDelta.decode(data, events_max=events_max, members_max=members_max)
        return Membership(delta.params, delta.events, delta.snapshot or EMPTY_SNAPSHOT)


@dataclass(frozen=True)
class MembershipDelta:
    """Part of a membership, as gossip sends it: maybe the snapshot (None: not sent), and events."""

    params: ClusterParams
    snapshot: Snapshot | None
    events: frozenset[MemberEvent]

    def encode(self) -> bytes:
        p = self.params
        return cbor2.dumps(
            [
                MEMBERSHIP_FORMAT,
                [p.cluster_id, p.n, p.r, p.w, p.partitions],
                self.snapshot.to_plain() if self.snapshot is not None else None,
                [e.to_plain() for e in sorted(self.events)],
            ]
        )

    @staticmethod
    def decode(
        data: bytes, *, events_max: int = _DEFAULT_LIMITS.membership_events_max, members_max: int = _DEFAULT_LIMITS.membership_members_max
    ) -> MembershipDelta:
        """Parse either format; MembershipError for anything malformed or too large."""
        try:
            item = loads_strict(data)
        except DynError as exc:
            raise MembershipError(f"malformed membership: {exc.message}") from None
        if type(item) is not list or not item or type(item[0]) is not int:
            raise MembershipError("malformed membership: not [format, ...]")
        fmt = item[0]
        if fmt not in (1, 2):
            raise MembershipError(f"unsupported membership format {fmt} (written by a newer dynd?)")
        if len(item) != (3 if fmt == 1 else 4):
            raise MembershipError(f"malformed membership: format {fmt} has {3 if fmt == 1 else 4} parts")
        raw_params, raw_events = item[1], item[-1]
        if type(raw_params) is not list or len(raw_params) != 5 or type(raw_params[0]) is not str or not all(type(x) is int for x in raw_params[1:]):
            raise MembershipError("malformed membership: params are [cluster id, N, R, W, Q]")
        params = ClusterParams(*raw_params)
        try:
            check_partition_count(params.partitions)
        except ValueError as exc:
            raise MembershipError(f"malformed membership: {exc}") from None
        if type(raw_events) is not list:
            raise MembershipError("malformed membership: events must be a list")
        if len(raw_events) > events_max:
            raise MembershipError(f"membership holds {len(raw_events)} events, more than membership_events_max ({events_max})")
        snapshot = None
        if fmt == 2 and item[2] is not None:
            snapshot = Snapshot.from_plain(item[2], params.partitions, members_max)
        events = frozenset(parse_event(raw, format_1=fmt == 1) for raw in raw_events)
        floor = snapshot.stamp if snapshot is not None else 0
        if any(e.stamp <= floor for e in events):
            raise MembershipError("malformed membership: an event at or below its snapshot's stamp")
        return MembershipDelta(params, snapshot, events)


def orphaned_events(before: Membership, after: Membership, origin: str) -> list[MemberEvent]:
    """The events `origin` recorded that `before` held and `after` dropped under a snapshot that
    does not hold them (see the rules above): `origin` must record them again."""
    if before.params != after.params or after.base.digest == before.base.digest:
        return []
    floor, covered = after.base.stamp, after.base.covered_stamp(origin)
    return sorted(e for e in before.events if e.origin == origin and covered < e.stamp <= floor)


def create(params: ClusterParams, first: str, address: str, location: str = "") -> Membership:
    return Membership(params).with_event(JOIN, first, origin=first, address=address, location=location)
