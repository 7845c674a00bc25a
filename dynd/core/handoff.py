"""Ownership handoff: data a node holds for partitions it is no longer a primary of moves away.

A pass starts every `handoff_interval_ms` (when the previous one has finished). It lists the
partitions where this node holds keys but is not among the N primaries (after a join, a leave or a
remove, or writes it took for a partition it never owned) and moves them one at a time:

    next batch of up to `handoff_batch_keys` keys  ->  Handoff to every primary
    every primary confirmed (merged and durable)   ->  delete the keys whose record is still the
                                                        one sent (a write that arrived meanwhile
                                                        stays, and goes out with the next batch),
                                                        and take a new actor epoch in the same
                                                        commit (see Node._renew_actor)
    deletes durable                                 ->  next batch; none left: next partition
    a primary failed or the ring gave it back       ->  leave the partition for the next pass

A leaving node that holds nothing more (no key of any partition, writes not yet committed
included, and no hint) records its own removal. A node that is not a member (removed) hands
nothing off: the members no longer take peer requests from it. Only one batch is in flight, so
handoff never takes more than one batch's worth of the network and disk at a time; the pacer
(admission control, `dynd.core.admission`) holds batches back and shrinks them while foreground
latency is high.

`transfers` describes the pass for `dynctl cluster transfers`: the partition being sent (its
targets, keys and bytes sent so far, when it started) and the ones queued after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynd.core.admission import Pacer, Unlimited
from dynd.core.cluster import ClusterView
from dynd.core.merkle import Forest
from dynd.core.ops import DeleteObject, WriteOp
from dynd.core.ports import Network, Storage
from dynd.core.timeouts import Timeout
from dynd.protocol import messages
from dynd.protocol.errors import DynError

log = logging.getLogger("dynd.handoff")

SENDING, PACED, QUEUED = "sending", "paced", "queued"


@dataclass(slots=True)
class _Transfer:
    """The partition being handed off now."""

    partition: int
    keys_total: int  # keys held when it started
    started_ms: int  # monotonic
    keys_sent: int = 0
    bytes_sent: int = 0


class Handoff:
    def __init__(
        self,
        name: str,
        partitions: int,
        cluster: ClusterView,
        storage: Storage,
        network: Network,
        *,
        interval_ms: int,
        batch_keys: int,
        now_ms: Callable[[], int],
        pacer: Pacer | None = None,
        renew_actor: Callable[[], list[WriteOp]] = list,
        forest: Forest | None = None,
        hints_pending: Callable[[], int] = lambda: 0,
    ) -> None:
        """`renew_actor`: ops that give the node a new actor epoch, committed with each batch
        of deletes (the node forgets the counters it issued for the deleted keys). `forest`:
        the node's Merkle trees, which know what it holds (writes not yet committed included)
        and how many keys each partition has; without it the store is asked. `hints_pending`:
        how many hints the node holds (a leaving node records its removal only at none)."""
        self.name = name
        self.forest = forest
        self.hints_pending = hints_pending
        self.renew_actor = renew_actor
        self.pacer: Pacer = pacer or Unlimited()
        self._parked: int | None = None  # a partition whose next batch waits for the pacer
        self.partitions = partitions
        self.cluster = cluster
        self.storage = storage
        self.network = network
        self.interval_ms = interval_ms
        self.batch_keys = batch_keys
        self.now_ms = now_ms
        self.pending: list[int] = []  # partitions of this pass not yet moved
        self.running = False
        self.moved_keys = 0  # keys of the partition in progress handed off so far
        self.keys_total = 0  # keys handed off since start, and their bytes (the node's stats)
        self.bytes_total = 0
        self.partitions_total = 0  # partitions handed off whole since start
        self.current: _Transfer | None = None
        self._hints_waited = 0  # the hint count a leaving node last said it waits for
        self.next_pass = Timeout("handoff pass", interval_ms, start_ms=now_ms())

    @property
    def transfers_pending(self) -> int:
        return len(self.pending)

    def held(self) -> list[int]:
        """Partitions this node holds any key of."""
        if self.forest is not None:
            return self.forest.held()
        return [partition for partition in range(self.partitions) if self.storage.partition_keys(partition, 1)]

    def keys_held(self, partition: int) -> int:
        if self.forest is not None:
            return len(self.forest.tree(partition))
        return len(self.storage.partition_keys(partition, self.batch_keys))  # a floor, without the trees

    def partitions_to_move(self) -> list[int]:
        return [partition for partition in self.held() if self.name not in self.cluster.preference_list(partition).primaries]

    def tick(self) -> None:
        now = self.now_ms()
        if self.cluster.removed:
            return  # not a member: the members take no handoff from it
        if self._parked is not None and self.pacer.allow(now):
            partition, self._parked = self._parked, None
            self._next_batch(partition)
            return
        if self.running or not self.next_pass.due(now):
            return
        self.next_pass.start(now)
        self.start_pass()

    def start_pass(self) -> None:
        self.pending = self.partitions_to_move()
        self.running = True
        self._next_partition()

    def _next_partition(self) -> None:
        self.moved_keys = 0
        self.current = None
        if not self.pending:
            self.running = False
            if self.cluster.is_leaving and not self.partitions_to_move():
                hints = self.hints_pending()
                if hints:
                    if hints != self._hints_waited:  # once per count, not once per pass
                        log.info("handed every partition off; waiting for %d hints to reach their nodes before leaving", hints)
                        self._hints_waited = hints
                    return
                log.info("handed everything off; recording this node's removal")
                self.cluster.finish_leaving()
            return
        partition = self.pending[0]
        self.current = _Transfer(partition, self.keys_held(partition), self.now_ms())
        self._next_batch(partition)

    def _partition_done(self, partition: int, moved_all: bool) -> None:
        if moved_all and self.moved_keys:
            targets = self.cluster.preference_list(partition).primaries
            log.info("handed off partition %d (%d keys) to %s", partition, self.moved_keys, ", ".join(targets))
            self.partitions_total += 1
        self.pending.pop(0)
        self._next_partition()

    def transfers(self, wall_offset_ms: int) -> list[messages.TransferView]:
        """The partition being sent and those queued after it in this pass; `wall_offset_ms`
        turns the monotonic start into wall-clock time."""
        views = []
        for position, partition in enumerate(self.pending):
            targets = list(self.cluster.preference_list(partition).primaries)
            current = self.current
            if position == 0 and current is not None and current.partition == partition:
                state = PACED if self._parked == partition else SENDING
                views.append(
                    messages.TransferView(
                        self.name, partition, targets, state, current.keys_sent, current.bytes_sent,
                        max(current.keys_total, current.keys_sent), current.started_ms + wall_offset_ms,
                    )  # fmt: skip
                )
            else:
                views.append(messages.TransferView(self.name, partition, targets, QUEUED, 0, 0, self.keys_held(partition), 0))
        return views

    def _next_batch(self, partition: int) -> None:
        if not self.pacer.allow(self.now_ms()):
            self._parked = partition  # foreground latency is high: the next tick tries again
            return
        targets = self.cluster.preference_list(partition).primaries
        if self.name in targets:
            self._partition_done(partition, True)  # the ring changed back: we own it again
            return
        items = []
        for key in self.storage.partition_keys(partition, min(self.batch_keys, self.pacer.slice_keys())):
            record = self.storage.read_object(partition, key)
            if record is not None:
                items.append(messages.HandoffItem(key, record))
        if not items:
            self._partition_done(partition, True)
            return
        answers: dict[str, Any] = {}

        def answered(target: str) -> Callable[[Any], None]:
            def record_answer(answer: Any) -> None:
                answers[target] = answer
                if len(answers) == len(targets):
                    self._all_answered(partition, items, answers)

            return record_answer

        for target in targets:
            self.network.send(target, lambda rid: messages.Handoff(id=rid, partition=partition, items=items), answered(target))

    def _all_answered(self, partition: int, items: list[messages.HandoffItem], answers: dict[str, Any]) -> None:
        failed = sorted(t for t, answer in answers.items() if not isinstance(answer, messages.HandoffOk))
        if failed:
            log.info("handoff of partition %d waits for %s", partition, ", ".join(failed))
            self._partition_done(partition, False)
            return
        deletes = [DeleteObject(partition, item.key) for item in items if self.storage.read_object(partition, item.key) == item.record]

        def deleted(error: Any) -> None:
            if error is not None:
                log.warning("handoff of partition %d could not delete its sent keys: %s", partition, error)
                self._partition_done(partition, False)
                return
            sent_bytes = sum(len(item.key) + len(item.record) for item in items)
            self.moved_keys += len(deletes)
            self.keys_total += len(deletes)
            self.bytes_total += sent_bytes
            if self.current is not None and self.current.partition == partition:
                self.current.keys_sent += len(deletes)
                self.current.bytes_sent += sent_bytes
            self._next_batch(partition)

        if not deletes:
            # Every key changed while in flight: send the new records next. No progress was made,
            # so stop here rather than spin; the next pass retries.
            self._partition_done(partition, False)
            return
        try:
            self.storage.submit([*deletes, *self.renew_actor()], deleted)
        except DynError as exc:
            deleted(exc)
