"""`dynctl ring`: the partition table as the --node has it, and where one key lives.

The ring is Q equal partitions, each owned by one node (DESIGN.md section 3). `status` shows Q, N,
R, W and how evenly the partitions are spread: balance = mean / max partitions per node, 1.0 when
every node owns the same number. It then says where the copies are (`dynd.protocol.location_report`):
the nodes grouped by location, whether every key's N copies sit on N distinct hosts and on N
distinct zones, and why not when they do not. `key` shows a key's partition and preference list,
with each node's location, computed here by `dynd.client.key_placement` from the same ring the node
serves, exactly as the client library places requests.
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
from dynd.protocol.location_report import LevelReport, LocationReport, location_report
from dynd.protocol.locations import LocationError, check_location
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
UNKNOWN_LOCATION = "-"


@dataclass(frozen=True, slots=True)
class NodeShare:
    node: str
    address: str | None
    partitions: int
    location: str | None = None  # None: unknown
    copies: int = 0  # partitions it is a primary of


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
    placement: LocationReport | None = None

    @property
    def located(self) -> bool:
        """Whether any node's location is known."""
        return any(share.location for share in self.nodes)

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
                    "location": share.location,
                    "copies": share.copies,
                }
                for share in self.nodes
            ],
            "mean_partitions": round(self.mean_partitions, 6),
            "max_partitions": self.max_partitions,
            "balance": round(self.balance, 6),
            "placement": location_document(self.placement) if self.placement is not None else None,
        }


def addresses_of(ring: RingOk) -> dict[str, str]:
    return {entry.node: entry.address for entry in ring.addresses}


def locations_of(ring: RingOk) -> dict[str, str]:
    """The known locations the node sent (an older node sends none); a malformed one is left out,
    as the client library would refuse it."""
    found: dict[str, str] = {}
    for entry in ring.locations or ():
        try:
            found[entry.node] = check_location(entry.location)
        except LocationError:
            continue
    return found


def location_sort_key(location: str | None, node: str) -> tuple[int, str, str]:
    """Known locations first, grouped by zone then host (the path sorts that way), then by name."""
    return (0, location, node) if location else (1, "", node)


def summarize_ring(ring: RingOk) -> RingSummary:
    """Partitions per node over the ring's owners and every node it has an address for, and
    where the ring keeps its copies.

    A node with an address but no partitions (it joined and has not claimed yet) counts with 0,
    so it lowers the balance: that is the imbalance an operator wants to see.
    """
    addresses = addresses_of(ring)
    locations = locations_of(ring)
    counts = dict.fromkeys(sorted(set(ring.owners) | set(addresses)), 0)
    for owner in ring.owners:
        counts[owner] += 1
    placement = location_report(ring.owners, locations, ring.n) if ring.owners else None
    copies = placement.replicas if placement is not None else {}
    nodes = tuple(
        NodeShare(node, addresses.get(node), owned, locations.get(node), copies.get(node, 0)) for node, owned in counts.items()
    )
    if any(share.location for share in nodes):
        nodes = tuple(sorted(nodes, key=lambda share: location_sort_key(share.location, share.node)))
    return RingSummary(
        version=ring.version.hex(),
        partitions=len(ring.owners),
        n=ring.n,
        r=ring.r,
        w=ring.w,
        nodes=nodes,
        mean_partitions=len(ring.owners) / len(nodes),
        max_partitions=max(counts.values()),
        placement=placement,
    )


# ---- placement: where the copies are ----


def level_verdict(level: LevelReport, n: int) -> str:
    """One line: whether every key's N copies sit on N distinct hosts (or zones), and why not."""
    count = len(level.groups)
    plural = f"{level.level}s" if count != 1 else level.level
    if level.holds:
        verdict = f"yes: every key's {n} copies on {min(n, count)} distinct {level.level}s ({count} {plural})"
    else:
        verdict = f"NO: {level.partitions_sharing} partitions have copies sharing a {level.level}"
    return verdict


def placement_notes(report: LocationReport) -> list[str]:
    """Sentences for the operator: each guarantee that does not hold and why, each host or zone
    that unbalances the copies, and nodes without a location."""
    notes: list[str] = []
    for level in (report.host, report.zone):
        notes.extend(level.reasons)
        if level.windows_repeating and not level.reasons and level.holds:
            notes.append(
                f"{level.windows_repeating} of {report.partitions} windows of {report.n} partitions repeat a {level.level}: "
                f"their preference lists skip ahead to keep copies on distinct {level.level}s"
            )
    if report.unknown and len(report.unknown) < len(report.members):
        names = ", ".join(report.unknown[:5]) + (", ..." if len(report.unknown) > 5 else "")
        notes.append(f"{len(report.unknown)} nodes have no location ({names}): each counts as a host and a zone of its own")
    return notes


