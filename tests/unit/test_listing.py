"""A node's part of a key listing (`dynd.core.listing.scan_local`): one bucket's live keys, in
order, within its bounds, saying when a bound cut it short."""

from __future__ import annotations

from dynd.core.limits import Limits
from dynd.core.listing import scan_local
from dynd.core.ops import PutObject
from dynd.core.replica import LocalReplica
from dynd.protocol.buckets import bucket_key, bucket_prefix
from dynd.testing import MemoryStorage

PARTITIONS = 8


def stored(keys: dict[bytes, bool]) -> MemoryStorage:
    """A store holding `keys`, each live (True) or deleted (False)."""
    replica = LocalReplica("n1", Limits(), PARTITIONS)
    storage = MemoryStorage(autocommit=True)
    for key, live in keys.items():
        plan = replica.write(key, b"v", None, None, now_ms=1)
        if not live:
            plan = replica.write(key, None, plan.reply_context, plan.record, now_ms=2)
        storage.submit([PutObject(plan.partition, key, plan.record)], lambda error: None)
    return storage


def test_a_scan_finds_one_buckets_live_keys_and_nothing_else() -> None:
    ours = {bucket_key(b"cart", f"k{i}".encode()): True for i in range(20)}
    others = {bucket_key(b"car", b"k1"): True, bucket_key(b"carts", b"k1"): True, b"cart": True, b"plain": True}
    deleted = {bucket_key(b"cart", b"gone"): False}
    storage = stored({**ours, **others, **deleted})
    keys, scanned, complete = scan_local(storage, range(PARTITIONS), bucket_prefix(b"cart"), limit=100, scan_max=1000)
    assert sorted(keys) == sorted(ours) and complete and scanned == list(range(PARTITIONS))


def test_a_scan_stops_at_its_bounds_and_says_so() -> None:
    storage = stored({bucket_key(b"b", f"k{i}".encode()): True for i in range(30)})
    keys, _, complete = scan_local(storage, range(PARTITIONS), bucket_prefix(b"b"), limit=5, scan_max=1000)
    assert len(keys) == 5 and not complete
    keys, scanned, complete = scan_local(storage, range(PARTITIONS), bucket_prefix(b"b"), limit=100, scan_max=10)
    assert len(keys) == 10 and not complete and len(scanned) < PARTITIONS
