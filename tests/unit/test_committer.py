"""Group commit: batching, visibility of queued writes, failure, and drain on close; both engines."""

from __future__ import annotations

import sys
from pathlib import Path

import cbor2
import pytest
import trio

from dynd.protocol.errors import DynError, Overloaded, ShuttingDown, StorageFull
from dynd.shell.commit_engines import CommitThreadEngine, ThreadEngine, WriterProcessEngine
from dynd.shell.committer import GroupCommitter
from dynd.protocol.framing import encode_frame
from dynd.storage.base import DeleteHint, DeleteObject, PutHint, PutMeta, PutObject, WriteOp
from dynd.storage.lmdb_store import LmdbStore
from dynd.storage.memory import MemoryStore
from dynd.storage.writer import decode_batch, encode_batch


class GatedEngine:
    """Commits into a MemoryStore once the test opens the gate; can be told to fail one commit."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.gate = trio.Event()
        self.entered = trio.Event()
        self.batches: list[list[WriteOp]] = []
        self.fail_next = False

    async def commit(self, ops: list[WriteOp]) -> None:
        self.entered.set()
        await self.gate.wait()
        self.batches.append(ops)
        if self.fail_next:
            self.fail_next = False
            raise StorageFull("full")
        self.store.write(ops)


async def test_writes_queued_behind_a_commit_share_the_next_one(nursery: trio.Nursery) -> None:
    engine = GatedEngine()
    committer = GroupCommitter(engine.store, engine, pending_writes_max=100)
    await nursery.start(committer.run)
    done: list[DynError | None] = []
    committer.submit([PutObject(0, b"first", b"1")], done.append)
    await engine.entered.wait()  # the first commit is now in the engine
    for i in range(10):
        committer.submit([PutObject(0, b"k%d" % i, b"v"), PutMeta("m", b"%d" % i)], done.append)
    assert committer.read_object(0, b"k3") == b"v", "a queued write is visible before it commits"
    engine.gate.set()
    await committer.aclose()
    assert done == [None] * 11
    assert [len(b) for b in engine.batches] == [1, 11], "ten writes and one meta record in one commit"
    assert engine.store.get_meta("m") == b"9"
    assert engine.store.get_object(0, b"k9") == b"v"


async def test_a_failed_commit_fails_its_writes_and_hides_them_again(nursery: trio.Nursery) -> None:
    engine = GatedEngine()
    engine.fail_next = True
    engine.gate.set()
    committer = GroupCommitter(engine.store, engine, pending_writes_max=100)
    await nursery.start(committer.run)
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


async def test_a_write_queued_behind_a_failing_commit_of_the_same_key_stays_visible(nursery: trio.Nursery) -> None:
    engine = GatedEngine()
    engine.store.write([PutObject(0, b"k", b"stored")])
    committer = GroupCommitter(engine.store, engine, pending_writes_max=100)
    await nursery.start(committer.run)
    outcomes: list[DynError | None] = []
    read_when_the_first_failed: list[bytes | None] = []

    def first_done(error: DynError | None) -> None:
        outcomes.append(error)
        read_when_the_first_failed.append(committer.read_object(0, b"k"))

    committer.submit([DeleteObject(0, b"k")], first_done)
    await engine.entered.wait()  # the first delete is in the engine
    committer.submit([DeleteObject(0, b"k")], outcomes.append)  # the same delete, queued behind it
    engine.fail_next = True
    engine.gate.set()
    await committer.aclose()
    assert isinstance(outcomes[0], StorageFull) and outcomes[1:] == [None]
    assert read_when_the_first_failed == [None], "the second delete is still queued: the key reads as deleted"
    assert engine.store.get_object(0, b"k") is None


async def test_too_many_pending_writes_are_refused_not_queued(nursery: trio.Nursery) -> None:
    engine = GatedEngine()
    committer = GroupCommitter(engine.store, engine, pending_writes_max=3)
    await nursery.start(committer.run)
    for i in range(3):
        committer.submit([PutObject(0, b"k%d" % i, b"v")], lambda error: None)
    with pytest.raises(Overloaded):
        committer.submit([PutObject(0, b"extra", b"v")], lambda error: None)
    engine.gate.set()
    await committer.aclose()
    with pytest.raises(ShuttingDown):
        committer.submit([PutObject(0, b"late", b"v")], lambda error: None)
    assert committer.read_object(0, b"extra") is None


async def test_the_thread_engine_commits_to_its_store() -> None:
    store = MemoryStore()
    await ThreadEngine(store).commit([PutObject(1, b"k", b"v")])
    assert store.get_object(1, b"k") == b"v"


async def test_the_writer_process_commits_reports_errors_and_survives_its_own_death(tmp_path: Path) -> None:
    path = str(tmp_path / "lmdb")
    reader = LmdbStore(path, map_bytes=1024 * 1024)
    engine = WriterProcessEngine(path, 1024 * 1024)
    try:
        await engine.start()
        await engine.commit([PutObject(2, b"k", b"v"), PutMeta("m", b"x")])
        assert reader.get_object(2, b"k") == b"v"
        with pytest.raises(StorageFull):
            await engine.commit([PutObject(2, b"big%d" % i, b"x" * 4000) for i in range(400)])
        assert reader.get_object(2, b"big0") is None, "a failed batch applies nothing"
        process = engine._process
        assert process is not None
        process.kill()
        await process.wait()
        await engine.commit([DeleteObject(2, b"k")])  # a new writer takes over
        assert reader.get_object(2, b"k") is None
    finally:
        await engine.aclose()
        reader.close()


async def test_the_commit_thread_commits_reports_errors_and_drains_on_close(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "lmdb"), map_bytes=1024 * 1024)
    engine = CommitThreadEngine(store)
    try:
        await engine.start()
        await engine.commit([PutObject(2, b"k", b"v"), PutMeta("m", b"x")])
        assert store.get_object(2, b"k") == b"v"
        with pytest.raises(StorageFull):
            await engine.commit([PutObject(2, b"big%d" % i, b"x" * 4000) for i in range(400)])
        assert store.get_object(2, b"big0") is None, "a failed batch applies nothing"
        await engine.commit([DeleteObject(2, b"k")])  # the thread carries on after a failure
        assert store.get_object(2, b"k") is None
        thread = engine._thread
        assert thread is not None and thread.is_alive()
        # A commit whose task is cancelled still lands, and the task hears of it (it cannot leave early).
        with trio.CancelScope() as scope:
            scope.cancel()
            await engine.commit([PutObject(3, b"late", b"v")])
        assert store.get_object(3, b"late") == b"v"
    finally:
        await engine.aclose()
    assert not thread.is_alive()
    try:
        await engine.commit([PutObject(3, b"after", b"v")])  # a commit after close starts a new thread
        assert store.get_object(3, b"after") == b"v"
    finally:
        await engine.aclose()
        store.close()


async def test_a_writer_that_dies_mid_commit_is_reported_not_taken_for_success(tmp_path: Path) -> None:
    engine = WriterProcessEngine(str(tmp_path / "lmdb"), 1024 * 1024)
    engine._argv = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(4); sys.exit(3)"]
    try:
        with pytest.raises(DynError, match="may or may not be durable"):
            await engine.commit([PutObject(0, b"k", b"v")])
    finally:
        await engine.aclose()


class CountingReader:
    """The committed store as the committer sees it, counting reads that reach it."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.reads = 0

    def get_object(self, partition: int, key: bytes) -> bytes | None:
        self.reads += 1
        return self.store.get_object(partition, key)


