"""`dynctl cluster`: membership as explicit admin acts (join, leave, remove) and the members' status.

Membership changes are requests to the --node, which records them and spreads them by gossip
(DESIGN.md section 5); dynctl only asks and prints the node's answer. `status` shows one node's
view: each member's state, its partitions and their share of the ring, whether this node can reach
it, and the partition transfers it still has pending.

Safe changes (riak-admin cluster plan's spirit): `--dry-run` prints the node's plan of a change
(`ClusterPlan`: partitions moving between members, the balance after, windows of N partitions
without N distinct owners, keys and bytes to copy) and changes nothing; `remove` refuses a member
that answers unless `--force`; `leave --wait` follows the leaving node's handoff (`ClusterTransfers`
on that node) until it holds nothing and is safe to stop; `transfers` lists the handoffs in flight.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import trio
import typer
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from dynctl.node import Session, node_errors_become_exit_codes, run_with_client
from dynctl.observe import format_bytes
from dynctl.output import EXIT_CODES_HELP, ExitCode, Output
from dynd.client import Client
from dynd.protocol.address import format_address, parse_address
from dynd.protocol.errors import Timeout, Unreachable
from dynctl.ring import RingSummary, level_verdict, location_document, location_heading, location_sort_key, locations_of, placement_notes, summarize_ring
from dynd.protocol.messages import ClusterPlanOk, ClusterStatusOk, ClusterTransfersOk, MemberView, NodeTransfers, RingOk, TransferView

LEAVE_POLL_S = 0.5  # how often `leave --wait` asks the leaving node how far it got
PROGRESS_LINE_S = 2.0  # without a terminal, a progress line at most this often (and on each partition)
RATE_WINDOW_S = 10.0  # the hand-off rate is measured over this much of the recent past

app = typer.Typer(
    name="cluster",
    help="Change and inspect cluster membership: join, leave, remove (each with --dry-run), status, transfers.",
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


DryRunOption = Annotated[
    bool,
    typer.Option("--dry-run", help="Print the node's plan of the change (partitions and keys that would move) and change nothing."),
]


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
    dry_run: DryRunOption = False,
) -> None:
    """Ask the --node to join SEED's cluster; print the node's answer.

    SEED is any member of that cluster. The node takes its share of partitions from the members, which hand their data over in the
    background: watch `dynctl cluster transfers`. With --dry-run, SEED plans the join and nothing changes.
    """
    session: Session = ctx.obj
    if dry_run:
        print_plan(session.output, run_with_client(session, lambda client: client.cluster_plan("join", seed=seed)))
        return

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
    dry_run: DryRunOption = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Show the hand-off's progress and return only when the node holds nothing and is safe to stop.",
        ),
    ] = False,
) -> None:
    """Have a member hand its partitions to the others and leave; print the node's answer.

    NODE defaults to the --node itself. For a member that is alive; for one that is gone for good,
    use `remove`. With --wait, follow the hand-off (partitions and keys handed off, rate, time
    left: a progress bar on a terminal, else a line every few seconds on stderr) until the node
    holds no partition, the others know it left, and it is safe to stop; it then answers data
    requests with not_a_member.
    """
    session: Session = ctx.obj
    if dry_run and wait:
        raise typer.BadParameter("--wait and --dry-run do not go together", param_hint="'--wait'")
    if dry_run:
        print_plan(session.output, run_with_client(session, lambda client: client.cluster_plan("leave", node)))
        return

    async def ask(client: Client) -> tuple[str, str, str]:
        message = await client.cluster_leave(node)
        if node is None or node == client.node_name:
            return message, client.node_name, session.node_address
        view = await client.cluster_status(local_only=True)
        address = next((m.address for m in view.members if m.name == node), "")
        return message, node, address

    message, leaver, address = run_with_client(session, ask)
    if not wait:
        _print_message(session.output, {"action": "leave", "node": node, "message": message})
        return
    session.output.note(message)
    with node_errors_become_exit_codes(session.output):
        report = trio.run(_follow_leave, session, leaver, address)
    seconds = report.pop("seconds")
    text = (
        f"{leaver} has left: it handed off {report['partitions_handed_off']} partitions "
        f"({report['keys_handed_off']} keys, {format_bytes(report['bytes_handed_off'])}) in {seconds:.0f} s, "
        "holds nothing, and is safe to stop"
    )
    _print_message(session.output, {"action": "leave", "node": leaver, "message": text, "left": True, **report, "seconds": round(seconds, 3)})


class HandoffRate:
    """Keys handed off per second over the last `window_s`, from (time, keys sent) samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now_s: float, keys_sent: int) -> None:
        self.samples.append((now_s, keys_sent))
        while len(self.samples) > 2 and now_s - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    @property
    def keys_per_s(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, k0), (t1, k1) = self.samples[0], self.samples[-1]
        return (k1 - k0) / (t1 - t0) if t1 > t0 else 0.0

    def eta_s(self, keys_left: int) -> float | None:
        rate = self.keys_per_s
        return keys_left / rate if rate > 0 else None


