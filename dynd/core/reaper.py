"""Tombstone reaping: deleted keys are removed for good, but only when that cannot resurrect them.

A delete is a tombstone (a sibling with no value) so that replicas that missed it learn of it. It
may go only once no replica can bring an older value back (DESIGN.md section 2):

    every reap_interval_ms, take the next partition this node is a primary of, and among its keys
    (from the Merkle forest, no store scan) those whose every sibling is a tombstone written more
    than tombstone_grace_ms ago (longer than hints and anti-entropy take to catch up)
    -> ask every other primary for its copy (they must all be usable and answer; and no member
       may be leaving, since a leaving node still hands over what it holds, which may be older)
    -> each holds the same versions, or none (it reaped already)
    -> delete ours, if it is still the record we examined

Each primary reaps its own copy. A replica that already reaped answers with nothing; one that has
not yet holds the same tombstone; either way the rest may go. Where nothing is stored, an expired
tombstone arriving later (anti-entropy, a late hint) is not stored again (`is_expired_tombstone`),
so reaped keys do not bounce between replicas.

A tombstone's age is read on the wall clock (`wall_ms`, against the timestamp its writer's wall
clock gave it: an age every node measures alike); the reaping timer runs on the monotonic clock
(`now_ms`), so a wall clock that steps neither runs every pass at once nor holds reaping off.

The grace period is the operator's promise: a node down for longer than it must be wiped before
it rejoins (as with Cassandra's gc_grace), or its stale values could come back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dynd.core.admission import Pacer, Unlimited
from dynd.core.cluster import ClusterView
from dynd.core.health import Health
from dynd.core.membership import LEAVING
from dynd.core.merkle import Forest
from dynd.core.ops import DeleteObject, WriteOp
from dynd.core.ports import Network, Storage
from dynd.core.replica import decode_record, deleted_at_ms
from dynd.core.timeouts import Timeout
from dynd.core.versions import SiblingSet
from dynd.protocol import messages
from dynd.protocol.errors import DynError

log = logging.getLogger("dynd.reaper")


def _same_versions(record: bytes, versions: SiblingSet) -> bool:
    """A peer's answer holds exactly these versions; a malformed one does not (and must not raise
    inside the reply callback, which would leave this reaping step waiting for good)."""
    try:
        return decode_record(record) == versions
    except Exception:
        return False


def is_expired_tombstone(record: bytes, wall_ms: int, grace_ms: int) -> bool:
    """Every sibling is a tombstone, the newest written more than `grace_ms` before `wall_ms`
    (the wall clock: sibling timestamps are the writers' wall clocks)."""
    deleted_ms = deleted_at_ms(record)
    return deleted_ms is not None and deleted_ms + grace_ms <= wall_ms


class Reaper:
    def __init__(
        self,
        name: str,
        cluster: ClusterView,
        storage: Storage,
        network: Network,
        forest: Forest,
        health: Health,
        *,
        interval_ms: int,
        batch_keys: int,
        grace_ms: int,
        now_ms: Callable[[], int],
        wall_ms: Callable[[], int],
        pacer: Pacer | None = None,
        renew_actor: Callable[[], list[WriteOp]] = list,
    ) -> None:
        """`now_ms`: the monotonic clock, for the reaping timer; `wall_ms`: the wall clock, for a
        tombstone's age. `renew_actor`: as for handoff, deleting keys forgets the counters this
        node issued for them, so each batch of deletes takes a new actor epoch in the same commit."""
        self.name = name
        self.renew_actor = renew_actor
        self.cluster = cluster
        self.storage = storage
        self.network = network
        self.forest = forest
        self.health = health
        self.interval_ms = interval_ms
        self.batch_keys = batch_keys
        self.grace_ms = grace_ms
        self.now_ms = now_ms
        self.wall_ms = wall_ms
        self.pacer: Pacer = pacer or Unlimited()
        self.reaped_total = 0
        self.in_flight = False
        self.reaping = Timeout("reaping", interval_ms, start_ms=now_ms())
        self._last_partition = -1

    def tick(self) -> None:
        now = self.now_ms()
        if self.in_flight or not self.reaping.due(now) or not self.forest.ready or not self.pacer.allow(now):
            return
        self.reaping.start(now)
        partition = self._next_partition()
        if partition is not None:
            self.reap(partition)

    def _next_partition(self) -> int | None:
        mine = [p for p in self.forest.held() if self.name in self.cluster.preference_list(p).primaries]
        if not mine:
            return None
        later = [p for p in mine if p > self._last_partition]
        self._last_partition = (later or mine)[0]
        return self._last_partition

    def candidates(self, partition: int) -> list[tuple[bytes, bytes, SiblingSet]]:
        """(key, record, versions) of this partition's expired tombstones, at most batch_keys."""
        now = self.wall_ms()
        found = []
        for segment in range(self.forest.segments):
            for key, _leaf in self.forest.entries(partition, segment):
                record = self.storage.read_object(partition, key)
                if record is not None and is_expired_tombstone(record, now, self.grace_ms):
                    found.append((key, record, decode_record(record)))
                    if len(found) >= self.batch_keys:
                        return found
        return found

    def reap(self, partition: int) -> None:
        others = [p for p in self.cluster.preference_list(partition).primaries if p != self.name]
        if any(not self.health.usable(p) for p in others):
            return  # a primary is down: it may hold an older value; wait
        if any(m.status == LEAVING for m in self.cluster.membership.active()):
            return  # a leaving node may still hand over an older value; wait until it is gone
        found = self.candidates(partition)
        if not found:
            return
        if not others:
            self._delete(partition, found, set())
            return
        self.in_flight = True
        waiting = {(peer, key) for peer in others for key, _, _ in found}
        keep: set[bytes] = set()
        by_key = {key: versions for key, _, versions in found}

        def answered(peer: str, key: bytes) -> Callable[[Any], None]:
            def record_answer(answer: Any) -> None:
                waiting.discard((peer, key))
                if not isinstance(answer, messages.FetchOk):
                    keep.add(key)  # no answer: not known to hold the same
                elif answer.record is not None and not _same_versions(answer.record, by_key[key]):
                    keep.add(key)  # it holds something else (or something unreadable): let exchanges settle it first
                if not waiting:
                    self._delete(partition, found, keep)

            return record_answer

        for peer in others:
            for key, _, _ in found:
                self.network.send(peer, _fetch(key), answered(peer, key))

    def _delete(self, partition: int, found: list[tuple[bytes, bytes, SiblingSet]], keep: set[bytes]) -> None:
        deletes = [
            DeleteObject(partition, key)
            for key, record, _ in found
            if key not in keep and self.storage.read_object(partition, key) == record
        ]

        def done(error: DynError | None) -> None:
            self.in_flight = False
            if error is not None:
                log.warning("could not reap %d tombstones of partition %d: %s", len(deletes), partition, error)
            else:
                self.reaped_total += len(deletes)

        if not deletes:
            self.in_flight = False
            return
        try:
            self.storage.submit([*deletes, *self.renew_actor()], done)
        except DynError as exc:
            done(exc)


def _fetch(key: bytes) -> Callable[[int], messages.Fetch]:
    return lambda request_id: messages.Fetch(id=request_id, key=key)
