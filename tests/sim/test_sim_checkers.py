"""Each checker catches a deliberately broken node, so the checkers are known to be able to fail."""

from __future__ import annotations

from dynd.protocol import messages
from dynd.sim.faults import Fault
from dynd.sim.run import SimConfig, Simulation, run_seed
from tests.sim import broken


def checkers_failing(result: object) -> set[str]:
    return {f.checker for f in result.failures}  # type: ignore[attr-defined]


# Every node crashes at 3 s, while a slow disk still holds the last half second of writes. The
# seeds are ones whose clients have writes acknowledged in that half second (in some seeds every
# client is waiting out a lost request then, and there is nothing to lose).
ALL_CRASH = tuple(Fault(3_000, "crash", 300, target=i) for i in range(5))
ALL_CRASH_SEEDS = (9, 10)


def test_the_real_node_passes_the_same_runs() -> None:
    configs = [SimConfig(seed=11, seconds=4, faults=())]
    configs += [SimConfig(seed=seed, seconds=4, faults=("crash",), schedule=ALL_CRASH) for seed in ALL_CRASH_SEEDS]
    for config in configs:
        result = run_seed(config)
        assert result.ok, result.report()


def test_lost_write_catches_a_node_that_acknowledges_before_storing() -> None:
    for seed in ALL_CRASH_SEEDS:
        config = SimConfig(seed=seed, seconds=4, faults=("crash",), schedule=ALL_CRASH, commit_delay_ms=(400, 600))
        result = run_seed(config, wrap_storage=broken.everywhere(broken.AckBeforeStore))
        assert "lost_write" in checkers_failing(result), result.report()


def test_lost_write_catches_a_node_that_drops_siblings() -> None:
    result = run_seed(SimConfig(seed=11, seconds=4, faults=()), wrap_storage=broken.everywhere(broken.DropSiblings))
    assert "lost_write" in checkers_failing(result), result.report()


def test_phantom_catches_a_node_that_invents_values() -> None:
    result = run_seed(SimConfig(seed=11, seconds=4, faults=()), wrap_storage=broken.only_on("n1", broken.InventsValues))
    assert "phantom" in checkers_failing(result), result.report()


def test_convergence_catches_a_node_that_ignores_writes() -> None:
    result = run_seed(SimConfig(seed=11, seconds=4, faults=()), wrap_storage=broken.only_on("n2", broken.IgnoresWrites))
    assert "convergence" in checkers_failing(result), result.report()


def test_dominated_catches_a_node_that_keeps_superseded_siblings() -> None:
    result = run_seed(SimConfig(seed=11, seconds=4, faults=()), wrap_storage=broken.everywhere(broken.KeepsObsolete))
    assert "dominated" in checkers_failing(result), result.report()


def test_membership_catches_a_node_cut_off_from_gossip() -> None:
    """n5 never gossips (a broken node); n1 leaves, and n5 never hears of it."""
    sim = Simulation(SimConfig(seed=11, seconds=4, faults=("leave",), schedule=(Fault(1_000, "leave", 0, target=0),)))
    sim.world.net.drop_filter = lambda src, dst, message: isinstance(message, messages.Gossip) and "n5" in (src, dst)
    result = sim.run()
    assert "membership" in checkers_failing(result), result.report()


def test_an_exception_in_the_node_is_a_failure() -> None:
    class Explodes(broken._Wrapper):
        def read_object(self, partition: int, key: bytes) -> bytes | None:
            raise RuntimeError("disk on fire")

    result = run_seed(SimConfig(seed=11, seconds=2, faults=()), wrap_storage=broken.only_on("n3", Explodes))
    assert "exception" in checkers_failing(result)
    assert "disk on fire" in result.report()


def test_a_failure_report_names_seed_checker_history_and_replay() -> None:
    result = run_seed(SimConfig(seed=11, seconds=4, faults=()), wrap_storage=broken.everywhere(broken.DropSiblings))
    report = result.report()
    assert "seed=11" in report and "checker=lost_write" in report
    assert "history of b'set-" in report
    assert "replay: python -m dynd.sim --seed 11" in report
