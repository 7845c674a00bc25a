"""Root comparisons of anti-entropy (TreeRootsCompare): one request per peer carries every shared
root, the peer answers which differ and learns the rest, descent runs only there, a round asks a
few peers, least recently compared first, and an older peer is asked with TreeRoots."""

from __future__ import annotations

from typing import Any

import pytest

from dynd.core import exchange as ae
from dynd.core.anti_entropy import LEGACY_RECHECK_ROUNDS, AntiEntropy, RepairProgress
from dynd.core.exchange import ExchangeLimits
from dynd.core.limits import Limits
from dynd.core.merkle import Forest
from dynd.protocol import codec, messages
from dynd.protocol.errors import BadRequest, Overloaded, UnknownOp
from tests.bench.anti_entropy import Link, Replica, scheduler

Q = 8
INTERVAL_MS = 1_000


def replicas(*names: str, limits: ExchangeLimits = ExchangeLimits()) -> tuple[dict[str, Replica], Link]:
    group = {name: Replica(name, Q, segments=16, fanout=4, limits=limits) for name in names}
    return group, Link(group)


def fill(group: dict[str, Replica], count: int) -> None:
    """The same `count` keys on every replica."""
    first, *rest = group.values()
    for i in range(count):
        key = b"k%04d" % i
        record = first.put(key, b"value %d" % i)
        for other in rest:
            other.write_record(first.partition(key), key, record)


def record(link: Link, replica: Replica, cls: type) -> list[Any]:
    """Every request of type `cls` that `replica` receives, from now on."""
    seen: list[Any] = []
    inner = replica.handlers[cls]

    def spy(request: Any, reply: Any) -> None:
        seen.append(request)
        inner(request, reply)

    replica.handlers[cls] = spy
    return seen


def round_of(sched: AntiEntropy, link: Link, clock: list[int]) -> None:
    clock[0] += INTERVAL_MS
    sched.tick()
    link.run()
    assert not sched.running


def in_sync(a: Replica, b: Replica) -> bool:
    return a.store == b.store and all(a.forest.root(p) == b.forest.root(p) for p in range(Q))


def test_one_request_carries_every_shared_root_and_the_peer_learns_the_equal_ones() -> None:
    group, link = replicas("A", "B")
    fill(group, 60)
    a, b = group["A"], group["B"]
    clock = [0]
    sched_a = scheduler(a, link, ["B"], clock=clock, interval_ms=INTERVAL_MS)
    sched_b = scheduler(b, link, ["A"], clock=clock, interval_ms=INTERVAL_MS)
    asked = record(link, b, messages.TreeRootsCompare)
    round_of(sched_a, link, clock)
    assert link.sent_ops == {"tree_roots_compare": 1}
    [request] = asked
    assert request.node == "A" and request.partitions == list(range(Q))
    assert request.hashes == [a.forest.root(p) for p in range(Q)], "the roots travel with the request"
    assert sched_a.last_pair_exchange_ms == {(p, "B"): clock[0] for p in range(Q)}
    assert sched_b.last_pair_exchange_ms == {(p, "A"): clock[0] for p in range(Q)}, "the peer learned them too"
    sched_b.tick()  # B's own round, at the same moment: A was compared just now, nothing to ask
    link.run()
    assert sched_b.rounds == 1 and link.sent_ops == {"tree_roots_compare": 1}


def test_only_the_differing_partitions_are_descended_and_repaired() -> None:
    group, link = replicas("A", "B")
    fill(group, 80)
    a, b = group["A"], group["B"]
    wiped = [p for p in range(Q) if any(pp == p for pp, _ in b.store)][:2]
    lost = sum(b.wipe(p) for p in wiped)
    clock = [0]
    sched = scheduler(a, link, ["B"], clock=clock, interval_ms=INTERVAL_MS)
    sched_b = scheduler(b, link, ["A"], clock=clock, interval_ms=INTERVAL_MS)
    levels = record(link, b, messages.TreeLevel)
    pages = record(link, b, messages.SegmentKeys)
    round_of(sched, link, clock)
    assert {request.partition for request in levels + pages} == set(wiped), "descent only where roots differ"
    assert all(request.depth >= 1 for request in levels), "the roots are known: descent starts below them"
    assert sched.totals.roots_equal == Q - len(wiped) and sched.totals.repaired_remote == lost
    assert in_sync(a, b)
    assert set(sched_b.last_pair_exchange_ms) == {(p, "A") for p in range(Q) if p not in wiped}, "B credits only what was equal"


