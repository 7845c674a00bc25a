"""Hinted handoff delivery, driven synchronously over fakes: hints expire with the tombstone grace."""

from __future__ import annotations

from dynd.core.hints import HintDelivery
from dynd.core.limits import Limits
from dynd.core.ops import PutHint
from dynd.core.replica import LocalReplica, decode_record
from dynd.protocol import messages
from dynd.testing import MemoryStorage
from tests.support.core_fakes import Cluster, FakeNetwork, Healthy

GRACE_MS = 3_000
NOW_MS = 10_000
Q = 4


def delivery(hints: dict[bytes, bytes]) -> tuple[HintDelivery, MemoryStorage, FakeNetwork]:
    storage, network = MemoryStorage(autocommit=True), FakeNetwork()
    for key, record in hints.items():
        storage.preload([PutHint("b", 0, key, record)])
    hinted = HintDelivery(
        "a", Cluster(), storage, network, Healthy(),  # type: ignore[arg-type]
        interval_ms=100, batch_keys=10, grace_ms=GRACE_MS, prune_threshold=10, now_ms=lambda: NOW_MS, wall_ms=lambda: NOW_MS,
    )  # fmt: skip
    return hinted, storage, network


def siblings_written_at(*times_ms: int) -> bytes:
    """A record with one sibling per time (blind writes by different coordinators)."""
    record = None
    for index, at_ms in enumerate(times_ms):
        replica = LocalReplica(f"n{index}.1", Limits(), Q)
        record = replica.write(b"k", b"v%d" % index, None, record, now_ms=at_ms).record
    assert record is not None
    return record


def test_a_hint_younger_than_the_grace_period_goes_as_it_is() -> None:
    record = siblings_written_at(NOW_MS - 100, NOW_MS - 50)
    hinted, storage, network = delivery({b"k": record})
    hinted._deliver("b")
    [(node, request, reply)] = network.sent
    assert node == "b" and request.record == record
    reply(messages.ReplicateOk(id=1))
    assert storage.hints == {}


def test_siblings_older_than_the_grace_period_are_not_delivered() -> None:
    # The old one may be a value whose delete was reaped everywhere already: it must not come back.
    record = siblings_written_at(NOW_MS - GRACE_MS - 1, NOW_MS - 100)
    hinted, storage, network = delivery({b"k": record})
    hinted._deliver("b")
    [(node, request, reply)] = network.sent
    sent = decode_record(request.record)
    assert [s.timestamp_ms for s in sent.siblings] == [NOW_MS - 100]
    assert sent.seen == decode_record(record).seen
    assert hinted.expired_total == 1
    reply(messages.ReplicateOk(id=1))
    assert storage.hints == {}, "the hint held is deleted once what was left of it is delivered"


def test_a_hint_with_nothing_young_enough_is_deleted_unsent() -> None:
    hinted, storage, network = delivery({b"k": siblings_written_at(NOW_MS - GRACE_MS - 5, NOW_MS - GRACE_MS)})
    hinted._deliver("b")
    assert network.sent == []
    assert storage.hints == {}
    assert hinted.expired_total == 2
    assert not hinted.in_flight and hinted.pending == 0
