"""Admission control for background work (paper section 6.5): it yields to foreground latency. Pure.

Background tasks (hint delivery, ownership handoff, anti-entropy) ask `allow(now_ms)` before each
slice of work and size each slice by `slice_keys()`. The budget is fed every foreground request's
latency (`record_ms`) and, once per `adjust_interval_ms`, compares the foreground p99 over the
last `window_ms` with `target_p99_ms`:

    p99 above target   ->  slice halves (multiplicative decrease, not below slice_min); if it
                           was already at slice_min, background work pauses for one interval
    p99 at or below    ->  slice grows by slice_step (additive increase, up to slice_max)
    too few samples    ->  counts as below target (an idle node has no latency to protect)

The window is a ring of `window_buckets` sub-windows, each a fixed histogram with four bins per
power of two of microseconds (at most 19% apart), so `record_ms` is a few integer operations and
the p99 is read from 256 bins per sub-window once per interval, never by sorting samples.

Every `now_ms` is the node's monotonic clock. The adjustment and a pause are named timeouts; the
sub-window boundary is not (it advances by whole sub-windows, not from the time it is read).
"""

from __future__ import annotations

from typing import Protocol

from dynd.core.timeouts import Timeout

_SUB_BITS = 2  # bins per power of two: 2^_SUB_BITS
_BINS = 64 << _SUB_BITS  # latencies up to 2^63 microseconds


def _bin(latency_us: int) -> int:
    if latency_us < 1 << _SUB_BITS:
        return max(latency_us, 0)
    if latency_us >= 1 << 62:
        latency_us = (1 << 62) - 1
    bits = latency_us.bit_length()
    return ((bits - _SUB_BITS) << _SUB_BITS) + ((latency_us >> (bits - 1 - _SUB_BITS)) & ((1 << _SUB_BITS) - 1))


def _bin_upper_us(index: int) -> int:
    """The largest latency (microseconds) that falls in bin `index`."""
    if index < 1 << _SUB_BITS:
        return index
    bits = (index >> _SUB_BITS) + _SUB_BITS
    sub = index & ((1 << _SUB_BITS) - 1)
    low = (1 << (bits - 1)) | (sub << (bits - 1 - _SUB_BITS))
    return low + (1 << (bits - 1 - _SUB_BITS)) - 1


class Pacer(Protocol):
    """What background work asks before each slice (BackgroundBudget; tests use a stub)."""

    def allow(self, now_ms: int) -> bool: ...

    def slice_keys(self) -> int: ...


class Unlimited:
    """A pacer that never holds background work back (tests, and a node without a budget)."""

    def __init__(self, slice_keys: int = 1 << 30) -> None:
        self._slice = slice_keys

    def allow(self, now_ms: int) -> bool:
        return True

    def slice_keys(self) -> int:
        return self._slice


class BackgroundBudget:
    def __init__(
        self,
        *,
        target_p99_ms: float,
        window_ms: int = 10_000,
        window_buckets: int = 5,
        adjust_interval_ms: int = 1_000,
        slice_min: int = 8,
        slice_max: int = 512,
        slice_step: int = 32,
        samples_min: int = 100,
        now_ms: int = 0,
    ) -> None:
        if not 1 <= slice_min <= slice_max or slice_step < 1:
            raise ValueError("need 1 <= slice_min <= slice_max and slice_step >= 1")
        if window_buckets < 1 or window_ms < window_buckets or adjust_interval_ms < 1:
            raise ValueError("need window_ms >= window_buckets >= 1 and adjust_interval_ms >= 1")
        self.target_p99_ms = target_p99_ms
        self.adjust_interval_ms = adjust_interval_ms
        self.slice_min = slice_min
        self.slice_max = slice_max
        self.slice_step = slice_step
        self.samples_min = samples_min
        self._bucket_ms = window_ms // window_buckets
        self._buckets = [[0] * _BINS for _ in range(window_buckets)]
        self._counts = [0] * window_buckets
        self._current = 0
        self._bucket_end_ms = now_ms + self._bucket_ms
        self._slice = slice_max
        self.pause = Timeout("background pause", adjust_interval_ms)  # running: background work waits
        self.adjustment = Timeout("admission adjustment", adjust_interval_ms, start_ms=now_ms)
        self.last_p99_ms: float | None = None  # as of the last adjustment, for status
        self.decreases = 0
        self.pauses = 0

    # ---- fed by the foreground ----

    def record_ms(self, latency_ms: float, now_ms: int) -> None:
        """One foreground request took `latency_ms`; runs per request, so it stays cheap."""
        if now_ms >= self._bucket_end_ms:
            self._rotate(now_ms)
        self._buckets[self._current][_bin(int(latency_ms * 1000))] += 1
        self._counts[self._current] += 1

    def _rotate(self, now_ms: int) -> None:
        buckets = len(self._buckets)
        for _ in range(buckets):
            if now_ms < self._bucket_end_ms:
                return
            self._current = (self._current + 1) % buckets
            self._buckets[self._current] = [0] * _BINS
            self._counts[self._current] = 0
            self._bucket_end_ms += self._bucket_ms
        if now_ms >= self._bucket_end_ms:  # idle longer than the whole window: every bucket is clear
            self._bucket_end_ms = now_ms + self._bucket_ms

    def p99_ms(self, now_ms: int) -> float | None:
        """The foreground p99 over the window (upper edge of its bin), None with too few samples."""
        if now_ms >= self._bucket_end_ms:
            self._rotate(now_ms)
        total = sum(self._counts)
        if total < self.samples_min:
            return None
        allowed_above = total // 100  # the p99 bin is the highest with more than 1% at or above it
        above = 0
        for index in range(_BINS - 1, -1, -1):
            above += sum(bucket[index] for bucket in self._buckets)
            if above > allowed_above:
                return _bin_upper_us(index) / 1000
        return 0.0

    # ---- asked by background work ----

    def allow(self, now_ms: int) -> bool:
        """Whether background work may take a slice now."""
        if self.adjustment.restart_if_fired(now_ms):
            self._adjust(now_ms)
        return not self.pause.running or self.pause.fired(now_ms)

    def slice_keys(self) -> int:
        """How many keys (or items) one slice of background work may take."""
        return self._slice

    def _adjust(self, now_ms: int) -> None:
        p99 = self.p99_ms(now_ms)
        self.last_p99_ms = p99
        if p99 is not None and p99 > self.target_p99_ms:
            self.decreases += 1
            if self._slice <= self.slice_min:
                self.pauses += 1
                self.pause.start(now_ms)
            self._slice = max(self.slice_min, self._slice // 2)
        else:
            self._slice = min(self.slice_max, self._slice + self.slice_step)

    @property
    def paused(self) -> bool:
        """Whether a pause is in force (until it fires at the next `allow` past its deadline)."""
        return self.pause.running
