"""The simulated disk: the Storage port of one node process over its host's MemoryStore.

Rules (the same as the daemon's group committer, `dynd.shell.committer`):
- `submit` queues ops and returns at once; queued objects are visible to `read_object` and
  `partition_keys` at once (the overlay).
- The first submit after a commit schedules the next commit a small seeded delay later; that commit
  takes everything queued (group commit), applies it to the store atomically, then runs the
  completions in submit order.
- The store holds exactly what was committed. A crash drops this object, its queue and its overlay;
  the next process of the host starts from the store alone.
- Commits and completions run inside the process: a paused process commits nothing until resumed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from dynd.core.ops import DeleteHint, DeleteObject, PutHint, PutObject, WriteOp
from dynd.protocol.errors import DynError
from dynd.sim.loop import Loop, Timer
from dynd.sim.process import Process
from dynd.storage.memory import MemoryStore

_ABSENT = object()


class SimDisk:
    def __init__(self, store: MemoryStore, process: Process, loop: Loop, rng: random.Random, commit_delay_ms: tuple[int, int]) -> None:
        self.store = store
        self.process = process
        self.loop = loop
        self.rng = rng
        self.commit_delay_ms = commit_delay_ms
        self._overlay: dict[tuple[int, bytes], bytes | None] = {}
        self._hint_overlay: dict[tuple[str, int, bytes], bytes | None] = {}
        self._ops: list[WriteOp] = []
        self._completions: list[Callable[[DynError | None], None]] = []
        self._commit: Timer | None = None
        self.commits = 0

    # ---- the Storage port ----

    def read_object(self, partition: int, key: bytes) -> bytes | None:
        held = self._overlay.get((partition, key), _ABSENT)
        if held is not _ABSENT:
            return held  # type: ignore[return-value]
        return self.store.get_object(partition, key)

    def submit(self, ops: Sequence[WriteOp], on_done: Callable[[DynError | None], None]) -> None:
        for op in ops:
            if isinstance(op, PutObject):
                self._overlay[(op.partition, op.key)] = op.data
            elif isinstance(op, DeleteObject):
                self._overlay[(op.partition, op.key)] = None
            elif isinstance(op, PutHint):
                self._hint_overlay[(op.target, op.partition, op.key)] = op.data
            elif isinstance(op, DeleteHint):
                self._hint_overlay[(op.target, op.partition, op.key)] = None
        self._ops.extend(ops)
        self._completions.append(on_done)
        if self._commit is None:
            self._commit = self.loop.after(self.rng.randint(*self.commit_delay_ms), lambda: self.process.run(self._run_commit))

    def partition_keys(self, partition: int, limit: int) -> list[bytes]:
        """Committed keys only (the port allows a queued key to be missing until it commits)."""
        keys = []
        for key, _ in self.store.iter_partition(partition):
            if len(keys) >= limit:
                break
            keys.append(key)
        return keys

    def partition_items(self, partition: int) -> list[tuple[bytes, bytes]]:
        """Every committed (key, record) of the partition, in key order."""
        return list(self.store.iter_partition(partition))

    def read_hint(self, target: str, partition: int, key: bytes) -> bytes | None:
        held = self._hint_overlay.get((target, partition, key), _ABSENT)
        if held is not _ABSENT:
            return held  # type: ignore[return-value]
        return self.store.get_hint(target, partition, key)

    def hint_batch(self, target: str, limit: int) -> list[tuple[int, bytes]]:
        """Committed hints only, like `partition_keys`."""
        batch = []
        for partition, key, _ in self.store.iter_hints(target):
            if len(batch) >= limit:
                break
            batch.append((partition, key))
        return batch

    def hint_counts(self) -> dict[str, int]:
        return self.store.hint_counts()

    # ---- machinery ----

    def _run_commit(self) -> None:
        self._commit = None
        ops, self._ops = self._ops, []
        completions, self._completions = self._completions, []
        self.store.write(ops)
        self._overlay.clear()  # everything queued is committed now
        self._hint_overlay.clear()
        self.commits += 1
        self.loop.trace("commit", self.process.host, len(ops))
        for done in completions:  # each on its own, so one failing completion cannot starve the rest
            self.process.run(lambda done=done: done(None))
