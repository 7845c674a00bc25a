"""Put and get coordination as state machines: replies and deadlines in, effects out.

A coordinator is one of the first N healthy nodes of the key's preference list (DESIGN.md section
4). For a put, the node has versioned the write and queued it for its own store; its commit and the
other replicas' run at the same time, so a put costs one commit of latency, not two (why that is
safe for dots: `dynd.core.actors`). For a get it has read its own replica. These machines decide
whom to ask, when to answer the client, and what to repair. Whom to ask comes from `dynd.core.placement` (sloppy quorum): the healthy primaries, and a
healthy fallback with a hint for each primary that is down.

While the cluster has fewer members than N, a key has fewer distinct replicas, and R and W count
among those that exist (a one-node cluster answers at once). Replicas that are down do not lower
R or W: a request that cannot reach them fails, saying how many answered.

Put: send the new record to the targets; answer after W stores, the coordinator's own included
(`on_local`), and never before the coordinator's own store when it carries hints no other node
keeps (`local_required`); answer with a clear error once W can no longer be reached or the
deadline passes. A target that
fails is replaced by the next spare healthy fallback, carrying a hint for the primary it stands in
for; with no spare left, the coordinator keeps that hint itself (`StoreHint`). `pw` counts only
stores on primaries themselves.

A failed put is not undone: the replicas that stored it keep an ordinary version, which reads may
return and anti-entropy and hints may spread. So the failure says how many stored it, and once the
quorum is lost it waits for the answers still due (the coordinator's own store, and the replicas
asked, which the failure detector holds alive: one round trip) or the deadline, whichever is first,
so the count is the real one. A put that loses at once (replicas down before it began, as with a
paused node) would otherwise say that none stored it while this node and the reachable replicas do.
No replica is asked once the quorum is lost (no spare fallback stands in).

Get: ask the other primaries; answer after R replies (the coordinator's own read included) with
the merge of what came back; keep listening until every replica answered or the deadline passed,
then send the merged record to each replica whose copy was missing or older (read repair), the
coordinator's own included. (The node checks each reply against its limits before it gets here:
a reply it refuses counts as a failed one.)

The answer stays within one object's limits, so its context decodes and its reply fits a frame:
replicas that diverged may together hold more siblings or bytes than siblings_max or
object_bytes_max. The merge starts from one reply and folds in each other one, largest first,
only while the result stays within max(limit, what it holds so far); a reply left out is still on
its replica, and shows once a put with this answer's context has made room. It starts from the
coordinator's own reply when a put could not fit beside it (one more sibling, or a largest value,
would pass a limit), else from the largest reply. Either way, a put through this coordinator with
the answer's context fits: every sibling the coordinator holds that the context does not cover
leaves room for the new one. And each such round resolves at least the largest replica, so
repeating read-and-write through one coordinator converges the key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dynd.core import versions
from dynd.core.limits import Limits
from dynd.core.quorum import Tally, Vote
from dynd.core.replica import decode_record, encode_record

log = logging.getLogger("dynd.coordinator")


@dataclass(frozen=True, slots=True)
class SendReplicate:
    """Store `record` on `node`; with `hint`, `node` is a fallback holding it for that primary."""

    node: str
    key: bytes
    record: bytes
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class SendFetch:
    node: str
    key: bytes
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class StoreLocal:
    """Read repair of the coordinator's own replica."""

    key: bytes
    record: bytes


@dataclass(frozen=True, slots=True)
class StoreHint:
    """The coordinator keeps a hint for `target`: it failed and no fallback is left to stand in."""

    target: str
    key: bytes
    record: bytes


@dataclass(frozen=True, slots=True)
class AnswerPut:
    """Success: the client gets the context computed when the write was versioned."""


@dataclass(frozen=True, slots=True)
class AnswerGet:
    record: bytes | None


@dataclass(frozen=True, slots=True)
class Fail:
    """The quorum cannot be met (or was not met in time); `message` says how many answered."""

    code: str
    message: str


Effect = SendReplicate | SendFetch | StoreLocal | StoreHint | AnswerPut | AnswerGet | Fail


