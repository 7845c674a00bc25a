"""Safe membership changes, on nodes driven over the fake link of tests/unit/test_node.py (no
sockets, a clock the test moves): plans that equal what the change then does, a remove that
refuses a live member, a leave that ends with a node that holds nothing, refuses data and says
it is safe to stop, and the transfer listing."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dynd.core.gather import Gathers
from dynd.core.membership import JOIN, ClusterParams, REMOVED, create
from dynd.core.plan import PartitionSizes, describe_change, repeated_window_starts
from dynd.core.preflist import preference_list
from dynd.core.ring import Ring
from dynd.protocol import messages
from dynd.protocol.errors import Timeout, Unreachable
from tests.support.core_fakes import FakeNetwork
from tests.unit.test_node import LIMITS, STEP_MS, Link, keys_whose_primaries_are, values

FOUR = ["n1", "n2", "n3", "n4"]
SETTLE_MS = 30_000


def write(link: Link, count: int, *, via: str = "n1", w: int = 3, prefix: str = "k") -> dict[bytes, bytes]:
    written = {}
    for i in range(count):
        key, value = f"{prefix}{i:04d}".encode(), f"value {i}".encode()
        answer = link.ask(via, messages.Put(id=i, key=key, value=value, w=w))
        assert isinstance(answer, messages.PutOk), answer
        written[key] = value
    return written


def primaries(link: Link, name: str, key: bytes) -> set[str]:
    return set(link.nodes[name].cluster.preference_list(link.partition(key)).primaries)


def held_keys(link: Link, name: str) -> set[bytes]:
    node = link.nodes[name]
    return {key for p in range(node.replica.partitions) for key in link.storage[name].partition_keys(p, 1_000_000)}


def run_until(link: Link, what: str, check: Any, limit_ms: int = SETTLE_MS) -> None:
    for _ in range(limit_ms // 100):
        if check():
            return
        link.run_for(100)
    raise AssertionError(f"{what}: not within {limit_ms} ms of link time")


def transfers_of(link: Link, name: str) -> messages.NodeTransfers:
    answer = link.ask(name, messages.ClusterTransfers(id=50, local_only=True))
    assert isinstance(answer, messages.ClusterTransfersOk), answer
    (own,) = answer.nodes
    return own


# ---- plans ----


def test_a_leave_plan_is_the_ring_and_the_data_movement_the_leave_then_makes() -> None:
    link = Link(FOUR, n=3, partitions=16)
    written = write(link, 80)
    n1 = link.nodes["n1"]
    ring_before = n1.cluster.ring
    before = {name: held_keys(link, name) for name in FOUR}
    plan = link.ask("n1", messages.ClusterPlan(id=1, action="leave", node="n2"))
    assert isinstance(plan, messages.ClusterPlanOk) and plan.changes, plan
    assert plan.owners_before == list(ring_before.owners)
    assert plan.sizes_from == FOUR and plan.sizes_missing == []
    assert link.nodes["n2"].cluster.membership.members["n2"].status == "joined", "a plan changes nothing"

    assert isinstance(link.ask("n1", messages.ClusterLeave(id=2, node="n2")), messages.ClusterOk)
    assert plan.owners_after == list(n1.cluster.ring.owners), "the plan's ring is the ring the leave made"
    # ownership: exactly the leaver's partitions move, and the others end balanced
    assert [m.partition for m in plan.moves] == list(ring_before.partitions_of("n2"))
    assert {m.source for m in plan.moves} == {"n2"}
    rows = {m.name: m for m in plan.members}
    assert (rows["n2"].status_before, rows["n2"].status_after, rows["n2"].partitions_after) == ("joined", "leaving", 0)
    owning = [rows[name].partitions_after for name in ("n1", "n3", "n4")]
    assert sum(owning) == 16 and max(owning) - min(owning) <= 1
    assert sum(rows[name].takes for name in FOUR) == rows["n2"].gives == len(plan.moves)

    # data: each key is copied to each node that becomes one of its primaries
    expected_in = {name: 0 for name in FOUR}
    for key in written:
        old = set(preference_list(ring_before, link.partition(key), 3).primaries)
        for gaining in primaries(link, "n1", key) - old:
            expected_in[gaining] += 1
    assert {m.name: m.keys_in for m in plan.members} == expected_in
    assert plan.keys_to_move == sum(expected_in.values()) > 0
    assert rows["n2"].keys_out == len(before["n2"]), "the leaver hands off everything it holds"
    assert plan.bytes_to_move > plan.keys_to_move  # a key and its record: more than a byte each

    run_until(link, "n2 handed off and left", lambda: link.nodes["n2"].safe_to_stop)
    gained = {name: len(held_keys(link, name) - before[name]) for name in FOUR}
    assert gained == expected_in, "the copies the plan counted are the copies handoff made"
    for key, value in written.items():
        assert values(link.ask("n3", messages.Get(id=9, key=key, r=3))) == [value]


def test_a_plan_for_a_change_that_does_nothing_says_so() -> None:
    link = Link(FOUR, n=3, partitions=16)
    link.ask("n1", messages.ClusterLeave(id=1, node="n4"))
    plan = link.ask("n1", messages.ClusterPlan(id=2, action="leave", node="n4"))
    assert isinstance(plan, messages.ClusterPlanOk)
    assert not plan.changes and plan.summary == "n4 is already leaving" and plan.moves == []
    assert plan.owners_after == plan.owners_before


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (messages.ClusterPlan(id=1, action="remove", node="ghost"), "'ghost' is not a member"),
        (messages.ClusterPlan(id=1, action="remove", node="n1"), "cannot remove itself"),
        (messages.ClusterPlan(id=1, action="remove"), "needs the node"),
        (messages.ClusterPlan(id=1, action="join"), "seed"),
        (messages.ClusterPlan(id=1, action="join", node="n9", address="a:b:c"), "bad address"),
        (messages.ClusterPlan(id=1, action="rename", node="n2"), "unknown membership change"),
    ],
)
def test_a_plan_the_change_would_refuse_is_refused_alike(request_: messages.ClusterPlan, reason: str) -> None:
    link = Link(FOUR, n=3, partitions=16)
    answer = link.ask("n1", request_)
    assert isinstance(answer, messages.ErrorReply) and answer.code == "bad_request" and reason in answer.message, answer


def test_a_join_plan_at_the_seed_is_the_ring_the_join_makes() -> None:
    link = Link(FOUR, n=3, partitions=16)
    n1 = link.nodes["n1"]
    plan = link.ask("n1", messages.ClusterPlan(id=1, action="join", node="n5", address="10.0.0.9:7000"))
    assert isinstance(plan, messages.ClusterPlanOk) and plan.changes
    joined = n1.cluster.membership.with_event(JOIN, "n5", origin="n5", address="10.0.0.9:7000")  # what the joiner adds
    assert joined.ring is not None and plan.owners_after == list(joined.ring.owners)
    rows = {m.name: m for m in plan.members}
    assert rows["n5"].status_before == "" and rows["n5"].status_after == "joined" and rows["n5"].takes == rows["n5"].partitions_after > 0
    already = link.ask("n1", messages.ClusterPlan(id=2, action="join", node="n2", address=link.address["n2"]))
    assert isinstance(already, messages.ClusterPlanOk) and not already.changes and "already a member" in already.summary


def test_a_remove_plan_of_a_member_that_answers_warns_that_remove_needs_force() -> None:
    link = Link(FOUR, n=3, partitions=16)
    plan = link.ask("n1", messages.ClusterPlan(id=1, action="remove", node="n3"))
    assert isinstance(plan, messages.ClusterPlanOk) and plan.changes
    assert any("n3 is alive and answers" in note and "--force" in note for note in plan.notes), plan.notes
    assert any("hands nothing off" in note for note in plan.notes)
    assert {m.name: m.keys_out for m in plan.members}["n3"] == 0
    link.refuse("n1", "n3")
    plan = link.ask("n1", messages.ClusterPlan(id=2, action="remove", node="n3"))
    assert isinstance(plan, messages.ClusterPlanOk)
    assert plan.sizes_missing == ["n3"] and not any("alive and answers" in note for note in plan.notes)


def test_a_plan_waits_for_a_silent_member_no_longer_than_the_gather_timeout() -> None:
    link = Link(FOUR, n=3, partitions=16)
    link.drop("n1", "n4")
    replies: list[Any] = []
    link.nodes["n1"].handle(messages.ClusterPlan(id=1, action="leave", node="n2"), replies.append)
    link.deliver()
    link.run_for(LIMITS.gather_timeout_ms - STEP_MS)
    assert replies == []
    link.run_for(STEP_MS)
    plan = link.reply_of(replies)
    assert isinstance(plan, messages.ClusterPlanOk) and plan.sizes_missing == ["n4"]
    assert any("no sizes from n4" in note for note in plan.notes)


def test_describe_counts_the_largest_size_reported_and_lists_repeated_windows() -> None:
    params = ClusterParams("c", 2, 1, 1, 8)
    before = create(params, "a", "a:1").with_event(JOIN, "b", "a", "b:1").with_event(JOIN, "c", "a", "c:1")
    after = before.with_event("remove", "c", "a")
    assert before.ring is not None and after.ring is not None
    sizes = {
        "a": PartitionSizes((5,) * 8, (500,) * 8),
        "b": PartitionSizes((7,) * 8, (600,) * 8),  # b holds more of each (a missed writes)
    }
    plan = describe_change(
        1, node="a", action="remove", target="c", before=before, ring_before=before.ring, after=after, ring_after=after.ring, sizes=sizes
    )
    gained = sum(len(set(preference_list(after.ring, p, 2).primaries) - set(preference_list(before.ring, p, 2).primaries)) for p in range(8))
    assert plan.keys_to_move == 7 * gained and plan.bytes_to_move == 600 * gained
    assert {m.name: m.keys_out for m in plan.members}["c"] == 0, "a removed node hands nothing off"
    assert repeated_window_starts(["a", "b", "a", "a"], 2) == [2, 3]
    assert repeated_window_starts(list(after.ring.owners), 2) == plan.windows_repeated


# ---- remove ----


def digests(link: Link) -> set[bytes]:
    return {node.cluster.membership.digest for node in link.nodes.values()}


def test_remove_refuses_a_member_that_answers_and_changes_nothing() -> None:
    link = Link(FOUR, n=3, partitions=16)
    before = digests(link)
    answer = link.ask("n1", messages.ClusterRemove(id=1, node="n3"))
    assert isinstance(answer, messages.ErrorReply) and answer.code == "bad_request", answer
    assert "n3 is alive and answers" in answer.message and "--force" in answer.message and "cluster leave n3" in answer.message
    link.run_for(3 * LIMITS.gossip_interval_ms)
    assert digests(link) == before, "no node's membership changed"


def test_remove_goes_ahead_for_a_member_that_cannot_be_reached() -> None:
    link = Link(FOUR, n=3, partitions=16)
    link.refuse("n1", "n3")
    answer = link.ask("n1", messages.ClusterRemove(id=1, node="n3"))
    assert isinstance(answer, messages.ClusterOk) and "n3 removed" in answer.message
    assert link.nodes["n1"].cluster.membership.members["n3"].status == REMOVED


def test_remove_waits_for_a_silent_member_no_longer_than_the_gather_timeout() -> None:
    link = Link(FOUR, n=3, partitions=16)
    link.drop("n1", "n3")  # a paused node: connected, but it never answers
    replies: list[Any] = []
    link.nodes["n1"].handle(messages.ClusterRemove(id=1, node="n3"), replies.append)
    link.deliver()
    link.run_for(LIMITS.gather_timeout_ms - STEP_MS)
    assert replies == [] and link.nodes["n1"].cluster.membership.members["n3"].status == "joined"
    link.run_for(STEP_MS)
    assert isinstance(link.reply_of(replies), messages.ClusterOk)


def test_a_member_removed_by_force_stops_serving_and_says_it_is_safe_to_stop(caplog: pytest.LogCaptureFixture) -> None:
    link = Link(FOUR, n=3, partitions=16)
    written = write(link, 20)
    answer = link.ask("n1", messages.ClusterRemove(id=1, node="n3", force=True))
    assert isinstance(answer, messages.ClusterOk)
    with caplog.at_level(logging.WARNING, logger="dynd.node"):
        run_until(link, "n3 learns it was removed", lambda: link.nodes["n3"].safe_to_stop)
        link.run_for(3 * LIMITS.gossip_interval_ms)
    said = [r.getMessage() for r in caplog.records if "safe to stop" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("n3 is no longer a member") and "no member took over" in said[0], said
    refused = link.ask("n3", messages.Get(id=2, key=next(iter(written))))
    assert isinstance(refused, messages.ErrorReply) and refused.code == "not_a_member"
    assert "n1 at 10.0.0.1:7000" in refused.message
    status = link.ask("n3", messages.ClusterStatus(id=3, local_only=True))
    assert isinstance(status, messages.ClusterStatusOk)
    assert {m.name: m.liveness for m in status.members} == {"n1": "unknown", "n2": "unknown", "n3": "alive", "n4": "unknown"}
    for key, value in written.items():  # the others still have every key
        assert values(link.ask("n1", messages.Get(id=4, key=key, r=2))) == [value]


# ---- leave ----


def test_a_node_that_left_holds_nothing_refuses_data_and_the_others_route_around_it(caplog: pytest.LogCaptureFixture) -> None:
    link = Link(FOUR, n=3, partitions=16)
    written = write(link, 60)
    held_before = held_keys(link, "n4")
    partitions_before = {link.partition(key) for key in held_before}
    assert isinstance(link.ask("n4", messages.ClusterLeave(id=1)), messages.ClusterOk)
    with caplog.at_level(logging.WARNING, logger="dynd.node"):
        run_until(link, "n4 handed off and left", lambda: link.nodes["n4"].safe_to_stop)
        link.run_for(3 * LIMITS.gossip_interval_ms)  # it says so at its next tick, once
    said = [r.getMessage() for r in caplog.records if "safe to stop" in r.getMessage()]
    assert said == [f"n4 is no longer a member of cluster test and the members know it: it serves no data, and it is safe to stop"]
    assert held_keys(link, "n4") == set()
    own = transfers_of(link, "n4")
    assert (own.status, own.partitions_pending, own.keys_pending, own.safe_to_stop) == ("removed", 0, 0, True)
    assert (own.keys_sent, own.partitions_sent) == (len(held_before), len(partitions_before))
    for request in (
        messages.Get(id=2, key=b"k0001"),
        messages.Put(id=3, key=b"k0001", value=b"v"),
        messages.Delete(id=4, key=b"k0001", context=b""),
        messages.Replicate(id=5, key=b"k0001", record=b""),
        messages.Fetch(id=6, key=b"k0001"),
        messages.Handoff(id=7, partition=0, items=[]),
    ):
        answer = link.ask("n4", request)
        assert isinstance(answer, messages.ErrorReply) and answer.code == "not_a_member", (request, answer)
    assert isinstance(link.ask("n4", messages.Ping(id=8)), messages.Pong), "it still answers what is not data"
    for name in ("n1", "n2", "n3"):
        assert link.nodes[name].cluster.membership.members["n4"].status == REMOVED
    for key, value in written.items():
        assert values(link.ask("n2", messages.Get(id=9, key=key, r=3))) == [value]


def test_a_forward_to_a_node_that_left_goes_on_to_the_next_candidate() -> None:
    link = Link(["n1", "n2", "n3"], n=2, partitions=8)
    n1, n3 = link.nodes["n1"], link.nodes["n3"]
    key = next(k for k in keys_whose_primaries_are(link, {"n1", "n2"}) if n3.cluster.preference_list(link.partition(k)).primaries[0] == "n1")
    # n1 hears (as gossip would tell it) that it left; n3 has not heard yet, so its ring is stale
    left = n1.cluster.membership.with_event("leave", "n1", "n1").with_event("remove", "n1", "n1")
    n1.cluster.merge_from_peer(left.encode())
    assert n1.cluster.removed and n3.cluster.membership.members["n1"].status == "joined"
    answer = link.ask("n3", messages.Put(id=2, key=key, value=b"v"))
    assert isinstance(answer, messages.PutOk) and answer.id == 2, answer
    forwarded = [dst for src, dst, request in link.sent if src == "n3" and isinstance(request, messages.Put)]
    assert forwarded == ["n1", "n2"], "n1 refused as not a member; n2 took it"
    assert link.stored("n2", key) is not None and link.stored("n1", key) is None


def test_a_leaving_node_waits_for_its_hints_before_it_leaves() -> None:
    link = Link(FOUR, n=3, partitions=16)
    key = next(keys_whose_primaries_are(link, {"n1", "n2", "n3"}))
    link.refuse("n1", "n2")
    link.refuse("n4", "n2")
    assert isinstance(link.ask("n1", messages.Put(id=1, key=key, value=b"hinted", w=3)), messages.PutOk)
    assert link.nodes["n4"].hints.pending == 1, "n4 stood in for n2"
    link.ask("n4", messages.ClusterLeave(id=2))
    link.run_for(5 * LIMITS.handoff_interval_ms)
    assert link.nodes["n4"].cluster.membership.members["n4"].status == "leaving", "it still holds a hint"
    assert transfers_of(link, "n4").hints_pending == 1
    link.heal()
    run_until(link, "the hint delivered and n4 gone", lambda: link.nodes["n4"].safe_to_stop)
    assert values(link.ask("n2", messages.Get(id=3, key=key, r=1))) == [b"hinted"]


def test_writes_during_a_leave_are_all_readable_after_it() -> None:
    link = Link(FOUR, n=3, partitions=16)
    acked = write(link, 30, prefix="before")
    link.ask("n1", messages.ClusterLeave(id=1, node="n3"))
    i = 0
    while not link.nodes["n3"].safe_to_stop and i < 300:
        for via in ("n1", "n2", "n4"):  # the members; n3 coordinates too while it is leaving
            key = f"during{i:04d}-{via}".encode()
            answer = link.ask(via, messages.Put(id=i, key=key, value=b"v%d" % i))
            if isinstance(answer, messages.PutOk):
                acked[key] = b"v%d" % i
        link.run_for(100)
        i += 1
    assert link.nodes["n3"].safe_to_stop and i > 0
    for key, value in acked.items():
        assert values(link.ask("n1", messages.Get(id=0, key=key, r=2))) == [value], key


# ---- transfers ----


def test_transfers_show_the_partition_in_flight_its_targets_and_what_was_sent() -> None:
    link = Link(FOUR, n=3, partitions=16)
    write(link, 40)
    link.drop("n4", "n1")  # n4's batches to n1 get no answer: each partition stays in flight
    link.ask("n4", messages.ClusterLeave(id=1))
    link.run_for(LIMITS.handoff_interval_ms + STEP_MS)
    answer = link.ask("n2", messages.ClusterTransfers(id=2))
    assert isinstance(answer, messages.ClusterTransfersOk) and answer.node == "n2"
    by_node = {n.node: n for n in answer.nodes}
    assert set(by_node) == set(FOUR) and all(n.answered for n in by_node.values())
    n4 = by_node["n4"]
    assert n4.status == "leaving" and n4.partitions_pending > 0 and n4.keys_pending > 0
    sending = [t for t in n4.transfers if t.state == "sending"]
    assert len(sending) == 1
    (current,) = sending
    assert current.source == "n4" and "n1" in current.targets and "n4" not in current.targets
    assert current.keys_total > 0 and current.started_ms > 0
    queued = [t for t in n4.transfers if t.state == "queued"]
    assert len(queued) == n4.partitions_pending - 1 and all(t.started_ms == 0 for t in queued)
    assert all(n.transfers == [] for name, n in by_node.items() if name != "n4")
    link.heal()
    run_until(link, "n4 gone", lambda: link.nodes["n4"].safe_to_stop)
    done = transfers_of(link, "n4")
    assert done.transfers == [] and done.keys_sent > 0 and done.partitions_sent > 0


def test_transfers_name_a_member_that_does_not_answer() -> None:
    link = Link(FOUR, n=3, partitions=16)
    link.refuse("n1", "n3")
    answer = link.ask("n1", messages.ClusterTransfers(id=1))
    assert isinstance(answer, messages.ClusterTransfersOk)
    n3 = next(n for n in answer.nodes if n.node == "n3")
    assert not n3.answered and n3.status == "joined"


def test_a_gather_finishes_once_with_what_came_by_its_deadline() -> None:
    network = FakeNetwork()
    now = [0]
    gathers = Gathers(network, now_ms=lambda: now[0], timeout_ms=100)
    finished: list[dict[str, Any]] = []
    gathers.start(["b", "a"], lambda rid: messages.Ping(id=rid), finished.append)
    assert [node for node, _, _ in network.sent] == ["a", "b"]
    network.sent[0][2](messages.Pong(id=1, node="a"))
    now[0] = 99
    gathers.tick()
    assert finished == []
    now[0] = 100
    gathers.tick()
    assert finished == [{"a": messages.Pong(id=1, node="a")}]
    network.sent[1][2](Timeout("late"))
    gathers.tick()
    assert len(finished) == 1 and gathers.open == 0
    gathers.start([], lambda rid: messages.Ping(id=rid), finished.append)
    assert finished[-1] == {}
    gathers.start(["a"], lambda rid: messages.Ping(id=rid), finished.append)
    network.sent[-1][2](Unreachable("gone"))
    assert isinstance(finished[-1]["a"], Unreachable)
