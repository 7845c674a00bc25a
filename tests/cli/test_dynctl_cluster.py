"""dynctl cluster, ring and dev: usage, rendering, exit codes, and `dev up` driving real dynd processes.

`cluster` and `ring` run against `fake_cluster_node.py`, a stand-in that speaks dynd's real framing
and codec with canned replies, so the tables, the JSON and the exit codes are checked against known
numbers over a real connection (a real cluster's ring varies with its claim). `dev up` starts real
nodes on 127.0.0.1 and is checked end to end, through dynctl, against them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fake_cluster_node as fake
import pytest
from dynctl_testing import DYNCTL_DEADLINE_S, HOST, REPO, DynctlRunner, RunningServer, dynctl_env, start_server, stop_server

from dynctl.cluster import HandoffRate, ring_shares, status_table
from dynctl.dev import CreationSettings, creation_settings, ensure_secret_file, example_commands, plan_cluster
from dynd.protocol.auth import load_keyring
from dynctl.ring import summarize_ring
from dynd.protocol import messages
from dynd.protocol.address import format_address
from tests.support.procs import free_port, probe

FAKE_NODE = REPO / "tests" / "cli" / "fake_cluster_node.py"
DEV_READY_DEADLINE_S = 60.0
DEV_STOP_DEADLINE_S = 30.0
NODE_NAME_PATTERN = re.compile(r"\bfake\d\b")
ROLE_PATTERN = re.compile(r"\b(primary|fallback)\b")

# ---- fixtures ----


def _start_fake(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> RunningServer:
    workdir = tmp_path_factory.mktemp("fake-node")
    address = format_address(HOST, free_port())
    argv = [sys.executable, str(FAKE_NODE), "--listen", address, *extra]
    return start_server(argv, address, workdir / "fake-node.log")


@pytest.fixture(scope="module")
def fake_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = _start_fake(tmp_path_factory)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def node_without_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = _start_fake(tmp_path_factory, "--without-cluster")
    yield server
    stop_server(server)


@pytest.fixture
def on_fake(fake_node: RunningServer, dynctl: DynctlRunner) -> DynctlRunner:
    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return dynctl("--node", fake_node.address, *args)

    return run


def json_of(result: subprocess.CompletedProcess[bytes]) -> Any:
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1, result.stdout  # one document on one line
    return json.loads(lines[0])


def text_of(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


# ---- help and usage ----


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["cluster", "--help"], ["join", "leave", "remove", "status", "transfers"]),
        (["cluster", "join", "--help"], ["SEED", "Exit status", "--dry-run"]),
        (["cluster", "leave", "--help"], ["[NODE]", "remove", "--dry-run", "--wait", "safe to stop"]),
        (["cluster", "remove", "--help"], ["--dry-run", "--force", "refuses"]),
        (["cluster", "transfers", "--help"], ["in flight", "queued"]),
        (["cluster", "status", "--help"], ["share of the ring", "transfers still pending"]),
        (["ring", "--help"], ["status", "key"]),
        (["ring", "status", "--help"], ["balance"]),
        (["ring", "key", "--help"], ["preference list", "fallbacks"]),
        (["dev", "--help"], ["up"]),
        (["dev", "up", "--help"], ["--nodes", "--dir", "--base-port", "--n", "--r", "--w", "SIGTERM", "Exit status"]),
    ],
)
def test_help_describes_the_commands(dynctl: DynctlRunner, args: list[str], expected: list[str]) -> None:
    result = dynctl(*args)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.decode().split())  # as one line, wherever click wrapped it
    assert [phrase for phrase in expected if phrase not in text] == []


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["cluster"], id="cluster-without-command"),
        pytest.param(["cluster", "frobnicate"], id="cluster-unknown-command"),
        pytest.param(["cluster", "join"], id="join-without-seed"),
        pytest.param(["cluster", "join", "a:b:c"], id="join-bad-seed"),
        pytest.param(["cluster", "join", "127.0.0.1:70000"], id="join-bad-port"),
        pytest.param(["cluster", "remove"], id="remove-without-node"),
        pytest.param(["cluster", "remove", " "], id="remove-empty-node"),
        pytest.param(["cluster", "leave", "a", "b"], id="leave-two-nodes"),
        pytest.param(["ring", "key"], id="key-without-key"),
        pytest.param(["ring", "status", "extra"], id="status-extra-argument"),
    ],
)
def test_bad_cluster_and_ring_usage_exits_2(fake_node: RunningServer, dynctl: DynctlRunner, args: list[str]) -> None:
    result = dynctl("--node", fake_node.address, *args)
    assert result.returncode == 2, result.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        pytest.param([], "--nodes", id="no-nodes"),
        pytest.param(["--nodes", "0"], "--nodes", id="zero-nodes"),
        pytest.param(["--nodes", "33"], "--nodes", id="too-many-nodes"),
        pytest.param(["--nodes", "2", "--base-port", "65535"], "65536", id="ports-past-65535"),
        pytest.param(["--nodes", "2", "--r", "3"], "--r", id="r-above-n-of-a-small-cluster"),
        pytest.param(["--nodes", "4", "--n", "2", "--w", "3"], "--w", id="w-above-given-n"),
        pytest.param(["--nodes", "5", "--r", "4"], "--r", id="r-above-the-default-n"),
        pytest.param(["--nodes", "1", "--n", "0"], "--n", id="zero-replicas"),
    ],
)
def test_bad_dev_up_usage_exits_2_before_starting_anything(
    dynctl: DynctlRunner, tmp_path: Path, args: list[str], complaint: str
) -> None:
    directory = tmp_path / "dev"
    result = dynctl("dev", "up", "--dir", str(directory), *args)
    assert result.returncode == 2, result.stderr
    assert complaint in result.stderr.decode()
    assert not directory.exists()


def test_dev_up_refuses_a_port_in_use(dynctl: DynctlRunner, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = dynctl("dev", "up", "--nodes", "1", "--dir", str(tmp_path / "dev"), "--base-port", str(port))
    assert result.returncode == 2, result.stderr
    assert f"{port}" in result.stderr.decode() and "in use" in result.stderr.decode()
    assert not (tmp_path / "dev").exists()


# ---- cluster against the fake node ----


def test_cluster_status_json_lists_every_member_with_its_share(on_fake: DynctlRunner) -> None:
    document = json_of(on_fake("--json", "cluster", "status"))
    assert document["node"] == fake.NODE_NAME
    assert document["members"] == [
        {"name": "fake1", "address": "127.0.0.1:7501", "status": "valid", "partitions": 3, "share": 0.375, "reachable": True, "liveness": "alive", "incarnation": 0, "transfers_pending": 0, "hints_pending": 0, "location": None},
        {"name": "fake2", "address": "127.0.0.1:7502", "status": "valid", "partitions": 3, "share": 0.375, "reachable": True, "liveness": "alive", "incarnation": 0, "transfers_pending": 2, "hints_pending": 0, "location": None},
        {"name": "fake3", "address": "127.0.0.1:7503", "status": "leaving", "partitions": 2, "share": 0.25, "reachable": False, "liveness": "dead", "incarnation": 4, "transfers_pending": 1, "hints_pending": 7, "location": None},
        {"name": "fake4", "address": "127.0.0.1:7504", "status": "joining", "partitions": 0, "share": 0.0, "reachable": True, "liveness": "alive", "incarnation": 0, "transfers_pending": 0, "hints_pending": 0, "location": None},
    ]
    # Without locations every node is a host and a zone of its own: 3 nodes, N = 2, all holds.
    assert document["placement"]["hosts"]["holds"] and document["placement"]["zones"]["holds"]


def test_cluster_status_table_shows_shares_as_percentages(on_fake: DynctlRunner) -> None:
    table = text_of(on_fake("cluster", "status"))
    for expected in ["cluster as seen by fake1", "transfers", "37.5%", "25.0%", "0.0%", "leaving", "127.0.0.1:7504", "dead (4)", "hints"]:
        assert expected in table
    fake3_row = next(line for line in table.splitlines() if "fake3" in line)
    assert fake3_row.split()[:9] == ["fake3", "127.0.0.1:7503", "leaving", "2", "25.0%", "dead", "(4)", "1", "7"]


def test_join_sends_the_seed_as_host_port_and_prints_the_answer(on_fake: DynctlRunner) -> None:
    # A seed without a port gets the default one before it is sent.
    assert text_of(on_fake("cluster", "join", "localhost")) == fake.join_message("localhost:7400") + "\n"
    document = json_of(on_fake("--json", "cluster", "join", "127.0.0.1:7502"))
    assert document == {"action": "join", "seed": "127.0.0.1:7502", "message": fake.join_message("127.0.0.1:7502")}


def test_leave_defaults_to_the_node_itself(on_fake: DynctlRunner) -> None:
    assert text_of(on_fake("cluster", "leave")) == fake.leave_message(None) + "\n"
    assert json_of(on_fake("--json", "cluster", "leave")) == {"action": "leave", "node": None, "message": fake.leave_message(None)}
    assert json_of(on_fake("--json", "cluster", "leave", "fake2"))["message"] == fake.leave_message("fake2")


def test_remove_prints_the_answer(on_fake: DynctlRunner) -> None:
    assert text_of(on_fake("cluster", "remove", "fake3")) == fake.remove_message("fake3") + "\n"
    assert json_of(on_fake("--json", "cluster", "remove", "fake3")) == {
        "action": "remove",
        "node": "fake3",
        "message": fake.remove_message("fake3"),
    }


@pytest.mark.parametrize("command", ["remove", "leave"])
def test_a_refused_membership_change_exits_4_with_the_nodes_reason(on_fake: DynctlRunner, command: str) -> None:
    result = on_fake("--json", "cluster", command, fake.UNKNOWN_MEMBER)
    assert result.returncode == 4
    assert result.stdout == b""
    assert f"bad_request: no member named '{fake.UNKNOWN_MEMBER}'" in result.stderr.decode()


# ---- plans, remove --force, leave --wait and transfers against the fake node ----


@pytest.mark.parametrize(
    ("args", "action", "target"),
    [
        (["cluster", "leave", "fake3", "--dry-run"], "leave", "fake3"),
        (["cluster", "remove", "fake3", "--dry-run"], "remove", "fake3"),
        (["cluster", "join", "127.0.0.1:7502", "--dry-run"], "join", "127.0.0.1:7502"),
    ],
)
def test_a_dry_run_prints_the_nodes_plan_as_json(on_fake: DynctlRunner, args: list[str], action: str, target: str) -> None:
    document = json_of(on_fake("--json", *args))
    assert (document["dry_run"], document["action"], document["node"], document["planned_by"]) == (True, action, target, "fake1")
    assert document["moves"] == [
        {"partition": 2, "from": "fake3", "to": "fake1", "keys": 120, "bytes": 2400},
        {"partition": 5, "from": "fake3", "to": "fake2", "keys": 80, "bytes": 1600},
    ]
    assert {m["name"]: (m["partitions_before"], m["partitions_after"]) for m in document["members"]} == {"fake1": (3, 4), "fake2": (3, 4), "fake3": (2, 0)}
    assert (document["keys_to_move"], document["bytes_to_move"], document["windows_repeated"]) == (200, 4000, [3, 7])
    assert document["sizes_missing"] == ["fake4"] and document["notes"] == fake.PLAN_NOTES
    assert document["owners_after"] == fake.PLAN_OWNERS_AFTER


def test_a_dry_run_prints_the_plan_as_a_table_and_changes_nothing(on_fake: DynctlRunner) -> None:
    result = on_fake("cluster", "leave", "fake3", "--dry-run")
    text = text_of(result)
    assert "plan: leave fake3 (computed by fake1; nothing has changed)" in text
    fake3_row = next(line for line in text.splitlines() if line.startswith("fake3"))
    assert fake3_row.split() == ["fake3", "leaving", "->", "removed", "2", "->", "0", "2", "0", "0", "200"]
    for expected in [
        "2 of 8 partitions change owner:",
        "  fake3 -> fake1: 2",
        "  fake3 -> fake2: 5",
        "windows of 2 partitions without 2 distinct owners after the change: 2 (starting at 3, 7) (before: none)",
        "to copy to new replicas: about 200 keys, 3.9 KiB (estimated from fake1, fake2, fake3)",
        "note: fake4 did not answer",
    ]:
        assert expected in text, expected
    assert "nothing has changed" in result.stderr.decode()


def test_leave_refuses_wait_with_dry_run(on_fake: DynctlRunner) -> None:
    result = on_fake("cluster", "leave", "--dry-run", "--wait")
    assert result.returncode == 2 and b"--wait and --dry-run do not go together" in result.stderr


def test_remove_of_a_live_member_needs_force(on_fake: DynctlRunner) -> None:
    refused = on_fake("cluster", "remove", fake.LIVE_MEMBER)
    assert refused.returncode == 4 and refused.stdout == b""
    assert "is alive and answers" in refused.stderr.decode()
    assert text_of(on_fake("cluster", "remove", fake.LIVE_MEMBER, "--force")) == fake.remove_message(fake.LIVE_MEMBER) + "\n"


def test_leave_wait_follows_the_handoff_until_the_node_is_safe_to_stop(on_fake: DynctlRunner) -> None:
    result = on_fake("--json", "cluster", "leave", "--wait")
    document = json_of(result)
    first, last = fake.LEAVE_PROGRESS[0], fake.LEAVE_PROGRESS[-1]
    assert document["left"] is True and document["node"] == fake.NODE_NAME
    assert (document["partitions_handed_off"], document["keys_handed_off"], document["bytes_handed_off"]) == (
        last.partitions_sent - first.partitions_sent,
        last.keys_sent - first.keys_sent,
        last.bytes_sent - first.bytes_sent,
    )
    assert "safe to stop" in document["message"] and document["seconds"] > 0
    lines = result.stderr.decode().splitlines()  # no terminal: plain progress lines on stderr
    assert lines[0] == fake.leave_message(None)
    assert "fake1 leaving: 4 partitions (200 keys) left; 0 keys handed off" in lines[1]
    assert any("fake1 leaving: 2 partitions (100 keys) left; 100 keys handed off (" in line and "keys/s, about" in line for line in lines), lines
    assert any("holds nothing more and is removed; waiting for a member to confirm it" in line for line in lines), lines


def test_leave_wait_prints_a_sentence_without_json(on_fake: DynctlRunner) -> None:
    text = text_of(on_fake("cluster", "leave", "--wait"))  # (the seconds it took vary)
    assert text.startswith("fake1 has left: it handed off 4 partitions (200 keys, 3.9 KiB) in ")
    assert text.endswith(" s, holds nothing, and is safe to stop\n")


def test_leave_wait_for_another_member_follows_it_at_its_own_address(on_fake: DynctlRunner) -> None:
    # fake2's address (from the fake's cluster status) has nothing listening: the wait ends at once.
    result = on_fake("cluster", "leave", "fake2", "--wait")
    assert result.returncode == 3, result.stderr
    assert fake.NODE_ADDRESSES["fake2"] in result.stderr.decode() and result.stdout == b""


def test_transfers_json_lists_each_members_handoff_and_the_transfers(on_fake: DynctlRunner) -> None:
    document = json_of(on_fake("--json", "cluster", "transfers"))
    assert document["node"] == "fake1"
    assert [(m["name"], m["answered"], m["partitions_pending"]) for m in document["members"]] == [("fake1", True, 0), ("fake3", True, 2), ("fake4", False, 0)]
    assert document["transfers"] == [
        {"from": "fake3", "partition": 2, "to": ["fake1", "fake2"], "state": "sending", "keys_sent": 30, "bytes_sent": 600, "keys_total": 120, "started_ms": fake.STARTED_MS},
        {"from": "fake3", "partition": 5, "to": ["fake2", "fake1"], "state": "queued", "keys_sent": 0, "bytes_sent": 0, "keys_total": 80, "started_ms": None},
    ]


def test_transfers_table_shows_progress_and_who_did_not_answer(on_fake: DynctlRunner) -> None:
    text = text_of(on_fake("cluster", "transfers"))
    assert "partition hand-offs, as gathered by fake1" in text
    assert next(line for line in text.splitlines() if line.startswith("fake4")).split()[1:] == ["joining", "no", "answer"]
    sending = next(line for line in text.splitlines() if line.startswith("fake3") and "sending" in line)
    assert sending.split()[:6] == ["fake3", "2", "fake1,fake2", "sending", "30/120", "(25%)"]
    queued = next(line for line in text.splitlines() if "queued" in line)
    assert queued.split() == ["fake3", "5", "fake2,fake1", "queued", "0/80", "(0%)", "0", "B", "-"]


# ---- ring against the fake node ----


def test_ring_status_json_has_the_ring_and_its_balance(on_fake: DynctlRunner) -> None:
    document = json_of(on_fake("--json", "ring", "status"))
    placement = document.pop("placement")
    # copies: each partition's 2 primaries, the owners of p and p+1 (no window repeats a node)
    assert document == {
        "version": fake.RING_VERSION.hex(),
        "partitions": 8,
        "n": fake.RING_N,
        "r": fake.RING_R,
        "w": fake.RING_W,
        "nodes": [
            {"node": "fake1", "address": "127.0.0.1:7501", "partitions": 3, "share": 0.375, "location": None, "copies": 6},
            {"node": "fake2", "address": "127.0.0.1:7502", "partitions": 3, "share": 0.375, "location": None, "copies": 6},
            {"node": "fake3", "address": "127.0.0.1:7503", "partitions": 2, "share": 0.25, "location": None, "copies": 4},
        ],
        "mean_partitions": round(8 / 3, 6),
        "max_partitions": 3,
        "balance": round(8 / 9, 6),
    }
    assert placement["unknown_locations"] == ["fake1", "fake2", "fake3"]
    for level in ("hosts", "zones"):
        assert placement[level]["holds"] and placement[level]["count"] == 3
        assert placement[level]["windows_repeating"] == 0 and placement[level]["reasons"] == []


def test_ring_status_table(on_fake: DynctlRunner) -> None:
    table = text_of(on_fake("ring", "status"))
    for expected in ["partitions (Q)", "balance (mean / max)", "0.889", "2.67", "fake3", "127.0.0.1:7503", "25.0%"]:
        assert expected in table


def expected_preference_list(key: bytes, owners: list[str], n: int) -> tuple[int, list[str], list[str]]:
    """DESIGN.md section 3, independently of dynd: MD5 position * Q >> 128, then walk clockwise
    collecting distinct owners; the first N are primaries, the rest fallbacks."""
    partitions = len(owners)
    partition = (int.from_bytes(hashlib.md5(key).digest(), "big") * partitions) >> 128
    walk: list[str] = []
    for step in range(partitions):
        owner = owners[(partition + step) % partitions]
        if owner not in walk:
            walk.append(owner)
    return partition, walk[:n], walk[n:]


@pytest.mark.parametrize("key", ["greeting", "cart:42", "ключ", ""])
def test_ring_key_json_marks_primaries_and_fallbacks(on_fake: DynctlRunner, key: str) -> None:
    document = json_of(on_fake("--json", "ring", "key", key))
    partition, primaries, fallbacks = expected_preference_list(key.encode(), fake.RING_OWNERS, fake.RING_N)
    ranked = [(node, "primary") for node in primaries] + [(node, "fallback") for node in fallbacks]
    assert document == {
        "key": key,
        "partition": partition,
        "partitions": len(fake.RING_OWNERS),
        "n": fake.RING_N,
        "preference_list": [
            {"rank": rank, "node": node, "address": fake.NODE_ADDRESSES[node], "role": role, "location": None}
            for rank, (node, role) in enumerate(ranked, start=1)
        ],
    }


def test_ring_key_table(on_fake: DynctlRunner) -> None:
    partition, primaries, fallbacks = expected_preference_list(b"greeting", fake.RING_OWNERS, fake.RING_N)
    table = text_of(on_fake("ring", "key", "greeting"))
    assert f"partition {partition} of 8" in table
    rows = [line for line in table.splitlines() if NODE_NAME_PATTERN.search(line)]
    roles = {NODE_NAME_PATTERN.search(row).group(): ROLE_PATTERN.search(row).group() for row in rows}  # type: ignore[union-attr]
    assert roles == {**dict.fromkeys(primaries, "primary"), **dict.fromkeys(fallbacks, "fallback")}


# ---- locations (issue 17) against the fake node with --locations, and one older than them ----


@pytest.fixture(scope="module")
def located_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = _start_fake(tmp_path_factory, "--locations")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def node_before_locations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = _start_fake(tmp_path_factory, "--before-locations")
    yield server
    stop_server(server)


@pytest.fixture
def on_located(located_node: RunningServer, dynctl: DynctlRunner) -> DynctlRunner:
    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return dynctl("--node", located_node.address, *args)

    return run


def expected_located_list(key: bytes, owners: list[str], n: int, locations: dict[str, str]) -> tuple[list[str], list[str]]:
    """The preference list by the rule in DESIGN.md section 3, independently of dynd: walk
    clockwise, each time taking the next node on a new zone, else on a new host, else the next
    node; the first N taken are the primaries (listed in walk order), the rest the fallbacks."""
    partition, primaries, fallbacks = expected_preference_list(key, owners, n)
    walk = primaries + fallbacks
    taken: list[str] = []
    zones: set[str] = set()
    hosts: set[str] = set()
    for new_place in ("zone", "host", "node"):
        for node in walk:
            zone, host = locations[node].split("/")[0], locations[node]
            if node in taken or (new_place == "zone" and zone in zones) or (new_place == "host" and host in hosts):
                continue
            taken.append(node)
            zones.add(zone)
            hosts.add(host)
    return sorted(taken[:n], key=walk.index), taken[n:]


def test_ring_status_with_locations_groups_nodes_and_says_which_guarantee_fails(on_located: DynctlRunner) -> None:
    document = json_of(on_located("--json", "ring", "status"))
    assert [(entry["node"], entry["location"]) for entry in document["nodes"]] == [
        ("fake1", "zone-a/host-1"), ("fake2", "zone-a/host-1"), ("fake3", "zone-a/host-2"),
    ]  # fmt: skip
    hosts, zones = document["placement"]["hosts"], document["placement"]["zones"]
    # Two hosts for N = 2: every key's copies on both. One zone: every key's copies share it.
    assert hosts["holds"] and hosts["count"] == 2 and hosts["partitions_sharing"] == 0
    assert not zones["holds"] and zones["count"] == 1 and zones["partitions_sharing"] == 8
    assert any("only 1 zone for N=2" in reason for reason in zones["reasons"])
    # host-1 (fake1 + fake2) owns 6 of 8 partitions: the windows (fake1, fake2) and (fake2, fake1)
    # repeat it, and their lists skip ahead to fake3, which so holds a copy of every partition.
    assert hosts["windows_repeating"] == 4 and any("owns 6 of 8 partitions" in reason for reason in hosts["reasons"])
    assert {entry["node"]: entry["copies"] for entry in document["nodes"]} == {"fake1": 5, "fake2": 3, "fake3": 8}
    table = text_of(on_located("ring", "status"))
    for expected in ["partitions per node, by location", "zone-a/host-1", "zone-a/host-2", "NO:", "only 1 zone for N=2"]:
        assert expected in table
    assert table.index("zone-a/host-1") < table.index("fake1") < table.index("fake2") < table.index("zone-a/host-2") < table.index("fake3")


def test_cluster_status_groups_members_by_location_and_flags_the_zone_guarantee(on_located: DynctlRunner) -> None:
    document = json_of(on_located("--json", "cluster", "status"))
    assert {member["name"]: member["location"] for member in document["members"]} == fake.LOCATIONS
    assert document["placement"]["zones"]["holds"] is False
    table = text_of(on_located("cluster", "status"))
    # fake4 is not on the ring yet, but its location is known: it has its own heading
    order = [table.index(text) for text in ["zone-a/host-1", "fake1 *", "fake2", "zone-a/host-2", "fake3", "zone-b/host-3", "fake4"]]
    assert order == sorted(order)
    assert "copies on distinct zones: NO" in table and "copies on distinct hosts" not in table


@pytest.mark.parametrize("key", ["greeting", "cart:42", "ключ", ""])
def test_ring_key_with_locations_shows_each_replicas_location(on_located: DynctlRunner, key: str) -> None:
    document = json_of(on_located("--json", "ring", "key", key))
    primaries, fallbacks = expected_located_list(key.encode(), fake.RING_OWNERS, fake.RING_N, fake.LOCATIONS)
    listed = document["preference_list"]
    assert [entry["node"] for entry in listed if entry["role"] == "primary"] == primaries
    assert [entry["node"] for entry in listed if entry["role"] == "fallback"] == fallbacks
    assert all(entry["location"] == fake.LOCATIONS[entry["node"]] for entry in listed)
    assert len({fake.LOCATIONS[node] for node in primaries}) == fake.RING_N  # two hosts, as N = 2 asks
    table = text_of(on_located("ring", "key", key))
    for node in primaries + fallbacks:
        row = next(line for line in table.splitlines() if re.search(rf"\b{node}\b", line))
        assert fake.LOCATIONS[node] in row


def test_a_node_older_than_locations_still_answers_ring_commands(node_before_locations: RunningServer, dynctl: DynctlRunner) -> None:
    """It refuses RingGet's `locations` field; the client asks again without it."""
    document = json_of(dynctl("--node", node_before_locations.address, "--json", "ring", "status"))
    assert all(entry["location"] is None for entry in document["nodes"])
    assert document["placement"]["unknown_locations"] == ["fake1", "fake2", "fake3"]
    placement = json_of(dynctl("--node", node_before_locations.address, "--json", "ring", "key", "greeting"))
    _, primaries, fallbacks = expected_preference_list(b"greeting", fake.RING_OWNERS, fake.RING_N)
    assert [entry["node"] for entry in placement["preference_list"]] == primaries + fallbacks


