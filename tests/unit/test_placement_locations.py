"""Locations in the ring, the preference lists, the ring reply and the placement report (issue 17)."""

from __future__ import annotations

import random

import pytest

from dynd.client.cluster import key_placement
from dynd.core.claim import claim
from dynd.core.preflist import preference_list, preference_list_for_key
from dynd.core.ring import Ring
from dynd.protocol import codec, messages
from dynd.protocol.errors import BadRequest
from dynd.protocol.keyspace import preference_order, preference_split
from dynd.protocol.location_report import groups_can_be_distinct, location_report

WHERE = {"a": "z1/h1", "b": "z1/h1", "c": "z1/h2", "d": "z2/h3", "e": "z3/h4"}


# ---- the ring carries locations ----


def test_a_ring_keeps_the_known_locations_of_its_own_nodes_only() -> None:
    ring = Ring.placed(4, ("a", "b", "c", "a"), {**WHERE, "b": "", "zz": "z9/h9"})
    assert ring.locations == (("a", "z1/h1"), ("c", "z1/h2"))
    assert ring.location_of("a") == "z1/h1" and ring.location_of("b") == "" and ring.location_of("zz") == ""
    assert ring.host_of("a") == "z1/h1" and ring.zone_of("a") == "z1"
    assert ring.host_of("b") == ring.zone_of("b") == "member:b"  # unknown: a host and zone of its own


def test_locations_are_part_of_the_ring() -> None:
    owners = ("a", "b", "c", "a")
    plain, located = Ring(4, owners), Ring.placed(4, owners, WHERE)
    assert plain != located and plain == Ring.placed(4, owners, {})
    assert len({plain, located, Ring.placed(4, owners, WHERE)}) == 2


