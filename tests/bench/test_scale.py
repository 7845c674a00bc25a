"""A small run of the scale benchmark (tests/bench/scale.py), kept in `make test`: its figures
are the ones it says they are."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from scale import kinds_table, main, measure, placement, summary_table

from dynd.core.ring import Ring
from dynd.sim.world import World


@pytest.fixture(autouse=True)
def dynd_log_level_restored() -> Iterator[None]:
    """`main` quiets the dynd loggers for the figures; the tests after these must not inherit it."""
    logger = logging.getLogger("dynd")
    level = logger.level
    yield
    logger.setLevel(level)


def test_a_small_case_measures_agreement_traffic_adoption_and_placement() -> None:
    figures = measure(6, 64, nodes_per_machine=2, zones=3, warmup_ms=2_000, window_ms=3_000)
    assert figures.rounds_to_agree is not None and 0 < figures.rounds_to_agree < 10
    assert figures.notes == []
    assert (figures.machines, figures.zones) == (3, 3)
    # Gossip is a push-pull exchange: every request has its reply, give or take what is in flight.
    gossip, gossip_ok = figures.per_member_per_s["Gossip"], figures.per_member_per_s["GossipOk"]
    assert gossip[0] > 0 and abs(gossip[0] - gossip_ok[0]) < 0.2 * gossip[0]
    assert figures.per_member_per_s["datagram"][0] > 0
    assert figures.adoption_ms_per_member > 0 and 0.9 <= figures.adoptions_per_member <= 3
    assert figures.after.balance.ok and figures.before.balance.ok
    assert (figures.after.balance.floor, figures.after.balance.ceil) == (64 // 7, -(-64 // 7))
    assert figures.moved >= figures.moved_ideal == 64 // 7
    assert figures.after.host_violations is not None and 0 <= figures.after.host_violations <= 64
    assert summary_table([figures]).row_count == 1 and kinds_table([figures]).row_count >= 4


def test_placement_counts_the_partitions_whose_primaries_share_a_host_or_a_zone() -> None:
    world = World(0, nodes=4, params=(3, 2, 2, 8), nodes_per_machine=(2, 1, 1), zones=2)
    node = world.hosts["n1"].node
    assert node is not None
    ring = node.cluster.ring
    located = placement(world, ring, 3)
    locations = {name: world.location_of(name) for name in ring.nodes}
    expected_hosts = expected_zones = 0
    for partition in range(8):
        primaries = node.cluster.preference_list(partition).primaries
        expected_hosts += len({locations[p] for p in primaries}) < 3
        expected_zones += len({locations[p].split("/")[0] for p in primaries}) < 3
    assert (located.machines, located.zones) == (3, 2)
    assert located.host_violations == expected_hosts
    assert located.zone_violations is None  # two zones: the distinct-zone guarantee cannot hold
    assert expected_zones == 8
    counts = Ring(8, ring.owners).counts()
    assert (located.balance.min, located.balance.max) == (min(counts.values()), max(counts.values()))


def test_the_time_bound_skips_cases(capsys: object) -> None:
    assert main(["--members", "4", "--partitions", "64", "--nodes-per-machine", "2", "--time-bound", "0",
                 "--warmup-seconds", "1", "--window-seconds", "1"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "not run (time bound 0 s passed): S=4 Q=64" in out
