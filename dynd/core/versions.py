"""Sibling sets versioned with dotted version vectors (DESIGN.md section 2).

Rules, in the order they apply:
- A stored object is a set of siblings. Each sibling has a *dot* (actor, counter) naming the one
  write that made it, the causal *context* (a clock: actor -> counter) that write was made against,
  a value (None for a tombstone) and the coordinator's timestamp.
- A clock *covers* a dot (a, n) when clock[a] >= n.
- put(context C, via actor X): the new dot is (X, k) with k above every counter of X this replica
  has seen for the key, in dots and contexts alike. X draws k from its own node-wide sequence, which
  only rises and survives restarts (the shell persists its high-water mark with every commit), so
  X never issues a dot twice even when pruning has erased what this key saw of X; a context that
  claims a counter of X at or above the sequence was forged and is refused. Siblings whose dot C
  covers are dropped; the rest stay beside the new one. Two writes with the same stale context
  through the same actor get different dots, neither covers the other, so both survive.
- The object also keeps `seen`, the join of the contexts of every write it has absorbed, kept even
  after the siblings those writes made are gone. A sibling whose dot `seen` covers is obsolete.
  (DESIGN.md phrases this as "covered by another sibling's context"; the two agree until a context is
  pruned, and only `seen` keeps merge associative then, so it is the rule here.)
- merge(A, B): the union of siblings by dot and the join of `seen`, minus every obsolete sibling.
  State is a join-semilattice, so merge is commutative, associative and idempotent and replicas
  converge in any order.
- read: the live values and the join of every sibling's context and dot (tombstones included), so a
  later put with that context supersedes everything that was read.
- Pruning: on a put, the new sibling's context, the object's `seen` and the context returned to the
  client keep at most `prune_threshold` entries, dropping the oldest by timestamp; a read context
  keeps at most `context_entries_max`. Pruning only weakens what a clock covers, so it can add a false
  sibling later but never drop a write. The writing actor's own entry is never pruned.

Clock entries carry the timestamp of the write that set their counter, for pruning only; comparing
versions never looks at time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from dynd.protocol.codec import INT_MAX, loads_strict
from dynd.protocol.errors import BadFrame, BadRequest, ObjectTooLarge, TooManySiblings

CONTEXT_FORMAT = 1
OBJECT_FORMAT = 1
# Counters stay far below the wire's 2^63 limit, so a forged context can never push a dot past it.
COUNTER_MAX = 2**62


@dataclass(frozen=True, slots=True, order=True)
class Dot:
    actor: str
    counter: int


class Clock(Mapping[str, int]):
    """An immutable version vector: actor -> counter, each with the timestamp of that counter's write."""

    __slots__ = ("_entries", "_hash")

    def __init__(self, entries: Mapping[str, tuple[int, int]] | None = None) -> None:
        self._entries: dict[str, tuple[int, int]] = dict(entries) if entries else {}
        self._hash: int | None = None

    # Mapping protocol: clock[actor] is the counter
    def __getitem__(self, actor: str) -> int:
        return self._entries[actor][0]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Clock):
            return self._entries == other._entries
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._entries.items()))
        return self._hash

    def __repr__(self) -> str:
        inner = ", ".join(f"{a}:{c}" for a, c in self.items())
        return f"Clock({inner})"

    def counter(self, actor: str) -> int:
        entry = self._entries.get(actor)
        return entry[0] if entry is not None else 0

    def timestamp_ms(self, actor: str) -> int:
        entry = self._entries.get(actor)
        return entry[1] if entry is not None else 0

    def covers(self, dot: Dot) -> bool:
        entry = self._entries.get(dot.actor)
        return entry is not None and entry[0] >= dot.counter

    def descends(self, other: Clock) -> bool:
        return all(self.counter(actor) >= counter for actor, counter in other.items())

    def join(self, other: Clock) -> Clock:
        if not other._entries:
            return self
        merged = dict(self._entries)
        for actor, entry in other._entries.items():
            mine = merged.get(actor)
            if mine is None or entry > mine:
                merged[actor] = entry
        return Clock(merged)

    def with_dot(self, dot: Dot, timestamp_ms: int) -> Clock:
        if self.counter(dot.actor) >= dot.counter:
            return self
        merged = dict(self._entries)
        merged[dot.actor] = (dot.counter, timestamp_ms)
        return Clock(merged)

    def pruned(self, threshold: int, keep_actor: str) -> tuple[Clock, int]:
        """Drop the oldest entries (by timestamp, then actor) beyond `threshold`; never `keep_actor`."""
        excess = len(self._entries) - threshold
        if excess <= 0:
            return self, 0
        candidates = sorted(
            (ts, actor) for actor, (_, ts) in self._entries.items() if actor != keep_actor
        )
        dropped = {actor for _, actor in candidates[:excess]}
        return Clock({a: e for a, e in self._entries.items() if a not in dropped}), len(dropped)

    def entries(self) -> list[tuple[str, int, int]]:
        """(actor, counter, timestamp_ms), sorted by actor."""
        return [(actor, *self._entries[actor]) for actor in sorted(self._entries)]


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

    Invariant: `seen` covers no sibling's dot, and every sibling's context is below `seen`.
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
        """The highest counter of `actor` seen in any dot or context here."""
        highest = self.seen.counter(actor)
        for s in self.siblings:
            if s.dot.actor == actor and s.dot.counter > highest:
                highest = s.dot.counter
        return highest

    def read_context(self, entries_max: int) -> Clock:
        """`seen` joined with every sibling's dot: a put with it supersedes all of them.

        Pruned to `entries_max` (oldest first) so a client can always send it back; the dots of the
        siblings themselves are kept whenever they fit.
        """
        clock = self.seen
        for s in self.siblings:
            clock = clock.with_dot(s.dot, s.timestamp_ms)
        excess = len(clock) - entries_max
        if excess > 0:
            dot_actors = {s.dot.actor for s in self.siblings}
            ranked = sorted((a in dot_actors, clock.timestamp_ms(a), a) for a in clock)
            dropped = {a for _, _, a in ranked[:excess]}
            clock = Clock({a: (clock[a], clock.timestamp_ms(a)) for a in clock if a not in dropped})
        return clock


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
    return (s.timestamp_ms, s.value is not None, s.value or b"", s.context.entries())


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
    next_counter: int,
    prune_threshold: int,
    siblings_max: int,
    object_bytes_max: int,
) -> PutOutcome:
    """Apply a client write (value None = delete) made against `context`, coordinated by `actor`.

    `next_counter` is the next value of the actor's node-wide dot sequence; the dot uses it unless
    this key has seen a higher counter of the actor (only possible after a forged context).
    """
    if context.counter(actor) >= next_counter:
        raise BadRequest(f"invalid context: it claims a write by {actor!r} that {actor!r} never made")
    counter = max(current.max_counter(actor) + 1, next_counter)
    if counter > COUNTER_MAX:
        raise BadRequest(f"counter for actor {actor!r} would exceed {COUNTER_MAX}")
    dot = Dot(actor, counter)
    sibling_context, pruned = context.pruned(prune_threshold, keep_actor=actor)
    new = Sibling(dot, sibling_context, value, now_ms)
    seen_full = current.seen.join(context)
    kept = _normalise([*current.siblings, new], seen_full)
    seen, pruned_seen = seen_full.pruned(prune_threshold, keep_actor=actor)
    result = SiblingSet(kept.siblings, seen)
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
    client_context, pruned_client = context.with_dot(dot, now_ms).pruned(prune_threshold, keep_actor=actor)
    return PutOutcome(result, dot, client_context, pruned + pruned_seen + pruned_client)


