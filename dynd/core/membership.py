"""Cluster membership: a grow-only set of admin events from which every node derives the ring.

Rules:
- The first node creates the cluster: its parameters (cluster id, N, R, W, Q) are fixed then and
  travel with the membership. Memberships of different clusters never merge.
- Each admin act adds one event: join (member, address), leave (member), remove (member). Events
  never change or disappear, so two nodes merge by set union and gossip converges.
- A member that starts at another address than the membership holds for it (a new `advertise`)
  adds an address event (member, address): it changes that member's address and nothing else, so
  the ring and every status stay as they were. Only the member itself records one.
- The node that records an event stamps it with one more than the highest stamp it has seen.
  Every node orders events by (stamp, origin, kind, member) and folds them into the same member
  table and the same ring: concurrent changes made on different nodes reconcile deterministically,
  even when a late event sorts before ones already applied (the fold simply runs again).
- Member status: joined -> leaving (leave) -> removed (remove), or joined -> removed. Only joined
  members own partitions. A leaving member still serves and hands its data to the new owners, then
  records its own removal. A later join of a removed member brings it back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import cbor2

from dynd.core.claim import claim
from dynd.core.ring import Ring

MEMBERSHIP_FORMAT = 1
JOIN, LEAVE, REMOVE, ADDRESS = "join", "leave", "remove", "address"
EVENT_KINDS = (JOIN, LEAVE, REMOVE, ADDRESS)
JOINED, LEAVING, REMOVED = "joined", "leaving", "removed"


class MembershipError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ClusterParams:
    cluster_id: str
    n: int
    r: int
    w: int
    partitions: int

    def __post_init__(self) -> None:
        if not 1 <= self.r <= self.n or not 1 <= self.w <= self.n:
            raise MembershipError(f"need 1 <= R, W <= N; got N={self.n} R={self.r} W={self.w}")


@dataclass(frozen=True, slots=True, order=True)
class MemberEvent:
    stamp: int
    origin: str
    kind: str
    member: str
    address: str = ""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    address: str
    status: str


@dataclass(frozen=True)
class Membership:
    params: ClusterParams
    events: frozenset[MemberEvent] = field(default_factory=frozenset)

    # ---- derived state, computed once per value ----

    @cached_property
    def ordered_events(self) -> tuple[MemberEvent, ...]:
        return tuple(sorted(self.events))

    @cached_property
    def _fold(self) -> tuple[dict[str, Member], Ring | None]:
        members: dict[str, Member] = {}
        ring: Ring | None = None
        for event in self.ordered_events:
            before = _owners(members)
            held = members.get(event.member)
            if event.kind == JOIN:
                members[event.member] = Member(event.member, event.address, JOINED)
            elif held is not None and event.kind == LEAVE and held.status == JOINED:
                members[event.member] = Member(held.name, held.address, LEAVING)
            elif held is not None and event.kind == REMOVE:
                members[event.member] = Member(held.name, held.address, REMOVED)
            elif held is not None and event.kind == ADDRESS:
                members[event.member] = Member(held.name, event.address, held.status)
            after = _owners(members)
            if after != before and after:
                ring = claim(ring, after, partitions=self.params.partitions, n_replicas=self.params.n)
        return members, ring

    @property
    def members(self) -> dict[str, Member]:
        return self._fold[0]

    @property
    def ring(self) -> Ring | None:
        return self._fold[1]

    @cached_property
    def stamp(self) -> int:
        return max((e.stamp for e in self.events), default=0)

    @cached_property
    def digest(self) -> bytes:
        """Equal for equal memberships: gossip sends the whole membership only when digests differ."""
        return hashlib.blake2b(self.encode(), digest_size=16).digest()

    def address_of(self, name: str) -> str | None:
        member = self.members.get(name)
        return member.address if member is not None else None

    def active(self) -> list[Member]:
        """Members that serve requests: joined or leaving."""
        return [m for m in self.members.values() if m.status != REMOVED]

    # ---- changes ----

    def with_event(self, kind: str, member: str, origin: str, address: str = "") -> Membership:
        if kind not in EVENT_KINDS:
            raise MembershipError(f"unknown membership change {kind!r}")
        if kind != JOIN and member not in self.members:
            raise MembershipError(f"{member!r} is not a member of this cluster")
        if kind == ADDRESS and not address:
            raise MembershipError(f"an address change of {member!r} needs the new address")
        event = MemberEvent(self.stamp + 1, origin, kind, member, address)
        return Membership(self.params, self.events | {event})

    def at_address(self, member: str, address: str) -> Membership:
        """This membership with `member` (an active member) at `address`: itself when the member
        is there already or is not active, else with one address event more, recorded by the member."""
        held = self.members.get(member)
        if held is None or held.status == REMOVED or held.address == address:
            return self
        return self.with_event(ADDRESS, member, origin=member, address=address)

    def merge(self, other: Membership) -> Membership:
        if other.params != self.params:
            raise MembershipError(
                f"membership of cluster {other.params.cluster_id} does not match cluster {self.params.cluster_id}"
            )
        if other.events <= self.events:
            return self
        if self.events <= other.events:
            return other
        return Membership(self.params, self.events | other.events)

    # ---- encoding ----

    def encode(self) -> bytes:
        p = self.params
        return cbor2.dumps(
            [
                MEMBERSHIP_FORMAT,
                [p.cluster_id, p.n, p.r, p.w, p.partitions],
                [[e.stamp, e.origin, e.kind, e.member, e.address] for e in self.ordered_events],
            ]
        )

    @staticmethod
    def decode(data: bytes, *, events_max: int = 100_000) -> Membership:
        """Parse a membership from a peer or from disk; anything malformed raises MembershipError."""
        try:
            fmt, raw_params, raw_events = cbor2.loads(data)
            if fmt != MEMBERSHIP_FORMAT or len(raw_events) > events_max:
                raise MembershipError("unsupported membership format")
            cluster_id, n, r, w, partitions = raw_params
            params = ClusterParams(str(cluster_id), int(n), int(r), int(w), int(partitions))
            events = frozenset(_parse_event(raw) for raw in raw_events)
        except MembershipError:
            raise
        except Exception as exc:
            raise MembershipError(f"malformed membership: {exc}") from None
        return Membership(params, events)


def _parse_event(raw: Any) -> MemberEvent:
    stamp, origin, kind, member, address = raw
    if type(stamp) is not int or not all(type(x) is str for x in (origin, kind, member, address)) or kind not in EVENT_KINDS:
        raise MembershipError("malformed membership event")
    return MemberEvent(stamp, origin, kind, member, address)


def _owners(members: dict[str, Member]) -> list[str]:
    return sorted(name for name, m in members.items() if m.status == JOINED)


def create(params: ClusterParams, first: str, address: str) -> Membership:
    return Membership(params).with_event(JOIN, first, origin=first, address=address)
