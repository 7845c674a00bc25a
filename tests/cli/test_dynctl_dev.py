"""`dynctl dev`: a dev cluster you can break. `dev up` runs real dynd nodes on free loopback ports in
a temporary --dir; the tests kill, stop, pause and restart them from "another terminal" (dynctl
subprocesses) and check that the others keep serving, that `dev up` keeps running and says what
happened, and what `dev status` shows. Waits are polls under deadlines, never bare sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dynctl_testing import DYNCTL_DEADLINE_S, REPO, dynctl_env

from dynctl.dev import failover_commands
from dynctl.dev_control import NodeProcessView
from dynctl.dev_files import (
    ClusterState,
    DevNodeSpec,
    ProcessIdentity,
    identity_of,
    read_state,
    recorded_process,
    write_pid_file,
    write_state,
)
from dynctl.dev_manage import liveness_summary, node_statuses
from dynd.protocol.messages import ClusterStatusOk, MemberView
from tests.support.procs import free_port

READY_DEADLINE_S = 60.0
STOP_DEADLINE_S = 30.0
CHANGE_DEADLINE_S = 45.0  # failure detection, rejoin, hint delivery: seconds each, on a loaded machine
POLL_INTERVAL_S = 0.1
NODE_NAMES = ["dev1", "dev2", "dev3"]


# ---- running dev up and dynctl ----


def pid_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def is_node_of(pid: int, directory: Path) -> bool:
    """A dynd whose data directory is under `directory`: a node this test's dev up started."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"dynd" in argv and any(word.startswith(os.fsencode(directory)) for word in argv)


def poll(what: str, check: Callable[[], Any], deadline_s: float = CHANGE_DEADLINE_S) -> Any:
    """Call `check` until it returns something true; fail with `what` at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {deadline_s:g} s (last: {result!r})")
        time.sleep(POLL_INTERVAL_S)  # the pause between polls of a condition with a deadline


def run_dynctl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "dynctl", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=dynctl_env(None),
        timeout=DYNCTL_DEADLINE_S,
        cwd=REPO,
    )


def base_port_for(count: int) -> int:
    """A base port with `count` consecutive ports free a moment ago."""
    for _ in range(20):
        base = free_port()
        ports = range(base, base + count)
        if base + count - 1 > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in ports:
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError(f"no {count} consecutive free ports")


@dataclass
class DevCluster:
    """A `dynctl dev up` subprocess and the directory it runs on."""

    directory: Path
    process: subprocess.Popen[bytes]
    stderr_path: Path
    ready: dict[str, Any] = field(default_factory=dict)
    pids_seen: set[int] = field(default_factory=set)  # every node PID: all must be gone at the end

    @property
    def addresses(self) -> dict[str, str]:
        return {node["name"]: node["address"] for node in self.ready["nodes"]}

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def dev(self, *args: str, json_output: bool = False) -> subprocess.CompletedProcess[bytes]:
        """`dynctl [--json] dev ARGS --dir DIR`."""
        return run_dynctl(*(["--json"] if json_output else []), "dev", *args, "--dir", str(self.directory))

    def status(self) -> dict[str, dict[str, Any]]:
        result = self.dev("status", json_output=True)
        assert result.returncode == 0, result.stderr.decode()
        document = json.loads(result.stdout)
        nodes = {node["name"]: node for node in document["nodes"]}
        self.pids_seen.update(node["pid"] for node in nodes.values() if node["pid"] is not None)
        return nodes

    def kv(self, node: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return run_dynctl("--node", self.addresses[node], "--timeout", "10", *args)

    def wait_for_stderr(self, text: str, deadline_s: float = CHANGE_DEADLINE_S) -> str:
        return poll(f"dev up to say {text!r}", lambda: text in self.stderr_text() and self.stderr_text(), deadline_s)


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr.decode())
    return result.stdout.decode()


def refused(result: subprocess.CompletedProcess[bytes], exit_code: int = 2) -> str:
    stderr = result.stderr.decode()
    assert result.returncode == exit_code, (result.returncode, result.stdout, stderr)
    assert "Traceback" not in stderr
    return stderr


@contextlib.contextmanager
def dev_up(directory: Path, nodes: int, *extra: str) -> Iterator[DevCluster]:
    """Start `dynctl --json dev up` and wait for its ready document; at the end stop it with
    SIGINT (SIGKILL at a deadline) and kill, by PID, any node it left behind."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    stderr_path = directory.parent / f"{directory.name}-dev-up.stderr"
    argv = [sys.executable, "-m", "dynctl", "--json", "dev", "up", "--nodes", str(nodes), "--dir", str(directory)]
    argv += ["--base-port", str(base_port_for(nodes)), *extra]
    with stderr_path.open("ab") as stderr:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=dynctl_env(None), cwd=REPO)
    cluster = DevCluster(directory, process, stderr_path)
    try:
        cluster.ready = json.loads(_read_line(process, READY_DEADLINE_S, cluster))
        cluster.pids_seen.update(node["pid"] for node in cluster.ready["nodes"])
        yield cluster
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.stdout is not None
        process.stdout.close()
        for pid in cluster.pids_seen:  # only what dev up failed to stop, and only if still a node of ours
            if is_node_of(pid, directory):
                os.kill(pid, signal.SIGKILL)