async def _commit(committer: GroupCommitter, ops: list[WriteOp]) -> DynError | None:
    outcome: list[DynError | None] = []
    landed = trio.Event()

    def record(error: DynError | None) -> None:
        outcome.append(error)
        landed.set()

    committer.submit(ops, record)
    await landed.wait()
    return outcome[0]


async def test_committed_and_read_objects_are_answered_from_memory(nursery: trio.Nursery) -> None:
    engine = GatedEngine()
    engine.gate.set()
    reader = CountingReader(engine.store)
    engine.store.write([PutObject(0, b"old", b"stored before")])
    committer = GroupCommitter(reader, engine, pending_writes_max=100, object_cache_bytes_max=1 << 20)
    await nursery.start(committer.run)
    assert await _commit(committer, [PutObject(0, b"new", b"v1"), DeleteObject(0, b"old")]) is None
    assert committer.read_object(0, b"new") == b"v1"
    assert committer.read_object(0, b"old") is None, "a committed delete is remembered as absent"
    assert reader.reads == 0
    assert committer.read_object(0, b"never") is None
    assert committer.read_object(0, b"never") is None
    assert reader.reads == 1, "a miss reads the store once, then remembers the answer"
    assert await _commit(committer, [PutObject(0, b"never", b"v2")]) is None
    assert committer.read_object(0, b"never") == b"v2", "a commit replaces what a read remembered"
    assert reader.reads == 1
    await committer.aclose()


