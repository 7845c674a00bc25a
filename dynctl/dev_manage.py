"""`dynctl dev status|start|stop|kill|pause|resume`: the nodes of a `dev up`, from another terminal.

Each command reads DIR/cluster.json (which nodes there are) and asks the `dev up` running on DIR
over its control socket (dev_control.py), which does the work on the processes it started. `start`
needs that `dev up`: the node it starts again is its child, watched and stopped on Ctrl-C as the
others are. Without a `dev up` (it was killed, and its nodes outlived it), `status` reads the
nodes' PID files, and `stop`, `kill`, `pause` and `resume` signal the process a PID file names,
but only once /proc confirms it is still that node (dev_files.py), never a stranger that inherited
the PID.

`status` also asks each running node for its cluster status, to show whether the node answers
and how the other members see it: the failure detector's verdict (alive, suspect, dead) and the
hints they hold for it, which drain once it is back.
"""

from __future__ import annotations

import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import trio
import typer
from rich.table import Table
from rich.text import Text

from dynctl.dev_control import (
    PAUSED,
    RUNNING,
    STARTING,
    STOPPED,
    ControlError,
    NodeProcessView,
    NoSupervisor,
    ask,
)
from dynctl.dev_files import (
    CONTROL_SOCKET_NAME,
    ClusterState,
    DevClusterError,
    DevNodeSpec,
    is_paused,
    open_recorded_process,
    read_state,
    recorded_process,
    remove_pid_file,
)
from dynctl.dev_nodes import READY_DEADLINE_S, SIGNAL_TAKEN_DEADLINE_S, STOP_DEADLINE_S
from dynctl.node import AGENT, Session
from dynctl.output import ExitCode, Output
from dynd.protocol.errors import DynError
from dynd.protocol.messages import ClusterStatusOk

DEFAULT_DIRECTORY = Path(".dev")
# A start waits for the node to answer, and stops it again if it does not; a stop may need SIGKILL.
CONTROL_DEADLINE_S = READY_DEADLINE_S + STOP_DEADLINE_S + 10.0
STATUS_CONTROL_DEADLINE_S = 5.0
STATUS_PROBE_TIMEOUT_S = 2.0
PAUSE_POLL_INTERVAL_S = 0.02
# Refusals that are the caller's to fix (exit 2); the others mean a node did not do as told (exit 3).
FAILURE_CODES = ("start_failed", "timeout", "internal", "bad_reply", "unreachable")

DEV_CONTROL_EXIT_CODES_HELP = """\b
Exit status:
  0  done
  2  usage error: no dev cluster in DIR, no such node, the node is already so,
     or (start) no dev up running on DIR
  3  the node did not come up (start; its log's tail goes to stderr), or did not take the signal
"""

DirOption = Annotated[
    Path,
    typer.Option("--dir", metavar="DIR", file_okay=False, help="The dev cluster's directory, as given to dev up."),
]
NodeArgument = Annotated[str, typer.Argument(metavar="NODE", help="The node's name: dev1, dev2, ...", show_default=False)]


def dir_option(directory: Path) -> str:
    """The `--dir DIR` to repeat in a suggested command; nothing for the default."""
    return "" if directory == DEFAULT_DIRECTORY else f" --dir {shlex.quote(str(directory))}"


def _load(directory: Path, output: Output) -> tuple[Path, ClusterState]:
    root = directory.expanduser().resolve()
    try:
        return root, read_state(root)
    except DevClusterError as exc:
        output.abort(str(exc), ExitCode.USAGE)


# ---- start, stop, kill, pause, resume ----


def _act(ctx: typer.Context, op: str, name: str, directory: Path) -> None:
    session: Session = ctx.obj
    output = session.output
    root, state = _load(directory, output)
    try:
        spec = state.node(name)
    except DevClusterError as exc:
        output.abort(str(exc), ExitCode.USAGE)
    try:
        reply = ask(root / CONTROL_SOCKET_NAME, {"op": op, "node": name}, CONTROL_DEADLINE_S)
    except NoSupervisor:
        try:
            pid = _act_without_supervisor(op, spec, root, directory)
        except DevClusterError as exc:
            output.abort(str(exc), ExitCode.USAGE)
        message = f"{name} {OPS_DONE[op]} (PID {pid}; no dev up runs on {root})"
        view = _view_from_pid_file(spec)
    except ControlError as exc:
        code = ExitCode.UNREACHABLE if exc.code in FAILURE_CODES else ExitCode.USAGE
        output.abort(str(exc), code, hint=exc.details)
    else:
        message = str(reply["message"])
        view = NodeProcessView.from_document(reply["nodes"][0])
    if output.json_mode:
        output.write_json({"action": op, "message": message, "node": view.document()})
    else:
        output.write_line(message)


OPS_DONE = {"stop": "stopped", "kill": "killed", "pause": "paused", "resume": "resumed"}


