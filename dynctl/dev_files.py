"""What a dev cluster leaves in its directory, and how to tell its node processes from strangers.

DIR/cluster.json is written by `dev up` before it starts any node: the directory, the PID of that
`dev up`, the secret file, and each node's name, address, data directory and exact argv. It stays
after `dev up` ends, so the other `dynctl dev` commands can name the nodes of the last run.

DIR/dev{i}/pid names the node's process while it runs: its PID and its start time in clock ticks
since boot (field 22 of /proc/PID/stat). `dev up` writes it when it starts the node and removes
it when it reaps the node. A PID file alone proves nothing (the node may be gone and its PID
reused), so `recorded_process` believes it only when /proc shows a process with that PID, that
start time and exactly the node's argv. Nothing in dynctl signals a PID that has not passed that
check, and `open_recorded_process` holds the process by a pidfd from before the check, so the PID
cannot change owner between the check and the signal.

Linux only, as dynd is: /proc and pidfds.
"""

from __future__ import annotations

import json
import os
import select
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynd.protocol.address import format_address

LOOPBACK = "127.0.0.1"
LOG_FILE_NAME = "dynd.log"
SECRET_FILE_NAME = "secret"
STATE_FILE_NAME = "cluster.json"
PID_FILE_NAME = "pid"
CONTROL_SOCKET_NAME = "control.sock"
STATE_FORMAT = 1
STATE_FILE_BYTES_MAX = 1 << 20
PID_FILE_BYTES_MAX = 4096


class DevClusterError(Exception):
    """The command cannot go on: no dev cluster here, no such node, a node in the wrong state.
    The message says what to do; dynctl exits 2 with it."""


@dataclass(frozen=True, slots=True)
class DevNodeSpec:
    name: str
    port: int
    directory: Path
    argv: tuple[str, ...]

    @property
    def address(self) -> str:
        return format_address(LOOPBACK, self.port)

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE_NAME

    @property
    def pid_path(self) -> Path:
        return self.directory / PID_FILE_NAME


@dataclass(frozen=True, slots=True)
class ClusterState:
    """DIR/cluster.json: which nodes `dev up` runs on this directory, and which `dev up` it was."""

    directory: Path
    supervisor_pid: int
    nodes: tuple[DevNodeSpec, ...]

    @property
    def control_socket(self) -> Path:
        return self.directory / CONTROL_SOCKET_NAME

    def node(self, name: str) -> DevNodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        names = ", ".join(spec.name for spec in self.nodes)
        raise DevClusterError(f"no node {name!r} in the dev cluster in {self.directory} (its nodes: {names})")

    def document(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "directory": str(self.directory),
            "supervisor_pid": self.supervisor_pid,
            "secret_file": str(self.directory / SECRET_FILE_NAME),
            "control_socket": str(self.control_socket),
            "nodes": [
                {
                    "name": spec.name,
                    "address": spec.address,
                    "port": spec.port,
                    "data_dir": str(spec.directory),
                    "log": str(spec.log_path),
                    "argv": list(spec.argv),
                }
                for spec in self.nodes
            ],
        }


def state_path(directory: Path) -> Path:
    return directory / STATE_FILE_NAME


