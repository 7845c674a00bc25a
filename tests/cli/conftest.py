"""Fixtures for the dynctl tests: one dynd node and one echo server per session, both on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from dynctl_testing import (
    DYNCTL_DEADLINE_S,
    ECHO_SERVER,
    HOST,
    REPO,
    DynctlRunner,
    RunningServer,
    dynctl_env,
    start_server,
    stop_server,
)

from dynd.protocol.address import format_address
from tests.support.procs import DyndProcess, free_port


@pytest.fixture(scope="session")
def dynd_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DyndProcess]:
    """One node for the whole session (`tests.support.procs`: ready once it answers hello and ping)."""
    node = DyndProcess(tmp_path_factory.mktemp("dynd"), name="cli1")
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def echo_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("echo")
    address = format_address(HOST, free_port())
    server = start_server([sys.executable, str(ECHO_SERVER), "--listen", address], address, workdir / "echo.log")
    yield server
    stop_server(server)


@pytest.fixture
def dynctl() -> DynctlRunner:
    """Run `python -m dynctl ARGS...` with stdout and stderr captured (so both are pipes)."""

    def run(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "dynctl", *args],
            input=stdin,
            capture_output=True,
            env=dynctl_env(env),
            timeout=DYNCTL_DEADLINE_S,
            cwd=REPO,
        )

    return run


@pytest.fixture
def on_node(dynd_node: DyndProcess, dynctl: DynctlRunner) -> DynctlRunner:
    """Like `dynctl`, with `--node` pointing at the test node."""

    def run(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        return dynctl("--node", dynd_node.address, *args, stdin=stdin, env=env)

    return run


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key no other test (or earlier run against the same node) has touched."""
    return f"test:{request.node.name}:{uuid.uuid4().hex[:12]}"
