"""Sibling sets versioned with dotted version vectors (DESIGN.md section 2).

Rules, in the order they apply:
- A *dot* (actor, counter) names one write. A *clock* is a causal context: a version vector
  (actor -> counter, covering every dot of that actor up to the counter) plus a *cloud* of single
  dots beyond the vector. A clock covers a dot when its vector reaches it or its cloud holds it.
  Joins fold cloud dots into the vector as soon as they are contiguous with it.
- A stored object is a set of siblings. Each sibling has its dot, the context the client wrote it
  against, a value (None for a tombstone) and the coordinator's timestamp. The object also keeps
  `seen`: the join of the contexts of every write it has absorbed, kept after the siblings those
  writes removed are gone. A sibling whose dot `seen` covers is obsolete and is dropped.
  (DESIGN.md says "covered by another sibling's context"; `seen` is that rule made to survive the
  removal and pruning of sibling contexts, and it keeps merge a lattice join.)
- put(context C, via actor X): the new dot is (X, k), k one above every counter of X this replica
  has seen for the key, in dots and `seen`; a C claiming more of X is forged and refused. `seen` absorbs C, so every sibling C covers
  goes; the rest stay beside the new one. Two writes with the same stale context through the same
  actor get different dots and neither covers the other, so both survive.
- The client gets back C plus the new dot, exactly: the new dot goes to the cloud when the vector
  cannot take it without covering a concurrent write the client never saw.
- merge(A, B): union of siblings by dot, join of `seen`, minus obsolete siblings. Commutative,
  associative and idempotent, so replicas converge whatever the order of exchanges.
- read: the live values and `seen` joined with every sibling's dot (tombstones included), so a put
  with that context supersedes everything that was read.
- Pruning: the contexts handed to clients and kept on siblings hold at most `prune_threshold`
  entries (vector entries and cloud dots), dropping the oldest by timestamp and keeping the dots of
  live siblings and the writer's own entry. A weaker client context can only leave a false sibling,
  never drop a write. `seen` itself is never pruned: it is what guarantees an actor never reuses a
  counter for a key, and it holds one entry per actor that ever wrote the key.

Counters: an actor issues 1, 2, 3, ... for a key, one per write it coordinates, so no honest
actor epoch reaches `EPOCH_COUNTER_MAX` (2^48 writes to one key). A coordinator whose next counter
would pass it takes a new epoch instead (`dynd.core.replica`), so even a key whose counter was
pushed to the end of its range stays writable; a counter above it that the replica does not hold
already is refused wherever it comes from. `COUNTER_MAX` is the encoding's bound.

Records from other nodes (`parse_object`, `check_claims`) meet the limits of a client's write and
must be canonically encoded; see `dynd.core.replica.decode_peer_record`.

Timestamps ride along for pruning only; comparing versions never looks at time.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import cbor2

from dynd.core.limits import Limits
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
from dynd.protocol.errors import BadFrame, BadRequest, ObjectTooLarge, TooManySiblings, ValueTooLarge

CONTEXT_FORMAT = 1
OBJECT_FORMAT = 1
# Counters stay far below the wire's 2^63 limit, so a forged context can never push a dot past it.
COUNTER_MAX = 2**62
# The most counters one actor epoch issues for one key (2^48 writes: 9 years at a million a
# second); the next write takes a new epoch. A higher counter no replica holds yet is implausible.
EPOCH_COUNTER_MAX = 2**48


class EpochExhausted(BadRequest):
    """The actor has issued EPOCH_COUNTER_MAX counters for this key: the write needs a new epoch."""


class Dot(NamedTuple):
    """One write's name. A named tuple: dots are hashed and sorted on every merge."""

    actor: str
    counter: int


