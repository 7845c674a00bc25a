"""A node whose data directory is wiped rejoins under a new actor epoch (Riak's "kv679").

Before the wipe, the node coordinated several writes of one key, so every replica knows its
counters 1..3. After the wipe it starts counting again; were its actor the same, its next write
would carry a dot the other replicas believe they have already seen, and merging would drop it:
an acknowledged write lost. With a fresh epoch the write survives everywhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dynd.client import BlockingClient
from tests.support.cluster import poll_until, running_cluster, settled


def test_a_wiped_node_loses_no_write_it_coordinates_after_rejoining(tmp_path: Path) -> None:
    with running_cluster(tmp_path, "w", 3) as nodes:
        wiped = nodes[2]
        with BlockingClient(wiped.address) as client:
            context = None
            for value in (b"one", b"two", b"three"):
                context = client.put("kv679", value, context, w=3)
        wiped.stop()
        shutil.rmtree(wiped.data_dir)
        wiped.start()  # empty data directory: it joins through --join again, as at first start
        poll_until("the wiped node back in the cluster", lambda: settled(nodes, {"w1", "w2", "w3"}))
        with BlockingClient(wiped.address) as client:
            client.put("kv679", b"after-wipe", w=3)  # no context: a blind write, acknowledged by all three
        for node in nodes:
            with BlockingClient(node.address) as reader:
                # poll: a replica just restarted may still count as down for a moment
                values = poll_until(f"a read of all three replicas through {node.name}", lambda: reader.get("kv679", r=3).values)
                assert b"after-wipe" in values, f"{node.name} lost the write"