def _read_line(process: subprocess.Popen[bytes], deadline_s: float, cluster: DevCluster) -> bytes:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    data = b""
    deadline = time.monotonic() + deadline_s
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"dev up not ready within {deadline_s:g} s:\n{cluster.stderr_text()}")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"dev up ended before it was ready:\n{cluster.stderr_text()}")
            data += chunk
    return data


def cluster_healthy(cluster: DevCluster) -> bool:
    return cluster.kv("dev1", "health", "--all").returncode == 0


# ---- a three-node cluster shared by the tests that break it ----


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with dev_up(tmp_path_factory.mktemp("dev") / "cluster", 3) as cluster:
        yield cluster
        cluster.process.send_signal(signal.SIGINT)
        assert cluster.process.wait(timeout=STOP_DEADLINE_S) == 0, cluster.stderr_text()
        # Every node it ever ran, restarted ones included, is stopped; nothing of them is left.
        assert [pid for pid in cluster.pids_seen if pid_is_running(pid)] == []
        assert not (cluster.directory / "control.sock").exists()
        assert [name for name in NODE_NAMES if (cluster.directory / name / "pid").exists()] == []


@pytest.fixture
def cluster(three_nodes: DevCluster) -> DevCluster:
    """The shared cluster with every node running, unpaused and seen alive by the others: a test
    that failed half-way leaves nothing broken for the next."""
    assert three_nodes.process.poll() is None, three_nodes.stderr_text()
    for name, node in three_nodes.status().items():
        if node["state"] == "paused":
            ok(three_nodes.dev("resume", name))
        elif node["state"] == "stopped":
            ok(three_nodes.dev("start", name))
    poll("every node healthy", lambda: cluster_healthy(three_nodes))
    return three_nodes


def test_status_shows_every_node_in_text_and_json(cluster: DevCluster) -> None:
    nodes = cluster.status()
    assert list(nodes) == NODE_NAMES
    for name, node in nodes.items():
        assert node["address"] == cluster.addresses[name]
        assert node["state"] == "running" and node["answers"] is True
        assert node["liveness"] == {other: "alive" for other in NODE_NAMES if other != name}
        assert node["hints_pending"] == 0
        assert node["data_dir"] == str(cluster.directory / name)
        cmdline = Path(f"/proc/{node['pid']}/cmdline").read_bytes().split(b"\0")
        assert [b"--name", name.encode()] == cmdline[cmdline.index(b"--name") : cmdline.index(b"--name") + 2]

    document = json.loads(ok(cluster.dev("status", json_output=True)))
    assert document["supervisor"] == {"pid": cluster.process.pid, "ready": True}
    assert document["directory"] == str(cluster.directory)

    text = ok(cluster.dev("status"))
    assert f"dev up PID {cluster.process.pid}" in text
    for name, node in nodes.items():
        row = next(line for line in text.splitlines() if line.startswith(name))
        assert row.split()[:6] == [name, node["address"], str(node["pid"]), "running", "yes", "alive"]


