"""Anti-entropy with real processes: replicas that missed writes converge without anyone reading.

Hints and read repair are kept out of the way (no hint delivery, no reads until the end), so only
the Merkle exchanges can bring the replicas together. Two ways to make a replica differ, as issue
6 asks: one node's copy of a partition wiped, and keys written to one replica alone (both done to
the stopped node's LMDB directly). Within a few exchange rounds every replica matches, and the
next exchanges find nothing to repair.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynd.client import BlockingClient, key_placement
from dynd.core.limits import Limits
from dynd.core.ops import DeleteObject, PutObject
from dynd.core.partition import partition_of
from dynd.core.replica import LocalReplica, decode_record
from dynd.storage.lmdb_store import LmdbStore
from tests.support.cluster import FAST_TIMERS, poll_until, run_repair, running_cluster
from tests.support.procs import DyndProcess

AE_PERIOD_MS = 1000
CONFIG = FAST_TIMERS.replace("hint_delivery_interval_ms = 200", "hint_delivery_interval_ms = 3600000") + f"ae_interval_ms = {AE_PERIOD_MS}\n"
KEYS = 300


@pytest.fixture
def three(tmp_path: Path) -> Iterator[list[DyndProcess]]:
    with running_cluster(tmp_path, "e", 3, config_text=CONFIG) as nodes:
        yield nodes


def store_of(node: DyndProcess) -> LmdbStore:
    return LmdbStore(str(node.data_dir / "lmdb"), map_bytes=Limits().lmdb_map_bytes)


def _complete(report: Any) -> Any:
    return report if report.pairs_failed == 0 else None


def exchanged_since(nodes: list[DyndProcess], partitions: set[int], since_ms: float) -> bool:
    for node in nodes:
        with BlockingClient(node.address) as client:
            last = client.cluster_status(local_only=True).last_exchange_ms or []
        if any(last[p] < since_ms for p in partitions):
            return False
    return True


def restart_changed(node: DyndProcess, change: object) -> float:
    node.stop()
    store = store_of(node)
    try:
        change(store)  # type: ignore[operator]
    finally:
        store.close()
    node.start()
    return time.time() * 1000


def replicas_agree(nodes: list[DyndProcess], keys: dict[str, bytes]) -> None:
    """Every node's own store holds every key's value (read after the nodes stop)."""
    for node in nodes:
        node.stop()
        store = store_of(node)
        try:
            missing = [k for k, v in keys.items() if v not in _values(store.get_object(partition_of(k.encode(), 64), k.encode()))]
        finally:
            store.close()
        assert missing == [], f"{node.name} lacks {len(missing)} keys"


def _values(record: bytes | None) -> list[bytes]:
    return [] if record is None else [s.value for s in decode_record(record).siblings if s.value is not None]


def test_a_wiped_partition_and_keys_on_one_replica_converge_in_a_few_exchange_rounds(three: list[DyndProcess]) -> None:
    writer = three[0]
    keys = {f"ae-{i}": f"v{i}".encode() for i in range(KEYS)}
    with BlockingClient(writer.address) as client:
        for key, value in keys.items():
            client.put(key, value, w=3)
        ring = client.ring()
    victim = three[2]
    wiped = partition_of(b"ae-0", 64)
    assert victim.name in key_placement(ring, "ae-0").primaries  # N=3 of 3 nodes: all hold all
    wiped_keys = [k for k in keys if partition_of(k.encode(), 64) == wiped]

    def wipe(store: LmdbStore) -> None:
        store.write([DeleteObject(wiped, key) for key, _ in store.iter_partition(wiped)])

    lonely = {f"lonely-{i}": f"only-here-{i}".encode() for i in range(100)}

    def write_alone(store: LmdbStore) -> None:
        replica = LocalReplica("injected", Limits(), 64)
        store.write(
            [PutObject(partition_of(k.encode(), 64), k.encode(), replica.write(k.encode(), v, None, None, 1).record) for k, v in lonely.items()]
        )

    restart_changed(victim, wipe)
    restarted_ms = restart_changed(three[1], write_alone)
    touched = {wiped} | {partition_of(k.encode(), 64) for k in lonely}
    # Each node's status says when it last compared a partition with any peer, not with which.
    # After the last restart, the first round of exchanges of a touched partition puts its keys
    # on at least two nodes (whoever held them and whoever compared with it); in the next round
    # the third node compares with one of those two. A third round covers an exchange that began
    # before a round's mark and ended after it. So three rounds, each marked by every node having
    # compared every touched partition since the previous mark; then a fresh exchange of
    # everything finds no difference. (Counting rounds, not a stopwatch: a busy machine only
    # makes the rounds later.)
    since_ms = restarted_ms
    for round_number in (1, 2, 3):
        poll_until(
            f"exchange round {round_number} of every touched partition on every node",
            lambda since=since_ms: exchanged_since(three, touched, since),
            deadline_s=3 * AE_PERIOD_MS / 1000 + 30,
        )
        since_ms = time.time() * 1000
    # Every exchange must complete (a peer just restarted can refuse one for a moment: poll), and
    # none may find anything to repair.
    reports = [poll_until(f"a complete exchange through {node.name}", lambda: _complete(run_repair(node))) for node in three]
    assert [report.keys_differing for report in reports] == [0, 0, 0], "the next exchanges repair nothing"
    assert len(wiped_keys) > 0
    replicas_agree(three, {**keys, **lonely})
