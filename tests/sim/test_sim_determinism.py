"""The same seed gives the same run: every delivered event folds into one trace hash."""

from __future__ import annotations

import pytest

from dynd.sim.run import SimConfig, run_seed

SEEDS = [0, 1, 7, 42]


@pytest.mark.parametrize("seed", SEEDS)
def test_same_seed_same_trace(seed: int) -> None:
    config = SimConfig(seed=seed, seconds=3)
    first, second = run_seed(config), run_seed(config)
    assert first.trace_hash == second.trace_hash
    assert (first.messages, first.events, first.simulated_ms, first.ops) == (second.messages, second.events, second.simulated_ms, second.ops)


def test_different_seeds_differ() -> None:
    hashes = {run_seed(SimConfig(seed=seed, seconds=2)).trace_hash for seed in SEEDS}
    assert len(hashes) == len(SEEDS)


def test_trace_covers_the_payloads() -> None:
    """A run that differs only in what one client writes must hash differently."""
    base = run_seed(SimConfig(seed=3, seconds=2))
    other = run_seed(SimConfig(seed=3, seconds=2, keys=7))
    assert base.trace_hash != other.trace_hash


def test_same_trace_whatever_the_hash_seed() -> None:
    """Set and dict orders that depend on string hashing would differ between processes."""
    import os
    import subprocess
    import sys

    hashes = set()
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-m", "dynd.sim", "--seed", "9", "--seconds", "2"],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": hash_seed, "COLUMNS": "200"}, check=True,
        ).stdout
        hashes.add(out.split("trace ")[1].split()[0])
    assert len(hashes) == 1