class Clock:
    """An immutable causal context: a version vector plus a cloud of dots beyond it.

    Each vector entry and cloud dot carries the timestamp of its write, used only for pruning.
    """

    __slots__ = ("_vector", "_cloud", "_hash", "_cbor")

    def __init__(
        self,
        vector: dict[str, tuple[int, int]] | None = None,
        cloud: dict[Dot, int] | None = None,
    ) -> None:
        self._vector: dict[str, tuple[int, int]] = dict(vector) if vector else {}
        self._cloud: dict[Dot, int] = {}
        self._hash: int | None = None
        self._cbor: bytes | None = None  # its encoding, kept: one clock is often encoded several times
        if cloud:
            self._absorb_cloud(cloud)

    @classmethod
    def _of(cls, vector: dict[str, tuple[int, int]]) -> Clock:
        """A clock with no cloud that takes ownership of `vector`: no copy, nothing to fold."""
        clock = cls.__new__(cls)
        clock._vector = vector
        clock._cloud = {}
        clock._hash = None
        clock._cbor = None
        return clock

    def _absorb_cloud(self, cloud: dict[Dot, int]) -> None:
        """Add cloud dots, folding every run contiguous with the vector into it."""
        vector = self._vector
        pending = dict(self._cloud)
        for dot, ts in cloud.items():
            if dot not in pending or ts > pending[dot]:
                pending[dot] = ts
        for dot in sorted(pending):
            held = vector.get(dot.actor)
            top = held[0] if held else 0
            if dot.counter <= top:
                continue
            if dot.counter == top + 1:
                vector[dot.actor] = (dot.counter, pending[dot])
            else:
                self._cloud[dot] = pending[dot]
        self._cloud = {d: t for d, t in self._cloud.items() if d.counter > self._vector.get(d.actor, (0, 0))[0]}

    # ---- queries ----

    def covers(self, dot: Dot) -> bool:
        held = self._vector.get(dot.actor)
        return (held is not None and held[0] >= dot.counter) or dot in self._cloud

    def counter(self, actor: str) -> int:
        """The highest counter of `actor` this clock mentions, in the vector or the cloud."""
        held = self._vector.get(actor)
        top = held[0] if held else 0
        for dot in self._cloud:
            if dot.actor == actor and dot.counter > top:
                top = dot.counter
        return top

    def highest(self) -> dict[str, int]:
        """actor -> the highest counter this clock mentions for it."""
        tops = {actor: counter for actor, (counter, _) in self._vector.items()}
        for dot in self._cloud:
            if dot.counter > tops.get(dot.actor, 0):
                tops[dot.actor] = dot.counter
        return tops

    def max_counter(self) -> int:
        """The highest counter of any actor in this clock (0 when empty)."""
        top = max((counter for counter, _ in self._vector.values()), default=0)
        return max(top, max((dot.counter for dot in self._cloud), default=0))

    def descends(self, other: Clock) -> bool:
        """Whether this clock covers every dot `other` covers (clouds never hold a whole range)."""
        for actor, (counter, _) in other._vector.items():
            held = self._vector.get(actor)
            if held is None or held[0] < counter:
                return False
        return all(self.covers(dot) for dot in other._cloud)

    def __len__(self) -> int:
        return len(self._vector) + len(self._cloud)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Clock):
            return self._vector == other._vector and self._cloud == other._cloud
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash((frozenset(self._vector.items()), frozenset(self._cloud.items())))
        return self._hash

    def __repr__(self) -> str:
        parts = [f"{a}:{c}" for a, c, _ in self.vector_entries()]
        parts += [f"+{d.actor}:{d.counter}" for d, _ in self.cloud_entries()]
        return f"Clock({', '.join(parts)})"

    def vector_entries(self) -> list[tuple[str, int, int]]:
        """(actor, counter, timestamp_ms), sorted by actor."""
        return [(actor, *self._vector[actor]) for actor in sorted(self._vector)]

    def cloud_entries(self) -> list[tuple[Dot, int]]:
        return sorted(self._cloud.items())

    # ---- constructions ----

    def join(self, other: Clock) -> Clock:
        if not len(other):
            return self
        if not len(self):
            return other
        if not self._cloud and not other._cloud:
            # Often one side already holds every entry of the other (a write made with the latest
            # context): then the join is that side itself, entry for entry, timestamps included.
            if _vector_dominates(other._vector, self._vector):
                return other
            if _vector_dominates(self._vector, other._vector):
                return self
        vector = dict(self._vector)
        for actor, entry in other._vector.items():
            mine = vector.get(actor)
            if mine is None or entry > mine:
                vector[actor] = entry
        if not self._cloud and not other._cloud:
            return Clock._of(vector)
        cloud = dict(self._cloud)
        for dot, ts in other._cloud.items():
            cloud[dot] = max(ts, cloud.get(dot, ts))
        return Clock(vector, cloud)

    def with_dot(self, dot: Dot, timestamp_ms: int) -> Clock:
        if self.covers(dot):
            return self
        held = self._vector.get(dot.actor)
        if dot.counter == (held[0] if held else 0) + 1 and not self._cloud:
            # the common case: the next write of an actor extends the vector
            return Clock._of({**self._vector, dot.actor: (dot.counter, timestamp_ms)})
        return Clock(self._vector, {**self._cloud, dot: timestamp_ms})

    def pruned(self, threshold: int, keep: Iterable[Dot] = (), keep_actor: str | None = None) -> tuple[Clock, int]:
        """Drop the oldest vector entries and cloud dots beyond `threshold`, sparing `keep`.

        Returns the pruned clock and how many entries went.
        """
        excess = len(self) - threshold
        if excess <= 0:
            return self, 0
        spared_dots = set(keep)
        spared_actors = {d.actor for d in spared_dots} | ({keep_actor} if keep_actor else set())
        # (timestamp, actor, counter): counter 0 marks a vector entry, anything else a cloud dot
        candidates = [(ts, actor, 0) for actor, (_, ts) in self._vector.items() if actor not in spared_actors]
        candidates += [
            (ts, dot.actor, dot.counter) for dot, ts in self._cloud.items() if dot not in spared_dots and dot.actor != keep_actor
        ]
        dropped = sorted(candidates)[:excess]
        drop_actors = {actor for _, actor, counter in dropped if counter == 0}
        drop_dots = {Dot(actor, counter) for _, actor, counter in dropped if counter}
        vector = {a: e for a, e in self._vector.items() if a not in drop_actors}
        cloud = {d: t for d, t in self._cloud.items() if d not in drop_dots}
        return Clock(vector, cloud), len(dropped)