# ---- errors from a node without cluster support, and no node at all ----


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["cluster", "status"], id="status"),
        pytest.param(["cluster", "join", "127.0.0.1:7400"], id="join"),
        pytest.param(["cluster", "leave"], id="leave"),
        pytest.param(["cluster", "remove", "x"], id="remove"),
        pytest.param(["ring", "status"], id="ring-status"),
        pytest.param(["ring", "key", "k"], id="ring-key"),
    ],
)
def test_a_node_that_refuses_cluster_requests_gives_exit_4(
    node_without_cluster: RunningServer, dynctl: DynctlRunner, args: list[str]
) -> None:
    result = dynctl("--node", node_without_cluster.address, "--json", *args)
    assert result.returncode == 4, result.stderr
    assert result.stdout == b""
    assert "bad_request" in result.stderr.decode()


@pytest.mark.parametrize("args", [["cluster", "status"], ["ring", "status"], ["cluster", "join", "127.0.0.1:7400"]])
def test_no_node_gives_exit_3(dynctl: DynctlRunner, args: list[str]) -> None:
    result = dynctl("--node", format_address(HOST, free_port()), "--timeout", "5", *args)
    assert result.returncode == 3, result.stderr
    assert "unreachable" in result.stderr.decode()


# ---- the pure parts ----


