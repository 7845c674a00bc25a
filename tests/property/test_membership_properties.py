"""Membership over generated event sets (issue 17): the incremental fold equals the plain replay in
every arrival order, late events included; a snapshot and the events above it fold to what the
events alone fold to; a node behind catches up from a snapshot, recording again the events of
its own that a snapshot left out; and any two memberships merge to the same value in either order,
whoever compacted what."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynd.core.member_events import EVENT_KINDS, JOIN, LOCATION
from dynd.core.membership import ADDRESS, ClusterParams, MemberEvent, Membership, orphaned_events
from tests.support.membership_oracle import replayed

PARAMS = ClusterParams("prop", n=3, r=2, w=2, partitions=16)
NAMES = ("a", "b", "c", "d", "e", "f")
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def events(draw: st.DrawFn) -> MemberEvent:
    kind = draw(st.sampled_from(EVENT_KINDS))
    location = draw(st.sampled_from(("z1/h1", "z2/h2") if kind == LOCATION else ("", "z1/h1", "z3/h3")))
    return MemberEvent(
        stamp=draw(st.integers(1, 40)),
        origin=draw(st.sampled_from(NAMES[:4])),
        kind=kind,
        member=draw(st.sampled_from(NAMES)),
        # A node records an address event only with the new address (Membership.with_event refuses "").
        address=draw(st.sampled_from(("x:1", "y:2") if kind == ADDRESS else ("", "x:1", "y:2"))),
        location=location,
    )


event_sets = st.lists(events(), max_size=60, unique=True)


def state(membership: Membership) -> tuple[object, object]:
    return membership.members, membership.ring


def arrive(batches: list[list[MemberEvent]], start: Membership | None = None) -> Membership:
    membership = start if start is not None else Membership(PARAMS)
    for batch in batches:
        membership = membership.merge(Membership(PARAMS, frozenset(batch)))
        membership.ring  # fold each value, as a node does when it adopts it
    return membership


@PROPERTY
@given(event_sets, st.randoms(use_true_random=False), st.integers(1, 8))
def test_the_incremental_fold_is_the_plain_replay_in_every_arrival_order(all_events: list[MemberEvent], rnd: object, batch: int) -> None:
    shuffled = list(all_events)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    membership = arrive([shuffled[i : i + batch] for i in range(0, len(shuffled), batch)])
    assert state(membership) == replayed(PARAMS, all_events)
    whole = Membership(PARAMS, frozenset(all_events))
    assert membership == whole and membership.digest == whole.digest
    assert Membership.decode(membership.encode()) == membership


@PROPERTY
@given(event_sets, st.data())
def test_a_snapshot_and_the_events_above_it_fold_to_what_the_events_fold_to(all_events: list[MemberEvent], data: st.DataObject) -> None:
    stamp = data.draw(st.integers(0, 41))
    whole = Membership(PARAMS, frozenset(all_events))
    compacted = whole.compacted(stamp)
    assert state(compacted) == replayed(PARAMS, all_events)
    assert all(e.stamp > compacted.base.stamp for e in compacted.events)
    decoded = Membership.decode(compacted.encode())
    assert decoded == compacted and state(decoded) == state(compacted), "a snapshot read back folds the same"
    later = data.draw(st.lists(events(), max_size=10, unique=True))
    grown = arrive([later], decoded)
    assert state(grown) == replayed(PARAMS, [*all_events, *(e for e in later if e.stamp > compacted.base.stamp)])


@PROPERTY
@given(event_sets, st.data())
def test_a_node_down_across_a_compaction_catches_up_and_no_event_of_its_own_is_lost(all_events: list[MemberEvent], data: st.DataObject) -> None:
    """"b" was down: it holds some of the cluster's events and events of its own no one else has
    seen. The cluster compacts; "b" adopts the snapshot, records its orphans again, and both sides
    end with one membership that folds as its snapshot's events and the events above it do."""
    # What a real "b" made: one stamp per event of its own (it stamps above all it has seen), and
    # the cluster saw a prefix of them (each exchange sends all it holds): those at or below `seen`.
    by_stamp = {(e.origin, e.stamp): e for e in all_events}
    all_events = list(by_stamp.values())
    seen = data.draw(st.integers(0, 41))
    own = [e for e in all_events if e.origin == "b" and e.stamp > seen]
    cluster_events = [e for e in all_events if e not in own]
    held_by_b = [e for e in cluster_events if data.draw(st.booleans())] + own
    stamp = data.draw(st.integers(0, 41))
    cluster = Membership.decode(Membership(PARAMS, frozenset(cluster_events)).compacted(stamp).encode())
    b = arrive([held_by_b])
    adopted = b.merge(cluster)
    for orphan in orphaned_events(b, adopted, "b"):
        adopted = adopted.again(orphan)
    cluster_after = cluster.merge(adopted)
    b_after = adopted.merge(cluster_after)
    assert b_after == cluster_after and b_after.digest == cluster_after.digest and state(b_after) == state(cluster_after)
    floor = cluster.base.stamp
    in_snapshot = [e for e in cluster_events if e.stamp <= floor]
    assert state(b_after) == replayed(PARAMS, [*in_snapshot, *b_after.events])
    if not own:
        assert state(b_after) == replayed(PARAMS, all_events), "with nothing of its own, catching up is the uncompacted fold"
    for orphan in (e for e in own if e.stamp <= floor):
        redone = [e for e in b_after.events if (e.origin, e.kind, e.member, e.address, e.location) == (orphan.origin, orphan.kind, orphan.member, orphan.address, orphan.location)]
        member_known = orphan.kind == JOIN or orphan.member in replayed(PARAMS, in_snapshot)[0] or any(
            e.member == orphan.member and e.kind == JOIN for e in b_after.events
        )
        assert redone or not member_known, f"{orphan} was neither recorded again nor inapplicable"


@PROPERTY
@given(event_sets, st.data())
def test_memberships_compacted_anywhere_merge_to_one_value_in_either_order(all_events: list[MemberEvent], data: st.DataObject) -> None:
    """Two compactors (a brief disagreement) with different events and stamps: whatever either
    held, the merge is commutative and every node ends with the same ring."""
    one = Membership(PARAMS, frozenset(e for e in all_events if data.draw(st.booleans()))).compacted(data.draw(st.integers(0, 41)))
    other = Membership(PARAMS, frozenset(e for e in all_events if data.draw(st.booleans()))).compacted(data.draw(st.integers(0, 41)))
    left, right = one.merge(other), other.merge(one)
    assert left == right and left.digest == right.digest and state(left) == state(right)
    assert state(left) == replayed(PARAMS, left.events, left.base)
