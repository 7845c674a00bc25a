"""How dynctl commands reach a node, and the one boundary where node errors become exit codes."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import trio

from dynctl.output import ExitCode, Output
from dynd.client import Client, open_client
from dynd.protocol.errors import DynError, Timeout, Unreachable

AGENT = "dynctl"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Session:
    """What the global options decided, handed to every command through the typer context."""

    node_address: str
    timeout_s: float
    output: Output


def exit_code_for(error: DynError) -> ExitCode:
    if isinstance(error, (Unreachable, Timeout)):
        return ExitCode.UNREACHABLE
    return ExitCode.REFUSED


def sole_node_error(exc: BaseException) -> DynError | None:
    """The DynError behind `exc`, looking through exception groups; None if something else failed.

    Errors from concurrent tasks (the bench workers) arrive wrapped in ExceptionGroups by trio's
    nurseries, so a plain `except DynError` would miss them.
    """
    if isinstance(exc, DynError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [sole_node_error(inner) for inner in exc.exceptions]
        if leaves and all(leaf is not None for leaf in leaves):
            return leaves[0]
    return None


@contextlib.contextmanager
def node_errors_become_exit_codes(output: Output) -> Iterator[None]:
    """Turn any node error in the block into `abort` with its exit code; let the rest through."""
    try:
        yield
    except BaseException as exc:
        error = sole_node_error(exc)
        if error is None:
            raise
        output.abort(str(error), exit_code_for(error))


def run_with_client(session: Session, operation: Callable[[Client], Awaitable[T]]) -> T:
    """Connect to the session's node, run `operation(client)` under trio, and return its result."""

    async def connect_and_run() -> T:
        async with open_client(session.node_address, timeout_s=session.timeout_s, agent=AGENT) as client:
            return await operation(client)

    with node_errors_become_exit_codes(session.output):
        return trio.run(connect_and_run)
