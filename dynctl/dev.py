"""`dynctl dev up`: a local K-node cluster on 127.0.0.1, in the foreground, for trying dynd out.

Node i is `dev{i}`, listens on BASE_PORT + i - 1 and keeps its data and its log (`dynd.log`, its
stdout and stderr, appended across runs) in DIR/dev{i}. Every node gets `--secret-file DIR/secret`,
a cluster secret made (mode 0600) on the first run and kept for later ones, so the dev cluster's
peers authenticate each other as a production cluster's do. The first node creates the cluster; the
others start with `--join` naming it. Each node is ready once it answers ping (polled under a
deadline); then the first node's `cluster status` is shown once every node is a member (or a
deadline passes), and dev up waits for Ctrl-C or SIGTERM. It then stops every node it
started, by PID: SIGTERM, a deadline, SIGKILL. A node that dies early stops the whole cluster:
dev up reports which one, with the tail of its log, and exits 3.

The nodes run in their own sessions, so a Ctrl-C at the terminal reaches dev up alone, which stops
them under its deadline rather than each racing to exit on its own.

Starting again on the same DIR restarts the same nodes on their data: the first node is given the
cluster-creation flags and the others `--join` again, and a node that already belongs to a cluster
ignores both.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import trio
import typer
from rich.table import Table
from rich.text import Text

from dynctl import cluster
from dynctl.node import AGENT, Session
from dynctl.output import ExitCode, Output
from dynd.protocol.address import format_address
from dynd.protocol.auth import new_secret_text
from dynd.protocol.errors import BadRequest, DynError, UnknownOp
from dynd.protocol.messages import ClusterStatusOk

LOOPBACK = "127.0.0.1"
DEFAULT_BASE_PORT = 7400
DEFAULT_DIRECTORY = Path(".dev")
NODES_MAX = 32
PORT_MAX = 65535
LOG_FILE_NAME = "dynd.log"
SECRET_FILE_NAME = "secret"

# What dynd uses when it creates a cluster without --replicas, --r and --w (its [cluster] config
# defaults). dev up only needs them to pick flags that keep R, W <= N.
NODE_DEFAULT_REPLICAS = 3
NODE_DEFAULT_QUORUM = 2

READY_DEADLINE_S = 30.0
MEMBERSHIP_DEADLINE_S = 10.0
STOP_DEADLINE_S = 10.0
PROBE_TIMEOUT_S = 1.0
PROBE_INTERVAL_S = 0.05
MEMBERSHIP_POLL_INTERVAL_S = 0.2
LOG_TAIL_LINES = 20

DEV_EXIT_CODES_HELP = """\b
Exit status:
  0  the cluster ran and was stopped with Ctrl-C or SIGTERM
  2  usage error (bad option, or a port already in use)
  3  a node failed to start or died: its log's tail goes to stderr
"""

app = typer.Typer(
    name="dev",
    help="Run a local development cluster on 127.0.0.1.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    rich_markup_mode=None,
)


# ---- the plan: which processes, with which flags (pure) ----


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


@dataclass(frozen=True, slots=True)
class CreationSettings:
    """N, R and W to pass to the first node; None leaves the node's default."""

    replicas: int | None
    r: int | None
    w: int | None

    def flags(self) -> list[str]:
        pairs = (("--replicas", self.replicas), ("--r", self.r), ("--w", self.w))
        return [part for flag, value in pairs if value is not None for part in (flag, str(value))]


def creation_settings(node_count: int, replicas: int | None, r: int | None, w: int | None) -> CreationSettings:
    """The cluster-creation flags for the first node, from what the user gave.

    Without --n, a cluster smaller than the node's default N gets N = K, so the ring it reports
    promises no more replicas than there are nodes. R and W follow N down when N is below their
    default, so they stay within N.
    """
    if replicas is None and node_count < NODE_DEFAULT_REPLICAS:
        replicas = node_count
    quorum_cap = replicas if replicas is not None and replicas < NODE_DEFAULT_QUORUM else None
    return CreationSettings(
        replicas=replicas,
        r=r if r is not None else quorum_cap,
        w=w if w is not None else quorum_cap,
    )


