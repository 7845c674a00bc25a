"""A node's StatsOk as Prometheus metric families, written by prometheus-client's own exposition.

`metric_families(stats, node, version)` is a pure function: a StatsOk (or None when the node could
not give one) in, metric families out. `render` puts them in a fresh registry and returns the text
format (`generate_latest`) that GET /metrics serves (`dynd.shell.metrics_http`).

Rules the output keeps:
- every name starts `dynd_`; counters end `_total` (prometheus-client appends it); HELP and TYPE
  lines are written by prometheus-client for every family;
- label values come from bounded sets only: an op, an outcome (ok, an error code this dynd knows,
  else "other"), a liveness or SWIM status, a member name, a versions bucket. A node's StatsOk
  never carries a key, and a name or label value that does not look like one of those is dropped
  here rather than exported.

Latencies: StatsOk carries p50, p99, p99.9 and max per op (already computed from the node's
HdrHistograms), not bucket counts, so a Prometheus histogram cannot be rebuilt from it. They are
exported as a summary: `dynd_request_latency_seconds{op,quantile}` over the last 60 s (as the
client libraries' summaries use a sliding window), with `_count` since start (a counter, so
`rate()` gives ops/s). StatsOk has no latency sum, so the summary has no `_sum` sample; mean
latency is not exported. Max per window and the since-start quantiles are gauges beside it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.samples import Sample

from dynd.protocol.errors import DynError
from dynd.protocol.messages import LatencyView, StatsOk
from dynd.protocol.messages import Metric as StatsMetric

PREFIX = "dynd_"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Names from StatsOk (the issue-14 contract): help text and the label name its `label` becomes.
# None: the metric has no label (a label given anyway is dropped).
COUNTERS: dict[str, tuple[str, str | None]] = {
    "read_repairs": ("Read repairs sent by this node as coordinator.", None),
    "hints_stored": ("Hinted writes this node stored for an unreachable replica.", None),
    "hints_delivered": ("Hints this node delivered to their target.", None),
    "hints_expired": ("Hints this node dropped undelivered when they expired.", None),
    "handoff_keys": ("Keys this node sent in ownership handoff.", None),
    "handoff_bytes": ("Bytes this node sent in ownership handoff.", None),
    "ae_rounds": ("Anti-entropy exchanges this node finished.", None),
    "ae_keys_repaired": ("Keys anti-entropy repaired on this node.", None),
    "contexts_pruned": ("Version contexts pruned to their size limit.", None),
    "admission_shrinks": ("Times admission control shrank the background work slice.", None),
    "swim_changes": ("Failure-detector state changes this node saw, by the new status.", "status"),
    "connections_refused": ("Connections refused (over the connection limit or failing the hello).", None),
    "frames_refused": ("Frames refused (too large, too slow or malformed).", None),
}
GAUGES: dict[str, tuple[str, str | None]] = {
    "keys": ("Keys stored on this node.", None),
    "lmdb_used_bytes": ("Bytes of the LMDB map in use.", None),
    "lmdb_map_bytes": ("Size of the LMDB map (the store's capacity) in bytes.", None),
    "pending_writes": ("Writes queued for the group committer.", None),
    "open_connections": ("Open TCP connections to this node.", None),
    "hints_pending": ("Hints this node holds, by the member they are for.", "target"),
    "partitions_owned": ("Partitions this node holds as a replica.", None),
    "partitions_in_transfer": ("Partitions in ownership transfer to or from this node.", None),
    "members": ("Cluster members by this node's failure detector verdict.", "liveness"),
}
LATENCY_OPS = ("get", "put", "delete", "replicate", "forward")
WINDOW_RECENT = "60s"
WINDOW_START = "start"
VERSIONS_BUCKETS = ("1", "2", "3", "4+")
OUTCOME_OTHER = "other"  # an outcome that is not "ok" or a code this dynd knows (a newer node's)


def _error_codes(cls: type[DynError] = DynError) -> set[str]:
    return {cls.code}.union(*(_error_codes(sub) for sub in cls.__subclasses__()))


OUTCOMES = frozenset({"ok", *_error_codes()})

# A metric name from the node becomes part of a Prometheus name; a label value must be one a
# member name, op or error code could be. Anything else is dropped, so no odd value (or a key,
# were a bug to put one there) reaches a time-series database.
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def metric_families(stats: StatsOk | None, node: str, version: str) -> list[Metric]:
    """The families one scrape serves. `stats` None: the node gave no StatsOk (it answered with
    an error); the scrape still serves dynd_up, dynd_node_info and dynd_stats_available 0."""
    families: list[Metric] = []
    up = GaugeMetricFamily(f"{PREFIX}up", "1 while this dynd process serves /metrics.")
    up.add_metric([], 1)
    families.append(up)
    info = GaugeMetricFamily(f"{PREFIX}node_info", "This node's name and dynd version; the value is always 1.", labels=["node", "version"])
    info.add_metric([_bounded(node) or "unknown", _bounded(version) or "unknown"], 1)
    families.append(info)
    available = GaugeMetricFamily(f"{PREFIX}stats_available", "1 when the node answered the stats request this scrape, else 0.")
    available.add_metric([], 0 if stats is None else 1)
    families.append(available)
    if stats is None:
        return families
    uptime = GaugeMetricFamily(f"{PREFIX}uptime_seconds", "Seconds since this node started.")
    uptime.add_metric([], stats.uptime_ms / 1000)
    families.append(uptime)
    families.extend(_latency_families(stats.latencies))
    families.extend(_request_counter(stats.counters))
    families.extend(_table_families(stats.counters, COUNTERS, CounterMetricFamily, "counter"))
    families.extend(_table_families(stats.gauges, GAUGES, GaugeMetricFamily, "gauge"))
    families.append(_versions_family(stats.versions_per_get))
    return families


def render(stats: StatsOk | None, node: str, version: str) -> bytes:
    """The text exposition of one scrape, by prometheus-client's registry and writer."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metric_families(stats, node, version)))
    return generate_latest(registry)


