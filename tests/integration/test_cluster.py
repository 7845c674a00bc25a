"""A real cluster of dynd processes on 127.0.0.1: replication, R and W, siblings across
coordinators, read repair, and ownership moving when nodes join and leave."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from dynd.client import BlockingClient, key_placement, open_client, open_cluster_client
from dynd.protocol.errors import DynError, StaleRing
from tests.support.cluster import FAST_TIMERS, POLL_S, poll_until, settled, start_node, status
from tests.support.procs import DyndProcess

# Hints would reach a replica that missed writes before any read could; these tests watch read
# repair do it, so hints stay put (tests/faults/test_hinted_handoff.py covers their delivery).
NO_HINT_DELIVERY = FAST_TIMERS.replace("hint_delivery_interval_ms = 200", "hint_delivery_interval_ms = 3600000")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DyndProcess]]:
    base = tmp_path_factory.mktemp("cluster")
    first = start_node(base, "c1", config_text=NO_HINT_DELIVERY)
    nodes = [first, start_node(base, "c2", first, config_text=NO_HINT_DELIVERY), start_node(base, "c3", first, config_text=NO_HINT_DELIVERY)]
    try:
        poll_until("three members everywhere", lambda: settled(nodes, {"c1", "c2", "c3"}))
        yield nodes
    finally:
        for node in nodes:
            node.stop()
            node.cleanup()


def test_a_put_through_one_node_reads_back_through_every_other(cluster: list[DyndProcess]) -> None:
    with BlockingClient(cluster[0].address) as writer:
        writer.put("spread", b"everywhere")
    for node in cluster[1:]:
        with BlockingClient(node.address) as reader:
            assert reader.get("spread").values == [b"everywhere"]


def test_w_all_puts_the_value_on_every_replica(cluster: list[DyndProcess]) -> None:
    with BlockingClient(cluster[1].address) as writer:
        writer.put("all-three", b"v", w=3)
    for node in cluster:  # r=1 at a primary answers from its own replica alone
        with BlockingClient(node.address) as reader:
            assert reader.get("all-three", r=1).values == [b"v"]


def test_r_and_w_outside_1_to_n_are_refused(cluster: list[DyndProcess]) -> None:
    with BlockingClient(cluster[0].address) as client:
        for call in (lambda: client.put("k", b"v", w=4), lambda: client.get("k", r=0)):
            with pytest.raises(DynError, match="outside 1..n=3"):
                call()


def test_concurrent_puts_with_one_context_through_different_coordinators_are_siblings(cluster: list[DyndProcess]) -> None:
    with BlockingClient(cluster[0].address) as a, BlockingClient(cluster[2].address) as c:
        base = a.put("cart", b"empty", w=3)
        a.put("cart", b"book", base, w=3)
        c.put("cart", b"pen", base, w=3)
        result = a.get("cart", r=3)
        assert sorted(result.values) == [b"book", b"pen"]
        c.put("cart", b"book+pen", result.context, w=3)
        assert a.get("cart", r=3).values == [b"book+pen"]


def test_read_repair_brings_a_stale_replica_up_to_date(cluster: list[DyndProcess]) -> None:
    stale = cluster[2]
    stale.stop()
    try:
        with BlockingClient(cluster[0].address) as client:
            client.put("repaired", b"fresh", w=2)
    finally:
        stale.start()
    with BlockingClient(stale.address) as direct:
        assert direct.get("repaired", r=1).values == [], "the restarted replica missed the write"
    with BlockingClient(cluster[0].address) as client:
        # Right after the restart the coordinator may still count the replica as down: poll.
        poll_until("a read of all three replicas", lambda: client.get("repaired", r=3).values == [b"fresh"])
    with BlockingClient(stale.address) as direct:
        poll_until("read repair of the stale replica", lambda: direct.get("repaired", r=1).values == [b"fresh"])


def test_a_write_that_cannot_reach_w_says_how_many_stored_it(cluster: list[DyndProcess]) -> None:
    down = cluster[1]
    down.stop()
    try:
        with BlockingClient(cluster[0].address) as client:
            # The stopped replica failed to answer, or (once the failure detector saw it) was not asked.
            stored = r"w=3 cannot be met: 2 of 3 replicas stored the write \(this node among them\), 1 (failed|is down)"
            with pytest.raises(DynError, match=stored) as caught:
                client.put("needs-three", b"v", w=3)
            assert "not undone" in caught.value.message
    finally:
        down.start()


async def _write_load(address: str, prefix: str, stop: trio.Event, acked: dict[str, bytes]) -> None:
    async with open_client(address, timeout_s=5) as client:
        for i in range(100_000):
            if stop.is_set():
                return
            key, value = f"{prefix}{i:05d}", f"value-{i}".encode()
            try:
                await client.put(key, value)
            except DynError:
                continue
            acked[key] = value


def _every_acked_key_reads_back(address: str, acked: dict[str, bytes]) -> None:
    with BlockingClient(address) as client:
        missing = [key for key, value in acked.items() if value not in client.get(key).values]
    assert missing == [], f"{len(missing)} acknowledged keys lost, e.g. {missing[:5]}"


def _balanced(node: DyndProcess, members: int, partitions: int = 64) -> None:
    counts = [m.partitions for m in status(node).members if m.status == "joined"]
    assert len(counts) == members
    assert max(counts) - min(counts) <= 1 and sum(counts) == partitions


def test_a_node_joins_under_write_load_and_then_one_leaves(tmp_path: Path) -> None:
    first = start_node(tmp_path, "j1")
    nodes = [first, start_node(tmp_path, "j2", first), start_node(tmp_path, "j3", first)]
    try:
        poll_until("three members", lambda: settled(nodes, {"j1", "j2", "j3"}))
        acked: dict[str, bytes] = {}

        async def load_while(change: Callable[[], None]) -> None:
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write_load, first.address, f"load{len(acked)}-", stop, acked)
                written_before = len(acked)
                await trio.to_thread.run_sync(change)
                with trio.move_on_after(10):
                    while len(acked) < written_before + 200:
                        await trio.sleep(POLL_S)
                stop.set()

        trio.run(load_while, lambda: nodes.append(start_node(tmp_path, "j4", first)))
        poll_until("four members, transfers done", lambda: settled(nodes, {"j1", "j2", "j3", "j4"}))
        assert len(acked) > 100
        _balanced(first, 4)
        _every_acked_key_reads_back(nodes[3].address, acked)
        _routing_follows_the_ring(nodes)

        def leave() -> None:
            with BlockingClient(nodes[1].address) as client:
                client.cluster_leave()

        trio.run(load_while, leave)
        remaining = [nodes[0], nodes[2], nodes[3]]
        poll_until("j2 handed off and removed", lambda: settled(remaining, {"j1", "j3", "j4"}))
        poll_until("j2 recorded as removed", lambda: {m.name: m.status for m in status(first).members}.get("j2") == "removed")
        _balanced(first, 3)
        _every_acked_key_reads_back(first.address, acked)
    finally:
        for node in nodes:
            node.stop()


def _routing_follows_the_ring(nodes: list[DyndProcess]) -> None:
    """With four nodes and N=3 every key has a node that is not its primary: a client routing by an
    old ring is told so, and the routing client sends straight to a primary."""
    by_name = {node.name: node for node in nodes}
    with BlockingClient(nodes[0].address) as client:
        ring = client.ring()
    placement = key_placement(ring, "routed")
    outsider = by_name[placement.fallbacks[0]]

    async def check() -> None:
        async with open_client(outsider.address) as direct:
            with pytest.raises(StaleRing):
                await direct.put("routed", b"v", ring=b"an old ring")
            forwarded = await direct.put("routed", b"forwarded")  # without a ring version it forwards
        async with open_cluster_client(outsider.address) as routed:
            context = await routed.put("routed", b"routed", forwarded)
            assert (await routed.get("routed")).values == [b"routed"]
            await routed.delete("routed", context)
            assert (await routed.get("routed")).values == []

    trio.run(check)


def test_a_running_node_with_data_joins_and_its_keys_move_to_their_owners(tmp_path: Path) -> None:
    seed = start_node(tmp_path, "s1")
    loner = DyndProcess(tmp_path / "s2", name="s2", config_text=FAST_TIMERS, extra_args=("--partitions", "64")).start()
    # (a running node joining through dynctl keeps its own Q, so it must already match the cluster's)
    nodes = [seed, loner]
    try:
        with BlockingClient(loner.address) as client:
            written = {f"solo{i:03d}": client.put(f"solo{i:03d}", b"from-the-loner") for i in range(40)}
            message = client.cluster_join(seed.address)
        assert "joined" in message
        poll_until("two members, transfers done", lambda: settled(nodes, {"s1", "s2"}))
        # With two members and N=3 both nodes are primaries of every key, so nothing is handed off:
        # a quorum read through the seed finds the loner's copy and repairs the seed's (until
        # anti-entropy, read repair is what copies data a node held before it joined).
        with BlockingClient(seed.address) as client:
            assert all(client.get(key).values == [b"from-the-loner"] for key in written)
            poll_until("read repair copied every key to the seed", lambda: all(client.get(key, r=1).values == [b"from-the-loner"] for key in written))
        loner.stop()
        with BlockingClient(seed.address) as client:
            assert "removed" in client.cluster_remove("s2")
            view = {m.name: (m.status, m.partitions) for m in client.cluster_status().members}
            assert view == {"s1": ("joined", 64), "s2": ("removed", 0)}
            assert all(client.get(key).values == [b"from-the-loner"] for key in written)
    finally:
        for node in nodes:
            node.stop()
