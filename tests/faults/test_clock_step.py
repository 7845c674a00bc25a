"""A node whose wall clock steps an hour ahead and back keeps serving, suspects no one, and still
notices a dead peer on its own (issue 13).

Three real nodes on loopback; the second runs under libfaketime (Debian's `faketime` package) with
FAKETIME_DONT_FAKE_MONOTONIC=1, so only its wall clock follows FAKETIME_TIMESTAMP_FILE, as when NTP
or an operator steps the clock. While client tasks write and read through that node, its wall clock
steps an hour ahead, then back. Every request must succeed (none times out because of the step),
and no node may log a member as suspect or dead. Then one peer is killed and the other stopped
(SIGSTOP), so no gossip can tell the stepped node anything: its own failure detector must find the
killed peer dead. Before the fix, which ran every deadline on the wall clock, the step back left
its next probe an hour away, and it never noticed.

Skipped where libfaketime is not installed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from dynd.client import BlockingClient, open_client
from dynd.protocol.errors import DynError
from tests.support.cluster import FAST_TIMERS, poll_until, settled, start_node
from tests.support.procs import DyndProcess

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
pytestmark = pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime is not installed (Debian package faketime)")

STEP_S = 3_600
WRITERS = 6
CLIENT_TIMEOUT_S = 10.0  # beyond the node's request_timeout_ms (3 s): a timeout is the node's answer
# Each clock setting holds until the load has made this many requests and at least this long has
# passed on the test's monotonic clock: several SWIM periods (1 s) and a suspicion timeout (4 s),
# and more than FAKETIME_CACHE_DURATION, after which the node reads the new setting.
PHASE_REQUESTS_MIN = 200
PHASE_MIN_S = 6.0
PHASE_DEADLINE_S = 120.0
DETECTION_DEADLINE_S = 30.0  # a probe round, a period and the 4 s suspicion timeout, with room for a busy machine
VERDICT = re.compile(r"\bis (suspect|dead)\b")


def faketime_wrapper(timestamp_file: Path) -> tuple[str, ...]:
    """The command prefix that runs a node whose wall clock (only) follows `timestamp_file`."""
    return (
        "env",
        f"LD_PRELOAD={LIBFAKETIME}",
        f"FAKETIME_TIMESTAMP_FILE={timestamp_file}",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
        "FAKETIME_CACHE_DURATION=1",  # reread the file at most once a second (not on every clock read)
    )


def set_wall_offset(timestamp_file: Path, offset_s: int) -> None:
    timestamp_file.write_text(f"{offset_s:+d}\n")


def test_the_wrapper_steps_the_wall_clock_only(tmp_path: Path) -> None:
    """What the test below relies on: a process under the wrapper reads the file's offset."""
    timestamp_file = tmp_path / "faketime.rc"
    set_wall_offset(timestamp_file, STEP_S)
    read = "import time; print(time.time())"
    shown = subprocess.run([*faketime_wrapper(timestamp_file), sys.executable, "-c", read], capture_output=True, text=True, check=True, timeout=30)
    assert abs(float(shown.stdout) - time.time() - STEP_S) < 60, shown


class Load:
    """Client tasks writing and reading their own keys through one node, counting and keeping errors."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.requests = 0
        self.errors: list[str] = []
        self.stop = False

    async def writer(self, index: int) -> None:
        async with open_client(self.address, timeout_s=CLIENT_TIMEOUT_S, agent="test_clock_step") as client:
            context: bytes | None = None
            key = f"clock-step:{index}"
            version = 0
            while not self.stop:
                version += 1
                try:
                    context = await client.put(key, b"v%d" % version, context)
                    got = await client.get(key)
                    if got.values != [b"v%d" % version]:
                        self.errors.append(f"{key}: read {got.values!r} after writing v{version}")
                except DynError as exc:
                    self.errors.append(f"{key} v{version}: {exc.code}: {exc.message}")
                    context = None
                self.requests += 2


async def hold(load: Load, what: str) -> None:
    """Keep the load running under the current clock setting for one phase."""
    start_requests, start = load.requests, trio.current_time()
    with trio.fail_after(PHASE_DEADLINE_S):
        while load.requests - start_requests < PHASE_REQUESTS_MIN or trio.current_time() - start < PHASE_MIN_S:
            await trio.sleep(0.05)  # poll interval; the phase ends on the conditions above
    assert load.requests > start_requests, f"no request completed {what}"


async def serve_through_steps(stepped: DyndProcess, timestamp_file: Path) -> Load:
    load = Load(stepped.address)
    async with trio.open_nursery() as nursery:
        for index in range(WRITERS):
            nursery.start_soon(load.writer, index)
        await hold(load, "before the step")
        set_wall_offset(timestamp_file, STEP_S)
        await hold(load, "with the wall clock an hour ahead")
        set_wall_offset(timestamp_file, 0)
        await hold(load, "after the wall clock stepped back")
        load.stop = True
    return load


def verdicts_logged(node: DyndProcess, since: int) -> list[str]:
    return [line for line in node.stderr_text()[since:].splitlines() if VERDICT.search(line)]


def liveness(node: DyndProcess, member: str) -> str:
    with BlockingClient(node.address) as client:
        view = client.cluster_status(local_only=True)
    return next(m.liveness for m in view.members if m.name == member)


def test_a_node_whose_wall_clock_steps_keeps_serving_and_detecting(tmp_path: Path) -> None:
    timestamp_file = tmp_path / "faketime.rc"
    set_wall_offset(timestamp_file, 0)
    nodes: list[DyndProcess] = []
    try:
        first = start_node(tmp_path, "c1")
        nodes.append(first)
        stepped = DyndProcess(
            tmp_path / "c2", name="c2", config_text=FAST_TIMERS, extra_args=("--join", first.address), wrapper=faketime_wrapper(timestamp_file)
        ).start()
        nodes.append(stepped)
        nodes.append(start_node(tmp_path, "c3", first))
        poll_until("3 members everywhere", lambda: settled(nodes, {n.name for n in nodes}))
        logged_before = {n.name: len(n.stderr_text()) for n in nodes}

        load = trio.run(serve_through_steps, stepped, timestamp_file)

        assert not load.errors, f"{len(load.errors)} of {load.requests} requests failed across the clock steps: {load.errors[:5]}"
        suspected = {n.name: verdicts_logged(n, logged_before[n.name]) for n in nodes}
        assert not any(suspected.values()), f"members suspected across the clock steps: {suspected}"

        # Cut the stepped node off from any gossip: one peer dies, the other stops. It must find
        # the dead one on its own.
        killed, stopped = nodes[2], nodes[0]
        killed.kill9()
        stopped.signal(signal.SIGSTOP)
        poll_until(f"{stepped.name} finding {killed.name} dead", lambda: liveness(stepped, killed.name) == "dead", DETECTION_DEADLINE_S)
    finally:
        for node in nodes:
            if node.running:
                node.signal(signal.SIGCONT)  # a stopped node must be able to stop
            node.stop()
            node.cleanup()