def _vector_dominates(big: dict[str, tuple[int, int]], small: dict[str, tuple[int, int]]) -> bool:
    """Whether `big` has an entry at least as high, (counter, timestamp) compared, for every actor
    of `small`: the join of the two vectors is then exactly `big`."""
    if len(big) < len(small):
        return False
    for actor, entry in small.items():
        held = big.get(actor)
        if held is None or held < entry:
            return False
    return True


EMPTY_CLOCK = Clock()


@dataclass(frozen=True, slots=True)
class Sibling:
    dot: Dot
    context: Clock
    value: bytes | None
    timestamp_ms: int

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    @property
    def value_bytes(self) -> int:
        return 0 if self.value is None else len(self.value)


@dataclass(frozen=True, slots=True)
class SiblingSet:
    """Siblings sorted by dot, and `seen`: the join of every absorbed write's context.

    Invariant: `seen` covers no sibling's dot.
    """

    siblings: tuple[Sibling, ...] = ()
    seen: Clock = EMPTY_CLOCK

    @property
    def live(self) -> list[Sibling]:
        return [s for s in self.siblings if s.value is not None]

    @property
    def is_empty(self) -> bool:
        return not self.siblings

    @property
    def value_bytes(self) -> int:
        return sum(s.value_bytes for s in self.siblings)

    def max_counter(self, actor: str) -> int:
        """The highest counter of `actor` seen here, in any dot or in `seen`."""
        highest = self.seen.counter(actor)
        for s in self.siblings:
            if s.dot.actor == actor and s.dot.counter > highest:
                highest = s.dot.counter
        return highest

    def highest(self) -> dict[str, int]:
        """actor -> the highest counter seen here (dots and `seen`; sibling contexts are within
        `seen`)."""
        tops = self.seen.highest()
        for s in self.siblings:
            if s.dot.counter > tops.get(s.dot.actor, 0):
                tops[s.dot.actor] = s.dot.counter
        return tops

    def full_read_context(self) -> Clock:
        """`seen` joined with every sibling's dot, unpruned: every read context is within it."""
        clock = self.seen
        for s in self.siblings:
            clock = clock.with_dot(s.dot, s.timestamp_ms)
        return clock

    def read_context(self, prune_threshold: int) -> Clock:
        """`seen` joined with every sibling's dot: a put with it supersedes all of them."""
        clock = self.seen
        for s in self.siblings:  # sorted by dot, so an actor's run of dots folds in order
            clock = clock.with_dot(s.dot, s.timestamp_ms)
        return clock.pruned(prune_threshold, keep=[s.dot for s in self.siblings])[0]


