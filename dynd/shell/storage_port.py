"""The daemon's implementation of the core's Storage port: the group committer over LMDB."""

from __future__ import annotations

from dynd.shell.committer import GroupCommitter
from dynd.storage.base import Store


class CommitterStorage:
    def __init__(self, committer: GroupCommitter, store: Store) -> None:
        self.store = store
        # Bound once: these two run on every request.
        self.read_object = committer.read_object
        self.submit = committer.submit

    def partition_keys(self, partition: int, limit: int) -> list[bytes]:
        """Committed keys only; a key still queued shows up once its commit lands."""
        keys = self.store.iter_partition(partition)
        try:
            return [key for (key, _stored), _ in zip(keys, range(limit))]
        finally:
            keys.close()  # type: ignore[attr-defined]
