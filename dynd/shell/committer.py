"""Group commit: one long-lived thread commits everything pending in one durable transaction.

The event loop never waits on the disk. `submit` queues a batch of ops with a completion callback
and returns at once; the committer thread takes *everything* queued, writes it in one LMDB
transaction (one fsync for all of it), and hands the completions back to the trio thread through
the trio token. Until its commit lands, a queued object stays visible through `read_object`
(the overlay), so a read or a second write to the same key sees it.

A failed commit (a full map, a disk error) fails every completion of that batch; its ops are
dropped from the overlay, and nothing of it was applied.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from dynd.protocol.errors import DynError, Internal, Overloaded, ShuttingDown
from dynd.storage.base import DeleteObject, PutMeta, PutObject, Store, WriteOp

log = logging.getLogger("dynd.committer")

Completion = Callable[[DynError | None], None]
OverlayKey = tuple[int, bytes]


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
    def __init__(self, store: Store, *, pending_writes_max: int) -> None:
        self.store = store
        self.stats = CommitStats()
        self._pending_writes_max = pending_writes_max
        self._overlay: dict[OverlayKey, bytes | None] = {}
        self._queued = _Batch()
        self._queued_count = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._idle = trio.Event()
        self._idle.set()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name="dynd-committer", daemon=True)
        self._thread.start()

    # ---- trio side ----

    def read_object(self, partition: int, key: bytes) -> bytes | None:
        """The newest bytes of an object, committed or still queued."""
        overlay_key = (partition, key)
        if overlay_key in self._overlay:
            return self._overlay[overlay_key]
        return self.store.get_object(partition, key)

    def submit(self, ops: Sequence[WriteOp], on_done: Completion) -> None:
        """Queue ops for the next commit; `on_done(None)` runs once they are durable."""
        if self._stopping:
            raise ShuttingDown("the node is shutting down")
        if self._queued_count + self._in_flight >= self._pending_writes_max:
            raise Overloaded(f"{self._pending_writes_max} writes are already waiting for the disk (pending_writes_max)")
        overlay_updates: dict[OverlayKey, bytes | None] = {}
        for op in ops:
            if isinstance(op, PutObject):
                overlay_updates[(op.partition, op.key)] = op.data
            elif isinstance(op, DeleteObject):
                overlay_updates[(op.partition, op.key)] = None
        self._overlay.update(overlay_updates)
        with self._lock:
            for op in ops:
                if isinstance(op, PutMeta):
                    self._queued.meta[op.name] = op
                else:
                    self._queued.ops.append(op)
            self._queued.completions.append(on_done)
            self._queued.overlay.update(overlay_updates)
            self._queued_count += 1
            if self._idle.is_set():
                self._idle = trio.Event()
            self._wake.notify()

    async def aclose(self) -> None:
        """Commit everything queued, then stop the thread. Later submits are refused."""
        self._stopping = True
        with self._lock:
            self._wake.notify()
        await self._idle.wait()
        with self._lock:
            self._wake.notify()
        await trio.to_thread.run_sync(self._thread.join)

    def _finish(self, batch: _Batch, error: DynError | None) -> None:
        with self._lock:
            self._in_flight -= len(batch.completions)
        for overlay_key, data in batch.overlay.items():
            # Drop the overlay entry only if no later write replaced it meanwhile.
            if overlay_key in self._overlay and self._overlay[overlay_key] is data:
                del self._overlay[overlay_key]
        for completion in batch.completions:
            try:
                completion(error)
            except Exception:
                log.exception("a commit completion failed")
        with self._lock:
            drained = self._in_flight == 0 and self._queued_count == 0
        if drained:
            self._idle.set()

    # ---- committer thread ----

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queued.completions and not self._stopping:
                    self._wake.wait()
                if not self._queued.completions:
                    return  # stopping and drained
                batch, self._queued = self._queued, _Batch()
                count = self._queued_count
                self._queued_count = 0
                self._in_flight += count
            error: DynError | None = None
            try:
                self.store.write(batch.all_ops())
                self.stats.commits += 1
                self.stats.ops += len(batch.ops)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch.completions))
            except DynError as exc:
                error = exc
                self.stats.failures += 1
                log.error("commit of %d writes failed: %s", len(batch.completions), exc)
            except Exception as exc:  # a storage bug must not kill the thread and strand callers
                error = Internal(f"commit failed: {exc!r}")
                self.stats.failures += 1
                log.exception("commit of %d writes failed", len(batch.completions))
            try:
                self._token.run_sync_soon(self._finish, batch, error)
            except trio.RunFinishedError:
                return
