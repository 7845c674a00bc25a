"""`dynctl dev`: a local K-node cluster on 127.0.0.1 to try dynd out, and to break.

`dev up` runs the cluster in the foreground. Node i is `dev{i}`, listens on BASE_PORT + i - 1 and
keeps its data and its log (`dynd.log`, its stdout and stderr, appended across runs) in
DIR/dev{i}. Every node gets `--secret-file DIR/secret`, a cluster secret made (mode 0600) on the
first run and kept for later ones, so the dev cluster's peers authenticate each other as a
production cluster's do. The first node creates the cluster; the others start with `--join`
naming it. Each node is ready once it answers ping (polled under a deadline); then the first
node's `cluster status` is shown once every node is a member (or a deadline passes), and dev up
waits for Ctrl-C or SIGTERM, on which it stops every node it started (dev_nodes.py). A node that
fails while the cluster starts stops the whole cluster (exit 3); one that dies later is reported,
with the tail of its log, and the others keep serving.

While it runs, `dev status|start|stop|kill|pause|resume` (dev_manage.py) reach it from another
terminal through DIR/control.sock (dev_control.py); DIR/cluster.json and DIR/dev{i}/pid
(dev_files.py) say which nodes there are and which processes they run as.

Starting again on the same DIR restarts the same nodes on their data: the first node is given the
cluster-creation flags and the others `--join` again, and a node that already belongs to a cluster
ignores both.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import trio
import typer
from rich.table import Table
from rich.text import Text

from dynctl import cluster, dev_manage
from dynctl.dev_control import ControlError, NoSupervisor, ask, bind_control_socket
from dynctl.dev_files import (
    CONTROL_SOCKET_NAME,
    LOG_FILE_NAME,
    LOOPBACK,
    SECRET_FILE_NAME,
    ClusterState,
    DevClusterError,
    DevNodeSpec,
    read_state,
    recorded_process,
    write_state,
)
from dynctl.dev_nodes import NodeFailed, SupervisedNode, Supervisor, wait_until_ready
from dynctl.node import AGENT, Session
from dynctl.output import ExitCode, Output
from dynd.protocol.address import format_address
from dynd.protocol.auth import new_secret_text
from dynd.protocol.errors import BadRequest, DynError, UnknownOp
from dynd.protocol.messages import ClusterStatusOk

DEFAULT_BASE_PORT = 7400
# Node i also serves the HTTP door (Riak's KV interface) on base_port + HTTP_PORT_OFFSET + i - 1:
# 8098, Riak's own HTTP port, for dev1 with the default base port.
HTTP_PORT_OFFSET = 698
DEFAULT_DIRECTORY = dev_manage.DEFAULT_DIRECTORY
NODES_MAX = 32
PORT_MAX = 65535

# What dynd uses when it creates a cluster without --replicas, --r and --w (its [cluster] config
# defaults). dev up only needs them to pick flags that keep R, W <= N.
NODE_DEFAULT_REPLICAS = 3
NODE_DEFAULT_QUORUM = 2

MEMBERSHIP_DEADLINE_S = 10.0
MEMBERSHIP_POLL_INTERVAL_S = 0.2
SUPERVISOR_PROBE_DEADLINE_S = 5.0

DEV_EXIT_CODES_HELP = """\b
Exit status:
  0  the cluster ran and was stopped with Ctrl-C or SIGTERM (nodes that died meanwhile do not count)
  2  usage error (bad option, a port already in use, or a dev up or its nodes already running on DIR)
  3  a node failed to start: its log's tail goes to stderr
