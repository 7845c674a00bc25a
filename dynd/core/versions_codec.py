"""The encodings of versions: context tokens for clients, objects for records (DESIGN.md section 2).

- A context token is [CONTEXT_FORMAT, vector, cloud], opaque to clients. A client's token is read
  head by head within `context_entries_max` and `actor_bytes_max` (`decode_context`), never handed
  whole to a general CBOR decoder.
- An object is [OBJECT_FORMAT, [[actor, counter, timestamp_ms, value, vector, cloud], ...], seen
  vector, seen cloud]. A record (`dynd.core.replica`, whose format it is) stores its live values
  once, in its siblings view, and an object whose live values are each `true`, filled in from
  that view when decoded (`decode_object`). A record from another node is decoded strictly and
  checked against the limits of a client's write (`parse_object`).
- A clock in either is `Clock.encoded()`: two arrays of [actor, counter, timestamp_ms] entries.
- A sibling with metadata (`versions.SiblingMeta`) has a seventh item, [content_type or null,
  [[name, value], ...]]; one without has six, as every sibling had before metadata existed, so
  stored objects and records from older nodes read as they always did, and objects without
  metadata encode to the same bytes (Merkle leaves and digests stay comparable across versions).

Written with the hand-rolled CBOR pieces of `dynd.protocol.codec` (bytes identical to cbor2's for
the same plain lists): these run several times on every put.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

import cbor2

from dynd.core.limits import Limits
from dynd.core.versions import (
    COUNTER_MAX,
    EMPTY,
    EMPTY_CLOCK,
    Clock,
    Dot,
    Sibling,
    SiblingMeta,
    SiblingSet,
    Versions,
    clock_from_entries,
)
from dynd.protocol.codec import (
    CBOR_NULL,
    CBOR_TRUE,
    INT_MAX,
    MAJOR_ARRAY,
    MAJOR_BYTES,
    MAJOR_TEXT,
    MAJOR_UINT,
    cbor_head,
    cbor_text,
    cbor_uint,
    loads_strict,
)
from dynd.protocol.errors import BadFrame, BadRequest, TooManySiblings

CONTEXT_FORMAT = 1
OBJECT_FORMAT = 1

_CONTEXT_HEAD = cbor_head(MAJOR_ARRAY, 3) + cbor_uint(CONTEXT_FORMAT)
_OBJECT_HEAD = cbor_head(MAJOR_ARRAY, 4) + cbor_uint(OBJECT_FORMAT)
_SIBLING_HEAD = cbor_head(MAJOR_ARRAY, 6)
_SIBLING_WITH_META_HEAD = cbor_head(MAJOR_ARRAY, 7)


# ---- context tokens ----


def encode_context(clock: Clock) -> bytes:
    """The opaque context token handed to clients: [CONTEXT_FORMAT, vector, cloud]."""
    return _CONTEXT_HEAD + clock.encoded()


# A context entry is at most an array head, a text head (5 bytes at most), the actor, and two
# 64-bit unsigned integers; a token adds its own array head, the format and two array heads.
_ENTRY_BYTES_OVER_ACTOR = 1 + 5 + 9 + 9
_TOKEN_BYTES_OVER_ENTRIES = 32


def context_token_bytes_max(entries_max: int, actor_bytes_max: int) -> int:
    """The longest token of at most `entries_max` entries: anything longer is refused unread."""
    return _TOKEN_BYTES_OVER_ENTRIES + entries_max * (actor_bytes_max + _ENTRY_BYTES_OVER_ACTOR)


def decode_context(token: bytes | None, *, entries_max: int, actor_bytes_max: int) -> Clock:
    """Parse a client's context token, refusing anything malformed or over the limits.

    The work is bounded before it starts: a token longer than `entries_max` entries of
    `actor_bytes_max` can need is refused by its length alone, and each array's head is checked
    against the entries left before any of its items is read. The token is read head by head
    (the fixed shape [CONTEXT_FORMAT, vector, cloud] of [actor, counter, timestamp_ms] entries,
    definite lengths only), never handed whole to a general CBOR decoder.
    """
    if token is None:
        return EMPTY_CLOCK
    if not token:
        raise BadRequest("invalid context: the token is empty (omit it to write without a context)")
    bytes_max = context_token_bytes_max(entries_max, actor_bytes_max)
    if len(token) > bytes_max:
        raise BadRequest(f"invalid context: {len(token)} bytes is more than {entries_max} entries (context_entries_max) can take ({bytes_max})")
    major, length, at = _head(token, 0)
    if major != MAJOR_ARRAY or length != 3:
        raise BadRequest("invalid context: not a context token")
    major, fmt, at = _head(token, at)
    if major != MAJOR_UINT or fmt != CONTEXT_FORMAT:
        raise BadRequest("invalid context: not a context token")
    vector, at = _read_entries(token, at, entries_max, actor_bytes_max, unique_actors=True)
    cloud, at = _read_entries(token, at, entries_max - len(vector), actor_bytes_max, unique_actors=False)
    if at != len(token):
        raise BadRequest(f"invalid context: {len(token) - at} trailing bytes")
    return clock_from_entries(vector, cloud)


def _head(data: bytes, at: int) -> tuple[int, int, int]:
    """(major type, argument, position after) of the CBOR head at `at`; definite lengths only."""
    if at >= len(data):
        raise BadRequest("invalid context: the token is truncated")
    initial = data[at]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, at + 1
    if info > 27:
        raise BadRequest("invalid context: indefinite lengths and reserved heads are not accepted")
    end = at + 1 + (1 << (info - 24))
    if end > len(data):
        raise BadRequest("invalid context: the token is truncated")
    return major, int.from_bytes(data[at + 1 : end], "big"), end


def _read_entries(
    data: bytes, at: int, entries_left: int, actor_bytes_max: int, unique_actors: bool
) -> tuple[list[tuple[str, int, int]], int]:
    major, count, at = _head(data, at)
    if major != MAJOR_ARRAY:
        raise BadRequest("invalid context: not a context token")
    if count > entries_left:
        raise BadRequest(f"invalid context: more entries than context_entries_max allows ({count} in one list, {entries_left} left)")
    entries: list[tuple[str, int, int]] = []
    append = entries.append
    try:
        for _ in range(count):
            # [actor, counter, timestamp_ms]: the usual short heads read inline, the rest by _head
            if data[at] != 0x83:
                raise BadRequest("invalid context: each entry must be [actor, counter, timestamp_ms]")
            initial = data[at + 1]
            if 0x61 <= initial <= 0x77:
                length, at = initial - 0x60, at + 2
            else:
                major, length, at = _head(data, at + 1)
                if major != MAJOR_TEXT or not length:
                    raise BadRequest(f"invalid context: actor names must be text of 1..{actor_bytes_max} bytes")
            if length > actor_bytes_max or at + length > len(data):
                raise BadRequest(f"invalid context: actor names must be text of 1..{actor_bytes_max} bytes")
            actor = data[at : at + length].decode()
            at += length
            counter = data[at]
            if counter < 24:
                at += 1
            else:
                major, counter, at = _head(data, at)
                if major != MAJOR_UINT:
                    raise BadRequest("invalid context: each entry must be [actor, counter, timestamp_ms]")
            if data[at] == 0x1B:  # a timestamp in milliseconds takes eight bytes
                timestamp_ms, at = _U64.unpack_from(data, at + 1)[0], at + 9
            else:
                major, timestamp_ms, at = _head(data, at)
                if major != MAJOR_UINT:
                    raise BadRequest("invalid context: each entry must be [actor, counter, timestamp_ms]")
            if not 0 < counter < COUNTER_MAX or timestamp_ms > INT_MAX:
                raise BadRequest(f"invalid context: counters must be in 1..{COUNTER_MAX - 1}")
            append((actor, counter, timestamp_ms))
    except (IndexError, struct.error):
        raise BadRequest("invalid context: the token is truncated") from None
    except UnicodeDecodeError:
        raise BadRequest("invalid context: an actor name is not UTF-8") from None
    distinct = len({actor for actor, _, _ in entries}) if unique_actors else len({(actor, counter) for actor, counter, _ in entries})
    if distinct != len(entries):
        raise BadRequest("invalid context: an entry appears twice")
    return entries, at


_U64 = struct.Struct(">Q")


def _parse_entries(raw: Any, actor_bytes_max: int, unique_actors: bool = True, what: str = "invalid context") -> list[tuple[str, int, int]]:
    """Entries decoded by a general CBOR decoder: checked for shape, then as `_check_entries`."""
    if type(raw) is not list:
        raise BadRequest(f"{what}: a clock must be a list of [actor, counter, timestamp_ms] entries")
    if not raw:
        return raw
    for entry in raw:
        if (
            type(entry) is not list
            or len(entry) != 3
            or type(entry[0]) is not str
            or type(entry[1]) is not int
            or type(entry[2]) is not int
        ):
            raise BadRequest(f"{what}: each entry must be [actor, counter, timestamp_ms]")
    return _check_entries(raw, actor_bytes_max, unique_actors, what)


def _check_entries(entries: Any, actor_bytes_max: int, unique_actors: bool, what: str) -> list[tuple[str, int, int]]:
    parsed: list[tuple[str, int, int]] = []
    seen: set[Any] = set()
    for actor, counter, timestamp_ms in entries:
        if not actor or len(actor.encode()) > actor_bytes_max:
            raise BadRequest(f"{what}: actor names must be 1..{actor_bytes_max} bytes")
        if not 0 < counter < COUNTER_MAX or not 0 <= timestamp_ms <= INT_MAX:
            raise BadRequest(f"{what}: counters must be in 1..{COUNTER_MAX - 1}")
        identity = actor if unique_actors else (actor, counter)
        if identity in seen:
            raise BadRequest(f"{what}: entry for {actor!r} appears twice")
        seen.add(identity)
        parsed.append((actor, counter, timestamp_ms))
    return parsed


# ---- objects ----


def parse_object(data: bytes, live_values: list[bytes], limits: Limits, held: Callable[[], SiblingSet] = lambda: EMPTY) -> SiblingSet:
    """Decode the versions part of a record from another node (encode_object(values=False)),
    with `live_values` from its siblings view, refusing what a client's write could not make:
    malformed items, more siblings than siblings_max, a sibling context of more than
    context_entries_max entries, a `seen` of more than seen_entries_max, actor names over
    actor_bytes_max, counters out of range, siblings out of order or repeated, a sibling `seen`
    already supersedes, a sibling context `seen` does not cover. Values are checked by the caller,
    canonical encoding too. `held`: what this replica holds for the key (asked only when a count
    is over its limit); as many siblings or entries as it holds are no more than it has already
    (a key from before the limit was lowered still travels).
    """
    what = "malformed record"
    try:
        item = loads_strict(data)
    except BadFrame as exc:
        raise BadRequest(f"{what}: {exc.message}") from None
    if type(item) is not list or len(item) != 4 or item[0] != OBJECT_FORMAT or type(item[1]) is not list:
        raise BadRequest(f"{what}: not an object")
    _, raw_siblings, seen_vector, seen_cloud = item
    if len(raw_siblings) > limits.siblings_max and len(raw_siblings) > len(held().siblings):
        raise TooManySiblings(f"the record holds {len(raw_siblings)} siblings (siblings_max={limits.siblings_max})")
    if type(seen_vector) is not list or type(seen_cloud) is not list:
        raise BadRequest(f"{what}: not an object")
    if len(seen_vector) + len(seen_cloud) > limits.seen_entries_max and len(seen_vector) + len(seen_cloud) > len(held().seen):
        raise BadRequest(f"{what}: its seen holds {len(seen_vector) + len(seen_cloud)} entries (seen_entries_max={limits.seen_entries_max})")
    actor_bytes_max = limits.actor_bytes_max
    seen = clock_from_entries(
        _parse_entries(seen_vector, actor_bytes_max, True, what), _parse_entries(seen_cloud, actor_bytes_max, False, what)
    )
    supply = iter(live_values)
    siblings: list[Sibling] = []
    for raw in raw_siblings:
        if type(raw) is not list or len(raw) not in (6, 7):
            raise BadRequest(f"{what}: each sibling must be [actor, counter, timestamp_ms, value, vector, cloud(, meta)]")
        actor, counter, timestamp_ms, value, vector, cloud = raw[:6]
        meta = parse_meta(raw[6], limits.meta_bytes_max, what) if len(raw) == 7 else None
        if meta is not None and value is None:
            raise BadRequest(f"{what}: a tombstone carries no metadata")
        if type(actor) is not str or type(counter) is not int or type(timestamp_ms) is not int:
            raise BadRequest(f"{what}: each sibling must be [actor, counter, timestamp_ms, value, vector, cloud]")
        _check_entries(((actor, counter, timestamp_ms),), actor_bytes_max, True, what)
        if type(vector) is not list or type(cloud) is not list:
            raise BadRequest(f"{what}: a sibling's context must be two lists")
        if len(vector) + len(cloud) > limits.context_entries_max:
            raise BadRequest(f"{what}: a sibling's context holds {len(vector) + len(cloud)} entries (context_entries_max={limits.context_entries_max})")
        if value is True:
            value = next(supply, None)
            if value is None:
                raise BadRequest(f"{what}: more live siblings than values")
        elif value is not None:
            raise BadRequest(f"{what}: a sibling's value must be a placeholder or a tombstone")
        context = clock_from_entries(_parse_entries(vector, actor_bytes_max, True, what), _parse_entries(cloud, actor_bytes_max, False, what))
        sibling = Sibling(Dot(actor, counter), context, value, timestamp_ms, meta)
        if siblings and not siblings[-1].dot < sibling.dot:
            raise BadRequest(f"{what}: siblings must be sorted by dot, each dot once")
        if seen.covers(sibling.dot):
            raise BadRequest(f"{what}: its seen supersedes its own sibling {sibling.dot}")
        if context and not seen.descends(context):
            raise BadRequest(f"{what}: a sibling's context is not within the object's seen")
        siblings.append(sibling)
    if next(supply, None) is not None:
        raise BadRequest(f"{what}: more values than live siblings")
    return SiblingSet(tuple(siblings), seen)


def encode_meta(meta: SiblingMeta) -> bytes:
    """[content_type or null, [[name, value], ...]]: a sibling's seventh item."""
    out = [cbor_head(MAJOR_ARRAY, 2), CBOR_NULL if meta.content_type is None else cbor_text(meta.content_type)]
    out.append(cbor_head(MAJOR_ARRAY, len(meta.user)))
    for name, value in meta.user:
        out += (cbor_head(MAJOR_ARRAY, 2), cbor_text(name), cbor_text(value))
    return b"".join(out)


def parse_meta(raw: Any, meta_bytes_max: int, what: str) -> SiblingMeta:
    """A sibling's metadata as decoded by a general CBOR decoder, checked: its shape, its size
    within `meta_bytes_max`, and its canonical form (names lowercase, sorted, unique; not empty)."""
    if type(raw) is not list or len(raw) != 2 or not (raw[0] is None or type(raw[0]) is str) or type(raw[1]) is not list:
        raise BadRequest(f"{what}: a sibling's metadata must be [content_type or null, [[name, value], ...]]")
    pairs: list[tuple[str, str]] = []
    for pair in raw[1]:
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str or type(pair[1]) is not str or not pair[0]:
            raise BadRequest(f"{what}: each metadata entry must be [name, value], both text")
        pairs.append((pair[0], pair[1]))
    meta = SiblingMeta(raw[0], tuple(pairs))
    if meta.encoded_bytes > meta_bytes_max:
        raise BadRequest(f"{what}: a sibling's metadata holds {meta.encoded_bytes} bytes (meta_bytes_max={meta_bytes_max})")
    names = [name for name, _ in pairs]
    if names != sorted(set(names)) or any(name != name.lower() for name in names) or (raw[0] in (None, "") and not pairs):
        raise BadRequest(f"{what}: a sibling's metadata is not in its canonical form")
    return meta


