"""The incremental fold, locations, snapshots and the two formats of a membership (issue 17)."""

from __future__ import annotations

import random

import cbor2
import pytest

from dynd.core import membership_fold
from dynd.core.member_events import EMPTY_SNAPSHOT, Snapshot
from dynd.core.membership import (
    ADDRESS,
    JOIN,
    JOINED,
    LEAVE,
    LOCATION,
    REMOVE,
    ClusterParams,
    MemberEvent,
    Membership,
    MembershipDelta,
    MembershipError,
    create,
    orphaned_events,
)
from tests.support.membership_oracle import ClaimCounter, replayed

PARAMS = ClusterParams("c1", n=3, r=2, w=2, partitions=64)


def joined(count: int, *, located: bool = False) -> Membership:
    membership = Membership(PARAMS)
    for i in range(count):
        name = f"m{i:03d}"
        membership = membership.with_event(JOIN, name, origin=name, address=f"{name}:1", location=f"z{i % 3}/h{i}" if located else "")
    return membership


@pytest.fixture
def claims(monkeypatch: pytest.MonkeyPatch) -> ClaimCounter:
    counter = ClaimCounter()
    monkeypatch.setattr(membership_fold, "claim", counter)
    return counter


# ---- the fold ----


def test_joins_arriving_one_at_a_time_cost_one_claim_each(claims: ClaimCounter) -> None:
    membership = joined(1)
    membership.ring
    for i in range(1, 40):
        membership = membership.with_event(JOIN, f"x{i}", origin=f"x{i}", address="x:1")
        assert membership.ring is not None
    assert claims.calls == 40, "one claim per join, not a replay of the history"
    assert membership.ring == replayed(PARAMS, membership.events)[1]


def test_an_address_change_runs_no_claim_and_a_location_change_does(claims: ClaimCounter) -> None:
    membership = joined(5)
    ring = membership.ring
    before = claims.calls
    moved = membership.at_address("m001", "m001:2")
    assert moved.ring is ring and claims.calls == before
    placed = moved.at_location("m001", "zone-b/host-1")
    assert placed.ring is not None and claims.calls == before + 1
    assert placed.locations["m001"] == "zone-b/host-1" and placed.locations["m000"] == ""


def test_a_late_event_replays_from_the_checkpoint_before_it_not_from_the_start(claims: ClaimCounter) -> None:
    membership = joined(64)  # stamps 1..64, checkpoints after 16, 32 and 48 events
    membership.ring
    late = Membership(PARAMS, frozenset({MemberEvent(50, "late", JOIN, "late", "late:1")}))  # sorts just before m049
    before = claims.calls
    merged = membership.merge(late)
    assert merged.ring is not None
    # back to the checkpoint after 48 events: m048, the late join, m049..m063
    assert claims.calls - before == 64 - 48 + 1
    early = Membership(PARAMS, frozenset({MemberEvent(2, "early", JOIN, "early", "early:1")}))
    before = claims.calls
    both = merged.merge(early)
    assert both.ring is not None
    assert claims.calls - before == 66, "before the first checkpoint: everything, from the snapshot"
    assert (both.members, both.ring) == replayed(PARAMS, both.events)


def test_every_arrival_order_folds_to_the_plain_replay() -> None:
    rng = random.Random(5)
    full = joined(8)
    full = full.with_event(LEAVE, "m002", origin="m000").with_event(REMOVE, "m005", origin="m001").at_location("m003", "a/b")
    full = full.with_event(JOIN, "m005", origin="m005", address="m005:9", location="q/r").at_address("m004", "m004:2")
    events = list(full.events)
    expected = replayed(PARAMS, events)
    for _ in range(20):
        rng.shuffle(events)
        membership = Membership(PARAMS)
        for start in range(0, len(events), 3):
            membership = membership.merge(Membership(PARAMS, frozenset(events[start : start + 3])))
            membership.ring
        assert (membership.members, membership.ring) == expected


# ---- locations ----


