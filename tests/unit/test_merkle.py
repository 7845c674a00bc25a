"""The per-partition hash trees: updates, levels, segment pages, the canonical leaf hash."""

from __future__ import annotations

import pytest

from dynd.core import replica
from dynd.core.limits import Limits
from dynd.core.merkle import Forest, MerkleTree, check_shape, leaf_hash


def leaf(n: int) -> bytes:
    return n.to_bytes(16, "big")


def keys(n: int) -> list[bytes]:
    return [b"key-%04d" % i for i in range(n)]


def test_an_empty_tree_hashes_to_nothing() -> None:
    tree = MerkleTree(16, 4)
    assert tree.depth == 2
    assert tree.root() == b""
    assert tree.level(1, range(4)) == [b""] * 4
    assert tree.entries(3) == []


@pytest.mark.parametrize(("segments", "fanout", "depth"), [(1, 2, 0), (16, 4, 2), (256, 16, 2), (4096, 16, 3), (1024, 32, 2)])
def test_shapes(segments: int, fanout: int, depth: int) -> None:
    assert check_shape(segments, fanout) == depth


@pytest.mark.parametrize(("segments", "fanout"), [(100, 10), (32, 4), (16, 3), (16, 1), (2**21, 2)])
def test_impossible_shapes_are_refused(segments: int, fanout: int) -> None:
    with pytest.raises(ValueError):
        check_shape(segments, fanout)


def test_update_then_delete_returns_to_empty() -> None:
    tree = MerkleTree(16, 4)
    for i, key in enumerate(keys(50)):
        tree.update(key, leaf(i + 1))
    assert len(tree) == 50 and tree.root() != b""
    for key in keys(50):
        tree.update(key, None)
    assert len(tree) == 0
    assert tree.root() == b""
    assert all(h == b"" for depth in range(3) for h in tree.level(depth, range(4**depth)))
    assert all(tree.entries(s) == [] for s in range(16))


def test_each_level_is_the_xor_of_the_level_below() -> None:
    tree = MerkleTree(64, 4)
    for i, key in enumerate(keys(300)):
        tree.update(key, leaf(i * 7919 + 1))
    for depth in range(tree.depth):
        parents = [int.from_bytes(h or bytes(16), "big") for h in tree.level(depth, range(4**depth))]
        children = [int.from_bytes(h or bytes(16), "big") for h in tree.level(depth + 1, range(4 ** (depth + 1)))]
        for index, value in enumerate(parents):
            xor = 0
            for child in children[index * 4 : index * 4 + 4]:
                xor ^= child
            assert value == xor


def test_a_changed_leaf_changes_the_root_and_changing_it_back_restores_it() -> None:
    tree = MerkleTree(16, 4)
    for i, key in enumerate(keys(20)):
        tree.update(key, leaf(i + 1))
    before = tree.root()
    tree.update(b"key-0003", leaf(999))
    assert tree.root() != before
    assert tree.hash_of(b"key-0003") == leaf(999)
    tree.update(b"key-0003", leaf(4))
    assert tree.root() == before
    tree.update(b"key-0003", leaf(4))  # the same leaf again: nothing changes
    tree.update(b"absent", None)  # deleting an absent key: nothing changes
    assert tree.root() == before and len(tree) == 20


def test_build_equals_incremental_updates_in_any_order() -> None:
    pairs = [(key, leaf(i + 1)) for i, key in enumerate(keys(200))]
    forward, backward, built = MerkleTree(64, 8), MerkleTree(64, 8), MerkleTree(64, 8)
    for key, value in pairs:
        forward.update(key, value)
    for key, value in reversed(pairs):
        backward.update(key, value)
    built.build(pairs + [(pairs[0][0], leaf(5000)), (pairs[0][0], pairs[0][1])])  # a repeated key: last wins
    for depth in range(3):
        width = 8**depth
        assert forward.level(depth, range(width)) == backward.level(depth, range(width)) == built.level(depth, range(width))
    assert all(forward.entries(s) == built.entries(s) for s in range(64))


def test_levels_refuse_out_of_range_nodes() -> None:
    tree = MerkleTree(16, 4)
    with pytest.raises(ValueError):
        tree.level(3, [0])
    with pytest.raises(ValueError):
        tree.level(1, [4])
    with pytest.raises(ValueError):
        tree.level(0, [-1])


def test_segment_entries_are_in_key_order_and_bounded() -> None:
    tree = MerkleTree(4, 2)
    for i, key in enumerate(reversed(keys(40))):
        tree.update(key, leaf(i + 1))
    for segment in range(4):
        listed = tree.entries(segment)
        assert [k for k, _ in listed] == sorted(k for k in keys(40) if tree.segment_of(k) == segment)
        assert all(tree.hash_of(k) == h for k, h in listed)
        if len(listed) >= 3:
            low, high = listed[0][0], listed[2][0]
            assert tree.entries(segment, after=low, until=high) == listed[1:3]