EMPTY = SiblingSet()


@dataclass(frozen=True, slots=True)
class PutOutcome:
    object: SiblingSet
    dot: Dot
    client_context: Clock
    pruned_entries: int


def _normalise(siblings: Iterable[Sibling], seen: Clock) -> SiblingSet:
    """Union by dot, minus every sibling that `seen` covers."""
    by_dot: dict[Dot, Sibling] = {}
    for s in siblings:
        if seen.covers(s.dot):
            continue
        held = by_dot.get(s.dot)
        # One dot names one write, so copies are equal; pick deterministically if they are not.
        if held is None or _tiebreak(s) > _tiebreak(held):
            by_dot[s.dot] = s
    return SiblingSet(tuple(sorted(by_dot.values(), key=lambda s: s.dot)), seen)


def _tiebreak(s: Sibling) -> tuple[Any, ...]:
    return (s.timestamp_ms, s.value is not None, s.value or b"", s.context.vector_entries())


def merge(a: SiblingSet, b: SiblingSet) -> SiblingSet:
    if a == b:
        return a
    return _normalise(a.siblings + b.siblings, a.seen.join(b.seen))


def put(
    current: SiblingSet,
    context: Clock,
    value: bytes | None,
    actor: str,
    now_ms: int,
    *,
    prune_threshold: int,
    siblings_max: int,
    object_bytes_max: int,
) -> PutOutcome:
    """Apply a client write (value None = delete) made against `context`, coordinated by `actor`.

    The coordinator's replica holds every dot it ever issued for the key, or `seen` covers it, so a
    context claiming a higher counter of `actor` names a write that never happened: it is refused,
    which also keeps a forged counter from exhausting the key's counter space. A context claiming
    a counter of any actor above EPOCH_COUNTER_MAX that this replica does not hold is refused too:
    the write would carry it to replicas that refuse it. When `actor` has issued its last counter
    for the key, EpochExhausted: the caller takes a new epoch and writes again.
    """
    issued = current.max_counter(actor)
    if context.counter(actor) > issued:
        raise BadRequest(f"invalid context: it claims a write by {actor!r} that {actor!r} never made")
    if context.max_counter() > EPOCH_COUNTER_MAX:
        check_claims(context.highest(), lambda: current)
    counter = issued + 1
    if counter > EPOCH_COUNTER_MAX:
        raise EpochExhausted(f"{actor!r} has issued its last counter for this key: take a new actor epoch")
    dot = Dot(actor, counter)
    sibling_context, pruned = context.pruned(prune_threshold)
    # Stamped no earlier than the newest write it supersedes here: a coordinator whose wall clock
    # is behind must not give a delete a tombstone older than the values it deletes, since hints
    # expire and tombstones are reaped by those ages (dynd.core.hints, dynd.core.reaper).
    now_ms = max(now_ms, max((s.timestamp_ms for s in current.siblings if context.covers(s.dot)), default=0))
    new = Sibling(dot, sibling_context, value, now_ms)
    seen = current.seen.join(context)
    result = _normalise([*current.siblings, new], seen)
    if len(result.siblings) > siblings_max:
        raise TooManySiblings(
            f"the write would leave {len(result.siblings)} siblings (siblings_max={siblings_max}); "
            "read the key and write with its context to resolve them"
        )
    if result.value_bytes > object_bytes_max:
        raise ObjectTooLarge(
            f"the object would hold {result.value_bytes} bytes of values (object_bytes_max={object_bytes_max}); "
            "read the key and write with its context to replace its siblings"
        )
    client_context, pruned_client = context.with_dot(dot, now_ms).pruned(prune_threshold, keep=[dot])
    return PutOutcome(result, dot, client_context, pruned + pruned_client)


