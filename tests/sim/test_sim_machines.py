"""Machines that run several nodes, and the host-crash fault that takes a whole machine down.

`make test` runs SEEDS_DEFAULT seeds of 9 nodes on 3 machines in 3 zones with every fault kind. A
longer run:

    DYND_SIM_MACHINE_SEEDS=0..999 python -m pytest tests/sim/test_sim_machines.py -m slow

(the same as `python -m dynd.sim --seeds 0..999 --nodes 9 --nodes-per-machine 3 --zones 3`).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from dynd.core.partition import partition_of
from dynd.protocol import messages
from dynd.sim.__main__ import main as sim_main
from dynd.sim.__main__ import parse_seeds
from dynd.sim.checkers import FinalState, check_placement
from dynd.sim.faults import FAULT_KINDS, Fault
from dynd.sim.network import Endpoint
from dynd.sim.process import Process
from dynd.sim.run import SimConfig, Simulation, run_seed
from dynd.sim.world import World, machine_layout

SEEDS_DEFAULT = range(0, 12)
MACHINES = dict(nodes=9, nodes_per_machine=3, zones=3)


def test_nodes_are_laid_out_on_machines_in_zones() -> None:
    assert machine_layout(7, 3) == [3, 3, 1]
    assert machine_layout(6, (2, 4)) == [2, 4]
    assert machine_layout(5, 1) == [1] * 5
    world = World(0, nodes=7, params=(3, 2, 2, 32), nodes_per_machine=3, zones=2)
    assert {name: (m.location, m.hosts) for name, m in world.machines.items()} == {
        "host-1": ("zone-1/host-1", ["n1", "n2", "n3"]),
        "host-2": ("zone-2/host-2", ["n4", "n5", "n6"]),
        "host-3": ("zone-1/host-3", ["n7"]),
    }
    assert world.location_of("n5") == "zone-2/host-2"
    worker = world.add_host("host-3")
    assert (worker.name, worker.machine, worker.location) == ("n8", "host-3", "zone-1/host-3")
    alone = world.add_host()
    assert (alone.machine, alone.location) == ("host-4", "zone-2/host-4")
    assert all(host.up for host in world.hosts.values())


@pytest.mark.parametrize(
    ("nodes", "layout", "zones", "error"),
    [
        (6, (2, 3), 1, "lays out 5 nodes, not 6"),
        (5, 0, 1, "at least 1"),
        (3, (3, 0), 1, "at least one node"),
        (3, 1, 0, "zones must be at least 1"),
    ],
)
def test_a_bad_layout_is_refused(nodes: int, layout: Any, zones: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        World(0, nodes=nodes, params=(3, 2, 2, 32), nodes_per_machine=layout, zones=zones)


def test_the_command_line_refuses_a_bad_layout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sim_main(["--seed", "1", "--nodes", "6", "--nodes-per-machine", "2,3"])
    assert "lays out 5 nodes, not 6" in capsys.readouterr().err


def test_host_crash_takes_every_node_of_the_machine_down_until_it_ends() -> None:
    """host-1 runs n1-n3. A crash of n1 ends while its machine is down: n1 stays down with the
    others, and all three start again, once each, when the machine comes back."""
    schedule = (Fault(900, "crash", 200, target=0), Fault(1_000, "host-crash", 1_500, target=0))
    simulation = Simulation(SimConfig(seed=3, seconds=4, faults=("crash", "host-crash"), schedule=schedule, **MACHINES))
    world = simulation.world
    seen: dict[int, dict[str, bool]] = {}

    def look() -> None:
        seen[world.loop.now_ms] = {name: host.up for name, host in world.hosts.items()}

    for at_ms in (950, 1_050, 1_200, 2_600):
        world.loop.at(at_ms, look)
    result = simulation.run()
    assert result.ok, result.report()
    machine_nodes = {"n1", "n2", "n3"}
    assert [name for name, up in seen[950].items() if not up] == ["n1"]
    for at_ms in (1_050, 1_200):
        assert {name for name, up in seen[at_ms].items() if not up} == machine_nodes, at_ms
    assert all(seen[2_600].values())
    assert {name: world.hosts[name].incarnations for name in sorted(machine_nodes)} == {"n1": 2, "n2": 2, "n3": 2}
    assert result.faults_injected == {"crash": 1, "host-crash": 1}
    assert any("crash machine host-1 (zone-1/host-1): n2, n3" in line for line in result.fault_log)


def test_host_crash_of_a_machine_already_down_changes_nothing() -> None:
    schedule = (Fault(500, "host-crash", 2_000, target=1), Fault(800, "host-crash", 300, target=1))
    result = run_seed(SimConfig(seed=4, seconds=3, faults=("host-crash",), schedule=schedule, **MACHINES))
    assert result.ok, result.report()
    assert result.faults_injected == {"host-crash": 1}


def test_the_replay_command_names_the_machines() -> None:
    config = SimConfig(seed=5, nodes=6, nodes_per_machine=(2, 4), zones=2)
    assert "--nodes 6 --seconds 6 --faults" in config.replay_command()
    assert "--nodes-per-machine 2,4 --zones 2" in config.replay_command()
    assert "--nodes-per-machine" not in SimConfig(seed=5).replay_command()


def _assert_all_pass(configs: list[SimConfig]) -> list[Any]:
    results = [run_seed(config) for config in configs]
    failed = [r for r in results if not r.ok]
    assert not failed, "\n\n".join(r.report() for r in failed[:5])
    return results


def test_seeds_with_machines_and_every_fault_pass() -> None:
    results = _assert_all_pass([SimConfig(seed=seed, seconds=5, faults=FAULT_KINDS, **MACHINES) for seed in SEEDS_DEFAULT])
    assert sum(r.faults_injected.get("host-crash", 0) for r in results) >= 3
    assert sum(r.ops.get("ok", 0) for r in results) > 20 * len(results)


def test_seeds_of_machine_crashes_and_partitions_pass() -> None:
    """host-crash often, beside the faults that most stress a cluster that lost a machine."""
    kinds = ("host-crash", "crash", "partition", "loss", "join", "leave")
    results = _assert_all_pass([SimConfig(seed=seed, seconds=5, faults=kinds, **MACHINES) for seed in range(100, 110)])
    assert sum(r.faults_injected.get("host-crash", 0) for r in results) >= 6


@pytest.mark.slow
def test_long_run_with_machines() -> None:
    seeds = parse_seeds(os.environ.get("DYND_SIM_MACHINE_SEEDS", "1000..1999"))
    seconds = float(os.environ.get("DYND_SIM_SECONDS", "8"))
    _assert_all_pass([SimConfig(seed=seed, seconds=seconds, **MACHINES) for seed in seeds])


def test_acknowledged_writes_survive_the_loss_of_a_machine() -> None:
    """9 nodes on 3 machines in 3 zones, N=3, W=2. Every write reaches only two replicas (the
    third primary's copy is dropped on the wire), and it is acknowledged. Then machine host-1 dies
    for good. Placement puts each key's three primaries on three machines, so one copy of every
    write is left and two primaries of every key still answer: a read through every surviving node
    at R=2 with PR=2 (both answers from primaries) returns every acknowledged write."""
    world = World(6, nodes=9, params=(3, 2, 2, 64), nodes_per_machine=3, zones=3)
    world.net.heal()  # no random loss: the drop below is the one that matters
    client = Endpoint(world.net, "client", Process("client", 1, world._exception), 10_000)
    world.run_for(2_000)
    view = world.hosts["n9"].node
    assert view is not None
    keys = [f"key-{i}".encode() for i in range(40)]
    third = {key: view.cluster.preference_list(partition_of(key, 64)).primaries[2] for key in keys}
    world.net.drop_filter = lambda src, dst, message: isinstance(message, messages.Replicate) and third.get(message.key) == dst
    for key in keys:
        answer = call(world, client, world.hosts["n9"].address, lambda rid, k=key: messages.Put(id=rid, key=k, value=b"v-" + k, w=2))
        assert isinstance(answer, messages.PutOk), (key, answer)
    crashed = {host.name for host in world.crash_machine("host-1")}
    assert crashed == {"n1", "n2", "n3"}
    world.net.drop_filter = None
    lost = []
    for reader in sorted(set(world.hosts) - crashed):
        for key in keys:
            answer = call(world, client, world.hosts[reader].address, lambda rid, k=key: messages.Get(id=rid, key=k, r=2, pr=2))
            if not isinstance(answer, messages.GetOk) or [s.value for s in answer.siblings] != [b"v-" + key]:
                lost.append(f"{key!r} via {reader}: {answer}")
    assert not lost, f"{len(lost)} reads failed, first: " + "; ".join(lost[:3])
    assert world.failures == []


def call(world: World, endpoint: Endpoint, address: str, build: Any) -> Any:
    answers: list[Any] = []
    endpoint.send_to_address(address, build, answers.append)
    world.run_for(10_000, stop=lambda: bool(answers))
    assert answers, f"no answer from {address}"
    return answers[0]


def test_the_placement_checker_flags_primaries_sharing_a_machine_or_a_zone() -> None:
    locations = {"n1": "zone-1/host-1", "n2": "zone-1/host-1", "n4": "zone-2/host-2", "n5": "zone-2/host-2", "n7": "zone-3/host-3"}
    spread = {0: ("n1", "n4", "n7"), 1: ("n5", "n7", "n2")}
    assert check_placement(FinalState(primaries=spread, locations=locations, n=3)) == []
    shared = {0: ("n1", "n2", "n4"), 1: ("n4", "n5", "n7"), 2: ("n7", "n1", "n4")}
    failures = check_placement(FinalState(primaries=shared, locations=locations, n=3))
    assert [f.checker for f in failures] == ["placement", "placement"]
    assert failures[0].message.startswith("2 of 3 partitions have primaries sharing machine although the ring's nodes run on 3 machines")
    assert "partition 0: n1 at zone-1/host-1, n2 at zone-1/host-1, n4 at zone-2/host-2" in failures[0].message
    assert failures[1].message.startswith("2 of 3 partitions have primaries sharing zone")
    # Two machines, two zones: neither guarantee can hold with N=3, and none is asked for.
    two = {name: loc for name, loc in locations.items() if name != "n7"}
    assert check_placement(FinalState(primaries={0: ("n1", "n2", "n4")}, locations=two, n=3)) == []
