"""`dynctl stats` and `dynctl info`: what a node measures, and who and where it is.

`stats` shows, per node, each op's rate and latency percentiles over the last 60 s and since the
node started, errors by code, and the share of gets that saw 1, 2, 3 or 4+ versions (the Dynamo
paper's section 6.3 table). `--all` asks every member. `info` is one node's identity card. Both
are admin requests.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from dynctl.node import Session, run_with_client
from dynctl.observe import (
    VERSIONS_BUCKETS,
    Answer,
    ask_members,
    errors_by_code,
    format_bytes,
    format_duration_s,
    ops_document,
    stats_document,
    versions_shares,
)
from dynctl.output import ExitCode, Output
from dynd.client import Client
from dynd.protocol.messages import InfoOk, StatsOk

AllOption = Annotated[bool, typer.Option("--all", help="Ask every member of the cluster, not only the --node.")]


def stats_tables(stats: StatsOk) -> list[Table]:
    title = f"{stats.node}: up {format_duration_s(stats.uptime_ms / 1000)}"
    latency = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in ("op", "window", "ops/s", "count", "p50 ms", "p99 ms", "p99.9 ms", "max ms"):
        latency.add_column(column, justify="left" if column in ("op", "window") else "right")
    for op, windows in ops_document(stats).items():
        for window, row in windows.items():
            latency.add_row(
                op,
                "last 60 s" if window == "60s" else "since start",
                f"{row['ops_per_s']:.1f}",
                str(row["count"]),
                f"{row['p50_ms']:.3f}",
                f"{row['p99_ms']:.3f}",
                f"{row['p999_ms']:.3f}",
                f"{row['max_ms']:.3f}",
            )
    tables = [latency]
    errors = errors_by_code(stats)
    if errors:
        error_table = Table(title="errors", title_justify="left", box=None, pad_edge=False)
        error_table.add_column("code")
        error_table.add_column("count", justify="right")
        for code, count in errors.items():
            error_table.add_row(code, str(count))
        tables.append(error_table)
    versions = Table(title="versions per get", title_justify="left", box=None, pad_edge=False)
    versions.add_column("versions")
    versions.add_column("gets", justify="right")
    versions.add_column("share", justify="right")
    counts = list(stats.versions_per_get) + [0] * len(VERSIONS_BUCKETS)
    for index, (bucket, share) in enumerate(versions_shares(stats).items()):
        versions.add_row(bucket, str(counts[index]), f"{share * 100:.2f}%")
    tables.append(versions)
    return tables


def _report_unanswered(output: Output, answers: list[Answer[Any]]) -> bool:
    missing = [answer for answer in answers if answer.value is None]
    for answer in missing:
        output.warn(f"{answer.name} ({answer.address}) did not answer: {answer.error}")
    return bool(missing)


def stats(ctx: typer.Context, all_members: AllOption = False) -> None:
    """Per node: ops/s and p50/p99/p99.9/max latency per op (last 60 s and since start), errors by
    code, and the share of gets that saw 1, 2, 3 or 4+ versions.

    A table on a terminal; JSON with --json or when stdout is not a terminal. With --all, every
    member (a member that does not answer is named on stderr, and the exit status is 3).
    """
    session: Session = ctx.obj
    output = session.output

    async def ask(client: Client) -> list[Answer[StatsOk]]:
        if not all_members:
            return [Answer(session.node_address, session.node_address, await client.stats())]
        status = await client.cluster_status(local_only=True)

        async def one(member_client: Client) -> StatsOk:
            return await member_client.stats()

        return await ask_members(session, status, one)

    answers = run_with_client(session, ask)
    readings = [answer.value for answer in answers if answer.value is not None]
    if output.json_mode or not output.stdout_is_terminal:
        documents = [stats_document(reading) for reading in readings]
        output.write_json({"nodes": documents} if all_members else documents[0])
    else:
        for reading in readings:
            for table in stats_tables(reading):
                output.write_table(table)
    if _report_unanswered(output, answers):
        output.abort("some members did not answer", ExitCode.UNREACHABLE)


def info_document(info: InfoOk) -> dict[str, Any]:
    map_use = info.disk_used_bytes / info.map_bytes if info.map_bytes else None
    return {
        "node": info.node,
        "version": info.version,
        "protocol_version": info.protocol_version,
        "uptime_s": info.uptime_ms / 1000,
        "listen": info.listen,
        "advertise": info.advertise,
        "data_dir": info.data_dir,
        "keys": info.keys,
        "disk_used_bytes": info.disk_used_bytes,
        "map_bytes": info.map_bytes,
        "map_used_percent": None if map_use is None else round(map_use * 100, 2),
        "pending_writes": info.pending_writes,
        "hints_pending": info.hints_pending,
        "partitions_owned": info.partitions_owned,
        "anti_entropy_age_s": None if info.last_exchange_age_ms is None else info.last_exchange_age_ms / 1000,
    }


def info_table(info: InfoOk) -> Table:
    document = info_document(info)
    table = Table(title=info.node, title_justify="left", box=None, pad_edge=False, show_header=False)
    table.add_column("field")
    table.add_column("value")
    age = document["anti_entropy_age_s"]
    percent = document["map_used_percent"]
    rows = [
        ("version", info.version),
        ("protocol version", str(info.protocol_version)),
        ("uptime", format_duration_s(info.uptime_ms / 1000)),
        ("listen", info.listen),
        ("advertise", info.advertise),
        ("data dir", info.data_dir),
        ("keys", str(info.keys)),
        ("disk used", format_bytes(info.disk_used_bytes)),
        ("map size", format_bytes(info.map_bytes) + ("" if percent is None else f" ({percent:.1f}% used)")),
        ("pending writes", str(info.pending_writes)),
        ("hints pending", str(info.hints_pending)),
        ("partitions owned", str(info.partitions_owned)),
        ("anti-entropy age", "never" if age is None else format_duration_s(age)),
    ]
    for field, value in rows:
        table.add_row(field, value)
    return table


def info(ctx: typer.Context) -> None:
    """The --node's version, protocol version, uptime, name, addresses, data directory, keys, disk
    used and map size, pending writes, hints, partitions owned and anti-entropy age."""
    session: Session = ctx.obj
    output = session.output

    async def ask(client: Client) -> InfoOk:
        return await client.info()

    reading = run_with_client(session, ask)
    if output.json_mode or not output.stdout_is_terminal:
        output.write_json(info_document(reading))
    else:
        output.write_table(info_table(reading))
