"""Many seeds of 5-node clusters with every fault kind; all checkers must pass.

`make test` runs SEEDS_DEFAULT seeds on two worker processes. A longer run is one variable away:

    DYND_SIM_SEEDS=0..9999 DYND_SIM_SECONDS=10 python -m pytest tests/sim/test_sim_seeds.py -m slow

(the same as `python -m dynd.sim --seeds 0..9999 --seconds 10 --jobs 2`, which prints a summary).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from dynd.sim.__main__ import parse_seeds
from dynd.sim.faults import FAULT_KINDS
from dynd.sim.run import SimConfig, SimResult, run_seed

SEEDS_DEFAULT = range(0, 200)
SECONDS_DEFAULT = 6.0
JOBS = 2


def _run(configs: list[SimConfig]) -> list[SimResult]:
    with ProcessPoolExecutor(max_workers=JOBS, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_seed, configs, chunksize=8))


def _assert_all_pass(results: list[SimResult]) -> None:
    failed = [r for r in results if not r.ok]
    assert not failed, "\n\n".join(r.report() for r in failed[:5])


def test_many_seeds_pass() -> None:
    configs = [SimConfig(seed=seed, nodes=5, seconds=SECONDS_DEFAULT, faults=FAULT_KINDS) for seed in SEEDS_DEFAULT]
    results = _run(configs)
    _assert_all_pass(results)
    injected = {kind for r in results for kind in r.faults_injected}
    assert injected == set(FAULT_KINDS), f"fault kinds never injected: {set(FAULT_KINDS) - injected}"
    assert sum(r.ops.get("ok", 0) for r in results) > 20 * len(results)


@pytest.mark.slow
def test_long_run() -> None:
    seeds = parse_seeds(os.environ.get("DYND_SIM_SEEDS", "200..2199"))
    seconds = float(os.environ.get("DYND_SIM_SECONDS", "10"))
    _assert_all_pass(_run([SimConfig(seed=seed, seconds=seconds) for seed in seeds]))
