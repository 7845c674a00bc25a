"""Folding membership events into a member table and a ring, one new event at a time.

Rules:
- The state a membership stands for is its snapshot's table and ring with the events above the
  snapshot applied in sorted order, one at a time (`apply_event`), and `claim` run after each
  event that changes who owns partitions: a member becoming or ceasing to be joined, or a joined
  member's location changing. Every node that folds the same snapshot and events gets an equal
  table and an equal ring, because claim is deterministic (claim.py rule 1).
- A `Fold` is that state plus what makes the next one cheap: the events applied, in order; the
  ring after each; and a checkpoint (table and ring) every `CHECKPOINT_EVENTS` events (the latest
  `CHECKPOINTS_MAX` of them, and the snapshot itself, which is always one).
- Events that sort after the last applied one are applied onto the current state: at most one
  claim per event. A late event, sorting before some applied one, replays from the nearest
  checkpoint before it: fewer than `CHECKPOINT_EVENTS` of the applied events, and those after it.
  The result is the same as replaying everything from the snapshot; only the cost differs.
- A fold never changes once made; a longer fold shares the checkpoints and rings of the one it
  grew from. `rebased` drops the first events of a fold onto a snapshot that stands for them.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from dynd.core.claim import claim
from dynd.core.member_events import JOINED, Member, MemberEvent, Snapshot, apply_event
from dynd.core.ring import Ring

CHECKPOINT_EVENTS = 16
CHECKPOINTS_MAX = 32


@dataclass(frozen=True, slots=True)
class Checkpoint:
    position: int  # how many of the fold's events are applied
    members: dict[str, Member]  # never changed after it is made
    ring: Ring | None


@dataclass(frozen=True, slots=True)
class Fold:
    base: Snapshot
    order: tuple[MemberEvent, ...]  # the events applied, sorted
    rings: tuple[Ring | None, ...]  # the ring after each of them
    checkpoints: tuple[Checkpoint, ...]  # by position; the first is the snapshot (position 0)
    members: dict[str, Member]  # the table after every event (never changed after the fold is made)
    ring: Ring | None
    partitions: int
    n_replicas: int

    @property
    def last(self) -> MemberEvent | None:
        return self.order[-1] if self.order else None

    def position_of_stamp(self, stamp: int) -> int:
        """How many applied events have a stamp at or below `stamp` (they come first)."""
        return bisect_right(self.order, stamp, key=lambda e: e.stamp)


def start(base: Snapshot, *, partitions: int, n_replicas: int) -> Fold:
    table = base.table()
    return Fold(base, (), (), (Checkpoint(0, table, base.ring),), table, base.ring, partitions, n_replicas)


def extend(fold: Fold, events: Iterable[MemberEvent]) -> Fold:
    """`fold` with `events` (none of them applied yet) folded in, as if replayed from the snapshot."""
    new = sorted(events)
    if not new:
        return fold
    if not fold.order or new[0] > fold.order[-1]:
        return _replay(fold, len(fold.order), fold.members, fold.ring, fold.checkpoints, new)
    # A late event: go back to the last checkpoint at or before the first applied event it precedes.
    first = new[0]
    index = len(fold.checkpoints) - 1
    while index > 0 and fold.order[fold.checkpoints[index].position - 1] >= first:
        index -= 1
    checkpoint = fold.checkpoints[index]
    rest = list(heapq.merge(fold.order[checkpoint.position :], new))
    return _replay(fold, checkpoint.position, checkpoint.members, checkpoint.ring, fold.checkpoints[: index + 1], rest)


def _owning(member: Member | None) -> tuple[str] | None:
    """What claim sees of one member: its location when it owns partitions (joined), else nothing."""
    return (member.location,) if member is not None and member.status == JOINED else None


def _claim(ring: Ring | None, members: dict[str, Member], partitions: int, n_replicas: int) -> Ring | None:
    owners = sorted(name for name, member in members.items() if member.status == JOINED)
    if not owners:  # no one to own anything: keep the ring the last owners had
        return ring
    return claim(ring, owners, partitions=partitions, n_replicas=n_replicas, locations={name: members[name].location for name in owners})


def _replay(
    fold: Fold,
    position: int,
    members_at: dict[str, Member],
    ring: Ring | None,
    checkpoints: tuple[Checkpoint, ...],
    events: list[MemberEvent],
) -> Fold:
    """Apply `events` (sorted) onto the state `fold` had after its first `position` events."""
    members = dict(members_at)
    order = list(fold.order[:position])
    rings = list(fold.rings[:position])
    kept = list(checkpoints)
    partitions, n_replicas = fold.partitions, fold.n_replicas
    for event in events:
        before = _owning(members.get(event.member))
        apply_event(members, event)
        if _owning(members.get(event.member)) != before:
            ring = _claim(ring, members, partitions, n_replicas)
        order.append(event)
        rings.append(ring)
        if len(order) % CHECKPOINT_EVENTS == 0:
            kept.append(Checkpoint(len(order), dict(members), ring))
            if len(kept) > CHECKPOINTS_MAX + 1:
                del kept[1]  # the oldest but the snapshot: late events rarely reach that far back
    return Fold(fold.base, tuple(order), tuple(rings), tuple(kept), members, ring, partitions, n_replicas)


def state_at(fold: Fold, position: int) -> tuple[dict[str, Member], Ring | None]:
    """The table and ring after the first `position` events, without running claim: the ring
    after each event is kept, and the table is replayed from the checkpoint before it."""
    index = bisect_right([c.position for c in fold.checkpoints], position) - 1
    checkpoint = fold.checkpoints[index]
    members = dict(checkpoint.members)
    for event in fold.order[checkpoint.position : position]:
        apply_event(members, event)
    ring = fold.rings[position - 1] if position else fold.base.ring
    return members, ring


def rebased(fold: Fold, snapshot: Snapshot, position: int) -> Fold:
    """`fold` with its first `position` events replaced by `snapshot`, which stands for exactly
    them (the same table and ring they made): nothing is replayed."""
    checkpoints = (Checkpoint(0, snapshot.table(), snapshot.ring),) + tuple(
        Checkpoint(c.position - position, c.members, c.ring) for c in fold.checkpoints if c.position > position
    )
    return Fold(snapshot, fold.order[position:], fold.rings[position:], checkpoints, fold.members, fold.ring, fold.partitions, fold.n_replicas)
