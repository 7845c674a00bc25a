"""`dynctl top`: every member on one screen, redrawn each second, until `q` or Ctrl-C.

Each tick asks the --node for its member list (and its view of their liveness), then every member
for its stats, concurrently with a short timeout, so a dead member shows as such instead of
freezing the screen. Rates and p99.9 are over the last 60 s. Keys are read in cbreak mode by a
thread that polls stdin (so it can stop), and the terminal is restored however top ends.
rich.live is imported here, not at dynctl's top level: other commands do not pay for it.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import trio
import typer

from dynctl.node import Session
from dynctl.observe import Answer, ask_members, errors_by_code, gauge, member_timeout_s, ops_per_s, p999_ms
from dynctl.output import ExitCode
from dynd.client import Client
from dynd.protocol.errors import DynError
from dynd.protocol.messages import ClusterStatusOk, StatsOk

REFRESH_S = 1.0
KEY_POLL_S = 0.1
QUIT_KEYS = (b"q", b"Q", b"\x03", b"")  # b"": stdin closed
TOP_OPS = ("get", "put", "delete")


@dataclass(frozen=True, slots=True)
class Snapshot:
    status: ClusterStatusOk | None
    answers: list[Answer[StatsOk]]
    error: str | None = None


async def take_snapshot(session: Session) -> Snapshot:
    timeout_s = member_timeout_s(session)
    try:
        with trio.fail_after(timeout_s * 2):
            async with session.open_client(timeout_s=timeout_s) as client:
                status = await client.cluster_status(local_only=True)
    except DynError as exc:
        return Snapshot(None, [], str(exc))
    except trio.TooSlowError:
        return Snapshot(None, [], f"no answer from {session.node_address}")

    async def ask(client: Client) -> StatsOk:
        return await client.stats()

    return Snapshot(status, await ask_members(session, status, ask))


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def render(session: Session, snapshot: Snapshot) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    clock = time.strftime("%H:%M:%S")
    header = Text.assemble(("dynctl top ", "bold"), f"{session.node_address}  {clock}  (last 60 s; p99.9 in ms)")
    footer = Text("q or Ctrl-C quits", style="dim")
    if snapshot.status is None:
        return Group(header, Text(f"cannot read the cluster: {snapshot.error}", style="red"), footer)
    table = Table(box=None, pad_edge=False, padding=(0, 1), expand=False)
    table.add_column("node", no_wrap=True, max_width=12, overflow="ellipsis")
    table.add_column("live", no_wrap=True)
    for op in TOP_OPS:
        table.add_column(f"{op[:3]}/s", justify="right", no_wrap=True)
    for op in TOP_OPS:
        table.add_column(f"{op[:3]} ms", justify="right", no_wrap=True)
    for column in ("err", "hints", "xfer"):
        table.add_column(column, justify="right", no_wrap=True)
    liveness = {member.name: member.liveness for member in snapshot.status.members}
    for answer in snapshot.answers:
        live = liveness.get(answer.name, "?")
        style = "green" if live == "alive" else "red"
        stats = answer.value
        if stats is None:
            table.add_row(answer.name, Text(live, style=style), *["-"] * 6, "-", "-", "-", style="dim")
            continue
        table.add_row(
            answer.name,
            Text(live, style=style),
            *[_rate(ops_per_s(stats, op, "60s")) for op in TOP_OPS],
            *[_ms(p999_ms(stats, op)) for op in TOP_OPS],
            str(sum(errors_by_code(stats).values())),
            str(gauge(stats, "hints_pending")),
            str(gauge(stats, "partitions_in_transfer")),
        )
    unanswered = [f"{a.name}: {a.error}" for a in snapshot.answers if a.value is None]
    notes = [Text(line, style="yellow", overflow="ellipsis", no_wrap=True) for line in unanswered]
    return Group(header, table, *notes, footer)


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one at a time without echo; the terminal's settings come back on exit."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_for_quit_key(fd: int, stop: threading.Event) -> None:
    """Block (in a thread) until a quit key, or until `stop` is set."""
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], KEY_POLL_S)
        if ready and os.read(fd, 1) in QUIT_KEYS:
            return


async def run_top(session: Session) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    quit_requested = trio.Event()
    stop_reader = threading.Event()
    stdin_fd = sys.stdin.fileno()
    keys_from_terminal = os.isatty(stdin_fd)

    async def read_keys() -> None:
        # Abandoned on cancel (Ctrl-C): the thread sees `stop_reader` within KEY_POLL_S and ends.
        await trio.to_thread.run_sync(wait_for_quit_key, stdin_fd, stop_reader, abandon_on_cancel=True)
        quit_requested.set()

    with cbreak(stdin_fd) if keys_from_terminal else contextlib.nullcontext():
        with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
            try:
                async with trio.open_nursery() as nursery:
                    if keys_from_terminal:
                        nursery.start_soon(read_keys)
                    while not quit_requested.is_set():
                        snapshot = await take_snapshot(session)
                        live.update(render(session, snapshot), refresh=True)
                        with trio.move_on_after(REFRESH_S):
                            await quit_requested.wait()
                    stop_reader.set()
                    nursery.cancel_scope.cancel()
            finally:
                stop_reader.set()


def top(ctx: typer.Context) -> None:
    """A live full-screen view of every member, redrawn each second: ops/s and p99.9 per op over
    the last 60 s, errors, hints held, partitions in transfer, liveness. `q` or Ctrl-C quits."""
    session: Session = ctx.obj
    if not sys.stdout.isatty():
        session.output.abort("top needs a terminal", ExitCode.USAGE, hint="for scripts: dynctl stats --all --json")
    try:
        trio.run(run_top, session)
    except* KeyboardInterrupt:
        pass  # Ctrl-C is how one leaves top, as `q` is: exit 0 (trio may wrap it in a group)