def leave_progress_line(name: str, own: NodeTransfers, handed: int, rate: HandoffRate) -> str:
    """One line of `leave --wait` progress, for logs and pipes."""
    if own.status == "removed":
        return f"{name} holds nothing more and is removed; waiting for a member to confirm it"
    if own.status == "joined":
        return f"{name} has not heard of its leave yet (gossip brings it)"
    eta = rate.eta_s(own.keys_pending)
    left = f", about {eta:.0f} s left" if eta is not None else ""
    hints = f"; {own.hints_pending} hints to deliver first" if own.hints_pending and not own.partitions_pending else ""
    return (
        f"{name} leaving: {own.partitions_pending} partitions ({own.keys_pending} keys) left; "
        f"{handed} keys handed off ({rate.keys_per_s:.0f} keys/s{left}){hints}"
    )


async def _follow_leave(session: Session, name: str, address: str) -> dict[str, Any]:
    """Poll the leaving node until it is safe to stop; show progress; return what it handed off."""
    output = session.output
    if not address:
        output.abort(f"the --node does not know {name}'s address", ExitCode.REFUSED)
    started = time.monotonic()
    rate = HandoffRate()
    first: NodeTransfers | None = None
    last_line, last_pending = 0.0, -1
    async with session.open_client(address) as client:
        with _progress_display(output) as progress:
            task = progress.add_task(f"{name} leaving", total=None) if progress is not None else None
            while True:
                try:
                    answer = await client.cluster_transfers(local_only=True)
                except (Unreachable, Timeout) as exc:
                    output.abort(
                        f"lost {name} at {address} while it was leaving: {exc.message}",
                        ExitCode.UNREACHABLE,
                        hint="if it was stopped, `dynctl cluster status` on another member shows what it had left; start it again to finish the hand-off",
                    )
                own = next((n for n in answer.nodes if n.node == name), answer.nodes[0])
                first = first or own
                handed = own.keys_sent - first.keys_sent
                now = time.monotonic()
                rate.add(now, own.keys_sent)
                if own.safe_to_stop:
                    break
                if progress is not None and task is not None:
                    if own.status == "leaving":
                        description = f"{name}: {own.partitions_pending} partitions left, {rate.keys_per_s:.0f} keys/s"
                    else:
                        description = f"{name}: " + ("removed; waiting for a member to confirm" if own.status == "removed" else "has not heard of its leave yet")
                    progress.update(task, total=handed + own.keys_pending, completed=handed, description=description)
                elif now - last_line >= PROGRESS_LINE_S or own.partitions_pending != last_pending:
                    output.note(leave_progress_line(name, own, handed, rate))
                    last_line, last_pending = now, own.partitions_pending
                await trio.sleep(LEAVE_POLL_S)
    return {
        "partitions_handed_off": own.partitions_sent - first.partitions_sent,
        "keys_handed_off": own.keys_sent - first.keys_sent,
        "bytes_handed_off": own.bytes_sent - first.bytes_sent,
        "seconds": time.monotonic() - started,
    }


@contextmanager
def _progress_display(output: Output) -> Iterator[Progress | None]:
    """A progress bar for a person at a terminal; None for --json and pipes (plain lines instead)."""
    if output.json_mode:
        yield None
        return
    with output.progress() as progress:
        yield progress


