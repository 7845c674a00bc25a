"""The test double's own controls (`dynd.testing.MemoryStorage`); its port contract is checked by
the Storage conformance suite with the daemon's port and the simulator's disk."""

from __future__ import annotations

import pytest

from dynd.core.ops import DeleteObject, PutHint, PutMeta, PutObject
from dynd.protocol.errors import DynError, Internal, Overloaded, StorageFull
from dynd.testing import MemoryStorage


def test_writes_wait_for_commit_and_the_log_keeps_each_landed_batch() -> None:
    storage, done = MemoryStorage(), []
    storage.submit([PutObject(1, b"b", b"x"), PutMeta("m", b"1")], done.append)
    storage.submit([PutHint("n", 1, b"h", b"y"), PutMeta("m", b"2")], done.append)
    assert storage.queued == 2 and done == [] and storage.objects == {} and storage.hints == {}
    assert storage.commit() == 2 and done == [None, None]
    assert storage.objects == {(1, b"b"): b"x"} and storage.hints == {("n", 1, b"h"): b"y"} and storage.meta == {"m": b"2"}
    assert storage.commits == [[PutObject(1, b"b", b"x"), PutHint("n", 1, b"h", b"y"), PutMeta("m", b"2")]]
    assert storage.commit() == 0 and len(storage.commits) == 1, "nothing queued: no commit"


def test_autocommit_commits_inside_submit() -> None:
    storage, done = MemoryStorage(autocommit=True), []
    storage.submit([PutObject(1, b"k", b"v")], done.append)
    assert done == [None] and storage.objects == {(1, b"k"): b"v"} and storage.queued == 0


def test_a_failed_commit_applies_nothing_and_fails_every_completion_once() -> None:
    storage, done = MemoryStorage(), []
    storage.preload([PutObject(1, b"k", b"old")])
    storage.submit([PutObject(1, b"k", b"new")], done.append)
    storage.submit([DeleteObject(1, b"j")], done.append)
    storage.fail_next_commit()
    assert storage.commit() == 2
    assert [type(error) for error in done] == [Internal, Internal] and storage.failed_commits == 1
    assert storage.read_object(1, b"k") == b"old" and storage.objects == {(1, b"k"): b"old"}
    storage.submit([PutObject(1, b"k", b"new")], done.append)
    storage.commit()
    assert done[-1] is None and storage.read_object(1, b"k") == b"new", "only the next commit fails"


def test_a_refusing_disk_raises_and_queues_nothing_until_it_accepts_again() -> None:
    storage, done = MemoryStorage(), []
    storage.refuse_writes()
    with pytest.raises(StorageFull):
        storage.submit([PutObject(1, b"k", b"v")], done.append)
    storage.refuse_writes(Overloaded("busy"))
    with pytest.raises(Overloaded):
        storage.submit([PutObject(1, b"k", b"v")], done.append)
    assert storage.read_object(1, b"k") is None and storage.queued == 0 and storage.submits == 0
    storage.accept_writes()
    storage.submit([PutObject(1, b"k", b"v")], done.append)
    assert storage.read_object(1, b"k") == b"v" and storage.submits == 1


def test_a_completion_that_submits_queues_for_the_next_commit() -> None:
    storage, done = MemoryStorage(), []

    def then_more(error: DynError | None) -> None:
        done.append(error)
        storage.submit([PutObject(1, b"second", b"2")], done.append)

    storage.submit([PutObject(1, b"first", b"1")], then_more)
    storage.commit()
    assert done == [None] and storage.queued == 1 and storage.read_object(1, b"second") == b"2"
    storage.commit()
    assert done == [None, None] and storage.partition_keys(1, 10) == [b"first", b"second"]
