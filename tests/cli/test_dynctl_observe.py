"""`dynctl stats`, `info`, `health` and `top` (issue 14).

The commands' output is tested against `fake_cluster_node.py`, whose canned StatsOk and InfoOk fix
every number; `top` runs in tmux at 80x24 as a person would use it; `health --all` against a real
3-node cluster is killed and restarted (that test needs the node's stats/info handlers and skips
only when a node refuses them as unknown).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fake_cluster_node as fake
import pytest
from dynctl_testing import REPO, DynctlRunner, RunningServer, start_server, stop_server

from dynctl.health import Limits, NodeReading, failed_checks
from dynctl.observe import Answer
from dynctl.output import ExitCode
from dynd.protocol import messages
from dynd.protocol.address import format_address
from tests.support.cluster import poll_until, running_cluster
from tests.support.procs import LOOPBACK, free_port

FAKE_NODE = REPO / "tests" / "cli" / "fake_cluster_node.py"
HEALTH_DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def fake_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("fake-observe")
    address = format_address(LOOPBACK, free_port())
    server = start_server([sys.executable, str(FAKE_NODE), "--listen", address], address, workdir / "fake.log")
    yield server
    stop_server(server)


@pytest.fixture
def on_fake(fake_node: RunningServer, dynctl: DynctlRunner) -> DynctlRunner:
    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return dynctl("--node", fake_node.address, *args)

    return run


def json_of(result: subprocess.CompletedProcess[bytes]) -> Any:
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


# ---- stats ----


def test_stats_in_a_pipe_is_json_with_rates_percentiles_errors_and_shares(on_fake: DynctlRunner) -> None:
    document = json_of(on_fake("stats"))
    assert document["node"] == fake.NODE_NAME
    assert document["uptime_s"] == fake.UPTIME_MS / 1000
    get = document["ops"]["get"]
    # last 60 s: 600 gets / min(60, 120) s; since start: 1200 requests / 120 s.
    assert get["60s"] == {"ops_per_s": 10.0, "count": 600, "p50_ms": 1.0, "p99_ms": 5.0, "p999_ms": 9.0, "max_ms": 12.0}
    assert get["start"]["ops_per_s"] == 10.0
    assert document["ops"]["put"]["start"]["ops_per_s"] == 3.0  # 360 requests / 120 s
    assert document["ops"]["replicate"]["start"]["ops_per_s"] == 2.0  # no counter: the histogram's count
    assert document["errors"] == {"quorum_failed": 10, "timeout": 50}
    shares = document["versions_per_get"]["shares"]
    assert shares == {"1": 0.9, "2": 0.08, "3": 0.015, "4+": 0.005}
    assert sum(shares.values()) == pytest.approx(1.0)


def test_stats_all_asks_every_member_and_names_those_that_do_not_answer(on_fake: DynctlRunner) -> None:
    result = on_fake("stats", "--all")
    assert result.returncode == ExitCode.UNREACHABLE
    assert [node["node"] for node in json.loads(result.stdout)["nodes"]] == [fake.NODE_NAME]
    stderr = result.stderr.decode()
    for member in ("fake2", "fake3", "fake4"):
        assert f"{member} ({fake.NODE_ADDRESSES.get(member, '127.0.0.1:7504')}) did not answer" in stderr


def run_in_terminal(argv: list[str]) -> str:
    """`argv`'s stdout as a terminal would show it (through `script`), without colour codes."""
    if shutil.which("script") is None:
        pytest.skip("needs script(1) for a pseudo-terminal")
    command = " ".join(shlex.quote(part) for part in argv)
    result = subprocess.run(
        ["script", "-qec", command, "/dev/null"], capture_output=True, timeout=60, env={"TERM": "dumb", "NO_COLOR": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "100", "PYTHONPATH": str(REPO)}
    )
    assert result.returncode == 0, result.stdout.decode(errors="replace")
    return result.stdout.decode(errors="replace")


def test_stats_table_on_a_terminal(fake_node: RunningServer) -> None:
    screen = run_in_terminal([sys.executable, "-m", "dynctl", "--node", fake_node.address, "stats"])
    assert "fake1: up 2m00s" in screen
    assert "p99.9 ms" in screen
    assert "quorum_failed" in screen
    assert "90.00%" in screen and "0.50%" in screen


# ---- info ----


def test_info_json(on_fake: DynctlRunner) -> None:
    document = json_of(on_fake("info"))
    assert document["node"] == fake.NODE_NAME
    assert document["protocol_version"] == fake.INFO.protocol_version
    assert document["data_dir"] == fake.INFO.data_dir
    assert document["map_used_percent"] == pytest.approx(50 / 1024 * 100, abs=0.01)
    assert document["anti_entropy_age_s"] == 42.0
    assert document["partitions_owned"] == 3