def test_a_round_compares_with_a_few_peers_least_recently_compared_first() -> None:
    names = ["A", "B", "C", "D", "E", "F"]
    group, link = replicas(*names)
    fill(group, 30)
    clock = [0]
    sched = scheduler(group["A"], link, names[1:], clock=clock, interval_ms=INTERVAL_MS, peers_per_round=2)
    asked: list[str] = []
    for name in names[1:]:
        group[name].handlers[messages.TreeRootsCompare] = (
            lambda request, reply, n=name, inner=group[name].handlers[messages.TreeRootsCompare]: (asked.append(n), inner(request, reply))
        )
    for _ in range(3):
        before = len(asked)
        round_of(sched, link, clock)
        assert len(asked) - before == 2, "peers_per_round requests a round, whatever the number of peers"
    assert sorted(asked[:5]) == names[1:], "every peer within ceil(5 / 2) rounds"
    assert sched.rounds == 3


def test_an_unreachable_peer_goes_to_the_back_and_does_not_starve_the_others() -> None:
    names = ["A", "B", "C", "D"]
    group, link = replicas(*names)
    fill(group, 30)
    link.down.add("B")
    clock = [0]
    sched = scheduler(group["A"], link, names[1:], clock=clock, interval_ms=INTERVAL_MS, peers_per_round=1)
    for _ in range(6):
        round_of(sched, link, clock)
    compared = {peer for _, peer in sched.last_pair_exchange_ms}
    assert compared == {"C", "D"}
    assert sched.totals.failed == 2 * Q, "B was tried twice in six rounds, not every round"


def test_more_shared_partitions_than_roots_max_rotate_over_rounds() -> None:
    limits = ExchangeLimits(roots_max=3)
    group, link = replicas("A", "B", limits=limits)
    fill(group, 40)
    asked = record(link, group["B"], messages.TreeRootsCompare)
    clock = [0]
    sched = scheduler(group["A"], link, ["B"], clock=clock, interval_ms=INTERVAL_MS)
    for _ in range(3):
        round_of(sched, link, clock)
    assert [len(request.partitions) for request in asked] == [3, 3, 3]
    assert {p for request in asked for p in request.partitions} == set(range(Q)), "every partition within ceil(8 / 3) rounds"
    assert len({(p, peer) for p, peer in sched.last_pair_exchange_ms}) == Q


def test_run_now_splits_at_roots_max_and_asks_every_peer() -> None:
    limits = ExchangeLimits(roots_max=3)
    group, link = replicas("A", "B", "C", limits=limits)
    fill(group, 40)
    b_asked = record(link, group["B"], messages.TreeRootsCompare)
    c_asked = record(link, group["C"], messages.TreeRootsCompare)
    sched = scheduler(group["A"], link, ["B", "C"], peers_per_round=1)
    reports: list[RepairProgress] = []
    assert sched.run_now(None, reports.append) == 2 * Q
    link.run()
    assert reports[-1].finished and reports[-1].pairs_done == 2 * Q and reports[-1].pairs_failed == 0
    for asked in (b_asked, c_asked):
        assert [len(request.partitions) for request in asked] == [3, 3, 2]
        assert [p for request in asked for p in request.partitions] == list(range(Q))


