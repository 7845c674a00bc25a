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

Records from other nodes meet the limits of a client's write and must be canonically encoded
(`check_claims` here, `versions_codec.parse_object`); see `dynd.core.replica.decode_peer_record`.

This module is the algebra; `dynd.core.versions_codec` holds the encodings of context tokens and
stored objects, and the strict decoders of what clients and peers send. A clock's own canonical
encoding (`Clock.encoded`) stays here, with the clock, which keeps it once computed.

Timestamps ride along for pruning only; comparing versions never looks at time.

Metadata: a sibling may carry a `SiblingMeta` (the content type its writer gave, and user
metadata as name/value pairs, as Riak's HTTP interface stores with each value), written with its
value and never changed after. It is part of the write like the value: it plays no part in
versioning, and a sibling without it (every sibling written before metadata existed, and every
write that gives none) is encoded exactly as before (`versions_codec`). A sibling's last-modified
time is its timestamp.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from dynd.protocol.codec import MAJOR_ARRAY, cbor_head, cbor_text, cbor_uint
from dynd.protocol.errors import BadRequest, ObjectTooLarge, TooManySiblings

# Counters stay far below the wire's 2^63 limit, so a forged context can never push a dot past it.
COUNTER_MAX = 2**62
# The most counters one actor epoch issues for one key (2^48 writes: 9 years at a million a
# second); the next write takes a new epoch. A higher counter no replica holds yet is implausible.
EPOCH_COUNTER_MAX = 2**48
# A clock entry's head: clocks are written with the hand-rolled CBOR pieces of
# `dynd.protocol.codec` (bytes identical to cbor2's), being encoded several times on every put.
_ENTRY_HEAD = cbor_head(MAJOR_ARRAY, 3)


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

    def encoded(self) -> bytes:
        """The clock as CBOR, as two arrays of [actor, counter, timestamp_ms] entries, the vector
        sorted by actor and the cloud by dot: the part of a context token or stored object that
        is a clock (`versions_codec`). Kept once computed: a clock is often encoded several
        times on one put (its context, the client's, the stored object's)."""
        if self._cbor is None:
            out: list[bytes] = []
            vector = self._vector
            out.append(cbor_head(MAJOR_ARRAY, len(vector)))
            for actor in sorted(vector) if len(vector) > 1 else vector:
                counter, timestamp_ms = vector[actor]
                out += (_ENTRY_HEAD, cbor_text(actor), cbor_uint(counter), cbor_uint(timestamp_ms))
            cloud = self._cloud
            out.append(cbor_head(MAJOR_ARRAY, len(cloud)))
            for dot in sorted(cloud) if len(cloud) > 1 else cloud:
                out += (_ENTRY_HEAD, cbor_text(dot.actor), cbor_uint(dot.counter), cbor_uint(cloud[dot]))
            self._cbor = b"".join(out)
        return self._cbor

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


def clock_from_entries(vector: Collection[tuple[str, int, int]], cloud: Collection[tuple[str, int, int]]) -> Clock:
    """The clock of decoded [actor, counter, timestamp_ms] entries (checked by the caller):
    `vector` one per actor, `cloud` single dots beyond it."""
    if not cloud:
        return Clock._of({a: (c, t) for a, c, t in vector}) if vector else EMPTY_CLOCK
    return Clock({a: (c, t) for a, c, t in vector}, {Dot(a, c): t for a, c, t in cloud})


@dataclass(frozen=True, slots=True)
class SiblingMeta:
    """What a writer said about its value besides the bytes: a content type (None: not given) and
    user metadata, (name, value) pairs sorted by name, names lowercase and unique. An empty
    metadata is no metadata: `make_meta` returns None for it, so every sibling has one encoding."""

    content_type: str | None = None
    user: tuple[tuple[str, str], ...] = ()

    @property
    def encoded_bytes(self) -> int:
        """What it costs to keep: the UTF-8 bytes of its strings (`meta_bytes_max` bounds this)."""
        size = len(self.content_type.encode()) if self.content_type else 0
        return size + sum(len(name.encode()) + len(value.encode()) for name, value in self.user)


# Metadata is served as HTTP headers (X-Riak-Meta-NAME: VALUE, Content-Type), so a name must be an
# HTTP token and a value must be printable ASCII (RFC 9110 field values, less obsolete octets).
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header_safe(text: str) -> bool:
    return all(" " <= char <= "~" or char == "\t" for char in text) and text == text.strip(" \t")


def make_meta(content_type: str | None, user: Iterable[tuple[str, str]] = ()) -> SiblingMeta | None:
    """The metadata of a write in its one canonical form, or None when it says nothing. Names are
    lowercased (HTTP header names are case-insensitive); a name given twice, a name that is not an
    HTTP token or a value that could not be sent as an HTTP header value is refused."""
    pairs = sorted((name.lower(), value) for name, value in user)
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise BadRequest("metadata names must be unique (case-insensitive)")
    for name, value in pairs:
        if not name or not set(name) <= _TOKEN:
            raise BadRequest(f"metadata name {name[:64]!r} must be an HTTP token (letters, digits and !#$%&'*+-.^_`|~)")
        if not _header_safe(value):
            raise BadRequest(f"metadata {name!r}: its value must be printable ASCII without leading or trailing blanks")
    if content_type is not None and not _header_safe(content_type):
        raise BadRequest("the content type must be printable ASCII without leading or trailing blanks")
    if not content_type and not pairs:
        return None
    return SiblingMeta(content_type or None, tuple(pairs))


@dataclass(frozen=True, slots=True)
class Sibling:
    dot: Dot
    context: Clock
    value: bytes | None
    timestamp_ms: int
    meta: SiblingMeta | None = None  # a tombstone has none

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
class Versions:
    """What an object has seen, without its values or its siblings' contexts: each sibling's dot
    and `seen`. Enough to version a write whose context covers every sibling (`put`), since
    none of them survives it; a replica reads this much of a stored object before deciding
    whether it needs the values at all (`versions_codec.decode_versions`)."""

    dots: tuple[Dot, ...]
    seen: Clock
    newest_ms: int  # the newest sibling's timestamp (0 with none): a write is stamped no earlier

    def max_counter(self, actor: str) -> int:
        """The highest counter of `actor` seen here, in any dot or in `seen`."""
        highest = self.seen.counter(actor)
        for dot in self.dots:
            if dot.actor == actor and dot.counter > highest:
                highest = dot.counter
        return highest

    def covered_by(self, context: Clock) -> bool:
        """Whether a write made with `context` supersedes every sibling."""
        return all(context.covers(dot) for dot in self.dots)

    def survivors(self, context: Clock) -> tuple[Sibling, ...]:
        """The siblings a write made with `context` leaves standing: none, when it covers every
        sibling. For any other write the survivors' values are needed, and they were not
        decoded: a caller's mistake."""
        if not self.covered_by(context):
            raise ValueError("a write that leaves siblings standing needs their values: decode the whole object")
        return ()


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
    meta = s.meta
    return (s.timestamp_ms, s.value is not None, s.value or b"", s.context.vector_entries(), meta is not None,
            (meta.content_type or "", meta.user) if meta is not None else ("", ()))


def merge(a: SiblingSet, b: SiblingSet) -> SiblingSet:
    if a == b:
        return a
    return _normalise(a.siblings + b.siblings, a.seen.join(b.seen))


def put(
    current: SiblingSet | Versions,
    context: Clock,
    value: bytes | None,
    actor: str,
    now_ms: int,
    *,
    prune_threshold: int,
    siblings_max: int,
    object_bytes_max: int,
    meta: SiblingMeta | None = None,
) -> PutOutcome:
    """Apply a client write (value None = delete) made against `context`, coordinated by `actor`;
    `meta` goes with the value (a delete carries none).

    The coordinator's replica holds every dot it ever issued for the key, or `seen` covers it, so a
    context claiming a higher counter of `actor` names a write that never happened: it is refused,
    which also keeps a forged counter from exhausting the key's counter space. A context claiming
    a counter of any actor above EPOCH_COUNTER_MAX that this replica does not hold is refused too:
    the write would carry it to replicas that refuse it. When `actor` has issued its last counter
    for the key, EpochExhausted: the caller takes a new epoch and writes again.

    `current` may be the object's `Versions` alone (no values) when `context` covers every
    sibling: none of them survives the write.
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
    if type(current) is SiblingSet:
        superseded_ms = max((s.timestamp_ms for s in current.siblings if context.covers(s.dot)), default=0)
    else:  # a Versions: the write covers every sibling (else `survivors` refuses it below)
        superseded_ms = current.newest_ms
    now_ms = max(now_ms, superseded_ms)
    new = Sibling(dot, sibling_context, value, now_ms, meta if value is not None else None)
    seen = current.seen.join(context)
    # Every sibling `seen` now covers is dropped here; a Versions (no values) has none left.
    standing = current.siblings if type(current) is SiblingSet else current.survivors(context)
    result = _normalise([*standing, new], seen)
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


class UnissuedCounter(BadRequest):
    """A record claims a counter of this node's own actor above what it issued for the key."""

    def __init__(self, message: str, actor: str) -> None:
        super().__init__(message)
        self.actor = actor


def check_claims(tops: dict[str, int], reference: Callable[[], SiblingSet | Versions], own_actor: str | None = None) -> None:
    """Refuse counters no actor can have issued. `tops`: actor -> highest counter claimed (in a
    record or a context); `reference`: what this replica holds for the key (called only when
    needed); `own_actor`: this node's actor, whose every dot for the key this replica holds.

    - A counter of `own_actor` above what the reference holds of it names a write this node never
      made (UnissuedCounter): accepted, it would cover, and so erase on arrival, this node's next
      writes of the key wherever it went.
    - A counter of any actor above EPOCH_COUNTER_MAX is implausible unless the reference holds
      one as high already (a key pushed there before this check existed stays mergeable).
    """
    held: SiblingSet | Versions | None = None
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