def write_state(state: ClusterState) -> None:
    """Replace DIR/cluster.json at once (write aside, then rename), so a reader never sees half."""
    path = state_path(state.directory)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(state.document(), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def read_state(directory: Path) -> ClusterState:
    """DIR/cluster.json, checked; DevClusterError when there is none or it is not one of ours."""
    path = state_path(directory)
    try:
        with path.open("rb") as handle:
            raw = handle.read(STATE_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        raise DevClusterError(
            f"no dev cluster in {directory} ({path} does not exist): start one with `dynctl dev up --nodes 3 --dir {directory}`"
        ) from None
    except OSError as exc:
        raise DevClusterError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if len(raw) > STATE_FILE_BYTES_MAX:
            raise ValueError(f"larger than {STATE_FILE_BYTES_MAX} bytes")
        return _state_from_document(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise DevClusterError(f"{path} is not a dev cluster description ({exc}); `dynctl dev up` rewrites it") from None


def _state_from_document(document: Any) -> ClusterState:
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        raise ValueError(f"format is not {STATE_FORMAT}")
    nodes = []
    for entry in document["nodes"]:
        argv = entry["argv"]
        if not isinstance(argv, list) or not all(isinstance(word, str) for word in argv):
            raise ValueError("argv is not a list of strings")
        port = entry["port"]
        if not isinstance(port, int) or isinstance(port, bool):
            raise ValueError("port is not an integer")
        nodes.append(DevNodeSpec(str(entry["name"]), port, Path(entry["data_dir"]), tuple(argv)))
    supervisor_pid = document["supervisor_pid"]
    if not isinstance(supervisor_pid, int):
        raise ValueError("supervisor_pid is not an integer")
    return ClusterState(Path(document["directory"]), supervisor_pid, tuple(nodes))


# ---- processes: whose PID is it ----


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """A process as /proc names it: its PID and when it started (clock ticks since boot), which
    together never name two processes."""

    pid: int
    start_ticks: int


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses): field 3 on."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def identity_of(pid: int) -> ProcessIdentity | None:
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return ProcessIdentity(pid, int(fields[19]))  # field 22, starttime


def is_paused(pid: int) -> bool:
    """Stopped by a signal (SIGSTOP, `dev pause`), as /proc/PID/stat's state says ("T")."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] in ("T", "t")


def _argv_of(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # A zombie's cmdline is empty: it is no longer the node, whatever its PID file says.
    return tuple(word.decode("utf-8", "surrogateescape") for word in raw.split(b"\0")[:-1]) if raw else None


def write_pid_file(spec: DevNodeSpec, identity: ProcessIdentity) -> None:
    temporary = spec.pid_path.with_name(f".{PID_FILE_NAME}.{os.getpid()}")
    temporary.write_text(f"{identity.pid} {identity.start_ticks}\n", encoding="ascii")
    os.replace(temporary, spec.pid_path)


def read_pid_file(spec: DevNodeSpec) -> ProcessIdentity | None:
    try:
        with spec.pid_path.open("rb") as handle:
            words = handle.read(PID_FILE_BYTES_MAX).split()
        pid, start_ticks = (int(word) for word in words)
    except (OSError, ValueError):
        return None
    return ProcessIdentity(pid, start_ticks) if pid > 0 else None


def remove_pid_file(spec: DevNodeSpec, identity: ProcessIdentity | None = None) -> None:
    """Remove the node's PID file; with `identity`, only if it still names that process."""
    if identity is not None and read_pid_file(spec) != identity:
        return
    try:
        spec.pid_path.unlink()
    except FileNotFoundError:
        pass


def recorded_process(spec: DevNodeSpec) -> ProcessIdentity | None:
    """The process the node's PID file names, if it is still that node: same start time, same argv.

    A process in the middle of its exec shows an empty command line for a moment; it reads as not
    the node, which errs on the side of never signalling."""
    recorded = read_pid_file(spec)
    if recorded is None or identity_of(recorded.pid) != recorded or _argv_of(recorded.pid) != spec.argv:
        return None
    return recorded


class RecordedProcess:
    """A node process that a PID file names and /proc confirms, held by a pidfd so that a signal
    reaches that process or nobody (a pidfd never refers to a later process with the same PID)."""

    def __init__(self, identity: ProcessIdentity, pidfd: int) -> None:
        self.identity = identity
        self._pidfd = pidfd

    def send(self, signum: int) -> bool:
        """Send `signum`; False if the process has already exited."""
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    def wait_for_exit(self, timeout_s: float) -> bool:
        """True once the process has exited (its parent reaps it; we only watch), False at the timeout."""
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout_s * 1000))))

    def close(self) -> None:
        os.close(self._pidfd)

    def __enter__(self) -> RecordedProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_recorded_process(spec: DevNodeSpec) -> RecordedProcess | None:
    """The node's process if its PID file names it and it is still that node, else None."""
    recorded = read_pid_file(spec)
    if recorded is None:
        return None
    try:
        pidfd = os.pidfd_open(recorded.pid)
    except (ProcessLookupError, PermissionError):
        return None
    # Checked after the pidfd is open: if the PID was already someone else's, the check fails;
    # if it passes, the pidfd holds the node itself, whatever happens to the PID next.
    if recorded_process(spec) != recorded:
        os.close(pidfd)
        return None
    return RecordedProcess(recorded, pidfd)
