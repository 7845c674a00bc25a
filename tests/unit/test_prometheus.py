"""The metrics exporter: StatsOk in, Prometheus text out (parsed back with prometheus-client's own
parser), and the tiny HTTP responder over an in-memory stream pair."""

from __future__ import annotations

import re

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from dynd.protocol.messages import ErrorReply, LatencyView, Metric, StatsGet, StatsOk
from dynd.shell.metrics_http import REQUEST_HEAD_BYTES_MAX, MetricsServer
from dynd.shell.node_stats import NodeStats
from dynd.shell.prometheus import CONTENT_TYPE, render

MEMBERS = {"n1", "n2", "n3"}
ALLOWED_LABEL_VALUES = {
    "op": {"get", "put", "delete", "replicate", "forward"},
    "outcome": {"ok", "timeout", "unreachable", "other"},
    "quantile": {"0.5", "0.99", "0.999"},
    "window": {"60s", "start"},
    "status": {"alive", "suspect", "dead"},
    "liveness": {"alive", "suspect", "dead"},
    "target": MEMBERS,
    "versions": {"1", "2", "3", "4+"},
    "node": MEMBERS,
}


def sample_stats() -> StatsOk:
    latencies = [
        LatencyView(op=op, window=window, count=100, p50_us=800, p99_us=4_000, p999_us=9_000, max_us=12_000)
        for op in ("get", "put", "delete", "replicate", "forward")
        for window in ("60s", "start")
    ]
    counters = [
        Metric("requests", "get:ok", 90),
        Metric("requests", "get:timeout", 3),
        Metric("requests", "put:ok", 40),
        Metric("requests", "put:unreachable", 1),
        Metric("requests", "put:secret-key-name", 1),  # not an error code: folded into "other"
        Metric("requests", "key\x00:ok", 1),  # not an op: dropped
        Metric("read_repairs", "", 2),
        Metric("hints_stored", "", 5),
        Metric("swim_changes", "suspect", 1),
        Metric("swim_changes", "dead", 1),
        Metric("frames_refused", "", 0),
    ]
    gauges = [
        Metric("keys", "", 1234),
        Metric("lmdb_used_bytes", "", 65536),
        Metric("hints_pending", "n2", 5),
        Metric("hints_pending", "user key with spaces\x00", 1),  # not a bounded value -> dropped
        Metric("members", "alive", 2),
        Metric("members", "dead", 1),
        Metric("Bad Name", "", 1),  # not a metric name -> dropped
    ]
    return StatsOk(id=0, node="n1", uptime_ms=61_000, latencies=latencies, counters=counters, gauges=gauges, versions_per_get=[90, 2, 1, 0])