def test_shares_are_fractions_of_the_partitions_owned() -> None:
    assert ring_shares(fake.MEMBERS) == {"fake1": 0.375, "fake2": 0.375, "fake3": 0.25, "fake4": 0.0}
    nobody_owns = [messages.MemberView("a", "x:1", "joining", 0, True, 0)]
    assert ring_shares(nobody_owns) == {"a": 0.0}


def test_the_status_of_a_node_that_left_says_it_is_not_a_member() -> None:
    members = [messages.MemberView("a", "x:1", "joined", 8, True, 0, "unknown"), messages.MemberView("b", "x:2", "removed", 0, True, 0)]
    caption = str(status_table(messages.ClusterStatusOk(id=1, node="b", members=members)).caption)
    assert "b is not a member any more: it serves no data" in caption
    assert "not a member" not in str(status_table(messages.ClusterStatusOk(id=1, node="a", members=members)).caption)


def test_the_handoff_rate_is_measured_over_the_recent_window() -> None:
    rate = HandoffRate(window_s=10)
    assert rate.keys_per_s == 0 and rate.eta_s(100) is None
    rate.add(0.0, 0)
    rate.add(5.0, 500)
    assert rate.keys_per_s == 100 and rate.eta_s(300) == 3
    for t in range(6, 31):  # a stall: the old fast samples age out of the window
        rate.add(float(t), 500)
    assert rate.keys_per_s == 0 and rate.eta_s(300) is None


