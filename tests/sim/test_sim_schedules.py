"""Hypothesis drives the simulator: it generates fault schedules and shrinks a failing one.

The property: under any schedule, every checker passes. A failure shrinks to a minimal schedule,
which hypothesis prints, and `SimConfig(seed=SEED, schedule=...)` replays it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from dynd.sim.faults import FAULT_KINDS, Fault
from dynd.sim.run import SimConfig, run_seed
from tests.sim import broken

SEED = 5
# No "explain" phase: it traces every line executed while shrinking, which slows a run tenfold.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
SECONDS = 3.0



def schedules(seconds: float, max_faults: int, kinds: tuple[str, ...] = FAULT_KINDS) -> st.SearchStrategy[tuple[Fault, ...]]:
    """Fault lists (the injector sorts them by time)."""
    faults = st.builds(
        Fault,
        at_ms=st.integers(0, int(seconds * 1000)),
        kind=st.sampled_from(kinds),
        duration_ms=st.integers(50, 3_000),
        target=st.integers(0, 63),
        arg=st.integers(0, 200),
    )
    return st.lists(faults, max_size=max_faults).map(tuple)


@settings(max_examples=25, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow])
@given(schedules(SECONDS, 8))
def test_every_schedule_passes(schedule: tuple[Fault, ...]) -> None:
    result = run_seed(SimConfig(seed=SEED, seconds=SECONDS, schedule=schedule))
    assert result.ok, result.report()


def test_a_failing_schedule_shrinks_to_the_one_fault_that_matters() -> None:
    """A node that stores nothing once it has been paused fails only under a pause: hypothesis
    finds a failing schedule and shrinks it to one where the pause is what matters (usually the
    single pause; under load the shrinker may stop with a few harmless faults left beside it)."""

    def fails(schedule: tuple[Fault, ...]) -> bool:
        config = SimConfig(seed=SEED, nodes=3, seconds=1, keys=3, clients=2, schedule=schedule, settle_max_ms=5_000)
        return not run_seed(config, wrap_storage=broken.everywhere(broken.IgnoresWritesAfterAPause)).ok

    # Fewer kinds than the property above, so the search and the shrink stay within seconds.
    minimal = find(schedules(1, 5, ("loss", "delay", "partition", "crash", "pause")), fails, settings=settings(max_examples=40, deadline=None, database=None, phases=PHASES, derandomize=True))
    assert "pause" in [f.kind for f in minimal], minimal
    assert not fails(tuple(f for f in minimal if f.kind != "pause")), "without its pause the schedule passes"