def encode_object(obj: SiblingSet, *, values: bool = True) -> bytes:
    """The object as CBOR: [OBJECT_FORMAT, [[actor, counter, timestamp_ms, value, vector, cloud],
    ...], seen vector, seen cloud]; a sibling with metadata has it as a seventh item. With
    values=False each live value is replaced by True (a tombstone stays None), for a caller that
    keeps the live values elsewhere, in sibling order."""
    out = [_OBJECT_HEAD, cbor_head(MAJOR_ARRAY, len(obj.siblings))]
    for s in obj.siblings:
        head = _SIBLING_HEAD if s.meta is None else _SIBLING_WITH_META_HEAD
        out += (head, cbor_text(s.dot.actor), cbor_uint(s.dot.counter), cbor_uint(s.timestamp_ms))
        if s.value is None:
            out.append(CBOR_NULL)
        elif values:
            out += (cbor_head(MAJOR_BYTES, len(s.value)), s.value)
        else:
            out.append(CBOR_TRUE)
        out.append(s.context.encoded())
        if s.meta is not None:
            out.append(encode_meta(s.meta))
    out.append(obj.seen.encoded())
    return b"".join(out)


def _stored_meta(raw: list[Any]) -> SiblingMeta | None:
    """The metadata of a stored sibling (written by us: no checks), None for six items."""
    if len(raw) < 7:
        return None
    content_type, user = raw[6]
    return SiblingMeta(content_type, tuple((name, value) for name, value in user))


