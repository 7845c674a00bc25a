"""The simulator's event loop: one virtual clock, a heap of timed callbacks, one trace hash.

Rules:
- Time is an integer count of virtual milliseconds; nothing reads a wall clock.
- Events due at the same millisecond run in the order they were scheduled (a sequence number
  breaks ties), so a run is a pure function of the seed.
- A cancelled timer stays in the heap and is skipped when it comes up.
- Every delivered event is folded into `trace` (a BLAKE2b hash): two runs of one seed must end
  with the same `trace_hash`, which is how the determinism test catches hidden nondeterminism.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable


class Timer:
    __slots__ = ("time_ms", "seq", "callback")

    def __init__(self, time_ms: int, seq: int, callback: Callable[[], None] | None) -> None:
        self.time_ms = time_ms
        self.seq = seq
        self.callback = callback

    def __lt__(self, other: Timer) -> bool:
        return (self.time_ms, self.seq) < (other.time_ms, other.seq)

    def cancel(self) -> None:
        self.callback = None

    @property
    def pending(self) -> bool:
        return self.callback is not None


class Loop:
    def __init__(self) -> None:
        self.now_ms = 0
        self._heap: list[Timer] = []
        self._seq = 0
        self.events_run = 0
        self._trace = hashlib.blake2b(digest_size=16)

    def at(self, time_ms: int, callback: Callable[[], None]) -> Timer:
        if time_ms < self.now_ms:
            time_ms = self.now_ms
        self._seq += 1
        timer = Timer(time_ms, self._seq, callback)
        heapq.heappush(self._heap, timer)
        return timer

    def after(self, delay_ms: int, callback: Callable[[], None]) -> Timer:
        return self.at(self.now_ms + delay_ms, callback)

    def run_until(self, time_ms: int, stop: Callable[[], bool] | None = None) -> None:
        """Run every event due up to `time_ms`, then set the clock to it (or stop early once
        `stop()` holds, checked after each event)."""
        heap = self._heap
        while heap and heap[0].time_ms <= time_ms:
            timer = heapq.heappop(heap)
            callback = timer.callback
            if callback is None:
                continue
            timer.callback = None
            self.now_ms = timer.time_ms
            self.events_run += 1
            callback()
            if stop is not None and stop():
                return
        self.now_ms = max(self.now_ms, time_ms)

    def trace(self, *parts: object) -> None:
        """Fold one delivered event into the trace hash."""
        self._trace.update(repr((self.now_ms, *parts)).encode())

    def trace_bytes(self, data: bytes) -> None:
        self._trace.update(data)

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()