def test_an_older_peer_is_asked_with_tree_roots_and_rechecked_later() -> None:
    group, link = replicas("A", "B")
    fill(group, 60)
    a, b = group["A"], group["B"]

    def old_node(request: Any, reply: Any) -> None:  # what a node before TreeRootsCompare answers
        raise UnknownOp(f"unknown op {request.OP!r}")

    b.handlers[messages.TreeRootsCompare] = old_node
    partition = next(p for p, _ in b.store)
    lost = b.wipe(partition)
    clock = [0]
    sched = scheduler(a, link, ["B"], clock=clock, interval_ms=INTERVAL_MS)
    round_of(sched, link, clock)
    assert link.sent_ops["tree_roots_compare"] == 1 and link.sent_ops["tree_roots"] == 1, "the same round falls back"
    assert in_sync(a, b) and sched.totals.repaired_remote == lost and sched.totals.failed == 0
    assert sched.legacy("B")
    for _ in range(LEGACY_RECHECK_ROUNDS - 1):
        round_of(sched, link, clock)
    assert link.sent_ops["tree_roots_compare"] == 1, "not asked with TreeRootsCompare meanwhile"
    assert link.sent_ops["tree_roots"] == LEGACY_RECHECK_ROUNDS
    del b.handlers[messages.TreeRootsCompare]  # upgraded
    b.handlers.update(ae.responders(b.forest, b.limits))
    round_of(sched, link, clock)
    assert link.sent_ops["tree_roots_compare"] == 2 and not sched.legacy("B")


def test_a_legacy_fallback_respects_indexes_max() -> None:
    limits = ExchangeLimits(indexes_max=3, roots_max=8)
    group, link = replicas("A", "B", limits=limits)
    fill(group, 30)
    b = group["B"]
    b.handlers[messages.TreeRootsCompare] = lambda request, reply: (_ for _ in ()).throw(UnknownOp("unknown op"))
    asked = record(link, b, messages.TreeRoots)
    sched = scheduler(group["A"], link, ["B"])
    reports: list[RepairProgress] = []
    sched.run_now(None, reports.append)
    link.run()
    assert [len(request.partitions) for request in asked] == [3, 3, 2]
    assert reports[-1].pairs_done == Q and reports[-1].pairs_failed == 0


# ---- the responder ----


def forest_with_keys() -> Forest:
    forest = Forest(Q, segments=16, fanout=4)
    forest.mark_ready()
    writer = Replica("w", Q)
    for i in range(20):
        forest.note_put(i % Q, b"k%d" % i, writer.put(b"k%d" % i, b"v"))
    return forest


def compare(partitions: list[int], hashes: list[bytes], change: dict[str, Any] | None = None) -> messages.TreeRootsCompare:
    fields: dict[str, Any] = {"id": 5, "node": "A", "partitions": partitions, "hashes": hashes, "tree_segments": 16, "tree_fanout": 4}
    fields.update(change or {})
    return messages.TreeRootsCompare(**fields)


def test_the_responder_answers_the_differing_partitions_with_its_roots() -> None:
    forest = forest_with_keys()
    theirs = [forest.root(p) for p in range(Q)]
    theirs[2], theirs[5] = b"", bytes(16)
    answer, equal = ae.answer_tree_roots_compare(forest, compare(list(range(Q)), theirs), ExchangeLimits())
    assert answer == messages.TreeRootsCompareOk(id=5, differing=[2, 5], hashes=[forest.root(2), forest.root(5)])
    assert equal == [0, 1, 3, 4, 6, 7]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"partitions": [0, 1, 2, 3]}, "exceed ae roots_max"),
        ({"hashes": [b""]}, "roots for 2 partitions"),
        ({"partitions": [1, 1]}, "named twice"),
        ({"node": ""}, "name itself"),
        ({"partitions": [0, Q]}, "out of range"),
        ({"tree_segments": 64}, "tree shape"),
        ({"hashes": [b"", b"x" * 15]}, "a root of 15 bytes"),
    ],
)
def test_a_malformed_compare_is_refused_and_credits_nothing(change: dict[str, Any], words: str) -> None:
    forest = forest_with_keys()
    credited: list[Any] = []
    handlers = ae.responders(forest, ExchangeLimits(roots_max=3), roots_equal=lambda peer, partitions: credited.append((peer, partitions)))
    request = compare([0, 1], [forest.root(0), forest.root(1)], change)
    replies: list[Any] = []
    with pytest.raises(BadRequest, match=words):
        handlers[messages.TreeRootsCompare](request, replies.append)
    assert replies == [] and credited == []
    good = compare([0, 1], [forest.root(0), b"\x01" * 16])
    handlers[messages.TreeRootsCompare](good, replies.append)
    assert credited == [("A", [0])] and replies[0].differing == [1]