def plan_cluster(
    node_count: int,
    directory: Path,
    base_port: int,
    settings: CreationSettings,
    python: str = sys.executable,
    secret_file: Path | None = None,
) -> list[DevNodeSpec]:
    """Node i (1-based) is dev{i} on base_port + i - 1 with its data in directory/dev{i}; every
    node proves `secret_file` to its peers when one is given."""
    seed = format_address(LOOPBACK, base_port)
    specs = []
    for index in range(1, node_count + 1):
        name = f"dev{index}"
        port = base_port + index - 1
        node_directory = directory / name
        argv = [python, "-m", "dynd", "--name", name, "--listen", format_address(LOOPBACK, port)]
        argv += ["--data-dir", str(node_directory)]
        if secret_file is not None:
            argv += ["--secret-file", str(secret_file)]
        argv += settings.flags() if index == 1 else ["--join", seed]
        specs.append(DevNodeSpec(name, port, node_directory, tuple(argv)))
    return specs


# ---- running nodes ----


@dataclass(slots=True)
class RunningNode:
    spec: DevNodeSpec
    process: trio.Process
    # Where this run's output starts in the log, so a failure shows this run's lines only.
    log_offset: int

    def describe(self) -> str:
        return f"{self.spec.name} ({self.spec.address}, PID {self.process.pid})"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with self.spec.log_path.open("rb") as log:
                log.seek(self.log_offset)
                text = log.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(cannot read {self.spec.log_path}: {exc.strerror or exc})"
        tail = text.splitlines()[-lines:]
        if not tail:
            return f"({self.spec.log_path} has nothing from this run)"
        return f"last lines of {self.spec.log_path}:\n" + "\n".join(f"  {line}" for line in tail)


class NodeFailed(Exception):
    """A node did not start, did not answer in time, or exited; `details` is what its log says."""

    def __init__(self, name: str, message: str, details: str) -> None:
        super().__init__(message)
        self.name = name
        self.details = details

    @classmethod
    def of(cls, node: RunningNode, reason: str) -> NodeFailed:
        # The tail is read now, while it still shows what happened around the failure.
        return cls(node.spec.name, f"{node.describe()} {reason}", node.log_tail())


@dataclass(slots=True)
class Supervision:
    """What happened, filled in by whichever task ends the run first."""

    running: list[RunningNode] = field(default_factory=list)
    failed: NodeFailed | None = None
    stop_signal: str | None = None
    ready: bool = False


async def _start_node(spec: DevNodeSpec) -> RunningNode:
    try:
        with spec.log_path.open("ab") as log:
            header = f"=== dynctl dev up, {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(spec.argv)}\n"
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
    return RunningNode(spec, process, offset)


async def _ping(session: Session, address: str, timeout_s: float) -> str:
    async with session.open_client(address, timeout_s=timeout_s, agent=f"{AGENT} dev") as client:
        return await client.ping()


async def _wait_until_ready(session: Session, node: RunningNode, deadline_s: float = READY_DEADLINE_S) -> None:
    """Poll ping until the node answers as itself; raise NodeFailed if it exits or the deadline passes."""
    deadline = trio.current_time() + deadline_s
    last_problem = "no answer"
    while True:
        code = node.process.poll()
        if code is not None:
            raise NodeFailed.of(node, f"exited with code {code} before it answered ping")
        probe_timeout_s = max(0.05, min(PROBE_TIMEOUT_S, deadline - trio.current_time()))
        try:
            answered_as = await _ping(session, node.spec.address, probe_timeout_s)
        except DynError as exc:
            last_problem = str(exc)
        else:
            if answered_as != node.spec.name:
                raise NodeFailed.of(node, f"is not what answers on its port: {answered_as!r} did")
            return
        if trio.current_time() >= deadline:
            raise NodeFailed.of(node, f"did not answer ping within {deadline_s:g} s (last: {last_problem})")
        await trio.sleep(PROBE_INTERVAL_S)  # the pause between polls; readiness is the ping itself


