"""The two clocks of the core (issue 13): ages that nodes compare are read on the wall clock, timers
run on the monotonic one, and a write is never stamped older than what it supersedes.

Each test gives the two clocks values far apart, so reading the wrong one changes the outcome.
"""

from __future__ import annotations

from dynd.core.hints import HintDelivery
from dynd.core.limits import Limits
from dynd.core.merkle import Forest
from dynd.core.ops import PutHint, PutObject
from dynd.core.reaper import Reaper, is_expired_tombstone
from dynd.core.replica import LocalReplica, decode_record
from dynd.testing import MemoryStorage
from tests.support.core_fakes import Cluster, FakeNetwork, Healthy

GRACE_MS = 5_000
WALL_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
Q = 4


def test_a_write_is_stamped_no_earlier_than_what_it_supersedes() -> None:
    """A coordinator whose wall clock stepped back an hour deletes a value written a moment ago:
    the tombstone must not look an hour old (it would be reaped at once, while a hint of the value
    it deleted, written a moment ago, is still young enough to deliver)."""
    value = LocalReplica("a.1", Limits(), Q).write(b"k", b"v", None, None, now_ms=WALL_MS)
    behind = LocalReplica("b.1", Limits(), Q)
    delete = behind.write(b"k", None, value.reply_context, value.record, now_ms=WALL_MS - HOUR_MS)
    [tombstone] = decode_record(delete.record).siblings
    assert tombstone.value is None and tombstone.timestamp_ms >= WALL_MS
    assert not is_expired_tombstone(delete.record, WALL_MS + GRACE_MS - 1, GRACE_MS)


def test_a_concurrent_sibling_does_not_move_the_stamp() -> None:
    """Only what the write supersedes moves its stamp: a blind write beside a newer sibling keeps
    its coordinator's time."""
    newer = LocalReplica("a.1", Limits(), Q).write(b"k", b"newer", None, None, now_ms=WALL_MS)
    blind = LocalReplica("b.1", Limits(), Q).write(b"k", b"blind", None, newer.record, now_ms=WALL_MS - HOUR_MS)
    stamps = sorted(s.timestamp_ms for s in decode_record(blind.record).siblings)
    assert stamps == [WALL_MS - HOUR_MS, WALL_MS]


def test_hint_age_is_read_on_the_wall_clock() -> None:
    storage, network = MemoryStorage(autocommit=True), FakeNetwork()
    young = LocalReplica("a.1", Limits(), Q).write(b"k", b"v", None, None, now_ms=WALL_MS - 100).record
    storage.preload([PutHint("b", 0, b"k", young)])
    hinted = HintDelivery(
        "a", Cluster(), storage, network, Healthy(),  # type: ignore[arg-type]
        interval_ms=100, batch_keys=10, grace_ms=GRACE_MS, prune_threshold=10,
        now_ms=lambda: WALL_MS + 10 * HOUR_MS,  # a monotonic clock's origin is arbitrary
        wall_ms=lambda: WALL_MS,
    )  # fmt: skip
    hinted._deliver("b")
    [(node, request, _reply)] = network.sent
    assert node == "b" and request.record == young and hinted.expired_total == 0


def test_tombstone_age_is_read_on_the_wall_clock_and_the_timer_on_the_monotonic_one() -> None:
    value = LocalReplica("a.1", Limits(), Q).write(b"k", b"v", None, None, now_ms=WALL_MS - 2 * GRACE_MS)
    old_tombstone = LocalReplica("a.1", Limits(), Q).write(b"k", None, value.reply_context, value.record, now_ms=WALL_MS - 2 * GRACE_MS).record
    storage, network, forest = MemoryStorage(autocommit=True), FakeNetwork(), Forest(Q, segments=16, fanout=4)
    storage.preload([PutObject(0, b"k", old_tombstone)])
    forest.build(0, [(b"k", old_tombstone)])
    forest.mark_ready()
    monotonic = [0]
    reaper = Reaper(
        "a", Cluster(("a", "b", "c")), storage, network, forest, Healthy(),  # type: ignore[arg-type]
        interval_ms=100, batch_keys=10, grace_ms=GRACE_MS, now_ms=lambda: monotonic[0], wall_ms=lambda: WALL_MS,
    )  # fmt: skip
    assert [key for key, _, _ in reaper.candidates(0)] == [b"k"]
    reaper.tick()
    assert network.sent == [], "the reaping timer has not fired on the monotonic clock"
    monotonic[0] = 100
    reaper.tick()
    assert sorted(node for node, _, _ in network.sent) == ["b", "c"]