def _primary_tally(needed: int, voters: int) -> Tally | None:
    """The primaries-only tally of pr/pw, or None when the request asks for none."""
    return Tally(needed, voters) if needed > 0 else None


@dataclass(eq=False)  # identity: the node keeps coordinations in a dict
class PutCoordination:
    """`targets`: the other replicas as (node, hint); `spares`: healthy fallbacks not used yet;
    `replicas`: how many distinct replicas the key has (W counts among those); `pw`: how many
    stores must be on primaries themselves; `coordinator_is_primary`: whether our own counts for
    pw; `local_required`: answer only once our own store landed (it carries hints)."""

    key: bytes
    record: bytes
    targets: tuple[tuple[str, str | None], ...]
    w: int
    deadline_ms: int
    spares: tuple[str, ...] = ()
    replicas: int | None = None
    pw: int = 0
    coordinator_is_primary: bool = True
    local_required: bool = False
    tally: Tally = field(init=False)
    done: bool = False
    local: bool | None = None  # our own store: None until its commit reports
    local_error: str = ""
    losing: bool = False  # lost; the failure waits for the answers still due (module docstring)
    hints_kept: int = 0  # StoreHint effects: failed replicas the write may still reach through us

    def __post_init__(self) -> None:
        voters = len(self.targets) + 1
        # A cluster smaller than N has fewer distinct replicas than N; W counts among those. Fewer
        # reachable ones than W is a loss, not a smaller W.
        self.tally = Tally(min(self.w, voters if self.replicas is None else self.replicas), voters)
        primaries = sum(1 for _, hint in self.targets if hint is None) + self.coordinator_is_primary
        self.primary_tally = _primary_tally(min(self.pw, self.replicas or voters), primaries)
        self._roles = {node: hint for node, hint in self.targets}
        self._spares = list(self.spares)

    def start(self) -> list[Effect]:
        effects: list[Effect] = [SendReplicate(node, self.key, self.record, hint) for node, hint in self.targets]
        return effects + self._decide()  # too few replicas reachable: lost before anyone answers

    def on_local(self, ok: bool, error: str = "") -> list[Effect]:
        """The coordinator's own store committed (or failed with `error`)."""
        if self.local is not None:
            return []
        self.local, self.local_error = ok, error
        return self._vote(ok, self.coordinator_is_primary)

    def on_reply(self, node: str, ok: bool) -> list[Effect]:
        if node not in self._roles:
            return []
        hint = self._roles.pop(node)
        if ok:
            return self._vote(True, hint is None)
        primary = hint or node
        if self._spares and not self.done and not self.losing:
            # Sloppy quorum: the next healthy fallback stands in for the primary that failed.
            spare = self._spares.pop(0)
            self._roles[spare] = primary
            effects: list[Effect] = [SendReplicate(spare, self.key, self.record, primary)]
            if hint is None and self.primary_tally is not None:
                effects += self._primary_vote(False)
            return effects
        # Nobody left to stand in: keep a hint ourselves, so the primary gets the write later.
        self.hints_kept += 1
        return [StoreHint(primary, self.key, self.record), *self._vote(False, hint is None)]

    def on_tick(self, now_ms: int) -> list[Effect]:
        if self.done or now_ms < self.deadline_ms:
            return []
        self.done = True
        if self.losing:  # lost already; some answers did not come by the deadline
            return [self._failure()]
        return [Fail("timeout", f"timed out before w={self.w} stores: {self._outcome()}")]

    def _vote(self, ok: bool, by_primary: bool) -> list[Effect]:
        if self.done:
            return []
        self.tally.record(ok)
        if self.primary_tally is not None and by_primary:
            self.primary_tally.record(ok)
        return self._decide()

    def _primary_vote(self, ok: bool) -> list[Effect]:
        if self.done or self.primary_tally is None:
            return []
        self.primary_tally.record(ok)
        return self._decide()

    def _decide(self) -> list[Effect]:
        if self.done:
            return []
        result = self.tally.result
        primary = self.primary_tally.result if self.primary_tally is not None else Vote.WON
        local = Vote.PENDING if self.local is None else Vote.WON if self.local else Vote.LOST
        if not self.local_required:
            local = Vote.WON
        if result is Vote.WON and primary is Vote.WON and local is Vote.WON:
            self.done = True
            return [AnswerPut()]
        if Vote.LOST in (result, primary, local):
            self.losing = True
            if self.local is None or self._roles:
                return []  # answer once every store asked has reported, so the count is the real one
            self.done = True
            return [self._failure()]
        return []

    def _failure(self) -> Fail:
        if self.tally.result is Vote.LOST:
            return Fail("quorum", f"w={self.w} cannot be met: {self._outcome()}")
        if self.primary_tally is not None and self.primary_tally.result is Vote.LOST:
            tally = self.primary_tally
            return Fail("quorum", f"pw={self.pw} cannot be met: {tally.voters - tally.no} of the primaries could store it; {self._outcome()}")
        return Fail("quorum", f"the hints this node keeps for replicas that are down were not stored: {self._outcome()}")

    def _outcome(self) -> str:
        """How many replicas stored the write, failed, are down or have not answered, and what
        that means for the write (the module docstring says why)."""
        voters = self.tally.voters
        total = max(self.replicas or voters, voters)
        stored, failed = self.tally.yes, self.tally.no
        waiting, down = voters - stored - failed, total - voters
        counts = [f"{stored} of {total} replicas stored the write" + (" (this node among them)" if self.local else "")]
        if failed:
            counts.append(f"{failed} failed")
        if down:
            counts.append(f"{down} {'is' if down == 1 else 'are'} down with no node to stand in")
        if waiting:
            counts.append(f"{waiting} had not answered" + (" (this node's own store among them)" if self.local is None else ""))
        text = ", ".join(counts)
        if self.hints_kept:
            text += f"; this node keeps a hint for {self.hints_kept} that failed"
        if self.local is False:
            text += f"; this node's own store failed: {self.local_error}"
        if not stored and not waiting and not self.hints_kept:
            return text + ". Nothing was stored"
        return (
            text + ". The write is not undone: where it was stored it is an ordinary version, which reads may "
            "return (as a sibling of values written without its context) and which may still reach the other replicas"
        )

    @property
    def finished(self) -> bool:
        return self.done and not self._roles and self.local is not None


