"""The simulated disk: the Storage port of one node process over its host's MemoryStore.

Rules (the same as the daemon's group committer, `dynd.shell.committer`, over the same queue,
`dynd.storage.queued_writes`):
- `submit` queues ops and returns at once; queued objects and hints are visible to `read_object`
  and `read_hint` at once; the scans (`partition_keys`, `hint_batch`) see the store.
- The first submit after a commit schedules the next commit a small seeded delay later; that commit
  takes everything queued (group commit), applies it to the store atomically, then runs the
  completions in submit order.
- The store holds exactly what was committed. A crash drops this object, its queue and its faults;
  the next process of the host starts from the store alone.
- Commits and completions run inside the process: a paused process commits nothing until resumed.

Faults (`dynd.sim.faults`), each until healed: a failing disk applies nothing of a commit and fails
every completion of its batch (as an LMDB I/O error does), a full disk refuses `submit` with
`StorageFull` having queued nothing.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from dynd.core.ops import WriteOp
from dynd.core.ports import Completion
from dynd.protocol.errors import DynError, Internal, StorageFull
from dynd.sim.loop import Loop, Timer
from dynd.sim.process import Process
from dynd.storage.memory import MemoryStore
from dynd.storage.queued_writes import QueuedStoreReads, QueuedWrites

# The disk's fault kinds (`dynd.sim.faults`).
DISK_ERROR = "disk-error"  # every commit fails, applying nothing
DISK_FULL = "disk-full"  # every submit is refused


class SimDisk(QueuedStoreReads):
    def __init__(self, store: MemoryStore, process: Process, loop: Loop, rng: random.Random, commit_delay_ms: tuple[int, int]) -> None:
        self.store = store
        self.process = process
        self.loop = loop
        self.rng = rng
        self.commit_delay_ms = commit_delay_ms
        self.queue = QueuedWrites()
        self._commit: Timer | None = None
        self.commits = 0
        self.failed_commits = 0
        self.refused_submits = 0
        # Active faults by kind, counted so overlapping ones heal one at a time.
        self.faults: Counter[str] = Counter()

    # ---- the Storage port ----

    def submit(self, ops: Sequence[WriteOp], on_done: Completion) -> None:
        if self.faults[DISK_FULL] > 0:
            self.refused_submits += 1
            raise StorageFull(f"the disk of {self.process.host} is full")
        self.queue.add(ops, on_done)
        if self._commit is None:
            self._commit = self.loop.after(self.rng.randint(*self.commit_delay_ms), lambda: self.process.run(self._run_commit))

    # ---- machinery ----

    def _run_commit(self) -> None:
        self._commit = None
        batch = self.queue.take()
        ops = batch.all_ops()
        error: DynError | None = None
        if self.faults[DISK_ERROR] > 0:
            error = Internal(f"disk error on {self.process.host}: the commit of {len(ops)} writes failed")
        else:
            try:
                self.store.write(ops)  # all or nothing
            except DynError as exc:  # as the daemon's committer treats its engine's refusal
                error = exc
        self.queue.settle(batch)
        if error is None:
            self.commits += 1
            self.loop.trace("commit", self.process.host, len(ops))
        else:
            self.failed_commits += 1
            self.loop.trace("commit-failed", self.process.host, len(ops))
        for done in batch.completions:  # each on its own, so one failing completion cannot starve the rest
            self.process.run(lambda done=done: done(error))
