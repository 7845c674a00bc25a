"""Giving freed memory back to the system after a burst of large buffers.

glibc keeps freed heap memory for reuse, and after the first large block is freed it raises its
mmap threshold, so later large buffers (partly received frames of up to `frame_bytes_max`) come
from the heap too. After a flood of them the process keeps that memory long after it ended: the
RSS a hostile input leaves behind. `malloc_trim(0)` returns the free parts of the heap. It costs
a walk of the heap, so it runs only after a large buffer was let go, at most once per
`TRIM_INTERVAL_S`; one owed meanwhile runs when the interval is over, so the last of a burst is
given back too. (Fixing the thresholds with mallopt instead cost a quarter of throughput:
every 256 KiB socket read became an mmap.)
"""

from __future__ import annotations

import ctypes

import trio

LARGE_BUFFER_BYTES = 256 * 1024  # a partial frame at least this large is worth giving back
TRIM_INTERVAL_S = 1.0


class MemoryGiver:
    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._last = -TRIM_INTERVAL_S
        self._owed = False
        self.trims = 0

    async def large_buffer_freed(self) -> None:
        """A buffer of LARGE_BUFFER_BYTES or more has just been dropped: give memory back now,
        or once the interval since the last time is over (one waiter for all that come meanwhile)."""
        if self._trim is None:
            return
        wait_s = self._last + TRIM_INTERVAL_S - trio.current_time()
        if wait_s > 0:
            if self._owed:
                return  # another caller is waiting to trim already
            self._owed = True
            try:
                await trio.sleep(wait_s)
            finally:
                self._owed = False
        self._last = trio.current_time()
        self._trim(0)
        self.trims += 1


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        return ctypes.CDLL(None).malloc_trim  # the process's own C library, if it is glibc
    except (OSError, AttributeError):
        return None