def test_a_segment_page_walk_lists_every_entry_once() -> None:
    forest = Forest(4, segments=16, fanout=4)
    for i, key in enumerate(keys(100)):
        forest.note_put(1, key, _record(key, b"v%d" % i))
    expected = [entry for segment in range(16) for entry in forest.entries(1, segment)]
    for limit in (1, 3, 7, 100, 1000):
        todo, after, seen = list(range(16)), None, []
        while todo:
            page, complete, after = forest.segment_page(1, todo[:5], after, limit)
            assert len(page) <= limit
            assert complete > 0 or after is not None
            seen += page
            todo = todo[complete:]
        assert seen == expected


def test_the_forest_creates_and_drops_trees_with_their_keys() -> None:
    forest = Forest(8, segments=16, fanout=4)
    assert forest.held() == [] and forest.root(3) == b""
    record = _record(b"k", b"v")
    forest.note_put(3, b"k", record)
    assert forest.held() == [3] and forest.key_count == 1
    root = forest.root(3)
    forest.note_record(3, b"k", None)
    assert forest.held() == [] and forest.root(3) == b""
    forest.build(3, [(b"k", record)])
    assert forest.root(3) == root
    forest.build(3, [])
    assert forest.held() == []
    forest.note_delete(5, b"nothing")  # no tree: nothing to do
    assert not forest.ready
    forest.mark_ready()
    assert forest.ready


# ---- the canonical leaf hash ----

LIMITS = Limits()


def _record(key: bytes, value: bytes, actor: str = "n1", now_ms: int = 5) -> bytes:
    return replica.LocalReplica(actor, LIMITS, 256).write(key, value, None, None, now_ms).record


def test_equal_sibling_sets_hash_equal_whatever_the_prune_threshold() -> None:
    # 14 actors overwrite the key in turn, each with the context of the write before: `seen`
    # names 14 actors, so the read context stored in the record is pruned differently at
    # thresholds 10 and 20, while the sibling set is the same.
    record, context = None, None
    for i in range(14):
        plan = replica.LocalReplica(f"actor{i:02d}", LIMITS, 256).write(b"k", b"v%d" % i, context, record, 100 + i)
        record, context = plan.record, plan.reply_context
    assert record is not None
    obj = replica.decode_record(record)
    at_10, at_20 = replica.encode_record(obj, 10), replica.encode_record(obj, 20)
    assert at_10 != at_20, "the records differ in their pruned context"
    assert replica.decode_record(at_10) == replica.decode_record(at_20)
    assert leaf_hash(b"k", at_10) == leaf_hash(b"k", at_20)
    # merge_records stores a record it receives for a missing key as sent: the leaf stays equal
    assert replica.merge_records(None, at_20, 10) == at_20


def test_leaf_hashes_stay_what_earlier_builds_computed() -> None:
    # Peers running an earlier build of the same protocol version compare trees with this one:
    # these digests were computed before the record format moved behind replica.canonical_parts.
    a = replica.LocalReplica("n1", LIMITS, 256).write(b"k", b"v1", None, None, 5)
    b = replica.LocalReplica("n2", LIMITS, 256).write(b"k", b"v2", None, None, 6)
    merged = replica.merge_records(a.record, b.record, LIMITS.context_prune_threshold)
    deleted = replica.LocalReplica("n3", LIMITS, 256).write(b"k", None, a.reply_context, a.record, 7).record
    assert merged is not None
    assert [leaf_hash(b"k", record).hex() for record in (a.record, merged, deleted)] == [
        "5efa2a52fdb8b2f0881a5d8566a20a95",
        "5ac5412c2116046ccd4425919e72fc3c",
        "45a76f88b976cd951074cf54084f0d5f",
    ]


def test_different_sibling_sets_or_keys_hash_differently() -> None:
    one, two = _record(b"k", b"v1"), _record(b"k", b"v2")
    assert leaf_hash(b"k", one) != leaf_hash(b"k", two)
    same_bytes_other_key = _record(b"j", b"v1")
    assert same_bytes_other_key == one, "two keys can hold byte-identical records"
    assert leaf_hash(b"j", one) != leaf_hash(b"k", one)


def test_identical_records_under_two_keys_do_not_cancel() -> None:
    forest = Forest(1, segments=1, fanout=2)
    record = _record(b"a", b"same")
    forest.note_put(0, b"a", record)
    forest.note_put(0, b"b", record)
    assert forest.root(0) != b""
