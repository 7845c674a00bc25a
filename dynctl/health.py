"""`dynctl health`: exit 0 when the cluster looks healthy, else exit 7 and one line per failed check.

Checks, on the --node (or, with --all, on every member):
- a member the failure detector calls suspect or dead;
- members holding different rings (their RingOk versions differ; only with --all);
- partition transfers pending above --transfers-max, hints held above --hints-max;
- the store using more than --disk-max-percent of its LMDB map;
- with --all, a member that does not answer within the member timeout (2 s, or --timeout if less).
Scripts and systemd watchdogs read the exit status; the lines go to stdout (JSON with --json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from dynctl.node import Session, run_with_client
from dynctl.observe import Answer, ask_members
from dynctl.output import ExitCode
from dynd.client import Client
from dynd.protocol.messages import ClusterStatusOk, InfoOk, RingOk

SICK_LIVENESS = ("suspect", "dead")
DEFAULT_HINTS_MAX = 10_000
DEFAULT_TRANSFERS_MAX = 64
DEFAULT_DISK_MAX_PERCENT = 90.0


@dataclass(frozen=True, slots=True)
class Limits:
    hints_max: int = DEFAULT_HINTS_MAX
    transfers_max: int = DEFAULT_TRANSFERS_MAX
    disk_max_percent: float = DEFAULT_DISK_MAX_PERCENT


@dataclass(frozen=True, slots=True)
class NodeReading:
    """One member's own view: its cluster status, ring and info."""

    status: ClusterStatusOk
    ring: RingOk
    info: InfoOk


def failed_checks(answers: list[Answer[NodeReading]], limits: Limits) -> list[str]:
    """One line per failed check, in a stable order; [] when healthy."""
    failures: list[str] = []
    readings = [answer.value for answer in answers if answer.value is not None]
    for answer in answers:
        if answer.value is None:
            failures.append(f"{answer.name} ({answer.address}) does not answer: {answer.error}")

    # Liveness, as every answering member sees it; one line per sick member naming who sees it so.
    observers: dict[tuple[str, str], list[str]] = {}
    for reading in readings:
        for member in reading.status.members:
            if member.liveness in SICK_LIVENESS:
                observers.setdefault((member.name, member.liveness), []).append(reading.status.node)
    for (name, liveness), seen_by in sorted(observers.items()):
        failures.append(f"{name} is {liveness} (seen by {', '.join(sorted(seen_by))})")

    digests = {reading.status.node: reading.ring.version.hex() for reading in readings}
    if len(set(digests.values())) > 1:
        listed = ", ".join(f"{node} has {digest[:12]}" for node, digest in sorted(digests.items()))
        failures.append(f"members disagree on the ring: {listed}")

    # Transfers: each member counts its own; a lone --node also reports the others' counts.
    transfers: dict[str, int] = {}
    for reading in readings:
        for member in reading.status.members:
            if member.name == reading.status.node or member.name not in transfers:
                transfers[member.name] = member.transfers_pending
    for name, pending in sorted(transfers.items()):
        if pending > limits.transfers_max:
            failures.append(f"{name} has {pending} partition transfers pending (limit {limits.transfers_max})")

    for reading in readings:
        info = reading.info
        if info.hints_pending > limits.hints_max:
            failures.append(f"{info.node} holds {info.hints_pending} hints (limit {limits.hints_max})")
        if info.map_bytes and info.disk_used_bytes * 100 > limits.disk_max_percent * info.map_bytes:
            percent = info.disk_used_bytes * 100 / info.map_bytes
            failures.append(
                f"{info.node} uses {percent:.1f}% of its LMDB map (limit {limits.disk_max_percent:g}%): raise map_size"
            )
    return failures


async def read_node(client: Client, *, local_only: bool) -> NodeReading:
    return NodeReading(
        status=await client.cluster_status(local_only=local_only), ring=await client.ring(), info=await client.info()
    )


def health(
    ctx: typer.Context,
    all_members: Annotated[bool, typer.Option("--all", help="Ask every member; one that does not answer fails.")] = False,
    hints_max: Annotated[
        int, typer.Option("--hints-max", min=0, metavar="N", help="Fail when a node holds more hints than this.")
    ] = DEFAULT_HINTS_MAX,
    transfers_max: Annotated[
        int,
        typer.Option("--transfers-max", min=0, metavar="N", help="Fail when a member has more partition transfers pending."),
    ] = DEFAULT_TRANSFERS_MAX,
    disk_max_percent: Annotated[
        float,
        typer.Option("--disk-max-percent", min=0, max=100, metavar="PCT", help="Fail when a store uses more of its LMDB map."),
    ] = DEFAULT_DISK_MAX_PERCENT,
) -> None:
    """Exit 0 when healthy; else exit 7 with one line per failed check.

    Checks: members suspect or dead, members on different rings (--all), transfers and hints above
    their limits, a store over --disk-max-percent of its map, and (--all) members that do not answer.
    """
    session: Session = ctx.obj
    output = session.output
    limits = Limits(hints_max=hints_max, transfers_max=transfers_max, disk_max_percent=disk_max_percent)

    async def ask(client: Client) -> list[Answer[NodeReading]]:
        if not all_members:
            reading = await read_node(client, local_only=False)
            return [Answer(reading.status.node, session.node_address, reading)]
        status = await client.cluster_status(local_only=True)

        async def one(member_client: Client) -> NodeReading:
            return await read_node(member_client, local_only=True)

        return await ask_members(session, status, one)

    answers = run_with_client(session, ask)
    failures = failed_checks(answers, limits)
    if output.json_mode:
        output.write_json(
            {"healthy": not failures, "failed": failures, "nodes": [answer.name for answer in answers]}
        )
    else:
        for line in failures:
            output.write_line(line)
    if failures:
        raise typer.Exit(int(ExitCode.UNHEALTHY))
    if not output.json_mode:
        output.note(f"healthy: {len(answers)} node(s) checked")
