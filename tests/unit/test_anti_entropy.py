"""Anti-entropy exchanges as synchronous pairs over a fake link (tests/bench/anti_entropy.py)."""

from __future__ import annotations

from typing import Any

import pytest

from dynd.core import exchange as ae
from dynd.core.admission import Unlimited
from dynd.core.anti_entropy import AntiEntropy, RepairProgress, co_primary_pairs
from dynd.core.exchange import Exchange, ExchangeLimits
from dynd.core.tracked_storage import TrackedStorage
from dynd.core.merkle import Forest
from dynd.core.ops import DeleteObject, PutHint, PutObject
from dynd.core.replica import decode_record
from dynd.protocol import codec, messages
from dynd.protocol.errors import BadRequest, Overloaded, StorageFull, Unreachable
from dynd.testing import MemoryStorage
from tests.bench.anti_entropy import Link, Replica, repair_all, scheduler

Q = 8
SMALL = ExchangeLimits(indexes_max=3, keys_max=2, repairs_inflight_max=2)


def pair(limits: ExchangeLimits = ExchangeLimits(), **kwargs: Any) -> tuple[Replica, Replica, Link]:
    a = Replica("A", Q, segments=16, fanout=4, limits=limits, **kwargs)
    b = Replica("B", Q, segments=16, fanout=4, limits=limits, **kwargs)
    return a, b, Link({"A": a, "B": b})


def both(a: Replica, b: Replica, count: int, prefix: bytes = b"k") -> list[bytes]:
    written = []
    for i in range(count):
        key = prefix + b"%04d" % i
        b.write_record(a.partition(key), key, a.put(key, b"value %d" % i))
        written.append(key)
    return written


def run_exchange(a: Replica, link: Link, partition: int, peer: str = "B", **kwargs: Any) -> Exchange:
    done: list[Exchange] = []
    exchange = Exchange(
        partition, peer, a.forest, link.network(), read_local=a.read_local, store_local=a.store_local,
        limits=a.limits, prune_threshold=10, on_done=done.append, **kwargs,
    )  # fmt: skip
    exchange.start()
    link.run()
    assert done == [exchange], "on_done runs exactly once"
    assert exchange.finished
    return exchange


def in_sync(a: Replica, b: Replica) -> bool:
    return a.store == b.store and all(a.forest.root(p) == b.forest.root(p) for p in range(Q))


def keys_of(replica: Replica, partition: int) -> set[bytes]:
    return {key for p, key in replica.store if p == partition}


def busiest(replica: Replica) -> int:
    return max(range(Q), key=lambda p: len(keys_of(replica, p)))


def test_equal_roots_end_the_exchange_after_one_message() -> None:
    a, b, link = pair()
    both(a, b, 40)
    exchange = run_exchange(a, link, busiest(a))
    assert exchange.error is None
    assert exchange.stats.roots_equal == 1 and exchange.stats.messages_sent == 1
    assert link.sent_ops == {"tree_level": 1}


@pytest.mark.parametrize("limits", [ExchangeLimits(), SMALL], ids=["default", "small-pages"])
def test_a_wiped_peer_gets_the_whole_partition_back(limits: ExchangeLimits) -> None:
    a, b, link = pair(limits)
    both(a, b, 60)
    partition = busiest(a)
    lost = b.wipe(partition)
    assert lost > 2
    exchange = run_exchange(a, link, partition)
    assert exchange.error is None
    assert exchange.stats.keys_differing == lost == exchange.stats.repaired_remote
    assert exchange.stats.repaired_local == 0
    assert in_sync(a, b)
    again = run_exchange(a, link, partition)
    assert again.stats.roots_equal == 1 and again.stats.keys_differing == 0


def test_a_wiped_initiator_pulls_the_partition_back() -> None:
    a, b, link = pair(SMALL)
    both(a, b, 60)
    partition = busiest(a)
    lost = a.wipe(partition)
    exchange = run_exchange(a, link, partition)
    assert exchange.stats.repaired_local == lost and exchange.stats.repaired_remote == 0
    assert in_sync(a, b)


