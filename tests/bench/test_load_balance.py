"""A short run of the load-balance benchmark (tests/bench/load_balance.py), kept in `make test`."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from load_balance import draw_requests, main, measure

SMALL = dict(nodes=30, replicas=3, partitions=256, requests=20_000, keys=5_000, zipf_exponent=1.0, seed=7)


def test_strategy_3_balances_partitions_and_uniform_load() -> None:
    report = measure(**SMALL)
    for shape in report.shapes:
        assert (shape.partitions_min, shape.partitions_max) == (8, 9)  # 256 / 30 = 8.53
        assert shape.repeated_windows == 0
    for balance in report.balances:
        assert 0 < balance.efficiency <= balance.best_possible <= 1.0
        if balance.workload == "uniform":
            # (Q/S) / ceil(Q/S) = 0.948, less sampling noise over ~670 requests per node
            assert balance.efficiency > 0.8, balance
    zipf_at_coordinator = [b for b in report.balances if b.workload == "zipf" and b.counted_at == "coordinator"]
    assert all(b.best_possible < 0.5 for b in zipf_at_coordinator)  # one key draws ~10% of requests


def test_zipf_draws_follow_the_exponent() -> None:
    keys, requests = 1_000, 50_000
    harmonic = sum(1 / rank for rank in range(1, keys + 1))
    per_key = draw_requests("zipf", keys, requests, 1.0, random.Random(3))
    shares = sorted(per_key.values(), reverse=True)
    assert shares[0] / requests == pytest.approx(1 / harmonic, rel=0.05)
    assert shares[1] / requests == pytest.approx(1 / (2 * harmonic), rel=0.1)
    flat = draw_requests("zipf", keys, requests, 0.0, random.Random(3))
    assert max(flat.values()) < 3 * requests / keys


def test_the_same_seed_gives_the_same_numbers() -> None:
    first, second = measure(**SMALL), measure(**SMALL)
    assert replace(first, seconds=0) == replace(second, seconds=0)
    other = measure(**{**SMALL, "seed": 8})
    assert other.balances != first.balances


def test_the_command_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "8", "--partitions", "64", "--requests", "5000", "--keys", "500"]) == 0
    out = capsys.readouterr().out
    assert "Partitions per node" in out and "efficiency" in out
    assert "uniform" in out and "zipf" in out
    with pytest.raises(SystemExit):
        main(["--partitions", "100"])