def _act_without_supervisor(op: str, spec: DevNodeSpec, root: Path, directory: Path) -> int:
    """Signal the node's process as its PID file names it and /proc confirms it; its PID."""
    if op == "start":
        raise DevClusterError(
            f"no dev up is running on {root}; `dev start` restarts a node under it: "
            f"run `dynctl dev up --nodes K{dir_option(directory)}` (it restarts every node on its data)"
        )
    process = open_recorded_process(spec)
    if process is None:
        raise DevClusterError(f"{spec.name} is not running (and no dev up is running on {root})")
    with process:
        pid = process.identity.pid
        if op in ("stop", "kill"):
            if op == "stop":
                process.send(signal.SIGTERM)
                process.send(signal.SIGCONT)  # a paused node must run to act on the SIGTERM
            if op == "kill" or not process.wait_for_exit(STOP_DEADLINE_S):
                process.send(signal.SIGKILL)
            if not process.wait_for_exit(SIGNAL_TAKEN_DEADLINE_S):
                raise DevClusterError(f"{spec.name} (PID {pid}) is still running after SIGKILL")
            remove_pid_file(spec, process.identity)
        else:
            paused = is_paused(pid)
            if op == "pause" and paused:
                raise DevClusterError(f"{spec.name} is already paused")
            if op == "resume" and not paused:
                raise DevClusterError(f"{spec.name} is not paused")
            process.send(signal.SIGSTOP if op == "pause" else signal.SIGCONT)
            _await_paused(pid, op == "pause")
    return pid


def _await_paused(pid: int, paused: bool) -> None:
    """Signals are delivered asynchronously: poll /proc, under a deadline, for the state asked for."""
    deadline = time.monotonic() + SIGNAL_TAKEN_DEADLINE_S
    while is_paused(pid) != paused:
        if time.monotonic() >= deadline:
            raise DevClusterError(f"PID {pid} did not change state within {SIGNAL_TAKEN_DEADLINE_S:g} s")
        time.sleep(PAUSE_POLL_INTERVAL_S)


def _view_from_pid_file(spec: DevNodeSpec) -> NodeProcessView:
    identity = recorded_process(spec)
    pid = identity.pid if identity is not None else None
    state = STOPPED if pid is None else PAUSED if is_paused(pid) else RUNNING
    return NodeProcessView(
        name=spec.name,
        address=spec.address,
        pid=pid,
        state=state,
        last_exit=None,
        data_dir=str(spec.directory),
        log=str(spec.log_path),
    )


def start(ctx: typer.Context, node: NodeArgument, directory: DirOption = DEFAULT_DIRECTORY) -> None:
    """Start NODE again, on its data and its address, under the dev up running on DIR.

    It rejoins the cluster on its own (its membership is in its data), and the hints the others
    held for it while it was down are handed to it. Returns once it answers ping.
    """
    _act(ctx, "start", node, directory)


def stop(ctx: typer.Context, node: NodeArgument, directory: DirOption = DEFAULT_DIRECTORY) -> None:
    """Stop NODE: SIGTERM, then SIGKILL if it still runs 10 s later. It stays down until `dev start`."""
    _act(ctx, "stop", node, directory)


def kill(ctx: typer.Context, node: NodeArgument, directory: DirOption = DEFAULT_DIRECTORY) -> None:
    """Kill NODE at once with SIGKILL, as a crash would. It stays down until `dev start`."""
    _act(ctx, "kill", node, directory)


def pause(ctx: typer.Context, node: NodeArgument, directory: DirOption = DEFAULT_DIRECTORY) -> None:
    """Pause NODE with SIGSTOP: it holds its connections but answers nothing, as a node in a
    long GC pause or a hung disk would. `dev resume` lets it go on."""
    _act(ctx, "pause", node, directory)


def resume(ctx: typer.Context, node: NodeArgument, directory: DirOption = DEFAULT_DIRECTORY) -> None:
    """Resume a paused NODE with SIGCONT."""
    _act(ctx, "resume", node, directory)


# ---- status ----


@dataclass(frozen=True, slots=True)
class NodeStatus:
    process: NodeProcessView
    answers: bool | None  # it answered cluster status; None when it was not asked (stopped, paused)
    seen_as: dict[str, str]  # the other members' failure-detector verdicts on it, by member
    hints_pending: int  # hints the other members hold for it

    def document(self) -> dict[str, Any]:
        return {**self.process.document(), "answers": self.answers, "liveness": self.seen_as, "hints_pending": self.hints_pending}


def liveness_summary(seen_as: dict[str, str]) -> str:
    """One verdict if every member agrees, else each verdict with who holds it; "-" if none said."""
    if not seen_as:
        return "-"
    by_verdict: dict[str, list[str]] = {}
    for member, verdict in sorted(seen_as.items()):
        by_verdict.setdefault(verdict, []).append(member)
    if len(by_verdict) == 1:
        return next(iter(by_verdict))
    return ", ".join(f"{verdict} ({', '.join(members)})" for verdict, members in sorted(by_verdict.items()))