def test_a_node_with_an_address_but_no_partitions_lowers_the_balance() -> None:
    ring = messages.RingOk(
        id=1,
        version=b"",
        n=1,
        r=1,
        w=1,
        owners=["a", "b", "a", "b"],
        addresses=[messages.NodeAddress("a", "h:1"), messages.NodeAddress("b", "h:2"), messages.NodeAddress("c", "h:3")],
    )
    summary = summarize_ring(ring)
    assert [(share.node, share.partitions) for share in summary.nodes] == [("a", 2), ("b", 2), ("c", 0)]
    assert summary.max_partitions == 2
    assert summary.balance == pytest.approx((4 / 3) / 2)


@pytest.mark.parametrize(
    ("nodes", "given", "expected"),
    [
        # Fewer nodes than dynd's default N (3): N = K, and R and W follow N below their default (2).
        (1, (None, None, None), CreationSettings(1, 1, 1)),
        (2, (None, None, None), CreationSettings(2, None, None)),
        (3, (None, None, None), CreationSettings(None, None, None)),
        (5, (None, None, None), CreationSettings(None, None, None)),
        (2, (3, None, None), CreationSettings(3, None, None)),
        (5, (1, None, None), CreationSettings(1, 1, 1)),
        (1, (3, None, None), CreationSettings(3, None, None)),
        (4, (None, 1, 3), CreationSettings(None, 1, 3)),
    ],
)
def test_creation_settings(
    nodes: int, given: tuple[int | None, int | None, int | None], expected: CreationSettings
) -> None:
    assert creation_settings(nodes, *given) == expected


