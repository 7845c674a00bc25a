"""Logs of a real dynd: JSON lines on stderr, and the level changed at runtime with dynctl.

- `--log-format json`: every line the node writes to stderr, from start to a clean stop, is a JSON
  object with time, level, node, logger, event and fields.
- `dynctl log-level DEBUG` on a running node makes DEBUG lines appear (a garbage UDP datagram is
  logged at DEBUG by the failure detector; the test polls the log for it under a deadline); an
  unknown level exits 4 and changes nothing.
- A connection holding only the client role (a client token, from another host) is refused with
  `unauthorized` (dynctl exits 6) and the level stays.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynd.client import BlockingClient
from dynd.protocol.address import parse_address
from dynd.protocol.errors import DynError
from tests.support import hostile, procs
from tests.support.procs import DyndProcess, free_port

REPO = Path(__file__).resolve().parents[2]
LOG_DEADLINE_S = 10.0
POLL_S = 0.05
DYNCTL_TIMEOUT_S = 60.0
RFC3339_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HARNESS_LINE = "=== start "  # DyndProcess marks each start in the log file it collects stderr in
REMOTE = hostile.non_loopback_host()
needs_remote = pytest.mark.skipif(REMOTE is None, reason="this machine has no non-loopback IPv4 address to connect from")


def dynctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynctl", *args], capture_output=True, text=True, timeout=DYNCTL_TIMEOUT_S, cwd=REPO, stdin=subprocess.DEVNULL
    )


def send_garbage_datagram(node: DyndProcess) -> None:
    """A datagram the failure detector cannot open: it is dropped and logged at DEBUG."""
    host, port = parse_address(node.address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"not a datagram", (host, port))


def wait_for_line(node: DyndProcess, pattern: re.Pattern[str], nudge: object = None) -> str:
    """Poll the node's log until a line matches `pattern`, calling `nudge()` before each look."""
    deadline = time.monotonic() + LOG_DEADLINE_S
    while True:
        if callable(nudge):
            nudge()
        for line in node.stderr_text().splitlines():
            if pattern.search(line):
                return line
        if time.monotonic() >= deadline:
            raise AssertionError(f"no line matching {pattern.pattern!r} in {node.name}'s log within {LOG_DEADLINE_S:g} s:\n{node.stderr_tail()}")
        time.sleep(POLL_S)  # poll interval; the condition is the log line itself


@pytest.fixture
def node(tmp_path: Path) -> Iterator[DyndProcess]:
    process = DyndProcess(tmp_path / "n1", name="logs1", extra_args=("--partitions", "8"))
    try:
        yield process.start()
    finally:
        process.stop()
        process.cleanup()


