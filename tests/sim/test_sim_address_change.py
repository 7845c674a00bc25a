"""A node restarted at another address (a new `advertise`): the simulated cluster learns it.

The node records an address event at start (`ClusterView`), gossip carries it to the others, and
from then on they reach it, and its failure-detector datagrams are accepted, at the new address
only. Without the event they would keep calling the old address and declare the node dead.
"""

from __future__ import annotations

from typing import Any

from dynd.protocol import messages
from dynd.sim.network import Endpoint
from dynd.sim.process import Process
from dynd.sim.world import World

NEW_ADDRESS = "n3-moved.sim:7400"
SETTLE_MS = 20_000


def call(world: World, endpoint: Endpoint, address: str, build: Any) -> Any:
    answers: list[Any] = []
    endpoint.send_to_address(address, build, answers.append)
    world.run_for(10_000, stop=lambda: bool(answers))
    assert answers, f"no answer from {address}"
    return answers[0]


def everyone_sees_n3_moved(world: World) -> bool:
    for host in world.hosts.values():
        node = host.node
        if node is None or node.cluster.membership.address_of("n3") != NEW_ADDRESS:
            return False
        others = [name for name in world.hosts if name != host.name]
        if any(node.swim.status(name) != "alive" for name in others):
            return False
    return True


def test_a_node_restarted_at_a_new_address_is_reached_there_by_every_member() -> None:
    world = World(4, nodes=3, params=(3, 2, 2, 32))
    world.net.heal()  # no loss or duplication: the address change is what is under test
    client = Endpoint(world.net, "client", Process("client", 1, world._exception), 10_000)
    world.run_for(2_000)
    n1, n3 = world.hosts["n1"], world.hosts["n3"]
    old_address = n3.address
    assert isinstance(call(world, client, n1.address, lambda rid: messages.Put(id=rid, key=b"k", value=b"before", w=3)), messages.PutOk)

    world.crash(n3)
    world.move(n3, NEW_ADDRESS)
    world.restart(n3)
    world.run_for(SETTLE_MS, stop=lambda: everyone_sees_n3_moved(world))
    assert everyone_sees_n3_moved(world), {
        h.name: (h.node.cluster.membership.address_of("n3"), {m: h.node.swim.status(m) for m in world.hosts if m != h.name})
        for h in world.hosts.values()
        if h.node is not None
    }
    # Every replica must answer: the write through n1 at W=3 reaches n3 only at its new address.
    assert isinstance(call(world, client, n1.address, lambda rid: messages.Put(id=rid, key=b"k2", value=b"after", w=3)), messages.PutOk)
    answer = call(world, client, NEW_ADDRESS, lambda rid: messages.Get(id=rid, key=b"k", r=3))
    assert isinstance(answer, messages.GetOk) and [s.value for s in answer.siblings] == [b"before"], answer
    assert isinstance(call(world, client, old_address, lambda rid: messages.Ping(id=rid)), Exception)
    assert world.failures == []
