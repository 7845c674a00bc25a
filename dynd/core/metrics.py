"""What a node measures (issue 14): latency histograms per op, counters, and the versions each get
answered with. Pure, plain data: the caller passes every clock reading in.

Rules:
- A latency is recorded once, into the current 10-s slot of its op's ring of six slots. When a
  slot is reused for a new 10-s period, its contents are first added to the op's since-start
  histogram; so a request costs one `record_value` (about 1 us), and merging happens only on a
  period change or a read.
- "60s" is the slots whose period lies in the last six periods (50 to 60 s of history); "start"
  is the since-start histogram plus every slot not yet folded into it.
- Histograms span 1 us to 60 s at 3 significant digits (HdrHistogram); a longer latency is
  recorded as 60 s, so nothing is lost from the count.
- Counters only grow; a counter is a name and one bounded label (an op and outcome, a status;
  never a key).
"""

from __future__ import annotations

from collections import defaultdict

from hdrh.histogram import HdrHistogram

from dynd.protocol.messages import LatencyView, Metric

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
SLOT_MS = 10_000
SLOTS = 6  # SLOTS * SLOT_MS = the 60-s window
OPS = ("get", "put", "delete", "replicate", "forward")
VERSION_BUCKETS = 4  # gets that saw 1, 2, 3, and 4 or more versions


def _histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


class OpLatency:
    """One op's latencies: a ring of 10-s slots and what rotated out of it (module docstring)."""

    __slots__ = ("slots", "periods", "since_start")

    def __init__(self) -> None:
        self.slots = [_histogram() for _ in range(SLOTS)]
        self.periods = [-1] * SLOTS  # the 10-s period each slot holds; -1: none yet
        self.since_start = _histogram()

    def record(self, duration_us: int, now_ms: int) -> None:
        period = now_ms // SLOT_MS
        index = period % SLOTS
        slot = self.slots[index]
        if self.periods[index] != period:
            self._rotate(index, period)
        slot.record_value(min(max(duration_us, 0), HIGHEST_US))

    def _rotate(self, index: int, period: int) -> None:
        slot = self.slots[index]
        if slot.get_total_count():
            self.since_start.add(slot)
            slot.reset()
        self.periods[index] = period

    def window(self, now_ms: int) -> HdrHistogram:
        """The last 60 s merged into a new histogram."""
        oldest = now_ms // SLOT_MS - SLOTS + 1
        merged = _histogram()
        for period, slot in zip(self.periods, self.slots, strict=True):
            if period >= oldest and slot.get_total_count():
                merged.add(slot)
        return merged

    def total(self) -> HdrHistogram:
        merged = _histogram()
        merged.add(self.since_start)
        for slot in self.slots:
            if slot.get_total_count():
                merged.add(slot)
        return merged


def summary(op: str, window: str, histogram: HdrHistogram) -> LatencyView:
    return LatencyView(
        op=op,
        window=window,
        count=histogram.get_total_count(),
        p50_us=histogram.get_value_at_percentile(50),
        p99_us=histogram.get_value_at_percentile(99),
        p999_us=histogram.get_value_at_percentile(99.9),
        max_us=histogram.get_max_value(),
    )


class Metrics:
    """A node's measurements; `latency`, `count` and `versions_seen` are the hot-path calls."""

    def __init__(self) -> None:
        self.ops = {op: OpLatency() for op in OPS}
        self.counters: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.versions_per_get = [0] * VERSION_BUCKETS

    def latency(self, op: str, duration_us: int, now_ms: int) -> None:
        self.ops[op].record(duration_us, now_ms)

    def count(self, name: str, label: str = "", amount: int = 1) -> None:
        self.counters[name, label] += amount

    def versions_seen(self, versions: int) -> None:
        """A get answered with `versions` live siblings (0, not found, is not a version count)."""
        if versions > 0:
            self.versions_per_get[min(versions, VERSION_BUCKETS) - 1] += 1

    def latencies(self, now_ms: int) -> list[LatencyView]:
        """Both windows of every op that has recorded anything since start."""
        views = []
        for op, latency in self.ops.items():
            total = latency.total()
            if not total.get_total_count():
                continue
            views.append(summary(op, "60s", latency.window(now_ms)))
            views.append(summary(op, "start", total))
        return views

    def counter_list(self) -> list[Metric]:
        return [Metric(name=name, label=label, value=value) for (name, label), value in sorted(self.counters.items())]


class LogBudget:
    """At most `lines_per_s` log lines a second (a storm of slow or failed requests must not
    flood the log); `allow` says whether this line may go out, and `dropped` how many were
    held back since the last line that went out (the caller writes it into that line)."""

    def __init__(self, lines_per_s: int) -> None:
        self.lines_per_s = lines_per_s
        self.second = -1
        self.lines = 0
        self.dropped = 0

    def allow(self, now_ms: int) -> bool:
        second = now_ms // 1000
        if second != self.second:
            self.second, self.lines = second, 0
        if self.lines >= self.lines_per_s:
            self.dropped += 1
            return False
        self.lines += 1
        return True

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped
