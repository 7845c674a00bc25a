"""`dynctl log-level LEVEL`: change the --node's log level while it runs (an admin operation).

The node decides which levels it knows (DEBUG, INFO, WARNING, ERROR, in any case) and refuses any
other with `bad_request`, changing nothing (exit 4). The level lasts until the node restarts; the
config's `log_level` is what it starts with.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dynctl.node import Session, run_with_client
from dynd.client import Client
from dynd.protocol.messages import LogLevelOk


def log_level(
    ctx: typer.Context,
    level: Annotated[str, typer.Argument(metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (any case).", show_default=False)],
) -> None:
    """Set the --node's log level now, until it restarts; print the level and the one before.

    Admin: from the node's own host, or with an admin token (--token-file).
    """
    session: Session = ctx.obj

    async def run(client: Client) -> LogLevelOk:
        return await client.log_level(level)

    reply = run_with_client(session, run)
    if session.output.json_mode:
        session.output.write_json({"node": session.node_address, "level": reply.level, "previous": reply.previous})
    else:
        session.output.write_line(f"{session.node_address}: log level {reply.level} (was {reply.previous})")
