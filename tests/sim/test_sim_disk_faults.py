"""The simulated disk's faults: a full disk and a failing one, each on one node for a while.

The node must answer with a clear error while its disk refuses or fails writes, and lose no write it
acknowledged (every checker passes).
"""

from __future__ import annotations

from dynd.sim.faults import Fault
from dynd.sim.run import SimConfig, Simulation

SCHEDULE = (Fault(500, "disk-full", 1_500, target=0), Fault(2_500, "disk-error", 1_500, target=1))


def test_a_full_disk_and_a_failing_disk_are_answered_with_clear_errors_and_lose_nothing() -> None:
    simulation = Simulation(SimConfig(seed=11, seconds=4, faults=("disk-full", "disk-error"), schedule=SCHEDULE))
    result = simulation.run()
    assert result.ok, result.report()
    assert result.faults_injected == {"disk-full": 1, "disk-error": 1}
    full, failing = simulation.world.hosts["n1"].disk, simulation.world.hosts["n2"].disk
    assert full is not None and failing is not None
    assert full.refused_submits > 0 and full.failed_commits == 0
    assert failing.failed_commits > 0 and failing.refused_submits == 0
    failed = [op.detail for op in simulation.workload.history.ops if op.outcome == "failed"]
    assert any("storage_full: the disk of n1 is full" in detail for detail in failed), failed
