"""What a node knows of the other members' memberships, from gossip: when events are settled.

Rules:
- An acknowledgement (member, stamp, when) says: at `when`, this node held every event `member`
  held, and `member`'s highest stamp was `stamp`. It is recorded after an exchange in which this
  node took in all the member held (its reply with its events, or its push), or found the two
  digests equal. A member stamps its next events above what it holds, so from then on it can add
  no event at or below `stamp` that this node lacks; the acknowledgement stays true.
- The compactor is the first joined member by name: every node can tell which one it is, so
  only one node makes snapshots (two nodes briefly disagreeing is safe: see dynd.core.membership).
- Settled stamp (the compactor only): the lowest of its own stamp and the acknowledged stamps of
  the active members it heard from within `membership_settle_ms`; those must be a majority of the
  active members (a compactor cut off in a minority makes no snapshot). A member not heard within
  that time counts as down: events only it holds are recorded again by their origin after the
  snapshot (the orphans of dynd.core.membership). Nothing is settled while any member speaks the
  gossip of 70300c4 or before (it could not read a snapshot), so neither is heard within that time.
- A node records its own location only once every other active member either has a location
  already or has spoken digest-first gossip to it since it started, or, failing that (a member
  that is down holds it back), once it has run for `membership_settle_ms` without hearing any
  gossip of 70300c4 or before (requests, or refusals of a summary) in that time: such a node
  cannot read a location event, and gossip with it would stop until it is upgraded.
- A gossip target that refused a summary is gossiped with the old way until it speaks digest
  first itself (it was upgraded).
"""

from __future__ import annotations

from dynd.core.limits import Limits
from dynd.core.membership import JOINED, Membership


class PeerKnowledge:
    def __init__(self, limits: Limits, started_ms: int) -> None:
        self.limits = limits
        self.started_ms = started_ms
        self.acks: dict[str, tuple[int, int]] = {}  # member -> (acknowledged stamp, when heard, ms)
        self.digest_speakers: set[str] = set()  # members that spoke digest-first gossip since start
        self.old_targets: dict[str, bool] = {}  # gossip targets of an older dynd -> told the operator it cannot read ours
        self.old_heard_ms: int | None = None  # when gossip of an older dynd (or a refusal of ours) last came

    def acknowledged(self, member: str, stamp: int, now_ms: int) -> None:
        self.acks[member] = (stamp, now_ms)

    def spoke_digests(self, member: str) -> None:
        self.digest_speakers.add(member)
        self.old_targets.pop(member, None)

    def heard_old(self, now_ms: int) -> None:
        self.old_heard_ms = now_ms

    def _old_heard_within(self, now_ms: int) -> bool:
        return self.old_heard_ms is not None and now_ms - self.old_heard_ms < self.limits.membership_settle_ms

    def settled_stamp(self, membership: Membership, me: str, now_ms: int) -> int | None:
        """The stamp at and below which events are settled (see the rules above), or None while
        this node may not compact."""
        owners = [name for name, m in membership.members.items() if m.status == JOINED]
        if not owners or min(owners) != me:
            return None
        window = self.limits.membership_settle_ms
        if self._old_heard_within(now_ms):
            return None
        others = [m.name for m in membership.active() if m.name != me]
        if any(name in self.old_targets for name in others):
            return None
        heard = [self.acks[name][0] for name in others if name in self.acks and now_ms - self.acks[name][1] < window]
        if 2 * (len(heard) + 1) <= len(others) + 1:
            return None
        return min([membership.stamp, *heard])

    def may_record_location(self, membership: Membership, me: str, now_ms: int) -> bool:
        if not self.waiting_for(membership, me):
            return True
        return now_ms - self.started_ms >= self.limits.membership_settle_ms and not self._old_heard_within(now_ms)

    def waiting_for(self, membership: Membership, me: str) -> list[str]:
        """The members a location waits to hear from (see the rules above)."""
        return sorted(m.name for m in membership.active() if m.name != me and not m.location and m.name not in self.digest_speakers)
