"""Snapshots in the simulator (issue 17): a node crashes, members join and the compactor folds
their events into a snapshot while it is down, and it comes back at another address. It catches
up from the snapshot, records its address again above it, and every node ends with one
membership, the ring the plain fold of its events gives, and a write at W=3 reaching it."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from dynd.protocol import messages
from dynd.sim.network import Endpoint
from dynd.sim.process import Process
from dynd.sim.world import SIM_LIMITS, World
from tests.support.membership_oracle import replayed

LIMITS = dataclasses.replace(SIM_LIMITS, membership_compact_events=2, membership_settle_ms=6_000)
MOVED = "n5-moved.sim:7400"


def call(world: World, endpoint: Endpoint, address: str, build: Any) -> Any:
    answers: list[Any] = []
    endpoint.send_to_address(address, build, answers.append)
    world.run_for(10_000, stop=lambda: bool(answers))
    assert answers, f"no answer from {address}"
    return answers[0]


def agreed(world: World) -> bool:
    nodes = [h.node for h in world.hosts.values() if h.up and h.node is not None]
    return len(nodes) == len(world.hosts) and len({n.cluster.membership.digest for n in nodes}) == 1


def test_a_node_down_across_a_compaction_catches_up_from_the_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    world = World(11, nodes=5, params=(3, 2, 2, 32), limits=LIMITS)
    world.net.heal()  # no loss: what is under test is the catch-up, not the retries
    admin = Endpoint(world.net, "admin", Process("admin", 1, world._exception), 10_000)
    world.run_for(3_000)
    n1, n5 = world.hosts["n1"], world.hosts["n5"]
    world.crash(n5)
    stamp_when_down = n1.node.cluster.membership.stamp  # type: ignore[union-attr]
    for _ in range(3):
        joiner = world.add_host()
        assert isinstance(call(world, admin, joiner.address, lambda rid: messages.ClusterJoin(id=rid, seed=n1.address)), messages.ClusterOk)
        world.run_for(2_000)
    world.run_for(20_000)
    compacted = n1.node.cluster.membership  # type: ignore[union-attr]
    assert compacted.base.stamp > stamp_when_down, "the compactor made a snapshot past what n5 holds"

    world.move(n5, MOVED)
    with caplog.at_level(logging.WARNING, logger="dynd.cluster"):
        world.restart(n5)
        world.run_for(30_000, stop=lambda: agreed(world))
    assert agreed(world), {h.name: (h.node.cluster.membership.digest.hex()[:8] if h.node else None) for h in world.hosts.values()}
    assert "recording again address of n5" in caplog.text
    final = n1.node.cluster.membership  # type: ignore[union-attr]
    assert final.address_of("n5") == MOVED
    assert (final.members, final.ring) == replayed(final.params, final.events, final.base)
    answer = call(world, admin, n1.address, lambda rid: messages.Put(id=rid, key=b"after", value=b"v", w=3))
    assert isinstance(answer, messages.PutOk), answer
    assert world.failures == []