def test_differences_on_both_sides_repair_both_ways() -> None:
    a, b, link = pair(SMALL)
    shared = both(a, b, 30)
    a.put(b"only-a", b"x")
    b.put(b"only-b", b"y")
    a.put(shared[0], b"newer on a", context=None)  # concurrent with B's version: siblings after
    b.put(shared[1], b"newer on b", context=None)
    b.delete(shared[2])  # B lost it (not a tombstone): A gives it back
    partitions = {a.partition(k) for k in (b"only-a", b"only-b", shared[0], shared[1], shared[2])}
    for partition in partitions:
        assert run_exchange(a, link, partition).error is None
    assert in_sync(a, b)
    merged = b.store[(a.partition(shared[0]), shared[0])]
    assert len(decode_record(merged).siblings) == 2, "both concurrent versions survive as siblings"


def test_an_unreachable_peer_ends_the_exchange_with_its_error() -> None:
    a, b, link = pair()
    both(a, b, 10)
    a.put(b"only-a", b"x")
    link.down.add("B")
    exchange = run_exchange(a, link, a.partition(b"only-a"))
    assert isinstance(exchange.error, Unreachable)
    assert exchange.stats.failed == 1


def test_a_failing_repair_stops_the_exchange_when_retrying_may_help() -> None:
    a, b, link = pair(SMALL)
    both(a, b, 30)
    partition = busiest(a)
    b.wipe(partition)
    link.fail_op = "replicate"
    exchange = run_exchange(a, link, partition)
    assert isinstance(exchange.error, Unreachable)
    assert exchange.stats.repair_failures >= 1 and exchange.stats.repaired_remote == 0


def test_a_refused_repair_is_counted_and_the_rest_go_on() -> None:
    a, b, link = pair()
    both(a, b, 30)
    partition = busiest(a)
    lost = b.wipe(partition)
    refused = sorted(keys_of(a, partition))[0]

    def picky(request: messages.Replicate, reply: Any) -> None:
        if request.key == refused:
            raise BadRequest("not this one")
        b.merge(request.key, request.record)
        reply(messages.ReplicateOk(id=request.id))

    b.handlers[messages.Replicate] = picky
    exchange = run_exchange(a, link, partition)
    assert exchange.error is None
    assert exchange.stats.repair_failures == 1 and exchange.stats.repaired_remote == lost - 1


def test_a_refused_local_store_stops_the_exchange() -> None:
    a, b, link = pair()
    both(a, b, 20)
    partition = busiest(a)
    a.wipe(partition)

    def full(partition: int, key: bytes, record: bytes, done: Any) -> None:
        raise Overloaded("the commit queue is full")

    a.store_local = full  # type: ignore[method-assign]
    exchange = run_exchange(a, link, partition)
    assert isinstance(exchange.error, Overloaded) and exchange.stats.repaired_local == 0


def test_a_peer_with_another_tree_shape_is_refused() -> None:
    a = Replica("A", Q, segments=16, fanout=4)
    b = Replica("B", Q, segments=64, fanout=4)
    link = Link({"A": a, "B": b})
    a.put(b"k", b"v")
    exchange = run_exchange(a, link, a.partition(b"k"))
    assert isinstance(exchange.error, BadRequest) and "shape" in exchange.error.message


def test_a_peer_still_building_its_trees_answers_overloaded() -> None:
    a, b, link = pair()
    a.put(b"k", b"v")
    b.forest.ready = False
    exchange = run_exchange(a, link, a.partition(b"k"))
    assert isinstance(exchange.error, Overloaded)


def test_the_responder_checks_its_bounds() -> None:
    forest = Forest(Q, segments=16, fanout=4)
    forest.mark_ready()
    limits = ExchangeLimits(indexes_max=4, keys_max=2)
    with pytest.raises(BadRequest):
        ae.answer_tree_level(forest, messages.TreeLevel(1, 0, 1, [0, 1, 2, 3, 0], 16, 4), limits)
    with pytest.raises(BadRequest):
        ae.answer_tree_level(forest, messages.TreeLevel(1, 0, 2, [16], 16, 4), limits)
    with pytest.raises(BadRequest):
        ae.answer_tree_level(forest, messages.TreeLevel(1, Q, 0, [0], 16, 4), limits)
    with pytest.raises(BadRequest):
        ae.answer_tree_roots(forest, messages.TreeRoots(1, [0, 1, 2, 3, 4], 16, 4), limits)
    with pytest.raises(BadRequest):
        ae.answer_segment_keys(forest, messages.SegmentKeys(1, 0, [16], 5, 16, 4), limits)
    with pytest.raises(BadRequest):
        ae.answer_segment_keys(forest, messages.SegmentKeys(1, 0, [1], 0, 16, 4), limits)
    for i in range(40):
        forest.note_put(0, b"k%d" % i, Replica("x", Q).put(b"k%d" % i, b"v"))
    page = ae.answer_segment_keys(forest, messages.SegmentKeys(1, 0, list(range(4)), 100, 16, 4), limits)
    assert len(page.entries) == 2, "a page never exceeds the responder's keys_max"
    assert ae.answer_tree_roots(forest, messages.TreeRoots(1, [0, 1], 16, 4), limits).hashes == [forest.root(0), b""]