def test_kill_9_leaves_the_others_serving_and_dev_start_brings_the_node_back(cluster: DevCluster) -> None:
    victim = "dev3"
    pid = cluster.status()[victim]["pid"]
    os.kill(pid, signal.SIGKILL)  # as `kill -9` from a shell: not through dynctl

    stderr = cluster.wait_for_stderr(f"{victim} ({cluster.addresses[victim]}, PID {pid}) died: killed by SIGKILL")
    assert f"last lines of {cluster.directory / victim / 'dynd.log'}" in stderr
    cluster.wait_for_stderr(f"Bring it back with: dynctl dev start {victim} --dir {cluster.directory}")
    assert cluster.process.poll() is None  # dev up keeps running

    # The two others serve writes (W=2) and reads (R=2) through either of them.
    ok(cluster.kv("dev1", "put", "failover", "written while dev3 was down"))
    assert ok(cluster.kv("dev2", "get", "failover")) == "written while dev3 was down"

    down = cluster.status()[victim]
    assert (down["state"], down["pid"], down["last_exit"], down["answers"]) == ("stopped", None, "killed by SIGKILL", None)
    assert not (cluster.directory / victim / "pid").exists()
    # The failure detectors of both others call it dead, and the write left a hint for it.
    poll("dev3 seen dead, with a hint held for it", lambda: (node := cluster.status()[victim])["liveness"] == {"dev1": "dead", "dev2": "dead"} and node["hints_pending"] >= 1)
    row = next(line for line in ok(cluster.dev("status")).splitlines() if line.startswith(victim))
    assert row.split()[:5] == [victim, cluster.addresses[victim], "-", "stopped", "(SIGKILL)"]

    started = ok(cluster.dev("start", victim))
    back = cluster.status()[victim]
    assert started == f"{victim} started (PID {back['pid']}) on {cluster.addresses[victim]}\n"
    assert back["state"] == "running" and back["pid"] != pid
    assert f"{victim} ({cluster.addresses[victim]}, PID {back['pid']}) is up again" in cluster.stderr_text()
    poll("the cluster healthy again", lambda: cluster_healthy(cluster))
    poll("the hints for dev3 delivered", lambda: cluster.status()[victim]["hints_pending"] == 0)
    assert ok(cluster.kv(victim, "get", "failover")) == "written while dev3 was down"


def test_stop_and_start_a_node(cluster: DevCluster) -> None:
    pid = cluster.status()["dev2"]["pid"]
    stopped = json.loads(ok(cluster.dev("stop", "dev2", json_output=True)))
    assert stopped["action"] == "stop" and stopped["message"] == "dev2 stopped (exited with code 0)"
    assert stopped["node"]["state"] == "stopped" and stopped["node"]["pid"] is None
    assert not pid_is_running(pid)
    cluster.wait_for_stderr(f"dev2 ({cluster.addresses['dev2']}, PID {pid}) exited with code 0 (asked by dynctl dev stop)")
    assert f"PID {pid}) died" not in cluster.stderr_text()

    assert "dev2 is not running (exited with code 0)" in refused(cluster.dev("stop", "dev2"))
    assert "dev2 is not running" in refused(cluster.dev("kill", "dev2"))
    assert "dev2 is not running" in refused(cluster.dev("pause", "dev2"))
    ok(cluster.kv("dev1", "put", "stopped", "two of three"))

    ok(cluster.dev("start", "dev2"))
    assert "dev2 is already running" in refused(cluster.dev("start", "dev2"))
    assert cluster.status()["dev2"]["state"] == "running"
    poll("the cluster healthy again", lambda: cluster_healthy(cluster))


