"""What a membership is made of: cluster parameters, events, member records and snapshots.

Rules (the membership itself is `dynd.core.membership`; folding events is `membership_fold`):
- An event is (stamp, origin, kind, member, address, location); events sort by those fields in
  that order, and that order is the one every node folds them in.
- Kinds: join (member, address, location), leave, remove, address (the member's new address),
  location (the member's new location). A join carries the member's location when the whole
  cluster records locations (`Membership.location_for_join`); an address or location event is
  recorded by the member itself, about itself, and changes nothing but that field.
- Member status: joined -> leaving (leave) -> removed (remove), or joined -> removed; a join of a
  removed member brings it back. `apply_event` is the one place these transitions are written.
- A member's location is a path checked by `dynd.protocol.locations.check_location`, or "" when
  unknown (a membership written before locations existed, or a node given none).
- A snapshot stands for every event at or below its `stamp` that it folded in: the member table
  and the ring those events made, `covered` (per origin, the highest stamp of that origin's events
  it holds), `parent` (the digest of the snapshot it was folded onto) and `folded` (a digest of
  the events folded onto the parent). Snapshots rank by (stamp, digest): two nodes that compare
  the same two snapshots prefer the same one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import cbor2

from dynd.core.ring import Ring
from dynd.protocol.locations import LocationError, check_location

JOIN, LEAVE, REMOVE, ADDRESS, LOCATION = "join", "leave", "remove", "address", "location"
EVENT_KINDS = (JOIN, LEAVE, REMOVE, ADDRESS, LOCATION)
FORMAT_1_KINDS = (JOIN, LEAVE, REMOVE, ADDRESS)  # what a node of 70300c4 or before can read
JOINED, LEAVING, REMOVED = "joined", "leaving", "removed"
STATUSES = (JOINED, LEAVING, REMOVED)
DIGEST_BYTES = 16


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
    location: str = ""

    def to_plain(self) -> list[Any]:
        return [self.stamp, self.origin, self.kind, self.member, self.address, self.location]


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    address: str
    status: str
    location: str = ""  # "" : unknown


def check_member_location(location: str, what: str) -> str:
    """`location` when it is "" (unknown) or a valid path; MembershipError naming `what` otherwise."""
    if location == "":
        return location
    try:
        return check_location(location)
    except LocationError as exc:
        raise MembershipError(f"{what}: {exc}") from None


def apply_event(members: dict[str, Member], event: MemberEvent) -> None:
    """Fold one event into the member table (in place). An event about a member the table does
    not hold, other than a join, changes nothing; so does a leave of a member that is not joined."""
    held = members.get(event.member)
    kind = event.kind
    if kind == JOIN:
        members[event.member] = Member(event.member, event.address, JOINED, event.location)
    elif held is None:
        return
    elif kind == LEAVE:
        if held.status == JOINED:
            members[event.member] = Member(held.name, held.address, LEAVING, held.location)
    elif kind == REMOVE:
        members[event.member] = Member(held.name, held.address, REMOVED, held.location)
    elif kind == ADDRESS:
        members[event.member] = Member(held.name, event.address, held.status, held.location)
    elif kind == LOCATION:
        members[event.member] = Member(held.name, held.address, held.status, event.location)


def events_digest(events: Any) -> bytes:
    """A digest of events given in their fold order."""
    return hashlib.blake2b(cbor2.dumps([e.to_plain() for e in events]), digest_size=DIGEST_BYTES).digest()


@dataclass(frozen=True)
class Snapshot:
    stamp: int = 0  # 0: the empty snapshot, which stands for no event
    members: tuple[Member, ...] = ()  # sorted by name
    ring: Ring | None = None
    covered: tuple[tuple[str, int], ...] = ()  # (origin, highest stamp of its events held), sorted
    parent: bytes = b""  # digest of the snapshot this one was folded onto
    folded: bytes = b""  # events_digest of the events folded onto it
    _table: dict[str, Member] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_table", {m.name: m for m in self.members})

    @property
    def empty(self) -> bool:
        return self.stamp == 0

    def table(self) -> dict[str, Member]:
        """The member table, by name (the caller must not change it)."""
        return self._table

    def covered_stamp(self, origin: str) -> int:
        for name, stamp in self.covered:
            if name == origin:
                return stamp
        return 0

    def to_plain(self) -> list[Any]:
        return [
            self.stamp,
            [[m.name, m.address, m.status, m.location] for m in self.members],
            self.ring.to_plain() if self.ring is not None else None,
            [[origin, stamp] for origin, stamp in self.covered],
            self.parent,
            self.folded,
        ]

    @cached_property
    def digest(self) -> bytes:
        if self.empty:
            return b""
        return hashlib.blake2b(cbor2.dumps(self.to_plain()), digest_size=DIGEST_BYTES).digest()

    @property
    def rank(self) -> tuple[int, bytes]:
        """Of two snapshots, a merge keeps the one of higher rank."""
        return self.stamp, self.digest

    @staticmethod
    def from_plain(plain: Any, partitions: int, members_max: int) -> Snapshot:
        """The inverse of `to_plain`; MembershipError on anything but a well-formed snapshot."""
        if type(plain) is not list or len(plain) != 6:
            raise MembershipError("a snapshot is [stamp, members, ring, covered, parent, folded]")
        stamp, raw_members, raw_ring, raw_covered, parent, folded = plain
        if type(stamp) is not int or stamp < 1:
            raise MembershipError("a snapshot's stamp must be a positive integer")
        if type(raw_members) is not list or len(raw_members) > members_max:
            raise MembershipError(f"a snapshot holds a list of at most {members_max} members")
        members = tuple(_parse_member(raw) for raw in raw_members)
        names = [m.name for m in members]
        if any(a >= b for a, b in zip(names, names[1:])):
            raise MembershipError("a snapshot's members must be sorted by name, each once")
        ring = None
        if raw_ring is None and any(m.status == JOINED for m in members):
            raise MembershipError("a snapshot with joined members needs their ring")
        if raw_ring is not None:
            try:
                ring = Ring.from_plain(raw_ring)
            except (TypeError, ValueError) as exc:
                raise MembershipError(f"a snapshot's ring: {exc}") from None
            if ring.partitions != partitions:
                raise MembershipError(f"a snapshot's ring has {ring.partitions} partitions, the cluster {partitions}")
            joined = {m.name for m in members if m.status == JOINED}
            if not set(ring.nodes) <= {m.name for m in members} or (joined and not set(ring.nodes) <= joined):
                raise MembershipError("a snapshot's ring names nodes that are not its joined members")
        if type(raw_covered) is not list or len(raw_covered) > members_max:
            raise MembershipError("a snapshot's covered stamps must be a list")
        covered = []
        for entry in raw_covered:
            if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not str or type(entry[1]) is not int or not 0 < entry[1] <= stamp:
                raise MembershipError("a snapshot's covered stamp is [origin, stamp] with 0 < stamp <= the snapshot's")
            covered.append((entry[0], entry[1]))
        if any(a[0] >= b[0] for a, b in zip(covered, covered[1:])):
            raise MembershipError("a snapshot's covered stamps must be sorted by origin, each once")
        if type(parent) is not bytes or len(parent) not in (0, DIGEST_BYTES) or type(folded) is not bytes or len(folded) != DIGEST_BYTES:
            raise MembershipError("a snapshot's parent and folded digests must be 16 bytes (parent: or none)")
        return Snapshot(stamp, members, ring, tuple(covered), parent, folded)


EMPTY_SNAPSHOT = Snapshot()


def _parse_member(raw: Any) -> Member:
    if type(raw) is not list or len(raw) != 4 or not all(type(x) is str for x in raw):
        raise MembershipError("a snapshot's member is [name, address, status, location], all strings")
    name, address, status, location = raw
    if status not in STATUSES:
        raise MembershipError(f"a snapshot's member {name!r} has no status {status!r}")
    return Member(name, address, status, check_member_location(location, f"location of {name!r}"))


def parse_event(raw: Any, *, format_1: bool) -> MemberEvent:
    """One event as it travels: [stamp, origin, kind, member, address] in format 1, plus the
    location in format 2; MembershipError for anything else."""
    if type(raw) is not list or len(raw) != (5 if format_1 else 6):
        raise MembershipError("malformed membership event")
    stamp, origin, kind, member, address, *rest = raw
    location = rest[0] if rest else ""
    if (
        type(stamp) is not int
        or stamp < 1
        or not all(type(x) is str for x in (origin, kind, member, address, location))
        or kind not in (FORMAT_1_KINDS if format_1 else EVENT_KINDS)
    ):
        raise MembershipError("malformed membership event")
    if kind == LOCATION and not location:
        raise MembershipError(f"a location event of {member!r} needs the location")
    return MemberEvent(stamp, origin, kind, member, address, check_member_location(location, f"location of {member!r}"))
