"""One node's local replica logic: validate a request, version it, and say what to store.

Pure: the shell reads the stored bytes, calls in with `now_ms`, stores what comes back and replies
when the store says the write is durable; coordination across replicas is `coordinator.py`'s.

A stored record holds the read view (the live siblings as clients see them, and the read context)
already encoded as CBOR, built once per write, and the object's versions. A get answers by slicing
the record and stitching the reply, never decoding the object (DESIGN.md section 10). Each live
value is stored once, in the view; the versions part refers to it by position.

    record = format (1 byte) | length of siblings view (4 bytes, big-endian)
             | siblings view CBOR | length of context (4 bytes) | context CBOR
             | versions CBOR (versions_codec.encode_object without values)

A sibling with metadata (`versions.SiblingMeta`) shows it in its view: `content_type` (when
given), `usermeta` (when any) and `modified_ms` (its timestamp) after the four fields every view
has; a sibling without metadata has the view it always had.

The format is this module's alone: other modules go through its functions (`decode_record`,
`encode_record`, `record_view`, `canonical_parts` for Merkle leaves, `versions_digest` for digest reads, `deleted_at_ms` for the
reaper), never through the bytes.

Records from other nodes (replicate, handoff, hints, anti-entropy repairs, a get's fetched
replies) meet the limits of a client's write before anything is merged (`decode_peer_record`):
well-formed and canonically encoded, each value within value_bytes_max, all of them within
object_bytes_max, at most siblings_max siblings, contexts within context_entries_max, `seen`
within seen_entries_max, and counters no actor can have issued refused (`versions.check_claims`).
A merge may not grow a key past siblings_max, object_bytes_max or seen_entries_max (or past what
it holds already, when that is more): merging never makes a key bigger than a client could, and a
merge that shrinks an oversize key is always accepted.

What cannot be checked: a peer holding the cluster secret can forge a sibling whose context
covers any write it has seen, and the write is gone wherever the forgery lands. Nothing in a
record proves who made a dot. A replica can check only claims about its own actor (it knows
every counter it issued for the key) and plausibility; a complete defence would need dots signed
by their actor with a key per node.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from dynd.core import versions
from dynd.core.limits import Limits
from dynd.core.ops import WriteOp
from dynd.core.partition import partition_of
from dynd.core.versions_codec import decode_context, decode_object, decode_versions, encode_context, encode_object, parse_object
from dynd.protocol.buckets import check_key_shape
from dynd.protocol.codec import MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP, cbor_head, cbor_text, cbor_uint, loads_strict
from dynd.protocol.errors import BadFrame, BadRequest, KeyTooLarge, ObjectTooLarge, TooManySiblings, ValueTooLarge
from dynd.protocol.messages import ClockEntry, MetaEntry, SiblingView

DEFAULT_LIMITS = Limits()

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
    meta_ops: tuple[WriteOp, ...] = ()  # a new actor epoch, to commit with the write


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
            content_type=s.meta.content_type if s.meta is not None else None,
            usermeta=[MetaEntry(name, value) for name, value in s.meta.user] if s.meta is not None and s.meta.user else None,
            modified_ms=s.timestamp_ms if s.meta is not None else None,
        )
        for s in obj.siblings
        if s.value is not None
    ]


_VIEW_HEAD = cbor_head(MAJOR_MAP, 4) + cbor_text("value")
_VIEW_ACTOR = cbor_text("actor")
_VIEW_COUNTER = cbor_text("counter")
_VIEW_CLOCK = cbor_text("clock")
_CLOCK_ENTRY_HEAD = cbor_head(MAJOR_MAP, 2) + _VIEW_ACTOR
_VIEW_CONTENT_TYPE = cbor_text("content_type")
_VIEW_USERMETA = cbor_text("usermeta")
_VIEW_MODIFIED = cbor_text("modified_ms")
_META_ENTRY_HEAD = cbor_head(MAJOR_MAP, 2) + cbor_text("name")
_META_VALUE = cbor_text("value")


def _encode_views(obj: versions.SiblingSet) -> bytes:
    """cbor2.dumps(to_plain(sibling_views(obj))), written by hand: this runs on every write."""
    live = obj.live
    out = [cbor_head(MAJOR_ARRAY, len(live))]
    for s in live:
        assert s.value is not None
        vector = s.context.vector_entries()
        cloud = s.context.cloud_entries()
        meta = s.meta
        if meta is None:
            out.append(_VIEW_HEAD)
        else:  # the fields of SiblingView that are not None, in its order
            out += (cbor_head(MAJOR_MAP, 5 + (meta.content_type is not None) + bool(meta.user)), _VIEW_HEAD[1:])
        out += (
            cbor_head(MAJOR_BYTES, len(s.value)), s.value,
            _VIEW_ACTOR, cbor_text(s.dot.actor), _VIEW_COUNTER, cbor_uint(s.dot.counter),
            _VIEW_CLOCK, cbor_head(MAJOR_ARRAY, len(vector) + len(cloud)),
        )  # fmt: skip
        for actor, counter, _ in vector:
            out += (_CLOCK_ENTRY_HEAD, cbor_text(actor), _VIEW_COUNTER, cbor_uint(counter))
        for dot, _ in cloud:
            out += (_CLOCK_ENTRY_HEAD, cbor_text(dot.actor), _VIEW_COUNTER, cbor_uint(dot.counter))
        if meta is not None:
            if meta.content_type is not None:
                out += (_VIEW_CONTENT_TYPE, cbor_text(meta.content_type))
            if meta.user:
                out += (_VIEW_USERMETA, cbor_head(MAJOR_ARRAY, len(meta.user)))
                for name, value in meta.user:
                    out += (_META_ENTRY_HEAD, cbor_text(name), _META_VALUE, cbor_text(value))
            out += (_VIEW_MODIFIED, cbor_uint(s.timestamp_ms))
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
            encode_object(obj, values=False),
        )
    )


def encode_record(obj: versions.SiblingSet, prune_threshold: int) -> bytes:
    return _encode_record(obj, encode_context(obj.read_context(prune_threshold)))


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
    return decode_object(record[object_start:], (view["value"] for view in views))


def _decode_versions(record: bytes) -> versions.Versions:
    """The object's dots and `seen`, without its values: enough to see what a write supersedes,
    without decoding the siblings view that holds the values."""
    _, object_start, _ = _split_record(record)
    return decode_versions(record[object_start:])


def record_view(record: bytes) -> EncodedView:
    context_start, context_end, siblings_len = _split_record(record)
    siblings_start = _FORMAT_AND_LENGTH.size
    return EncodedView(record[siblings_start : siblings_start + siblings_len], record[context_start:context_end])


EMPTY_VIEW = EncodedView(cbor2.dumps([]), cbor2.dumps(encode_context(versions.EMPTY_CLOCK)))
_NO_LIVE_SIBLINGS = EMPTY_VIEW.siblings_cbor


def canonical_parts(record: bytes) -> tuple[memoryview, memoryview]:
    """The parts of a record that depend only on the sibling set it holds (views, no copies):
    what a Merkle leaf hashes (`merkle.leaf_hash`), so replicas holding equal sibling sets hash
    equal whatever node encoded them.

    The format byte, the siblings view and its length, and the versions are canonical encodings
    of the sibling set: siblings sorted by dot, clock entries sorted, shortest CBOR heads. The
    context token (and its length) is left out: it is the read context pruned to this node's
    `context_prune_threshold`, a per-node setting, and a record a replica receives for a key it
    lacks is stored as sent, so two replicas holding the same sibling set can hold different
    tokens. These are the bytes leaves have always hashed: trees stay comparable with peers.
    """
    context_start, context_end, _ = _split_record(record)
    view = memoryview(record)
    return view[: context_start - _LENGTH.size], view[context_end:]


def versions_digest(record: bytes) -> memoryview:
    """What a get's Fetch compares instead of the record (`dynd.core.requests`): the canonical part
    of the record without the values (each sibling's dot, timestamp, context and whether it is a
    tombstone, then `seen`; the tail of `canonical_parts`). One dot names one write (the rule
    `versions.merge` keeps one copy of a dot by), so equal versions mean equal sibling sets. Not
    hashed: a hash over the values cost more CPU than sending the values (measured on loopback),
    and these bytes are few; a copy whose values differed under one dot (a bug) still differs in
    its Merkle leaf, which hashes the values, so anti-entropy finds it."""
    return canonical_parts(record)[1]


def has_live_value(record: bytes) -> bool:
    """Whether some sibling of the record holds a value (not every one a tombstone), from its
    siblings view alone."""
    _, _, siblings_len = _split_record(record)
    siblings_start = _FORMAT_AND_LENGTH.size
    return siblings_len != len(_NO_LIVE_SIBLINGS) or record[siblings_start : siblings_start + siblings_len] != _NO_LIVE_SIBLINGS


def deleted_at_ms(record: bytes) -> int | None:
    """When the newest sibling was written (the coordinator's wall clock), if every sibling is a
    tombstone; None while a value is live, or when the record holds no sibling at all. A record
    with a live value answers without its object being decoded."""
    _, _, siblings_len = _split_record(record)
    siblings_start = _FORMAT_AND_LENGTH.size
    if siblings_len != len(_NO_LIVE_SIBLINGS) or record[siblings_start : siblings_start + siblings_len] != _NO_LIVE_SIBLINGS:
        return None
    return max((s.timestamp_ms for s in decode_record(record).siblings), default=None)


class LocalReplica:
    """Versions writes for one node. It remembers the last `versions_cache_entries` objects it
    wrote and context tokens it handed out, decoded: the usual next write of a key comes with the
    token of the previous one and finds that object still stored, and decoding both was the
    larger part of versioning it. A remembered object is used only while the stored bytes are
    exactly the bytes it was encoded to. Only records up to `versions_cache_record_bytes_max`
    are remembered, which bounds the memory at about entries x that size."""

    def __init__(self, actor: str, limits: Limits, partitions: int, renew_actor: Callable[[], list[WriteOp]] | None = None) -> None:
        """`renew_actor`: gives this replica a new actor epoch (it sets `actor`) and returns the
        ops that persist it; a write whose actor has issued its last counter for the key takes
        one (`versions.EPOCH_COUNTER_MAX`). Without it such a write is refused."""
        self.actor = actor
        self.limits = limits
        self.partitions = partitions
        self.renew_actor = renew_actor
        # Oldest first. OrderedDicts, not dicts: a dict's oldest entry is found by scanning past
        # the slots its earlier evictions emptied, which grows with the cache until the dict is
        # rebuilt (1.5 us an eviction at 4,096 entries, where popitem(last=False) takes 0.2).
        self._objects: OrderedDict[tuple[int, bytes], tuple[bytes, versions.SiblingSet]] = OrderedDict()
        self._contexts: OrderedDict[bytes, versions.Clock] = OrderedDict()

    def partition(self, key: bytes) -> int:
        return partition_of(key, self.partitions)

    def check_key(self, key: bytes) -> None:
        if not key:
            raise BadRequest("the key is empty")
        if len(key) > self.limits.key_bytes_max:
            raise KeyTooLarge(f"key of {len(key)} bytes exceeds key_bytes_max={self.limits.key_bytes_max}")
        if key[0] == 0:  # the bucket mark: only a well-formed bucket key may start with it
            check_key_shape(key)

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, item: Any) -> None:
        cache.pop(key, None)
        cache[key] = item
        if len(cache) > self.limits.versions_cache_entries:
            cache.popitem(last=False)  # the oldest

    def read(self, record: bytes | None) -> EncodedView:
        return EMPTY_VIEW if record is None else record_view(record)

    def write(
        self,
        key: bytes,
        value: bytes | None,
        context_token: bytes | None,
        record: bytes | None,
        now_ms: int,
        partition: int | None = None,
        meta: versions.SiblingMeta | None = None,
    ) -> WritePlan:
        """Version a put (or, with value None, a delete) against what is stored; raise if refused.
        `partition`: the key's, when the caller has it already (an MD5 per put saved); `meta`:
        the value's metadata (within meta_bytes_max)."""
        self.check_key(key)
        if value is not None and len(value) > self.limits.value_bytes_max:
            raise ValueTooLarge(f"value of {len(value)} bytes exceeds value_bytes_max={self.limits.value_bytes_max}")
        if meta is not None and meta.encoded_bytes > self.limits.meta_bytes_max:
            raise BadRequest(f"metadata of {meta.encoded_bytes} bytes exceeds meta_bytes_max={self.limits.meta_bytes_max}")
        if partition is None:
            partition = self.partition(key)
        context = self._contexts.get(context_token) if context_token is not None else None
        if context is None:
            context = decode_context(
                context_token, entries_max=self.limits.context_entries_max, actor_bytes_max=self.limits.actor_bytes_max
            )
        current: versions.SiblingSet | versions.Versions = versions.EMPTY
        if record is not None:
            remembered = self._objects.get((partition, key))
            if remembered is not None and remembered[0] == record:
                current = remembered[1]
            else:
                current = _decode_versions(record)
                if not current.covered_by(context):
                    current = decode_record(record)  # some stored values survive this write: read them
        meta_ops: tuple[WriteOp, ...] = ()
        if self.renew_actor is not None and current.max_counter(self.actor) >= versions.EPOCH_COUNTER_MAX:
            # Exhausted, however it got there: a new epoch starts at counter 1, and the write goes on.
            meta_ops = tuple(self.renew_actor())
        outcome = versions.put(
            current,
            context,
            value,
            self.actor,
            now_ms,
            prune_threshold=self.limits.context_prune_threshold,
            siblings_max=self.limits.siblings_max,
            object_bytes_max=self.limits.object_bytes_max,
            meta=meta,
        )
        read_context = outcome.object.read_context(self.limits.context_prune_threshold)
        read_token = encode_context(read_context)
        # Usually the writer's new context is exactly what a read would now return: encode it once,
        # and remember that clock (its encoding kept) for the next write made with the token.
        client_context = outcome.client_context
        if client_context == read_context:
            reply_token, client_context = read_token, read_context
        else:
            reply_token = encode_context(client_context)
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
            meta_ops=meta_ops,
        )


