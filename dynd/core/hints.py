"""Hinted handoff: writes held for a primary that was down go to it once it is back.

A fallback that stood in for a primary (or a coordinator that found no fallback) keeps the record
in the `hints` keyspace under (primary, partition, key). Delivery:

    every hint_delivery_interval_ms, pick the next target (round robin) holding hints that is
    usable again  ->  Replicate up to hint_batch_keys of its hinted records to it
    every one answered                 ->  delete each hint whose record is still the one sent
                                            (a newer hinted write stays for the next batch)
    a full batch went through          ->  the next batch at the next tick (so at most one batch
                                            is in flight and delivery yields to foreground work)

The pacer (admission control) holds delivery back and shrinks batches while foreground latency
is high.

A hint for a node that is no longer an active member goes to the key's current primaries
instead, and is deleted once all of them have it.

Hints expire with the tombstone grace period (as Cassandra's hints live no longer than
gc_grace): a sibling written more than `tombstone_grace_ms` ago is not delivered. A delete that
superseded it came after it, so by then the delete's tombstone may have been reaped on every
primary, and delivering the old value would bring the deleted key back. Whatever such a sibling
still holds that is current, the other replicas hold too and anti-entropy brings it over. A hint
left with no sibling to deliver is deleted unsent. `counts` (hints per target) is read from storage
once at start and kept up to date as hints are stored and deleted; it feeds `cluster status`.

Two clocks: a hinted sibling's age is read on the wall clock (`wall_ms`), against the timestamp the
coordinator's wall clock gave it, since it is measured as other nodes measure the age of the
tombstones they reap; the delivery timer runs on the monotonic clock (`now_ms`), so a wall clock
that steps neither floods nor stalls delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dynd.core.admission import Pacer, Unlimited
from dynd.core.cluster import ClusterView
from dynd.core.health import Health
from dynd.core.ops import DeleteHint, PutHint
from dynd.core.ports import Network, Storage
from dynd.core.replica import decode_record, encode_record
from dynd.core.timeouts import Timeout
from dynd.core.versions import SiblingSet
from dynd.protocol import messages
from dynd.protocol.errors import DynError

log = logging.getLogger("dynd.hints")


class HintDelivery:
    def __init__(
        self,
        name: str,
        cluster: ClusterView,
        storage: Storage,
        network: Network,
        health: Health,
        *,
        interval_ms: int,
        batch_keys: int,
        grace_ms: int,
        prune_threshold: int,
        now_ms: Callable[[], int],
        wall_ms: Callable[[], int],
        pacer: Pacer | None = None,
    ) -> None:
        """`now_ms`: the monotonic clock, for the delivery timer; `wall_ms`: the wall clock, for
        the age of a hinted sibling (see the module docstring)."""
        self.name = name
        self.pacer: Pacer = pacer or Unlimited()
        self.cluster = cluster
        self.storage = storage
        self.network = network
        self.health = health
        self.interval_ms = interval_ms
        self.batch_keys = batch_keys
        self.grace_ms = grace_ms
        self.prune_threshold = prune_threshold
        self.now_ms = now_ms
        self.wall_ms = wall_ms
        self.expired_total = 0  # hinted siblings not delivered because they outlived the grace period
        self.counts: dict[str, int] = {target: n for target, n in storage.hint_counts().items() if n}
        self.delivered_total = 0
        self.stored_total = 0  # hints queued since start, a new or a replaced one (the node's stats)
        self.in_flight = False
        self.delivery = Timeout("hint delivery", interval_ms, start_ms=now_ms())
        self._last_target = ""

    @property
    def pending(self) -> int:
        return sum(self.counts.values())

    def stored(self, target: str, existed: bool) -> None:
        """A hint for `target` was queued; `existed`: it replaced one for the same key."""
        self.stored_total += 1
        if not existed:
            self.counts[target] = self.counts.get(target, 0) + 1

    def hint_ops(self, target: str, partition: int, key: bytes, record: bytes, merge: Callable[[bytes | None, bytes], bytes | None]) -> list[PutHint]:
        """The op that keeps `record` for `target`, merged into any hint already held; counts it."""
        held = self.storage.read_hint(target, partition, key)
        merged = merge(held, record)
        if merged is None:  # what we hold already covers it
            return []
        self.stored(target, held is not None)
        return [PutHint(target, partition, key, merged)]

    def tick(self) -> None:
        now = self.now_ms()
        # `due`, not `fired`: a batch that found nothing to send leaves it due for the next tick.
        if self.in_flight or not self.counts or not self.delivery.due(now) or not self.pacer.allow(now):
            return
        if self.cluster.removed:
            return  # not a member: the members take no replica from it (a leaving node delivers first)
        target = self._next_target()
        if target is None:
            self.delivery.start(now)
            return
        self._deliver(target)

    def _next_target(self) -> str | None:
        ready = sorted(t for t in self.counts if self.health.usable(t) or not self._is_member(t))
        if not ready:
            return None
        later = [t for t in ready if t > self._last_target]
        self._last_target = (later or ready)[0]
        return self._last_target

    def _is_member(self, name: str) -> bool:
        return name in {m.name for m in self.cluster.membership.active()}

    def _deliver(self, target: str) -> None:
        limit = min(self.batch_keys, self.pacer.slice_keys())
        batch = self.storage.hint_batch(target, limit)
        if not batch:
            self.counts.pop(target, None)  # the count drifted (a failed commit): nothing is held
            return
        items = [(partition, key, self.storage.read_hint(target, partition, key)) for partition, key in batch]
        sends: list[tuple[str, int, bytes, bytes]] = []
        for partition, key, record in items:
            if record is None:
                continue
            deliverable = self._unexpired(record)
            if deliverable is None:
                continue  # nothing left to deliver: `_delivered` deletes it unsent
            receivers = [target] if self._is_member(target) else list(self.cluster.preference_list(partition).primaries)
            sends += [(receiver, partition, key, deliverable) for receiver in receivers]
        if not sends:
            self.in_flight = True
            self._delivered(target, items, set(), full=len(batch) == limit)
            return
        self.in_flight = True
        failed: set[tuple[int, bytes]] = set()
        remaining = len(sends)

        def answered(partition: int, key: bytes) -> Callable[[Any], None]:
            def record_answer(answer: Any) -> None:
                nonlocal remaining
                remaining -= 1
                if not isinstance(answer, messages.ReplicateOk):
                    failed.add((partition, key))
                if remaining == 0:
                    self._delivered(target, items, failed, full=len(batch) == limit)

            return record_answer

        for receiver, partition, key, record in sends:
            self.network.send(receiver, _replicate(key, record), answered(partition, key))

    def _unexpired(self, record: bytes) -> bytes | None:
        """The hinted record without the siblings older than the grace period (see the module
        docstring), or None when none is left."""
        held = decode_record(record)
        oldest_kept_ms = self.wall_ms() - self.grace_ms
        if all(s.timestamp_ms > oldest_kept_ms for s in held.siblings):
            return record
        kept = tuple(s for s in held.siblings if s.timestamp_ms > oldest_kept_ms)
        self.expired_total += len(held.siblings) - len(kept)
        log.info("not delivering %d hinted sibling(s) older than tombstone_grace_ms", len(held.siblings) - len(kept))
        if not kept:
            return None
        return encode_record(SiblingSet(kept, held.seen), self.prune_threshold)

    def _delivered(self, target: str, items: list[tuple[int, bytes, bytes | None]], failed: set[tuple[int, bytes]], full: bool) -> None:
        deletes = [
            DeleteHint(target, partition, key)
            for partition, key, record in items
            if record is not None and (partition, key) not in failed and self.storage.read_hint(target, partition, key) == record
        ]

        def done(error: DynError | None) -> None:
            self.in_flight = False
            if error is not None:
                log.warning("could not delete delivered hints for %s: %s", target, error)
            else:
                self.delivered_total += len(deletes)
                left = self.counts.get(target, 0) - len(deletes)
                if left > 0:
                    self.counts[target] = left
                else:
                    self.counts.pop(target, None)
                    log.info("delivered every hint held for %s", target)
            # A full batch that went through: more may wait, so go on at the next tick.
            self.delivery.start(self.now_ms(), 0 if full and not failed else None)

        if not deletes:
            done(None)
            return
        try:
            self.storage.submit(deletes, done)
        except DynError as exc:
            done(exc)


def _replicate(key: bytes, record: bytes) -> Callable[[int], messages.Replicate]:
    return lambda request_id: messages.Replicate(id=request_id, key=key, record=record)
