"""Tombstone reaping, driven synchronously over fakes: when a tombstone may go, and when not."""

from __future__ import annotations

from dynd.core.limits import Limits
from dynd.core.membership import LEAVING
from dynd.core.merkle import Forest
from dynd.core.ops import DeleteObject, PutMeta, PutObject
from dynd.core.reaper import Reaper, is_expired_tombstone
from dynd.core.replica import LocalReplica
from dynd.protocol import messages
from dynd.protocol.errors import Timeout
from dynd.testing import MemoryStorage
from tests.support.core_fakes import Cluster, FakeNetwork, Healthy

GRACE_MS = 1000
Q = 4


def setup(records: dict[bytes, bytes]) -> tuple[Reaper, MemoryStorage, FakeNetwork, list[int]]:
    clock = [5_000]
    storage, network, forest = MemoryStorage(autocommit=True), FakeNetwork(), Forest(Q, segments=16, fanout=4)
    for key, record in records.items():
        storage.preload([PutObject(0, key, record)])
    forest.build(0, [(k, r) for (p, k), r in storage.objects.items() if p == 0])
    forest.mark_ready()
    reaper = Reaper(
        "a", Cluster(("a", "b", "c", "d")), storage, network, forest, Healthy(),  # type: ignore[arg-type]
        interval_ms=100, batch_keys=10, grace_ms=GRACE_MS, now_ms=lambda: clock[0], wall_ms=lambda: clock[0],
        renew_actor=lambda: [PutMeta("actor", b"a.new")],
    )
    return reaper, storage, network, clock


def tombstone(at_ms: int) -> bytes:
    replica = LocalReplica("a.1", Limits(), Q)
    written = replica.write(b"k", b"v", None, None, now_ms=at_ms - 10)
    return replica.write(b"k", None, written.reply_context, written.record, now_ms=at_ms).record


def test_only_old_tombstones_count_as_expired() -> None:
    record = tombstone(1_000)
    assert is_expired_tombstone(record, 1_000 + GRACE_MS, GRACE_MS)
    assert not is_expired_tombstone(record, 1_000 + GRACE_MS - 1, GRACE_MS)
    live = LocalReplica("a.1", Limits(), Q).write(b"k", b"v", None, None, now_ms=1).record
    assert not is_expired_tombstone(live, 10**9, GRACE_MS)


def test_a_tombstone_goes_when_every_other_primary_holds_it_or_nothing() -> None:
    record = tombstone(1_000)
    reaper, storage, network, _ = setup({b"k": record})
    reaper.reap(0)
    assert sorted(node for node, _, _ in network.sent) == ["b", "c"]
    (_, _, b_reply), (_, _, c_reply) = network.sent
    b_reply(messages.FetchOk(id=1, record=record))
    assert storage.objects, "c has not answered yet"
    c_reply(messages.FetchOk(id=1, record=None))  # c reaped already
    assert storage.objects == {}
    assert [type(op) for op in storage.commits[-1]] == [DeleteObject, PutMeta], "a new actor epoch with the deletes"


def test_a_tombstone_stays_when_a_primary_differs_or_does_not_answer() -> None:
    record = tombstone(1_000)
    other = LocalReplica("b.1", Limits(), Q).write(b"k", b"older", None, None, now_ms=1).record
    malformed = messages.FetchOk(id=1, record=b"\x01garbage")
    for b_answer in (messages.FetchOk(id=1, record=other), Timeout("no reply"), malformed):
        reaper, storage, network, _ = setup({b"k": record})
        reaper.reap(0)
        (_, _, b_reply), (_, _, c_reply) = network.sent
        b_reply(b_answer)
        c_reply(messages.FetchOk(id=1, record=record))
        assert storage.objects == {(0, b"k"): record}, b_answer
        assert not reaper.in_flight, "the step finished: the next one may run"


def test_a_young_tombstone_is_not_even_asked_about() -> None:
    reaper, storage, network, clock = setup({b"k": tombstone(4_500)})
    reaper.reap(0)
    assert network.sent == [] and storage.objects


def test_no_tombstone_goes_while_a_member_is_leaving() -> None:
    # "d" is no primary of the key, but leaving it hands over all it holds: maybe an older value.
    record = tombstone(1_000)
    reaper, storage, network, _ = setup({b"k": record})
    reaper.cluster.membership.members[3].status = LEAVING  # type: ignore[attr-defined]
    reaper.reap(0)
    assert network.sent == [] and storage.objects, "nothing asked, nothing reaped"
    reaper.cluster.membership.members.pop()  # type: ignore[attr-defined]  # it is gone
    reaper.reap(0)
    assert sorted(node for node, _, _ in network.sent) == ["b", "c"]