def decode_peer_record(
    record: bytes,
    limits: Limits = DEFAULT_LIMITS,
    *,
    actor: str | None = None,
    reference: Callable[[], versions.SiblingSet] = lambda: versions.EMPTY,
    as_sent: bool = True,
) -> versions.SiblingSet:
    """Decode a record another node sent, refusing anything a client's write could not have made
    (see the module docstring); nothing is changed by a refusal. `actor`: this node's actor, and
    `reference`: what this node holds for the key, to refuse counters of `actor` it never issued
    (versions.UnissuedCounter) and implausible counters (versions.check_claims). A record with as
    many siblings, bytes of values or `seen` entries as the reference is no bigger than what this
    node holds: over siblings_max, object_bytes_max or seen_entries_max, it is accepted (as a merge
    that does not grow the key is), so a key stored before a limit was lowered stays readable.

    The versions must be canonically encoded. `as_sent`: the record may be stored as sent (the
    key is new here), so its read view must be what this node would write for the same object:
    the siblings view is compared with its encoding, and the context must be a read context of
    the object (covering every sibling's dot, and covered by `seen` and the dots) within
    context_entries_max. (A merge re-encodes the view from the versions and values.)
    """
    what = "malformed record"
    try:
        context_start, context_end, siblings_len = _split_record(record)
    except (struct.error, ValueError) as exc:
        raise BadRequest(f"{what}: {exc}") from None
    if context_end > len(record):
        raise BadRequest(f"{what}: its parts overrun it")
    siblings_start = _FORMAT_AND_LENGTH.size
    views_cbor = record[siblings_start : siblings_start + siblings_len]
    try:
        views = loads_strict(views_cbor)
    except BadFrame as exc:
        raise BadRequest(f"{what}: {exc.message}") from None
    if type(views) is not list:
        raise BadRequest(f"{what}: not a record")
    if len(views) > limits.siblings_max and len(views) > len(reference().siblings):
        raise TooManySiblings(f"the record holds {len(views)} live siblings (siblings_max={limits.siblings_max})")
    values: list[bytes] = []
    total = 0
    for view in views:
        value = view.get("value") if type(view) is dict else None
        if type(value) is not bytes:
            raise BadRequest(f"{what}: a sibling view without a value")
        if len(value) > limits.value_bytes_max:
            raise ValueTooLarge(f"the record holds a value of {len(value)} bytes (value_bytes_max={limits.value_bytes_max})")
        total += len(value)
        values.append(value)
    if total > limits.object_bytes_max and total > reference().value_bytes:
        raise ObjectTooLarge(f"the record holds {total} bytes of values (object_bytes_max={limits.object_bytes_max})")
    versions_cbor = record[context_end:]
    obj = parse_object(versions_cbor, values, limits, reference)
    if encode_object(obj, values=False) != versions_cbor:
        raise BadRequest(f"{what}: its versions are not encoded as this node would encode them")
    versions.check_claims(obj.highest(), reference, actor)
    if as_sent:
        if _encode_views(obj) != views_cbor:
            raise BadRequest(f"{what}: its siblings view does not match its versions")
        try:
            token = loads_strict(record[context_start:context_end])  # a byte string holding the token
        except BadFrame as exc:
            raise BadRequest(f"{what}: {exc.message}") from None
        if type(token) is not bytes:
            raise BadRequest(f"{what}: its context is not a token")
        context = decode_context(token, entries_max=limits.context_entries_max, actor_bytes_max=limits.actor_bytes_max)
        if not all(context.covers(s.dot) for s in obj.siblings) or not obj.full_read_context().descends(context):
            raise BadRequest(f"{what}: its context is not a read context of its siblings")
    return obj