def test_a_responder_still_building_its_trees_answers_overloaded() -> None:
    forest = Forest(Q, segments=16, fanout=4)
    with pytest.raises(Overloaded):
        ae.answer_tree_roots_compare(forest, compare([0], [b""]), ExchangeLimits())


def test_credit_goes_only_to_partitions_the_two_share() -> None:
    group, link = replicas("A", "B")
    clock = [7_000]
    sched = scheduler(group["B"], link, ["A"], clock=clock, partitions=[1, 2])
    sched.roots_equal("A", [0, 1, 2, 3])
    sched.roots_equal("Z", [1])  # not a co-primary of anything here
    assert sched.last_pair_exchange_ms == {(1, "A"): 7_000, (2, "A"): 7_000}


@pytest.mark.parametrize(
    "answer",
    [
        messages.TreeRootsCompareOk(id=0, differing=[9], hashes=[b""]),  # not asked
        messages.TreeRootsCompareOk(id=0, differing=[1, 1], hashes=[b"", b""]),
        messages.TreeRootsCompareOk(id=0, differing=[1], hashes=[]),
        messages.TreeRootsOk(id=0, hashes=[]),
    ],
    ids=["unasked", "twice", "no-roots", "wrong-reply"],
)
def test_a_malformed_answer_fails_the_pairs_and_starts_nothing(answer: Any) -> None:
    group, link = replicas("A", "B")
    fill(group, 30)
    group["B"].wipe(1)
    group["B"].handlers[messages.TreeRootsCompare] = lambda request, reply: reply(type(answer)(**{**{f: getattr(answer, f) for f in answer.__slots__}, "id": request.id}))
    sched = scheduler(group["A"], link, ["B"])
    reports: list[RepairProgress] = []
    sched.run_now(None, reports.append)
    link.run()
    assert reports[-1].finished and reports[-1].pairs_failed == Q
    assert set(link.sent_ops) == {"tree_roots_compare"}, "no descent on an answer that breaks the rules"
    assert sched.last_pair_exchange_ms == {} and "answered roots" in reports[-1].errors[0]


def test_the_compare_messages_round_trip_and_are_sized_exactly() -> None:
    samples = [
        messages.TreeRootsCompare(id=3, node="n17", partitions=list(range(0, 1024, 3)), hashes=[bytes(range(16))] * 300 + [b""] * 42, tree_segments=256, tree_fanout=16),
        messages.TreeRootsCompareOk(id=3, differing=[5, 900], hashes=[bytes(16), b""]),
        messages.TreeRootsCompareOk(id=4, differing=[], hashes=[]),
    ]
    for message in samples:
        encoded = codec.encode_message(message)
        assert codec.decode_message(encoded) == message
        assert ae.wire_bytes(message) == len(encoded)


def test_ae_roots_max_must_fit_in_a_frame() -> None:
    with pytest.raises(ValueError, match="ae_roots_max"):
        Limits(ae_roots_max=Limits().frame_bytes_max)
    with pytest.raises(ValueError, match="peers_per_round"):
        AntiEntropy(
            "A", Forest(Q), Link({}).network(), pairs=list, read_local=lambda p, k: None, store_local=lambda *a: None,
            limits=ExchangeLimits(), prune_threshold=10, interval_ms=1, now_ms=lambda: 0, peers_per_round=0,
        )  # fmt: skip