def parsed(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_every_family_has_the_prefix_help_and_type_and_parses_back() -> None:
    text = render(sample_stats(), "n1", "0.1.0").decode()
    families = parsed(text)
    assert families, text
    for name in families:
        assert name.startswith("dynd_"), name
        assert re.search(rf"^# HELP {name}(_total)? \S", text, re.M), name
        assert re.search(rf"^# TYPE {name}(_total)? \S", text, re.M), name
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert line.startswith("dynd_"), line
    counter_names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE") and line.endswith(" counter")]
    assert counter_names and all(name.endswith("_total") for name in counter_names), counter_names


def test_label_values_stay_in_known_sets_and_odd_ones_are_dropped() -> None:
    families = parsed(render(sample_stats(), "n1", "0.1.0").decode())
    for family in families.values():
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label == "version":
                    continue
                assert value in ALLOWED_LABEL_VALUES[label], (sample.name, label, value)
    text = render(sample_stats(), "n1", "0.1.0").decode()
    assert "secret-key" not in text and "spaces" not in text and "Bad" not in text


def test_values_come_through() -> None:
    families = parsed(render(sample_stats(), "n1", "0.1.0").decode())
    def value(family: str, name: str, **labels: str) -> float:
        matches = [s.value for s in families[family].samples if s.name == name and s.labels == labels]
        assert len(matches) == 1, (family, name, labels, families[family].samples)
        return matches[0]
    assert value("dynd_up", "dynd_up") == 1
    assert value("dynd_requests", "dynd_requests_total", op="put", outcome="other") == 1
    assert value("dynd_node_info", "dynd_node_info", node="n1", version="0.1.0") == 1
    assert value("dynd_requests", "dynd_requests_total", op="get", outcome="timeout") == 3
    assert value("dynd_request_latency_seconds", "dynd_request_latency_seconds", op="put", quantile="0.999") == 0.009
    assert value("dynd_request_latency_seconds", "dynd_request_latency_seconds_count", op="put") == 100
    assert value("dynd_request_latency_max_seconds", "dynd_request_latency_max_seconds", op="get", window="60s") == 0.012
    assert value("dynd_hints_pending", "dynd_hints_pending", target="n2") == 5
    assert value("dynd_members", "dynd_members", liveness="dead") == 1
    assert value("dynd_swim_changes", "dynd_swim_changes_total", status="suspect") == 1
    assert value("dynd_get_versions", "dynd_get_versions_total", versions="2") == 2
    assert value("dynd_keys", "dynd_keys") == 1234
    assert value("dynd_uptime_seconds", "dynd_uptime_seconds") == 61


def test_without_stats_the_scrape_still_serves_up_and_info() -> None:
    families = parsed(render(None, "n1", "0.1.0").decode())
    assert set(families) == {"dynd_up", "dynd_node_info", "dynd_stats_available"}
    assert families["dynd_stats_available"].samples[0].value == 0


class ErringNode:
    def __init__(self) -> None:
        self.asked = 0

    def handle(self, message: object, reply: object, received_us: int | None = None) -> None:
        assert isinstance(message, StatsGet)
        self.asked += 1
        reply(ErrorReply(id=0, code="bad_request", message="'stats' is not a request a node accepts", retriable=False))  # type: ignore[operator]


def test_a_node_that_refuses_stats_gives_none_logged_once(caplog) -> None:  # type: ignore[no-untyped-def]
    node = ErringNode()
    stats = NodeStats(node)
    assert stats.read() is None and stats.read() is None
    assert node.asked == 2
    assert sum("gives no stats" in record.getMessage() for record in caplog.records) == 1


# ---- the HTTP responder, over an in-memory stream ----


async def exchange(request: bytes, server: MetricsServer | None = None) -> bytes:
    server = server or MetricsServer(lambda: render(sample_stats(), "n1", "0.1.0"))
    client, served = trio.testing.memory_stream_pair()
    answer = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, served)
        await client.send_all(request)
        while chunk := await client.receive_some(65536):
            answer += chunk
    return bytes(answer)


async def test_get_metrics_answers_200_with_the_exposition() -> None:
    answer = await exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert f"Content-Type: {CONTENT_TYPE}".encode() in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert "dynd_requests" in parsed(body.decode())


async def test_other_paths_and_methods_are_refused() -> None:
    assert (await exchange(b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert (await exchange(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")).startswith(b"HTTP/1.1 405")
    assert (await exchange(b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")


async def test_an_oversized_head_is_refused_without_reading_on() -> None:
    answer = await exchange(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (REQUEST_HEAD_BYTES_MAX + 10) + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]


async def test_a_silent_client_is_dropped_at_the_deadline() -> None:
    server = MetricsServer(lambda: b"", timeout_s=1.0)
    client, served = trio.testing.memory_stream_pair()
    with trio.fail_after(5):  # the server's own deadline, not this one, must end it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, served)
            await client.send_all(b"GET /metr")
            assert await client.receive_some(100) == b""


async def test_connections_over_the_limit_are_closed_unanswered() -> None:
    server = MetricsServer(lambda: b"ok", connections_max=1, timeout_s=10.0)
    first_client, first_served = trio.testing.memory_stream_pair()
    second_client, second_served = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, first_served)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(server.handle, second_served)
        assert await second_client.receive_some(100) == b""
        await first_client.send_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        assert (await first_client.receive_some(100)).startswith(b"HTTP/1.1 200")


# ---- metrics_listen in the config ----


def test_metrics_listen_beyond_loopback_needs_trusted_network(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from dynd.config import ConfigError, check_metrics_listen, load_config

    base = {"name": "n1", "data_dir": str(tmp_path)}
    assert load_config(None, base).metrics_listen == ""
    assert check_metrics_listen(load_config(None, base)) is None
    assert check_metrics_listen(load_config(None, {**base, "metrics_listen": "127.0.0.1:9740"})) is None
    with pytest.raises(ConfigError, match="metrics_listen.*trusted_network"):
        check_metrics_listen(load_config(None, {**base, "metrics_listen": "0.0.0.0:9740"}))
    warning = check_metrics_listen(load_config(None, {**base, "metrics_listen": "[::]:9740", "trusted_network": True}))
    assert warning is not None and "without authentication" in warning
    with pytest.raises(ConfigError, match="metrics_listen address"):
        load_config(None, {**base, "metrics_listen": "host:notaport"})
