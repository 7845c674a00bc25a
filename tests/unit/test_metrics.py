"""dynd.core.metrics: latency percentiles, the 60-s window, counters, the log budget."""

from __future__ import annotations

import dataclasses

from dynd.core.metrics import HIGHEST_US, SLOT_MS, LogBudget, Metrics

START_MS = 1_700_000_000_000


def views(metrics: Metrics, now_ms: int) -> dict[tuple[str, str], object]:
    return {(v.op, v.window): v for v in metrics.latencies(now_ms)}


def test_percentiles_of_a_known_distribution_within_three_significant_digits() -> None:
    metrics = Metrics()
    for us in range(1, 10_001):  # 1 us .. 10 ms, uniform
        metrics.latency("get", us, START_MS)
    view = views(metrics, START_MS)[("get", "60s")]
    assert view.count == 10_000  # type: ignore[attr-defined]
    assert abs(view.p50_us - 5_000) <= 5  # type: ignore[attr-defined]
    assert abs(view.p99_us - 9_900) <= 10  # type: ignore[attr-defined]
    assert abs(view.p999_us - 9_990) <= 10  # type: ignore[attr-defined]
    assert abs(view.max_us - 10_000) <= 10  # type: ignore[attr-defined]
    assert views(metrics, START_MS)[("get", "start")] == dataclasses.replace(view, window="start")  # type: ignore[type-var]


def test_only_ops_with_a_count_are_reported_and_both_windows_agree_at_first() -> None:
    metrics = Metrics()
    metrics.latency("put", 1_500, START_MS)
    found = views(metrics, START_MS)
    assert set(found) == {("put", "60s"), ("put", "start")}
    assert found[("put", "60s")].count == found[("put", "start")].count == 1  # type: ignore[attr-defined]


def test_the_60s_window_forgets_what_is_older_while_since_start_keeps_it() -> None:
    metrics = Metrics()
    metrics.latency("get", 50_000, START_MS)  # one slow get, then only fast ones
    for second in range(1, 121):
        metrics.latency("get", 100, START_MS + second * 1000)
    now = START_MS + 120_000
    window = views(metrics, now)[("get", "60s")]
    since_start = views(metrics, now)[("get", "start")]
    assert since_start.count == 121 and since_start.max_us >= 49_950  # type: ignore[attr-defined]
    assert window.max_us < 200, "the slow get rotated out of the last 60 s"  # type: ignore[attr-defined]
    assert 50 <= window.count <= 60  # type: ignore[attr-defined]


def test_an_idle_op_has_an_empty_60s_window_but_keeps_its_history() -> None:
    metrics = Metrics()
    metrics.latency("delete", 300, START_MS)
    later = views(metrics, START_MS + 10 * SLOT_MS)
    assert later[("delete", "60s")].count == 0  # type: ignore[attr-defined]
    assert later[("delete", "start")].count == 1  # type: ignore[attr-defined]


def test_a_latency_beyond_the_range_is_clamped_not_lost() -> None:
    metrics = Metrics()
    metrics.latency("get", 10 * HIGHEST_US, START_MS)
    metrics.latency("get", -5, START_MS)  # a clock that went backwards reads 0
    view = views(metrics, START_MS)[("get", "start")]
    assert view.count == 2 and view.max_us >= HIGHEST_US * 0.999  # type: ignore[attr-defined]


def test_counters_and_versions_per_get() -> None:
    metrics = Metrics()
    metrics.count("requests", "get:ok")
    metrics.count("requests", "get:ok")
    metrics.count("requests", "put:quorum_failed")
    metrics.count("contexts_pruned", amount=3)
    assert {(m.name, m.label): m.value for m in metrics.counter_list()} == {
        ("requests", "get:ok"): 2,
        ("requests", "put:quorum_failed"): 1,
        ("contexts_pruned", ""): 3,
    }
    for versions in (0, 1, 1, 2, 3, 4, 9):
        metrics.versions_seen(versions)
    assert metrics.versions_per_get == [2, 1, 1, 2], "not found is no version count; 4 and more share a bucket"


def test_the_log_budget_lets_n_lines_a_second_through_and_counts_the_rest() -> None:
    budget = LogBudget(3)
    allowed = [budget.allow(START_MS + i) for i in range(10)]
    assert allowed == [True] * 3 + [False] * 7
    assert budget.allow(START_MS + 1_000), "a new second, a new budget"
    assert budget.take_dropped() == 7 and budget.take_dropped() == 0