@app.command("remove", epilog=EXIT_CODES_HELP)
def remove(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(metavar="NODE", callback=_check_node_name, help="The member to drop.", show_default=False)],
    dry_run: DryRunOption = False,
    force: Annotated[bool, typer.Option("--force", help="Remove the member even though it is alive and answers.")] = False,
) -> None:
    """Drop a dead member at once; print the node's answer.

    Its partitions go to the others. Nothing is handed off, so the replicas it held are rebuilt
    from the other replicas. The --node probes NODE first and refuses (exit 4, nothing changes)
    if it answers: retire a live member with `leave`, or insist with --force.
    """
    session: Session = ctx.obj
    if dry_run:
        print_plan(session.output, run_with_client(session, lambda client: client.cluster_plan("remove", node)))
        return

    async def ask(client: Client) -> str:
        return await client.cluster_remove(node, force=force)

    message = run_with_client(session, ask)
    _print_message(session.output, {"action": "remove", "node": node, "message": message})


# ---- plans ----


def plan_document(plan: ClusterPlanOk) -> dict[str, Any]:
    """The --json form of a plan: the node's answer, field for field, with `dry_run` true."""
    return {
        "dry_run": True,
        "action": plan.action,
        "node": plan.target,
        "planned_by": plan.node,
        "changes": plan.changes,
        "summary": plan.summary,
        "n": plan.n,
        "members": [
            {
                "name": m.name,
                "status_before": m.status_before or None,
                "status_after": m.status_after or None,
                "partitions_before": m.partitions_before,
                "partitions_after": m.partitions_after,
                "gives": m.gives,
                "takes": m.takes,
                "keys_in": m.keys_in,
                "bytes_in": m.bytes_in,
                "keys_out": m.keys_out,
                "bytes_out": m.bytes_out,
            }
            for m in plan.members
        ],
        "moves": [{"partition": m.partition, "from": m.source, "to": m.target, "keys": m.keys, "bytes": m.bytes} for m in plan.moves],
        "windows_repeated": plan.windows_repeated,
        "windows_repeated_before": plan.windows_repeated_before,
        "keys_to_move": plan.keys_to_move,
        "bytes_to_move": plan.bytes_to_move,
        "sizes_from": plan.sizes_from,
        "sizes_missing": plan.sizes_missing,
        "notes": plan.notes,
        "owners_before": plan.owners_before,
        "owners_after": plan.owners_after,
    }


def _arrow(before: Any, after: Any) -> str:
    """"a -> b", or "a" when nothing changes; "" (not a member then) shows as "-"."""
    before, after = (str(x) if x != "" else "-" for x in (before, after))
    return before if before == after else f"{before} -> {after}"


