"""StatsGet and InfoGet on real dynd processes, through dynd.client (issue 14), and that a client
token does not read them."""

from __future__ import annotations

from pathlib import Path

from dynd.client import BlockingClient
from dynd.protocol import PROTOCOL_VERSION, messages
from tests.integration.test_security_attacks import ADMIN_TOKEN, CLIENT_TOKEN, REMOTE, assert_unauthorized, needs_remote, token_node  # noqa: F401
from tests.support.cluster import poll_until, running_cluster
from tests.support.hostile import RawConn
from tests.support.procs import DyndProcess

PUTS = 50


def test_stats_and_info_of_a_three_node_cluster_after_puts_and_gets(tmp_path: Path) -> None:
    with running_cluster(tmp_path, "s", 3) as nodes:
        entry = nodes[0]
        with BlockingClient(entry.address) as client:
            for i in range(PUTS):
                client.put(b"stats-%d" % i, b"v%d" % i)
            for i in range(PUTS):
                assert client.get(b"stats-%d" % i).values == [b"v%d" % i]
            stats = client.stats()
            info = client.info()
        assert stats.node == entry.name and stats.uptime_ms > 0
        latency = {(v.op, v.window): v for v in stats.latencies}
        for op in ("get", "put"):
            for window in ("60s", "start"):
                view = latency[(op, window)]
                assert view.count >= PUTS, view  # every request entered here (forwarded ones too)
                assert 0 < view.p50_us <= view.p99_us <= view.p999_us <= view.max_us < 3_000_000, view
        counters = {(m.name, m.label): m.value for m in stats.counters}
        assert counters[("requests", "put:ok")] == PUTS and counters[("requests", "get:ok")] == PUTS
        assert sum(stats.versions_per_get) >= 1 and stats.versions_per_get[1:] == [0, 0, 0]
        gauges = {(m.name, m.label): m.value for m in stats.gauges}
        assert gauges[("keys", "")] == PUTS, "n=3 of 3 nodes: every node holds every key"
        assert gauges[("members", "alive")] == 3
        assert 0 < gauges[("lmdb_used_bytes", "")] < gauges[("lmdb_map_bytes", "")]
        assert gauges[("open_connections", "")] >= 1, "ours"
        assert info.node == entry.name and info.protocol_version == PROTOCOL_VERSION and info.version
        assert info.advertise == entry.address and info.data_dir and info.keys == PUTS
        assert 0 < info.disk_used_bytes < info.map_bytes and info.partitions_owned == 64

        def replicated_everywhere() -> bool:  # each other node stored the writes as a replica
            for node in nodes[1:]:
                with BlockingClient(node.address) as other:
                    views = {(v.op, v.window): v.count for v in other.stats().latencies}
                if views.get(("replicate", "start"), 0) < 1:
                    return False
            return True

        poll_until("replicate latencies on the other nodes", replicated_everywhere)


@needs_remote
def test_a_client_token_cannot_read_stats_or_info(token_node: DyndProcess) -> None:  # noqa: F811
    remote = f"{REMOTE}:{token_node.port}"
    with RawConn(remote) as conn:
        reply = conn.hello(token=CLIENT_TOKEN)
        assert isinstance(reply, messages.HelloOk) and "admin" not in (reply.roles or []), reply
        assert_unauthorized(conn.request(messages.StatsGet(id=1)), "stats with a client token")
        assert_unauthorized(conn.request(messages.InfoGet(id=2)), "info with a client token")
    with RawConn(remote) as conn:
        reply = conn.hello(token=ADMIN_TOKEN)
        assert isinstance(reply, messages.HelloOk), reply
        assert isinstance(conn.request(messages.StatsGet(id=3)), messages.StatsOk)
        assert isinstance(conn.request(messages.InfoGet(id=4)), messages.InfoOk)