def test_info_table_on_a_terminal(fake_node: RunningServer) -> None:
    screen = run_in_terminal([sys.executable, "-m", "dynctl", "--node", fake_node.address, "info"])
    for expected in ("0.0-fake", "/var/lib/dynd/fake1", "50.0 MiB", "(4.9% used)", "anti-entropy age", "42s"):
        assert expected in screen


# ---- health ----


def test_health_names_a_dead_member_and_exits_7(on_fake: DynctlRunner) -> None:
    result = on_fake("health")
    assert result.returncode == ExitCode.UNHEALTHY == 7
    assert result.stdout.decode().splitlines() == ["fake3 is dead (seen by fake1)"]


def test_health_limits_are_options(on_fake: DynctlRunner) -> None:
    result = on_fake("--json", "health", "--hints-max", "5", "--transfers-max", "1", "--disk-max-percent", "4")
    assert result.returncode == ExitCode.UNHEALTHY
    failed = json.loads(result.stdout)["failed"]
    assert failed[0] == "fake3 is dead (seen by fake1)"
    assert "fake2 has 2 partition transfers pending (limit 1)" in failed
    assert "fake1 holds 7 hints (limit 5)" in failed
    assert any(line.startswith("fake1 uses 4.9% of its LMDB map (limit 4%)") for line in failed)


def test_health_all_fails_for_each_member_that_does_not_answer(on_fake: DynctlRunner) -> None:
    result = on_fake("health", "--all")
    assert result.returncode == ExitCode.UNHEALTHY
    lines = result.stdout.decode().splitlines()
    for member in ("fake2", "fake3", "fake4"):
        assert any(line.startswith(f"{member} (") and "does not answer" in line for line in lines), lines


def test_exit_status_7_is_documented(dynctl: DynctlRunner) -> None:
    assert "7  unhealthy" in dynctl("health", "--help").stdout.decode()
    assert "Unhealthy" in (REPO / "man" / "dynctl.1").read_text()


def reading(node: str, ring_version: bytes, members: list[messages.MemberView], **info: int) -> NodeReading:
    fields = {**dict(disk_used_bytes=10, map_bytes=100, hints_pending=0), **info}
    return NodeReading(
        status=messages.ClusterStatusOk(id=1, node=node, members=members),
        ring=messages.RingOk(1, ring_version, 3, 2, 2, [], []),
        info=messages.InfoOk(1, node, "v", 2, 1, "", "", "", 0, fields["disk_used_bytes"], fields["map_bytes"], 0, fields["hints_pending"], 0),
    )


def alive(name: str) -> messages.MemberView:
    return messages.MemberView(name, f"{name}:1", "joined", 1, True, 0)


def test_a_healthy_cluster_fails_no_check() -> None:
    members = [alive("a"), alive("b")]
    answers = [Answer(n, f"{n}:1", reading(n, b"\x01", members)) for n in ("a", "b")]
    assert failed_checks(answers, Limits()) == []


def test_members_on_different_rings_fail_once() -> None:
    members = [alive("a"), alive("b")]
    answers = [Answer("a", "a:1", reading("a", b"\x01", members)), Answer("b", "b:1", reading("b", b"\x02", members))]
    assert failed_checks(answers, Limits()) == ["members disagree on the ring: a has 01, b has 02"]


def test_disk_over_the_limit_of_the_map_fails() -> None:
    answers = [Answer("a", "a:1", reading("a", b"\x01", [alive("a")], disk_used_bytes=91, map_bytes=100))]
    assert failed_checks(answers, Limits()) == ["a uses 91.0% of its LMDB map (limit 90%): raise map_size"]


# ---- top, in tmux as a person would use it ----


class Tmux:
    """A private tmux server (its own socket) with one 80x24 session."""

    def __init__(self, socket_name: str) -> None:
        self.socket_name = socket_name

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket_name, *args], capture_output=True, text=True, timeout=10, check=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def wait_for(self, what: str, check: Any, deadline_s: float = 30.0) -> str:
        def matching_screen() -> str | None:
            screen = self.screen()
            return screen if check(screen) else None

        return poll_until(what, matching_screen, deadline_s)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("needs tmux")
    session = Tmux(f"dynctl-top-{free_port()}")
    yield session
    subprocess.run(["tmux", "-L", session.socket_name, "kill-server"], capture_output=True, timeout=10)


def start_top(tmux: Tmux, address: str) -> None:
    top = f"{shlex.quote(sys.executable)} -m dynctl --node {address} top"
    # The shell reports how top ended and keeps the pane open to read it.
    command = f"cd {shlex.quote(str(REPO))} && PYTHONPATH={shlex.quote(str(REPO))} {top}; echo top-exited-$?; sleep 60"
    tmux.run("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", command)


