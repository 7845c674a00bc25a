"""`python -m dynd.sim`: run one seed or a range of seeds; exit 1 if any checker failed."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dynd.sim.faults import parse_kinds
from dynd.sim.run import SimConfig, SimResult, run_seed
from dynd.sim.world import machine_layout


def parse_seeds(text: str) -> range:
    """"A..B" (inclusive) or "A"."""
    first, sep, last = text.partition("..")
    start = int(first)
    stop = int(last) if sep else start
    if stop < start:
        raise argparse.ArgumentTypeError(f"empty seed range {text!r}")
    return range(start, stop + 1)


def parse_layout(text: str) -> int | tuple[int, ...]:
    """"K" (every machine runs K nodes) or "A,B,C" (one count per machine)."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a node count or a comma-separated list of them") from None
    if any(k < 1 for k in counts):
        raise argparse.ArgumentTypeError(f"every machine runs at least one node; got {text!r}")
    return counts[0] if len(counts) == 1 else counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynd.sim", description=__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="run this one seed")
    which.add_argument("--seeds", type=parse_seeds, help="run a range of seeds, A..B inclusive")
    parser.add_argument("--nodes", type=int, default=5, help="nodes at the start (default 5)")
    parser.add_argument(
        "--nodes-per-machine", type=parse_layout, default=1, metavar="K|A,B,..",
        help="nodes each machine runs (the last takes the rest), or a count per machine adding up to --nodes (default 1)",
    )
    parser.add_argument("--zones", type=int, default=1, help="zones the machines are dealt to in turn (default 1)")
    parser.add_argument("--seconds", type=float, default=SimConfig(0).seconds, help="simulated seconds of load per seed")
    parser.add_argument("--faults", default="all", help="comma-separated fault kinds, 'all' or 'none'")
    parser.add_argument("--clear-ratio", type=float, default=SimConfig(0).clear_ratio, help="share of client ops that delete their key")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for --seeds")
    parser.add_argument("--node-logs", action="store_true", help="print the nodes' own warnings (thousands, with disk faults)")
    args = parser.parse_args(argv)
    if not args.node_logs:
        # The nodes warn about every refused commit and unreachable peer, which the faults cause on
        # purpose; what a run must say is in the checkers' report. (Workers inherit this on fork.)
        logging.getLogger("dynd").setLevel(logging.ERROR)
    try:
        faults = parse_kinds(args.faults)
    except ValueError as exc:
        parser.error(str(exc))
    out = Console()
    err = Console(stderr=True)
    seeds = range(args.seed, args.seed + 1) if args.seed is not None else args.seeds
    if not 0 <= args.clear_ratio <= 0.5:
        parser.error("--clear-ratio must be between 0 and 0.5")
    if args.zones < 1:
        parser.error("--zones must be at least 1")
    try:
        machine_layout(args.nodes, args.nodes_per_machine)
    except ValueError as exc:
        parser.error(str(exc))
    configs = [
        SimConfig(
            seed=s, nodes=args.nodes, nodes_per_machine=args.nodes_per_machine, zones=args.zones,
            seconds=args.seconds, faults=faults, clear_ratio=args.clear_ratio,
        )
        for s in seeds
    ]
    started = time.perf_counter()
    if args.seed is not None:
        result = run_seed(configs[0])
        results = [result]
        out.print(
            f"seed {result.config.seed}: {'ok' if result.ok else 'FAILED'}  trace {result.trace_hash}  "
            f"{result.simulated_ms / 1000:.1f} simulated s, {result.messages} messages, "
            f"faults {result.faults_injected or 'none'}, ops {result.ops}, {result.wall_s:.2f} s wall"
        )
    else:
        results = []
        with Progress(
            TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(), console=err,
        ) as progress:
            task = progress.add_task("seeds", total=len(configs), failed=0)
            for result in _run_all(configs, args.jobs):
                results.append(result)
                progress.update(task, advance=1, failed=sum(not r.ok for r in results))
                if not result.ok:
                    progress.console.print(f"[red]seed {result.config.seed} failed: {', '.join(sorted({f.checker for f in result.failures}))}")
        out.print(_summary(results, time.perf_counter() - started))
    failed = [r for r in results if not r.ok]
    for result in failed:
        out.print(result.report(), markup=False, highlight=False)
    return 1 if failed else 0


def _run_all(configs: list[SimConfig], jobs: int) -> Iterator[SimResult]:
    if jobs <= 1:
        for config in configs:
            yield run_seed(config)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield from pool.map(run_seed, configs, chunksize=4)


def _summary(results: list[SimResult], wall_s: float) -> Table:
    faults: dict[str, int] = {}
    seeds_with: dict[str, int] = {}  # how many seeds drew each kind at least once
    for r in results:
        for kind, count in r.faults_injected.items():
            faults[kind] = faults.get(kind, 0) + count
            seeds_with[kind] = seeds_with.get(kind, 0) + (count > 0)
    node_seconds = sum(r.node_seconds for r in results)
    table = Table(title="simulation summary", show_header=False)
    table.add_column(justify="right", style="bold")
    table.add_column()
    table.add_row("seeds run", str(len(results)))
    table.add_row("simulated seconds", f"{sum(r.simulated_ms for r in results) / 1000:,.1f}")
    table.add_row("messages", f"{sum(r.messages for r in results):,}")
    table.add_row("faults injected", f"{sum(faults.values()):,} ({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))})")
    table.add_row("seeds that drew each", ", ".join(f"{k} {v}" for k, v in sorted(seeds_with.items())))
    table.add_row("operations", ", ".join(f"{k} {v}" for k, v in sorted(_ops(results).items())))
    failed = [r.config.seed for r in results if not r.ok]
    table.add_row("failures", f"[red]{len(failed)}: seeds {', '.join(map(str, failed[:20]))}" if failed else "[green]0")
    table.add_row("wall time", f"{wall_s:.1f} s ({node_seconds / wall_s:,.0f} simulated node-seconds per second)")
    return table


def _ops(results: list[SimResult]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in results:
        for k, v in r.ops.items():
            total[k] = total.get(k, 0) + v
    return total


if __name__ == "__main__":
    sys.exit(main())
