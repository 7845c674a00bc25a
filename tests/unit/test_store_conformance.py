"""One conformance suite, run against every Store implementation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dynd.protocol.errors import KeyTooLarge, StorageFull
from dynd.storage.base import DeleteHint, DeleteObject, PutHint, PutMeta, PutObject, Store
from dynd.storage.lmdb_store import LmdbStore, StoreInUse
from dynd.storage.memory import MemoryStore


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        engine: Store = MemoryStore()
    else:
        engine = LmdbStore(str(tmp_path / "lmdb"), map_bytes=64 * 1024 * 1024)
    yield engine
    engine.close()


def test_objects_round_trip_and_delete(store: Store) -> None:
    assert store.get_object(3, b"k") is None
    store.write([PutObject(3, b"k", b"one")])
    assert store.get_object(3, b"k") == b"one"
    assert store.get_object(4, b"k") is None, "the partition is part of the key"
    store.write([PutObject(3, b"k", b"two")])
    assert store.get_object(3, b"k") == b"two"
    store.write([DeleteObject(3, b"k")])
    assert store.get_object(3, b"k") is None


def test_deleting_a_missing_object_is_harmless(store: Store) -> None:
    store.write([DeleteObject(1, b"nothing"), DeleteHint("n2", 1, b"nothing")])
    assert store.get_object(1, b"nothing") is None


def test_a_partition_streams_in_key_order_and_only_its_own_keys(store: Store) -> None:
    store.write([PutObject(p, k, p.to_bytes(2, "big") + k) for p in (0, 1, 2, 65535) for k in (b"b", b"a", b"c\x00", b"c")])
    for partition in (0, 1, 2, 65535):
        assert list(store.iter_partition(partition)) == [
            (k, partition.to_bytes(2, "big") + k) for k in (b"a", b"b", b"c", b"c\x00")
        ]
    assert list(store.iter_partition(7)) == []


def test_hints_are_kept_per_target(store: Store) -> None:
    store.write([PutHint("n2", 5, b"k1", b"h1"), PutHint("n2", 1, b"k2", b"h2"), PutHint("n22", 0, b"k", b"other")])
    assert list(store.iter_hints("n2")) == [(1, b"k2", b"h2"), (5, b"k1", b"h1")]
    assert list(store.iter_hints("n22")) == [(0, b"k", b"other")]
    store.write([DeleteHint("n2", 1, b"k2")])
    assert list(store.iter_hints("n2")) == [(5, b"k1", b"h1")]
    assert list(store.iter_hints("nobody")) == []
    assert store.get_hint("n2", 5, b"k1") == b"h1"
    assert store.get_hint("n2", 1, b"k2") is None
    assert store.get_hint("n22", 5, b"k1") is None
    assert store.hint_counts() == {"n2": 1, "n22": 1}


def test_meta_round_trips(store: Store) -> None:
    assert store.get_meta("ring") is None
    store.write([PutMeta("ring", b"r1")])
    store.write([PutMeta("ring", b"r2")])
    assert store.get_meta("ring") == b"r2"


def test_a_batch_applies_whole_or_not_at_all(store: Store) -> None:
    store.write([PutObject(0, b"before", b"x")])
    with pytest.raises(KeyTooLarge):
        store.write([PutObject(0, b"fine", b"y"), PutObject(0, b"k" * 600, b"z")])
    assert store.get_object(0, b"fine") is None
    assert store.get_object(0, b"before") == b"x"


def test_lmdb_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "lmdb")
    first = LmdbStore(path, map_bytes=16 * 1024 * 1024)
    first.write([PutObject(9, b"k", b"v"), PutMeta("name", b"n1"), PutHint("n2", 9, b"k", b"h")])
    first.close()
    second = LmdbStore(path, map_bytes=16 * 1024 * 1024)
    try:
        assert second.get_object(9, b"k") == b"v"
        assert second.get_meta("name") == b"n1"
        assert list(second.iter_hints("n2")) == [(9, b"k", b"h")]
    finally:
        second.close()


def test_lmdb_refuses_a_second_opener(tmp_path: Path) -> None:
    path = str(tmp_path / "lmdb")
    first = LmdbStore(path, map_bytes=16 * 1024 * 1024)
    try:
        with pytest.raises(StoreInUse):
            LmdbStore(path, map_bytes=16 * 1024 * 1024)
    finally:
        first.close()
    LmdbStore(path, map_bytes=16 * 1024 * 1024).close()  # free again once closed


def test_lmdb_full_map_is_a_clear_error_and_keeps_what_was_written(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "lmdb"), map_bytes=256 * 1024)
    try:
        written = 0
        with pytest.raises(StorageFull, match="lmdb_map_bytes"):
            for i in range(1000):
                store.write([PutObject(0, b"k%04d" % i, b"v" * 4000)])
                written += 1
        assert written > 0
        assert store.get_object(0, b"k0000") == b"v" * 4000
        store.write([DeleteObject(0, b"k0000")])  # the store still takes writes that fit
    finally:
        store.close()
