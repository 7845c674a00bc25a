"""The daemon's implementation of the core's Storage port: the group committer over LMDB.

The committer keeps queued objects visible to reads (its overlay); hints get the same here, so a
second hinted write for one key merges into the first even before that one's commit lands.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from dynd.core.ops import DeleteHint, PutHint, WriteOp
from dynd.core.ports import Completion
from dynd.protocol.errors import DynError
from dynd.shell.committer import GroupCommitter
from dynd.storage.base import Store

HintKey = tuple[str, int, bytes]


class CommitterStorage:
    def __init__(self, committer: GroupCommitter, store: Store) -> None:
        self.committer = committer
        self.store = store
        # Bound once: this runs on every request.
        self.read_object = committer.read_object
        self._queued_hints: dict[HintKey, bytes | None] = {}

    def submit(self, ops: Sequence[WriteOp], on_done: Completion) -> None:
        hints = [op for op in ops if isinstance(op, (PutHint, DeleteHint))]
        if not hints:
            self.committer.submit(ops, on_done)
            return
        self.committer.submit(ops, lambda error: self._hints_done(hints, on_done, error))
        for op in hints:
            self._queued_hints[(op.target, op.partition, op.key)] = op.data if isinstance(op, PutHint) else None

    def _hints_done(self, hints: list[PutHint | DeleteHint], on_done: Completion, error: DynError | None) -> None:
        for op in hints:
            hint_key = (op.target, op.partition, op.key)
            queued = self._queued_hints.get(hint_key, b"")
            # Drop the entry only if no later write replaced it meanwhile.
            if queued is (op.data if isinstance(op, PutHint) else None):
                del self._queued_hints[hint_key]
        on_done(error)

    def read_hint(self, target: str, partition: int, key: bytes) -> bytes | None:
        hint_key = (target, partition, key)
        if hint_key in self._queued_hints:
            return self._queued_hints[hint_key]
        return self.store.get_hint(target, partition, key)

    def partition_keys(self, partition: int, limit: int) -> list[bytes]:
        keys = self.store.iter_partition(partition)
        try:
            return [key for (key, _stored), _ in zip(keys, range(limit))]
        finally:
            keys.close()  # type: ignore[attr-defined]

    def partition_items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        return self.store.iter_partition(partition)

    def hint_batch(self, target: str, limit: int) -> list[tuple[int, bytes]]:
        hints = self.store.iter_hints(target)
        try:
            return [(partition, key) for (partition, key, _data), _ in zip(hints, range(limit))]
        finally:
            hints.close()  # type: ignore[attr-defined]

    def hint_counts(self) -> dict[str, int]:
        return self.store.hint_counts()