# ---- encodings ----


def encode_context(clock: Clock) -> bytes:
    """The opaque context token handed to clients."""
    return cbor2.dumps([CONTEXT_FORMAT, [list(e) for e in clock.entries()]])


def decode_context(token: bytes | None, *, entries_max: int, actor_bytes_max: int) -> Clock:
    """Parse a client's context token, refusing anything malformed or over the limits."""
    if token is None:
        return EMPTY_CLOCK
    try:
        item = loads_strict(token)
    except BadFrame as exc:
        raise BadRequest(f"invalid context: {exc.message}") from None
    if type(item) is not list or len(item) != 2 or item[0] != CONTEXT_FORMAT or type(item[1]) is not list:
        raise BadRequest("invalid context: not a context token")
    raw_entries = item[1]
    if len(raw_entries) > entries_max:
        raise BadRequest(f"invalid context: {len(raw_entries)} entries exceed context_entries_max={entries_max}")
    return Clock(_parse_entries(raw_entries, actor_bytes_max, "context"))


def _parse_entries(raw: Any, actor_bytes_max: int, what: str) -> dict[str, tuple[int, int]]:
    entries: dict[str, tuple[int, int]] = {}
    for entry in raw:
        if (
            type(entry) is not list
            or len(entry) != 3
            or type(entry[0]) is not str
            or type(entry[1]) is not int
            or type(entry[2]) is not int
        ):
            raise BadRequest(f"invalid {what}: each entry must be [actor, counter, timestamp_ms]")
        actor, counter, timestamp_ms = entry
        if not actor or len(actor.encode()) > actor_bytes_max:
            raise BadRequest(f"invalid {what}: actor name must be 1..{actor_bytes_max} bytes")
        if not 0 < counter <= COUNTER_MAX or not 0 <= timestamp_ms <= INT_MAX:
            raise BadRequest(f"invalid {what}: counter must be in 1..{COUNTER_MAX}")
        if actor in entries:
            raise BadRequest(f"invalid {what}: actor {actor!r} appears twice")
        entries[actor] = (counter, timestamp_ms)
    return entries


def encode_object(obj: SiblingSet) -> bytes:
    return cbor2.dumps(
        [
            OBJECT_FORMAT,
            [
                [s.dot.actor, s.dot.counter, s.timestamp_ms, s.value, [list(e) for e in s.context.entries()]]
                for s in obj.siblings
            ],
            [list(e) for e in obj.seen.entries()],
        ]
    )


def decode_object(data: bytes) -> SiblingSet:
    """Decode a stored object. Stored bytes were written by us, so a failure here means corruption."""
    fmt, raw_siblings, raw_seen = cbor2.loads(data)
    if fmt != OBJECT_FORMAT:
        raise ValueError(f"unknown stored object format {fmt!r}")
    siblings = tuple(
        Sibling(Dot(actor, counter), Clock({a: (c, t) for a, c, t in ctx}), value, ts)
        for actor, counter, ts, value, ctx in raw_siblings
    )
    return SiblingSet(siblings, Clock({a: (c, t) for a, c, t in raw_seen}))