async def test_a_failed_commit_forgets_its_keys_so_they_are_read_from_the_store(nursery: trio.Nursery) -> None:
    engine = GatedEngine()
    engine.gate.set()
    reader = CountingReader(engine.store)
    committer = GroupCommitter(reader, engine, pending_writes_max=100, object_cache_bytes_max=1 << 20)
    await nursery.start(committer.run)
    assert await _commit(committer, [PutObject(0, b"k", b"v1")]) is None
    engine.fail_next = True
    assert isinstance(await _commit(committer, [PutObject(0, b"k", b"v2")]), StorageFull)
    assert committer.read_object(0, b"k") == b"v1"
    assert reader.reads == 1, "after a failed commit the key's state comes from the store"
    await committer.aclose()


async def test_the_object_cache_keeps_to_its_byte_limit_dropping_the_oldest(nursery: trio.Nursery) -> None:
    engine = GatedEngine()
    engine.gate.set()
    reader = CountingReader(engine.store)
    limit = 10 * (1000 + 8 + 128)
    committer = GroupCommitter(reader, engine, pending_writes_max=100, object_cache_bytes_max=limit)
    await nursery.start(committer.run)
    for i in range(25):
        assert await _commit(committer, [PutObject(0, b"key%05d" % i, bytes(1000))]) is None
        assert committer._cache_bytes <= limit
    assert committer.cached_objects == 10
    assert committer.read_object(0, b"key00024") == bytes(1000)
    assert reader.reads == 0, "the newest are kept"
    assert committer.read_object(0, b"key00000") == bytes(1000)
    assert reader.reads == 1, "the oldest went"
    assert await _commit(committer, [PutObject(0, b"huge", bytes(limit))]) is None
    assert committer.read_object(0, b"huge") == bytes(limit)
    assert reader.reads == 2, "an object larger than the whole cache is never kept"
    await committer.aclose()


def test_a_batch_for_the_writer_process_is_the_cbor_of_its_ops_and_decodes_back() -> None:
    ops: list[WriteOp] = [
        PutObject(0, b"k", b"v" * 1500),
        DeleteObject(65535, b"gone"),
        PutHint("n2", 300, b"hinted", b"\x00" * 30),
        DeleteHint("n\u00e9", 7, b""),
        PutMeta("ring", b""),
    ]
    plain = [
        ["po", 0, b"k", b"v" * 1500],
        ["do", 65535, b"gone"],
        ["ph", "n2", 300, b"hinted", b"\x00" * 30],
        ["dh", "n\u00e9", 7, b""],
        ["pm", "ring", b""],
    ]
    framed = encode_batch(ops)
    assert framed == encode_frame(cbor2.dumps(plain)), "the hand-built frame is exactly cbor2's"
    assert decode_batch(framed[4:]) == ops
    assert encode_batch([]) == encode_frame(cbor2.dumps([]))
    with pytest.raises(TypeError):
        encode_batch([("po", 0, b"k", b"v")])  # type: ignore[list-item]