def test_the_plan_gives_cluster_flags_to_the_first_node_and_join_to_the_others(tmp_path: Path) -> None:
    specs = plan_cluster(3, tmp_path, 7600, CreationSettings(2, 1, 2), python="python3")
    assert [(spec.name, spec.address, spec.directory) for spec in specs] == [
        ("dev1", "127.0.0.1:7600", tmp_path / "dev1"),
        ("dev2", "127.0.0.1:7601", tmp_path / "dev2"),
        ("dev3", "127.0.0.1:7602", tmp_path / "dev3"),
    ]
    assert specs[0].argv == (
        "python3", "-m", "dynd", "--name", "dev1", "--listen", "127.0.0.1:7600", "--data-dir", str(tmp_path / "dev1"),
        "--http-listen", "127.0.0.1:8298", "--replicas", "2", "--r", "1", "--w", "2",
    )  # fmt: skip
    assert specs[2].argv == (
        "python3", "-m", "dynd", "--name", "dev3", "--listen", "127.0.0.1:7602", "--data-dir", str(tmp_path / "dev3"),
        "--http-listen", "127.0.0.1:8300", "--join", "127.0.0.1:7600",
    )  # fmt: skip
    assert specs[1].log_path == tmp_path / "dev2" / "dynd.log"


def test_the_plan_gives_every_node_the_secret_file(tmp_path: Path) -> None:
    specs = plan_cluster(2, tmp_path, 7600, CreationSettings(2, 1, 2), python="python3", secret_file=tmp_path / "secret")
    for spec in specs:
        assert spec.argv[11:13] == ("--secret-file", str(tmp_path / "secret"))