# ---- encodings ----
#
# Written with the hand-rolled CBOR pieces of `dynd.protocol.codec` (bytes identical to cbor2's
# for the same plain lists): these run several times on every put. A clock is two arrays of
# [actor, counter, timestamp_ms] entries, the vector sorted by actor and the cloud by dot.

_ENTRY_HEAD = cbor_head(MAJOR_ARRAY, 3)
_CONTEXT_HEAD = cbor_head(MAJOR_ARRAY, 3) + cbor_uint(CONTEXT_FORMAT)
_OBJECT_HEAD = cbor_head(MAJOR_ARRAY, 4) + cbor_uint(OBJECT_FORMAT)
_SIBLING_HEAD = cbor_head(MAJOR_ARRAY, 6)


def _append_clock(clock: Clock, out: list[bytes]) -> None:
    encoded = clock._cbor
    if encoded is None:
        pieces: list[bytes] = []
        _encode_clock(clock, pieces)
        encoded = clock._cbor = b"".join(pieces)
    out.append(encoded)


def _encode_clock(clock: Clock, out: list[bytes]) -> None:
    vector = clock._vector
    out.append(cbor_head(MAJOR_ARRAY, len(vector)))
    for actor in sorted(vector) if len(vector) > 1 else vector:
        counter, timestamp_ms = vector[actor]
        out += (_ENTRY_HEAD, cbor_text(actor), cbor_uint(counter), cbor_uint(timestamp_ms))
    cloud = clock._cloud
    out.append(cbor_head(MAJOR_ARRAY, len(cloud)))
    for dot in sorted(cloud) if len(cloud) > 1 else cloud:
        out += (_ENTRY_HEAD, cbor_text(dot.actor), cbor_uint(dot.counter), cbor_uint(cloud[dot]))


def _clock_from_plain(vector: Any, cloud: Any) -> Clock:
    if not cloud:
        return Clock._of({a: (c, t) for a, c, t in vector}) if vector else EMPTY_CLOCK
    return Clock({a: (c, t) for a, c, t in vector}, {Dot(a, c): t for a, c, t in cloud})


def encode_context(clock: Clock) -> bytes:
    """The opaque context token handed to clients: [CONTEXT_FORMAT, vector, cloud]."""
    out = [_CONTEXT_HEAD]
    _append_clock(clock, out)
    return b"".join(out)


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
    return _clock_from_plain(vector, cloud)


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


class UnissuedCounter(BadRequest):
    """A record claims a counter of this node's own actor above what it issued for the key."""

    def __init__(self, message: str, actor: str) -> None:
        super().__init__(message)
        self.actor = actor


