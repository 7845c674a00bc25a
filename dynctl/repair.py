"""`dynctl repair`: run an anti-entropy exchange now and watch it.

The --node compares its Merkle trees with every other primary of each partition it holds (or of
one, with --partition), repairs the keys that differ in both directions, and reports: pairs of
(partition, peer) compared, keys that differed, and keys repaired on either side. Exchanges also
run on their own every `ae_interval_ms`; this runs one now, ahead of the schedule.
"""

from __future__ import annotations

from typing import Annotated, Any

import trio
import typer
from rich.table import Table

from dynctl.node import Session, run_with_client
from dynctl.output import ExitCode
from dynd.client import Client
from dynd.protocol.messages import RepairProgressOk

POLL_S = 0.2


def progress_document(report: RepairProgressOk) -> dict[str, Any]:
    return {
        "run": report.run,
        "pairs_total": report.pairs_total,
        "pairs_done": report.pairs_done,
        "pairs_failed": report.pairs_failed,
        "keys_compared": report.keys_compared,
        "keys_differing": report.keys_differing,
        "repaired_local": report.repaired_local,
        "repaired_remote": report.repaired_remote,
        "finished": report.finished,
        "errors": report.errors,
    }


def progress_table(node: str, report: RepairProgressOk) -> Table:
    table = Table(title=f"repair run {report.run} on {node}", title_justify="left", box=None, pad_edge=False)
    table.add_column("measure")
    table.add_column("count", justify="right")
    rows = [
        ("(partition, peer) pairs compared", f"{report.pairs_done} of {report.pairs_total}"),
        ("pairs that failed", str(report.pairs_failed)),
        ("keys compared", str(report.keys_compared)),
        ("keys that differed", str(report.keys_differing)),
        ("keys repaired here", str(report.repaired_local)),
        ("keys repaired on peers", str(report.repaired_remote)),
    ]
    for measure, count in rows:
        table.add_row(measure, count)
    return table


def repair(
    ctx: typer.Context,
    partition: Annotated[int | None, typer.Option("--partition", min=0, metavar="P", help="Only this partition (default: every partition the node holds).")] = None,
) -> None:
    """Run an anti-entropy exchange now on the --node, showing progress until it finishes.

    Exits 0 when every exchange completed, 4 when some failed (their errors on stderr).
    """
    session: Session = ctx.obj
    output = session.output

    with output.progress() as progress:
        task = progress.add_task("exchanging", total=None) if progress is not None else None

        async def run(client: Client) -> RepairProgressOk:
            report = await client.repair_start(partition)
            while not report.finished:
                if progress is not None and task is not None:
                    progress.update(task, total=max(report.pairs_total, 1), completed=report.pairs_done)
                await trio.sleep(POLL_S)
                report = await client.repair_status(report.run)
            return report

        final = run_with_client(session, run)
    if output.json_mode:
        output.write_json(progress_document(final))
    else:
        output.write_table(progress_table(session.node_address, final))
    for error in final.errors:
        output.warn(error)
    if final.pairs_failed:
        output.abort(f"{final.pairs_failed} of {final.pairs_total} exchanges failed", ExitCode.REFUSED)
