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

A leaving node that holds nothing more records its own removal. Only one batch is in flight, so
handoff never takes more than one batch's worth of the network and disk at a time; the pacer
(admission control, `dynd.core.admission`) holds batches back and shrinks them while foreground
latency is high.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dynd.core.admission import Pacer, Unlimited
from dynd.core.cluster import ClusterView
from dynd.core.ops import DeleteObject, WriteOp
from dynd.core.ports import Network, Storage
from dynd.core.timeouts import Timeout
from dynd.protocol import messages
from dynd.protocol.errors import DynError

log = logging.getLogger("dynd.handoff")


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
    ) -> None:
        """`renew_actor`: ops that give the node a new actor epoch, committed with each batch
        of deletes (the node forgets the counters it issued for the deleted keys)."""
        self.name = name
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
        self.next_pass = Timeout("handoff pass", interval_ms, start_ms=now_ms())

    @property
    def transfers_pending(self) -> int:
        return len(self.pending)

    def partitions_to_move(self) -> list[int]:
        return [
            partition
            for partition in range(self.partitions)
            if self.name not in self.cluster.preference_list(partition).primaries and self.storage.partition_keys(partition, 1)
        ]

    def tick(self) -> None:
        now = self.now_ms()
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
        if not self.pending:
            self.running = False
            if self.cluster.is_leaving and not self.partitions_to_move():
                log.info("handed everything off; recording this node's removal")
                self.cluster.finish_leaving()
            return
        self._next_batch(self.pending[0])

    def _partition_done(self, partition: int, moved_all: bool) -> None:
        if moved_all and self.moved_keys:
            targets = self.cluster.preference_list(partition).primaries
            log.info("handed off partition %d (%d keys) to %s", partition, self.moved_keys, ", ".join(targets))
        self.pending.pop(0)
        self._next_partition()

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
            self.moved_keys += len(deletes)
            self.keys_total += len(deletes)
            self.bytes_total += sum(len(item.key) + len(item.record) for item in items)
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
