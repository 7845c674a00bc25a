"""Put and get coordination as state machines: replies and deadlines in, effects out.

A coordinator is a primary of the key (DESIGN.md section 4). The shell has already applied the
write to its own replica durably (a coordinator stores before it sends, so a dot it issued can
never reach another replica without being in its own store), or read its own replica; these
machines decide whom to ask, when to answer the client, and what to repair.

While the cluster has fewer members than N, a key has fewer distinct replicas, and R and W count
among those that exist (a one-node cluster answers at once).

Put: send the new record to the other primaries; answer after W stores, the coordinator's own
included; answer with a clear error once W can no longer be reached or the deadline passes.

Get: ask the other primaries; answer after R replies (the coordinator's own read included) with
the merge of what came back; keep listening until every replica answered or the deadline passed,
then send the merged record to each replica whose copy was missing or older (read repair), the
coordinator's own included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynd.core import versions
from dynd.core.quorum import Tally, Vote
from dynd.core.replica import decode_record, encode_record


@dataclass(frozen=True, slots=True)
class SendReplicate:
    node: str
    key: bytes
    record: bytes


@dataclass(frozen=True, slots=True)
class SendFetch:
    node: str
    key: bytes


@dataclass(frozen=True, slots=True)
class StoreLocal:
    """Read repair of the coordinator's own replica."""

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


Effect = SendReplicate | SendFetch | StoreLocal | AnswerPut | AnswerGet | Fail


@dataclass(eq=False)  # identity: the node keeps coordinations in a dict
class PutCoordination:
    key: bytes
    record: bytes
    others: tuple[str, ...]
    w: int
    deadline_ms: int
    tally: Tally = field(init=False)
    done: bool = False

    def __post_init__(self) -> None:
        # A cluster smaller than N has fewer distinct replicas than N; W counts among those.
        voters = len(self.others) + 1
        self.tally = Tally(min(self.w, voters), voters)
        self._waiting = set(self.others)

    def start(self) -> list[Effect]:
        effects: list[Effect] = [SendReplicate(node, self.key, self.record) for node in self.others]
        effects += self._vote(True)  # the coordinator's own durable store
        return effects

    def on_reply(self, node: str, ok: bool) -> list[Effect]:
        if node not in self._waiting:
            return []
        self._waiting.discard(node)
        return self._vote(ok)

    def on_tick(self, now_ms: int) -> list[Effect]:
        if self.done or now_ms < self.deadline_ms:
            return []
        self.done = True
        return [Fail("timeout", f"timed out: {self.tally.yes} of {self.tally.voters} replicas stored the write, w={self.w}")]

    def _vote(self, ok: bool) -> list[Effect]:
        if self.done:
            return []
        result = self.tally.record(ok)
        if result is Vote.WON:
            self.done = True
            return [AnswerPut()]
        if result is Vote.LOST:
            self.done = True
            return [
                Fail(
                    "quorum",
                    f"w={self.w} cannot be met: {self.tally.no} of {self.tally.voters} replicas failed, "
                    f"{self.tally.yes} stored the write so far",
                )
            ]
        return []

    @property
    def finished(self) -> bool:
        return self.done and not self._waiting


@dataclass(eq=False)
class GetCoordination:
    key: bytes
    local_record: bytes | None
    others: tuple[str, ...]
    r: int
    deadline_ms: int
    prune_threshold: int
    tally: Tally = field(init=False)
    answered: bool = False
    repaired: bool = False

    def __post_init__(self) -> None:
        voters = len(self.others) + 1  # as for puts, R counts among the replicas that exist
        self.tally = Tally(min(self.r, voters), voters)
        self._waiting = set(self.others)
        self._records: dict[str, bytes | None] = {}
        self._failed: set[str] = set()

    def start(self) -> list[Effect]:
        effects: list[Effect] = [SendFetch(node, self.key) for node in self.others]
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
        result = self.tally.record(ok)
        if not self.answered:
            if result is Vote.WON:
                self.answered = True
                effects.append(AnswerGet(self._merged_record()))
            elif result is Vote.LOST:
                self.answered = True
                effects.append(
                    Fail(
                        "quorum",
                        f"r={self.r} cannot be met: {self.tally.no} of {self.tally.voters} replicas failed, "
                        f"{self.tally.yes} answered",
                    )
                )
        if not self._waiting:
            effects += self._repairs()
        return effects

    def _merged(self) -> versions.SiblingSet:
        merged = versions.EMPTY
        for record in self._records.values():
            if record is not None:
                merged = versions.merge(merged, decode_record(record))
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
        merged = self._merged()
        effects: list[Effect] = []
        for node, record in sorted(self._records.items()):
            if record == merged_record or (record is not None and decode_record(record) == merged):
                continue
            if node == "":
                effects.append(StoreLocal(self.key, merged_record))
            else:
                effects.append(SendReplicate(node, self.key, merged_record))
        return effects
