"""`dynctl cluster`: membership as explicit admin acts (join, leave, remove) and the members' status.

Membership changes are requests to the --node, which records them and spreads them by gossip
(DESIGN.md section 5); dynctl only asks and prints the node's answer. `status` shows one node's
view: each member's state, its partitions and their share of the ring, whether this node can reach
it, and the partition transfers it still has pending.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from dynctl.node import Session, run_with_client
from dynctl.output import EXIT_CODES_HELP, Output
from dynd.client import Client
from dynd.protocol.address import format_address, parse_address
from dynd.protocol.messages import ClusterStatusOk, MemberView

app = typer.Typer(
    name="cluster",
    help="Change and inspect cluster membership: join, leave, remove, status.",
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    rich_markup_mode=None,
)

NodeNameArgument = Annotated[str, typer.Argument(metavar="NODE", help="A member's name.", show_default=False)]


def _check_seed(address: str) -> str:
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return format_address(host, port)


def _check_node_name(name: str) -> str:
    # An empty name would reach the node as "no node", which for leave means "this node".
    if not name.strip():
        raise typer.BadParameter("a node name cannot be empty")
    return name


def _check_optional_node_name(name: str | None) -> str | None:
    return None if name is None else _check_node_name(name)


def _print_message(output: Output, document: dict[str, Any]) -> None:
    if output.json_mode:
        output.write_json(document)
    else:
        output.write_line(document["message"])


@app.command("join", epilog=EXIT_CODES_HELP)
def join(
    ctx: typer.Context,
    seed: Annotated[
        str,
        typer.Argument(
            metavar="SEED",
            callback=_check_seed,
            help="HOST:PORT of any member of the cluster to join.",
            show_default=False,
        ),
    ],
) -> None:
    """Ask the --node to join SEED's cluster; print the node's answer.

    SEED is any member of that cluster. The node takes its share of partitions from the members, which hand their data over in the
    background: watch `transfers pending` in `dynctl cluster status`.
    """
    session: Session = ctx.obj

    async def ask(client: Client) -> str:
        return await client.cluster_join(seed)

    message = run_with_client(session, ask)
    _print_message(session.output, {"action": "join", "seed": seed, "message": message})


@app.command("leave", epilog=EXIT_CODES_HELP)
def leave(
    ctx: typer.Context,
    node: Annotated[
        str | None,
        typer.Argument(
            metavar="[NODE]",
            callback=_check_optional_node_name,
            help="The member that leaves (default: the --node itself).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Have a member hand its partitions to the others and leave; print the node's answer.

    NODE defaults to the --node itself. For a member that is alive; for one that is gone for good,
    use `remove`.
    """
    session: Session = ctx.obj

    async def ask(client: Client) -> str:
        return await client.cluster_leave(node)

    message = run_with_client(session, ask)
    _print_message(session.output, {"action": "leave", "node": node, "message": message})


@app.command("remove", epilog=EXIT_CODES_HELP)
def remove(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(metavar="NODE", callback=_check_node_name, help="The member to drop.", show_default=False)],
) -> None:
    """Drop a dead member at once; print the node's answer.

    Its partitions go to the others. Nothing is handed off, so the replicas it held are rebuilt
    from the other replicas.
    """
    session: Session = ctx.obj

    async def ask(client: Client) -> str:
        return await client.cluster_remove(node)

    message = run_with_client(session, ask)
    _print_message(session.output, {"action": "remove", "node": node, "message": message})


# ---- status ----


def ring_shares(members: list[MemberView]) -> dict[str, float]:
    """Each member's fraction of the partitions the members own together (all 0 when they own none)."""
    total = sum(member.partitions for member in members)
    return {member.name: (member.partitions / total if total else 0.0) for member in members}


def _sorted_members(status: ClusterStatusOk) -> list[MemberView]:
    return sorted(status.members, key=lambda member: member.name)


def status_document(status: ClusterStatusOk) -> dict[str, Any]:
    """The --json form: `share` is a fraction (0..1) of the partitions, so the shares sum to 1."""
    shares = ring_shares(status.members)
    return {
        "node": status.node,
        "members": [
            {
                "name": member.name,
                "address": member.address,
                "status": member.status,
                "partitions": member.partitions,
                "share": round(shares[member.name], 6),
                "reachable": member.reachable,
                "liveness": member.liveness,
                "incarnation": member.incarnation,
                "transfers_pending": member.transfers_pending,
                "hints_pending": member.hints_pending,
            }
            for member in _sorted_members(status)
        ],
        "last_exchange_ms": status.last_exchange_ms,
    }


def status_table(status: ClusterStatusOk) -> Table:
    shares = ring_shares(status.members)
    # No box: eight columns of full names and addresses still fit 80 columns (a pipe's width).
    table = Table(title=f"cluster as seen by {status.node}", title_justify="left", box=None, pad_edge=False)
    table.add_column("node", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("status")
    table.add_column("partitions", justify="right")
    table.add_column("share", justify="right")
    table.add_column("liveness")
    table.add_column("transfers", justify="right")
    table.add_column("hints", justify="right")
    for member in _sorted_members(status):
        table.add_row(
            Text(member.name + (" *" if member.name == status.node else "")),
            Text(member.address),
            Text(member.status),
            str(member.partitions),
            f"{shares[member.name] * 100:.1f}%",
            _liveness(member),
            str(member.transfers_pending),
            str(member.hints_pending),
        )
    table.caption = "* the node that answered; liveness (incarnation) as its failure detector sees it; hints it holds for each"
    exchanges = exchange_summary(status)
    if exchanges:
        table.caption += "\n" + exchanges
    table.caption_justify = "left"
    return table


def exchange_summary(status: ClusterStatusOk, now_ms: int | None = None) -> str:
    """One line on the answering node's anti-entropy: how long ago its partitions were compared."""
    if status.last_exchange_ms is None:
        return ""
    done = [ms for ms in status.last_exchange_ms if ms]
    if not done:
        return "anti-entropy: no exchange finished yet"
    now = time.time() * 1000 if now_ms is None else now_ms
    newest, oldest = (now - max(done)) / 1000, (now - min(done)) / 1000
    return f"anti-entropy: {len(done)} partitions exchanged, newest {newest:.0f} s ago, oldest {oldest:.0f} s ago"


LIVENESS_STYLES = {"alive": "", "suspect": "bold yellow", "dead": "bold red"}


def _liveness(member: MemberView) -> Text:
    return Text(f"{member.liveness} ({member.incarnation})", style=LIVENESS_STYLES.get(member.liveness, ""))


def print_status(output: Output, status: ClusterStatusOk) -> None:
    if output.json_mode:
        output.write_json(status_document(status))
    else:
        output.write_table(status_table(status))


@app.command("status", epilog=EXIT_CODES_HELP)
def status(ctx: typer.Context) -> None:
    """Show every member as the --node sees it.

    Columns: node, address, status, partitions owned, share of the ring (partitions / all
    partitions owned), liveness as the --node's failure detector sees it (alive, suspect or
    dead, with the member's incarnation), partition transfers still pending, and the hints the
    --node holds for the member.
    """
    session: Session = ctx.obj

    async def ask(client: Client) -> ClusterStatusOk:
        return await client.cluster_status()

    print_status(session.output, run_with_client(session, ask))
