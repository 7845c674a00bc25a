"""The named timeout every core timer is built from."""

from __future__ import annotations

import pytest

from dynd.core.timeouts import Timeout


def test_a_timeout_fires_once_per_arming_and_only_when_due() -> None:
    timeout = Timeout("gossip", 100, start_ms=1_000)
    assert timeout.running and timeout.remaining_ms(1_040) == 60
    assert not timeout.fired(1_099)
    assert timeout.fired(1_100)
    assert not timeout.running and not timeout.fired(5_000)


def test_a_periodic_timer_rearms_from_the_tick_that_saw_it_fire() -> None:
    timeout = Timeout("handoff", 100, start_ms=0)
    fired_at = [now for now in range(0, 1_000, 30) if timeout.restart_if_fired(now)]
    assert fired_at == [120, 240, 360, 480, 600, 720, 840, 960]


def test_start_takes_a_one_off_length_and_stop_disarms() -> None:
    timeout = Timeout("round", 100)
    assert not timeout.running and timeout.remaining_ms(0) is None
    timeout.start(50, after_ms=10)
    assert timeout.due(60) and timeout.running
    timeout.stop()
    assert not timeout.fired(10_000)


def test_a_negative_length_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Timeout("bad", -1)