async def _wait_for_membership(
    session: Session, address: str, names: list[str], deadline_s: float = MEMBERSHIP_DEADLINE_S
) -> tuple[ClusterStatusOk | None, str | None]:
    """Ask `address` for cluster status until every one of `names` is a member or the deadline passes.

    Returns the last status (None if there was none) and, unless every node showed up, why not.
    """
    deadline = trio.current_time() + deadline_s
    status: ClusterStatusOk | None = None
    while True:
        try:
            async with session.open_client(address, agent=f"{AGENT} dev") as client:
                status = await client.cluster_status()
        except (UnknownOp, BadRequest) as exc:
            return None, f"the node does not serve cluster status ({exc})"  # asking again cannot help
        except DynError as exc:
            problem = str(exc)
        else:
            members = {member.name for member in status.members if member.status == "joined"}
            missing = [name for name in names if name not in members]
            if not missing:
                return status, None
            problem = f"not members yet: {', '.join(missing)}"
        if trio.current_time() >= deadline:
            return status, f"{problem} (after {deadline_s:g} s)"
        await trio.sleep(MEMBERSHIP_POLL_INTERVAL_S)  # the pause between polls


async def _watch(node: RunningNode, scope: trio.CancelScope, supervision: Supervision) -> None:
    code = await node.process.wait()
    if supervision.failed is None:
        supervision.failed = NodeFailed.of(node, f"exited with code {code} while the cluster was running")
    scope.cancel()


async def _stop_on_signal(
    signals: AsyncIterator[int], scope: trio.CancelScope, supervision: Supervision, output: Output
) -> None:
    async for signum in signals:
        supervision.stop_signal = signal.Signals(signum).name
        output.note(f"{supervision.stop_signal}: stopping the dev cluster")
        scope.cancel()
        return


async def _stop_node(node: RunningNode, output: Output) -> None:
    with trio.move_on_after(STOP_DEADLINE_S):
        code = await node.process.wait()
        if code == 0:
            output.note(f"{node.spec.name} stopped")
        else:
            output.warn(f"{node.describe()} exited with code {code} when stopped\n{node.log_tail()}")
        return
    output.warn(f"{node.describe()} still running {STOP_DEADLINE_S:g} s after SIGTERM: sending SIGKILL")
    node.process.kill()
    await node.process.wait()


async def stop_nodes(running: list[RunningNode], output: Output) -> None:
    """SIGTERM every node still running (by its PID), wait, SIGKILL those that outlive the deadline."""
    alive = [node for node in running if node.process.poll() is None]
    if not alive:
        return
    output.note(f"stopping {', '.join(node.spec.name for node in alive)}")
    for node in alive:
        node.process.terminate()  # Popen.send_signal checks first that it has not reaped this PID
    async with trio.open_nursery() as nursery:
        for node in alive:
            nursery.start_soon(_stop_node, node, output)


async def _start_all(specs: list[DevNodeSpec], supervision: Supervision, session: Session) -> None:
    output = session.output
    # The first node must be up before the others ask it to let them join.
    first, rest = specs[0], specs[1:]
    node = await _start_node(first)
    supervision.running.append(node)
    await _wait_until_ready(session, node)
    output.note(f"{first.name} is up on {first.address}")
    for spec in rest:
        supervision.running.append(await _start_node(spec))
    for node in supervision.running[1:]:
        await _wait_until_ready(session, node)
        output.note(f"{node.spec.name} is up on {node.spec.address}")


async def _run(
    specs: list[DevNodeSpec], directory: Path, session: Session, scope: trio.CancelScope, supervision: Supervision
) -> bool:
    """Start the nodes and announce the cluster; False (after reporting) if a node failed."""
    output = session.output
    try:
        await _start_all(specs, supervision, session)
    except NodeFailed as failure:
        supervision.failed = failure
        scope.cancel()
        return False
    # Every node must see every member (gossip converges within a few rounds), not just the first.
    names = [spec.name for spec in specs]
    for spec in reversed(specs):
        status, problem = await _wait_for_membership(session, spec.address, names)
        if problem is not None:
            break
    supervision.ready = True
    _announce(output, supervision.running, directory, status, problem)
    return True


