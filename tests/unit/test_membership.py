"""Membership: events merge by union, every order of delivery folds to the same members and ring."""

from __future__ import annotations

import random

import pytest

from dynd.core.membership import JOIN, LEAVE, LEAVING, REMOVE, REMOVED, ClusterParams, Membership, MembershipError, create

PARAMS = ClusterParams("c1", n=3, r=2, w=2, partitions=64)


def grown(names: list[str]) -> Membership:
    membership = create(PARAMS, names[0], f"{names[0]}:1")
    for name in names[1:]:
        membership = membership.with_event(JOIN, name, origin=name, address=f"{name}:1")
    return membership


def test_joins_spread_the_ring_over_every_member() -> None:
    membership = grown(["a", "b", "c", "d"])
    assert membership.ring is not None
    assert set(membership.ring.nodes) == {"a", "b", "c", "d"}
    assert sorted(membership.ring.counts().values()) == [16, 16, 16, 16]


def test_concurrent_changes_on_different_nodes_reconcile_the_same_everywhere() -> None:
    base = grown(["a", "b", "c"])
    on_a = base.with_event(JOIN, "d", origin="a", address="d:1")
    on_b = base.with_event(LEAVE, "c", origin="b")
    one, other = on_a.merge(on_b), on_b.merge(on_a)
    assert one.events == other.events
    assert one.ring == other.ring
    assert one.members["c"].status == LEAVING and "c" not in one.ring.nodes


def test_merge_is_order_independent_over_many_events() -> None:
    rng = random.Random(7)
    membership = grown(["a", "b", "c", "d", "e"])
    membership = membership.with_event(REMOVE, "b", origin="a").with_event(LEAVE, "e", origin="c")
    events = list(membership.events)
    for _ in range(10):
        rng.shuffle(events)
        rebuilt = Membership(PARAMS)
        for event in events:
            rebuilt = rebuilt.merge(Membership(PARAMS, frozenset({event})))
        assert rebuilt.ring == membership.ring
        assert rebuilt.members == membership.members
    assert membership.members["b"].status == REMOVED


def test_memberships_of_different_clusters_do_not_merge() -> None:
    other = create(ClusterParams("c2", 3, 2, 2, 64), "x", "x:1")
    with pytest.raises(MembershipError):
        grown(["a"]).merge(other)


def test_encoding_round_trips_and_refuses_garbage() -> None:
    membership = grown(["a", "b"]).with_event(LEAVE, "b", origin="a")
    assert Membership.decode(membership.encode()).events == membership.events
    assert Membership.decode(membership.encode()).digest == membership.digest
    for garbage in (b"", b"\x01", b"\x83\x01\x80\x80"):
        with pytest.raises(MembershipError):
            Membership.decode(garbage)


def test_unknown_members_cannot_leave() -> None:
    with pytest.raises(MembershipError):
        grown(["a"]).with_event(LEAVE, "zz", origin="a")