@pytest.mark.parametrize("quit_key", ["q", "C-c"])
def test_top_shows_every_member_at_80x24_and_quits(tmux: Tmux, fake_node: RunningServer, quit_key: str) -> None:
    start_top(tmux, fake_node.address)
    screen = tmux.wait_for("top's table", lambda s: "fake1" in s and "fake4" in s and "q or Ctrl-C quits" in s)
    lines = screen.splitlines()
    print(screen)  # shown on failure
    assert all(len(line) <= 80 for line in lines)
    row = next(line for line in lines if line.startswith("fake1"))
    # fake1: alive; 10 get/s, 5 put/s, 0 delete/s; p99.9 9 ms get, 15 ms put; 60 errors, 7 hints, 2 in transfer.
    assert row.split() == ["fake1", "alive", "10", "5.0", "0.0", "9.00", "15.0", "-", "60", "7", "2"]
    assert next(line for line in lines if line.startswith("fake3")).split()[1] == "dead"
    tmux.run("send-keys", "-t", "top", quit_key)
    after = tmux.wait_for("top to quit", lambda s: "top-exited-" in s, deadline_s=10)
    assert "top-exited-0" in after
    assert "q or Ctrl-C quits" not in after  # the alternate screen is gone: the terminal is back


# ---- health against a real cluster: kill a node, restart it ----


def node_side_missing(dynctl: DynctlRunner, address: str) -> bool:
    """True when the node refuses info as a request it does not know (issue 14's node side absent)."""
    result = dynctl("--node", address, "info")
    return result.returncode == ExitCode.REFUSED and any(
        code in result.stderr.decode() for code in ("bad_request", "unknown_op")
    )


def test_health_all_fails_within_10_s_of_a_kill_and_recovers_after_restart(tmp_path: Path, dynctl: DynctlRunner) -> None:
    with running_cluster(tmp_path, "hl", 3) as nodes:
        if node_side_missing(dynctl, nodes[0].address):
            pytest.skip("the node does not answer stats/info yet (issue 14's node side is missing)")
        first, victim = nodes[0], nodes[2]

        def health() -> subprocess.CompletedProcess[bytes]:
            return dynctl("--node", first.address, "--timeout", "1", "health", "--all")

        poll_until("a healthy cluster", lambda: health().returncode == 0, deadline_s=HEALTH_DEADLINE_S)
        victim.kill9()
        killed_at = time.monotonic()
        def unhealthy() -> subprocess.CompletedProcess[bytes] | None:
            result = health()
            return result if result.returncode == ExitCode.UNHEALTHY else None

        failed = poll_until("health to fail", unhealthy, deadline_s=HEALTH_DEADLINE_S)
        assert time.monotonic() - killed_at < HEALTH_DEADLINE_S
        assert victim.name in failed.stdout.decode()
        victim.restart()
        restarted_at = time.monotonic()
        poll_until("health to recover", lambda: health().returncode == 0, deadline_s=HEALTH_DEADLINE_S)
        assert time.monotonic() - restarted_at < HEALTH_DEADLINE_S


# ---- against a real node (needs issue 14's node side; skips when the node refuses stats) ----


def test_stats_and_info_on_a_real_node_count_its_writes(on_node: DynctlRunner, dynd_node: Any, dynctl: DynctlRunner, key: str) -> None:
    if node_side_missing(dynctl, dynd_node.address):
        pytest.skip("the node does not answer stats/info yet (issue 14's node side is missing)")
    before = json_of(on_node("stats"))
    puts_before = before["ops"].get("put", {}).get("start", {}).get("count", 0)
    assert on_node("put", key, "v").returncode == 0
    after = json_of(on_node("stats"))
    assert after["ops"]["put"]["start"]["count"] == puts_before + 1
    assert json_of(on_node("info"))["node"] == dynd_node.name
    assert on_node("health").returncode == 0


def test_top_on_a_real_cluster_shows_every_member_alive(tmux: Tmux, tmp_path: Path, dynctl: DynctlRunner) -> None:
    with running_cluster(tmp_path, "tp", 3) as nodes:
        if node_side_missing(dynctl, nodes[0].address):
            pytest.skip("the node does not answer stats/info yet (issue 14's node side is missing)")
        start_top(tmux, nodes[0].address)

        def every_member_alive(screen: str) -> bool:
            rows = {line.split()[0]: line.split() for line in screen.splitlines() if line.split()}
            return all(node.name in rows and rows[node.name][1] == "alive" and len(rows[node.name]) == 11 for node in nodes)

        tmux.wait_for("every member alive with its numbers", every_member_alive)
        tmux.run("send-keys", "-t", "top", "q")
        assert "top-exited-0" in tmux.wait_for("top to quit", lambda s: "top-exited-" in s, deadline_s=10)