def test_a_synchronous_link_does_not_recurse_per_key() -> None:
    """Replies delivered inside `send` (a link that answers at once) must not nest a call per key."""
    a, b, _ = pair(ExchangeLimits(keys_max=512, repairs_inflight_max=64))
    link = Link({"A": a, "B": b}, sync=True)
    both(a, b, 3000)
    b.wipe(0)
    b.wipe(1)
    report = repair_all(a, link, ["B"])
    assert report.pairs_failed == 0 and in_sync(a, b)


# ---- the scheduler ----


def test_rounds_start_every_interval_and_record_each_partitions_exchange() -> None:
    a, b, link = pair()
    both(a, b, 50)
    clock = [0]
    sched = scheduler(a, link, ["B"], interval_ms=1_000, clock=clock)
    sched.tick()
    link.run()
    assert sched.rounds == 0 and link.frames == 0
    clock[0] = 1_000
    sched.tick()
    link.run()
    assert sched.rounds == 1 and not sched.running
    assert link.sent_ops == {"tree_roots_compare": 1}, "an idle round is one message per peer"
    assert sched.last_exchange_ms == {p: 1_000 for p in range(Q)}
    assert sched.totals.roots_equal == Q
    clock[0] = 1_500
    sched.tick()
    assert sched.rounds == 1, "not before the interval has passed"
    b.wipe(busiest(a))
    clock[0] = 2_000
    sched.tick()
    link.run()
    assert sched.rounds == 2 and in_sync(a, b)
    assert sched.totals.keys_differing > 0


def test_rounds_wait_for_the_forest_to_be_built() -> None:
    a, b, link = pair()
    a.forest.ready = False
    clock = [5_000]
    sched = scheduler(a, link, ["B"], clock=clock)
    sched.tick()
    link.run()
    assert sched.rounds == 0 and link.frames == 0


def test_run_now_reports_progress_and_repairs_one_partition() -> None:
    a, b, link = pair(SMALL)
    both(a, b, 60)
    partition = busiest(a)
    other = next(p for p in range(Q) if p != partition and keys_of(a, p))
    b.wipe(partition)
    b.wipe(other)
    sched = scheduler(a, link, ["B"])
    reports: list[RepairProgress] = []
    assert sched.run_now(partition, lambda r: reports.append(RepairProgress(**{f: getattr(r, f) for f in r.__slots__})))
    link.run()
    assert reports[-1].finished and reports[-1].pairs_done == reports[-1].pairs_total == 1
    assert [r.finished for r in reports].count(True) == 1
    assert reports[-1].stats.repaired_remote == len(keys_of(a, partition))
    assert keys_of(b, partition) == keys_of(a, partition) and not keys_of(b, other)


def test_run_now_waits_for_the_round_in_progress() -> None:
    a, b, link = pair()
    both(a, b, 20)
    clock = [0]
    sched = scheduler(a, link, ["B"], clock=clock)
    clock[0] = 1_000
    sched.tick()  # a round starts: its TreeRoots is queued on the link
    assert sched.running
    reports: list[RepairProgress] = []
    sched.run_now(None, reports.append)
    assert not reports, "queued behind the round"
    link.run()
    assert reports and reports[-1].finished and not sched.running


def test_several_peers_and_concurrent_exchanges() -> None:
    a = Replica("A", Q, segments=16, fanout=4)
    b = Replica("B", Q, segments=16, fanout=4)
    c = Replica("C", Q, segments=16, fanout=4)
    link = Link({"A": a, "B": b, "C": c})
    for i in range(80):
        key = b"k%04d" % i
        record = a.put(key, b"v")
        b.write_record(a.partition(key), key, record)
        if i % 3:
            c.write_record(a.partition(key), key, record)
    report = repair_all(a, link, ["B", "C"], concurrency=3)
    assert report.pairs_total == 2 * Q and report.pairs_failed == 0
    assert a.store == b.store == c.store


