"""Group commit: batching, visibility of queued writes, failure, and drain on close."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import trio

from dynd.protocol.errors import DynError, Overloaded, ShuttingDown, StorageFull
from dynd.shell.committer import GroupCommitter
from dynd.storage.base import PutMeta, PutObject, WriteOp
from dynd.storage.memory import MemoryStore


class GatedStore(MemoryStore):
    """A store whose commits wait for the test to open a gate, and can be told to fail."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[WriteOp]] = []
        self.fail_next = False

    def write(self, ops: Iterable[WriteOp]) -> None:
        self.entered.set()
        self.gate.wait(10)
        batch = list(ops)
        self.batches.append(batch)
        if self.fail_next:
            self.fail_next = False
            raise StorageFull("full")
        super().write(batch)


async def test_writes_queued_behind_a_commit_share_the_next_one() -> None:
    store = GatedStore()
    committer = GroupCommitter(store, pending_writes_max=100)
    done: list[DynError | None] = []
    committer.submit([PutObject(0, b"first", b"1")], done.append)
    await trio.to_thread.run_sync(store.entered.wait, 10)  # the first commit is now in the store
    for i in range(10):
        committer.submit([PutObject(0, b"k%d" % i, b"v"), PutMeta("m", b"%d" % i)], done.append)
    assert committer.read_object(0, b"k3") == b"v", "a queued write is visible before it commits"
    store.gate.set()
    await committer.aclose()
    assert done == [None] * 11
    assert [len(b) for b in store.batches] == [1, 11], "ten writes and one meta record in one commit"
    assert store.get_meta("m") == b"9"
    assert store.get_object(0, b"k9") == b"v"


async def test_a_failed_commit_fails_its_writes_and_hides_them_again() -> None:
    store = GatedStore()
    store.fail_next = True
    store.gate.set()
    committer = GroupCommitter(store, pending_writes_max=100)
    outcome = trio.Event()
    errors: list[DynError | None] = []

    def record(error: DynError | None) -> None:
        errors.append(error)
        outcome.set()

    committer.submit([PutObject(0, b"k", b"v")], record)
    await outcome.wait()
    assert isinstance(errors[0], StorageFull)
    assert committer.read_object(0, b"k") is None
    await committer.aclose()


async def test_too_many_pending_writes_are_refused_not_queued() -> None:
    store = GatedStore()
    committer = GroupCommitter(store, pending_writes_max=3)
    for i in range(3):
        committer.submit([PutObject(0, b"k%d" % i, b"v")], lambda error: None)
    with pytest.raises(Overloaded):
        committer.submit([PutObject(0, b"extra", b"v")], lambda error: None)
    store.gate.set()
    await committer.aclose()
    with pytest.raises(ShuttingDown):
        committer.submit([PutObject(0, b"late", b"v")], lambda error: None)
    assert committer.read_object(0, b"extra") is None
