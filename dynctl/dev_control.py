"""The control socket through which `dynctl dev status|start|stop|kill|pause|resume` reach `dev up`.

`dev up` owns its nodes: they are its children, it alone signals them (through the process
handles it has not reaped, so never a stranger's PID), restarts them, and stops every one on
Ctrl-C. The other commands ask it over DIR/control.sock, a Unix socket of mode 0600 (so only its
user, and root, can connect): one request line, one reply line, both JSON.

    request  {"op": "status"}  or  {"op": "start"|"stop"|"kill"|"pause"|"resume", "node": "dev2"}
    reply    {"ok": true, "message": "...", "nodes": [view, ...]}
             {"ok": false, "error": CODE, "message": "...", "details": "..." or null}

A view is `NodeProcessView.document()`. CODE is one of `ERROR_CODES`; `start_failed` means the
node did not come up (`details` holds its log's tail) and `timeout` that a node did not take a
signal in time, and `internal` a bug in `dev up` (all exit 3); every other code is a request that cannot be met as asked (exit 2).

A socket path longer than sun_path holds (107 bytes) is reached through /proc/self/fd/N/NAME, N
an O_PATH descriptor of the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPS = ("status", "start", "stop", "kill", "pause", "resume")
ERROR_CODES = (
    "bad_request",
    "unknown_node",
    "not_ready",
    "already_running",
    "not_running",
    "already_paused",
    "not_paused",
    "start_failed",
    "timeout",
    "internal",
)
LINE_BYTES_MAX = 1 << 20  # a status reply for 32 nodes is a few KiB
REQUEST_READ_TIMEOUT_S = 5.0
SUN_PATH_BYTES_MAX = 107
CONTROL_BACKLOG = 16

# Node process states, as `dev status` shows them.
STARTING = "starting"
RUNNING = "running"
PAUSED = "paused"
STOPPING = "stopping"
STOPPED = "stopped"


class NoSupervisor(Exception):
    """Nothing answers on the control socket: no `dev up` runs on this directory."""


class ControlError(Exception):
    """`dev up` refused or failed the request; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


@dataclass(frozen=True, slots=True)
class NodeProcessView:
    """One node's process as `dev up` (or, without one, its PID file) knows it."""

    name: str
    address: str
    pid: int | None  # None when no process runs
    state: str  # STARTING, RUNNING, PAUSED, STOPPING or STOPPED
    last_exit: str | None  # how its last process ended ("killed by SIGKILL"), None if it has not
    data_dir: str
    log: str

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "pid": self.pid,
            "state": self.state,
            "last_exit": self.last_exit,
            "data_dir": self.data_dir,
            "log": self.log,
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> NodeProcessView:
        pid = document["pid"]
        return cls(
            name=str(document["name"]),
            address=str(document["address"]),
            pid=int(pid) if pid is not None else None,
            state=str(document["state"]),
            last_exit=None if document["last_exit"] is None else str(document["last_exit"]),
            data_dir=str(document["data_dir"]),
            log=str(document["log"]),
        )


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for `path` that fits in sun_path (see the module docstring)."""
    if len(os.fsencode(path)) <= SUN_PATH_BYTES_MAX:
        yield str(path)
        return
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


def bind_control_socket(path: Path, backlog: int = CONTROL_BACKLOG) -> socket.socket:
    """Listen on `path`, which only this user (and root) may connect to. A file left there by a
    `dev up` that was killed is replaced: the caller has made sure no one answers on it."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_address(path) as address:
            sock.bind(address)
        # Before listen: until then a connection is refused, so no one gets in while the mode is wider.
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def decode_line(line: bytes) -> dict[str, Any]:
    document = json.loads(line)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def error_reply(code: str, message: str, details: str | None = None) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message, "details": details}


def ask(socket_path: Path, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    """Send one request to `dev up` and return its (ok) reply.

    Raises NoSupervisor when nothing listens on the socket, ControlError for a refusal.
    """
    deadline = time.monotonic() + deadline_s
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(deadline_s)
        try:
            with socket_address(socket_path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            # No socket, or one left by a `dev up` that was killed: nobody is listening.
            raise NoSupervisor(str(socket_path)) from None
        except OSError as exc:
            raise ControlError("unreachable", f"cannot connect to {socket_path}: {exc.strerror or exc}") from None
        reply = b""
        try:
            sock.sendall(encode(request))
            while not reply.endswith(b"\n"):
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
                if len(reply) > LINE_BYTES_MAX:
                    raise ControlError("bad_reply", f"`dev up` sent a reply over {LINE_BYTES_MAX} bytes")
        except TimeoutError:
            raise ControlError("timeout", f"`dev up` did not answer within {deadline_s:g} s") from None
        except OSError as exc:  # it closed the socket under us: it is stopping
            raise ControlError("unreachable", f"`dev up` went away: {exc.strerror or exc}") from None
        if not reply.endswith(b"\n"):
            raise ControlError("bad_reply", "`dev up` closed the control connection without a reply")
    try:
        document = decode_line(reply)
    except ValueError as exc:
        raise ControlError("bad_reply", f"`dev up` sent a reply that is not JSON: {exc}") from None
    if not document.get("ok"):
        raise ControlError(str(document.get("error")), str(document.get("message")), document.get("details"))
    return document