def test_a_join_carries_its_location_only_when_every_active_member_has_one() -> None:
    located = create(PARAMS, "a", "a:1", "zone-a/h1")
    assert located.all_located and located.location_for_join("zone-b/h2") == "zone-b/h2"
    unlocated = create(PARAMS, "a", "a:1")
    assert not unlocated.all_located and unlocated.location_for_join("zone-b/h2") == ""
    assert located.members["a"].location == "zone-a/h1"


def test_bad_locations_are_refused() -> None:
    with pytest.raises(MembershipError, match="location"):
        create(PARAMS, "a", "a:1", "zone a")
    with pytest.raises(MembershipError, match="needs the new location"):
        joined(2).with_event(LOCATION, "m000", origin="m000")
    assert joined(2).at_location("m000", "") == joined(2), "an unknown location records nothing"


# ---- formats ----


def test_a_membership_without_snapshot_or_location_is_written_in_format_1_as_70300c4_wrote_it() -> None:
    membership = joined(3).with_event(LEAVE, "m001", origin="m000").at_address("m002", "m002:2")
    plain = cbor2.loads(membership.encode())
    assert plain[0] == 1 and all(len(event) == 5 for event in plain[2])
    assert plain[2] == [[e.stamp, e.origin, e.kind, e.member, e.address] for e in membership.ordered_events]
    assert Membership.decode(membership.encode()) == membership


def test_locations_and_snapshots_need_format_2_and_round_trip() -> None:
    located = joined(4, located=True)
    assert located.format == 2 and Membership.decode(located.encode()) == located
    compacted = joined(6).compacted(4)
    assert compacted.format == 2 and compacted.base.stamp == 4 and len(compacted.events) == 2
    back = Membership.decode(compacted.encode())
    assert back == compacted and back.digest == compacted.digest
    assert (back.members, back.ring) == (compacted.members, compacted.ring)


def _garbled_snapshot(change: str) -> bytes:
    membership = joined(4).compacted(3)
    plain = cbor2.loads(membership.encode())
    snapshot = plain[2]
    if change == "unsorted members":
        snapshot[1].reverse()
    elif change == "ring of strangers":
        snapshot[2][0] = ["x1", "x2", "x3"]
    elif change == "status":
        snapshot[1][0][2] = "asleep"
    elif change == "event below":
        plain[3].append([2, "m000", "leave", "m001", "", ""])
    elif change == "no ring":
        snapshot[2] = None
    elif change == "covered above":
        snapshot[3][0][1] = 99
    return cbor2.dumps(plain)


@pytest.mark.parametrize("change", ["unsorted members", "ring of strangers", "status", "event below", "no ring", "covered above"])
def test_a_malformed_snapshot_is_refused(change: str) -> None:
    with pytest.raises(MembershipError):
        Membership.decode(_garbled_snapshot(change))


def test_limits_on_events_and_members_are_enforced_when_decoding() -> None:
    data = joined(10).encode()
    with pytest.raises(MembershipError, match="membership_events_max"):
        Membership.decode(data, events_max=9)
    Membership.decode(data, events_max=10)
    snapshot = joined(10).compacted(10).encode()
    with pytest.raises(MembershipError, match="at most 9 members"):
        Membership.decode(snapshot, members_max=9)


def test_a_format_from_the_future_is_named() -> None:
    with pytest.raises(MembershipError, match="unsupported membership format 3"):
        Membership.decode(cbor2.dumps([3, ["c", 3, 2, 2, 64], None, []]))


# ---- snapshots ----


def test_a_snapshot_stands_for_the_events_it_folded_and_keeps_the_fold(claims: ClaimCounter) -> None:
    membership = joined(20).with_event(LEAVE, "m003", origin="m000")
    membership.ring
    before = claims.calls
    compacted = membership.compacted(15)
    assert compacted.base.stamp == 15 and {e.stamp for e in compacted.events} == set(range(16, 22))
    assert (compacted.members, compacted.ring) == (membership.members, membership.ring)
    assert claims.calls == before, "compaction replays nothing"
    assert compacted.base.covered_stamp("m014") == 15 and compacted.base.covered_stamp("m015") == 0
    assert (compacted.base.members, compacted.base.ring) == _plain(replayed(PARAMS, [e for e in membership.events if e.stamp <= 15]))
    assert compacted.compacted(10) is compacted and compacted.stamp == membership.stamp


