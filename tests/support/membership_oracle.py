"""The membership fold written the plain way, as before issue 17: every event replayed from an
empty ring (or from a snapshot's table and ring), in sorted order, claim after each event that
changes the owners. Tests compare the incremental fold and snapshots against it."""

from __future__ import annotations

from collections.abc import Iterable

from dynd.core import membership_fold
from dynd.core.member_events import EMPTY_SNAPSHOT, JOINED, Member, MemberEvent, Snapshot, apply_event
from dynd.core.membership import ClusterParams
from dynd.core.ring import Ring


def replayed(params: ClusterParams, events: Iterable[MemberEvent], base: Snapshot = EMPTY_SNAPSHOT) -> tuple[dict[str, Member], Ring | None]:
    members = dict(base.table())
    ring = base.ring
    for event in sorted(events):
        before = {(name, m.location) for name, m in members.items() if m.status == JOINED}
        apply_event(members, event)
        after = {(name, m.location) for name, m in members.items() if m.status == JOINED}
        if after != before and after:
            ring = membership_fold.claim(
                ring, sorted(name for name, _ in after), partitions=params.partitions, n_replicas=params.n, locations=dict(after)
            )
    return members, ring


class ClaimCounter:
    """Counts the claims the fold runs (install with monkeypatch over membership_fold.claim)."""

    def __init__(self) -> None:
        self.calls = 0
        self._claim = membership_fold.claim

    def __call__(self, *args: object, **kwargs: object) -> Ring:
        self.calls += 1
        return self._claim(*args, **kwargs)  # type: ignore[arg-type]