def test_pause_and_resume_a_node(cluster: DevCluster) -> None:
    pid = cluster.status()["dev2"]["pid"]
    assert ok(cluster.dev("pause", "dev2")) == f"dev2 paused (SIGSTOP to PID {pid})\n"
    assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    paused = cluster.status()["dev2"]
    assert (paused["state"], paused["pid"], paused["answers"]) == ("paused", pid, None)
    assert "dev2 is already paused" in refused(cluster.dev("pause", "dev2"))
    # Still a member, holding its connections, answering nothing: the other two carry W=2.
    ok(cluster.kv("dev1", "put", "paused", "dev2 asleep"))
    assert ok(cluster.kv("dev3", "get", "paused")) == "dev2 asleep"
    poll("dev2 suspected", lambda: set(cluster.status()["dev2"]["liveness"].values()) & {"suspect", "dead"})

    assert ok(cluster.dev("resume", "dev2")) == f"dev2 resumed (SIGCONT to PID {pid})\n"
    assert cluster.status()["dev2"]["state"] == "running"
    assert "dev2 is not paused" in refused(cluster.dev("resume", "dev2"))
    poll("the cluster healthy again", lambda: cluster_healthy(cluster))
    stderr = cluster.stderr_text()
    assert f"dev2 ({cluster.addresses['dev2']}, PID {pid}) paused by dynctl dev pause" in stderr
    assert f"PID {pid}) resumed by dynctl dev resume" in stderr


def test_kill_through_dynctl_is_reported_as_asked_for(cluster: DevCluster) -> None:
    pid = cluster.status()["dev1"]["pid"]
    assert ok(cluster.dev("kill", "dev1")) == "dev1 killed by SIGKILL\n"
    assert not pid_is_running(pid)
    cluster.wait_for_stderr(f"dev1 ({cluster.addresses['dev1']}, PID {pid}) killed by SIGKILL (asked by dynctl dev kill)")
    assert f"PID {pid}) died" not in cluster.stderr_text()
    ok(cluster.kv("dev2", "put", "no-dev1", "still writable"))
    ok(cluster.dev("start", "dev1"))


def test_an_unknown_node_is_refused_and_changes_nothing(cluster: DevCluster) -> None:
    before = {name: (node["pid"], node["state"]) for name, node in cluster.status().items()}
    for command in ("start", "stop", "kill", "pause", "resume"):
        stderr = refused(cluster.dev(command, "dev9"))
        assert f"no node 'dev9' in the dev cluster in {cluster.directory} (its nodes: dev1, dev2, dev3)" in stderr
    assert {name: (node["pid"], node["state"]) for name, node in cluster.status().items()} == before


def test_a_second_dev_up_on_the_same_directory_is_refused(cluster: DevCluster) -> None:
    result = run_dynctl("dev", "up", "--nodes", "3", "--dir", str(cluster.directory), "--base-port", str(base_port_for(3)))
    assert f"a dev up (PID {cluster.process.pid}) is already running on {cluster.directory}" in refused(result)
    assert cluster.process.poll() is None


# ---- one-node clusters: the ends of a dev up's life ----


def test_ctrl_c_stops_a_restarted_node_too(tmp_path: Path) -> None:
    # A directory deep enough that its control socket's path does not fit in sun_path (107 bytes).
    directory = tmp_path / ("d" * 60) / ("e" * 60) / "cluster"
    assert len(str(directory / "control.sock")) > 107
    with dev_up(directory, 1) as cluster:
        (pid,) = cluster.pids_seen
        os.kill(pid, signal.SIGKILL)
        cluster.wait_for_stderr(f"dev1 ({cluster.addresses['dev1']}, PID {pid}) died: killed by SIGKILL")
        cluster.wait_for_stderr("dev1 is down; 0 of 1 nodes still run")
        assert cluster.process.poll() is None
        ok(cluster.dev("start", "dev1"))
        new_pid = cluster.status()["dev1"]["pid"]
        assert new_pid != pid and (directory / "dev1" / "pid").exists()

        cluster.process.send_signal(signal.SIGINT)
        assert cluster.process.wait(timeout=STOP_DEADLINE_S) == 0, cluster.stderr_text()
        assert not pid_is_running(new_pid)
        assert "dev1 stopped" in cluster.stderr_text()
    assert not (directory / "dev1" / "pid").exists() and not (directory / "control.sock").exists()
    # cluster.json stays, so `dev status` names the nodes of the last run, all stopped.
    nodes = json.loads(ok(run_dynctl("--json", "dev", "status", "--dir", str(directory))))["nodes"]
    assert [(node["name"], node["state"]) for node in nodes] == [("dev1", "stopped")]
    assert "no dev up is running" in refused(run_dynctl("dev", "start", "dev1", "--dir", str(directory)))