@pytest.mark.parametrize(
    "locations",
    [
        (("c", "z/h"), ("a", "z/h")),  # not sorted by node
        (("a", "z/h"), ("a", "z/g")),  # a node twice
        (("x", "z/h"),),  # not a node of the ring
        (("a", ""),),  # an empty location is left out, never listed
        (("a", "z//h"),),  # not a valid path
        (("a",),),
    ],
)
def test_the_ring_refuses_non_canonical_locations(locations: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises((ValueError, TypeError)):
        Ring(4, ("a", "b", "c", "a"), locations)


def test_the_plain_form_has_locations_only_when_some_are_known() -> None:
    owners = ("a", "b", "c", "a")
    assert Ring(4, owners).to_plain() == [["a", "b", "c"], [0, 1, 2, 0]]  # as before locations
    located = Ring.placed(4, owners, {"a": "z1/h1", "c": "z1/h2"})
    assert located.to_plain() == [["a", "b", "c"], [0, 1, 2, 0], ["z1/h1", "", "z1/h2"]]
    assert Ring.from_plain(located.to_plain()) == located


@pytest.mark.parametrize(
    "plain",
    [
        [["a", "b"], [0, 1], ["z/h"]],  # one location per node
        [["a", "b"], [0, 1], ["", ""]],  # none known: the form has no third element
        [["a", "b"], [0, 1], ["z/h", 7]],
        [["a", "b"], [0, 1], ["z/h", "bad path"]],
        [["a", "b"], [0, 1], "z/h"],
        [["a", "b"], [0, 1], ["z/h", ""], []],
    ],
)
def test_from_plain_refuses_malformed_locations(plain: list) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        Ring.from_plain(plain)


# ---- claim's arguments ----


def test_claim_refuses_a_malformed_location_naming_the_member() -> None:
    with pytest.raises(ValueError, match="'b'"):
        claim(None, ["a", "b"], partitions=8, n_replicas=2, locations={"b": "no spaces allowed"})
    with pytest.raises(TypeError):
        claim(None, ["a", "b"], partitions=8, n_replicas=2, locations=[("a", "z/h")])  # type: ignore[arg-type]


def test_claim_returns_the_members_locations_in_the_ring() -> None:
    ring = claim(None, list(WHERE), partitions=16, n_replicas=3, locations={**WHERE, "stranger": "z/x"})
    assert dict(ring.locations) == WHERE


# ---- preference lists ----


def test_without_locations_the_split_is_the_walk() -> None:
    order = ("a", "b", "c", "d", "e")
    assert preference_split(order, 3, {}) == (("a", "b", "c"), ("d", "e"))


def test_primaries_take_new_zones_then_new_hosts_and_keep_walk_order() -> None:
    order = ("a", "b", "c", "d", "e")  # a, b share host h1; c is another host of zone z1
    assert preference_split(order, 3, WHERE) == (("a", "d", "e"), ("c", "b"))
    # Two zones for N = 3: both zones, then a new host, in walk order.
    two_zones = {"a": "z1/h1", "b": "z1/h1", "c": "z1/h2", "d": "z2/h3"}
    assert preference_split(("a", "b", "c", "d"), 3, two_zones) == (("a", "c", "d"), ("b",))
    # One host: the first N nodes of the walk.
    one_host = dict.fromkeys("abcd", "z/h")
    assert preference_split(("b", "a", "d", "c"), 3, one_host) == (("b", "a", "d"), ("c",))


def test_fallbacks_prefer_a_zone_then_a_host_the_list_lacks() -> None:
    where = {"a": "z1/h1", "b": "z2/h2", "c": "z1/h1", "d": "z1/h5", "e": "z3/h3"}
    # primaries a, b (zones z1, z2); then e brings z3, d brings host h5, c brings nothing
    assert preference_split(("a", "b", "c", "d", "e"), 2, where) == (("a", "b"), ("e", "d", "c"))


def test_the_core_and_the_client_place_every_key_alike() -> None:
    rng = random.Random(17)
    for trial in range(12):
        where = {f"n{i}": f"z{rng.randrange(3)}/h{rng.randrange(5)}" for i in range(rng.randint(2, 14))}
        unknown = rng.sample(sorted(where), k=min(2, len(where) - 1))
        for name in unknown:
            where[name] = ""
        n = rng.randint(1, 4)
        ring = claim(None, list(where), partitions=64, n_replicas=n, locations=where)
        reply = messages.RingOk(
            id=1, version=b"v", n=n, r=1, w=1, owners=list(ring.owners), addresses=[],
            locations=[messages.NodeLocation(node, where) for node, where in ring.locations],
        )  # fmt: skip
        for k in range(60):
            key = f"key-{trial}-{k}".encode()
            core = preference_list_for_key(ring, key, n)
            client = key_placement(reply, key)
            assert (client.partition, client.primaries, client.fallbacks) == (core.partition, core.primaries, core.fallbacks)


def test_lists_equal_the_window_when_windows_hold_distinct_zones() -> None:
    where = {f"h{h}w{w}": f"z{h % 5}/h{h}" for h in range(10) for w in range(2)}
    ring = claim(None, list(where), partitions=256, n_replicas=3, locations=where)
    for p in range(ring.partitions):
        window = [ring.owner((p + k) % 256) for k in range(3)]
        assert len({ring.zone_of(node) for node in window}) == 3
        plain = preference_order(ring.owners, p, len(ring.nodes))
        assert preference_list(ring, p, 3).primaries == plain[:3] == tuple(window)


# ---- the ring reply ----


def test_ring_ok_carries_locations_only_when_asked_and_both_forms_decode() -> None:
    plain = messages.RingOk(id=3, version=b"v", n=2, r=1, w=1, owners=["a", "b"], addresses=[messages.NodeAddress("a", "h:1")])
    located = messages.RingOk(
        id=3, version=b"v", n=2, r=1, w=1, owners=["a", "b"], addresses=[], locations=[messages.NodeLocation("a", "z/h")]
    )
    assert b"locations" not in codec.encode_message(plain)  # what an older client can read
    for message in (plain, located, messages.RingGet(id=4), messages.RingGet(id=4, locations=True)):
        assert codec.decode_message(codec.encode_message(message)) == message


def test_a_node_older_than_locations_refuses_the_field_as_unknown() -> None:
    """What the client's fallback relies on: an older codec names the field it does not know."""
    asked = codec.encode_message(messages.RingGet(id=4, locations=True))
    with pytest.raises(BadRequest, match="unknown field"):
        codec.decode_message(asked.replace(b"locations", b"locationz"))


# ---- the placement report ----


def test_the_report_says_a_guarantee_fails_with_fewer_groups_than_n() -> None:
    where = {"a": "z1/h1", "b": "z1/h1", "c": "z1/h2", "d": "z1/h2"}
    ring = claim(None, list(where), partitions=16, n_replicas=3, locations=where)
    report = location_report(ring.owners, dict(ring.locations), 3)
    assert not report.host.holds and report.host.partitions_sharing == 16
    assert any("only 2 hosts for N=3" in reason for reason in report.host.reasons)
    assert not report.zone.holds and any("only 1 zone for N=3" in reason for reason in report.zone.reasons)
    assert sum(report.replicas.values()) == 16 * 3


def test_the_report_names_a_host_that_owns_more_than_q_over_n() -> None:
    # h1 holds 4 of 6 members: two thirds of the partitions, more than Q/N = 1/2 with N = 2
    where = {"a": "z/h1", "b": "z/h1", "c": "z/h1", "d": "z/h1", "e": "z/h2", "f": "z/h3"}
    ring = claim(None, list(where), partitions=64, n_replicas=2, locations=where)
    report = location_report(ring.owners, where, 2)
    assert report.host.holds  # three hosts for N = 2: the lists skip to keep copies apart
    assert report.host.windows_repeating > 0 and not report.host.spread_possible
    assert any("host z/h1 owns" in reason for reason in report.host.reasons)
    # h2 and h3 take a copy of most partitions h1 owns: their members hold more than their share
    assert report.replicas["e"] > 2 * ring.counts()["e"]


def test_the_report_without_locations_counts_every_node_as_its_own_host() -> None:
    ring = claim(None, ["a", "b", "c", "d"], partitions=32, n_replicas=3)
    report = location_report(ring.owners, {}, 3)
    assert report.unknown == ("a", "b", "c", "d")
    assert report.host.holds and report.zone.holds and len(report.host.groups) == 4
    assert report.host.windows_repeating == 0 and report.replicas == {node: 3 * 8 for node in "abcd"}


def test_the_reports_short_walk_finds_the_preference_lists_primaries() -> None:
    rng = random.Random(5)
    for _ in range(20):
        where = {f"n{i}": rng.choice(["", f"z{rng.randrange(4)}/h{rng.randrange(6)}"]) for i in range(rng.randint(1, 12))}
        n = rng.randint(1, 5)
        ring = claim(None, list(where), partitions=32, n_replicas=n, locations=where)
        report = location_report(ring.owners, where, n)
        copies = dict.fromkeys(ring.nodes, 0)
        for p in range(32):
            for node in preference_list(ring, p, n).primaries:
                copies[node] += 1
        assert report.replicas == copies


def test_the_promise_of_distinct_windows() -> None:
    assert groups_can_be_distinct(256, [1] * 10, 3)
    assert not groups_can_be_distinct(256, [1, 1], 3)  # fewer groups than N
    # 4 of 10 members on one host: 4 * 26 * 3 = 312 > 3/5 of 256
    assert not groups_can_be_distinct(256, [4, 3, 3], 3)
    assert groups_can_be_distinct(1024, [4] * 50, 3)


# ---- plans of membership changes ----


def test_a_plan_names_the_location_guarantee_a_change_breaks_and_mends() -> None:
    from dynd.core.plan import location_notes

    where = {"a": "z1/h1", "b": "z1/h2", "c": "z2/h3", "d": "z2/h4", "e": "z3/h5"}
    before = claim(None, list(where), partitions=64, n_replicas=3, locations=where)
    after = claim(before, ["a", "b", "c", "d"], partitions=64, n_replicas=3, locations=where)  # e, all of z3, leaves
    breaking = location_notes(before, after, 3)
    assert any(note.startswith("LOCATION VIOLATION") and "sharing a zone" in note and "only 2 zones for N=3" in note for note in breaking)
    assert not any("sharing a host" in note for note in breaking)  # still 4 hosts for N = 3
    mending = location_notes(after, before, 3)
    assert any("every key's copies sit on distinct zones (they did not before)" in note for note in mending)
    assert location_notes(before, before, 3) == []
