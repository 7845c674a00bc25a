"""One node's local replica logic: validate a request, version it, and say what to store.

Pure: the shell reads the stored bytes, calls in with `now_ms`, stores what comes back and replies
when the store says the write is durable; coordination across replicas is `coordinator.py`'s.

A stored record holds the read view (the live siblings as clients see them, and the read context)
already encoded as CBOR, built once per write, and the object's versions. A get answers by slicing
the record and stitching the reply, never decoding the object (DESIGN.md section 10). Each live
value is stored once, in the view; the versions part refers to it by position.

    record = format (1 byte) | length of siblings view (4 bytes, big-endian)
             | siblings view CBOR | length of context (4 bytes) | context CBOR
             | versions CBOR (versions.encode_object without values)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cbor2

from dynd.core import versions
from dynd.core.limits import Limits
from dynd.core.partition import partition_of
from dynd.protocol.codec import MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP, cbor_head, cbor_text, cbor_uint
from dynd.protocol.errors import BadRequest, KeyTooLarge, ValueTooLarge
from dynd.protocol.messages import ClockEntry, SiblingView

RECORD_FORMAT = 1
_LENGTH = struct.Struct(">I")
_FORMAT_AND_LENGTH = struct.Struct(">BI")


@dataclass(frozen=True, slots=True)
class WritePlan:
    partition: int
    key: bytes
    record: bytes
    reply_context: bytes
    sibling_count: int
    object_bytes: int
    pruned_entries: int


@dataclass(frozen=True, slots=True)
class EncodedView:
    """The read view of a record as CBOR fragments: the siblings list and the context token."""

    siblings_cbor: bytes
    context_cbor: bytes


def sibling_views(obj: versions.SiblingSet) -> list[SiblingView]:
    return [
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


_VIEW_HEAD = cbor_head(MAJOR_MAP, 4) + cbor_text("value")
_VIEW_ACTOR = cbor_text("actor")
_VIEW_COUNTER = cbor_text("counter")
_VIEW_CLOCK = cbor_text("clock")
_CLOCK_ENTRY_HEAD = cbor_head(MAJOR_MAP, 2) + _VIEW_ACTOR


def _encode_views(obj: versions.SiblingSet) -> bytes:
    """cbor2.dumps(to_plain(sibling_views(obj))), written by hand: this runs on every write."""
    live = obj.live
    out = [cbor_head(MAJOR_ARRAY, len(live))]
    for s in live:
        assert s.value is not None
        vector = s.context.vector_entries()
        cloud = s.context.cloud_entries()
        out += (
            _VIEW_HEAD, cbor_head(MAJOR_BYTES, len(s.value)), s.value,
            _VIEW_ACTOR, cbor_text(s.dot.actor), _VIEW_COUNTER, cbor_uint(s.dot.counter),
            _VIEW_CLOCK, cbor_head(MAJOR_ARRAY, len(vector) + len(cloud)),
        )  # fmt: skip
        for actor, counter, _ in vector:
            out += (_CLOCK_ENTRY_HEAD, cbor_text(actor), _VIEW_COUNTER, cbor_uint(counter))
        for dot, _ in cloud:
            out += (_CLOCK_ENTRY_HEAD, cbor_text(dot.actor), _VIEW_COUNTER, cbor_uint(dot.counter))
    return b"".join(out)


def _encode_record(obj: versions.SiblingSet, context_token: bytes) -> bytes:
    siblings_cbor = _encode_views(obj)
    token_head = cbor_head(MAJOR_BYTES, len(context_token))  # the context CBOR is the token as a byte string
    return b"".join(
        (
            _FORMAT_AND_LENGTH.pack(RECORD_FORMAT, len(siblings_cbor)),
            siblings_cbor,
            _LENGTH.pack(len(token_head) + len(context_token)),
            token_head,
            context_token,
            versions.encode_object(obj, values=False),
        )
    )


def encode_record(obj: versions.SiblingSet, prune_threshold: int) -> bytes:
    return _encode_record(obj, versions.encode_context(obj.read_context(prune_threshold)))


def _split_record(record: bytes) -> tuple[int, int, int]:
    """Offsets (context start, context end) and the object's start within a record."""
    fmt, siblings_len = _FORMAT_AND_LENGTH.unpack_from(record, 0)
    if fmt != RECORD_FORMAT:
        raise ValueError(f"unknown stored record format {fmt}")
    context_len_at = _FORMAT_AND_LENGTH.size + siblings_len
    (context_len,) = _LENGTH.unpack_from(record, context_len_at)
    context_start = context_len_at + _LENGTH.size
    return context_start, context_start + context_len, siblings_len


def decode_record(record: bytes) -> versions.SiblingSet:
    _, object_start, siblings_len = _split_record(record)
    siblings_start = _FORMAT_AND_LENGTH.size
    views = cbor2.loads(record[siblings_start : siblings_start + siblings_len])
    return versions.decode_object(record[object_start:], (view["value"] for view in views))


