"""Records from other replicas: the checks they meet, how they merge into ours, the hints a node
keeps for a primary that is down, and the peer requests that carry them. Pure.

Peer requests: replicate (merge a record, or keep it as a hint for the primary it names; answer
once durable), fetch (read a record, with the hint held for the primary asked about; only "same" when its versions
are the ones the coordinator's digest names), handoff
(merge a batch of records of one partition, in one commit).

Rules:
- Every record from a peer, and every reply a get or anti-entropy fetches, meets the limits of a
  client's write first (`replica.decode_peer_record`, `merge_records` with the node's limits).
- A record claiming a counter of this node's actor it never issued is refused, and the node takes
  a new actor epoch, so that wherever the claim went it cannot cover this node's next writes. A
  write this node versioned whose own commit failed takes a new epoch too (its dot may be on other
  replicas while our store forgot it).
- A hint must name a member; at most `hints_max` are held.
- An expired tombstone arriving where nothing is stored was reaped here: it is not brought back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dynd.core.cluster import ClusterView
from dynd.core.hints import HintDelivery
from dynd.core.limits import Limits
from dynd.core.ops import PutObject, WriteOp
from dynd.core.ports import Completion, Storage
from dynd.core.reaper import is_expired_tombstone
from dynd.core.replica import LocalReplica, decode_peer_record, decode_record, merge_records, versions_digest
from dynd.core.versions import EMPTY, SiblingSet, UnissuedCounter
from dynd.protocol import messages
from dynd.protocol.errors import BadRequest, DynError, Overloaded
from dynd.protocol.messages import error_reply

log = logging.getLogger("dynd.node")

Reply = Callable[[Any], None]


class PeerRecords:
    """`renew_actor`: gives the replica a new actor epoch and returns the write that stores it."""

    def __init__(
        self,
        name: str,
        replica: LocalReplica,
        storage: Storage,
        cluster: ClusterView,
        hints: HintDelivery,
        *,
        limits: Limits,
        wall_ms: Callable[[], int],
        renew_actor: Callable[[], list[WriteOp]],
    ) -> None:
        self.name = name
        self.replica = replica
        self.storage = storage
        self.cluster = cluster
        self.hints = hints
        self.limits = limits
        self.wall_ms = wall_ms  # tombstone age, which other nodes judge too
        self.renew_actor = renew_actor

    # ---- peer requests ----

    def replicate(self, request: messages.Replicate, reply: Reply) -> None:
        self.replica.check_key(request.key)

        def done(error: DynError | None) -> None:
            reply(messages.ReplicateOk(id=request.id) if error is None else error_reply(request.id, error))

        if request.hint is not None and request.hint != self.name:
            if request.hint not in {m.name for m in self.cluster.membership.active()}:
                raise BadRequest(f"a hint for {request.hint!r}, which is not a member of this cluster")
            self.peer_record(self.replica.partition(request.key), request.key, request.record)
            self.keep_hint(request.hint, request.key, request.record, done)
        else:
            self.merge_in(request.key, request.record, done)

    def fetch(self, request: messages.Fetch, reply: Reply) -> None:
        self.replica.check_key(request.key)
        partition = self.replica.partition(request.key)
        record = self.storage.read_object(partition, request.key)
        if request.hint is not None and request.hint != self.name:
            # Standing in for that primary: what it would hold is what we hold for it, and ours.
            hinted = self.storage.read_hint(request.hint, partition, request.key)
            if hinted is not None:
                try:
                    record = self.merge_hint(record, hinted) or record
                except DynError as exc:  # together over the limits: answer with ours
                    log.info("fetch of %r: the hint held for %s does not fit beside our copy: %s", request.key[:64], request.hint, exc)
        if request.digest is not None and record is not None and versions_digest(record) == request.digest:
            reply(messages.FetchOk(id=request.id, record=None, same=True))  # the coordinator holds these siblings
            return
        reply(messages.FetchOk(id=request.id, record=record))

    def receive_handoff(self, request: messages.Handoff, reply: Reply) -> None:
        if not 0 <= request.partition < self.replica.partitions:
            raise BadRequest(f"partition {request.partition} out of range")
        for item in request.items:
            self.replica.check_key(item.key)
        # Every item merged before anything is submitted: a refused one refuses the batch, and
        # nothing of it is stored. One commit for the batch.
        merged: dict[tuple[int, bytes], bytes] = {}
        for item in request.items:
            partition = self.replica.partition(item.key)
            held = merged.get((partition, item.key)) or self.storage.read_object(partition, item.key)
            op = self._merge_op(partition, item.key, held, item.record)
            if op is not None:
                merged[(partition, item.key)] = op.data

        def done(error: DynError | None) -> None:
            reply(messages.HandoffOk(id=request.id) if error is None else error_reply(request.id, error))

        self.storage.submit([PutObject(partition, key, data) for (partition, key), data in merged.items()], done)

    # ---- storing what peers send ----

    def keep_hint(self, target: str, key: bytes, record: bytes, done: Completion) -> None:
        """As a fallback for `target`: keep `record` as a hint for it; `done` once durable."""
        if self.hints.pending >= self.limits.hints_max:
            raise Overloaded(f"this node already holds {self.limits.hints_max} hints (hints_max)")
        partition = self.replica.partition(key)
        self.storage.submit(self.hints.hint_ops(target, partition, key, record, self.merge_hint), done)

    def merge_in(self, key: bytes, record: bytes, done: Completion) -> None:
        """Merge a record from another replica into ours; `done` runs once the result is durable."""
        partition = self.replica.partition(key)
        op = self._merge_op(partition, key, self.storage.read_object(partition, key), record)
        # Even with nothing new to store, wait for the commit queue: what we hold may not be durable yet.
        self.storage.submit([] if op is None else [op], done)

    def store_repair(self, partition: int, key: bytes, record: bytes, done: Completion) -> None:
        """Anti-entropy stores a merge it made (`merge_peer` checked it already)."""
        if self.storage.read_object(partition, key) is None and self._reaped_already(record):
            done(None)
            return
        self.storage.submit([PutObject(partition, key, record)], done)

    def _merge_op(self, partition: int, key: bytes, stored: bytes | None, record: bytes) -> PutObject | None:
        """The write that merges a peer's `record` into `stored`, or None; raises (a DynError)
        unless the record and the merge meet our limits."""
        merged = self.merge_peer(stored, record)
        if merged is None or (stored is None and self._reaped_already(record)):
            return None
        return PutObject(partition, key, merged)

    def _reaped_already(self, record: bytes) -> bool:
        """An expired tombstone where nothing is stored: it was reaped here; do not bring it back."""
        return is_expired_tombstone(record, self.wall_ms(), self.limits.tombstone_grace_ms)

    # ---- checks and merges ----

    def merge_hint(self, held: bytes | None, record: bytes) -> bytes | None:
        """A record (checked already) joining the hint held for the same primary and key."""
        return merge_records(held, record, self.limits.context_prune_threshold, limits=self.limits)

    def merge_own_hint(self, held: bytes | None, record: bytes) -> bytes | None:
        """As `merge_hint`, for the record of a put this node coordinates: if the hint held
        cannot take it within the limits, the put goes on without it (our own store holds the
        write, and anti-entropy brings it to the primary)."""
        try:
            return self.merge_hint(held, record)
        except DynError as exc:
            log.warning("not keeping a hint of a write this node coordinates: %s", exc)
            return None

    def peer_record(self, partition: int, key: bytes, record: bytes) -> SiblingSet:
        """`record` from a peer, decoded once it meets this node's limits (else a DynError)."""

        def held() -> SiblingSet:
            stored = self.storage.read_object(partition, key)
            return EMPTY if stored is None else decode_record(stored)

        return self._checked(lambda: decode_peer_record(record, self.limits, actor=self.replica.actor, reference=held))

    def merge_peer(self, stored: bytes | None, record: bytes) -> bytes | None:
        """The record to store after merging a peer's `record` into `stored` (ours), or None."""
        return self._checked(
            lambda: merge_records(stored, record, self.limits.context_prune_threshold, limits=self.limits, actor=self.replica.actor)
        )

    def _checked(self, check: Callable[[], Any]) -> Any:
        """Run a check of a peer's record; one that claims our actor's future takes a new epoch."""
        try:
            return check()
        except UnissuedCounter as exc:
            if exc.actor == self.replica.actor:
                # Whoever holds that claim would drop our next writes of the key on arrival: they
                # must carry an actor no claim can cover yet.
                self._new_epoch(f"a peer's record {exc.message}")
            raise

    def own_store_failed(self, actor: str) -> None:
        """Our commit of a write we versioned failed, but its dot may already be on other replicas
        while our store forgot it: never issue that counter again (a new epoch, once per failure)."""
        if self.replica.actor == actor:
            self._new_epoch("a write this node versioned failed to commit")

    def _new_epoch(self, why: str) -> None:
        ops = self.renew_actor()
        log.warning("%s: this node's versions now carry the new epoch %s", why, self.replica.actor)
        try:
            self.storage.submit(ops, _log_epoch_failure)
        except DynError as exc:
            _log_epoch_failure(exc)


def _log_epoch_failure(error: DynError | None) -> None:
    if error is not None:
        # The epoch is in use from now on; if the node stops before it is stored, the next start
        # takes a newer one anyway (it will not have stopped cleanly with this one).
        log.warning("could not store the new actor epoch: %s", error)
