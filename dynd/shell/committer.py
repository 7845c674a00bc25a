"""Group commit: everything queued while one commit is in progress goes into the next one.

The event loop never waits on the disk. `submit` queues ops with a completion callback and returns
at once; the committer task hands *everything* queued to the commit engine as one durable
transaction (one fsync for all of it), then runs the completions. Until its commit lands, a queued
object stays visible through `read_object` (the overlay), so a read or a second write to the same
key sees it.

Every object write of a running node goes through here, so the committer also keeps the objects it
committed or read most recently (up to `object_cache_bytes_max` bytes of keys and records): a
put reads the object it replaces, usually one written moments ago, and the cache answers without
an LMDB read transaction. It stays exact because nothing else writes objects while it runs: an
entry is replaced when a write to its key commits, and dropped when a commit of its key fails
(such a batch may or may not be durable, so the key is read from LMDB again).

A failed commit (a full map, a disk error) fails every completion of that batch; its ops are dropped
from the overlay. Engines (`dynd.shell.commit_engines`): a writer process for LMDB, whose disk
waits and B-tree work never contend with the event loop for the GIL, and a worker thread for the
in-memory store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from dynd.protocol.errors import DynError, Internal, Overloaded, ShuttingDown
from dynd.storage.base import DeleteObject, PutMeta, PutObject, WriteOp

log = logging.getLogger("dynd.committer")

Completion = Callable[[DynError | None], None]
OverlayKey = tuple[int, bytes]
# What one cached entry costs besides its key and record: the dict slot, the tuple and two objects.
CACHE_ENTRY_OVERHEAD_BYTES = 128
_ABSENT = object()


class CommitEngine(Protocol):
    async def commit(self, ops: list[WriteOp]) -> None:
        """Apply `ops` atomically and durably, or raise DynError having applied none of them."""
        ...


class Reader(Protocol):
    def get_object(self, partition: int, key: bytes) -> bytes | None: ...


@dataclass
class _Batch:
    ops: list[WriteOp] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    overlay: dict[OverlayKey, bytes | None] = field(default_factory=dict)
    # Meta records only need their latest value within one commit.
    meta: dict[str, PutMeta] = field(default_factory=dict)

    def all_ops(self) -> list[WriteOp]:
        return [*self.ops, *self.meta.values()]


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
        self._pending_writes_max = pending_writes_max
        self._overlay: dict[OverlayKey, bytes | None] = {}
        # Committed objects (None: known absent), oldest first; see the module docstring.
        self._cache: dict[OverlayKey, bytes | None] = {}
        self._cache_bytes = 0
        self._cache_bytes_max = object_cache_bytes_max
        self._queued = _Batch()
        self._in_flight = 0
        self._wake = trio.Event()
        self._stopping = False
        self._stopped = trio.Event()

    def read_object(self, partition: int, key: bytes) -> bytes | None:
        """The newest bytes of an object, committed or still queued."""
        overlay_key = (partition, key)
        if overlay_key in self._overlay:
            return self._overlay[overlay_key]
        cached = self._cache.get(overlay_key, _ABSENT)
        if cached is not _ABSENT:
            return cached  # type: ignore[return-value]
        data = self.reader.get_object(partition, key)
        self._cache_put(overlay_key, data)
        return data

    def _cache_put(self, overlay_key: OverlayKey, data: bytes | None) -> None:
        if not self._cache_bytes_max:
            return
        cache = self._cache
        self._cache_drop(overlay_key)
        size = len(overlay_key[1]) + (0 if data is None else len(data)) + CACHE_ENTRY_OVERHEAD_BYTES
        if size > self._cache_bytes_max:
            return
        cache[overlay_key] = data
        self._cache_bytes += size
        while self._cache_bytes > self._cache_bytes_max:
            self._cache_drop(next(iter(cache)))  # the oldest

    def _cache_drop(self, overlay_key: OverlayKey) -> None:
        data = self._cache.pop(overlay_key, _ABSENT)
        if data is not _ABSENT:
            self._cache_bytes -= len(overlay_key[1]) + (0 if data is None else len(data)) + CACHE_ENTRY_OVERHEAD_BYTES  # type: ignore[arg-type]

    @property
    def cached_objects(self) -> int:
        return len(self._cache)

    @property
    def pending_writes(self) -> int:
        return len(self._queued.completions) + self._in_flight

    def submit(self, ops: Sequence[WriteOp], on_done: Completion) -> None:
        """Queue ops for the next commit; `on_done(None)` runs once they are durable."""
        if self._stopping:
            raise ShuttingDown("the node is shutting down")
        if self.pending_writes >= self._pending_writes_max:
            raise Overloaded(f"{self._pending_writes_max} writes are already waiting for the disk (pending_writes_max)")
        batch = self._queued
        for op in ops:
            if isinstance(op, PutMeta):
                batch.meta[op.name] = op
                continue
            batch.ops.append(op)
            if isinstance(op, PutObject):
                self._overlay[(op.partition, op.key)] = batch.overlay[(op.partition, op.key)] = op.data
            elif isinstance(op, DeleteObject):
                self._overlay[(op.partition, op.key)] = batch.overlay[(op.partition, op.key)] = None
        batch.completions.append(on_done)
        self._wake.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                if not self._queued.completions:
                    if self._stopping:
                        return
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                # Let every task already runnable (readers holding more writes) go first, so this
                # commit takes everything that arrived in this turn of the event loop.
                await trio.lowlevel.cancel_shielded_checkpoint()
                batch, self._queued = self._queued, _Batch()
                self._in_flight = len(batch.completions)
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
                finally:
                    self._in_flight = 0
                self._finish(batch, error)
        finally:
            self._stopped.set()

    async def aclose(self) -> None:
        """Commit everything queued, then stop. Later submits are refused."""
        self._stopping = True
        self._wake.set()
        await self._stopped.wait()

    def _finish(self, batch: _Batch, error: DynError | None) -> None:
        if error is None:
            self.stats.commits += 1
            self.stats.ops += len(batch.ops)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch.completions))
        else:
            self.stats.failures += 1
            log.error("commit of %d writes failed: %s", len(batch.completions), error)
        for overlay_key, data in batch.overlay.items():
            # Drop the overlay entry only if no later write replaced it meanwhile.
            if overlay_key in self._overlay and self._overlay[overlay_key] is data:
                del self._overlay[overlay_key]
            if error is None:
                self._cache_put(overlay_key, data)
            else:
                self._cache_drop(overlay_key)
        for completion in batch.completions:
            try:
                completion(error)
            except Exception:
                log.exception("a commit completion failed")