def location_document(report: LocationReport) -> dict[str, Any]:
    def level(view: LevelReport) -> dict[str, Any]:
        return {
            "holds": view.holds,
            "count": len(view.groups),
            "partitions_sharing": view.partitions_sharing,
            "windows_repeating": view.windows_repeating,
            "spread_possible": view.spread_possible,
            "reasons": list(view.reasons),
            "groups": [
                {"name": group.name, "members": list(group.members), "partitions": group.partitions, "copies": group.replicas}
                for group in view.groups
            ],
        }

    return {
        "hosts": level(report.host),
        "zones": level(report.zone),
        "copies_max_over_mean": round(report.load_max, 6),
        "unknown_locations": list(report.unknown),
        "notes": placement_notes(report),
    }


def _location_table(summary: RingSummary) -> Table:
    report = summary.placement
    assert report is not None
    table = Table(title="placement", title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column("metric")
    table.add_column("value")
    for view in (report.host, report.zone):
        verdict = level_verdict(view, report.n)
        style = "" if view.holds else "bold red"
        table.add_row(f"copies on distinct {view.level}s", Text(verdict, style=style))
    for view in (report.host, report.zone):
        table.add_row(f"windows repeating a {view.level}", f"{view.windows_repeating} of {report.partitions}")
    table.add_row("most copies on one node", f"{report.load_max:.2f} x mean")
    notes = placement_notes(report)
    if not summary.located:
        notes.insert(0, "no node has a location: each counts as a host and a zone of its own")
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


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


def location_heading(location: str | None) -> Text:
    """The row that opens a location's group of nodes in a table grouped by location."""
    return Text(location or "no location", style="bold")


def _nodes_table(summary: RingSummary) -> Table:
    located = summary.located
    title = "partitions per node, by location" if located else "partitions per node"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column("node", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("partitions", justify="right")
    table.add_column("share", justify="right")
    table.add_column("copies", justify="right")
    heading: str | None = None
    for index, share in enumerate(summary.nodes):
        if located and (index == 0 or share.location != heading):
            heading = share.location
            table.add_row(location_heading(heading))
        table.add_row(
            Text(("  " if located else "") + share.node),
            Text(share.address or UNKNOWN_ADDRESS),
            str(share.partitions),
            f"{share.partitions / summary.partitions * 100:.1f}%",
            str(share.copies),
        )
    table.caption = "copies: the partitions a node is a primary of (N x its partitions when no window repeats a host or zone)"
    table.caption_justify = "left"
    return table


@app.command("status", epilog=EXIT_CODES_HELP)
def status(ctx: typer.Context) -> None:
    """Show Q, N, R, W, how evenly the partitions are spread, and where the copies are.

    Lists partitions per node, their mean and max, and balance = mean / max (1.0 is even). Then
    placement: whether every key's N copies sit on N distinct hosts and on N distinct zones (and
    why not: too few hosts or zones, or one too big), the nodes grouped by location, and the
    copies each node holds.
    """
    session: Session = ctx.obj
    summary = summarize_ring(_fetch_ring(session))
    if session.output.json_mode:
        session.output.write_json(summary.document())
    else:
        session.output.write_table(_summary_table(summary))
        if summary.placement is not None:
            session.output.write_table(_location_table(summary))
        session.output.write_table(_nodes_table(summary))


# ---- key ----


def placement_document(key: str, ring: RingOk, placement: KeyPlacement) -> dict[str, Any]:
    """The --json form: the preference list in order, each entry marked primary or fallback."""
    addresses = addresses_of(ring)
    locations = locations_of(ring)
    ranked = [(node, "primary") for node in placement.primaries] + [(node, "fallback") for node in placement.fallbacks]
    return {
        "key": key,
        "partition": placement.partition,
        "partitions": len(ring.owners),
        "n": ring.n,
        "preference_list": [
            {"rank": rank, "node": node, "address": addresses.get(node), "role": role, "location": locations.get(node)}
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
    table.add_column("location", no_wrap=True)
    table.add_column("role")
    for entry in document["preference_list"]:
        role = Text(entry["role"], style="bold" if entry["role"] == "primary" else "dim")
        table.add_row(
            str(entry["rank"]),
            Text(entry["node"]),
            Text(entry["address"] or UNKNOWN_ADDRESS),
            Text(entry["location"] or UNKNOWN_LOCATION),
            role,
        )
    return table


def _print_placement(output: Output, document: dict[str, Any]) -> None:
    if output.json_mode:
        output.write_json(document)
    else:
        output.write_table(_placement_table(document))


@app.command("key", epilog=EXIT_CODES_HELP)
def key_command(ctx: typer.Context, key: KeyArgument) -> None:
    """Show a key's partition and preference list.

    The list holds the N primaries, then the fallbacks in order, with each node's address and location. Writes go to the primaries; a fallback stands in for an unreachable primary (sloppy quorum). With locations, the primaries sit on distinct zones, then hosts, as far as the ring has them, and fallbacks on new zones or hosts come first.
    """
    session: Session = ctx.obj
    raw_key = key_bytes(key)
    ring = _fetch_ring(session)
    placement = key_placement(ring, raw_key)
    _print_placement(session.output, placement_document(key, ring, placement))