def check_claims(tops: dict[str, int], reference: Callable[[], SiblingSet], own_actor: str | None = None) -> None:
    """Refuse counters no actor can have issued. `tops`: actor -> highest counter claimed (in a
    record or a context); `reference`: what this replica holds for the key (called only when
    needed); `own_actor`: this node's actor, whose every dot for the key this replica holds.

    - A counter of `own_actor` above what the reference holds of it names a write this node never
      made (UnissuedCounter): accepted, it would cover, and so erase on arrival, this node's next
      writes of the key wherever it went.
    - A counter of any actor above EPOCH_COUNTER_MAX is implausible unless the reference holds
      one as high already (a key pushed there before this check existed stays mergeable).
    """
    held: SiblingSet | None = None
    if own_actor is not None and own_actor in tops:
        held = reference()
        issued = held.max_counter(own_actor)
        if tops[own_actor] > issued:
            raise UnissuedCounter(
                f"it claims counter {tops[own_actor]} of this node's actor {own_actor!r}, which issued {issued} for this key",
                own_actor,
            )
    for actor, top in tops.items():
        if top > EPOCH_COUNTER_MAX:
            if held is None:
                held = reference()
            if top > held.max_counter(actor):
                raise BadRequest(f"it claims counter {top} of {actor!r}, above the {EPOCH_COUNTER_MAX} an actor epoch issues for a key")


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
    seen = _clock_from_plain(
        _parse_entries(seen_vector, actor_bytes_max, True, what), _parse_entries(seen_cloud, actor_bytes_max, False, what)
    )
    supply = iter(live_values)
    siblings: list[Sibling] = []
    for raw in raw_siblings:
        if type(raw) is not list or len(raw) != 6:
            raise BadRequest(f"{what}: each sibling must be [actor, counter, timestamp_ms, value, vector, cloud]")
        actor, counter, timestamp_ms, value, vector, cloud = raw
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
        context = _clock_from_plain(_parse_entries(vector, actor_bytes_max, True, what), _parse_entries(cloud, actor_bytes_max, False, what))
        sibling = Sibling(Dot(actor, counter), context, value, timestamp_ms)
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


def encode_object(obj: SiblingSet, *, values: bool = True) -> bytes:
    """The object as CBOR: [OBJECT_FORMAT, [[actor, counter, timestamp_ms, value, vector, cloud],
    ...], seen vector, seen cloud]. With values=False each live value is replaced by True (a
    tombstone stays None), for a caller that keeps the live values elsewhere, in sibling order."""
    out = [_OBJECT_HEAD, cbor_head(MAJOR_ARRAY, len(obj.siblings))]
    for s in obj.siblings:
        out += (_SIBLING_HEAD, cbor_text(s.dot.actor), cbor_uint(s.dot.counter), cbor_uint(s.timestamp_ms))
        if s.value is None:
            out.append(CBOR_NULL)
        elif values:
            out += (cbor_head(MAJOR_BYTES, len(s.value)), s.value)
        else:
            out.append(CBOR_TRUE)
        _append_clock(s.context, out)
    _append_clock(obj.seen, out)
    return b"".join(out)


def decode_object(data: bytes, live_values: Iterable[bytes] | None = None) -> SiblingSet:
    """Decode a stored object; `live_values` fills in what `encode_object(values=False)` left out.

    Stored bytes were written by us, so a failure here means corruption.
    """
    fmt, raw_siblings, seen_vector, seen_cloud = cbor2.loads(data)
    if fmt != OBJECT_FORMAT:
        raise ValueError(f"unknown stored object format {fmt!r}")
    supply = iter(live_values) if live_values is not None else None
    siblings = []
    for actor, counter, ts, value, vector, cloud in raw_siblings:
        if value is True and supply is not None:
            value = next(supply)
        siblings.append(Sibling(Dot(actor, counter), _clock_from_plain(vector, cloud), value, ts))
    return SiblingSet(tuple(siblings), _clock_from_plain(seen_vector, seen_cloud))