def decode_object(data: bytes, live_values: Iterable[bytes] = ()) -> SiblingSet:
    """Decode a stored object. An object encoded with values=False takes its live values, in
    sibling order, from `live_values` (a record keeps them in its siblings view).

    Stored bytes were written by us, so a failure here means corruption (ValueError), as does a
    live sibling left without a value or a value left over.
    """
    fmt, raw_siblings, seen_vector, seen_cloud = cbor2.loads(data)
    if fmt != OBJECT_FORMAT:
        raise ValueError(f"unknown stored object format {fmt!r}")
    supply = iter(live_values)
    siblings = []
    for raw in raw_siblings:
        actor, counter, ts, value, vector, cloud = raw[:6]
        if value is True:
            value = next(supply, None)
            if value is None:
                raise ValueError("a stored object has more live siblings than values")
        siblings.append(Sibling(Dot(actor, counter), clock_from_entries(vector, cloud), value, ts, _stored_meta(raw)))
    if next(supply, None) is not None:
        raise ValueError("a stored object has more values than live siblings")
    return SiblingSet(tuple(siblings), clock_from_entries(seen_vector, seen_cloud))


def decode_versions(data: bytes) -> Versions:
    """The dots and `seen` of a stored object, without its values or its siblings' contexts:
    enough to version a write that supersedes every sibling (`versions.put`)."""
    fmt, raw_siblings, seen_vector, seen_cloud = cbor2.loads(data)
    if fmt != OBJECT_FORMAT:
        raise ValueError(f"unknown stored object format {fmt!r}")
    return Versions(
        tuple(Dot(raw[0], raw[1]) for raw in raw_siblings),
        clock_from_entries(seen_vector, seen_cloud),
        max((raw[2] for raw in raw_siblings), default=0),
    )
