"""A node's StatsGet and InfoGet, and its slow-request and quorum-failure logs, over the fake link
of tests/unit/test_node.py (no sockets, a clock the test moves)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dynd.protocol import messages
from tests.unit.test_node import LIMITS, Link, keys_whose_primaries_are, values


def stats(link: Link, name: str) -> messages.StatsOk:
    answer = link.ask(name, messages.StatsGet(id=99))
    assert isinstance(answer, messages.StatsOk), answer
    return answer


def counters(answer: messages.StatsOk) -> dict[tuple[str, str], int]:
    return {(m.name, m.label): m.value for m in answer.counters}


def test_puts_and_gets_show_in_stats_with_counts_outcomes_and_versions_per_get() -> None:
    link = Link(["n1", "n2", "n3"], n=3, r=2, w=2)
    for i in range(3):
        assert isinstance(link.ask("n1", messages.Put(id=i, key=b"k%d" % i, value=b"v")), messages.PutOk)
    for i in range(3):
        assert values(link.ask("n1", messages.Get(id=10 + i, key=b"k%d" % i))) == [b"v"]
    answer = link.ask("n1", messages.Get(id=20, key=b"k0", r=9))  # refused: r > n
    assert isinstance(answer, messages.ErrorReply) and answer.code == "bad_request"
    found = stats(link, "n1")
    latency = {(v.op, v.window): v for v in found.latencies}
    assert latency[("put", "60s")].count == latency[("put", "start")].count == 3
    assert latency[("get", "start")].count == 4
    assert counters(found)[("requests", "put:ok")] == 3
    assert counters(found)[("requests", "get:ok")] == 3
    assert counters(found)[("requests", "get:bad_request")] == 1
    assert found.versions_per_get == [3, 0, 0, 0]
    assert ("replicate", "start") in {(v.op, v.window) for v in stats(link, "n2").latencies}, "n2 stored n1's writes as replica"
    gauges = {(m.name, m.label): m.value for m in found.gauges}
    assert gauges[("keys", "")] == 3
    assert gauges[("members", "alive")] == 3
    assert gauges[("partitions_owned", "")] == 8, "n=3 of 3 nodes: every partition"


def test_a_get_of_concurrent_writes_counts_two_versions() -> None:
    link = Link(["n1", "n2", "n3"], n=3, r=2, w=1)
    for writer in ("n1", "n2"):
        for other in {"n1", "n2", "n3"} - {writer}:
            link.drop(writer, other)
        assert isinstance(link.ask(writer, messages.Put(id=1, key=b"k", value=writer.encode())), messages.PutOk)
        link.heal()
    assert values(link.ask("n3", messages.Get(id=3, key=b"k", r=3))) == [b"n1", b"n2"]
    found = stats(link, "n3")
    assert found.versions_per_get == [0, 1, 0, 0]
    assert counters(found)[("read_repairs", "")] >= 1


def test_info_tells_who_the_node_is() -> None:
    link = Link(["n1", "n2", "n3"], n=3)
    link.ask("n1", messages.Put(id=1, key=b"k", value=b"v"))
    link.run_for(1_000)
    info = link.ask("n1", messages.InfoGet(id=5))
    assert isinstance(info, messages.InfoOk) and info.id == 5
    assert info.node == "n1" and info.advertise == link.address["n1"] and info.keys == 1
    assert info.uptime_ms == 1_000 and info.partitions_owned == 8


def test_a_slow_request_is_logged_once_with_a_key_hash_and_never_the_key(caplog: pytest.LogCaptureFixture) -> None:
    link = Link(["n1", "n2", "n3"], n=3, r=2, w=2)
    replies: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="dynd.node"):
        link.nodes["n1"].handle(messages.Put(id=1, key=b"secret-key", value=b"v"), replies.append)
        link.clock.now += LIMITS.slow_request_ms + 1  # the replicas answer late
        link.deliver()
    assert isinstance(link.reply_of(replies), messages.PutOk)
    slow = [r.getMessage() for r in caplog.records if "slow" in r.getMessage()]
    assert len(slow) == 1, slow
    assert "put of key" in slow[0] and "replicas asked 2" in slow[0] and "secret-key" not in slow[0]


def test_a_quorum_failure_names_the_replicas_that_did_not_answer(caplog: pytest.LogCaptureFixture) -> None:
    link = Link(["n1", "n2", "n3"], n=3, r=2, w=3)
    link.refuse("n1", "n3")
    link.drop("n1", "n2")  # n2 never answers: the lost put waits for it until the deadline
    replies: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="dynd.node"):
        link.nodes["n1"].handle(messages.Put(id=1, key=b"k", value=b"v", w=3), replies.append)
        link.deliver()
        assert replies == [], "w=3 is lost, but the count waits for n2's answer"
        link.run_for(LIMITS.request_timeout_ms + LIMITS.tick_interval_ms)
    answer = link.reply_of(replies)
    assert isinstance(answer, messages.ErrorReply) and answer.code == "quorum_failed", answer
    failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage() and "did not answer" in r.getMessage()]
    assert len(failed) == 1 and "failed n3, no answer yet n2" in failed[0], failed
    assert counters(stats(link, "n1"))[("requests", "put:quorum_failed")] == 1


def test_a_forwarded_request_is_counted_once_by_the_node_the_client_asked() -> None:
    link = Link(["n1", "n2", "n3"], n=2, r=2, w=2)
    key = next(keys_whose_primaries_are(link, {"n1", "n2"}))
    assert isinstance(link.ask("n3", messages.Put(id=7, key=key, value=b"v")), messages.PutOk)
    asked = stats(link, "n3")
    assert counters(asked)[("requests", "put:ok")] == 1
    assert {(v.op, v.window): v.count for v in asked.latencies}[("put", "start")] == 1
    coordinator = next(dst for _, dst, sent in link.sent if isinstance(sent, messages.Put))
    served = stats(link, coordinator)
    assert ("requests", "put:ok") not in counters(served), "not counted twice"
    assert {(v.op, v.window): v.count for v in served.latencies}[("forward", "start")] == 1


def test_a_latency_starts_when_the_request_reached_the_host_when_the_shell_knows() -> None:
    link = Link(["n1", "n2", "n3"], n=3, r=2, w=2)
    node = link.nodes["n1"]
    replies: list[Any] = []
    node.handle(messages.Put(id=1, key=b"k", value=b"v"), replies.append, received_us=node.now_us() - 250_000)  # waited 250 ms in its socket
    link.deliver()
    assert isinstance(link.reply_of(replies), messages.PutOk)
    put = {(v.op, v.window): v for v in stats(link, "n1").latencies}[("put", "start")]
    assert put.count == 1 and 249_000 <= put.p50_us <= 251_000, put


def test_with_measuring_off_no_latency_or_request_count_is_kept_but_admission_control_still_hears() -> None:
    link = Link(["n1", "n2", "n3"], n=3, r=2, w=2)
    for node in link.nodes.values():
        node.measure = False
    heard: list[float] = []
    budget = link.nodes["n1"].budget
    record = budget.record_ms
    budget.record_ms = lambda latency_ms, now_ms: (heard.append(latency_ms), record(latency_ms, now_ms))  # type: ignore[method-assign]
    assert isinstance(link.ask("n1", messages.Put(id=1, key=b"k", value=b"v")), messages.PutOk)
    assert values(link.ask("n1", messages.Get(id=2, key=b"k"))) == [b"v"]
    found = stats(link, "n1")
    assert found.latencies == [] and ("requests", "put:ok") not in counters(found)
    assert stats(link, "n2").latencies == []
    assert len(heard) == 2, "the put and the get fed admission control"