"""

app = typer.Typer(
    name="dev",
    help="Run a local development cluster on 127.0.0.1, and break it: stop, kill, pause nodes.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    rich_markup_mode=None,
)


# ---- the plan: which processes, with which flags (pure) ----


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
    """Node i (1-based) is dev{i} on base_port + i - 1 (its HTTP door on base_port +
    HTTP_PORT_OFFSET + i - 1, when that is a port) with its data in directory/dev{i}; every node
    proves `secret_file` to its peers when one is given."""
    seed = format_address(LOOPBACK, base_port)
    specs = []
    for index in range(1, node_count + 1):
        name = f"dev{index}"
        port = base_port + index - 1
        node_directory = directory / name
        argv = [python, "-m", "dynd", "--name", name, "--listen", format_address(LOOPBACK, port)]
        argv += ["--data-dir", str(node_directory)]
        if port + HTTP_PORT_OFFSET <= PORT_MAX:
            argv += ["--http-listen", format_address(LOOPBACK, port + HTTP_PORT_OFFSET)]
        if secret_file is not None:
            argv += ["--secret-file", str(secret_file)]
        argv += settings.flags() if index == 1 else ["--join", seed]
        specs.append(DevNodeSpec(name, port, node_directory, tuple(argv)))
    return specs


# ---- running them ----


async def _start_all(supervisor: Supervisor) -> None:
    output = supervisor.output
    # The first node must be up before the others ask it to let them join.
    first, rest = supervisor.nodes[0], supervisor.nodes[1:]
    await supervisor.launch(first, "dev up")
    await wait_until_ready(supervisor.session, first)
    output.note(f"{first.spec.name} is up on {first.spec.address}")
    for node in rest:
        await supervisor.launch(node, "dev up")
    for node in rest:
        await wait_until_ready(supervisor.session, node)
        output.note(f"{node.spec.name} is up on {node.spec.address}")


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


async def _run(supervisor: Supervisor, directory: Path, dir_option: str) -> None:
    """Start the nodes and announce the cluster; on a failure, end the run (after which dev up exits 3)."""
    try:
        await _start_all(supervisor)
    except NodeFailed as failure:
        supervisor.fail(failure)
        return
    # Every node must see every member (gossip converges within a few rounds), not just the first.
    specs = [node.spec for node in supervisor.nodes]
    names = [spec.name for spec in specs]
    for spec in reversed(specs):
        status, problem = await _wait_for_membership(supervisor.session, spec.address, names)
        if problem is not None:
            break
    supervisor.ready = True
    _announce(supervisor.output, supervisor.nodes, directory, status, problem, dir_option)


async def _stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope, output: Output) -> None:
    async for signum in signals:
        output.note(f"{signal.Signals(signum).name}: stopping the dev cluster")
        scope.cancel()
        return


async def supervise(
    specs: list[DevNodeSpec], directory: Path, session: Session, control: socket.socket, dir_option: str
) -> Supervisor:
    """Run the cluster until Ctrl-C or SIGTERM (or a failure while it starts); then stop every node."""
    # Open before the first node starts: a signal at any moment from here on stops what has started.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        supervisor: Supervisor | None = None
        try:
            async with trio.open_nursery() as nursery:
                supervisor = Supervisor(specs, session, nursery, dir_option)
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope, session.output)
                nursery.start_soon(supervisor.serve_control, control)
                await _run(supervisor, directory, dir_option)
        finally:
            if supervisor is not None:
                if supervisor.failed is not None:
                    session.output.error(str(supervisor.failed))
                    session.output.note(supervisor.failed.details)
                with trio.CancelScope(shield=True):
                    await supervisor.stop_all()
    assert supervisor is not None  # made before anything that can fail
    return supervisor


# ---- what the user sees ----


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _node_document(node: SupervisedNode) -> dict[str, Any]:
    return {
        "name": node.spec.name,
        "address": node.spec.address,
        "pid": node.pid,
        "data_dir": str(node.spec.directory),
        "log": str(node.spec.log_path),
    }


def _nodes_table(nodes: list[SupervisedNode], directory: Path) -> Table:
    # Paths relative to the directory in the title: full paths would not fit a row.
    title = f"dev cluster: {_count(len(nodes), 'node')} under {directory}"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column("node", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("pid", justify="right")
    table.add_column("data", no_wrap=True)
    table.add_column("log", no_wrap=True)
    for node in nodes:
        table.add_row(
            Text(node.spec.name),
            Text(node.spec.address),
            str(node.pid or "-"),
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


def failover_commands(names: list[str], dir_option: str) -> list[str]:
    """What to try to see the cluster survive a node's death: the last node dies, and comes back."""
    victim = names[-1]
    lines = [
        (f"dynctl dev kill {victim}{dir_option}", "SIGKILL; the others keep serving"),
        (f"dynctl dev status{dir_option}", "it is stopped; the others see it suspect, then dead"),
        (f"dynctl dev start {victim}{dir_option}", "back on its data; the hints held for it drain"),
    ]
    width = max(len(command) for command, _ in lines)
    return [f"{command.ljust(width)}   # {why}" for command, why in lines]


def _announce(
    output: Output,
    nodes: list[SupervisedNode],
    directory: Path,
    status: ClusterStatusOk | None,
    problem: str | None,
    dir_option: str,
) -> None:
    if output.json_mode:
        output.write_json(
            {
                "directory": str(directory),
                "secret_file": str(directory / SECRET_FILE_NAME),
                "nodes": [_node_document(node) for node in nodes],
                "cluster": cluster.status_document(status) if status is not None else None,
                "cluster_problem": problem,
            }
        )
    else:
        output.write_table(_nodes_table(nodes, directory))
        if status is not None:
            output.write_table(cluster.status_table(status))
    if problem is not None:
        output.warn(f"cluster status: {problem}")
    output.note(f"ready: {_count(len(nodes), 'node')}; data and logs under {directory}")
    output.note(f"Follow the logs: tail -f {shlex.quote(str(directory))}/dev*/{LOG_FILE_NAME}")
    examples = "\n".join(f"  {line}" for line in example_commands([node.spec.address for node in nodes]))
    output.note(f"Try:\n{examples}")
    if len(nodes) > 1:
        breaking = "\n".join(f"  {line}" for line in failover_commands([node.spec.name for node in nodes], dir_option))
        output.note(f"Break it (from another terminal):\n{breaking}")
    output.note("A node that dies is shown here and stays down until `dynctl dev start`; Ctrl-C (or SIGTERM) stops every node.")


