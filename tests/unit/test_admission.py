"""The background budget: a sliding-window p99 and AIMD slices."""

from __future__ import annotations

import pytest

from dynd.core import admission
from dynd.core.admission import BackgroundBudget


def budget(**kwargs: int) -> BackgroundBudget:
    options = dict(target_p99_ms=10, window_ms=5_000, window_buckets=5, adjust_interval_ms=1_000,
                   slice_min=4, slice_max=64, slice_step=8, samples_min=10)  # fmt: skip
    options.update(kwargs)
    return BackgroundBudget(**options)  # type: ignore[arg-type]


def feed(b: BackgroundBudget, latency_ms: float, start_ms: int, end_ms: int, per_ms: int = 1) -> None:
    for now in range(start_ms, end_ms):
        for _ in range(per_ms):
            b.record_ms(latency_ms, now)


def test_bins_are_ordered_and_their_edges_hold_their_values() -> None:
    previous = -1
    for latency_us in [*range(0, 5000), *range(5000, 10**7, 997), 2**40, 2**62, 2**70]:
        index = admission._bin(latency_us)
        assert index >= previous
        previous = index
        clamped = min(latency_us, 2**62 - 1)
        assert clamped <= admission._bin_upper_us(index)
        if index:
            assert clamped > admission._bin_upper_us(index - 1)
        assert admission._bin_upper_us(index) <= max(clamped * 1.25, clamped + 1)
    assert admission._bin(2**70) < admission._BINS


def test_without_foreground_load_the_slice_grows_to_the_maximum() -> None:
    b = budget(slice_max=64)
    b._slice = 4
    for second in range(1, 20):
        assert b.allow(second * 1_000)
    assert b.slice_keys() == 64
    assert b.last_p99_ms is None


def test_the_p99_tracks_the_window() -> None:
    b = budget()
    feed(b, 2.0, 0, 1_000, per_ms=2)  # 2,000 fast requests ...
    feed(b, 40.0, 1_000, 1_030)  # ... and 30 slow ones (1.5%): the p99 is slow
    p99 = b.p99_ms(1_100)
    assert p99 is not None and 40 <= p99 <= 50
    feed(b, 2.0, 1_100, 1_200, per_ms=50)  # 5,000 more fast ones dilute the slow below 1%
    p99 = b.p99_ms(1_200)
    assert p99 is not None and 2 <= p99 <= 2.5
    assert b.p99_ms(20_000) is None, "the window forgot everything: too few samples"


def test_a_slow_foreground_halves_the_slice_then_pauses_background_work() -> None:
    b = budget(slice_max=64, slice_min=4)
    slices = []
    allowed = []
    for second in range(1, 9):
        feed(b, 50.0, (second - 1) * 1_000, second * 1_000, per_ms=1)
        allowed.append(b.allow(second * 1_000))
        slices.append(b.slice_keys())
    assert slices[:5] == [32, 16, 8, 4, 4]
    assert allowed[:4] == [True] * 4 and allowed[4] is False, "at the minimum slice, work pauses an interval"
    assert b.decreases >= 5 and b.pauses >= 1
    # the foreground recovers: once the slow samples leave the window, slices grow additively
    for second in range(9, 20):
        feed(b, 1.0, (second - 1) * 1_000, second * 1_000, per_ms=1)
        assert b.allow(second * 1_000) or second < 15
    assert b.slice_keys() > 4
    growth = []
    for second in range(20, 24):
        feed(b, 1.0, (second - 1) * 1_000, second * 1_000, per_ms=1)
        b.allow(second * 1_000)
        growth.append(b.slice_keys())
    assert all(later - earlier in (0, 8) for earlier, later in zip(growth, growth[1:]))


def test_the_budget_refuses_impossible_settings() -> None:
    with pytest.raises(ValueError):
        budget(slice_min=0)
    with pytest.raises(ValueError):
        budget(slice_min=100, slice_max=10)
    with pytest.raises(ValueError):
        budget(window_ms=2, window_buckets=5)


def test_unlimited_always_allows() -> None:
    assert admission.Unlimited(7).allow(0) and admission.Unlimited(7).slice_keys() == 7
