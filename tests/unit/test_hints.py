"""Hinted handoff delivery, driven synchronously over fakes: hints expire with the tombstone grace."""

from __future__ import annotations

from typing import Any

from dynd.core.hints import HintDelivery
from dynd.core.limits import Limits
from dynd.core.ops import DeleteHint, PutHint
from dynd.core.replica import LocalReplica, decode_record
from dynd.protocol import messages
from tests.support.core_fakes import Cluster, FakeNetwork, Healthy

GRACE_MS = 3_000
NOW_MS = 10_000
Q = 4


class FakeStorage:
    def __init__(self) -> None:
        self.hints: dict[tuple[str, int, bytes], bytes] = {}

    def hint_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for target, _, _ in self.hints:
            counts[target] = counts.get(target, 0) + 1
        return counts

    def hint_batch(self, target: str, limit: int) -> list[tuple[int, bytes]]:
        return sorted((p, k) for t, p, k in self.hints if t == target)[:limit]

    def read_hint(self, target: str, partition: int, key: bytes) -> bytes | None:
        return self.hints.get((target, partition, key))

    def submit(self, ops: list[Any], on_done: Any) -> None:
        for op in ops:
            if isinstance(op, DeleteHint):
                self.hints.pop((op.target, op.partition, op.key), None)
            elif isinstance(op, PutHint):
                self.hints[(op.target, op.partition, op.key)] = op.data
        on_done(None)


def delivery(hints: dict[bytes, bytes]) -> tuple[HintDelivery, FakeStorage, FakeNetwork]:
    storage, network = FakeStorage(), FakeNetwork()
    for key, record in hints.items():
        storage.hints[("b", 0, key)] = record
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
