"""Helpers for the dynctl tests: start and stop the echo server on 127.0.0.1, run dynctl.

The dynd node comes from `tests.support.procs.DyndProcess` (see conftest.py). The echo server starts
on a free port, is ready once it accepts a TCP connection (`wait_for_port`, failing early with its
log if it exits), and is stopped with `stop_process` at the end.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.procs import LOOPBACK, NotReady, stop_process, wait_for_port

REPO = Path(__file__).resolve().parents[2]
ECHO_SERVER = REPO / "tests" / "bench" / "echo_server.py"
HOST = LOOPBACK
READY_DEADLINE_S = 20.0
DYNCTL_DEADLINE_S = 60.0


@dataclass(frozen=True)
class RunningServer:
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(argv: list[str], address: str, log_path: Path) -> RunningServer:
    """Start `argv` (which should listen on `address`) and return once it accepts connections."""
    with log_path.open("wb") as log:  # a file, not a pipe: a chatty server must never block on its log
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = RunningServer(address, process, log_path)
    try:
        wait_for_port(address, READY_DEADLINE_S, proc=process)
    except NotReady as exc:
        stop_server(server)
        pytest.fail(f"{exc}:\n{server.log_text()}")
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: RunningServer) -> None:
    stop_process(server.process)


DynctlRunner = Callable[..., "subprocess.CompletedProcess[bytes]"]


def dynctl_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "DYNCTL_NODE"}
    env.update(extra or {})
    return env
