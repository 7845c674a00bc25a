"""The node: every request a node accepts, as plain calls that reply through callbacks. Pure.

The daemon's connection readers (`dynd.shell.server`) and the simulator (`dynd.sim`) call
`handle(message, reply)` and `tick()`; the node calls back only through its ports
(`dynd.core.ports`: the Network and the Storage) and `reply`. It never awaits and never reads a
clock: `now_ms` (monotonic, for every deadline, period and timer) and `wall_ms` (the wall clock,
only for what nodes compare with each other: sibling timestamps, tombstone and hint age) are
passed in, and randomness comes from `rng`.

Client requests: a node that is not a primary of the key forwards the request to one (the first
that answers, in preference-list order). A primary coordinates: for a put it versions the write,
queues it for its own store and lets `PutCoordination` replicate it meanwhile and decide when to
answer; for a get it reads its own replica and lets `GetCoordination` gather the others, answer
and repair.

Peer requests: replicate (merge a record, answer once durable), fetch (read a record), handoff
(merge a batch of records of one partition), gossip. Every record from a peer, and every reply a
get or anti-entropy fetches, meets the limits of a client's write first
(`replica.decode_peer_record`); a record claiming a counter of this node's actor it never issued
is refused, and the node takes a new actor epoch, so that wherever the claim went it cannot cover
this node's next writes. A hint must name a member. Admin requests: ring, cluster status, join,
leave, remove.

Timers are named deadlines that `tick` runs: each coordination's request deadline, the cluster
status gather, the failure detector's probes (`Swim.tick`), the gossip round (`ClusterView.tick`),
the handoff pass (`Handoff.tick`), hint delivery (`HintDelivery.tick`), anti-entropy rounds
(`AntiEntropy.tick`) and tombstone reaping (`Reaper.tick`). Failure-detector
datagrams arrive through `receive_datagram`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from dynd.core import coordinator as co
from dynd.core.cluster import ClusterView, RandomSource
from dynd.core.handoff import Handoff
from dynd.core.limits import Limits
from dynd.core.membership import Membership
from dynd.core.merkle import Forest
from dynd.core.actors import ACTOR_META, new_actor
from dynd.core.admission import BackgroundBudget
from dynd.core.anti_entropy import AntiEntropy, ExchangeLimits, RepairProgress, TrackedStorage, co_primary_pairs, responders
from dynd.core.health import Health
from dynd.core.hints import HintDelivery
from dynd.core.ops import PutMeta, PutObject, WriteOp
from dynd.core.placement import Placement, coordinators, place
from dynd.core.preflist import PreferenceList
from dynd.core.ports import Network, Storage
from dynd.core.reaper import Reaper, is_expired_tombstone
from dynd.core.replica import LocalReplica, decode_peer_record, decode_record, merge_records
from dynd.core.swim import Swim
from dynd.core.versions import EMPTY, SiblingSet, UnissuedCounter
from dynd.protocol import codec, messages
from dynd.protocol.auth import Keyring
from dynd.protocol.errors import BadRequest, DynError, Overloaded, QuorumFailed, StaleRing, Timeout, Unreachable
from dynd.protocol.messages import error_reply

log = logging.getLogger("dynd.node")

Reply = Callable[[Any], None]  # a message, or pre-encoded payload bytes

STATUS_GATHER_MS = 1_000
REPAIR_RUNS_KEPT = 16  # repair runs whose progress can still be asked for
REPAIR_ERRORS_SHOWN = 5  # how long cluster status waits for members' own transfer counts
_FAILURES: dict[str, type[DynError]] = {"quorum": QuorumFailed, "timeout": Timeout}


class Node:
    def __init__(
        self,
        name: str,
        address: str,
        membership: Membership,
        storage: Storage,
        network: Network,
        *,
        limits: Limits,
        now_ms: Callable[[], int],
        wall_ms: Callable[[], int],
        rng: RandomSource,
        seeds: Sequence[str] = (),
        actor: str | None = None,
        keyring: Keyring | None = None,
        boot: int = 0,
    ) -> None:
        """`actor`: the id this node's versions carry, its name plus an epoch (`dynd.core.actors`
        says when a start must take a new one; the caller decides and stores it). `keyring`: the
        cluster secrets the failure detector's datagrams are sealed with (None: no secret);
        `boot`: one more than at this node's previous start (the caller persists it)."""
        self.name = name
        self.rng = rng
        self.network = network
        self.limits = limits
        self.now_ms = now_ms
        self.wall_ms = wall_ms
        self.request_timeout_ms = limits.request_timeout_ms
        partitions = membership.params.partitions
        self.replica = LocalReplica(actor or name, limits, partitions, renew_actor=self._renew_actor)
        # Merkle trees of every partition, built once from the store, then kept current by
        # every object write (TrackedStorage), so an exchange never rescans.
        self.forest = Forest(partitions, segments=limits.ae_tree_segments, fanout=limits.ae_tree_fanout)
        for partition in range(partitions):
            self.forest.build(partition, storage.partition_items(partition))
        self.forest.mark_ready()
        self.storage = storage = TrackedStorage(storage, self.forest)
        self.budget = BackgroundBudget(target_p99_ms=limits.background_p99_target_ms, now_ms=now_ms())
        self.cluster = ClusterView(name, address, membership, storage, network, limits=limits, now_ms=now_ms, rng=rng, seeds=seeds)
        self.handoff = Handoff(
            name,
            membership.params.partitions,
            self.cluster,
            storage,
            network,
            interval_ms=limits.handoff_interval_ms,
            batch_keys=limits.handoff_batch_keys,
            now_ms=now_ms,
            pacer=self.budget,
            renew_actor=self._renew_actor,
        )
        self.swim = Swim(
            name,
            limits=limits,
            now_ms=now_ms,
            rng=rng,
            cluster_id=lambda: self.cluster.params.cluster_id,  # follows a join made while running
            keyring=keyring,
            boot=boot,
        )
        self.swim.on_change.append(lambda member, status: log.info("%s is %s", member, status))
        self.health = Health(name, now_ms=now_ms, down_for_ms=limits.peer_retry_ms, detector=self.swim)
        self.cluster.on_change.append(self._follow_membership)
        self._follow_membership()
        self.hints = HintDelivery(
            name,
            self.cluster,
            storage,
            network,
            self.health,
            interval_ms=limits.hint_delivery_interval_ms,
            batch_keys=limits.hint_batch_keys,
            grace_ms=limits.tombstone_grace_ms,
            prune_threshold=limits.context_prune_threshold,
            now_ms=now_ms,
            wall_ms=wall_ms,
            pacer=self.budget,
        )
        self.ae_limits = ExchangeLimits(
            indexes_max=limits.ae_indexes_max, keys_max=limits.ae_batch_keys, repairs_inflight_max=limits.ae_repairs_inflight
        )
        self.anti_entropy = AntiEntropy(
            self.forest,
            network,
            pairs=lambda: co_primary_pairs(name, partitions, lambda p: self.cluster.preference_list(p).primaries),
            read_local=storage.read_object,
            store_local=self._store_repair,
            limits=self.ae_limits,
            prune_threshold=limits.context_prune_threshold,
            interval_ms=limits.ae_interval_ms,
            now_ms=now_ms,
            pacer=self.budget,
            concurrency=limits.ae_concurrency,
            merge=self._merge_peer,
        )
        self.reaper = Reaper(
            name,
            self.cluster,
            storage,
            network,
            self.forest,
            self.health,
            interval_ms=limits.reap_interval_ms,
            batch_keys=limits.reap_batch_keys,
            grace_ms=limits.tombstone_grace_ms,
            now_ms=now_ms,
            wall_ms=wall_ms,
            pacer=self.budget,
            renew_actor=self._renew_actor,
        )
        self._repair_runs: dict[int, RepairProgress] = {}
        self._next_repair_run = 1
        # coordination -> (request, reply, the success reply of a put)
        self.coordinations: dict[Any, tuple[Any, Reply, Any]] = {}
        self._status_gathers: list[tuple[int, Callable[[], None]]] = []  # (deadline, answer now)
        self.pruned_entries_total = 0
        self.handlers: dict[type, Callable[[Any, Reply], None]] = {
            messages.Get: self.get,
            messages.Put: self.put,
            messages.Delete: self.put,
            messages.Ping: lambda request, reply: reply(messages.Pong(id=request.id, node=name)),
            messages.Replicate: self.replicate,
            messages.Fetch: self.fetch,
            messages.Handoff: self.receive_handoff,
            messages.Gossip: self.gossip,
            messages.RingGet: lambda request, reply: reply(self.cluster.ring_reply(request.id)),
            messages.ClusterStatus: self.cluster_status,
            messages.ClusterLeave: lambda request, reply: reply(messages.ClusterOk(id=request.id, message=self.cluster.leave(request.node))),
            messages.ClusterRemove: lambda request, reply: reply(messages.ClusterOk(id=request.id, message=self.cluster.remove(request.node))),
            messages.ClusterJoin: self.cluster_join,
            messages.RepairStart: self.repair_start,
            messages.RepairStatus: self.repair_status,
            **responders(self.forest, self.ae_limits),
        }
        self._timed = (messages.Get, messages.Put, messages.Delete)

    def _follow_membership(self) -> None:
        self.swim.set_members({m.name: m.address for m in self.cluster.membership.active()})

    def receive_datagram(self, source: str, payload: bytes) -> None:
        """A failure-detector datagram; answers go out through the Network port."""
        self.network.send_datagrams(self.swim.receive(source, payload))

    def handle(self, message: Any, reply: Reply) -> None:
        """Serve one request. A request the node refuses gets an error reply; bugs propagate."""
        handler = self.handlers.get(type(message))
        if handler is None:
            reply(error_reply(getattr(message, "id", None), BadRequest(f"{message.OP!r} is not a request a node accepts")))
            return
        if type(message) in self._timed:
            reply = self._timing(reply)
        try:
            handler(message, reply)
        except DynError as exc:
            reply(error_reply(getattr(message, "id", None), exc))

    def _renew_actor(self) -> list[WriteOp]:
        """Handoff or reaping is about to delete keys, and with them the only record of the
        counters this node issued for them: were it to coordinate one of those keys again, it would reissue a
        counter the other replicas have seen and one of the two writes would be lost. So every
        deletion takes a new actor epoch, persisted in the same commit as the deletes."""
        actor = new_actor(self.name, self.rng)
        self.replica.actor = actor
        return [PutMeta(ACTOR_META, actor.encode())]

    def _timing(self, reply: Reply) -> Reply:
        """Feed the foreground latency to admission control as the reply goes out."""
        started = self.now_ms()

        def timed(answer: Any) -> None:
            now = self.now_ms()
            self.budget.record_ms(now - started, now)
            reply(answer)

        return timed

    def _store_repair(self, partition: int, key: bytes, record: bytes, done: Callable[[DynError | None], None]) -> None:
        if self.storage.read_object(partition, key) is None and self._reaped_already(record):
            done(None)
            return
        self.storage.submit([PutObject(partition, key, record)], done)

    # ---- repair on demand ----

    def repair_start(self, request: messages.RepairStart, reply: Reply) -> None:
        if request.partition is not None and not 0 <= request.partition < self.replica.partitions:
            raise BadRequest(f"partition {request.partition} is outside 0..{self.replica.partitions - 1}")
        run = self._next_repair_run
        self._next_repair_run += 1
        while len(self._repair_runs) >= REPAIR_RUNS_KEPT:
            del self._repair_runs[min(self._repair_runs)]

        def progress(report: RepairProgress) -> None:
            self._repair_runs[run] = report

        total = self.anti_entropy.run_now(request.partition, progress)
        self._repair_runs.setdefault(run, RepairProgress(pairs_total=total, finished=total == 0))
        reply(self._repair_reply(request.id, run))

    def repair_status(self, request: messages.RepairStatus, reply: Reply) -> None:
        if request.run not in self._repair_runs:
            raise BadRequest(f"no repair run {request.run} on {self.name} (only the last {REPAIR_RUNS_KEPT} are kept)")
        reply(self._repair_reply(request.id, request.run))

    def _repair_reply(self, request_id: int, run: int) -> messages.RepairProgressOk:
        report = self._repair_runs[run]
        stats = report.stats
        return messages.RepairProgressOk(
            id=request_id,
            run=run,
            pairs_total=report.pairs_total,
            pairs_done=report.pairs_done,
            pairs_failed=report.pairs_failed,
            keys_compared=stats.keys_compared,
            keys_differing=stats.keys_differing,
            repaired_local=stats.repaired_local,
            repaired_remote=stats.repaired_remote,
            finished=report.finished,
            errors=list(report.errors[-REPAIR_ERRORS_SHOWN:]),
        )

    @property
    def transfers_pending(self) -> int:
        return self.handoff.transfers_pending

    # ---- client requests ----

    def _quorum(self, name: str, asked: int | None, default: int) -> int:
        if asked is None:
            return default
        n = self.cluster.params.n
        if not 1 <= asked <= n:
            raise BadRequest(f"{name}={asked} is outside 1..n={n}")
        return asked

    def _place(self, request: Any, reply: Reply) -> tuple[int, Placement] | None:
        """Check the request; return (partition, placement), or None if it went elsewhere."""
        self.replica.check_key(request.key)
        partition = self.replica.partition(request.key)
        preference = self.cluster.preference_list(partition)
        usable = self.health.usable
        if self.name not in preference.primaries and not request.forwarded:
            # Coordinate only while a primary is down and this node is among the first N healthy.
            if self.name not in coordinators(preference, self.name, usable):
                self._route_elsewhere(request, preference, reply)
                return None
        return partition, place(preference, self.name, usable)

    def get(self, request: messages.Get, reply: Reply) -> None:
        params = self.cluster.params
        r = self._quorum("r", request.r, params.r)
        pr = self._quorum("pr", request.pr, 0)
        placed = self._place(request, reply)
        if placed is None:
            return
        partition, placement = placed
        local = self.storage.read_object(partition, request.key)
        if not placement.targets and placement.replicas == 1:
            reply(self._get_payload(request.id, local))
            return
        coordination = co.GetCoordination(
            request.key,
            local,
            placement.targets,
            r,
            self.now_ms() + self.request_timeout_ms,
            self.replica.limits.context_prune_threshold,
            replicas=placement.replicas,
            pr=pr,
            coordinator_is_primary=placement.coordinator_is_primary,
            limits=self.limits,
        )
        self._run(coordination, coordination.start(), request, reply)

    def put(self, request: messages.Put | messages.Delete, reply: Reply) -> None:
        """Version the write, store and replicate it; `reply` gets PutOk/DeleteOk or an error."""
        params = self.cluster.params
        w = self._quorum("w", request.w, params.w)
        pw = self._quorum("pw", request.pw, 0)
        placed = self._place(request, reply)
        if placed is None:
            return
        partition, placement = placed
        value = request.value if isinstance(request, messages.Put) else None
        stored = self.storage.read_object(partition, request.key)
        plan = self.replica.write(request.key, value, request.context, stored, self.wall_ms(), partition)
        self._note(plan.key, plan.sibling_count, plan.object_bytes, plan.pruned_entries)
        ok: messages.Message
        if isinstance(request, messages.Put):
            ok = messages.PutOk(id=request.id, context=plan.reply_context)
        else:
            ok = messages.DeleteOk(id=request.id, context=plan.reply_context)
        ops: list[WriteOp] = [PutObject(plan.partition, plan.key, plan.record), *plan.meta_ops]
        for primary in placement.unplaced:  # down, and no fallback to stand in: we keep the hint
            ops += self.hints.hint_ops(primary, partition, plan.key, plan.record, self._merge_own_hint)
        actor = self.replica.actor
        if not placement.targets and placement.replicas == 1:

            def stored_alone(error: DynError | None) -> None:
                if error is not None:
                    self._own_store_failed(actor)
                reply(ok if error is None else error_reply(request.id, error))

            self.storage.submit(ops, stored_alone)
            return
        # Our own commit and the other replicas' run at once (see dynd.core.actors for why the
        # dots stay unique); our store counts toward W when it lands.
        coordination = co.PutCoordination(
            request.key,
            plan.record,
            placement.targets,
            w,
            self.now_ms() + self.request_timeout_ms,
            spares=placement.spares,
            replicas=placement.replicas,
            pw=pw,
            coordinator_is_primary=placement.coordinator_is_primary,
            local_required=bool(placement.unplaced),
        )

        def stored_locally(error: DynError | None) -> None:
            if error is not None:
                self._own_store_failed(actor)
            self._apply(coordination, coordination.on_local(error is None, "" if error is None else error.message), request, reply, ok)

        self.storage.submit(ops, stored_locally)  # a refusal (overloaded, full) raises before anything is sent
        self._run(coordination, coordination.start(), request, reply, ok)

    def _own_store_failed(self, actor: str) -> None:
        """Our commit of a write we versioned failed, but its dot may already be on other replicas
        while our store forgot it: never issue that counter again (a new epoch, once per failure)."""
        if self.replica.actor != actor:
            return
        ops = self._renew_actor()
        log.warning("a write this node versioned failed to commit: its versions now carry the new epoch %s", self.replica.actor)
        try:
            self.storage.submit(ops, _log_epoch_failure)
        except DynError as exc:
            _log_epoch_failure(exc)

    def _merge_hint(self, held: bytes | None, record: bytes) -> bytes | None:
        """A record (checked already) joining the hint held for the same primary and key."""
        return merge_records(held, record, self.limits.context_prune_threshold, limits=self.limits)

    def _merge_own_hint(self, held: bytes | None, record: bytes) -> bytes | None:
        """As `_merge_hint`, for the record of a put this node coordinates: if the hint held
        cannot take it within the limits, the put goes on without it (our own store holds the
        write, and anti-entropy brings it to the primary)."""
        try:
            return self._merge_hint(held, record)
        except DynError as exc:
            log.warning("not keeping a hint of a write this node coordinates: %s", exc)
            return None

    def _peer_record(self, partition: int, key: bytes, record: bytes) -> SiblingSet:
        """`record` from a peer, decoded once it meets this node's limits (else a DynError)."""

        def held() -> SiblingSet:
            stored = self.storage.read_object(partition, key)
            return EMPTY if stored is None else decode_record(stored)

        return self._checked(lambda: decode_peer_record(record, self.limits, actor=self.replica.actor, reference=held))

    def _merge_peer(self, stored: bytes | None, record: bytes) -> bytes | None:
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
                ops = self._renew_actor()
                log.warning("a peer's record %s: this node's versions now carry the new epoch %s", exc.message, self.replica.actor)
                try:
                    self.storage.submit(ops, _log_epoch_failure)
                except DynError as failure:
                    _log_epoch_failure(failure)
            raise

    # ---- peer requests ----

    def replicate(self, request: messages.Replicate, reply: Reply) -> None:
        self.replica.check_key(request.key)

        def done(error: DynError | None) -> None:
            reply(messages.ReplicateOk(id=request.id) if error is None else error_reply(request.id, error))

        if request.hint is not None and request.hint != self.name:
            if request.hint not in {m.name for m in self.cluster.membership.active()}:
                raise BadRequest(f"a hint for {request.hint!r}, which is not a member of this cluster")
            self._peer_record(self.replica.partition(request.key), request.key, request.record)
            self._keep_hint(request.hint, request.key, request.record, done)
        else:
            self._merge_in(request.key, request.record, done)

    def fetch(self, request: messages.Fetch, reply: Reply) -> None:
        self.replica.check_key(request.key)
        partition = self.replica.partition(request.key)
        record = self.storage.read_object(partition, request.key)
        if request.hint is not None and request.hint != self.name:
            # Standing in for that primary: what it would hold is what we hold for it, and ours.
            hinted = self.storage.read_hint(request.hint, partition, request.key)
            if hinted is not None:
                try:
                    record = self._merge_hint(record, hinted) or record
                except DynError as exc:  # together over the limits: answer with ours
                    log.info("fetch of %r: the hint held for %s does not fit beside our copy: %s", request.key[:64], request.hint, exc)
        reply(messages.FetchOk(id=request.id, record=record))

    def _keep_hint(self, target: str, key: bytes, record: bytes, done: Callable[[DynError | None], None]) -> None:
        """As a fallback for `target`: keep `record` as a hint for it; `done` once durable."""
        if self.hints.pending >= self.limits.hints_max:
            raise Overloaded(f"this node already holds {self.limits.hints_max} hints (hints_max)")
        partition = self.replica.partition(key)
        self.storage.submit(self.hints.hint_ops(target, partition, key, record, self._merge_hint), done)

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

    def cluster_join(self, request: messages.ClusterJoin, reply: Reply) -> None:
        """Joining talks to the seed; the reply comes when that exchange is done."""

        def done(outcome: str | DynError) -> None:
            if isinstance(outcome, DynError):
                reply(error_reply(request.id, outcome))
            else:
                reply(messages.ClusterOk(id=request.id, message=outcome))

        self.cluster.join(request.seed, done)

    def cluster_status(self, request: messages.ClusterStatus, reply: Reply) -> None:
        """This node's view, with each reachable member's own count of pending transfers."""
        pending = {self.name: self.transfers_pending}
        others = [m.name for m in self.cluster.membership.active() if m.name != self.name]
        if request.local_only or not others:
            reply(self._status(request.id, pending))
            return
        waiting = set(others)
        replied = False

        def answer_now() -> None:
            nonlocal replied
            if not replied:
                replied = True
                reply(self._status(request.id, pending))

        def answered(node: str) -> Callable[[Any], None]:
            def record(answer: Any) -> None:
                if isinstance(answer, messages.ClusterStatusOk):
                    pending[node] = next((m.transfers_pending for m in answer.members if m.name == node), 0)
                waiting.discard(node)
                if not waiting:
                    answer_now()

            return record

        # A dead member must not hold the operator's view back.
        self._status_gathers.append((self.now_ms() + STATUS_GATHER_MS, answer_now))
        for node in others:
            self.network.send(node, lambda rid: messages.ClusterStatus(id=rid, local_only=True), answered(node))

    def _status(self, request_id: int, pending: dict[str, int]) -> messages.ClusterStatusOk:
        status = self.cluster.status(request_id, pending, self.health, self.hints.counts)
        exchanged = self.anti_entropy.last_exchange_ms  # on the monotonic clock; the operator reads wall time
        wall_offset_ms = self.wall_ms() - self.now_ms()
        return dataclasses.replace(status, last_exchange_ms=[exchanged[p] + wall_offset_ms if p in exchanged else 0 for p in range(self.replica.partitions)])

    def gossip(self, request: messages.Gossip, reply: Reply) -> None:
        reply(messages.GossipOk(id=request.id, membership=self.cluster.merge_from_peer(request.membership)))

    def _merge_in(self, key: bytes, record: bytes, done: Callable[[DynError | None], None]) -> None:
        """Merge a record from another replica into ours; `done` runs once the result is durable."""
        partition = self.replica.partition(key)
        op = self._merge_op(partition, key, self.storage.read_object(partition, key), record)
        # Even with nothing new to store, wait for the commit queue: what we hold may not be durable yet.
        self.storage.submit([] if op is None else [op], done)

    def _merge_op(self, partition: int, key: bytes, stored: bytes | None, record: bytes) -> PutObject | None:
        """The write that merges a peer's `record` into `stored`, or None; raises (a DynError)
        unless the record and the merge meet our limits."""
        merged = self._merge_peer(stored, record)
        if merged is None or (stored is None and self._reaped_already(record)):
            return None
        return PutObject(partition, key, merged)

    def _reaped_already(self, record: bytes) -> bool:
        """An expired tombstone where nothing is stored: it was reaped here; do not bring it back."""
        return is_expired_tombstone(record, self.wall_ms(), self.limits.tombstone_grace_ms)

    # ---- coordination ----

    def _run(self, coordination: Any, effects: list[co.Effect], request: Any, reply: Reply, ok: Any = None) -> None:
        self.coordinations[coordination] = (request, reply, ok)
        self._apply(coordination, effects, request, reply, ok)

    def _apply(self, coordination: Any, effects: list[co.Effect], request: Any, reply: Reply, ok: Any) -> None:
        for effect in effects:
            if isinstance(effect, co.SendReplicate):
                self._send_replicate(coordination, effect, request, reply, ok)
            elif isinstance(effect, co.SendFetch):
                self._send_fetch(coordination, effect, request, reply, ok)
            elif isinstance(effect, co.StoreLocal):
                try:
                    self._merge_in(effect.key, effect.record, _log_repair_failure)
                except DynError as exc:  # the merge is over a limit: our copy stays as it is
                    _log_repair_failure(exc)
            elif isinstance(effect, co.StoreHint):
                try:
                    self._keep_hint(effect.target, effect.key, effect.record, _log_hint_failure)
                except DynError as exc:
                    _log_hint_failure(exc)
            elif isinstance(effect, co.AnswerPut):
                reply(ok)
            elif isinstance(effect, co.AnswerGet):
                reply(self._get_payload(request.id, effect.record))
            elif isinstance(effect, co.Fail):
                reply(error_reply(request.id, _FAILURES.get(effect.code, QuorumFailed)(effect.message)))
        if coordination.finished:
            self.coordinations.pop(coordination, None)

    def _send_replicate(self, coordination: Any, effect: co.SendReplicate, request: Any, reply: Reply, ok: Any) -> None:
        def on_reply(answer: Any) -> None:
            self._evidence(effect.node, answer)
            if isinstance(coordination, co.PutCoordination):
                self._apply(coordination, coordination.on_reply(effect.node, isinstance(answer, messages.ReplicateOk)), request, reply, ok)
            elif isinstance(answer, DynError):
                log.debug("read repair of %s on %s failed: %s", effect.key[:64], effect.node, answer)

        self.network.send(effect.node, lambda rid: messages.Replicate(id=rid, key=effect.key, record=effect.record, hint=effect.hint), on_reply)

    def _send_fetch(self, coordination: Any, effect: co.SendFetch, request: Any, reply: Reply, ok: Any) -> None:
        def on_reply(answer: Any) -> None:
            self._evidence(effect.node, answer)
            if isinstance(answer, messages.FetchOk) and self._fetched_ok(effect.node, effect.key, answer.record, coordination.local_record):
                effects = coordination.on_reply(effect.node, answer.record)
            else:
                effects = coordination.on_failure(effect.node)
            self._apply(coordination, effects, request, reply, ok)

        self.network.send(effect.node, lambda rid: messages.Fetch(id=rid, key=effect.key, hint=effect.hint), on_reply)

    def _fetched_ok(self, node: str, key: bytes, record: bytes | None, local: bytes | None) -> bool:
        """Whether a replica's answer to a get may join the answer: within our limits (the same
        bytes as our own copy need no second look)."""
        if record is None or record == local:
            return True
        try:
            self._peer_record(self.replica.partition(key), key, record)
        except DynError as exc:
            log.warning("get of %r: refused the reply of %s: %s", key[:64], node, exc)
            return False
        return True

    def _evidence(self, node: str, answer: Any) -> None:
        """What a reply says about the peer's health: no connection at all is local evidence."""
        if isinstance(answer, Unreachable):
            self.health.report_failure(node)
        elif isinstance(answer, Timeout):
            self.health.report_timeout(node)
        elif not isinstance(answer, DynError):
            self.health.report_success(node)

    def tick(self) -> None:
        """Run every deadline that is due: coordinations, status gathers, gossip, handoff."""
        now = self.now_ms()
        if self.coordinations:
            for coordination, (request, reply, ok) in list(self.coordinations.items()):
                effects = coordination.on_tick(now)
                if effects or coordination.finished:
                    self._apply(coordination, effects, request, reply, ok)
        if self._status_gathers:
            due = [answer for deadline, answer in self._status_gathers if deadline <= now]
            self._status_gathers = [(deadline, answer) for deadline, answer in self._status_gathers if deadline > now]
            for answer in due:
                answer()
        self.network.send_datagrams(self.swim.tick())
        self.cluster.tick()
        self.handoff.tick()
        self.hints.tick()
        self.anti_entropy.tick()
        self.reaper.tick()

    def _route_elsewhere(self, request: Any, preference: PreferenceList, reply: Reply) -> None:
        if request.ring is not None and request.ring != self.cluster.membership.digest:
            raise StaleRing(f"{self.name} is not a primary of this key under the current ring")
        usable = self.health.usable
        # Healthy primaries first, then healthy fallbacks (sloppy quorum), then the rest.
        healthy = [node for node in preference.all if node != self.name and usable(node)]
        self._forward(request, healthy + [node for node in preference.primaries if node not in healthy and node != self.name], reply)

    def _forward(self, request: Any, candidates: list[str], reply: Reply) -> None:
        """Pass a request to the first primary that answers; relay its reply under the client's id."""
        if not candidates:
            reply(error_reply(request.id, Unreachable("no primary of this key is reachable")))
            return
        node, rest = candidates[0], candidates[1:]

        def on_reply(answer: Any) -> None:
            self._evidence(node, answer)
            if isinstance(answer, Unreachable):
                self._forward(request, rest, reply)
            elif isinstance(answer, DynError):
                reply(error_reply(request.id, answer))
            else:
                reply(dataclasses.replace(answer, id=request.id))

        self.network.send(node, lambda rid: dataclasses.replace(request, id=rid, forwarded=True, ring=None), on_reply)

    def _get_payload(self, request_id: int, record: bytes | None) -> bytes:
        view = self.replica.read(record)
        return codec.encode_get_ok_preencoded(request_id, view.siblings_cbor, view.context_cbor)

    def _note(self, key: bytes, sibling_count: int, object_bytes: int, pruned: int) -> None:
        limits = self.replica.limits
        if sibling_count >= limits.siblings_warn:
            log.warning("key %r has %d siblings (siblings_warn=%d)", key[:64], sibling_count, limits.siblings_warn)
        if object_bytes >= limits.object_bytes_warn:
            log.warning("key %r holds %d bytes (object_bytes_warn=%d)", key[:64], object_bytes, limits.object_bytes_warn)
        if pruned:
            self.pruned_entries_total += pruned
            log.info("pruned %d context entries of key %r (total %d)", pruned, key[:64], self.pruned_entries_total)


def _log_hint_failure(error: DynError | None) -> None:
    if error is not None:
        log.warning("could not keep a hint: %s", error)


def _log_repair_failure(error: DynError | None) -> None:
    if error is not None:
        log.warning("read repair of the local replica failed: %s", error)


def _log_epoch_failure(error: DynError | None) -> None:
    if error is not None:
        # The epoch is in use from now on; if the node stops before it is stored, the next start
        # takes a newer one anyway (it will not have stopped cleanly with this one).
        log.warning("could not store the new actor epoch: %s", error)
