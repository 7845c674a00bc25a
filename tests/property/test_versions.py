"""Laws of the dotted-version-vector sibling sets, checked over generated histories.

A history is a sequence of client writes through three coordinators, each made against the context
of a read at some replica (or a stale saved context, or none), interleaved with replica merges.
The model tracks, for every write, which writes its client had seen; a write may disappear only
if a later write's client saw it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynd.core import versions as v
from dynd.core import versions_codec as vc
from dynd.protocol.codec import loads_strict
from dynd.protocol.errors import BadFrame, BadRequest

REPLICAS = 3
BIG = 10**9


@dataclass
class Replica:
    actor: str
    state: v.SiblingSet = v.EMPTY


@dataclass
class Saved:
    context: v.Clock
    seen: frozenset[v.Dot]


@dataclass
class World:
    prune_threshold: int = 10
    replicas: list[Replica] = field(default_factory=lambda: [Replica(f"n{i}") for i in range(REPLICAS)])
    observed: dict[v.Dot, frozenset[v.Dot]] = field(default_factory=dict)
    saved: list[Saved] = field(default_factory=list)
    states: list[v.SiblingSet] = field(default_factory=list)
    now_ms: int = 0

    def write(self, via: int, context: v.Clock, seen: frozenset[v.Dot], value: bytes | None) -> None:
        replica = self.replicas[via]
        self.now_ms += 1
        outcome = v.put(
            replica.state,
            context,
            value,
            replica.actor,
            self.now_ms,
            prune_threshold=self.prune_threshold,
            siblings_max=BIG,
            object_bytes_max=BIG,
        )
        replica.state = outcome.object
        self.observed[outcome.dot] = seen
        self.saved.append(Saved(outcome.client_context, seen | {outcome.dot}))
        self.states.append(replica.state)

    def read(self, at: int) -> Saved:
        state = self.replicas[at].state
        return Saved(state.read_context(self.prune_threshold), frozenset(s.dot for s in state.siblings))

    def merge(self, into: int, source: int) -> None:
        target = self.replicas[into]
        target.state = v.merge(target.state, self.replicas[source].state)
        self.states.append(target.state)

    def final(self) -> v.SiblingSet:
        state = v.EMPTY
        for replica in self.replicas:
            state = v.merge(state, replica.state)
        return state

    def unsuperseded(self) -> set[v.Dot]:
        superseded = set().union(*self.observed.values()) if self.observed else set()
        return set(self.observed) - superseded


replica_index = st.integers(0, REPLICAS - 1)
operation = st.one_of(
    st.tuples(st.just("rmw"), replica_index, replica_index, st.booleans()),
    st.tuples(st.just("blind"), replica_index, replica_index, st.booleans()),
    st.tuples(st.just("stale"), replica_index, st.integers(0, 50), st.booleans()),
    st.tuples(st.just("merge"), replica_index, replica_index, st.booleans()),
)
histories = st.lists(operation, min_size=1, max_size=40)


def run(history: list[tuple[str, int, int, bool]], prune_threshold: int = 10) -> World:
    world = World(prune_threshold=prune_threshold)
    for step, (kind, a, b, delete) in enumerate(history):
        value = None if delete else f"v{step}".encode()
        if kind == "rmw":
            saved = world.read(b)
            world.write(a, saved.context, saved.seen, value)
        elif kind == "blind":
            world.write(a, v.EMPTY_CLOCK, frozenset(), value)
        elif kind == "stale":
            saved = world.saved[b % len(world.saved)] if world.saved else Saved(v.EMPTY_CLOCK, frozenset())
            world.write(a, saved.context, saved.seen, value)
        else:
            world.merge(a, b)
    return world


def check_invariants(state: v.SiblingSet) -> None:
    dots = [s.dot for s in state.siblings]
    assert len(dots) == len(set(dots))
    for s in state.siblings:
        assert not state.seen.covers(s.dot), f"{s.dot} is covered by seen {state.seen}"
        assert state.seen.descends(s.context), f"{s.dot}'s context {s.context} is not below seen {state.seen}"
        for other in state.siblings:
            assert other is s or not other.context.covers(s.dot), f"{s.dot} is covered by {other.dot}'s context"


@settings(max_examples=300, deadline=None)
@given(histories)
def test_every_reachable_state_keeps_the_invariants(history: list[tuple[str, int, int, bool]]) -> None:
    world = run(history)
    for state in world.states:
        check_invariants(state)
    check_invariants(world.final())


@settings(max_examples=300, deadline=None)
@given(histories, st.data())
def test_merge_is_commutative_associative_idempotent(history: list[tuple[str, int, int, bool]], data: st.DataObject) -> None:
    states = run(history).states
    a, b, c = (data.draw(st.sampled_from(states)) for _ in range(3))
    assert v.merge(a, b) == v.merge(b, a)
    assert v.merge(v.merge(a, b), c) == v.merge(a, v.merge(b, c))
    assert v.merge(a, a) == a
    assert v.merge(a, v.EMPTY) == a


@settings(max_examples=300, deadline=None)
@given(histories)
def test_no_write_is_lost_and_nothing_superseded_survives(history: list[tuple[str, int, int, bool]]) -> None:
    world = run(history)
    final = {s.dot for s in world.final().siblings}
    assert final == world.unsuperseded()


@settings(max_examples=300, deadline=None)
@given(histories, st.integers(1, 3))
def test_pruning_never_loses_a_write(history: list[tuple[str, int, int, bool]], threshold: int) -> None:
    world = run(history, prune_threshold=threshold)
    final = {s.dot for s in world.final().siblings}
    assert world.unsuperseded() <= final, "pruning dropped a write nobody had seen"
    for state in world.states:
        check_invariants(state)
        for s in state.siblings:
            assert len(s.context) <= threshold


@settings(max_examples=200, deadline=None)
@given(histories, replica_index)
def test_put_with_the_latest_read_context_supersedes_every_sibling(history: list[tuple[str, int, int, bool]], via: int) -> None:
    world = run(history)
    for at in range(REPLICAS):
        world.merge(via, at)
    saved = world.read(via)
    world.write(via, saved.context, saved.seen, b"resolved")
    state = world.replicas[via].state
    assert [s.value for s in state.siblings] == [b"resolved"]


@settings(max_examples=200, deadline=None)
@given(histories, replica_index, replica_index)
def test_two_puts_with_the_same_stale_context_through_one_node_both_survive(
    history: list[tuple[str, int, int, bool]], via: int, read_at: int
) -> None:
    world = run(history)
    stale = world.read(read_at)
    world.write(via, stale.context, stale.seen, b"first")
    world.write(via, stale.context, stale.seen, b"second")
    values = [s.value for s in world.replicas[via].state.siblings]
    assert b"first" in values and b"second" in values


def put_kw(threshold: int = 10) -> dict[str, int]:
    return {"prune_threshold": threshold, "siblings_max": BIG, "object_bytes_max": BIG}


def test_read_context_is_pruned_but_keeps_every_sibling_dot() -> None:
    state = v.EMPTY
    for i in range(20):
        written = v.put(v.EMPTY, v.EMPTY_CLOCK, b"x", f"a{i}", i, **put_kw())
        state = v.merge(state, written.object)
    # supersede half of them, so `seen` holds ten actors no sibling needs
    resolved = v.put(state, v.Clock({f"a{i}": (1, i) for i in range(10)}), b"y", "b", 100, **put_kw())
    context = resolved.object.read_context(4)
    assert all(context.covers(s.dot) for s in resolved.object.siblings)
    assert len(context) == len(resolved.object.siblings)


def test_put_reply_covers_only_what_the_client_saw() -> None:
    first = v.put(v.EMPTY, v.EMPTY_CLOCK, b"a", "n0", 1, **put_kw())
    second = v.put(first.object, v.EMPTY_CLOCK, b"b", "n0", 2, **put_kw())  # concurrent with the first
    assert not second.client_context.covers(first.dot)
    third = v.put(second.object, second.client_context, b"c", "n0", 3, **put_kw())
    assert sorted(s.value for s in third.object.siblings) == [b"a", b"c"]


def test_counters_never_repeat_for_a_key_after_its_siblings_are_gone() -> None:
    state = v.EMPTY
    dots = set()
    context = v.EMPTY_CLOCK
    for step in range(30):
        outcome = v.put(state, context, b"x", f"n{step % 3}", step, **put_kw(threshold=1))
        assert outcome.dot not in dots
        dots.add(outcome.dot)
        state, context = outcome.object, outcome.client_context


def test_a_forged_counter_at_the_limit_is_refused() -> None:
    forged = v.Clock({"n0": (v.COUNTER_MAX, 0)})
    try:
        v.put(v.EMPTY, forged, b"x", "n0", 1, **put_kw())
    except Exception as exc:
        assert getattr(exc, "code", None) == "bad_request"
    else:
        raise AssertionError("a counter past COUNTER_MAX was issued")


actors = st.text(alphabet="abcdef", min_size=1, max_size=4)
counters = st.integers(1, v.COUNTER_MAX - 1)
stamps = st.integers(0, 2**40)


@given(
    st.dictionaries(actors, st.tuples(counters, stamps), max_size=12),
    st.dictionaries(st.builds(v.Dot, actors, counters), stamps, max_size=12),
)
def test_context_token_round_trips(vector: dict[str, tuple[int, int]], cloud: dict[v.Dot, int]) -> None:
    clock = v.Clock(vector, cloud)
    assert vc.decode_context(vc.encode_context(clock), entries_max=64, actor_bytes_max=128) == clock


@given(
    st.dictionaries(actors, st.tuples(counters, stamps), max_size=6),
    st.dictionaries(st.builds(v.Dot, actors, st.integers(1, 12)), stamps, max_size=8),
    st.dictionaries(st.builds(v.Dot, actors, st.integers(1, 12)), stamps, max_size=8),
)
def test_clock_join_covers_exactly_the_union(vector: dict[str, tuple[int, int]], cloud_a: dict[v.Dot, int], cloud_b: dict[v.Dot, int]) -> None:
    a = v.Clock(vector, cloud_a)
    b = v.Clock(None, cloud_b)
    joined = a.join(b)
    for actor in "abcdef":
        for n in range(1, 16):
            dot = v.Dot(actor, n)
            assert joined.covers(dot) == (a.covers(dot) or b.covers(dot))
    assert joined == b.join(a)


@settings(max_examples=100, deadline=None)
@given(histories)
def test_stored_object_encoding_round_trips(history: list[tuple[str, int, int, bool]]) -> None:
    for state in run(history).states:
        assert vc.decode_object(vc.encode_object(state)) == state
        live = [s.value for s in state.siblings if s.value is not None]
        assert vc.decode_object(vc.encode_object(state, values=False), live) == state
        versions = vc.decode_versions(vc.encode_object(state, values=False))
        assert versions == v.Versions(tuple(s.dot for s in state.siblings), state.seen, max((s.timestamp_ms for s in state.siblings), default=0))
        if live:
            with pytest.raises(ValueError, match="more live siblings than values"):
                vc.decode_object(vc.encode_object(state, values=False))  # never a placeholder for a value
            with pytest.raises(ValueError, match="more values than live siblings"):
                vc.decode_object(vc.encode_object(state, values=False), [*live, b"extra"])


@settings(max_examples=100, deadline=None)
@given(histories, st.booleans())
def test_a_write_superseding_every_sibling_is_versioned_alike_from_the_versions_alone(history: list[tuple[str, int, int, bool]], delete: bool) -> None:
    world = run(history)
    state = world.replicas[0].state
    context = state.read_context(world.prune_threshold)
    value = None if delete else b"new"
    whole = v.put(state, context, value, "n0", world.now_ms + 1, **put_kw())
    alone = v.put(v.Versions(tuple(s.dot for s in state.siblings), state.seen, max((s.timestamp_ms for s in state.siblings), default=0)), context, value, "n0", world.now_ms + 1, **put_kw())
    assert alone == whole
    if state.siblings:
        with pytest.raises(ValueError, match="needs their values"):
            v.put(v.Versions(tuple(s.dot for s in state.siblings), state.seen, max((s.timestamp_ms for s in state.siblings), default=0)), v.EMPTY_CLOCK, value, "n0", 1, **put_kw())


def _reference_decode(token: bytes, entries_max: int, actor_bytes_max: int) -> v.Clock | None:
    """What a context token means, by the protocol's strict general decoder (no tags, no
    indefinite lengths, no trailing bytes, ...): None when it is not a valid one."""
    try:
        item = loads_strict(token)
    except BadFrame:
        return None
    if type(item) is not list or len(item) != 3 or type(item[0]) is not int or item[0] != vc.CONTEXT_FORMAT or type(item[1]) is not list or type(item[2]) is not list:
        return None
    if len(item[1]) + len(item[2]) > entries_max:
        return None
    try:
        vector = vc._parse_entries(item[1], actor_bytes_max)
        cloud = vc._parse_entries(item[2], actor_bytes_max, unique_actors=False)
    except BadRequest:
        return None
    return v.clock_from_entries(vector, cloud)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(actors, st.tuples(counters, stamps), max_size=6),
    st.dictionaries(st.builds(v.Dot, actors, counters), stamps, max_size=6),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
    st.integers(0, 8),
)
@example({}, {v.Dot("aaa", 256): 65536}, [(29, 0)], 0)  # a stamp cut short, leaving trailing bytes: refused
@example({}, {}, [(1, 0xF5)], 0)  # the format as `true`, which Python's == takes for 1: refused
def test_context_tokens_are_read_head_by_head_as_a_cbor_decoder_would(
    vector: dict[str, tuple[int, int]], cloud: dict[v.Dot, int], flips: list[tuple[int, int]], cut: int
) -> None:
    token = bytearray(vc.encode_context(v.Clock(vector, cloud)))
    for at, byte in flips:
        if token:
            token[at % len(token)] = byte
    mutated = bytes(token[: len(token) - cut] if cut < len(token) else token)
    expected = _reference_decode(mutated, 8, 4)
    try:
        got = vc.decode_context(mutated, entries_max=8, actor_bytes_max=4)
    except BadRequest:
        got = None
    if expected is None:
        # refused either way, except where the strict reader is stricter than cbor2: a token
        # cbor2 would refuse is never accepted
        assert got is None
    else:
        assert got == expected or (got is None and len(mutated) > vc.context_token_bytes_max(8, 4))


def test_a_context_token_longer_than_its_entries_can_need_is_refused_unread() -> None:
    token = vc.encode_context(v.Clock({f"a{i}": (1, 0) for i in range(10)}))
    assert vc.decode_context(token, entries_max=10, actor_bytes_max=3) == vc.decode_context(token, entries_max=64, actor_bytes_max=128)
    with pytest.raises(BadRequest, match="bytes is more than"):
        vc.decode_context(token + b"\x00" * vc.context_token_bytes_max(10, 3), entries_max=10, actor_bytes_max=3)


def test_claims_of_this_nodes_actor_beyond_what_it_issued_are_refused() -> None:
    held = v.put(v.EMPTY, v.EMPTY_CLOCK, b"x", "me", 1, **put_kw()).object  # "me" issued 1
    v.check_claims({"me": 1, "other": 40}, lambda: held, "me")
    with pytest.raises(v.UnissuedCounter) as refused:
        v.check_claims({"me": 2}, lambda: held, "me")
    assert refused.value.actor == "me"
    with pytest.raises(BadRequest, match="above"):
        v.check_claims({"other": v.EPOCH_COUNTER_MAX + 1}, lambda: held)
    # a replica already holding such a counter keeps merging it (a key pushed there earlier)
    pushed = v.SiblingSet((), v.Clock({"other": (v.EPOCH_COUNTER_MAX + 5, 0)}))
    v.check_claims({"other": v.EPOCH_COUNTER_MAX + 5}, lambda: pushed)


def test_an_actor_that_issued_its_last_counter_for_a_key_must_take_a_new_epoch() -> None:
    state = v.SiblingSet((), v.Clock({"n0": (v.EPOCH_COUNTER_MAX, 0)}))
    with pytest.raises(v.EpochExhausted):
        v.put(state, v.EMPTY_CLOCK, b"x", "n0", 1, **put_kw())
    assert v.put(state, v.EMPTY_CLOCK, b"x", "n0.new", 1, **put_kw()).dot == v.Dot("n0.new", 1)
