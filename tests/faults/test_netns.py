"""Network faults with real processes: nodes in their own network namespaces (root only).

Each node runs in a namespace joined to a bridge by a veth pair. Setting a node's link down cuts
it off from everyone; writes through the rest keep succeeding at W=2, and once the link is back
the node receives what it missed through hinted handoff.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dynd.client import BlockingClient, key_placement, open_cluster_client
from tests.support import netns
from tests.support.cluster import FAST_TIMERS, poll_until, settled, status
from tests.support.procs import DyndProcess

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root and network namespaces")

NODES = 5
PORT = 7400
WRITES = 200
CLIENT_TIMEOUT_S = 1.5


@pytest.fixture
def lab_cluster(tmp_path: Path) -> Iterator[tuple[netns.NetLab, list[DyndProcess]]]:
    lab = netns.NetLab()
    nodes: list[DyndProcess] = []
    try:
        for index in range(1, NODES + 1):
            ip = lab.add_node(index)
            args = ("--join", nodes[0].address) if nodes else ("--replicas", "3", "--r", "2", "--w", "2", "--partitions", "64")
            node = DyndProcess(
                tmp_path / f"x{index}", name=f"x{index}", config_text=FAST_TIMERS + netns.TRUSTED_LAB, host=ip, port=PORT, wrapper=lab.wrapper(index), extra_args=args
            )
            nodes.append(node.start())
        poll_until("five members everywhere", lambda: settled(nodes, {n.name for n in nodes}))
        yield lab, nodes
    finally:
        lab.heal_all()
        for node in nodes:
            node.stop()
            node.cleanup()
        lab.close()


async def write_keys(seeds: list[str], prefix: str) -> dict[str, bytes]:
    acked = {}
    async with open_cluster_client(seeds, timeout_s=CLIENT_TIMEOUT_S) as client:
        for i in range(WRITES):
            key, value = f"{prefix}-{i}", f"v{i}".encode()
            await client.put(key, value, w=2)  # raises unless acknowledged
            acked[key] = value
    return acked


def test_an_isolated_node_misses_no_write_once_its_link_is_back(lab_cluster: tuple[netns.NetLab, list[DyndProcess]]) -> None:
    lab, nodes = lab_cluster
    cut = nodes[-1]
    lab.isolate(NODES)
    acked = trio.run(write_keys, [n.address for n in nodes[:-1]], "isolated")
    assert len(acked) == WRITES
    lab.heal(NODES)
    poll_until("hints delivered", lambda: all(sum(m.hints_pending for m in status(n).members) == 0 for n in nodes), deadline_s=60)
    with BlockingClient(cut.address) as client:
        ring = client.ring()
        mine = {k: v for k, v in acked.items() if cut.name in key_placement(ring, k).primaries}
        assert mine
        missing = [k for k, v in mine.items() if client.get(k, r=1).values != [v]]
    assert missing == []