def _plain(state: tuple[dict, object]) -> tuple[tuple, object]:
    members, ring = state
    return tuple(sorted(members.values(), key=lambda m: m.name)), ring


def test_merging_keeps_the_higher_snapshot_and_drops_what_it_folded() -> None:
    membership = joined(10)
    newer, older = membership.compacted(8), membership.compacted(4)
    for merged in (newer.merge(older), older.merge(newer), membership.merge(newer), newer.merge(membership)):
        assert merged.base == newer.base and merged.events == newer.events
        assert merged.digest == newer.digest


def test_adopting_a_snapshot_of_ones_own_events_replays_nothing(claims: ClaimCounter) -> None:
    membership = joined(12)
    ahead = membership.with_event(LEAVE, "m004", origin="m000")
    ahead.ring
    compactor_view = Membership.decode(membership.compacted(10).encode())  # as gossip brings it: no fold yet
    before = claims.calls
    merged = ahead.merge(compactor_view)
    assert merged.base == compactor_view.base and merged.ring == ahead.ring
    assert claims.calls == before


def test_a_node_behind_catches_up_from_a_snapshot_to_the_uncompacted_fold() -> None:
    full = joined(16).with_event(LEAVE, "m002", origin="m001").with_event(REMOVE, "m002", origin="m001")
    behind = Membership(PARAMS, frozenset(e for e in full.events if e.stamp <= 5))
    behind.ring
    caught_up = behind.merge(Membership.decode(full.compacted(12).encode()))
    assert (caught_up.members, caught_up.ring) == replayed(PARAMS, full.events)


def test_orphans_are_the_origins_own_events_a_snapshot_left_out() -> None:
    shared = joined(6)
    cluster = shared.with_event(LEAVE, "m004", origin="m000").with_event(JOIN, "new", origin="new", address="new:1")  # stamps 7, 8
    down = shared.at_address("m005", "m005:moved")  # m005's own event, stamp 7, never gossiped
    compacted = cluster.compacted(8)
    adopted = down.merge(compacted)
    assert adopted.members["m005"].address == "m005:1", "below the snapshot: dropped on merge"
    (orphan,) = orphaned_events(down, adopted, "m005")
    assert orphan.kind == ADDRESS and orphan.address == "m005:moved"
    assert orphaned_events(down, adopted, "m000") == []
    again = adopted.again(orphan)
    assert again.members["m005"].address == "m005:moved" and again.stamp == 9
    # included events are not orphans: the snapshot covers them
    assert orphaned_events(cluster, compacted, "m000") == []


def test_deltas_carry_a_snapshot_only_to_a_node_whose_own_is_older() -> None:
    membership = joined(10).compacted(6)
    same = membership.delta_for(membership.base.rank)
    assert same.snapshot is None and same.events == membership.events
    older = membership.delta_for(EMPTY_SNAPSHOT.rank)
    assert older.snapshot == membership.base
    newer = Snapshot(stamp=9, folded=b"x" * 16)
    assert membership.delta_for(newer.rank).events == frozenset(e for e in membership.events if e.stamp > 9)
    decoded = MembershipDelta.decode(older.encode())
    assert decoded == older
    assert membership.lacking(membership.base.rank, membership.events) is None
    missing = membership.lacking(membership.base.rank, frozenset(e for e in membership.events if e.stamp != 8))
    assert missing is not None and {e.stamp for e in missing.events} == {8}


def test_a_join_event_of_format_1_has_no_location_and_a_location_event_is_format_2() -> None:
    event = MemberEvent(1, "a", JOIN, "a", "a:1", "")
    assert Membership(PARAMS, frozenset({event})).format == 1
    assert Membership(PARAMS, frozenset({event, MemberEvent(2, "a", LOCATION, "a", "", "z/h")})).format == 2
    assert joined(2).members["m000"].status == JOINED