def _decode_versions(record: bytes) -> versions.SiblingSet:
    """The object without its live values (each is True, a placeholder): enough to see what a
    write supersedes, without decoding the siblings view that holds the values."""
    _, object_start, _ = _split_record(record)
    return versions.decode_object(record[object_start:])


def record_view(record: bytes) -> EncodedView:
    context_start, context_end, siblings_len = _split_record(record)
    siblings_start = _FORMAT_AND_LENGTH.size
    return EncodedView(record[siblings_start : siblings_start + siblings_len], record[context_start:context_end])


EMPTY_VIEW = EncodedView(cbor2.dumps([]), cbor2.dumps(versions.encode_context(versions.EMPTY_CLOCK)))


class LocalReplica:
    """Versions writes for one node. It remembers the last `versions_cache_entries` objects it
    wrote and context tokens it handed out, decoded: the usual next write of a key comes with the
    token of the previous one and finds that object still stored, and decoding both was the
    larger part of versioning it. A remembered object is used only while the stored bytes are
    exactly the bytes it was encoded to. Only records up to `versions_cache_record_bytes_max`
    are remembered, which bounds the memory at about entries x that size."""

    def __init__(self, actor: str, limits: Limits, partitions: int) -> None:
        self.actor = actor
        self.limits = limits
        self.partitions = partitions
        self._objects: dict[tuple[int, bytes], tuple[bytes, versions.SiblingSet]] = {}
        self._contexts: dict[bytes, versions.Clock] = {}

    def partition(self, key: bytes) -> int:
        return partition_of(key, self.partitions)

    def check_key(self, key: bytes) -> None:
        if not key:
            raise BadRequest("the key is empty")
        if len(key) > self.limits.key_bytes_max:
            raise KeyTooLarge(f"key of {len(key)} bytes exceeds key_bytes_max={self.limits.key_bytes_max}")

    def _remember(self, cache: dict[Any, Any], key: Any, item: Any) -> None:
        cache.pop(key, None)
        cache[key] = item
        if len(cache) > self.limits.versions_cache_entries:
            del cache[next(iter(cache))]  # the oldest

    def read(self, record: bytes | None) -> EncodedView:
        return EMPTY_VIEW if record is None else record_view(record)

    def write(
        self, key: bytes, value: bytes | None, context_token: bytes | None, record: bytes | None, now_ms: int, partition: int | None = None
    ) -> WritePlan:
        """Version a put (or, with value None, a delete) against what is stored; raise if refused.
        `partition`: the key's, when the caller has it already (an MD5 per put saved)."""
        self.check_key(key)
        if value is not None and len(value) > self.limits.value_bytes_max:
            raise ValueTooLarge(f"value of {len(value)} bytes exceeds value_bytes_max={self.limits.value_bytes_max}")
        if partition is None:
            partition = self.partition(key)
        context = self._contexts.get(context_token) if context_token is not None else None
        if context is None:
            context = versions.decode_context(
                context_token, entries_max=self.limits.context_entries_max, actor_bytes_max=self.limits.actor_bytes_max
            )
        current = versions.EMPTY
        if record is not None:
            remembered = self._objects.get((partition, key))
            if remembered is not None and remembered[0] == record:
                current = remembered[1]
            else:
                current = _decode_versions(record)
                if not all(context.covers(s.dot) for s in current.siblings):
                    current = decode_record(record)  # some stored values survive this write: read them
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
        read_context = outcome.object.read_context(self.limits.context_prune_threshold)
        read_token = versions.encode_context(read_context)
        # Usually the writer's new context is exactly what a read would now return: encode it once,
        # and remember that clock (its encoding kept) for the next write made with the token.
        client_context = outcome.client_context
        if client_context == read_context:
            reply_token, client_context = read_token, read_context
        else:
            reply_token = versions.encode_context(client_context)
        new_record = _encode_record(outcome.object, read_token)
        if len(new_record) <= self.limits.versions_cache_record_bytes_max:
            self._remember(self._objects, (partition, key), (new_record, outcome.object))
        else:
            self._objects.pop((partition, key), None)
        self._remember(self._contexts, reply_token, client_context)
        return WritePlan(
            partition=partition,
            key=key,
            record=new_record,
            reply_context=reply_token,
            sibling_count=len(outcome.object.siblings),
            object_bytes=outcome.object.value_bytes,
            pruned_entries=outcome.pruned_entries,
        )


def merge_records(stored: bytes | None, incoming: bytes, prune_threshold: int) -> bytes | None:
    """The record to store after merging `incoming` (from another replica) into `stored`, or None
    when `stored` already holds everything `incoming` does. Raises on a malformed record."""
    try:
        arriving = decode_record(incoming)
    except Exception as exc:
        raise BadRequest(f"malformed record: {exc}") from None
    if stored is None:
        return incoming if arriving.siblings or len(arriving.seen) else None
    if stored == incoming:
        return None
    current = decode_record(stored)
    merged = versions.merge(current, arriving)
    if merged == current:
        return None
    return encode_record(merged, prune_threshold)
