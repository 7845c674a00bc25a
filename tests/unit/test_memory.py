"""The server gives memory back after large buffers: at once, then at most once per interval, and
the last of a burst too."""

from __future__ import annotations

import trio

from dynd.shell.memory import TRIM_INTERVAL_S, MemoryGiver


async def test_a_burst_trims_once_now_and_once_when_the_interval_is_over(autojump_clock: trio.abc.Clock) -> None:
    giver = MemoryGiver()
    trimmed_at: list[float] = []
    giver._trim = lambda pad: trimmed_at.append(trio.current_time())  # type: ignore[assignment]
    await giver.large_buffer_freed()
    async with trio.open_nursery() as nursery:
        for _ in range(5):  # a burst right after: one of them waits, the others leave it to that one
            nursery.start_soon(giver.large_buffer_freed)
    assert len(trimmed_at) == 2
    assert trimmed_at[1] - trimmed_at[0] >= TRIM_INTERVAL_S
    await trio.sleep(TRIM_INTERVAL_S)
    await giver.large_buffer_freed()  # long after: at once
    assert len(trimmed_at) == 3 and trimmed_at[2] == trio.current_time()
