"""The daemon's implementation of the core's Storage port: the group committer over LMDB.

The committer's queue (`dynd.storage.queued_writes`) keeps queued objects and hints visible to
reads, so a second hinted write for one key merges into the first even before that one's commit
lands; the scans (`partition_keys`, `hint_batch`) read the committed store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from dynd.core.ops import WriteOp
from dynd.core.ports import Completion
from dynd.shell.committer import GroupCommitter
from dynd.storage.base import Store

_ABSENT = object()


class CommitterStorage:
    def __init__(self, committer: GroupCommitter, store: Store) -> None:
        self.committer = committer
        self.store = store
        # Bound once: these run on every request.
        self.read_object = committer.read_object
        self._queued_hints = committer.queue.hints

    def submit(self, ops: Sequence[WriteOp], on_done: Completion) -> None:
        self.committer.submit(ops, on_done)

    def read_hint(self, target: str, partition: int, key: bytes) -> bytes | None:
        queued = self._queued_hints.get((target, partition, key), _ABSENT)
        if queued is not _ABSENT:
            return queued  # type: ignore[return-value]
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
