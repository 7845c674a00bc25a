"""How dynctl commands reach a node, and the one boundary where node errors become exit codes.

Every connection dynctl makes goes through `Session.open_client` or `Session.open_cluster_client`,
so the credentials the global options gave (`--token-file`, `--tls-ca`) reach every node it talks to.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TypeVar

import trio

from dynctl.output import ExitCode, Output
from dynd.client import Client, ClusterClient, open_client, open_cluster_client
from dynd.protocol.errors import DynError, NotAMember, Timeout, Unauthorized, Unreachable

AGENT = "dynctl"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Session:
    """What the global options decided, handed to every command through the typer context."""

    node_address: str
    timeout_s: float
    output: Output
    token: str | None = None  # from --token-file or DYNCTL_TOKEN_FILE
    ssl_context: ssl.SSLContext | None = None  # from --tls-ca: TLS, verifying the node against that CA

    def open_client(
        self, address: str | None = None, *, timeout_s: float | None = None, agent: str = AGENT
    ) -> AbstractAsyncContextManager[Client]:
        """A connection to `address` (default: --node) with this session's credentials."""
        return open_client(
            address or self.node_address,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            agent=agent,
            token=self.token,
            ssl_context=self.ssl_context,
        )

    def open_cluster_client(self, seeds: str | list[str] | None = None) -> AbstractAsyncContextManager[ClusterClient]:
        """A ring-aware client seeded from `seeds` (default: --node) with this session's credentials."""
        return open_cluster_client(
            seeds or self.node_address, timeout_s=self.timeout_s, token=self.token, ssl_context=self.ssl_context
        )


UNAUTHORIZED_HINT = "give an admin token with --token-file, or run this on the node's host"


def exit_code_for(error: DynError) -> ExitCode:
    # A node that left the cluster cannot serve this, like one that cannot be reached: ask another.
    if isinstance(error, (Unreachable, Timeout, NotAMember)):
        return ExitCode.UNREACHABLE
    if isinstance(error, Unauthorized):
        return ExitCode.UNAUTHORIZED
    return ExitCode.REFUSED


def describe_node_error(error: DynError) -> str:
    """The line dynctl prints for a node's error; a refusal says what would be let in."""
    if isinstance(error, Unauthorized):
        return f"the node refused: {error.message} \N{EM DASH} {UNAUTHORIZED_HINT}"
    if isinstance(error, NotAMember):
        return f"not a member: {error.message} (point --node at one)"
    return str(error)


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
        output.abort(describe_node_error(error), exit_code_for(error))


def run_with_client(session: Session, operation: Callable[[Client], Awaitable[T]]) -> T:
    """Connect to the session's node, run `operation(client)` under trio, and return its result."""

    async def connect_and_run() -> T:
        async with session.open_client() as client:
            return await operation(client)

    with node_errors_become_exit_codes(session.output):
        return trio.run(connect_and_run)