def test_nodes_that_outlive_a_killed_dev_up_can_be_seen_and_stopped(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    with dev_up(directory, 1) as cluster:
        (pid,) = cluster.pids_seen
        cluster.process.kill()  # dev up dies; its node, in a session of its own, runs on
        cluster.process.wait()
        try:
            status = json.loads(ok(cluster.dev("status", json_output=True)))
            assert status["supervisor"] is None
            assert [(node["name"], node["pid"], node["state"]) for node in status["nodes"]] == [("dev1", pid, "running")]
            assert "no dev up is running" in cluster.dev("status").stderr.decode()

            again = run_dynctl("dev", "up", "--nodes", "1", "--dir", str(directory), "--base-port", str(base_port_for(1)))
            assert f"still run without it: dev1 (PID {pid})" in refused(again)

            assert ok(cluster.dev("pause", "dev1")).startswith(f"dev1 paused (PID {pid}; no dev up runs on")
            assert cluster.status()["dev1"]["state"] == "paused"
            assert "no dev up is running" in refused(cluster.dev("start", "dev1"))
            ok(cluster.dev("stop", "dev1"))  # SIGTERM and SIGCONT: a paused node stops too
            poll("the orphan gone", lambda: not pid_is_running(pid) or identity_of(pid) is None, STOP_DEADLINE_S)
            assert not (directory / "dev1" / "pid").exists()
            assert "dev1 is not running" in refused(cluster.dev("stop", "dev1"))
        finally:
            if is_node_of(pid, directory):
                os.kill(pid, signal.SIGKILL)


# ---- no dev up needed ----


@pytest.mark.parametrize("args", [["status"], ["start", "dev1"], ["stop", "dev1"], ["kill", "dev1"], ["pause", "dev1"], ["resume", "dev1"]])
def test_no_dev_cluster_in_the_directory(tmp_path: Path, args: list[str]) -> None:
    directory = tmp_path / "empty"
    stderr = refused(run_dynctl("dev", *args, "--dir", str(directory)))
    assert f"no dev cluster in {directory}" in stderr and "dynctl dev up --nodes 3" in stderr
    assert not directory.exists()


def _stranger_cluster(tmp_path: Path, argv: list[str]) -> tuple[Path, DevNodeSpec]:
    directory = tmp_path / "cluster"
    spec = DevNodeSpec("dev1", free_port(), directory / "dev1", tuple(argv))
    spec.directory.mkdir(parents=True)
    write_state(ClusterState(directory, 1, (spec,)))
    return directory, spec


SLEEP_ARGV = ["sleep", "300"]


def start_sleep() -> subprocess.Popen[bytes]:
    """A `sleep 300` whose /proc cmdline shows it: the kernel closes the close-on-exec pipe that
    Popen waits on a moment before it sets the new program's arguments."""
    process = subprocess.Popen(SLEEP_ARGV)
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    poll("sleep to show its command line", lambda: cmdline.read_bytes() == b"sleep\x00300\x00", STOP_DEADLINE_S)
    return process


@pytest.mark.parametrize("lie", ["another start time", "another command line", "no such process"])
def test_a_stale_pid_file_never_signals_a_stranger(tmp_path: Path, lie: str) -> None:
    stranger = start_sleep()
    try:
        identity = identity_of(stranger.pid)
        assert identity is not None
        node_argv = SLEEP_ARGV if lie != "another command line" else [sys.executable, "-m", "dynd", "--name", "dev1"]
        directory, spec = _stranger_cluster(tmp_path, node_argv)
        recorded = {
            "another start time": ProcessIdentity(stranger.pid, identity.start_ticks + 1),
            "another command line": identity,
            "no such process": ProcessIdentity(2**22 + 1, identity.start_ticks),  # above pid_max's limit
        }[lie]
        write_pid_file(spec, recorded)
        for command in ("kill", "pause"):
            stderr = refused(run_dynctl("dev", command, "dev1", "--dir", str(directory)))
            assert "dev1 is not running" in stderr
        status = json.loads(ok(run_dynctl("--json", "dev", "status", "--dir", str(directory))))
        assert [(node["state"], node["pid"]) for node in status["nodes"]] == [("stopped", None)]
        assert stranger.poll() is None and identity_of(stranger.pid) == identity  # untouched, not even paused
        assert Path(f"/proc/{stranger.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T"
    finally:
        stranger.kill()
        stranger.wait()


def test_a_pid_file_that_matches_start_time_and_command_line_is_believed(tmp_path: Path) -> None:
    # The other side of the check above: the very process the PID file recorded is signalled.
    process = start_sleep()
    try:
        identity = identity_of(process.pid)
        assert identity is not None
        directory, spec = _stranger_cluster(tmp_path, SLEEP_ARGV)
        write_pid_file(spec, identity)
        assert recorded_process(spec) == identity
        ok(run_dynctl("dev", "pause", "dev1", "--dir", str(directory)))
        assert Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        ok(run_dynctl("dev", "kill", "dev1", "--dir", str(directory)))
        assert process.wait(timeout=STOP_DEADLINE_S) == -signal.SIGKILL
        assert not spec.pid_path.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_malformed_cluster_description_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text('{"format": 1, "nodes": "no"}')
    stderr = refused(run_dynctl("dev", "status", "--dir", str(tmp_path)))
    assert "is not a dev cluster description" in stderr


# ---- pieces ----


def test_the_cluster_description_round_trips(tmp_path: Path) -> None:
    specs = tuple(DevNodeSpec(f"dev{i}", 7400 + i, tmp_path / f"dev{i}", ("python", "-m", "dynd", "--name", f"dev{i}")) for i in (1, 2))
    write_state(ClusterState(tmp_path, 1234, specs))
    assert read_state(tmp_path) == ClusterState(tmp_path, 1234, specs)


def _member(name: str, liveness: str, hints: int = 0) -> MemberView:
    return MemberView(name, "127.0.0.1:1", "joined", 1, True, 0, liveness=liveness, hints_pending=hints)


def test_status_joins_each_process_with_what_the_others_say_of_it() -> None:
    views = [NodeProcessView(name, "127.0.0.1:1", None, state, None, "", "") for name, state in [("dev1", "running"), ("dev2", "running"), ("dev3", "stopped")]]
    answers: dict[str, ClusterStatusOk | None] = {
        "dev1": ClusterStatusOk(1, "dev1", [_member("dev1", "alive"), _member("dev2", "alive"), _member("dev3", "dead", hints=4)]),
        "dev2": None,  # asked, no answer
    }
    statuses = {status.process.name: status for status in node_statuses(views, answers)}
    assert (statuses["dev1"].answers, statuses["dev1"].seen_as) == (True, {})  # its own view of itself does not count
    assert (statuses["dev2"].answers, statuses["dev2"].seen_as) == (False, {"dev1": "alive"})
    assert (statuses["dev3"].answers, statuses["dev3"].seen_as, statuses["dev3"].hints_pending) == (None, {"dev1": "dead"}, 4)


def test_liveness_summary() -> None:
    assert liveness_summary({}) == "-"
    assert liveness_summary({"dev1": "dead", "dev2": "dead"}) == "dead"
    assert liveness_summary({"dev2": "dead", "dev1": "suspect", "dev4": "dead"}) == "dead (dev2, dev4), suspect (dev1)"


def test_dev_up_suggests_breaking_its_last_node() -> None:
    lines = failover_commands(["dev1", "dev2", "dev3"], " --dir /tmp/d")
    assert [line.split("#")[0].split() for line in lines] == [
        ["dynctl", "dev", "kill", "dev3", "--dir", "/tmp/d"],
        ["dynctl", "dev", "status", "--dir", "/tmp/d"],
        ["dynctl", "dev", "start", "dev3", "--dir", "/tmp/d"],
    ]
    assert len({line.index("#") for line in lines}) == 1  # the comments line up