def test_the_dev_secret_is_made_private_once_and_then_kept(tmp_path: Path) -> None:
    path, made = ensure_secret_file(tmp_path)
    assert (path, made) == (tmp_path / "secret", True)
    assert path.stat().st_mode & 0o777 == 0o600
    keyring = load_keyring(path.read_text())
    assert len(keyring.secrets) == 1
    assert ensure_secret_file(tmp_path) == (path, False)
    assert load_keyring(path.read_text()) == keyring


def test_a_single_node_creates_a_cluster_of_one_replica(tmp_path: Path) -> None:
    (spec,) = plan_cluster(1, tmp_path, 7400, creation_settings(1, None, None, None), python="python3")
    assert spec.argv == (
        "python3", "-m", "dynd", "--name", "dev1", "--listen", "127.0.0.1:7400", "--data-dir", str(tmp_path / "dev1"),
        "--http-listen", "127.0.0.1:8098", "--replicas", "1", "--r", "1", "--w", "1",
    )  # fmt: skip


def test_examples_read_through_another_node_than_they_write_to() -> None:
    examples = example_commands(["127.0.0.1:7400", "127.0.0.1:7401"])
    assert examples[0] == "dynctl --node 127.0.0.1:7400 put greeting hello"
    assert examples[1] == "dynctl --node 127.0.0.1:7401 get greeting"
    assert any("ring key greeting" in line for line in examples)


