"""Client requests (get, put, delete): forwarded to a node that may coordinate them, or coordinated
here. Pure: replies go through callbacks, peers through the Network port.

Every request takes one of two paths:
- Forward: a node that is not a primary of the key, nor among its first N healthy nodes while a
  primary is down, passes the request to one that is (healthy primaries first, then healthy
  fallbacks, then the rest) and relays the first answer under the client's id; a candidate that
  cannot be reached hands it to the next. A request that names a ring other than ours (a
  routing client's view) is refused as stale instead, so the client refreshes its ring.
- Coordinate: for a put, version the write, queue it for our own store and let `PutCoordination`
  replicate it meanwhile and decide when to answer; for a get, read our own replica and let
  `GetCoordination` gather the others, answer and repair (`dynd.core.coordinator`). A key with
  one replica in all is answered at once.

A get's Fetch carries the digest of our own copy (`replica.versions_digest`: its canonical
versions, the part of what a Merkle leaf hashes that is not the values). A replica whose record
has the same versions answers "same" without its bytes, and that reply goes into the coordination as a copy of
ours: R, PR, the merge and read repair see exactly what they would have seen with the bytes (a
record that differs only in its pruned context token is the same sibling set; anti-entropy calls
it equal too). Only a copy of at least `digest_read_min_bytes` is worth it. A node older than the digest refuses it as an unknown field: it is asked again
without, and asked without for `_PLAIN_FETCH_MS` before it is tried again (an upgrade restarts it).

A coordination runs from its first effects until it is `finished`: every effect it returns is
carried out through one table keyed by the effect's type, and every reply, failure and deadline
goes back into it. `tick` passes the clock to each, for their deadlines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dynd.core import coordinator as co
from dynd.core.cluster import ClusterView
from dynd.core.health import Health
from dynd.core.hints import HintDelivery
from dynd.core.limits import Limits
from dynd.core.metrics import LogBudget, Metrics
from dynd.core.ops import PutObject, WriteOp
from dynd.core.peer_records import PeerRecords
from dynd.core.placement import coordinators, place
from dynd.core.ports import Network, Storage
from dynd.core.preflist import PreferenceList
from dynd.core.replica import LocalReplica, versions_digest
from dynd.core.versions import make_meta
from dynd.protocol import codec, messages
from dynd.protocol.errors import BadRequest, DynError, NotAMember, QuorumFailed, StaleRing, Timeout, Unreachable
from dynd.protocol.messages import error_reply

log = logging.getLogger("dynd.node")

Reply = Callable[[Any], None]  # a message, or pre-encoded payload bytes
_FAILURES: dict[str, type[DynError]] = {"quorum": QuorumFailed, "timeout": Timeout}
_PLAIN_FETCH_MS = 60_000  # how long a peer that refused a digest is asked without one


@dataclass(eq=False, kw_only=True)  # identity: kept in `ClientRequests.running`
class PutRequest(co.PutCoordination):
    """A put (or delete) this node coordinates, with the request, where its answer goes, and the
    answer it succeeds with (the context computed when the write was versioned)."""

    request: messages.Put | messages.Delete
    reply: Reply = field(repr=False)
    ok: messages.PutOk | messages.DeleteOk
    started_us: int = 0
    answered_by: set[str] = field(default_factory=set)  # replicas that answered well, and those that failed:
    failed_by: set[str] = field(default_factory=set)  # what the slow-request and quorum-failure logs tell


@dataclass(eq=False, kw_only=True)
class GetRequest(co.GetCoordination):
    """A get this node coordinates, with the request and where its answer goes; `local_digest`:
    the digest of our own copy its Fetches carry (None when we hold none)."""

    request: messages.Get
    local_digest: bytes | None = None
    reply: Reply = field(repr=False)
    started_us: int = 0
    answered_by: set[str] = field(default_factory=set)
    failed_by: set[str] = field(default_factory=set)


Coordination = PutRequest | GetRequest


class ClientRequests:
    """Get, put and delete, as the module docstring says; `running` holds the coordinations that
    have not finished yet."""

    def __init__(
        self,
        name: str,
        replica: LocalReplica,
        storage: Storage,
        network: Network,
        cluster: ClusterView,
        health: Health,
        hints: HintDelivery,
        records: PeerRecords,
        *,
        limits: Limits,
        now_ms: Callable[[], int],
        wall_ms: Callable[[], int],
        now_us: Callable[[], int] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`now_ms`: the monotonic clock of request deadlines; `wall_ms`: the wall clock a write's
        version is stamped with (other nodes compare it, to prune contexts and age tombstones);
        `now_us`: the same monotonic clock finer, only for latencies; `metrics`: where counts go."""
        self.name = name
        self.replica = replica
        self.storage = storage
        self.network = network
        self.cluster = cluster
        self.health = health
        self.hints = hints
        self.records = records
        self.limits = limits
        self.now_ms = now_ms
        self.wall_ms = wall_ms
        self.request_timeout_ms = limits.request_timeout_ms
        # insertion-ordered (a dict, not a set): ticks visit them in the same order on every run
        self.running: dict[Coordination, None] = {}
        self.pruned_entries_total = 0
        self.now_us = now_us or (lambda: now_ms() * 1000)
        self.metrics = metrics or Metrics()
        self.slow_request_us = limits.slow_request_ms * 1000
        self.log_budget = LogBudget(limits.slow_log_lines_per_s)
        self.plain_fetch_until_ms: dict[str, int] = {}  # peers that refused a digest (module docstring)
        self._effects: dict[type, Callable[[Any, Any], None]] = {
            co.SendReplicate: self._send_replicate,
            co.SendFetch: self._send_fetch,
            co.StoreLocal: self._store_local,
            co.StoreHint: self._store_hint,
            co.AnswerPut: self._answer_put,
            co.AnswerGet: self._answer_get,
            co.Fail: self._fail,
        }

    # ---- the two client requests ----

    def get(self, request: messages.Get, reply: Reply) -> None:
        params = self.cluster.params
        r = self._quorum("r", request.r, params.r)
        pr = self._quorum("pr", request.pr, 0)
        partition, preference = self._locate(request.key)
        if not self._coordinates(request, preference):
            self.forward(request, preference, reply)
            return
        placement = place(preference, self.name, self.health.usable)
        local = self.storage.read_object(partition, request.key)
        if not placement.targets and placement.replicas == 1:
            reply(self._get_payload(request.id, local))
            return
        coordination = GetRequest(
            key=request.key,
            local_record=local,
            targets=placement.targets,
            r=r,
            deadline_ms=self.now_ms() + self.request_timeout_ms,
            prune_threshold=self.limits.context_prune_threshold,
            replicas=placement.replicas,
            pr=pr,
            coordinator_is_primary=placement.coordinator_is_primary,
            limits=self.limits,
            request=request,
            reply=reply,
            started_us=self.now_us(),
            local_digest=None if local is None or len(local) < self.limits.digest_read_min_bytes else bytes(versions_digest(local)),
        )
        self._run(coordination, coordination.start())

    def put(self, request: messages.Put | messages.Delete, reply: Reply) -> None:
        """Version the write, store and replicate it; `reply` gets PutOk/DeleteOk or an error."""
        params = self.cluster.params
        w = self._quorum("w", request.w, params.w)
        pw = self._quorum("pw", request.pw, 0)
        partition, preference = self._locate(request.key)
        if not self._coordinates(request, preference):
            self.forward(request, preference, reply)
            return
        placement = place(preference, self.name, self.health.usable)
        value = request.value if isinstance(request, messages.Put) else None
        stored = self.storage.read_object(partition, request.key)
        meta = None
        if isinstance(request, messages.Put) and (request.content_type is not None or request.usermeta):
            meta = make_meta(request.content_type, ((entry.name, entry.value) for entry in request.usermeta or ()))
        plan = self.replica.write(request.key, value, request.context, stored, self.wall_ms(), partition, meta)
        self._note(plan.key, plan.sibling_count, plan.object_bytes, plan.pruned_entries)
        ok: messages.PutOk | messages.DeleteOk
        if isinstance(request, messages.Put):
            ok = messages.PutOk(id=request.id, context=plan.reply_context)
        else:
            ok = messages.DeleteOk(id=request.id, context=plan.reply_context)
        ops: list[WriteOp] = [PutObject(plan.partition, plan.key, plan.record), *plan.meta_ops]
        for primary in placement.unplaced:  # down, and no fallback to stand in: we keep the hint
            ops += self.hints.hint_ops(primary, partition, plan.key, plan.record, self.records.merge_own_hint)
        actor = self.replica.actor
        if not placement.targets and placement.replicas == 1:

            def stored_alone(error: DynError | None) -> None:
                if error is not None:
                    self.records.own_store_failed(actor)
                reply(ok if error is None else error_reply(request.id, error))

            self.storage.submit(ops, stored_alone)
            return
        # Our own commit and the other replicas' run at once (see dynd.core.actors for why the
        # dots stay unique); our store counts toward W when it lands.
        coordination = PutRequest(
            key=request.key,
            record=plan.record,
            targets=placement.targets,
            w=w,
            deadline_ms=self.now_ms() + self.request_timeout_ms,
            spares=placement.spares,
            replicas=placement.replicas,
            pw=pw,
            coordinator_is_primary=placement.coordinator_is_primary,
            local_required=bool(placement.unplaced),
            request=request,
            reply=reply,
            ok=ok,
            started_us=self.now_us(),
        )

        def stored_locally(error: DynError | None) -> None:
            if error is not None:
                self.records.own_store_failed(actor)
            self._apply(coordination, coordination.on_local(error is None, "" if error is None else error.message))

        self.storage.submit(ops, stored_locally)  # a refusal (overloaded, full) raises before anything is sent
        self._run(coordination, coordination.start())

    def _quorum(self, name: str, asked: int | None, default: int) -> int:
        if asked is None:
            return default
        n = self.cluster.params.n
        if not 1 <= asked <= n:
            raise BadRequest(f"{name}={asked} is outside 1..n={n}")
        return asked

    def _locate(self, key: bytes) -> tuple[int, PreferenceList]:
        self.replica.check_key(key)
        partition = self.replica.partition(key)
        return partition, self.cluster.preference_list(partition)

    def _coordinates(self, request: Any, preference: PreferenceList) -> bool:
        """A primary coordinates, and so does a node a request was forwarded to; any other node
        only while a primary is down and it is among the key's first N healthy nodes."""
        if self.name in preference.primaries or request.forwarded:
            return True
        return self.name in coordinators(preference, self.name, self.health.usable)

    # ---- forwarding ----

    def forward(self, request: Any, preference: PreferenceList, reply: Reply) -> None:
        """Pass the request to a node that may coordinate it (see the module docstring)."""
        if request.ring is not None and request.ring != self.cluster.membership.digest:
            raise StaleRing(f"{self.name} is not a primary of this key under the current ring")
        usable = self.health.usable
        # Healthy primaries first, then healthy fallbacks (sloppy quorum), then the rest.
        healthy = [node for node in preference.all if node != self.name and usable(node)]
        self._relay(request, healthy + [node for node in preference.primaries if node not in healthy and node != self.name], reply)

    def _relay(self, request: Any, candidates: list[str], reply: Reply) -> None:
        """Pass a request to the first candidate that answers; relay its reply under the client's id."""
        if not candidates:
            reply(error_reply(request.id, Unreachable("no primary of this key is reachable")))
            return
        node, rest = candidates[0], candidates[1:]

        def on_reply(answer: Any) -> None:
            self._evidence(node, answer)
            if isinstance(answer, (Unreachable, NotAMember)):  # NotAMember: it left; our ring is behind
                self._relay(request, rest, reply)
            elif isinstance(answer, DynError):
                reply(error_reply(request.id, answer))
            else:
                reply(dataclasses.replace(answer, id=request.id))

        self.network.send(node, lambda rid: dataclasses.replace(request, id=rid, forwarded=True, ring=None), on_reply)

    # ---- running coordinations ----

    def _run(self, coordination: Coordination, effects: list[co.Effect]) -> None:
        self.running[coordination] = None
        self._apply(coordination, effects)

    def _apply(self, coordination: Coordination, effects: list[co.Effect]) -> None:
        table = self._effects
        for effect in effects:
            table[type(effect)](coordination, effect)
        if coordination.finished:
            self.running.pop(coordination, None)

    def tick(self, now_ms: int) -> None:
        """Pass the clock to every running coordination (their deadlines)."""
        for coordination in list(self.running):
            effects = coordination.on_tick(now_ms)
            if effects or coordination.finished:
                self._apply(coordination, effects)

    # ---- the effects ----

    def _send_replicate(self, coordination: Coordination, effect: co.SendReplicate) -> None:
        if isinstance(coordination, GetRequest):
            self.metrics.count("read_repairs")

        def on_reply(answer: Any) -> None:
            self._evidence(effect.node, answer)
            (coordination.answered_by if isinstance(answer, messages.ReplicateOk) else coordination.failed_by).add(effect.node)
            if isinstance(coordination, PutRequest):
                self._apply(coordination, coordination.on_reply(effect.node, isinstance(answer, messages.ReplicateOk)))
            elif isinstance(answer, DynError):  # a get's read repair: nothing waits for it
                log.debug("read repair of %s on %s failed: %s", effect.key[:64], effect.node, answer)

        self.network.send(effect.node, lambda rid: messages.Replicate(id=rid, key=effect.key, record=effect.record, hint=effect.hint), on_reply)

    def _send_fetch(self, coordination: GetRequest, effect: co.SendFetch) -> None:
        digest = coordination.local_digest
        if digest is not None and self.plain_fetch_until_ms.get(effect.node, 0) > self.now_ms():
            digest = None
        self._fetch(coordination, effect, digest)

    def _fetch(self, coordination: GetRequest, effect: co.SendFetch, digest: bytes | None) -> None:
        def on_reply(answer: Any) -> None:
            self._evidence(effect.node, answer)
            if digest is not None and isinstance(answer, BadRequest):  # a node older than the digest
                self.plain_fetch_until_ms[effect.node] = self.now_ms() + _PLAIN_FETCH_MS
                self._fetch(coordination, effect, None)
                return
            record: bytes | None = None
            if isinstance(answer, messages.FetchOk) and answer.same:
                ok = digest is not None  # "same" answers only a digest
                record = coordination.local_record
            else:
                ok = isinstance(answer, messages.FetchOk) and self._fetched_ok(effect.node, effect.key, answer.record, coordination.local_record)
                record = answer.record if ok else None
            if ok:
                coordination.answered_by.add(effect.node)
                effects = coordination.on_reply(effect.node, record)
            else:
                coordination.failed_by.add(effect.node)
                effects = coordination.on_failure(effect.node)
            self._apply(coordination, effects)

        self.network.send(effect.node, lambda rid: messages.Fetch(id=rid, key=effect.key, hint=effect.hint, digest=digest), on_reply)

    def _store_local(self, coordination: Coordination, effect: co.StoreLocal) -> None:
        self.metrics.count("read_repairs")
        try:
            self.records.merge_in(effect.key, effect.record, _log_repair_failure)
        except DynError as exc:  # the merge is over a limit: our copy stays as it is
            _log_repair_failure(exc)

    def _store_hint(self, coordination: Coordination, effect: co.StoreHint) -> None:
        try:
            self.records.keep_hint(effect.target, effect.key, effect.record, _log_hint_failure)
        except DynError as exc:
            _log_hint_failure(exc)

    def _answer_put(self, coordination: PutRequest, effect: co.AnswerPut) -> None:
        self._note_slow(coordination)
        coordination.reply(coordination.ok)

    def _answer_get(self, coordination: GetRequest, effect: co.AnswerGet) -> None:
        self._note_slow(coordination)
        coordination.reply(self._get_payload(coordination.request.id, effect.record))

    def _fail(self, coordination: Coordination, effect: co.Fail) -> None:
        if self.log_budget.allow(self.now_ms()):
            failed = coordination.failed_by
            waiting = [node for node, _ in coordination.targets if node not in coordination.answered_by and node not in failed]
            log.warning(
                "%s of key %s failed (%s): %s; replicas that did not answer: failed %s, no answer yet %s%s",
                _op(coordination), _key_hash(coordination.key), effect.code, effect.message,
                ", ".join(sorted(failed)) or "none", ", ".join(sorted(waiting)) or "none", self._dropped_note(),
            )  # fmt: skip
        coordination.reply(error_reply(coordination.request.id, _FAILURES.get(effect.code, QuorumFailed)(effect.message)))

    def _note_slow(self, coordination: Coordination) -> None:
        """Log a coordination slower than slow_request_ms, once, as it answers (never the key)."""
        if not self.slow_request_us:
            return
        took_us = self.now_us() - coordination.started_us
        if took_us < self.slow_request_us or not self.log_budget.allow(self.now_ms()):
            return
        log.warning(
            "slow %s of key %s: %d ms; replicas asked %d (%s), answered %d (%s)%s",
            _op(coordination), _key_hash(coordination.key), took_us // 1000,
            len(coordination.targets), ", ".join(node for node, _ in coordination.targets),
            len(coordination.answered_by), ", ".join(sorted(coordination.answered_by)), self._dropped_note(),
        )  # fmt: skip

    def _dropped_note(self) -> str:
        dropped = self.log_budget.take_dropped()
        return f" ({dropped} more slow or failed requests not logged)" if dropped else ""

    # ---- helpers ----

    def _fetched_ok(self, node: str, key: bytes, record: bytes | None, local: bytes | None) -> bool:
        """Whether a replica's answer to a get may join the answer: within our limits (the same
        bytes as our own copy need no second look)."""
        if record is None or record == local:
            return True
        try:
            self.records.peer_record(self.replica.partition(key), key, record)
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

    def _get_payload(self, request_id: int, record: bytes | None) -> bytes:
        view = self.replica.read(record)
        self.metrics.versions_seen(_array_length(view.siblings_cbor))
        return codec.encode_get_ok_preencoded(request_id, view.siblings_cbor, view.context_cbor)

    def _note(self, key: bytes, sibling_count: int, object_bytes: int, pruned: int) -> None:
        limits = self.limits
        if sibling_count >= limits.siblings_warn:
            log.warning("key %r has %d siblings (siblings_warn=%d)", key[:64], sibling_count, limits.siblings_warn)
        if object_bytes >= limits.object_bytes_warn:
            log.warning("key %r holds %d bytes (object_bytes_warn=%d)", key[:64], object_bytes, limits.object_bytes_warn)
        if pruned:
            self.metrics.count("contexts_pruned", amount=pruned)
            self.pruned_entries_total += pruned
            log.info("pruned %d context entries of key %r (total %d)", pruned, key[:64], self.pruned_entries_total)


def _log_hint_failure(error: DynError | None) -> None:
    if error is not None:
        log.warning("could not keep a hint: %s", error)


def _log_repair_failure(error: DynError | None) -> None:
    if error is not None:
        log.warning("read repair of the local replica failed: %s", error)


def _op(coordination: Coordination) -> str:
    return type(coordination.request).OP


def _key_hash(key: bytes) -> str:
    """A short hash that tells keys apart in a log without writing the key."""
    return hashlib.blake2b(key, digest_size=6).hexdigest()


def _array_length(cbor: bytes) -> int:
    """How many items a CBOR array holds, from its head alone (the answer's siblings are already
    encoded; decoding them again only to count would double a get's CBOR work)."""
    info = cbor[0] & 0x1F
    if info < 24:
        return info
    width = 1 << (info - 24)  # 24..27: the count follows in 1, 2, 4 or 8 bytes
    return int.from_bytes(cbor[1 : 1 + width], "big")