async def supervise(specs: list[DevNodeSpec], directory: Path, session: Session) -> Supervision:
    supervision = Supervision()
    # Open before the first node starts: a signal at any moment from here on stops what has started.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope, supervision, session.output)
                if await _run(specs, directory, session, nursery.cancel_scope, supervision):
                    for node in supervision.running:
                        nursery.start_soon(_watch, node, nursery.cancel_scope, supervision)
        finally:
            if supervision.failed is not None:
                session.output.error(str(supervision.failed))
                session.output.note(supervision.failed.details)
            with trio.CancelScope(shield=True):
                await stop_nodes(supervision.running, session.output)
    return supervision


# ---- what the user sees ----


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _node_document(node: RunningNode) -> dict[str, Any]:
    return {
        "name": node.spec.name,
        "address": node.spec.address,
        "pid": node.process.pid,
        "data_dir": str(node.spec.directory),
        "log": str(node.spec.log_path),
    }


def _nodes_table(running: list[RunningNode], directory: Path) -> Table:
    # Paths relative to the directory in the title: full paths would not fit a row.
    title = f"dev cluster: {_count(len(running), 'node')} under {directory}"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column("node", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("pid", justify="right")
    table.add_column("data", no_wrap=True)
    table.add_column("log", no_wrap=True)
    for node in running:
        table.add_row(
            Text(node.spec.name),
            Text(node.spec.address),
            str(node.process.pid),
            Text(f"{node.spec.directory.relative_to(directory)}/"),
            Text(str(node.spec.log_path.relative_to(directory))),
        )
    return table


def example_commands(addresses: list[str]) -> list[str]:
    first = addresses[0]
    # Reading through another node than the one written to shows that any node serves any key.
    other = addresses[1] if len(addresses) > 1 else first
    return [
        f"dynctl --node {first} put greeting hello",
        f"dynctl --node {other} get greeting",
        f"dynctl --node {first} cluster status",
        f"dynctl --node {first} ring key greeting",
        f"dynctl --node {first} bench --seconds 5",
    ]


def _announce(
    output: Output,
    running: list[RunningNode],
    directory: Path,
    status: ClusterStatusOk | None,
    problem: str | None,
) -> None:
    if output.json_mode:
        output.write_json(
            {
                "directory": str(directory),
                "secret_file": str(directory / SECRET_FILE_NAME),
                "nodes": [_node_document(node) for node in running],
                "cluster": cluster.status_document(status) if status is not None else None,
                "cluster_problem": problem,
            }
        )
    else:
        output.write_table(_nodes_table(running, directory))
        if status is not None:
            output.write_table(cluster.status_table(status))
    if problem is not None:
        output.warn(f"cluster status: {problem}")
    output.note(f"ready: {_count(len(running), 'node')}; data and logs under {directory}")
    output.note(f"Follow the logs: tail -f {shlex.quote(str(directory))}/dev*/{LOG_FILE_NAME}")
    examples = "\n".join(f"  {line}" for line in example_commands([node.spec.address for node in running]))
    output.note(f"Try:\n{examples}")
    output.note("Ctrl-C (or SIGTERM) stops every node.")


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the node's own listener does, so a port in TIME_WAIT from a previous run counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def _check_plan(node_count: int, base_port: int, settings: CreationSettings) -> None:
    last_port = base_port + node_count - 1
    if last_port > PORT_MAX:
        raise typer.BadParameter(f"{node_count} nodes from port {base_port} would need port {last_port}", param_hint="'--base-port'")
    replicas = settings.replicas if settings.replicas is not None else NODE_DEFAULT_REPLICAS
    for option, quorum in (("--r", settings.r), ("--w", settings.w)):
        if quorum is not None and quorum > replicas:
            raise typer.BadParameter(f"must be at most N ({replicas})", param_hint=f"'{option}'")
    busy = [port for port in range(base_port, last_port + 1) if _port_in_use(port)]
    if busy:
        raise typer.BadParameter(
            f"port(s) {', '.join(map(str, busy))} on {LOOPBACK} already in use (a dev cluster still running?)",
            param_hint="'--base-port'",
        )


def ensure_secret_file(directory: Path) -> tuple[Path, bool]:
    """DIR/secret, made private (0600) with a new secret if there is none; (path, whether made).
    A file already there is kept: the nodes restarted on this directory are one cluster, with
    one secret (and dynd itself refuses a file it finds malformed or open to other users)."""
    path = directory / SECRET_FILE_NAME
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path, False
    except OSError as exc:
        raise typer.BadParameter(f"cannot create {path}: {exc.strerror or exc}", param_hint="'--dir'") from None
    with os.fdopen(descriptor, "w") as handle:
        handle.write("# the dev cluster's secret (dynd --secret-file); made by dynctl dev up\n")
        handle.write(new_secret_text())
    return path, True


def _make_directories(specs: list[DevNodeSpec]) -> None:
    for spec in specs:
        try:
            spec.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise typer.BadParameter(f"cannot create {spec.directory}: {exc.strerror or exc}", param_hint="'--dir'") from None


def _sole_exit(group: BaseExceptionGroup) -> typer.Exit | None:  # type: ignore[type-arg]
    """The typer.Exit (a broken stdout, say) that trio wrapped in exception groups, if that is all there is."""
    exits, rest = group.split(typer.Exit)
    if rest is not None or exits is None:
        return None
    leaf: BaseException = exits
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, typer.Exit) else None


