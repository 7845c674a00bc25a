"""Membership: events merge by union, every order of delivery folds to the same members and ring."""

from __future__ import annotations

import random

import pytest

from dynd.core.cluster import ADDRESS_CLAIMS_MAX, MEMBERSHIP_META, ClusterView
from dynd.core.limits import Limits
from dynd.core.membership import (
    ADDRESS,
    JOIN,
    JOINED,
    LEAVE,
    LEAVING,
    Member,
    REMOVE,
    REMOVED,
    ClusterParams,
    Membership,
    MembershipError,
    create,
)
from dynd.core.ops import PutMeta
from dynd.protocol import messages

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


# ---- address changes ----


def test_an_address_event_moves_a_member_and_nothing_else() -> None:
    before = grown(["a", "b", "c"]).with_event(LEAVE, "c", origin="a")
    after = before.at_address("c", "c:2").at_address("b", "b:2")
    assert after.address_of("b") == "b:2" and after.address_of("c") == "c:2"
    assert {m.name: m.status for m in after.members.values()} == {"a": JOINED, "b": JOINED, "c": LEAVING}
    assert after.ring == before.ring
    assert Membership.decode(after.encode()).members == after.members


def test_at_address_changes_nothing_when_the_member_is_there_already_or_gone() -> None:
    membership = grown(["a", "b"]).with_event(REMOVE, "b", origin="a")
    assert membership.at_address("a", "a:1") is membership
    assert membership.at_address("b", "b:9") is membership  # removed: no one reaches it any more
    assert membership.at_address("zz", "zz:1") is membership
    with pytest.raises(MembershipError, match="needs the new address"):
        membership.with_event(ADDRESS, "a", origin="a")


def test_the_latest_address_wins_in_every_order_of_delivery() -> None:
    base = grown(["a", "b", "c"])
    moved = base.at_address("b", "b:2")
    moved_again = moved.at_address("b", "b:3")
    elsewhere = base.with_event(LEAVE, "c", origin="a")  # concurrent with both moves
    for merged in (moved_again.merge(elsewhere), elsewhere.merge(moved).merge(moved_again), moved.merge(elsewhere).merge(moved_again)):
        assert merged.address_of("b") == "b:3"
        assert merged.members["c"].status == LEAVING


def test_a_rejoin_after_removal_brings_its_own_address() -> None:
    membership = grown(["a", "b"]).at_address("b", "b:2").with_event(REMOVE, "b", origin="a")
    back = membership.with_event(JOIN, "b", origin="b", address="b:3")
    assert back.members["b"] == Member("b", "b:3", JOINED)


class Disk:
    """The Storage port as ClusterView uses it: every submitted write, committed at once."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def submit(self, ops: list[PutMeta], on_done: object) -> None:
        self.written += [op.data for op in ops if op.name == MEMBERSHIP_META]
        on_done(None)  # type: ignore[operator]


class Wire:
    """The Network port: the addresses the view hands it, and the gossip it sends (unanswered)."""

    def __init__(self) -> None:
        self.addresses: dict[str, str] = {}
        self.sent: list[tuple[str, object]] = []

    def set_addresses(self, addresses: dict[str, str]) -> None:
        self.addresses = dict(addresses)

    def connected(self, node: str) -> bool:
        return False

    def send(self, node: str, build: object, on_reply: object) -> None:
        self.sent.append((node, build(1)))  # type: ignore[operator]

    def send_to_address(self, address: str, build: object, on_reply: object) -> None:
        self.sent.append((address, build(1)))  # type: ignore[operator]


def view(name: str, address: str, membership: Membership) -> tuple[ClusterView, Disk, Wire]:
    disk, wire = Disk(), Wire()
    cluster = ClusterView(name, address, membership, disk, wire, limits=Limits(), now_ms=lambda: 0, rng=random.Random(1))  # type: ignore[arg-type]
    return cluster, disk, wire


def test_a_node_started_at_a_new_address_records_it_stores_it_and_gossips_it() -> None:
    stored = grown(["a", "b", "c"])
    b, disk, wire = view("b", "b:2", stored)
    assert b.membership.address_of("b") == "b:2"
    assert [Membership.decode(data).address_of("b") for data in disk.written] == ["b:2"]  # kept across a restart
    a, _, a_wire = view("a", "a:1", stored)
    assert a_wire.addresses["b"] == "b:1"
    b.gossip_once()
    (target, gossip), *_ = wire.sent
    assert isinstance(gossip, messages.Gossip) and gossip.summary is not None  # digest first
    b._merge_reply(target, a.handle_gossip(gossip), member=target)  # a answers with its events; b pushes what a lacks
    (_, push) = wire.sent[-1]
    assert isinstance(push, messages.Gossip) and push.delta is not None
    a.handle_gossip(push)
    assert a.membership.address_of("b") == "b:2" and a_wire.addresses["b"] == "b:2"


def test_a_node_at_its_recorded_address_records_nothing() -> None:
    b, disk, _ = view("b", "b:1", grown(["a", "b"]))
    assert disk.written == [] and len(b.membership.events) == 2


def test_gossip_bringing_an_older_address_back_is_corrected_a_bounded_number_of_times(caplog: pytest.LogCaptureFixture) -> None:
    """Another process under the same name (or a change lost in a crash) keeps the old address
    coming: the node corrects it, but only ADDRESS_CLAIMS_MAX times, so two processes that share a
    name cannot grow the membership without end."""
    stored = grown(["a", "b"])
    b, _, _ = view("b", "b:2", stored)
    for round_ in range(ADDRESS_CLAIMS_MAX + 3):
        impostor = b.membership.with_event(ADDRESS, "b", origin="b", address=f"b:old{round_}")
        b.merge_from_peer(impostor.encode())
    claims = [e for e in b.membership.events if e.kind == ADDRESS and e.address == "b:2"]
    assert len(claims) == ADDRESS_CLAIMS_MAX
    assert b.membership.address_of("b") != "b:2"
    assert "is another node running with the name b?" in caplog.text
    assert caplog.text.count("is another node running") == 1