def plan_table(plan: ClusterPlanOk) -> Table:
    table = Table(
        title=f"plan: {plan.action} {plan.target} (computed by {plan.node}; nothing has changed)",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    for name, justify in (("node", "left"), ("status", "left"), ("partitions", "right"), ("gives", "right"), ("takes", "right"),
                          ("keys in", "right"), ("keys out", "right")):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for m in plan.members:
        table.add_row(
            Text(m.name),
            Text(_arrow(m.status_before, m.status_after)),
            _arrow(m.partitions_before, m.partitions_after),
            str(m.gives),
            str(m.takes),
            str(m.keys_in),
            str(m.keys_out),
        )
    return table


def moves_by_pair(plan: ClusterPlanOk) -> list[tuple[str, str, list[int]]]:
    """(from, to, partitions) for each pair of members partitions move between, in order."""
    pairs: dict[tuple[str, str], list[int]] = {}
    for move in plan.moves:
        pairs.setdefault((move.source, move.target), []).append(move.partition)
    return [(source, target, partitions) for (source, target), partitions in sorted(pairs.items())]


def plan_lines(plan: ClusterPlanOk) -> list[str]:
    """The plan's text after the member table."""
    q = len(plan.owners_before)
    lines = [f"{len(plan.moves)} of {q} partitions change owner" + (":" if plan.moves else "")]
    lines += [f"  {source} -> {target}: {', '.join(map(str, partitions))}" for source, target, partitions in moves_by_pair(plan)]
    repeated = plan.windows_repeated
    shown = ", ".join(map(str, repeated[:16])) + (", ..." if len(repeated) > 16 else "")
    lines.append(
        f"windows of {plan.n} partitions without {plan.n} distinct owners after the change: "
        + (f"{len(repeated)} (starting at {shown})" if repeated else "none")
        + f" (before: {plan.windows_repeated_before or 'none'})"
    )
    estimate = f"from {', '.join(plan.sizes_from)}" if plan.sizes_from else "no sizes"
    lines.append(f"to copy to new replicas: about {plan.keys_to_move} keys, {format_bytes(plan.bytes_to_move)} (estimated {estimate})")
    lines += [f"note: {note}" for note in plan.notes]
    return lines


def print_plan(output: Output, plan: ClusterPlanOk) -> None:
    if output.json_mode:
        output.write_json(plan_document(plan))
        return
    if not plan.changes:
        output.write_line(f"nothing would change: {plan.summary}")
        return
    output.write_table(plan_table(plan))
    for line in plan_lines(plan):
        output.write_line(line)
    output.note("dry run: nothing has changed; run the command again without --dry-run to make the change")


# ---- transfers ----


def transfers_document(answer: ClusterTransfersOk) -> dict[str, Any]:
    return {
        "node": answer.node,
        "members": [
            {
                "name": n.node,
                "status": n.status,
                "answered": n.answered,
                "partitions_pending": n.partitions_pending,
                "keys_pending": n.keys_pending,
                "bytes_pending": n.bytes_pending,
                "partitions_sent": n.partitions_sent,
                "keys_sent": n.keys_sent,
                "bytes_sent": n.bytes_sent,
                "hints_pending": n.hints_pending,
                "safe_to_stop": n.safe_to_stop,
            }
            for n in answer.nodes
        ],
        "transfers": [
            {
                "from": t.source,
                "partition": t.partition,
                "to": t.targets,
                "state": t.state,
                "keys_sent": t.keys_sent,
                "bytes_sent": t.bytes_sent,
                "keys_total": t.keys_total,
                "started_ms": t.started_ms or None,
            }
            for n in answer.nodes
            for t in n.transfers
        ],
    }


def _started(transfer: TransferView, now_ms: float) -> str:
    return f"{max(0.0, (now_ms - transfer.started_ms) / 1000):.0f} s ago" if transfer.started_ms else "-"


def transfers_tables(answer: ClusterTransfersOk, now_ms: float | None = None) -> tuple[Table, Table | None]:
    """The members' hand-off summary, and the transfers in flight or queued (None: there are none)."""
    now = time.time() * 1000 if now_ms is None else now_ms
    members = Table(title=f"partition hand-offs, as gathered by {answer.node}", title_justify="left", box=None, pad_edge=False)
    for name in ("node", "status", "partitions left", "keys left", "handed off", "hints"):
        members.add_column(name, justify="left" if name in ("node", "status") else "right", no_wrap=True)
    for n in answer.nodes:
        if not n.answered:
            members.add_row(Text(n.node), Text(n.status), Text("no answer", style="bold yellow"), "", "", "")
            continue
        members.add_row(
            Text(n.node),
            Text(n.status + (" (safe to stop)" if n.safe_to_stop else "")),
            str(n.partitions_pending),
            str(n.keys_pending),
            f"{n.keys_sent} keys, {format_bytes(n.bytes_sent)}",
            str(n.hints_pending),
        )
    transfers = [t for n in answer.nodes for t in n.transfers]
    if not transfers:
        return members, None
    flights = Table(box=None, pad_edge=False)
    for name in ("from", "partition", "to", "state", "keys", "sent", "started"):
        flights.add_column(name, justify="right" if name in ("partition", "keys", "sent") else "left", no_wrap=True)
    for t in transfers:
        share = f" ({100 * t.keys_sent / t.keys_total:.0f}%)" if t.keys_total else ""
        flights.add_row(
            Text(t.source), str(t.partition), Text(",".join(t.targets)), Text(t.state),
            f"{t.keys_sent}/{t.keys_total}{share}", format_bytes(t.bytes_sent), _started(t, now),
        )  # fmt: skip
    return members, flights


@app.command("transfers", epilog=EXIT_CODES_HELP)
def transfers(ctx: typer.Context) -> None:
    """List the partition transfers in flight on every member, with their progress.

    Per member: its status, the partitions (and keys) it still holds for partitions it no longer
    replicates, what it has handed off since it started, and the hints it holds. Then each
    transfer: from, partition, to (the partition's primaries), state (sending, paced: held back
    while client latency is high, queued), keys sent of the keys it held, bytes sent, and when it
    started. A member that does not answer within the node's gather timeout is listed as such.
    """
    session: Session = ctx.obj
    answer = run_with_client(session, lambda client: client.cluster_transfers())
    output = session.output
    if output.json_mode:
        output.write_json(transfers_document(answer))
        return
    members, flights = transfers_tables(answer)
    output.write_table(members)
    if flights is None:
        output.write_line("no partition transfers in flight")
    else:
        output.write_table(flights)


# ---- status ----


def ring_shares(members: list[MemberView]) -> dict[str, float]:
    """Each member's fraction of the partitions the members own together (all 0 when they own none)."""
    total = sum(member.partitions for member in members)
    return {member.name: (member.partitions / total if total else 0.0) for member in members}


def _sorted_members(status: ClusterStatusOk, locations: dict[str, str] | None = None) -> list[MemberView]:
    """By name; with locations, grouped by zone and host first."""
    if locations:
        return sorted(status.members, key=lambda member: location_sort_key(locations.get(member.name), member.name))
    return sorted(status.members, key=lambda member: member.name)


def status_document(status: ClusterStatusOk, ring: RingOk | None = None) -> dict[str, Any]:
    """The --json form: `share` is a fraction (0..1) of the partitions, so the shares sum to 1;
    `location`: the member's location (None: unknown); `placement`: where the ring keeps its
    copies (`dynctl ring status --json` has the same), None without a ring."""
    shares = ring_shares(status.members)
    locations = locations_of(ring) if ring is not None else {}
    summary = summarize_ring(ring) if ring is not None and ring.owners else None
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
                "location": locations.get(member.name),
            }
            for member in _sorted_members(status, locations)
        ],
        "last_exchange_ms": status.last_exchange_ms,
        "placement": location_document(summary.placement) if summary is not None and summary.placement is not None else None,
    }