@app.command("up", epilog=DEV_EXIT_CODES_HELP)
def up(
    ctx: typer.Context,
    nodes: Annotated[
        int, typer.Option("--nodes", metavar="K", min=1, max=NODES_MAX, help="How many nodes: dev1 .. devK.", show_default=False)
    ],
    directory: Annotated[
        Path,
        typer.Option("--dir", metavar="DIR", file_okay=False, help="Where node i keeps its data and log: DIR/dev{i}."),
    ] = DEFAULT_DIRECTORY,
    base_port: Annotated[
        int,
        typer.Option("--base-port", metavar="PORT", min=1, max=PORT_MAX, help="Node i listens on 127.0.0.1:PORT+i-1."),
    ] = DEFAULT_BASE_PORT,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--n",
            metavar="N",
            min=1,
            help=f"Replicas per key, for a new cluster (default: {NODE_DEFAULT_REPLICAS}, or K if K is smaller).",
        ),
    ] = None,
    r: Annotated[
        int | None, typer.Option("--r", metavar="R", min=1, help="Default read quorum, for a new cluster.")
    ] = None,
    w: Annotated[
        int | None, typer.Option("--w", metavar="W", min=1, help="Default write quorum, for a new cluster.")
    ] = None,
) -> None:
    """Start a K-node cluster on 127.0.0.1 and keep it running until Ctrl-C or SIGTERM.

    Node i is named dev{i}, listens on PORT+i-1, and keeps its data and log (dynd.log) in DIR/dev{i}.
    The first node creates the cluster (with --n, --r and --w); the others join it. Every node
    gets --secret-file DIR/secret, a cluster secret made (mode 0600) on the first run. Running it
    again on the same DIR restarts the same nodes on their data and secret. When every node answers, the
    cluster's status and some commands to try are printed; with --json, one JSON document
    describing the nodes. On Ctrl-C every node is stopped (SIGTERM, then SIGKILL after
    10 s); if a node dies, the others are stopped too, and its log's tail is printed.
    """
    session: Session = ctx.obj
    output = session.output
    settings = creation_settings(nodes, replicas, r, w)
    _check_plan(nodes, base_port, settings)
    if settings.replicas is not None and settings.replicas > nodes:
        output.warn(f"N={settings.replicas} with {nodes} nodes: keys have fewer than N replicas until more nodes join")
    root = directory.expanduser().resolve()
    secret_path = root / SECRET_FILE_NAME
    specs = plan_cluster(nodes, root, base_port, settings, secret_file=secret_path)
    _make_directories(specs)
    _, made = ensure_secret_file(root)
    output.note(f"cluster secret: {secret_path} ({'new' if made else 'kept from an earlier run'}; every node has --secret-file {secret_path})")

    try:
        supervision = trio.run(supervise, specs, root, session)
    except BaseExceptionGroup as group:
        sole_exit = _sole_exit(group)
        if sole_exit is None:
            raise
        raise sole_exit from None
    if supervision.failed is not None:
        output.abort(f"the dev cluster stopped because {supervision.failed.name} failed", ExitCode.UNREACHABLE)
    if not supervision.ready:
        output.note("stopped before the cluster was ready")
    output.note("dev cluster stopped; start it again with the same --dir to keep its data")
