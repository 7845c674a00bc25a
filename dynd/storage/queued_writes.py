"""Writes submitted to a Storage port but not yet committed: the next batch, and the overlay reads see.

Every implementation of the core's Storage port (`dynd.core.ports`) queues writes and commits them
later as one batch, and until that commit lands a queued object or hint must stay visible to reads
(a put reads the object it replaces; a second hint for a key merges into the first). This class is
that queue, written once for the daemon's group committer (`dynd.shell.committer`), the simulated
disk (`dynd.sim.disk`) and the test double (`dynd.testing.storage`):

- `add` puts ops and their completion into the open batch and makes them visible at once.
- `take` closes the open batch for commit and opens the next; at most one batch is committing at a
  time (group commit: whatever arrives meanwhile waits for the next one).
- `settle` is called when that commit has landed or failed: its keys stop shadowing the store,
  except those a write in the open batch has replaced since. After a failure the reads fall back
  to the store, which holds what it held before, as the port's contract asks.

It is on the daemon's hot path (every put passes through `add`), so it dispatches on the exact op
type and keeps the per-op work to two dict stores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dynd.core.ops import DeleteHint, DeleteObject, PutHint, PutMeta, PutObject, WriteOp
from dynd.protocol.errors import DynError
from dynd.storage.base import Store

ObjectKey = tuple[int, bytes]  # (partition, key)
HintKey = tuple[str, int, bytes]  # (target, partition, key)
Completion = Callable[[DynError | None], None]


@dataclass(slots=True)
class Batch:
    """One commit's worth of writes, in submit order, with the completions to run once it settles."""

    ops: list[WriteOp] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    # The value each object and hint key takes in this batch (None: deleted).
    objects: dict[ObjectKey, bytes | None] = field(default_factory=dict)
    hints: dict[HintKey, bytes | None] = field(default_factory=dict)
    # Meta records only need their latest value within one commit.
    meta: dict[str, PutMeta] = field(default_factory=dict)

    def all_ops(self) -> list[WriteOp]:
        """What the commit applies: the ops in submit order, then the latest value of each meta record."""
        return [*self.ops, *self.meta.values()]


class QueuedWrites:
    def __init__(self) -> None:
        # The newest queued value of every key written since its last commit settled (None:
        # deleted); a key absent here is read from the store.
        self.objects: dict[ObjectKey, bytes | None] = {}
        self.hints: dict[HintKey, bytes | None] = {}
        self.open = Batch()
        self._committing: Batch | None = None

    def add(self, ops: Sequence[WriteOp], on_done: Completion) -> None:
        """Queue `ops` for the next commit, visible to reads from now on; `on_done` runs when it settles."""
        batch = self.open
        objects, hints = self.objects, self.hints
        for op in ops:
            kind = type(op)
            if kind is PutObject or kind is DeleteObject:
                object_key = (op.partition, op.key)  # type: ignore[union-attr]
                objects[object_key] = batch.objects[object_key] = op.data if kind is PutObject else None  # type: ignore[union-attr]
            elif kind is PutHint or kind is DeleteHint:
                hint_key = (op.target, op.partition, op.key)  # type: ignore[union-attr]
                hints[hint_key] = batch.hints[hint_key] = op.data if kind is PutHint else None  # type: ignore[union-attr]
            else:  # meta is not read through the port
                batch.meta[op.name] = op  # type: ignore[union-attr]
                continue
            batch.ops.append(op)
        batch.completions.append(on_done)

    @property
    def waiting(self) -> int:
        """Submits whose completion has not run yet: the open batch's and the committing one's."""
        committing = self._committing
        return len(self.open.completions) + (0 if committing is None else len(committing.completions))

    def take(self) -> Batch:
        """Close the open batch for commit (it stays visible to reads until `settle`)."""
        assert self._committing is None, "one batch commits at a time"
        batch, self.open = self.open, Batch()
        self._committing = batch
        return batch

    def settle(self, batch: Batch) -> None:
        """`batch` committed or failed: reads of its keys go to the store again unless a write still
        queued replaced them. Does not run the completions (the caller does, after its own
        bookkeeping)."""
        assert batch is self._committing
        self._committing = None
        objects, newer_objects = self.objects, self.open.objects
        for object_key in batch.objects:
            if object_key not in newer_objects:
                del objects[object_key]
        hints, newer_hints = self.hints, self.open.hints
        for hint_key in batch.hints:
            if hint_key not in newer_hints:
                del hints[hint_key]


_ABSENT = object()


class QueuedStoreReads:
    """The read half of a Storage port over a `Store` and the writes queued for it, shared by the
    ports that commit to an in-process store (`dynd.sim.disk.SimDisk`, `dynd.testing.MemoryStorage`):
    a queued object or hint shadows the store; the scans see only what is committed, as the port
    allows. A subclass sets `store` and `queue` and supplies `submit`."""

    store: Store
    queue: QueuedWrites

    def read_object(self, partition: int, key: bytes) -> bytes | None:
        queued = self.queue.objects.get((partition, key), _ABSENT)
        if queued is not _ABSENT:
            return queued  # type: ignore[return-value]
        return self.store.get_object(partition, key)

    def read_hint(self, target: str, partition: int, key: bytes) -> bytes | None:
        queued = self.queue.hints.get((target, partition, key), _ABSENT)
        if queued is not _ABSENT:
            return queued  # type: ignore[return-value]
        return self.store.get_hint(target, partition, key)

    def partition_keys(self, partition: int, limit: int) -> list[bytes]:
        """Committed keys only (the port allows a queued key to be missing until it commits)."""
        return [key for (key, _record), _ in zip(self.store.iter_partition(partition), range(limit))]

    def partition_items(self, partition: int) -> list[tuple[bytes, bytes]]:
        """Every committed (key, record) of the partition, in key order."""
        return list(self.store.iter_partition(partition))

    def hint_batch(self, target: str, limit: int) -> list[tuple[int, bytes]]:
        """Committed hints only, like `partition_keys`."""
        return [(partition, key) for (partition, key, _record), _ in zip(self.store.iter_hints(target), range(limit))]

    def hint_counts(self) -> dict[str, int]:
        return self.store.hint_counts()
