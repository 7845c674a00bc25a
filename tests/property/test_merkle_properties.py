"""Merkle trees and exchanges over generated histories.

- A tree is a function of its (key, leaf) set: insertion order, build versus updates, and
  updates undone by deletes leave no trace.
- Leaf hashes are equal exactly when the decoded sibling sets are, whatever merge order and
  pruning threshold made the records.
- After random writes on two replicas, one exchange finds exactly the keys that are missing on one
  side or hold different sibling sets; after it both roots and stores are equal, and a second
  exchange finds nothing.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dynd.core import replica, versions_codec
from dynd.core.exchange import Exchange, ExchangeLimits
from dynd.core.limits import Limits
from dynd.core.merkle import MerkleTree, leaf_hash
from tests.bench.anti_entropy import Link, Replica

SEGMENTS, FANOUT = 16, 4
key_names = st.binary(min_size=1, max_size=6)
leaves = st.binary(min_size=16, max_size=16)


def snapshot(tree: MerkleTree) -> list[list[bytes]]:
    return [tree.level(depth, range(FANOUT**depth)) for depth in range(tree.depth + 1)]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(key_names, leaves, max_size=60), st.randoms(use_true_random=False))
def test_the_tree_depends_only_on_its_contents(contents: dict[bytes, bytes], rng: object) -> None:
    pairs = list(contents.items())
    in_order, shuffled, built = MerkleTree(SEGMENTS, FANOUT), MerkleTree(SEGMENTS, FANOUT), MerkleTree(SEGMENTS, FANOUT)
    for key, value in pairs:
        in_order.update(key, value)
    rng.shuffle(pairs)  # type: ignore[attr-defined]
    for key, value in pairs:
        shuffled.update(key, value)
    built.build(pairs)
    assert snapshot(in_order) == snapshot(shuffled) == snapshot(built)
    assert len(in_order) == len(shuffled) == len(built) == len(contents)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(key_names, st.none() | leaves), max_size=120))
def test_updates_and_deletes_round_trip(operations: list[tuple[bytes, bytes | None]]) -> None:
    tree = MerkleTree(SEGMENTS, FANOUT)
    model: dict[bytes, bytes] = {}
    for key, value in operations:
        tree.update(key, value)
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value
    fresh = MerkleTree(SEGMENTS, FANOUT)
    fresh.build(model.items())
    assert snapshot(tree) == snapshot(fresh)
    assert len(tree) == len(model)
    assert sorted(entry for s in range(SEGMENTS) for entry in tree.entries(s)) == sorted(model.items())
    for key in list(model):
        tree.update(key, None)
    assert tree.root() == b"" and all(tree.entries(s) == [] for s in range(SEGMENTS))


# ---- canonical leaves ----

ACTORS = ["n1", "n2", "n3"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=4) | st.none(), st.booleans()), min_size=1, max_size=10),
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=10),
    st.sampled_from([1, 2, 10]),
)
def test_leaf_hashes_are_equal_exactly_when_sibling_sets_are(
    writes: list[tuple[int, bytes | None, bool]], merges: list[tuple[int, int]], threshold: int
) -> None:
    """Three replicas with different pruning thresholds take writes and merge in random orders."""
    thresholds = [threshold, 10, 3]
    records: list[bytes | None] = [None, None, None]
    for step, (at, value, with_context) in enumerate(writes):
        local = replica.LocalReplica(ACTORS[at], Limits(context_prune_threshold=thresholds[at]), 256)
        context = None
        if with_context and records[at] is not None:
            context = versions_codec.encode_context(replica.decode_record(records[at]).read_context(thresholds[at]))  # type: ignore[arg-type]
        records[at] = local.write(b"k", value, context, records[at], now_ms=step).record
        for source, target in merges[step : step + 1]:
            if records[source] is not None:
                merged = replica.merge_records(records[target], records[source], thresholds[target])  # type: ignore[arg-type]
                if merged is not None:
                    records[target] = merged
    held = [r for r in records if r is not None]
    for one in held:
        for other in held:
            same_set = replica.decode_record(one) == replica.decode_record(other)
            assert (leaf_hash(b"k", one) == leaf_hash(b"k", other)) == same_set


# ---- exchanges find exactly the set difference ----

Q = 4
write = st.tuples(st.integers(0, 39), st.sampled_from(["both", "a", "b", "a-new", "b-new", "lose-a", "lose-b"]), st.binary(max_size=3))


@settings(max_examples=120, deadline=None)
@given(
    st.lists(write, max_size=80),
    st.sampled_from([ExchangeLimits(), ExchangeLimits(indexes_max=2, keys_max=1, repairs_inflight_max=1), ExchangeLimits(indexes_max=5, keys_max=3, repairs_inflight_max=4)]),
)
def test_an_exchange_finds_exactly_the_difference_and_leaves_nothing_behind(history: list[tuple[int, str, bytes]], limits: ExchangeLimits) -> None:
    a = Replica("A", Q, segments=SEGMENTS, fanout=FANOUT, limits=limits)
    b = Replica("B", Q, segments=SEGMENTS, fanout=FANOUT, limits=limits)
    link = Link({"A": a, "B": b})
    for step, (index, how, value) in enumerate(history):
        key = b"key%02d" % index
        if how == "both":
            record = a.put(key, value, now_ms=step)
            b.merge(key, record)
        elif how == "a":
            a.put(key, value, now_ms=step)
        elif how == "b":
            b.put(key, value, now_ms=step)
        elif how == "a-new":  # a concurrent write on A alone (no context): siblings after repair
            a.put(key, value + b"!", now_ms=step)
        elif how == "b-new":
            b.put(key, value + b"?", now_ms=step)
        elif how == "lose-a":  # A's disk lost the key
            a.delete(key)
        else:
            b.delete(key)

    def differing(partition: int) -> set[bytes]:
        keys = {k for p, k in a.store if p == partition} | {k for p, k in b.store if p == partition}
        out = set()
        for key in keys:
            mine, theirs = a.store.get((partition, key)), b.store.get((partition, key))
            if mine is None or theirs is None or replica.decode_record(mine) != replica.decode_record(theirs):
                out.add(key)
        return out

    for partition in range(Q):
        expected = differing(partition)
        first = _exchange(a, link, partition)
        assert first.error is None
        assert first.stats.keys_differing == len(expected)
        assert (first.stats.roots_equal == 1) == (not expected)
        assert a.forest.root(partition) == b.forest.root(partition)
        assert differing(partition) == set()
        second = _exchange(a, link, partition)
        assert second.stats.roots_equal == 1 and second.stats.keys_differing == 0
        assert second.stats.messages_sent == 1
    assert a.store.keys() == b.store.keys()


def _exchange(a: Replica, link: Link, partition: int) -> Exchange:
    done: list[Exchange] = []
    exchange = Exchange(
        partition, "B", a.forest, link.network(), read_local=a.read_local, store_local=a.store_local,
        limits=a.limits, prune_threshold=10, on_done=done.append,
    )  # fmt: skip
    exchange.start()
    link.run()
    assert done == [exchange]
    return exchange