def node_statuses(views: list[NodeProcessView], answers: dict[str, ClusterStatusOk | None]) -> list[NodeStatus]:
    """Join each process with what the members that answered (`answers`, None: asked, no answer) say of it."""
    statuses = []
    for view in views:
        seen_as: dict[str, str] = {}
        hints = 0
        for observer, status in sorted(answers.items()):
            if status is None or observer == view.name:
                continue
            for member in status.members:
                if member.name == view.name:
                    seen_as[observer] = member.liveness
                    hints += member.hints_pending
        answered = None if view.name not in answers else answers[view.name] is not None
        statuses.append(NodeStatus(view, answered, seen_as, hints))
    return statuses


async def _ask_nodes(session: Session, views: list[NodeProcessView]) -> dict[str, ClusterStatusOk | None]:
    """Cluster status from every node whose process runs and is not paused, all at once."""
    timeout_s = min(session.timeout_s, STATUS_PROBE_TIMEOUT_S)
    answers: dict[str, ClusterStatusOk | None] = {}

    async def one(view: NodeProcessView) -> None:
        try:
            with trio.fail_after(timeout_s * 2):  # connect, then the request: each under timeout_s
                async with session.open_client(view.address, timeout_s=timeout_s, agent=f"{AGENT} dev") as client:
                    answers[view.name] = await client.cluster_status()
        except (DynError, trio.TooSlowError):
            answers[view.name] = None

    async with trio.open_nursery() as nursery:
        for view in views:
            if view.state in (RUNNING, STARTING):
                nursery.start_soon(one, view)
    return answers


def _short_exit(last_exit: str) -> str:
    """"killed by SIGKILL" as "SIGKILL", "exited with code 1" as "exit 1": the table is narrow."""
    for prefix, short in (("killed by ", ""), ("exited with code ", "exit ")):
        if last_exit.startswith(prefix):
            return short + last_exit[len(prefix) :]
    return last_exit


def _process_text(view: NodeProcessView) -> Text:
    style = {RUNNING: "green", PAUSED: "yellow", STOPPED: "red"}.get(view.state, "")
    label = f"{view.state} ({_short_exit(view.last_exit)})" if view.state == STOPPED and view.last_exit else view.state
    return Text(label, style=style)


def _answers_text(answers: bool | None) -> Text:
    if answers is None:
        return Text("-")
    return Text("yes") if answers else Text("no", style="red")


def status_table(statuses: list[NodeStatus], title: str) -> Table:
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, caption_justify="left")
    table.caption = "hints: held for it by the others"
    table.add_column("node", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("process", no_wrap=True)
    table.add_column("answers", no_wrap=True)
    table.add_column("others see it")
    table.add_column("hints", justify="right", no_wrap=True)
    for status in statuses:
        view = status.process
        table.add_row(
            Text(view.name),
            Text(view.address),
            str(view.pid) if view.pid is not None else "-",
            _process_text(view),
            _answers_text(status.answers),
            Text(liveness_summary(status.seen_as)),
            str(status.hints_pending),
        )
    return table


def status(ctx: typer.Context, directory: DirOption = DEFAULT_DIRECTORY) -> None:
    """Show each node of the dev cluster in DIR: its address and PID, whether its process runs
    (running, paused, stopped, and how it last ended), whether it answers, how the other members'
    failure detectors see it (alive, suspect, dead), and the hints they hold for it.

    Without a running dev up, the nodes its PID files name (and /proc confirms) are shown.
    """
    session: Session = ctx.obj
    output = session.output
    root, state = _load(directory, output)
    supervisor: dict[str, Any] | None
    try:
        reply = ask(root / CONTROL_SOCKET_NAME, {"op": "status"}, STATUS_CONTROL_DEADLINE_S)
    except NoSupervisor:
        supervisor = None
        views = [_view_from_pid_file(spec) for spec in state.nodes]
    except ControlError as exc:
        output.abort(f"the dev up on {root} did not answer: {exc}", ExitCode.UNREACHABLE)
    else:
        supervisor = {"pid": reply["supervisor_pid"], "ready": reply["ready"]}
        views = [NodeProcessView.from_document(document) for document in reply["nodes"]]
    statuses = node_statuses(views, trio.run(_ask_nodes, session, views))
    if output.json_mode:
        document = {"directory": str(root), "supervisor": supervisor, "nodes": [status.document() for status in statuses]}
        output.write_json(document)
    else:
        if supervisor is None:
            title = "dev cluster: no dev up running"
        else:
            title = f"dev cluster: dev up PID {supervisor['pid']}{'' if supervisor['ready'] else ', starting'}"
        output.write_table(status_table(statuses, title))
    if supervisor is None:
        running = [view.name for view in views if view.pid is not None]
        still = f"; {', '.join(running)} still run{'s' if len(running) == 1 else ''} (stop them with dynctl dev stop NODE{dir_option(directory)})" if running else ""
        output.warn(f"no dev up is running on {root}{still}")


def register(app: typer.Typer) -> None:
    app.command("status", epilog=DEV_CONTROL_EXIT_CODES_HELP)(status)
    for command in (start, stop, kill, pause, resume):
        app.command(command.__name__, epilog=DEV_CONTROL_EXIT_CODES_HELP)(command)
