"""An in-memory Storage port (`dynd.core.ports.Storage`) whose commits the test drives.

It keeps the port's whole contract, with the same queue as the daemon and the simulator
(`dynd.storage.queued_writes`): a submitted write is visible to `read_object` and `read_hint` at
once and reaches the store, where `partition_keys`, `partition_items` and `hint_batch` see it, only
when the test calls `commit()` (or at once, with `autocommit=True`). Faults on demand:
`fail_next_commit()` makes the next commit apply nothing and fail every completion of its batch (a
disk error), `refuse_writes()` makes `submit` raise having queued nothing (a full disk).

For assertions: `objects`, `hints` and `meta` are what is committed, `commits` the ops of each
commit that landed. Synchronous and single-threaded, like the core: no trio, no clock.

    storage = MemoryStorage()
    storage.submit([PutObject(0, b"k", b"record")], outcomes.append)
    assert storage.read_object(0, b"k") == b"record" and storage.objects == {}
    storage.commit()
    assert outcomes == [None] and storage.objects == {(0, b"k"): b"record"}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dynd.core.ops import WriteOp
from dynd.core.ports import Completion
from dynd.protocol.errors import DynError, Internal, StorageFull
from dynd.storage.base import split_hint_key, split_object_key
from dynd.storage.memory import MemoryStore
from dynd.storage.queued_writes import QueuedStoreReads, QueuedWrites



class MemoryStorage(QueuedStoreReads):
    def __init__(self, *, autocommit: bool = False) -> None:
        self.autocommit = autocommit
        self.store = MemoryStore()
        self.queue = QueuedWrites()
        # The ops of every commit that landed, in commit order (a batch's meta records last).
        self.commits: list[list[WriteOp]] = []
        self.failed_commits = 0
        self.submits = 0  # accepted ones
        self._fail_next: DynError | None = None
        self._refusal: DynError | None = None

    # ---- the Storage port ----

    def submit(self, ops: Sequence[WriteOp], on_done: Completion) -> None:
        if self._refusal is not None:
            raise self._refusal
        self.queue.add(ops, on_done)
        self.submits += 1
        if self.autocommit:
            self.commit()

    # ---- control, for the test ----

    def commit(self) -> int:
        """Commit everything queued as one batch, then run its completions in submit order.

        Returns how many completions ran (0: nothing was queued, no commit happened). A completion
        that submits more queues it for the next commit (or commits it at once, with autocommit).
        """
        if not self.queue.open.completions:
            return 0
        batch = self.queue.take()
        error, self._fail_next = self._fail_next, None
        ops = batch.all_ops()
        if error is None:
            try:
                self.store.write(ops)  # applies all or nothing
            except DynError as exc:
                error = exc
        self.queue.settle(batch)
        if error is None:
            self.commits.append(ops)
        else:
            self.failed_commits += 1
        for on_done in batch.completions:
            on_done(error)
        return len(batch.completions)

    @property
    def queued(self) -> int:
        """Submits waiting for a commit."""
        return len(self.queue.open.completions)

    def fail_next_commit(self, error: DynError | None = None) -> None:
        """The next commit applies nothing and fails each completion of its batch with `error`."""
        self._fail_next = error if error is not None else Internal("disk error: the commit failed")

    def refuse_writes(self, error: DynError | None = None) -> None:
        """From now on `submit` raises `error` (a full disk by default) and queues nothing."""
        self._refusal = error if error is not None else StorageFull("the disk is full")

    def accept_writes(self) -> None:
        self._refusal = None

    def preload(self, ops: Iterable[WriteOp]) -> None:
        """Put `ops` in the store as if committed before the test began (no completion, not in `commits`)."""
        self.store.write(ops)

    # ---- what is committed, for assertions ----

    @property
    def objects(self) -> dict[tuple[int, bytes], bytes]:
        """Every committed object, {(partition, key): record}."""
        # MemoryStore has no whole-table scan of its own; this double is its only such reader.
        return {split_object_key(encoded): record for encoded, record in self.store._objects.items()}

    @property
    def hints(self) -> dict[tuple[str, int, bytes], bytes]:
        """Every committed hint, {(target, partition, key): record}."""
        return {split_hint_key(encoded): record for encoded, record in self.store._hints.items()}

    @property
    def meta(self) -> dict[str, bytes]:
        """Every committed meta record, {name: data}."""
        return {encoded.decode("utf-8"): data for encoded, data in self.store._meta.items()}