class _Snapshot:
    """A custom collector over families built once for this scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _bounded(value: str) -> str | None:
    return value if _LABEL_VALUE.match(value) else None


def _latency_families(latencies: Iterable[LatencyView]) -> list[Metric]:
    by_key = {(view.op, view.window): view for view in latencies if view.op in LATENCY_OPS}
    summary = SummaryMetricFamily(
        f"{PREFIX}request_latency_seconds",
        "Request latency at this node: quantiles over the last 60 s; _count since start. get, put, delete "
        "as coordinator; replicate and forward as replica or forwarder. No _sum: the node does not keep one.",
        labels=["op"],
    )
    since_start = GaugeMetricFamily(
        f"{PREFIX}request_latency_since_start_seconds", "Request latency quantiles since this node started.", labels=["op", "quantile"]
    )
    maximum = GaugeMetricFamily(f"{PREFIX}request_latency_max_seconds", "Slowest request in the window (60s or start).", labels=["op", "window"])
    for op in LATENCY_OPS:
        recent, start = by_key.get((op, WINDOW_RECENT)), by_key.get((op, WINDOW_START))
        if recent is not None:
            for quantile, value in _quantiles(recent):
                summary.samples.append(Sample(summary.name, {"op": op, "quantile": quantile}, value))
            maximum.add_metric([op, WINDOW_RECENT], recent.max_us / 1e6)
        if start is not None:
            summary.samples.append(Sample(f"{summary.name}_count", {"op": op}, float(start.count)))
            for quantile, value in _quantiles(start):
                since_start.add_metric([op, quantile], value)
            maximum.add_metric([op, WINDOW_START], start.max_us / 1e6)
    return [summary, since_start, maximum]


def _quantiles(view: LatencyView) -> list[tuple[str, float]]:
    return [("0.5", view.p50_us / 1e6), ("0.99", view.p99_us / 1e6), ("0.999", view.p999_us / 1e6)]


def _request_counter(counters: Iterable[StatsMetric]) -> list[Metric]:
    requests = CounterMetricFamily(
        f"{PREFIX}requests", "Requests this node coordinated, by op and outcome (ok or an error code).", labels=["op", "outcome"]
    )
    totals: dict[tuple[str, str], int] = {}
    for metric in counters:
        if metric.name != "requests":
            continue
        op, _, outcome = metric.label.partition(":")
        if op in ("get", "put", "delete"):
            key = (op, outcome if outcome in OUTCOMES else OUTCOME_OTHER)
            totals[key] = totals.get(key, 0) + metric.value
    for (op, outcome), value in sorted(totals.items()):
        requests.add_metric([op, outcome], value)
    return [requests]



def _table_families(records: Iterable[StatsMetric], table: dict[str, tuple[str, str | None]], family_type: type, kind: str) -> list[Metric]:
    """One family per known name (and per unknown but well-formed name, so a node newer than this
    exporter still shows what it counts), each record a sample."""
    families: dict[str, Metric] = {}
    for record in records:
        if record.name == "requests" or not _NAME.match(record.name):
            continue
        help_text, label_name = table.get(record.name, (f"dynd {kind} {record.name} (not described by this exporter).", "label"))
        family = families.get(record.name)
        if family is None:
            labels = [label_name] if label_name else []
            family = families[record.name] = family_type(f"{PREFIX}{record.name}", help_text, labels=labels)
        if label_name is None:
            family.add_metric([], record.value)
        elif _bounded(record.label):
            family.add_metric([record.label], record.value)
    return list(families.values())


def _versions_family(versions_per_get: list[int]) -> Metric:
    family = CounterMetricFamily(
        f"{PREFIX}get_versions", "Gets answered, by how many versions they returned (1, 2, 3, 4+; the paper's section 6.3).", labels=["versions"]
    )
    for bucket, count in zip(VERSIONS_BUCKETS, versions_per_get):
        family.add_metric([bucket], count)
    return family
