"""Group commit: everything queued while one commit is in progress goes into the next one.

The event loop never waits on the disk. `submit` queues ops with a completion callback and returns
at once; the committer task hands *everything* queued to the commit engine as one durable
transaction (one fsync for all of it), then runs the completions. Until its commit lands, a queued
object or hint stays visible (`dynd.storage.queued_writes`, the same queue the simulator's disk and
the test double use), so a read or a second write to the same key sees it.

Every object write of a running node goes through here, so the committer also keeps the objects it
committed or read most recently (up to `object_cache_bytes_max` bytes of keys and records): a
put reads the object it replaces, usually one written moments ago, and the cache answers without
an LMDB read transaction. It stays exact because nothing else writes objects while it runs: an
entry is replaced when a write to its key commits, and dropped when a commit of its key fails
(such a batch may or may not be durable, so the key is read from LMDB again).

A failed commit (a full map, a disk error) fails every completion of that batch; its writes stop
being visible (reads see the store again, unless a write queued since replaced them). Engines
(`dynd.shell.commit_engines`): for LMDB a writer process, whose disk waits and B-tree work never
contend with the event loop for the GIL, or a long-lived commit thread (`[node] commit_engine`);
a worker thread for the in-memory store.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from dynd.protocol.errors import DynError, Internal, Overloaded, ShuttingDown
from dynd.storage.base import WriteOp
from dynd.storage.queued_writes import Batch, Completion, ObjectKey, QueuedWrites

log = logging.getLogger("dynd.committer")

# What one cached entry costs besides its key and record: the dict slot, the tuple and two objects.
CACHE_ENTRY_OVERHEAD_BYTES = 128
_ABSENT = object()


def _entry_bytes(object_key: ObjectKey, data: bytes | None) -> int:
    """What one cache entry counts against object_cache_bytes_max."""
    return len(object_key[1]) + (0 if data is None else len(data)) + CACHE_ENTRY_OVERHEAD_BYTES


class CommitEngine(Protocol):
    async def commit(self, ops: list[WriteOp]) -> None:
        """Apply `ops` atomically and durably, or raise DynError having applied none of them."""
        ...


class Reader(Protocol):
    def get_object(self, partition: int, key: bytes) -> bytes | None: ...


@dataclass
class CommitStats:
    commits: int = 0
    ops: int = 0
    failures: int = 0
    largest_batch: int = 0


class GroupCommitter:
    """Run `run()` in a nursery; `submit` from the trio thread; `aclose()` drains and stops."""

    def __init__(self, reader: Reader, engine: CommitEngine, *, pending_writes_max: int, object_cache_bytes_max: int = 0) -> None:
        self.reader = reader
        self.engine = engine
        self.stats = CommitStats()
        self.pending_writes_max = pending_writes_max
        # Submitted writes not yet committed: the next batch, and what reads must see meanwhile.
        self.queue = QueuedWrites()
        self._queued_objects = self.queue.objects  # bound once: read on every request
        # Committed objects (None: known absent), oldest first; see the module docstring. An
        # OrderedDict: a plain dict finds its oldest entry by scanning past the slots earlier
        # evictions emptied, several microseconds per eviction once the cache is full.
        self._cache: OrderedDict[ObjectKey, bytes | None] = OrderedDict()
        self._cache_bytes = 0
        self._cache_bytes_max = object_cache_bytes_max
        self._wake = trio.Event()
        self._stopping = False
        self._stopped = trio.Event()

    def read_object(self, partition: int, key: bytes) -> bytes | None:
        """The newest bytes of an object, committed or still queued."""
        object_key = (partition, key)
        queued = self._queued_objects
        if object_key in queued:  # usually not: `in` is the cheapest miss
            return queued[object_key]
        cached = self._cache.get(object_key, _ABSENT)
        if cached is not _ABSENT:
            return cached  # type: ignore[return-value]
        data = self.reader.get_object(partition, key)
        self._cache_put(object_key, data)
        return data

    def _cache_put(self, object_key: ObjectKey, data: bytes | None) -> None:
        if not self._cache_bytes_max:
            return
        cache = self._cache
        self._cache_drop(object_key)
        size = _entry_bytes(object_key, data)
        if size > self._cache_bytes_max:
            return
        cache[object_key] = data
        self._cache_bytes += size
        while self._cache_bytes > self._cache_bytes_max:
            oldest, dropped = cache.popitem(last=False)
            self._cache_bytes -= _entry_bytes(oldest, dropped)

    def _cache_drop(self, object_key: ObjectKey) -> None:
        data = self._cache.pop(object_key, _ABSENT)
        if data is not _ABSENT:
            self._cache_bytes -= _entry_bytes(object_key, data)  # type: ignore[arg-type]

    @property
    def cached_objects(self) -> int:
        return len(self._cache)

    @property
    def pending_writes(self) -> int:
        return self.queue.waiting

    def submit(self, ops: Sequence[WriteOp], on_done: Completion) -> None:
        """Queue ops for the next commit; `on_done(None)` runs once they are durable."""
        if self._stopping:
            raise ShuttingDown("the node is shutting down")
        if self.pending_writes >= self.pending_writes_max:
            raise Overloaded(f"{self.pending_writes_max} writes are already waiting for the disk (pending_writes_max)")
        self.queue.add(ops, on_done)
        self._wake.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                if not self.queue.open.completions:
                    if self._stopping:
                        return
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                # Let every task already runnable (readers holding more writes) go first, so this
                # commit takes everything that arrived in this turn of the event loop.
                await trio.lowlevel.cancel_shielded_checkpoint()
                batch = self.queue.take()
                error: DynError | None = None
                try:
                    await self.engine.commit(batch.all_ops())
                except DynError as exc:
                    error = exc
                except trio.Cancelled:
                    raise
                except Exception as exc:  # a storage bug must not strand the callers
                    log.exception("commit of %d writes failed", len(batch.completions))
                    error = Internal(f"commit failed: {exc!r}")
                self._finish(batch, error)
        finally:
            self._stopped.set()

    async def aclose(self) -> None:
        """Commit everything queued, then stop. Later submits are refused."""
        self._stopping = True
        self._wake.set()
        await self._stopped.wait()

    def _finish(self, batch: Batch, error: DynError | None) -> None:
        if error is None:
            self.stats.commits += 1
            self.stats.ops += len(batch.ops)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch.completions))
        else:
            self.stats.failures += 1
            log.error("commit of %d writes failed: %s", len(batch.completions), error)
        self.queue.settle(batch)
        for object_key, data in batch.objects.items():
            if error is None:
                self._cache_put(object_key, data)
            else:
                self._cache_drop(object_key)
        for completion in batch.completions:
            try:
                completion(error)
            except Exception:
                log.exception("a commit completion failed")