# ---- checks before anything starts ----


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


def _check_ports_free(node_count: int, base_port: int) -> None:
    busy = [port for port in range(base_port, base_port + node_count) if _port_in_use(port)]
    if busy:
        raise typer.BadParameter(
            f"port(s) {', '.join(map(str, busy))} on {LOOPBACK} already in use (a dev cluster still running?)",
            param_hint="'--base-port'",
        )


def _check_no_earlier_run(root: Path, dir_option: str) -> None:
    """Refuse a directory that a `dev up` still runs on, or whose nodes outlived their `dev up`
    (killed with SIGKILL, say): two processes on one node's data would fight over it."""
    try:
        reply = ask(root / CONTROL_SOCKET_NAME, {"op": "status"}, SUPERVISOR_PROBE_DEADLINE_S)
    except NoSupervisor:
        pass
    except ControlError as exc:
        raise typer.BadParameter(f"something answers on {root / CONTROL_SOCKET_NAME}, but not as dev up does: {exc}", param_hint="'--dir'") from None
    else:
        raise typer.BadParameter(
            f"a dev up (PID {reply.get('supervisor_pid')}) is already running on {root}: "
            "stop it with Ctrl-C in its terminal, or give another --dir",
            param_hint="'--dir'",
        )
    try:
        earlier = read_state(root)
    except DevClusterError:
        return  # no earlier run, or one whose description is gone: nothing to tell apart
    left = [(spec, identity) for spec in earlier.nodes if (identity := recorded_process(spec)) is not None]
    if left:
        running = ", ".join(f"{spec.name} (PID {identity.pid})" for spec, identity in left)
        stops = "; ".join(f"dynctl dev stop {spec.name}{dir_option}" for spec, _ in left)
        raise typer.BadParameter(
            f"nodes of an earlier dev up on {root} still run without it: {running}. Stop them with: {stops}",
            param_hint="'--dir'",
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


def _prepare_directory(root: Path, specs: list[DevNodeSpec]) -> socket.socket:
    """Make the node directories, record the cluster in DIR/cluster.json, and listen on DIR/control.sock."""
    try:
        for spec in specs:
            spec.directory.mkdir(parents=True, exist_ok=True)
        write_state(ClusterState(root, os.getpid(), tuple(specs)))
        return bind_control_socket(root / CONTROL_SOCKET_NAME)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else f" in {root}"
        raise typer.BadParameter(f"cannot prepare{where}: {exc.strerror or exc}", param_hint="'--dir'") from None


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
    describing the nodes. A node that dies is reported with its log's tail and stays down while
    the others keep serving; from another terminal, `dynctl dev status`, `start`, `stop`, `kill`,
    `pause` and `resume` act on the nodes. On Ctrl-C every node is stopped (SIGTERM, then SIGKILL
    after 10 s). If a node fails while the cluster starts, the others are stopped too.
    """
    session: Session = ctx.obj
    output = session.output
    settings = creation_settings(nodes, replicas, r, w)
    _check_plan(nodes, base_port, settings)
    root = directory.expanduser().resolve()
    dir_option = dev_manage.dir_option(directory)
    _check_no_earlier_run(root, dir_option)
    _check_ports_free(nodes, base_port)
    if settings.replicas is not None and settings.replicas > nodes:
        output.warn(f"N={settings.replicas} with {nodes} nodes: keys have fewer than N replicas until more nodes join")
    secret_path = root / SECRET_FILE_NAME
    specs = plan_cluster(nodes, root, base_port, settings, secret_file=secret_path)
    control = _prepare_directory(root, specs)
    try:
        _, made = ensure_secret_file(root)
        output.note(f"cluster secret: {secret_path} ({'new' if made else 'kept from an earlier run'}; every node has --secret-file {secret_path})")
        try:
            supervisor = trio.run(supervise, specs, root, session, control, dir_option)
        except BaseExceptionGroup as group:
            sole_exit = _sole_exit(group)
            if sole_exit is None:
                raise
            raise sole_exit from None
    finally:
        control.close()
        (root / CONTROL_SOCKET_NAME).unlink(missing_ok=True)
    if supervisor.failed is not None:
        output.abort(f"the dev cluster stopped because {supervisor.failed.name} failed", ExitCode.UNREACHABLE)
    if not supervisor.ready:
        output.note("stopped before the cluster was ready")
    output.note("dev cluster stopped; start it again with the same --dir to keep its data")


dev_manage.register(app)