@dataclass(eq=False)
class GetCoordination:
    """`targets`: the other replicas as (node, hint), a fallback answering for the primary its
    hint names; `replicas`: how many distinct replicas the key has (R counts among those); `pr`:
    how many replies must come from primaries themselves; `limits`: bound the answer as the module
    docstring says (None: merge everything)."""

    key: bytes
    local_record: bytes | None
    targets: tuple[tuple[str, str | None], ...]
    r: int
    deadline_ms: int
    prune_threshold: int
    replicas: int | None = None
    pr: int = 0
    coordinator_is_primary: bool = True
    limits: Limits | None = None
    tally: Tally = field(init=False)
    answered: bool = False
    repaired: bool = False
    left_out: set[str] = field(default_factory=set)  # replies the answer had no room for

    def __post_init__(self) -> None:
        voters = len(self.targets) + 1  # as for puts, R counts among the replicas that exist
        self.tally = Tally(min(self.r, voters if self.replicas is None else self.replicas), voters)
        primaries = sum(1 for _, hint in self.targets if hint is None) + self.coordinator_is_primary
        self.primary_tally = _primary_tally(min(self.pr, self.replicas or voters), primaries)
        self._roles = {node: hint for node, hint in self.targets}
        self._waiting = set(self._roles)
        self._records: dict[str, bytes | None] = {}
        self._failed: set[str] = set()

    def start(self) -> list[Effect]:
        effects: list[Effect] = [SendFetch(node, self.key, hint) for node, hint in self.targets]
        return effects + self._vote("", self.local_record, ok=True)

    def on_reply(self, node: str, record: bytes | None) -> list[Effect]:
        if node not in self._waiting:
            return []
        self._waiting.discard(node)
        return self._vote(node, record, ok=True)

    def on_failure(self, node: str) -> list[Effect]:
        if node not in self._waiting:
            return []
        self._waiting.discard(node)
        self._failed.add(node)
        return self._vote(node, None, ok=False)

    def on_tick(self, now_ms: int) -> list[Effect]:
        if now_ms < self.deadline_ms or self.repaired:
            return []
        effects: list[Effect] = []
        if not self.answered:
            self.answered = True
            effects.append(Fail("timeout", f"timed out: {self.tally.yes} of {self.tally.voters} replicas answered, r={self.r}"))
        self._waiting.clear()
        return effects + self._repairs()

    @property
    def finished(self) -> bool:
        return self.answered and self.repaired

    def _vote(self, node: str, record: bytes | None, ok: bool) -> list[Effect]:
        if ok:
            self._records[node] = record
        effects: list[Effect] = []
        self.tally.record(ok)
        by_primary = self.coordinator_is_primary if node == "" else self._roles.get(node) is None
        if self.primary_tally is not None and by_primary:
            self.primary_tally.record(ok)
        if not self.answered:
            result = self.tally.result
            primary = self.primary_tally.result if self.primary_tally is not None else Vote.WON
            if result is Vote.WON and primary is Vote.WON:
                self.answered = True
                effects.append(AnswerGet(self._merged_record()))
            elif result is Vote.LOST:
                self.answered = True
                effects.append(
                    Fail(
                        "quorum",
                        f"r={self.r} cannot be met: {self.tally.no} of {self.tally.voters} replicas failed or are unreachable, "
                        f"{self.tally.yes} answered",
                    )
                )
            elif primary is Vote.LOST:
                self.answered = True
                assert self.primary_tally is not None
                effects.append(Fail("quorum", f"pr={self.pr} cannot be met: {self.primary_tally.yes} primaries answered, the others failed or are down"))
        if not self._waiting:
            effects += self._repairs()
        return effects

    def _merged(self) -> versions.SiblingSet:
        objects = {node: decode_record(record) for node, record in self._records.items() if record is not None}
        if not objects:
            return versions.EMPTY
        if self.limits is None:
            merged = versions.EMPTY
            for obj in objects.values():
                merged = versions.merge(merged, obj)
            return merged
        limits = self.limits
        order = sorted(objects, key=lambda node: (-len(objects[node].siblings), -objects[node].value_bytes, node != "", node))
        own = objects.get("")
        if own is not None and (
            len(own.siblings) + 1 > limits.siblings_max or own.value_bytes + limits.value_bytes_max > limits.object_bytes_max
        ):
            order.remove("")
            order.insert(0, "")  # no room for a put beside it: the answer must cover all of it
        merged = objects[order[0]]
        for node in order[1:]:
            candidate = versions.merge(merged, objects[node])
            if len(candidate.siblings) <= max(limits.siblings_max, len(merged.siblings)) and candidate.value_bytes <= max(
                limits.object_bytes_max, merged.value_bytes
            ):
                merged = candidate
            elif node not in self.left_out:
                self.left_out.add(node)
                log.info("get of %r: the reply of %s does not fit beside the others within the limits; left out", self.key[:64], node or "this node")
        return merged

    def _merged_record(self) -> bytes | None:
        present = [r for r in self._records.values() if r is not None]
        if not present:
            return None
        if all(r == present[0] for r in present):
            return present[0]  # the usual case: every replica agrees, nothing to decode
        return encode_record(self._merged(), self.prune_threshold)

    def _repairs(self) -> list[Effect]:
        if self.repaired:
            return []
        self.repaired = True
        merged_record = self._merged_record()
        if merged_record is None:
            return []
        merged: versions.SiblingSet | None = None  # decoded only if some replica's bytes differ
        effects: list[Effect] = []
        for node, record in sorted(self._records.items()):
            if record == merged_record or node in self.left_out:  # no room beside it: it would refuse
                continue
            if record is not None:
                if merged is None:
                    merged = self._merged()
                if decode_record(record) == merged:
                    continue
            if node == "":
                effects.append(StoreLocal(self.key, merged_record))
            else:
                effects.append(SendReplicate(node, self.key, merged_record, self._roles.get(node)))
        return effects
