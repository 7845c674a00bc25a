"""`dev up`'s node processes: start them, watch them, and stop, kill, pause, resume or restart
one on request from another terminal (through the control socket, see dev_control.py).

Rules:
- Every node is a child of `dev up`, in its own session, so a Ctrl-C at the terminal reaches
  `dev up` alone, which stops the nodes under its deadline rather than each racing to exit.
- Signals go through the node's trio.Process, which refuses to signal a PID it has reaped: `dev up`
  never signals a process it did not start, even after the PID is reused.
- Until the cluster is ready, a node that fails ends the run (the caller stops the others and
  exits 3). Once it is ready, a node that dies is reported (a line, and its log's tail) and stays
  down until `dynctl dev start`; the others keep running. Stops and kills asked for are reported
  in one line, without the tail.
- Requests for one node are taken one at a time (its lock); status needs no lock.
- Each running node has DIR/dev{i}/pid (dev_files.py), written when it starts, removed when it is
  reaped, so `dynctl dev status` can tell its nodes even without a `dev up`.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from dynctl.dev_control import (
    LINE_BYTES_MAX,
    OPS,
    PAUSED,
    REQUEST_READ_TIMEOUT_S,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    ControlError,
    NodeProcessView,
    decode_line,
    encode,
    error_reply,
)
from dynctl.dev_files import DevNodeSpec, ProcessIdentity, identity_of, is_paused, remove_pid_file, write_pid_file
from dynctl.node import AGENT, Session
from dynctl.output import Output
from dynd.protocol.errors import DynError

READY_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0
SIGNAL_TAKEN_DEADLINE_S = 5.0
PROBE_TIMEOUT_S = 1.0
PROBE_INTERVAL_S = 0.05
LOG_TAIL_LINES = 20


def exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class NodeFailed(Exception):
    """A node did not start, did not answer in time, or exited; `details` is what its log says."""

    def __init__(self, name: str, message: str, details: str) -> None:
        super().__init__(message)
        self.name = name
        self.details = details

    @classmethod
    def of(cls, node: SupervisedNode, reason: str) -> NodeFailed:
        # The tail is read now, while it still shows what happened around the failure.
        return cls(node.spec.name, f"{node.describe()} {reason}", node.log_tail())


@dataclass(slots=True)
class Incarnation:
    """One process of a node, from its start to its exit."""

    process: trio.Process
    identity: ProcessIdentity | None  # as its PID file records it
    # Where this process's output starts in the log, so a failure shows its lines only.
    log_offset: int
    answered: bool = False  # it has answered ping
    stopping: bool = False
    # Who asked it to exit ("dynctl dev stop"); None: its exit would be news.
    exit_asked_by: str | None = None

    @property
    def running(self) -> bool:
        return self.process.returncode is None


@dataclass(slots=True)
class SupervisedNode:
    spec: DevNodeSpec
    lock: trio.Lock = field(default_factory=trio.Lock)
    current: Incarnation | None = None  # the latest process, running or not
    last_exit: str | None = None  # how the latest process ended

    @property
    def running(self) -> bool:
        return self.current is not None and self.current.running

    @property
    def pid(self) -> int | None:
        return self.current.process.pid if self.current is not None and self.current.running else None

    def state(self) -> str:
        current = self.current
        if current is None or not current.running:
            return STOPPED
        if current.stopping:
            return STOPPING
        if is_paused(current.process.pid):  # also when paused by hand (kill -STOP)
            return PAUSED
        return RUNNING if current.answered else STARTING

    def view(self) -> NodeProcessView:
        return NodeProcessView(
            name=self.spec.name,
            address=self.spec.address,
            pid=self.pid,
            state=self.state(),
            last_exit=self.last_exit,
            data_dir=str(self.spec.directory),
            log=str(self.spec.log_path),
        )

    def describe(self) -> str:
        pid = f", PID {self.current.process.pid}" if self.current is not None else ""
        return f"{self.spec.name} ({self.spec.address}{pid})"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        offset = self.current.log_offset if self.current is not None else 0
        try:
            with self.spec.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(cannot read {self.spec.log_path}: {exc.strerror or exc})"
        tail = text.splitlines()[-lines:]
        if not tail:
            return f"({self.spec.log_path} has nothing from this run)"
        return f"last lines of {self.spec.log_path}:\n" + "\n".join(f"  {line}" for line in tail)


async def _ping(session: Session, address: str, timeout_s: float) -> str:
    async with session.open_client(address, timeout_s=timeout_s, agent=f"{AGENT} dev") as client:
        return await client.ping()


async def wait_until_ready(session: Session, node: SupervisedNode, deadline_s: float = READY_DEADLINE_S) -> None:
    """Poll ping until the node answers as itself; raise NodeFailed if it exits or the deadline passes."""
    current = node.current
    assert current is not None
    deadline = trio.current_time() + deadline_s
    last_problem = "no answer"
    while True:
        code = current.process.poll()
        if code is not None:
            raise NodeFailed.of(node, f"{exit_description(code)} before it answered ping")
        probe_timeout_s = max(0.05, min(PROBE_TIMEOUT_S, deadline - trio.current_time()))
        try:
            answered_as = await _ping(session, node.spec.address, probe_timeout_s)
        except DynError as exc:
            last_problem = str(exc)
        else:
            if answered_as != node.spec.name:
                raise NodeFailed.of(node, f"is not what answers on its port: {answered_as!r} did")
            current.answered = True
            return
        if trio.current_time() >= deadline:
            raise NodeFailed.of(node, f"did not answer ping within {deadline_s:g} s (last: {last_problem})")
        await trio.sleep(PROBE_INTERVAL_S)  # the pause between polls; readiness is the ping itself


class Supervisor:
    """The nodes of one `dev up` and what may be done to them. `ready` turns True when the whole
    cluster has come up; `failed` holds the failure that ended the start-up, if one did."""

    def __init__(self, specs: list[DevNodeSpec], session: Session, nursery: trio.Nursery, dir_option: str) -> None:
        self.nodes = [SupervisedNode(spec) for spec in specs]
        self.session = session
        self.output: Output = session.output
        self.nursery = nursery
        self.ready = False
        self.failed: NodeFailed | None = None
        self._dir_option = dir_option  # " --dir DIR" for the commands it suggests, or ""

    def node(self, name: str) -> SupervisedNode:
        for node in self.nodes:
            if node.spec.name == name:
                return node
        names = ", ".join(node.spec.name for node in self.nodes)
        raise ControlError("unknown_node", f"no node {name!r} in this dev cluster (its nodes: {names})")

    def fail(self, failure: NodeFailed) -> None:
        """End the start-up: the first failure is the one reported."""
        if self.failed is None:
            self.failed = failure
        self.nursery.cancel_scope.cancel()

    def suggest(self, command: str, node: SupervisedNode) -> str:
        return f"dynctl dev {command} {node.spec.name}{self._dir_option}"

    # ---- processes ----

    async def launch(self, node: SupervisedNode, why: str) -> Incarnation:
        """Start the node's process (appending to its log) and watch it; it is not ready yet."""
        spec = node.spec
        try:
            with spec.log_path.open("ab") as log:
                header = f"=== dynctl {why}, {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(spec.argv)}\n"
                log.write(header.encode())
                log.flush()
                offset = log.tell()
                process = await trio.lowlevel.open_process(
                    list(spec.argv),
                    stdin=subprocess.DEVNULL,
                    # A file, not a pipe: a node must never block because nobody reads its log.
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
        except OSError as exc:
            reason = f"{spec.name} could not be started: {exc.strerror or exc}"
            raise NodeFailed(spec.name, reason, f"command: {shlex.join(spec.argv)}") from None
        current = Incarnation(process, identity_of(process.pid), offset)
        node.current = current
        if current.identity is not None:
            write_pid_file(spec, current.identity)
        self.nursery.start_soon(self._watch, node, current)
        return current

    async def _watch(self, node: SupervisedNode, current: Incarnation) -> None:
        code = await current.process.wait()
        how = exit_description(code)
        remove_pid_file(node.spec, current.identity)
        if node.current is current:
            node.last_exit = how
        current.stopping = False
        if not self.ready:
            self.fail(NodeFailed.of(node, f"{how} while the cluster was starting"))
        elif current.exit_asked_by is not None:
            self.output.note(f"{node.spec.name} ({node.spec.address}, PID {current.process.pid}) {how} (asked by {current.exit_asked_by})")
        else:
            self.output.error(f"{node.spec.name} ({node.spec.address}, PID {current.process.pid}) died: {how}")
            self.output.note(node.log_tail())
            up = sum(other.running for other in self.nodes)
            self.output.note(
                f"{node.spec.name} is down; {up} of {len(self.nodes)} nodes still run. "
                f"Bring it back with: {self.suggest('start', node)}"
            )

    async def _terminate(self, current: Incarnation, node: SupervisedNode, asked_by: str) -> int:
        """SIGTERM, wait up to STOP_DEADLINE_S, then SIGKILL; the exit code."""
        process = current.process
        current.stopping, current.exit_asked_by = True, asked_by
        process.terminate()  # Popen.send_signal checks first that it has not reaped this PID
        process.send_signal(signal.SIGCONT)  # a paused node must run to act on the SIGTERM
        with trio.move_on_after(STOP_DEADLINE_S):
            return await process.wait()
        self.output.warn(f"{node.describe()} still running {STOP_DEADLINE_S:g} s after SIGTERM: sending SIGKILL")
        process.kill()
        return await process.wait()

    async def stop_all(self) -> None:
        """SIGTERM every node still running, wait, SIGKILL those that outlive the deadline."""
        alive = [(node, node.current) for node in self.nodes if node.current is not None and node.current.running]
        if not alive:
            return
        self.output.note(f"stopping {', '.join(node.spec.name for node, _ in alive)}")

        async def stop_one(node: SupervisedNode, current: Incarnation) -> None:
            code = await self._terminate(current, node, "dev up, stopping")
            node.last_exit = exit_description(code)
            remove_pid_file(node.spec, current.identity)
            if code == 0:
                self.output.note(f"{node.spec.name} stopped")
            else:
                self.output.warn(f"{node.describe()} {node.last_exit} when stopped\n{node.log_tail()}")

        async with trio.open_nursery() as nursery:
            for node, current in alive:
                nursery.start_soon(stop_one, node, current)

    async def _await_pause_state(self, node: SupervisedNode, process: trio.Process, paused: bool) -> None:
        """Signals are delivered asynchronously: poll /proc until the node shows the state asked for."""
        deadline = trio.current_time() + SIGNAL_TAKEN_DEADLINE_S
        while process.returncode is None and is_paused(process.pid) != paused:
            if trio.current_time() >= deadline:
                raise ControlError("timeout", f"{node.describe()} did not change state within {SIGNAL_TAKEN_DEADLINE_S:g} s")
            await trio.sleep(PROBE_INTERVAL_S)

    # ---- requests from `dynctl dev ...` ----

    def _node_to_change(self, name: str) -> SupervisedNode:
        node = self.node(name)
        if not self.ready:
            raise ControlError("not_ready", "the dev cluster is still starting; try again when `dev up` says it is ready")
        return node

    def _require_running(self, node: SupervisedNode) -> Incarnation:
        current = node.current
        if current is None or not current.running:
            since = f" ({node.last_exit})" if node.last_exit else ""
            raise ControlError("not_running", f"{node.spec.name} is not running{since}; start it with: {self.suggest('start', node)}")
        return current

    async def start(self, name: str) -> str:
        node = self._node_to_change(name)
        async with node.lock:
            if node.running:
                raise ControlError("already_running", f"{name} is already running (PID {node.pid})")
            try:
                current = await self.launch(node, "dev start")
                await wait_until_ready(self.session, node)
            except NodeFailed as failure:
                if node.current is not None and node.current.running:
                    await self._terminate(node.current, node, "dynctl dev start: it did not come up")
                raise ControlError("start_failed", str(failure), failure.details) from None
        self.output.note(f"{node.describe()} is up again, on its data in {node.spec.directory}")
        return f"{name} started (PID {current.process.pid}) on {node.spec.address}"

    async def stop(self, name: str) -> str:
        node = self._node_to_change(name)
        async with node.lock:
            current = self._require_running(node)
            code = await self._terminate(current, node, "dynctl dev stop")
        return f"{name} stopped ({exit_description(code)})"

    async def kill(self, name: str) -> str:
        node = self._node_to_change(name)
        async with node.lock:
            current = self._require_running(node)
            current.exit_asked_by = "dynctl dev kill"
            current.process.kill()
            code = await current.process.wait()
        return f"{name} {exit_description(code)}"

    async def pause(self, name: str) -> str:
        node = self._node_to_change(name)
        async with node.lock:
            process = self._require_running(node).process
            if is_paused(process.pid):
                raise ControlError("already_paused", f"{name} is already paused; resume it with: {self.suggest('resume', node)}")
            process.send_signal(signal.SIGSTOP)
            await self._await_pause_state(node, process, paused=True)
        self.output.note(f"{node.describe()} paused by dynctl dev pause (SIGSTOP)")
        return f"{name} paused (SIGSTOP to PID {process.pid})"

    async def resume(self, name: str) -> str:
        node = self._node_to_change(name)
        async with node.lock:
            process = self._require_running(node).process
            if not is_paused(process.pid):
                raise ControlError("not_paused", f"{name} is not paused")
            process.send_signal(signal.SIGCONT)
            await self._await_pause_state(node, process, paused=False)
        self.output.note(f"{node.describe()} resumed by dynctl dev resume (SIGCONT)")
        return f"{name} resumed (SIGCONT to PID {process.pid})"

    # ---- the control socket ----

    async def serve_control(self, listening: socket.socket) -> None:
        """Answer `dynctl dev ...` on the control socket (bound and listening already) until cancelled."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(listening))
        await trio.serve_listeners(self._serve_connection, [listener])

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(REQUEST_READ_TIMEOUT_S):
                    request = decode_line(await _read_line(stream))
                reply = await self._dispatch(request)
            except ControlError as exc:
                reply = error_reply(exc.code, str(exc), exc.details)
            except (ValueError, trio.TooSlowError) as exc:
                reply = error_reply("bad_request", f"not a control request: {exc or 'too slow'}")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            except Exception as exc:  # a bug here must not take the whole cluster down with dev up
                self.output.error(f"control request failed: {exc!r}")
                reply = error_reply("internal", f"dev up failed the request: {exc!r}")
            try:
                await stream.send_all(encode(reply))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the asker went away (Ctrl-C); what it asked for is done all the same

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op not in OPS:
            raise ControlError("bad_request", f"unknown op {op!r}; one of {', '.join(OPS)}")
        if op == "status":
            nodes = [node.view().document() for node in self.nodes]
            return {"ok": True, "message": "", "ready": self.ready, "supervisor_pid": os.getpid(), "nodes": nodes}
        name = request.get("node")
        if not isinstance(name, str):
            raise ControlError("bad_request", f"{op} needs a node name")
        action: Callable[[str], Awaitable[str]] = getattr(self, op)
        message = await action(name)
        return {"ok": True, "message": message, "nodes": [self.node(name).view().document()]}


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ValueError("the connection closed before a whole line")
        data += chunk
        if len(data) > LINE_BYTES_MAX:
            raise ValueError(f"a line over {LINE_BYTES_MAX} bytes")
    return data