def check_growth(merged: versions.SiblingSet, current: versions.SiblingSet, limits: Limits) -> None:
    """Refuse a merge that would leave the key over a limit a client's write must respect, unless
    it holds more than that already and the merge does not grow it further (an oversize key can
    always be collapsed)."""
    if len(merged.siblings) > max(limits.siblings_max, len(current.siblings)):
        raise TooManySiblings(
            f"the merge would leave {len(merged.siblings)} siblings (siblings_max={limits.siblings_max}); "
            "read the key and write with its context to resolve them"
        )
    if merged.value_bytes > max(limits.object_bytes_max, current.value_bytes):
        raise ObjectTooLarge(
            f"the merge would hold {merged.value_bytes} bytes of values (object_bytes_max={limits.object_bytes_max}); "
            "read the key and write with its context to replace its siblings"
        )
    if len(merged.seen) > max(limits.seen_entries_max, len(current.seen)):
        raise BadRequest(f"the merge would leave {len(merged.seen)} entries in seen (seen_entries_max={limits.seen_entries_max})")


def merge_records(
    stored: bytes | None, incoming: bytes, prune_threshold: int, *, limits: Limits = DEFAULT_LIMITS, actor: str | None = None
) -> bytes | None:
    """The record to store after merging `incoming` (from another replica) into `stored`, or None
    when `stored` already holds everything `incoming` does. `incoming` is checked as
    `decode_peer_record` does, `actor` being this node's, and the merge as `check_growth` does;
    a refusal raises (a DynError) and `stored` stays as it is."""
    if stored is not None and stored == incoming:
        return None
    current: versions.SiblingSet | None = None

    def held() -> versions.SiblingSet:
        nonlocal current
        if current is None:
            current = versions.EMPTY if stored is None else decode_record(stored)
        return current

    arriving = decode_peer_record(incoming, limits, actor=actor, reference=held, as_sent=stored is None)
    if stored is None:
        return incoming if arriving.siblings or len(arriving.seen) else None
    merged = versions.merge(held(), arriving)
    if merged == held():
        return None
    check_growth(merged, held(), limits)
    return encode_record(merged, prune_threshold)
