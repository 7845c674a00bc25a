"""The node: its parts, wired together, and every request it accepts as a plain call that replies
through a callback. Pure.

The daemon's connection readers (`dynd.shell.server`) and the simulator (`dynd.sim`) call
`handle(message, reply)` and `tick()`; failure-detector datagrams arrive through
`receive_datagram`. The node calls back only through its ports (`dynd.core.ports`: the Network
and the Storage) and `reply`. It never awaits and never reads a clock: `now_ms`
(monotonic, for every deadline, period and timer) and `wall_ms` (the wall clock, only for what
nodes compare with each other: sibling timestamps, tombstone and hint age) are passed in, and
randomness comes from `rng`.

The parts, and the requests each serves (`handlers`):
- `requests` (`dynd.core.requests`): get, put and delete: forwarded, or coordinated here.
- `records` (`dynd.core.peer_records`): replicate, fetch and handoff from other replicas, and the
  checks every record from a peer meets.
- `cluster` (`dynd.core.cluster`): membership, gossip, the ring, join/leave/remove; `status` the
  cluster status gather; `planner` (`dynd.core.plan`) the plans of membership changes, and
  `gathers` (`dynd.core.gather`) the members' answers they and the transfer listing wait for.
- Not a member: a node whose own status is removed answers get, put, delete and the peers'
  replicate, fetch and handoff with `not_a_member` (a coordinator whose ring is stale then uses
  another replica), runs no failure detector, and logs once that it is safe to stop.
- `listings` (`dynd.core.listing`): key listings (a bounded scan of every member's store).
- `anti_entropy`, `repairs` (`dynd.core.anti_entropy`) and the tree responders
  (`dynd.core.exchange`): replicas compare hash trees; `dynctl repair`.
- `swim` and `health`: who is alive; `handoff`, `hints`, `reaper`: moving partitions, delivering
  hints, reaping tombstones, all paced by `budget` (admission control) behind client requests.
- `storage` (`dynd.core.tracked_storage`): the store, keeping `forest`, the Merkle trees, current.

Timers are named deadlines that `tick` runs: each coordination's request deadline, the cluster
status gathers, the failure detector's probes (`Swim.tick`), the gossip round (`ClusterView.tick`),
the handoff pass (`Handoff.tick`), hint delivery (`HintDelivery.tick`), anti-entropy rounds
(`AntiEntropy.tick`) and tombstone reaping (`Reaper.tick`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from dynd.core.actors import ACTOR_META, new_actor
from dynd.core.admission import BackgroundBudget
from dynd.core.anti_entropy import AntiEntropy, RepairRuns, co_primary_pairs
from dynd.core.cluster import ClusterView, RandomSource, StatusGather
from dynd.core.exchange import ExchangeLimits, responders
from dynd.core.gather import Answers, Gathers
from dynd.core.handoff import Handoff
from dynd.core.health import Health
from dynd.core.hints import HintDelivery
from dynd.core.limits import Limits
from dynd.core.listing import KeyListings
from dynd.core.membership import Membership
from dynd.core.merkle import Forest
from dynd.core.metrics import Metrics
from dynd.core.ops import PutMeta, WriteOp
from dynd.core.peer_records import PeerRecords
from dynd.core.plan import Planner, local_sizes
from dynd.core.ports import Network, Storage
from dynd.core.reaper import Reaper
from dynd.core.replica import LocalReplica
from dynd.core.requests import ClientRequests
from dynd.core.swim import Swim
from dynd.core.tracked_storage import TrackedStorage
import dynd
from dynd.protocol import PROTOCOL_VERSION, messages
from dynd.protocol.auth import Keyring
from dynd.protocol.errors import BadRequest, DynError
from dynd.protocol.messages import error_reply

log = logging.getLogger("dynd.node")

Reply = Callable[[Any], None]  # a message, or pre-encoded payload bytes

# What a node that is not a member refuses: data, from clients and from peers whose ring is stale.
MEMBERS_ONLY = frozenset({messages.Get, messages.Put, messages.Delete, messages.Replicate, messages.Fetch, messages.Handoff})


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
        now_us: Callable[[], int] | None = None,
        shell_readings: Callable[[], dict[str, Any]] | None = None,
        measure: bool = True,
        location: str = "",
    ) -> None:
        """`actor`: the id this node's versions carry, its name plus an epoch (`dynd.core.actors`
        says when a start must take a new one; the caller decides and stores it). `keyring`: the
        cluster secrets the failure detector's datagrams are sealed with (None: no secret);
        `boot`: one more than at this node's previous start (the caller persists it).
        `now_us`: the monotonic clock in microseconds, only for latencies (sub-ms gets need
        it; default now_ms * 1000); `shell_readings`: what only the shell knows, for StatsOk and
        InfoOk (`SHELL_READINGS` names them; a missing one reads 0 or ""); `measure`: False
        keeps no latency histograms or request counters (to measure what they cost); `location`:
        where this node runs (a path, dynd.protocol.locations; "" unknown)."""
        self.name = name
        self.rng = rng
        self.network = network
        self.limits = limits
        self.now_ms = now_ms
        self.wall_ms = wall_ms
        self.now_us = now_us or (lambda: now_ms() * 1000)
        self.shell_readings = shell_readings or dict
        self.metrics = Metrics()
        self.measure = measure
        self.started_ms = now_ms()
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

        # ---- membership and liveness ----
        self.cluster = ClusterView(
            name, address, membership, storage, network, limits=limits, now_ms=now_ms, rng=rng, seeds=seeds, location=location
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
        self.swim.on_change.append(self._liveness_changed)
        self.health = Health(name, now_ms=now_ms, down_for_ms=limits.peer_retry_ms, detector=self.swim)
        self.cluster.on_change.append(self._follow_membership)
        self._follow_membership()

        # ---- background work, paced behind client requests ----
        self.handoff = Handoff(
            name,
            partitions,
            self.cluster,
            storage,
            network,
            interval_ms=limits.handoff_interval_ms,
            batch_keys=limits.handoff_batch_keys,
            now_ms=now_ms,
            pacer=self.budget,
            renew_actor=self._renew_actor,
            forest=self.forest,
            hints_pending=lambda: self.hints.pending,
        )
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

        # ---- requests from peers and from clients ----
        self.records = PeerRecords(
            name, self.replica, storage, self.cluster, self.hints, limits=limits, wall_ms=wall_ms, renew_actor=self._renew_actor
        )
        self.requests = ClientRequests(
            name, self.replica, storage, network, self.cluster, self.health, self.hints, self.records, limits=limits, now_ms=now_ms, wall_ms=wall_ms,
            now_us=self.now_us, metrics=self.metrics,
        )

        # ---- anti-entropy, and the operator's view ----
        self.ae_limits = ExchangeLimits(
            indexes_max=limits.ae_indexes_max, keys_max=limits.ae_batch_keys, repairs_inflight_max=limits.ae_repairs_inflight,
            roots_max=limits.ae_roots_max,
        )
        self.anti_entropy = AntiEntropy(
            name,
            self.forest,
            network,
            pairs=lambda: co_primary_pairs(name, partitions, lambda p: self.cluster.preference_list(p).primaries),
            read_local=storage.read_object,
            store_local=self.records.store_repair,
            limits=self.ae_limits,
            prune_threshold=limits.context_prune_threshold,
            interval_ms=limits.ae_interval_ms,
            now_ms=now_ms,
            pacer=self.budget,
            concurrency=limits.ae_concurrency,
            peers_per_round=limits.ae_peers_per_round,
            merge=self.records.merge_peer,
        )
        self.repairs = RepairRuns(name, self.anti_entropy)
        self.status = StatusGather(
            self.cluster, network, now_ms=now_ms, transfers_pending=lambda: self.handoff.transfers_pending, describe=self._status
        )
        self.gathers = Gathers(network, now_ms=now_ms, timeout_ms=limits.gather_timeout_ms)
        self.planner = Planner(
            self.cluster,
            network,
            self.gathers,
            local_sizes=lambda: local_sizes(self.forest, storage, partitions, limits.plan_sample_keys),
            liveness=self.health.status,
        )
        self.listings = KeyListings(name, storage, self.cluster, self.gathers, limits=limits, partitions=partitions)
        self._said_safe_to_stop = False

        # ---- who serves each request ----
        self.handlers: dict[type, Callable[[Any, Reply], None]] = {
            messages.Get: self.requests.get,
            messages.Put: self.requests.put,
            messages.Delete: self.requests.put,
            messages.Ping: lambda request, reply: reply(messages.Pong(id=request.id, node=name)),
            messages.Replicate: self.records.replicate,
            messages.Fetch: self.records.fetch,
            messages.Handoff: self.records.receive_handoff,
            messages.Gossip: self.gossip,
            messages.RingGet: lambda request, reply: reply(self.cluster.ring_reply(request.id, with_locations=bool(request.locations))),
            messages.ClusterStatus: self.status.handle,
            messages.ClusterLeave: lambda request, reply: reply(messages.ClusterOk(id=request.id, message=self.cluster.leave(request.node))),
            messages.ClusterRemove: self.cluster_remove,
            messages.ClusterJoin: self.cluster_join,
            messages.ClusterPlan: self.planner.handle,
            messages.ClusterTransfers: self.cluster_transfers,
            messages.PartitionSizes: self.partition_sizes,
            messages.RepairStart: self.repairs.start,
            messages.RepairStatus: self.repairs.status,
            messages.StatsGet: lambda request, reply: reply(self.stats(request.id)),
            messages.InfoGet: lambda request, reply: reply(self.info(request.id)),
            **responders(self.forest, self.ae_limits, roots_equal=self.anti_entropy.roots_equal),
            messages.KeysList: self.listings.start,
            messages.KeysScan: self.listings.scan,
        }
        # the requests whose latency is measured, under their op's name
        self._timed = {messages.Get: "get", messages.Put: "put", messages.Delete: "delete", messages.Replicate: "replicate"}
        self._ok_labels = {"get": "get:ok", "put": "put:ok", "delete": "delete:ok", "forward": ""}  # "": not counted here

    # ---- in: requests, datagrams, the clock ----

    def handle(self, message: Any, reply: Reply, received_us: int | None = None) -> None:
        """Serve one request. A request the node refuses gets an error reply; bugs propagate.
        `received_us` (the `now_us` clock): when the request reached the host, if the shell
        knows; its latency is timed from there, else from now."""
        handler = self.handlers.get(type(message))
        if handler is None:
            reply(error_reply(getattr(message, "id", None), BadRequest(f"{message.OP!r} is not a request a node accepts")))
            return
        op = self._timed.get(type(message))
        if op is not None:
            if op != "replicate" and message.forwarded:
                op = "forward"  # the node the client asked times and counts it as get/put/delete
            reply = self._timing(op, reply, self.now_us() if received_us is None else received_us)
        try:
            if self.cluster.removed and type(message) in MEMBERS_ONLY:
                raise self.cluster.not_a_member()
            handler(message, reply)
        except DynError as exc:
            reply(error_reply(getattr(message, "id", None), exc))

    def receive_datagram(self, source: str, payload: bytes) -> None:
        """A failure-detector datagram; answers go out through the Network port."""
        self.network.send_datagrams(self.swim.receive(source, payload))

    def tick(self) -> None:
        """Run every deadline that is due."""
        if self.requests.running:
            self.requests.tick(self.now_ms())
        self.status.tick()
        self.gathers.tick()
        self.network.send_datagrams(self.swim.tick())
        self.cluster.tick()
        self._tell_when_safe_to_stop()
        self.handoff.tick()
        self.hints.tick()
        self.anti_entropy.tick()
        self.reaper.tick()

    @property
    def transfers_pending(self) -> int:
        return self.handoff.transfers_pending

    # ---- wiring ----

    def _follow_membership(self) -> None:
        # A node that is not a member probes no one: the members no longer answer it, and it
        # would only come to think them all dead.
        members = {} if self.cluster.removed else {m.name: m.address for m in self.cluster.membership.active()}
        self.swim.set_members(members)

    @property
    def safe_to_stop(self) -> bool:
        """Not a member, and the members know it: stopping this node loses nothing they count on."""
        return self.cluster.removed and self.cluster.removal_known

    def _tell_when_safe_to_stop(self) -> None:
        if not self.cluster.removed:
            self._said_safe_to_stop = False
            return
        if self._said_safe_to_stop or not self.cluster.removal_known:
            return
        self._said_safe_to_stop = True
        keys, hints = self.forest.key_count, self.hints.pending
        left = "" if not keys and not hints else (
            f"; it still holds {keys} keys and {hints} hints that no member took over "
            "(a removed node hands nothing off): the members' own replicas, read repair and anti-entropy cover them"
        )  # fmt: skip
        log.warning(
            "%s is no longer a member of cluster %s and the members know it: it serves no data, and it is safe to stop%s",
            self.name, self.cluster.params.cluster_id, left,
        )  # fmt: skip

    def _renew_actor(self) -> list[WriteOp]:
        """Handoff or reaping is about to delete keys, and with them the only record of the
        counters this node issued for them: were it to coordinate one of those keys again, it would reissue a
        counter the other replicas have seen and one of the two writes would be lost. So every
        deletion takes a new actor epoch, persisted in the same commit as the deletes."""
        actor = new_actor(self.name, self.rng)
        self.replica.actor = actor
        return [PutMeta(ACTOR_META, actor.encode())]

    def _timing(self, op: str, reply: Reply, started_us: int) -> Reply:
        """Measure the latency of `op` as the reply goes out. A get, put or delete is measured and
        counted once, by the node the client asked (forwarding included); the node a request was
        forwarded to measures it as "forward" and does not count it again, so the counters of
        all nodes add up to the client requests. Foreground requests feed admission control;
        a client request counts its outcome: an ErrorReply's code, or "ok" (a message, or a
        get's pre-encoded bytes, which are never an error and are not decoded here). With
        `measure` off only admission control hears of it. `now_us` and `now_ms` are one clock,
        so one reading serves both."""
        metrics, now_us, budget = self.metrics, self.now_us, self.budget
        if not self.measure:
            if op == "replicate":
                return reply

            def admitted(answer: Any) -> None:
                ended_us = now_us()
                budget.record_ms((ended_us - started_us) / 1000, ended_us // 1000)
                reply(answer)

            return admitted
        if op == "replicate":

            def timed_replica(answer: Any) -> None:
                ended_us = now_us()
                metrics.latency(op, ended_us - started_us, ended_us // 1000)
                reply(answer)

            return timed_replica
        ok_label = self._ok_labels[op]

        def timed(answer: Any) -> None:
            ended_us = now_us()
            took_us, now = ended_us - started_us, ended_us // 1000
            metrics.latency(op, took_us, now)
            budget.record_ms(took_us / 1000, now)
            if ok_label:
                metrics.count("requests", f"{op}:{answer.code}" if type(answer) is messages.ErrorReply else ok_label)
            reply(answer)

        return timed

    def _liveness_changed(self, member: str, status: str) -> None:
        self.metrics.count("swim_changes", status)
        log.info("%s is %s", member, status)

    # ---- what the node measures (issue 14) ----

    def stats(self, request_id: int) -> messages.StatsOk:
        """Latencies, counters and gauges now. Counters that other parts keep as totals are read
        here, so they cost the hot path nothing."""
        now = self.now_ms()
        readings = self.shell_readings()
        metrics = self.metrics
        totals = self.anti_entropy.totals
        counters = [
            *metrics.counter_list(),
            *(
                messages.Metric(name, "", value)
                for name, value in (
                    ("hints_stored", self.hints.stored_total),
                    ("hints_delivered", self.hints.delivered_total),
                    ("hints_expired", self.hints.expired_total),
                    ("handoff_keys", self.handoff.keys_total),
                    ("handoff_bytes", self.handoff.bytes_total),
                    ("ae_rounds", self.anti_entropy.rounds),
                    ("ae_keys_repaired", totals.repaired_local + totals.repaired_remote),
                    ("admission_shrinks", self.budget.decreases),
                    ("connections_refused", int(readings.get("connections_refused", 0))),
                    ("frames_refused", int(readings.get("frames_refused", 0))),
                )
            ),
        ]
        liveness = {"alive": 0, "suspect": 0, "dead": 0}
        for member in self.cluster.membership.active():
            status = self.swim.status(member.name)
            liveness[status] = liveness.get(status, 0) + 1
        gauges = [
            messages.Metric("keys", "", self.forest.key_count),
            messages.Metric("lmdb_used_bytes", "", int(readings.get("lmdb_used_bytes", 0))),
            messages.Metric("lmdb_map_bytes", "", int(readings.get("lmdb_map_bytes", 0))),
            messages.Metric("pending_writes", "", int(readings.get("pending_writes", 0))),
            messages.Metric("open_connections", "", int(readings.get("open_connections", 0))),
            *(messages.Metric("hints_pending", target, count) for target, count in sorted(self.hints.counts.items())),
            messages.Metric("partitions_owned", "", self._partitions_owned()),
            messages.Metric("partitions_in_transfer", "", self.handoff.transfers_pending),
            *(messages.Metric("members", status, count) for status, count in sorted(liveness.items())),
        ]
        return messages.StatsOk(
            id=request_id,
            node=self.name,
            uptime_ms=now - self.started_ms,
            latencies=metrics.latencies(now),
            counters=counters,
            gauges=gauges,
            versions_per_get=list(metrics.versions_per_get),
        )

    def info(self, request_id: int) -> messages.InfoOk:
        now = self.now_ms()
        readings = self.shell_readings()
        exchanged = self.anti_entropy.last_exchange_ms
        return messages.InfoOk(
            id=request_id,
            node=self.name,
            version=dynd.__version__,
            protocol_version=PROTOCOL_VERSION,
            uptime_ms=now - self.started_ms,
            listen=str(readings.get("listen", "")),
            advertise=self.cluster.address,
            data_dir=str(readings.get("data_dir", "")),
            keys=self.forest.key_count,
            disk_used_bytes=int(readings.get("lmdb_used_bytes", 0)),
            map_bytes=int(readings.get("lmdb_map_bytes", 0)),
            pending_writes=int(readings.get("pending_writes", 0)),
            hints_pending=self.hints.pending,
            partitions_owned=self._partitions_owned(),
            last_exchange_age_ms=now - max(exchanged.values()) if exchanged else None,
        )

    def _partitions_owned(self) -> int:
        return sum(1 for p in range(self.replica.partitions) if self.name in self.cluster.preference_list(p).primaries)

    def _status(self, request_id: int, pending: dict[str, int]) -> messages.ClusterStatusOk:
        """This node's view, with the members' transfer counts as far as known (StatusGather)."""
        status = self.cluster.status(request_id, pending, self.health, self.hints.counts)
        exchanged = self.anti_entropy.last_exchange_ms  # on the monotonic clock; the operator reads wall time
        wall_offset_ms = self.wall_ms() - self.now_ms()
        return dataclasses.replace(status, last_exchange_ms=[exchanged[p] + wall_offset_ms if p in exchanged else 0 for p in range(self.replica.partitions)])

    # ---- small requests of the cluster view ----

    def gossip(self, request: messages.Gossip, reply: Reply) -> None:
        reply(self.cluster.handle_gossip(request))

    def cluster_remove(self, request: messages.ClusterRemove, reply: Reply) -> None:
        """Removing probes the member first (unless forced); the reply comes when that is done."""

        def done(outcome: str | DynError) -> None:
            if isinstance(outcome, DynError):
                reply(error_reply(request.id, outcome))
            else:
                reply(messages.ClusterOk(id=request.id, message=outcome))

        self.cluster.remove(request.node, done, force=bool(request.force), liveness=self.health.status(request.node))

    def partition_sizes(self, request: messages.PartitionSizes, reply: Reply) -> None:
        sizes = local_sizes(self.forest, self.storage, self.replica.partitions, self.limits.plan_sample_keys)
        reply(messages.PartitionSizesOk(id=request.id, node=self.name, keys=list(sizes.keys), bytes=list(sizes.bytes)))

    def local_transfers(self) -> messages.NodeTransfers:
        """This node's handoff as `dynctl cluster transfers` and `leave --wait` show it."""
        handoff = self.handoff
        transfers = handoff.transfers(self.wall_ms() - self.now_ms())
        pending = handoff.partitions_to_move()
        me = self.cluster.membership.members.get(self.name)
        # bytes still to send: what was sent per key so far, else nothing known
        keys_pending = sum(handoff.keys_held(p) for p in pending)
        per_key = handoff.bytes_total / handoff.keys_total if handoff.keys_total else 0
        return messages.NodeTransfers(
            node=self.name,
            status=me.status if me is not None else "",
            answered=True,
            partitions_pending=len(pending),
            keys_pending=keys_pending,
            bytes_pending=int(keys_pending * per_key),
            partitions_sent=handoff.partitions_total,
            keys_sent=handoff.keys_total,
            bytes_sent=handoff.bytes_total,
            hints_pending=self.hints.pending,
            safe_to_stop=self.safe_to_stop,
            transfers=transfers,
        )

    def cluster_transfers(self, request: messages.ClusterTransfers, reply: Reply) -> None:
        """This node's transfers, and unless `local_only` every other member's (gathered for
        at most `gather_timeout_ms`; one that does not answer is listed as not answering)."""
        own = self.local_transfers()
        others = self.cluster.other_members()
        if request.local_only or not others:
            reply(messages.ClusterTransfersOk(id=request.id, node=self.name, nodes=[own]))
            return

        def gathered(answers: Answers) -> None:
            nodes = [own]
            for member in sorted(others):
                answer = answers.get(member)
                theirs = next((n for n in answer.nodes if n.node == member), None) if isinstance(answer, messages.ClusterTransfersOk) else None
                if theirs is None:
                    known = self.cluster.membership.members.get(member)
                    theirs = messages.NodeTransfers(member, known.status if known else "", False, 0, 0, 0, 0, 0, 0, 0, False, [])
                nodes.append(theirs)
            reply(messages.ClusterTransfersOk(id=request.id, node=self.name, nodes=nodes))

        self.gathers.start(others, lambda rid: messages.ClusterTransfers(id=rid, local_only=True), gathered)

    def cluster_join(self, request: messages.ClusterJoin, reply: Reply) -> None:
        """Joining talks to the seed; the reply comes when that exchange is done."""

        def done(outcome: str | DynError) -> None:
            if isinstance(outcome, DynError):
                reply(error_reply(request.id, outcome))
            else:
                reply(messages.ClusterOk(id=request.id, message=outcome))

        self.cluster.join(request.seed, done)