# ---- dev up with real nodes ----


def read_until(stream: IO[bytes], done: Callable[[bytes], bool], deadline_s: float) -> bytes:
    """Read a pipe until `done(all read so far)`; fail at the deadline or at end of file."""
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + deadline_s
    while not done(data):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"not done within {deadline_s:g} s; read so far: {data!r}")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"end of output before done; read: {data!r}")
            data += chunk
    return data


def pid_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class DevUp:
    process: subprocess.Popen[bytes]
    stderr_path: Path
    node_pids: list[int]

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextlib.contextmanager
def dev_up(workdir: Path, *args: str) -> Iterator[DevUp]:
    """Run `dynctl [args]` (a dev up) in `workdir`; at the end kill whatever is left of it, by PID.

    The working directory is the test's own: a default --dir of .dev would land there, and the
    nodes' `python -m dynd` sees the same modules as the dynctl that started them.
    """
    stderr_path = workdir / f"dynctl-{len(list(workdir.glob('dynctl-*')))}.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "dynctl", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=dynctl_env(None),
            cwd=workdir,
        )
    run = DevUp(process, stderr_path, [])
    try:
        yield run
    finally:
        if process.poll() is None:
            # SIGTERM first, so dev up stops the nodes it started (whose PIDs a failed test may
            # not have read yet); SIGKILL only if it does not finish in time.
            process.terminate()
            try:
                process.wait(timeout=DEV_STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.stdout is not None
        process.stdout.close()
        for pid in run.node_pids:  # only if dynctl failed to stop them: they are ours, from its output
            if pid_is_running(pid):
                os.kill(pid, signal.SIGKILL)


def stop_dev_up(run: DevUp, signum: int) -> None:
    run.process.send_signal(signum)
    try:
        run.process.wait(timeout=DEV_STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"dev up still running {DEV_STOP_DEADLINE_S:g} s after {signum}:\n{run.stderr_text()}") from None


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_block(count: int, attempts: int = 20) -> int:
    """A base port such that it and the next count - 1 ports were free a moment ago."""
    for _ in range(attempts):
        base = free_port()
        if base + count - 1 <= 65535 and all(port_is_free(base + offset) for offset in range(1, count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports in {attempts} attempts")


def wait_for_ready_document(run: DevUp) -> dict[str, Any]:
    assert run.process.stdout is not None
    line = read_until(run.process.stdout, lambda data: data.endswith(b"\n"), DEV_READY_DEADLINE_S)
    ready: dict[str, Any] = json.loads(line)
    run.node_pids.extend(node["pid"] for node in ready["nodes"])
    return ready


def test_dev_up_with_one_node_runs_until_ctrl_c_and_stops_its_node(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    port = free_port()
    with dev_up(tmp_path, "--json", "dev", "up", "--nodes", "1", "--dir", str(directory), "--base-port", str(port)) as run:
        ready = wait_for_ready_document(run)
        (node,) = ready["nodes"]
        assert ready["directory"] == str(directory)
        assert node == {
            "name": "dev1",
            "address": f"127.0.0.1:{port}",
            "pid": node["pid"],
            "data_dir": str(directory / "dev1"),
            "log": str(directory / "dev1" / "dynd.log"),
        }
        assert ready["cluster_problem"] is None
        assert ready["secret_file"] == str(directory / "secret")
        assert (directory / "secret").stat().st_mode & 0o777 == 0o600
        assert [(member["name"], member["share"]) for member in ready["cluster"]["members"]] == [("dev1", 1.0)]
        assert probe(node["address"]) == "dev1"

        stop_dev_up(run, signal.SIGINT)
        assert run.process.returncode == 0, run.stderr_text()
        assert not pid_is_running(node["pid"])
        stderr = run.stderr_text()
        assert "ready: 1 node" in stderr and "dynctl --node" in stderr
        assert f"cluster secret: {directory / 'secret'} (new;" in stderr
        assert "stopping dev1" in stderr and "dev1 stopped" in stderr
    log = (directory / "dev1" / "dynd.log").read_text()
    assert "=== dynctl dev up" in log and "--name dev1" in log and f"--secret-file {directory / 'secret'}" in log


def test_dev_up_with_three_nodes_serves_one_ring_from_every_node(tmp_path: Path, dynctl: DynctlRunner) -> None:
    base_port = free_port_block(3)
    args = ("--json", "dev", "up", "--nodes", "3", "--dir", str(tmp_path / "cluster"), "--base-port", str(base_port))
    with dev_up(tmp_path, *args) as run:
        ready = wait_for_ready_document(run)
        addresses = [node["address"] for node in ready["nodes"]]
        assert addresses == [f"127.0.0.1:{base_port + offset}" for offset in range(3)]
        assert ready["cluster_problem"] is None, ready
        members = ready["cluster"]["members"]
        assert [member["name"] for member in members] == ["dev1", "dev2", "dev3"]
        assert sum(member["share"] for member in members) == pytest.approx(1.0)

        ring = json_of(dynctl("--node", addresses[2], "--json", "ring", "status"))
        assert (ring["n"], ring["r"], ring["w"]) == (3, 2, 2)
        assert [node["node"] for node in ring["nodes"]] == ["dev1", "dev2", "dev3"]
        assert ring["max_partitions"] - min(node["partitions"] for node in ring["nodes"]) <= 1

        placement = json_of(dynctl("--node", addresses[1], "--json", "ring", "key", "greeting"))
        assert sorted(entry["node"] for entry in placement["preference_list"]) == ["dev1", "dev2", "dev3"]
        assert {entry["role"] for entry in placement["preference_list"]} == {"primary"}

        assert dynctl("--node", addresses[0], "put", "greeting", "hello").returncode == 0
        assert dynctl("--node", addresses[2], "get", "greeting").stdout == b"hello"

        stop_dev_up(run, signal.SIGINT)
        assert run.process.returncode == 0, run.stderr_text()
        assert [pid for pid in run.node_pids if pid_is_running(pid)] == []


def test_dev_up_restarts_on_its_directory_and_stops_on_sigterm(tmp_path: Path, dynctl: DynctlRunner) -> None:
    directory = tmp_path / "cluster"
    base_port = free_port_block(2)
    args = ("dev", "up", "--nodes", "2", "--dir", str(directory), "--base-port", str(base_port))
    second = f"127.0.0.1:{base_port + 1}"
    for run_number in (1, 2):
        with dev_up(tmp_path, *args) as run:
            assert run.process.stdout is not None
            # The nodes table, then the cluster status table with its caption.
            tables = read_until(run.process.stdout, lambda data: b"the node that answered" in data, DEV_READY_DEADLINE_S)
            assert b"dev cluster: 2 nodes under" in tables
            assert f"dev2  {second}".encode() in tables and b"dev2/dynd.log" in tables
            if run_number == 1:
                assert dynctl("--node", second, "put", "kept", "across restarts").returncode == 0
            else:  # the data and the membership survived; --join was given again and ignored
                assert dynctl("--node", second, "get", "kept").stdout == b"across restarts"
            stop_dev_up(run, signal.SIGTERM)
            assert run.process.returncode == 0, run.stderr_text()
            assert "SIGTERM: stopping the dev cluster" in run.stderr_text()
    # Both runs appended to the same logs.
    assert (directory / "dev2" / "dynd.log").read_text().count("=== dynctl dev up") == 2


def test_dev_up_reports_a_node_that_exits_during_startup(tmp_path: Path) -> None:
    # dynd refuses N=17 (replicas are 1..16; a dynd without cluster flags refuses --replicas), so
    # the first node exits at once.
    directory = tmp_path / "cluster"
    argv = [sys.executable, "-m", "dynctl", "dev", "up", "--nodes", "1", "--n", "17", "--dir", str(directory)]
    argv += ["--base-port", str(free_port())]
    result = subprocess.run(argv, capture_output=True, env=dynctl_env(None), cwd=tmp_path, timeout=DYNCTL_DEADLINE_S)
    stderr = result.stderr.decode()
    assert result.returncode == 3, stderr
    assert "dev1" in stderr and "exited with code" in stderr
    assert f"last lines of {directory / 'dev1' / 'dynd.log'}" in stderr
    assert "the dev cluster stopped because dev1 failed" in stderr
