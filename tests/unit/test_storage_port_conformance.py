"""The Storage port's conformance checks (`dynd.testing.storage_conformance`) against every
implementation: the daemon's port (CommitterStorage over the group committer, either commit engine
(its commit thread or its writer process) and LMDB), the simulator's disk and the test double.

(`test_store_conformance.py` checks the layer below, the `Store` engines.)
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from dynd.core.merkle import Forest
from dynd.core.tracked_storage import TrackedStorage
from dynd.protocol.errors import Internal
from dynd.shell.commit_engines import CommitThreadEngine, WriterProcessEngine
from dynd.shell.committer import GroupCommitter
from dynd.shell.storage_port import CommitterStorage
from dynd.sim.disk import DISK_ERROR, DISK_FULL, SimDisk
from dynd.sim.loop import Loop
from dynd.sim.process import Process
from dynd.storage.base import WriteOp
from dynd.storage.lmdb_store import LmdbStore
from dynd.storage.memory import MemoryStore
from dynd.testing import MemoryStorage
from dynd.testing.storage_conformance import STORAGE_CHECKS, StorageCheck, StorageFactory, StorageHarness

MAP_BYTES = 16 * 1024 * 1024
COMMIT_WAIT_S = 30  # a generous bound for a writer process on a loaded machine; a hang fails, not blocks


# ---- the daemon's port ----


class FaultyEngine:
    """One of the daemon's commit engines, which can be told to fail its next commit; it wakes
    whoever waits for a commit to settle."""

    def __init__(self, inner: CommitThreadEngine | WriterProcessEngine) -> None:
        self.inner = inner
        self.fail_next = False
        self.settled = trio.Event()

    async def commit(self, ops: list[WriteOp]) -> None:
        try:
            if self.fail_next:
                self.fail_next = False
                raise Internal("disk error (injected): the commit failed")
            await self.inner.commit(ops)
        finally:
            # The committer finishes the batch (its completions) before its task next yields, so
            # a waiter woken here runs after that.
            self.settled.set()
            self.settled = trio.Event()


class CommitterHarness:
    def __init__(self, committer: GroupCommitter, engine: FaultyEngine, store: LmdbStore) -> None:
        self.committer = committer
        self.engine = engine
        self.storage = CommitterStorage(committer, store)

    async def commit(self) -> None:
        with trio.fail_after(COMMIT_WAIT_S):
            while self.committer.pending_writes:
                await self.engine.settled.wait()

    def fail_next_commit(self) -> None:
        self.engine.fail_next = True

    def refuse_writes(self) -> None:
        self.committer.pending_writes_max = 0  # its Overloaded refusal


def daemon_port(tmp_path: Path, commit_engine: str) -> StorageFactory:
    paths = (str(tmp_path / f"lmdb{n}") for n in itertools.count())

    @asynccontextmanager
    async def build() -> AsyncIterator[StorageHarness]:
        path = next(paths)
        store = LmdbStore(path, map_bytes=MAP_BYTES)
        inner = CommitThreadEngine(store) if commit_engine == "thread" else WriterProcessEngine(path, MAP_BYTES)
        engine = FaultyEngine(inner)
        try:
            await engine.inner.start()
            committer = GroupCommitter(store, engine, pending_writes_max=1_000, object_cache_bytes_max=1 << 20)
            async with trio.open_nursery() as nursery:
                await nursery.start(committer.run)
                yield CommitterHarness(committer, engine, store)
                await committer.aclose()
        finally:
            await engine.inner.aclose()
            store.close()

    return build


# ---- the simulator's disk ----


class SimDiskHarness:
    COMMIT_DELAY_MS = (1, 40)

    def __init__(self) -> None:
        self.loop = Loop()
        self.process = Process("n1", 1, self._raise)
        self.storage = self.disk = SimDisk(MemoryStore(), self.process, self.loop, random.Random(1), self.COMMIT_DELAY_MS)
        self._fail_next = False

    @staticmethod
    def _raise(process: str, formatted: str) -> None:
        raise AssertionError(f"{process} raised:\n{formatted}")

    async def commit(self) -> None:
        disk = self.disk
        while disk.queue.waiting:
            settled = disk.commits + disk.failed_commits
            failing, self._fail_next = self._fail_next, False
            disk.faults[DISK_ERROR] += failing  # for this one commit
            # The commit is due within the longest delay of the submit that scheduled it.
            self.loop.run_until(self.loop.now_ms + self.COMMIT_DELAY_MS[1], stop=lambda: disk.commits + disk.failed_commits > settled)
            disk.faults[DISK_ERROR] -= failing
            assert disk.commits + disk.failed_commits > settled, "writes are queued but no commit came"

    def fail_next_commit(self) -> None:
        self._fail_next = True

    def refuse_writes(self) -> None:
        self.disk.faults[DISK_FULL] += 1


@asynccontextmanager
async def sim_disk() -> AsyncIterator[StorageHarness]:
    yield SimDiskHarness()


# ---- the test double ----


class DoubleHarness:
    def __init__(self) -> None:
        self.storage = self.double = MemoryStorage()

    async def commit(self) -> None:
        while self.double.commit():
            pass

    def fail_next_commit(self) -> None:
        self.double.fail_next_commit()

    def refuse_writes(self) -> None:
        self.double.refuse_writes()


@asynccontextmanager
async def double() -> AsyncIterator[StorageHarness]:
    yield DoubleHarness()


# ---- the node's own layer: every read and write of a node passes through TrackedStorage ----


PARTITIONS_TRACKED = 16  # the checks use partitions 0..9


class TrackedHarness(DoubleHarness):
    """The double behind TrackedStorage, which keeps the Merkle trees current: it must keep the
    port's contract too (it wraps completions, and re-reads what a failed commit left)."""

    def __init__(self) -> None:
        super().__init__()
        forest = Forest(PARTITIONS_TRACKED, segments=16, fanout=4)
        forest.mark_ready()
        self.storage = TrackedStorage(self.double, forest)


@asynccontextmanager
async def tracked() -> AsyncIterator[StorageHarness]:
    yield TrackedHarness()


# ---- the checks, on each ----


@pytest.fixture(params=["daemon-thread", "daemon-process", "sim", "double", "tracked"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    if request.param.startswith("daemon-"):
        return daemon_port(tmp_path, request.param.removeprefix("daemon-"))
    return {"sim": sim_disk, "double": double, "tracked": tracked}[request.param]


@pytest.mark.parametrize("check", STORAGE_CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
async def test_storage_port(factory: StorageFactory, check: StorageCheck) -> None:
    async with factory() as harness:
        await check(harness)