def placement_caption(summary: RingSummary) -> str:
    """The status table's lines on placement: what does not hold, and why. Empty when all holds
    and nothing needs saying."""
    report = summary.placement
    if report is None:
        return ""
    lines = [
        f"copies on distinct {view.level}s: {level_verdict(view, report.n)}" for view in (report.host, report.zone) if not view.holds
    ]
    lines += placement_notes(report) if summary.located else []
    return "\n".join(lines)


def status_table(status: ClusterStatusOk, ring: RingOk | None = None) -> Table:
    shares = ring_shares(status.members)
    locations = locations_of(ring) if ring is not None else {}
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
    heading: str | None = None
    for index, member in enumerate(_sorted_members(status, locations)):
        if locations and (index == 0 or locations.get(member.name) != heading):
            heading = locations.get(member.name)
            table.add_row(location_heading(heading))
        table.add_row(
            Text(("  " if locations else "") + member.name + (" *" if member.name == status.node else "")),
            Text(member.address),
            Text(member.status),
            str(member.partitions),
            f"{shares[member.name] * 100:.1f}%",
            _liveness(member),
            str(member.transfers_pending),
            str(member.hints_pending),
        )
    table.caption = "* the node that answered; liveness (incarnation) as its failure detector sees it; hints it holds for each"
    if ring is not None and ring.owners:
        placement = placement_caption(summarize_ring(ring))
        if placement:
            table.caption += "\n" + placement
    me = next((m for m in status.members if m.name == status.node), None)
    if me is not None and me.status == "removed":
        table.caption += f"\n{status.node} is not a member any more: it serves no data (liveness unknown: it no longer probes the members)"
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


def print_status(output: Output, status: ClusterStatusOk, ring: RingOk | None = None) -> None:
    if output.json_mode:
        output.write_json(status_document(status, ring))
    else:
        output.write_table(status_table(status, ring))


@app.command("status", epilog=EXIT_CODES_HELP)
def status(ctx: typer.Context) -> None:
    """Show every member as the --node sees it.

    Columns: node, address, status, partitions owned, share of the ring (partitions / all
    partitions owned), liveness as the --node's failure detector sees it (alive, suspect or
    dead, with the member's incarnation), partition transfers still pending, and the hints the
    --node holds for the member. With locations, members are grouped by location, and the
    caption says which placement guarantee does not hold (copies on distinct hosts, on distinct
    zones) and why.
    """
    session: Session = ctx.obj

    async def ask(client: Client) -> tuple[ClusterStatusOk, RingOk]:
        return await client.cluster_status(), await client.ring()

    status_ok, ring = run_with_client(session, ask)
    print_status(session.output, status_ok, ring)
