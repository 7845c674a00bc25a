"""How dynctl commands reach a node, and the one boundary where node errors become exit codes.

Every connection dynctl makes goes through `Session.open_client`, `Session.open_cluster_client` or
`Session.sync_client`, so the credentials the global options gave (`--token-file`, `--tls-ca`) reach
every node it talks to. A command that makes one request (get, put, delete) uses `run_sync`: a
blocking socket, no trio. The others use `run_with_client` (trio; imported when first used).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from dynctl.output import ExitCode, Output
from dynd.client.errors import CannotConnect, NotADyndNode
from dynd.protocol.errors import DynError, NotAMember, Timeout, Unauthorized, Unreachable

if TYPE_CHECKING:
    import ssl

    from dynd.client.cluster import ClusterClient
    from dynd.client.connection import Client
    from dynd.client.sync import SyncClient

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
        from dynd.client.connection import open_client

        return open_client(
            address or self.node_address,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            agent=agent,
            token=self.token,
            ssl_context=self.ssl_context,
        )

    def open_cluster_client(self, seeds: str | list[str] | None = None) -> AbstractAsyncContextManager[ClusterClient]:
        """A ring-aware client seeded from `seeds` (default: --node) with this session's credentials."""
        from dynd.client.cluster import open_cluster_client

        return open_cluster_client(
            seeds or self.node_address, timeout_s=self.timeout_s, token=self.token, ssl_context=self.ssl_context
        )

    def sync_client(self) -> SyncClient:
        """A blocking connection to --node with this session's credentials (no trio)."""
        from dynd.client.sync import SyncClient

        return SyncClient(self.node_address, timeout_s=self.timeout_s, agent=AGENT, token=self.token, ssl_context=self.ssl_context)


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
    if isinstance(error, NotADyndNode):
        return error.message
    if isinstance(error, NotAMember):
        return f"not a member: {error.message} (point --node at one)"
    return str(error)


def hint_for(error: DynError) -> str | None:
    """What to check next, when the error alone does not say."""
    if not isinstance(error, (CannotConnect, NotADyndNode)):
        return None
    from_environment = os.environ.get("DYNCTL_NODE")
    where = f"--node, and DYNCTL_NODE={from_environment!r} if --node is not given" if from_environment else "--node (or DYNCTL_NODE)"
    if isinstance(error, NotADyndNode):
        return f"Check the address in {where}: dynd listens where its --listen (or listen in its config) says."
    return f"Is dynd running there, listening on that address? Check {where}."


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
def node_errors_become_exit_codes(output: Output, hints: Mapping[type[DynError], str] | None = None) -> Iterator[None]:
    """Turn any node error in the block into `abort` with its exit code; let the rest through.
    `hints`: what to suggest after an error of a given class (else `hint_for`'s)."""
    try:
        yield
    except BaseException as exc:
        error = sole_node_error(exc)
        if error is None:
            raise
        hint = (hints or {}).get(type(error)) or hint_for(error)
        output.abort(describe_node_error(error), exit_code_for(error), hint=hint)


def run_sync(session: Session, operation: Callable[[SyncClient], T], hints: Mapping[type[DynError], str] | None = None) -> T:
    """Connect to the session's node over a blocking socket, run `operation(client)`, return its result."""
    with node_errors_become_exit_codes(session.output, hints), session.sync_client() as client:
        return operation(client)


def run_with_client(session: Session, operation: Callable[[Client], Awaitable[T]]) -> T:
    """Connect to the session's node, run `operation(client)` under trio, and return its result."""
    import trio

    async def connect_and_run() -> T:
        async with session.open_client() as client:
            return await operation(client)

    with node_errors_become_exit_codes(session.output):
        return trio.run(connect_and_run)