def test_json_logs_are_one_object_per_line_from_start_to_stop(tmp_path: Path) -> None:
    node = DyndProcess(tmp_path / "j1", name="json1", extra_args=("--partitions", "8", "--log-format", "json", "--log-level", "debug"))
    try:
        node.start()
        with BlockingClient(node.address) as client:
            client.put(b"k", b"v")
            assert client.get(b"k").values == [b"v"]
        send_garbage_datagram(node)
        wait_for_line(node, re.compile(r'"event": "bad datagram from '), nudge=lambda: send_garbage_datagram(node))
        result = dynctl("--node", node.address, "log-level", "info")
        assert result.returncode == 0, result.stderr
    finally:
        assert node.stop() == 0, node.stderr_tail()
    objects = []
    for number, line in enumerate(node.stderr_text().splitlines(), 1):
        if line.startswith(HARNESS_LINE):
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"line {number} of the log is not JSON ({exc}): {line!r}") from None
        assert isinstance(document, dict), line
        assert {"time", "level", "node", "event", "fields"} <= set(document), line
        assert RFC3339_UTC_MS.match(document["time"]), line
        assert document["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert document["node"] == "json1" and isinstance(document["event"], str) and isinstance(document["fields"], dict), line
        objects.append(document)
    events = [document["event"] for document in objects]
    assert any(event.startswith("node json1 serving on ") for event in events), events
    assert any(document["level"] == "DEBUG" for document in objects), events
    (change,) = [document for document in objects if document["event"] == "log_level_set"]
    assert change["fields"] == {"level": "INFO", "previous": "DEBUG", "message": "log level set to INFO (was DEBUG)"}
    assert events[-1].startswith("stopped cleanly"), events


def test_dynctl_log_level_debug_makes_debug_lines_appear_and_a_bad_level_changes_nothing(node: DyndProcess) -> None:
    send_garbage_datagram(node)
    assert " DEBUG " not in node.stderr_text()
    result = dynctl("--node", node.address, "log-level", "DEBUG")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{node.address}: log level DEBUG (was INFO)\n"
    line = wait_for_line(node, re.compile(r" DEBUG dynd\.swim: bad datagram from "), nudge=lambda: send_garbage_datagram(node))
    assert "INFO dynd.logs: log level set to DEBUG (was INFO)" in node.stderr_text(), line

    refused = dynctl("--node", node.address, "log-level", "LOUD")
    assert refused.returncode == 4, refused
    assert "unknown log level 'LOUD': choose one of DEBUG, INFO, WARNING, ERROR" in refused.stderr
    assert refused.stdout == ""
    # Still DEBUG: the next change reports it as the level before.
    result = dynctl("--node", node.address, "--json", "log-level", "warning")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"node": node.address, "level": "WARNING", "previous": "DEBUG"}


# ---- roles: a node with a secret and client tokens, reached from another host ----

CLIENT_TOKEN = "client-" + "c" * 24
ADMIN_TOKEN = "admin-" + "a" * 24


def start_with_token(node: DyndProcess, token: str) -> None:
    """`DyndProcess.start` probes with an anonymous client, which a node with client tokens
    refuses from another host; start the process the same way and poll with a token instead."""
    with open(node.stderr_path, "ab") as log:
        node.proc = subprocess.Popen(node.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    procs._live[node.proc.pid] = node.proc  # killed at exit should the test forget

    def ready() -> bool:
        assert node.proc is not None and node.proc.poll() is None, node.stderr_tail()
        try:
            with BlockingClient(node.address, token=token, timeout_s=1) as client:
                return client.ping() == node.name
        except DynError:
            return False

    hostile.wait_until(f"{node.name} answering a client with a token", ready, deadline_s=30)


@needs_remote
def test_a_client_token_cannot_change_the_log_level(tmp_path: Path) -> None:
    hostile.write_secret_file(tmp_path / "secret")
    hostile.write_tokens_file(tmp_path / "tokens", {CLIENT_TOKEN: "client", ADMIN_TOKEN: "admin"})
    config = f'[security]\ncluster_secret_file = "{tmp_path / "secret"}"\nclient_tokens_file = "{tmp_path / "tokens"}"\n'
    port = free_port()
    args = ("--listen", f"0.0.0.0:{port}", "--advertise", f"127.0.0.1:{port}", "--partitions", "8")
    node = DyndProcess(tmp_path / "t1", name="t1", config_text=config, port=port, extra_args=args)
    (tmp_path / "client-token").write_text(CLIENT_TOKEN + "\n")
    (tmp_path / "admin-token").write_text(ADMIN_TOKEN + "\n")
    remote = f"{REMOTE}:{port}"
    try:
        start_with_token(node, CLIENT_TOKEN)
        refused = dynctl("--node", remote, "--token-file", str(tmp_path / "client-token"), "log-level", "DEBUG")
        assert refused.returncode == 6, refused
        assert "log_level needs an admin token" in refused.stderr
        allowed = dynctl("--node", remote, "--token-file", str(tmp_path / "admin-token"), "--json", "log-level", "ERROR")
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout) == {"node": remote, "level": "ERROR", "previous": "INFO"}  # the refusal changed nothing
    finally:
        node.stop()
        node.cleanup()