def test_a_refusing_pacer_parks_the_work_until_it_allows() -> None:
    class Gate(Unlimited):
        def __init__(self) -> None:
            super().__init__(slice_keys=1)
            self.open = False

        def allow(self, now_ms: int) -> bool:
            return self.open

    a, b, link = pair()
    both(a, b, 40)
    b.wipe(busiest(a))
    gate = Gate()
    clock = [0]
    sched = AntiEntropy(
        "A", a.forest, link.network(), pairs=lambda: [(p, "B") for p in range(Q)], read_local=a.read_local,
        store_local=a.store_local, limits=a.limits, prune_threshold=10, interval_ms=100,
        now_ms=lambda: clock[0], pacer=gate,
    )  # fmt: skip
    clock[0] = 100
    sched.tick()
    link.run()
    assert sched.running and link.frames == 0, "nothing sent while the pacer refuses"
    gate.open = True
    for step in range(1000):
        sched.tick()
        link.run()
        gate.open = step % 2 == 0  # refuse every other tick: work resumes where it parked
        if not sched.running:
            break
    assert in_sync(a, b)
    assert sched.totals.messages_sent > 10, "pages of one key each: many small steps"


def test_co_primary_pairs() -> None:
    owners = {0: ["A", "B", "C"], 1: ["B", "C", "D"], 2: ["C", "A", "D"]}
    assert co_primary_pairs("A", 3, owners.__getitem__) == [(0, "B"), (0, "C"), (2, "C"), (2, "D")]


# ---- keeping the forest current ----


def test_tracked_storage_notes_writes_when_submitted_and_undoes_failed_ones() -> None:
    inner, forest = MemoryStorage(), Forest(Q, segments=16, fanout=4)
    storage = TrackedStorage(inner, forest)
    one, two = Replica("x", Q).put(b"k", b"1"), Replica("y", Q).put(b"k", b"2")
    done: list[Any] = []
    storage.submit([PutObject(3, b"k", one), PutHint("B", 3, b"h", one)], done.append)
    after_one = forest.root(3)
    assert after_one != b"" and forest.tree(3).hash_of(b"h") is None, "hints are not objects"
    inner.commit()
    storage.submit([PutObject(3, b"k", two)], done.append)
    assert forest.root(3) != after_one
    inner.fail_next_commit(StorageFull("disk full"))
    inner.commit()  # the write failed: the forest follows the store back
    assert forest.root(3) == after_one
    storage.submit([DeleteObject(3, b"k")], done.append)
    assert forest.root(3) == b""
    inner.commit()
    inner.refuse_writes(Overloaded("full"))
    with pytest.raises(Overloaded):
        storage.submit([PutObject(3, b"k", two)], done.append)
    assert forest.root(3) == b"", "a refused submit leaves the forest as the store is"
    assert [e is None for e in done] == [True, False, True]
    assert storage.partition_keys(3, 10) == []  # everything else passes through


# ---- messages ----


def test_the_new_messages_round_trip_and_are_sized_exactly() -> None:
    samples = [
        messages.TreeRoots(id=7, partitions=list(range(200)), tree_segments=256, tree_fanout=16),
        messages.TreeRootsOk(id=7, hashes=[bytes(range(16))] * 150 + [b""] * 50),
        messages.TreeLevel(id=8, partition=3, depth=2, indexes=list(range(256)), tree_segments=256, tree_fanout=16),
        messages.TreeLevelOk(id=8, hashes=[bytes(range(16))] * 256),
        messages.SegmentKeys(id=9, partition=3, segments=[1, 5, 200], limit=512, tree_segments=256, tree_fanout=16, after=b"user:1"),
        messages.SegmentKeysOk(id=9, entries=[messages.KeyHash(b"user:%012d" % i, bytes(16)) for i in range(100)], complete=2, after=b"x"),
        messages.Fetch(id=10, key=b"user:000000000001"),
        messages.FetchOk(id=10, record=b"r" * 300),
        messages.Replicate(id=11, key=b"user:000000000001", record=b"r" * 300),
    ]
    for message in samples:
        encoded = codec.encode_message(message)
        assert codec.decode_message(encoded) == message
        assert ae.wire_bytes(message) == len(encoded), type(message).__name__
