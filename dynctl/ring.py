"""`dynctl ring`: the partition table as the --node has it, and where one key lives.

The ring is Q equal partitions, each owned by one node (DESIGN.md section 3). `status` shows Q, N,
R, W and how evenly the partitions are spread: balance = mean / max partitions per node, 1.0 when
every node owns the same number. `key` shows a key's partition and preference list, computed here
by `dynd.client.key_placement` from the same ring the node serves, exactly as the client library
places requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from dynctl.kv import KeyArgument, key_bytes
from dynctl.node import Session, run_with_client
from dynctl.output import EXIT_CODES_HELP, ExitCode, Output
from dynd.client import Client, KeyPlacement, key_placement
from dynd.protocol.messages import RingOk

app = typer.Typer(
    name="ring",
    help="Inspect the ring: partitions per node, and where a key lives.",
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    rich_markup_mode=None,
)

UNKNOWN_ADDRESS = "?"


@dataclass(frozen=True, slots=True)
class NodeShare:
    node: str
    address: str | None
    partitions: int


@dataclass(frozen=True, slots=True)
class RingSummary:
    version: str
    partitions: int
    n: int
    r: int
    w: int
    nodes: tuple[NodeShare, ...]
    mean_partitions: float
    max_partitions: int

    @property
    def balance(self) -> float:
        """mean / max partitions per node: 1.0 is perfectly even; lower means one node carries more."""
        return self.mean_partitions / self.max_partitions if self.max_partitions else 0.0

    def document(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "partitions": self.partitions,
            "n": self.n,
            "r": self.r,
            "w": self.w,
            "nodes": [
                {
                    "node": share.node,
                    "address": share.address,
                    "partitions": share.partitions,
                    "share": round(share.partitions / self.partitions, 6),
                }
                for share in self.nodes
            ],
            "mean_partitions": round(self.mean_partitions, 6),
            "max_partitions": self.max_partitions,
            "balance": round(self.balance, 6),
        }


def addresses_of(ring: RingOk) -> dict[str, str]:
    return {entry.node: entry.address for entry in ring.addresses}


def summarize_ring(ring: RingOk) -> RingSummary:
    """Partitions per node over the ring's owners and every node it has an address for.

    A node with an address but no partitions (it joined and has not claimed yet) counts with 0,
    so it lowers the balance: that is the imbalance an operator wants to see.
    """
    addresses = addresses_of(ring)
    counts = dict.fromkeys(sorted(set(ring.owners) | set(addresses)), 0)
    for owner in ring.owners:
        counts[owner] += 1
    nodes = tuple(NodeShare(node, addresses.get(node), owned) for node, owned in counts.items())
    return RingSummary(
        version=ring.version.hex(),
        partitions=len(ring.owners),
        n=ring.n,
        r=ring.r,
        w=ring.w,
        nodes=nodes,
        mean_partitions=len(ring.owners) / len(nodes),
        max_partitions=max(counts.values()),
    )


def _fetch_ring(session: Session) -> RingOk:
    async def ask(client: Client) -> RingOk:
        return await client.ring()

    ring = run_with_client(session, ask)
    if not ring.owners:
        session.output.abort(f"{session.node_address} has no ring yet (no partition has an owner)", ExitCode.REFUSED)
    return ring


def _summary_table(summary: RingSummary) -> Table:
    table = Table(title="ring", title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("partitions (Q)", str(summary.partitions)),
        ("replicas (N)", str(summary.n)),
        ("read quorum (R)", str(summary.r)),
        ("write quorum (W)", str(summary.w)),
        ("nodes", str(len(summary.nodes))),
        ("mean partitions per node", f"{summary.mean_partitions:.2f}"),
        ("max partitions per node", str(summary.max_partitions)),
        ("balance (mean / max)", f"{summary.balance:.3f}"),
        ("version", summary.version or "-"),
    ]
    for name, value in rows:
        table.add_row(name, Text(value))
    return table


def _nodes_table(summary: RingSummary) -> Table:
    table = Table(title="partitions per node", title_justify="left", box=None, pad_edge=False)
    table.add_column("node", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("partitions", justify="right")
    table.add_column("share", justify="right")
    for share in summary.nodes:
        table.add_row(
            Text(share.node),
            Text(share.address or UNKNOWN_ADDRESS),
            str(share.partitions),
            f"{share.partitions / summary.partitions * 100:.1f}%",
        )
    return table


@app.command("status", epilog=EXIT_CODES_HELP)
def status(ctx: typer.Context) -> None:
    """Show Q, N, R, W and how evenly the partitions are spread.

    Lists partitions per node, their mean and max, and balance = mean / max (1.0 is even).
    """
    session: Session = ctx.obj
    summary = summarize_ring(_fetch_ring(session))
    if session.output.json_mode:
        session.output.write_json(summary.document())
    else:
        session.output.write_table(_summary_table(summary))
        session.output.write_table(_nodes_table(summary))


# ---- key ----


def placement_document(key: str, ring: RingOk, placement: KeyPlacement) -> dict[str, Any]:
    """The --json form: the preference list in order, each entry marked primary or fallback."""
    addresses = addresses_of(ring)
    ranked = [(node, "primary") for node in placement.primaries] + [(node, "fallback") for node in placement.fallbacks]
    return {
        "key": key,
        "partition": placement.partition,
        "partitions": len(ring.owners),
        "n": ring.n,
        "preference_list": [
            {"rank": rank, "node": node, "address": addresses.get(node), "role": role}
            for rank, (node, role) in enumerate(ranked, start=1)
        ],
    }


def _placement_table(document: dict[str, Any]) -> Table:
    title = f"{document['key']!r}: partition {document['partition']} of {document['partitions']}, N={document['n']}"
    # As wide as the title, so the title is not folded to the width of a short list.
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, min_width=len(title))
    table.add_column("#", justify="right")
    table.add_column("node", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("role")
    for entry in document["preference_list"]:
        role = Text(entry["role"], style="bold" if entry["role"] == "primary" else "dim")
        table.add_row(str(entry["rank"]), Text(entry["node"]), Text(entry["address"] or UNKNOWN_ADDRESS), role)
    return table


def _print_placement(output: Output, document: dict[str, Any]) -> None:
    if output.json_mode:
        output.write_json(document)
    else:
        output.write_table(_placement_table(document))


@app.command("key", epilog=EXIT_CODES_HELP)
def key_command(ctx: typer.Context, key: KeyArgument) -> None:
    """Show a key's partition and preference list.

    The list holds the N primaries, then the fallbacks in order, with each node's address. Writes go to the primaries; a fallback stands in for an unreachable primary (sloppy quorum).
    """
    session: Session = ctx.obj
    raw_key = key_bytes(key)
    ring = _fetch_ring(session)
    placement = key_placement(ring, raw_key)
    _print_placement(session.output, placement_document(key, ring, placement))
