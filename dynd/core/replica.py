"""One node's local replica logic: validate a request, version it, and say what to store.

Pure: the shell reads the stored bytes, calls in with `now_ms`, stores what comes back and replies
when the store says the write is durable. Until the ring arrives, a node is its key's only replica.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynd.core import versions
from dynd.core.limits import Limits
from dynd.core.partition import partition_of
from dynd.protocol.errors import BadRequest, KeyTooLarge, ValueTooLarge
from dynd.protocol.messages import ClockEntry, SiblingView


@dataclass(frozen=True, slots=True)
class WritePlan:
    partition: int
    key: bytes
    data: bytes
    reply_context: bytes
    sibling_count: int
    object_bytes: int
    pruned_entries: int


@dataclass(frozen=True, slots=True)
class ReadView:
    siblings: list[SiblingView]
    context: bytes


class LocalReplica:
    def __init__(self, actor: str, limits: Limits, partitions: int) -> None:
        self.actor = actor
        self.limits = limits
        self.partitions = partitions

    def partition(self, key: bytes) -> int:
        return partition_of(key, self.partitions)

    def check_key(self, key: bytes) -> None:
        if not key:
            raise BadRequest("the key is empty")
        if len(key) > self.limits.key_bytes_max:
            raise KeyTooLarge(f"key of {len(key)} bytes exceeds key_bytes_max={self.limits.key_bytes_max}")

    def read(self, stored: bytes | None) -> ReadView:
        obj = versions.decode_object(stored) if stored is not None else versions.EMPTY
        views = [
            SiblingView(
                value=s.value,
                actor=s.dot.actor,
                counter=s.dot.counter,
                clock=[ClockEntry(actor, counter) for actor, counter, _ in s.context.vector_entries()]
                + [ClockEntry(dot.actor, dot.counter) for dot, _ in s.context.cloud_entries()],
            )
            for s in obj.siblings
            if s.value is not None
        ]
        context = obj.read_context(self.limits.context_prune_threshold)
        return ReadView(views, versions.encode_context(context))

    def write(self, key: bytes, value: bytes | None, context_token: bytes | None, stored: bytes | None, now_ms: int) -> WritePlan:
        """Version a put (or, with value None, a delete) against what is stored; raise if refused."""
        self.check_key(key)
        if value is not None and len(value) > self.limits.value_bytes_max:
            raise ValueTooLarge(f"value of {len(value)} bytes exceeds value_bytes_max={self.limits.value_bytes_max}")
        context = versions.decode_context(
            context_token, entries_max=self.limits.context_entries_max, actor_bytes_max=self.limits.actor_bytes_max
        )
        current = versions.decode_object(stored) if stored is not None else versions.EMPTY
        outcome = versions.put(
            current,
            context,
            value,
            self.actor,
            now_ms,
            prune_threshold=self.limits.context_prune_threshold,
            siblings_max=self.limits.siblings_max,
            object_bytes_max=self.limits.object_bytes_max,
        )
        return WritePlan(
            partition=self.partition(key),
            key=key,
            data=versions.encode_object(outcome.object),
            reply_context=versions.encode_context(outcome.client_context),
            sibling_count=len(outcome.object.siblings),
            object_bytes=outcome.object.value_bytes,
            pruned_entries=outcome.pruned_entries,
        )
