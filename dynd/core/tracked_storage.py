"""The Storage port the node's parts use: the store itself, keeping the Merkle forest current.

Every object write updates the forest when it is submitted (queued writes are visible to reads,
so the tree follows what reads see): an anti-entropy exchange never rescans the store. If the
submit is refused or its commit fails, the touched keys are re-read and noted again. Every other
call of the port passes straight through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from dynd.core.merkle import Forest
from dynd.core.ops import DeleteObject, PutObject, WriteOp
from dynd.core.ports import Completion, Storage
from dynd.protocol.errors import DynError


class TrackedStorage:
    """A Storage (`dynd.core.ports`) that keeps `forest` current on every object write."""

    # Every request reads through here: the inner store's own method, no wrapper call.
    read_object: Callable[[int, bytes], bytes | None]

    def __init__(self, inner: Storage, forest: Forest) -> None:
        self.inner = inner
        self.forest = forest
        self.read_object = inner.read_object

    def submit(self, ops: Sequence[WriteOp], on_done: Completion) -> None:
        touched = [op for op in ops if isinstance(op, (PutObject, DeleteObject))]
        if not touched:
            self.inner.submit(ops, on_done)
            return
        forest = self.forest
        for op in touched:
            if isinstance(op, PutObject):
                forest.note_put(op.partition, op.key, op.data)
            else:
                forest.note_delete(op.partition, op.key)

        def done(error: DynError | None) -> None:
            if error is not None:
                self._renote(touched)
            on_done(error)

        try:
            self.inner.submit(ops, done)
        except DynError:
            self._renote(touched)
            raise

    def partition_keys(self, partition: int, limit: int) -> list[bytes]:
        return self.inner.partition_keys(partition, limit)

    def partition_items(self, partition: int) -> Iterable[tuple[bytes, bytes]]:
        return self.inner.partition_items(partition)

    def read_hint(self, target: str, partition: int, key: bytes) -> bytes | None:
        return self.inner.read_hint(target, partition, key)

    def hint_batch(self, target: str, limit: int) -> list[tuple[int, bytes]]:
        return self.inner.hint_batch(target, limit)

    def hint_counts(self) -> dict[str, int]:
        return self.inner.hint_counts()

    def _renote(self, touched: list[PutObject | DeleteObject]) -> None:
        for op in touched:
            self.forest.note_record(op.partition, op.key, self.inner.read_object(op.partition, op.key))
