"""`dynctl bench`: a bounded load generator over dynd.client.

Every run is bounded twice: by --seconds and, optionally, by --ops. C worker tasks share N
connections round-robin. In the put, get, mixed and insert workloads worker i owns keys i, i+C,
i+2C, ... so no two workers write one key, and it keeps each key's context from the previous reply
and sends it with the next put: the run measures overwrites, not ever-growing sibling lists.
Before the timed phase, untimed, each worker reads its keys (so the first put supersedes whatever an
earlier run left) and, for every workload but put and insert, writes them, so every get finds a value.

The YCSB core workloads (a, b, c, d, f; `dynctl.ycsb`) share all keys among the workers, chosen by
YCSB's distributions; every update carries the context of the last reply for its key (a read's, or
an earlier update's), as a client doing read-then-write would, and a read-modify-write carries the
context its own read returned. Two workers updating one key at once may leave siblings, which the
next read returns and the next update supersedes: that is the store working, not noise.
"""

from __future__ import annotations

import enum
import gc
import math
import os
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Annotated, Any

import trio
import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from dynctl.node import AGENT, Session, node_errors_become_exit_codes
from dynctl.output import ExitCode, Output
from dynctl.ycsb import CORE_WORKLOADS, Distribution, Mix, Op, ScrambledZipfian, SkewedLatest
from dynd.client import Client, ClusterClient
from dynd.protocol.errors import DynError, Unreachable

CONNECTIONS_DEFAULT_MAX = 32
CONCURRENCY_MAX = 10_000
PROGRESS_REFRESH_S = 0.1
GC_THRESHOLDS = (50_000, 20, 100)  # as the node's (dynd/cli.py)


class Workload(enum.StrEnum):
    put = "put"
    get = "get"
    mixed = "mixed"
    insert = "insert"  # every put writes a key never written before, without a context
    a = "a"  # YCSB core workloads: see dynctl.ycsb
    b = "b"
    c = "c"
    d = "d"
    f = "f"

    @property
    def ycsb(self) -> Mix | None:
        return CORE_WORKLOADS.get(self.value)


@dataclass(frozen=True, slots=True)
class BenchPlan:
    workload: Workload
    concurrency: int
    value_size: int
    seconds: float
    keys: int
    connections: int
    ops_max: int | None
    routed: bool = False


@dataclass(slots=True)
class Tally:
    """What the workers measured. Latencies are seconds, one per successful op."""

    deadline: float
    ops_max: int | None
    ops_started: int = 0
    errors: int = 0
    errors_by_code: Counter[str] = field(default_factory=Counter)
    latencies_s: array[float] = field(default_factory=lambda: array("d"))
    latencies_by_op_s: dict[Op, array[float]] = field(default_factory=dict)

    def record(self, op: Op, latency_s: float) -> None:
        self.latencies_s.append(latency_s)
        by_op = self.latencies_by_op_s.get(op)
        if by_op is None:
            by_op = self.latencies_by_op_s[op] = array("d")
        by_op.append(latency_s)

    def may_start_another(self) -> bool:
        if self.ops_max is not None and self.ops_started >= self.ops_max:
            return False
        return time.perf_counter() < self.deadline


@dataclass(frozen=True, slots=True)
class BenchResult:
    plan: BenchPlan
    elapsed_s: float
    ops: int
    errors: int
    errors_by_code: dict[str, int]
    percentiles_ms: dict[str, float | None]
    by_op: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def document(self) -> dict[str, Any]:
        return {
            "workload": self.plan.workload.value,
            "concurrency": self.plan.concurrency,
            "connections": self.plan.connections,
            "routed": self.plan.routed,
            "keys": self.plan.keys,
            "value_size": self.plan.value_size,
            "seconds": self.plan.seconds,
            "elapsed_s": round(self.elapsed_s, 6),
            "ops": self.ops,
            "errors": self.errors,
            "errors_by_code": self.errors_by_code,
            "ops_per_s": round(self.ops_per_s, 1),
            **{name: _round_ms(value) for name, value in self.percentiles_ms.items()},
            "latency_by_op": {
                op: {"ops": figures["ops"], **{name: _round_ms(figures[name]) for name in figures if name != "ops"}}
                for op, figures in self.by_op.items()
            },
        }


def _round_ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def bench_key(index: int) -> bytes:
    return b"bench:%08d" % index


def fresh_key(run: bytes, worker_first_key: int, sequence: int) -> bytes:
    """A key no earlier op of any run wrote: the run's random tag, the worker, its op count."""
    return b"insert:%s:%08d:%010d" % (run, worker_first_key, sequence)


def keys_of_worker(worker: int, concurrency: int, keys: int) -> range:
    return range(worker, keys, concurrency)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least `fraction` of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_latencies_ms(latencies_s: array[float]) -> dict[str, float | None]:
    ordered = sorted(latencies_s)
    return {
        "p50_ms": _to_ms(percentile(ordered, 0.50)),
        "p99_ms": _to_ms(percentile(ordered, 0.99)),
        "p999_ms": _to_ms(percentile(ordered, 0.999)),
        "max_ms": _to_ms(ordered[-1] if ordered else None),
    }


def _to_ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


# ---- the run ----


async def _prepare_keys(
    client: Client | ClusterClient, plan: BenchPlan, key_indexes: range, contexts: dict[int, bytes | None], value: bytes
) -> None:
    if plan.workload is Workload.insert:
        return  # inserts need no existing keys
    for index in key_indexes:
        current = await client.get(bench_key(index))
        contexts[index] = current.context
        if plan.workload is not Workload.put:
            contexts[index] = await client.put(bench_key(index), value, current.context)


async def _run_worker(
    client: Client | ClusterClient,
    plan: BenchPlan,
    key_indexes: range,
    contexts: dict[int, bytes | None],
    value: bytes,
    tally: Tally,
    rng: random.Random,
) -> None:
    position = 0
    run_tag = os.urandom(4).hex().encode()  # not from the seeded rng: every run writes new keys
    while tally.may_start_another():
        index = key_indexes[position % len(key_indexes)]
        position += 1
        writing = plan.workload is Workload.put or (plan.workload is Workload.mixed and rng.random() < 0.5)
        op = Op.insert if plan.workload is Workload.insert else Op.update if writing else Op.read
        tally.ops_started += 1
        started = time.perf_counter()
        try:
            if plan.workload is Workload.insert:
                await client.put(fresh_key(run_tag, key_indexes[0], position), value)
            elif writing:
                contexts[index] = await client.put(bench_key(index), value, contexts[index])
            else:
                contexts[index] = (await client.get(bench_key(index))).context
        except Unreachable:
            raise  # the connection is gone: every later op would fail at once, so stop the run
        except DynError as exc:
            tally.errors += 1
            tally.errors_by_code[exc.code] += 1
        else:
            tally.record(op, time.perf_counter() - started)


@dataclass(slots=True)
class SharedKeys:
    """The key space of a YCSB run: `loaded` keys written before the timed phase, then the keys the
    run inserts (workload d), and the context of the last reply seen for each."""

    loaded: int
    run_tag: bytes
    contexts: dict[int, bytes | None]
    inserts_started: int = 0
    inserts_pending: set[int] = field(default_factory=set)

    def key(self, index: int) -> bytes:
        return bench_key(index) if index < self.loaded else inserted_key(self.run_tag, index - self.loaded)

    def begin_insert(self) -> int:
        sequence = self.inserts_started
        self.inserts_started += 1
        self.inserts_pending.add(sequence)
        return self.loaded + sequence

    def end_insert(self, index: int) -> None:
        self.inserts_pending.discard(index - self.loaded)

    def readable(self) -> int:
        """Keys 0..readable()-1 were loaded or inserted already (YCSB's acknowledged count): a read
        never chases an insert still in flight. It never shrinks."""
        inserted = min(self.inserts_pending) if self.inserts_pending else self.inserts_started
        return self.loaded + inserted


def inserted_key(run: bytes, sequence: int) -> bytes:
    return b"ycsb:%s:%010d" % (run, sequence)


async def _run_ycsb_worker(
    client: Client | ClusterClient,
    mix: Mix,
    keys: SharedKeys,
    choose: KeyChooser,
    value: bytes,
    tally: Tally,
    rng: random.Random,
) -> None:
    contexts = keys.contexts
    while tally.may_start_another():
        op = mix.choose(rng)
        index = keys.begin_insert() if op is Op.insert else choose(rng)
        key = keys.key(index)
        tally.ops_started += 1
        started = time.perf_counter()
        try:
            if op is Op.read:
                contexts[index] = (await client.get(key)).context
            elif op is Op.update:
                contexts[index] = await client.put(key, value, contexts.get(index))
            elif op is Op.insert:
                contexts[index] = await client.put(key, value)
            else:  # read-modify-write: the update supersedes exactly what its own read saw
                read = await client.get(key)
                contexts[index] = await client.put(key, value, read.context)
        except Unreachable:
            raise
        except DynError as exc:
            tally.errors += 1
            tally.errors_by_code[exc.code] += 1
        else:
            tally.record(op, time.perf_counter() - started)
        finally:
            if op is Op.insert:
                keys.end_insert(index)


KeyChooser = Callable[[random.Random], int]


def key_chooser(mix: Mix, keys: SharedKeys) -> KeyChooser:
    """A function of an rng that picks a key index; one per run, shared by the workers (building
    a zipfian costs a pass over the key count)."""
    if mix.distribution is Distribution.latest:
        latest = SkewedLatest(keys.loaded)
        return lambda rng: latest.next(rng, keys.readable())
    scrambled = ScrambledZipfian(keys.loaded)
    return scrambled.next


async def _show_progress(progress: Progress, task: TaskID, plan: BenchPlan, tally: Tally, started: float) -> None:
    while True:  # ends when the run cancels it
        done_by_time = (time.perf_counter() - started) / plan.seconds
        done_by_ops = tally.ops_started / plan.ops_max if plan.ops_max else 0.0
        progress.update(
            task,
            completed=min(1.0, max(done_by_time, done_by_ops)),
            description=f"{plan.workload.value}: {len(tally.latencies_s)} ops, {tally.errors} errors",
        )
        await trio.sleep(PROGRESS_REFRESH_S)


def settle_garbage_collector() -> None:
    """Keep this process's collector out of the latencies measured: collect what setting up made,
    freeze the rest out of later passes, and collect a tenth as often (the load generator makes
    no cycles worth collecting sooner)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run_bench(session: Session, plan: BenchPlan, progress: Progress | None = None) -> BenchResult:
    value = os.urandom(plan.value_size)
    async with AsyncExitStack() as stack:
        clients: list[Client | ClusterClient] = [
            await stack.enter_async_context(
                session.open_cluster_client() if plan.routed else session.open_client(agent=f"{AGENT} bench")
            )
            for _ in range(plan.connections)
        ]
        assignments = [
            (clients[worker % len(clients)], keys_of_worker(worker, plan.concurrency, plan.keys))
            for worker in range(plan.concurrency)
        ]
        contexts: dict[int, bytes | None] = dict.fromkeys(range(plan.keys))

        async with trio.open_nursery() as nursery:
            for client, key_indexes in assignments:
                nursery.start_soon(_prepare_keys, client, plan, key_indexes, contexts, value)

        settle_garbage_collector()
        started = time.perf_counter()
        tally = Tally(deadline=started + plan.seconds, ops_max=plan.ops_max)
        async with trio.open_nursery() as outer:
            if progress is not None:
                task = progress.add_task(plan.workload.value, total=1.0)
                outer.start_soon(_show_progress, progress, task, plan, tally, started)
            mix = plan.workload.ycsb
            shared = SharedKeys(plan.keys, os.urandom(4).hex().encode(), contexts)
            choose = key_chooser(mix, shared) if mix is not None else None
            async with trio.open_nursery() as workers:
                for worker, (client, key_indexes) in enumerate(assignments):
                    rng = random.Random(worker)  # seeded: the same run draws the same mix and keys
                    if mix is not None:
                        workers.start_soon(_run_ycsb_worker, client, mix, shared, choose, value, tally, rng)
                    else:
                        workers.start_soon(_run_worker, client, plan, key_indexes, contexts, value, tally, rng)
            elapsed_s = time.perf_counter() - started
            outer.cancel_scope.cancel()
    return BenchResult(
        plan=plan,
        elapsed_s=elapsed_s,
        ops=len(tally.latencies_s),
        errors=tally.errors,
        errors_by_code=dict(tally.errors_by_code),
        percentiles_ms=summarize_latencies_ms(tally.latencies_s),
        by_op={
            op.value: {"ops": len(latencies), **summarize_latencies_ms(latencies)}
            for op, latencies in sorted(tally.latencies_by_op_s.items())
        },
    )


# ---- the command ----


def _result_table(result: BenchResult, address: str) -> Table:
    plan = result.plan

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    pct = result.percentiles_ms
    rows = [
        ("workload", plan.workload.value),
        ("concurrency / connections", f"{plan.concurrency} / {plan.connections}"),
        ("keys", str(plan.keys)),
        ("value size", f"{plan.value_size} B"),
        ("elapsed", f"{result.elapsed_s:.2f} s"),
        ("ops", str(result.ops)),
        ("errors", str(result.errors)),
        ("ops/s", f"{result.ops_per_s:,.0f}"),
        ("p50", f"{ms(pct['p50_ms'])} ms"),
        ("p99", f"{ms(pct['p99_ms'])} ms"),
        ("p99.9", f"{ms(pct['p999_ms'])} ms"),
        ("max", f"{ms(pct['max_ms'])} ms"),
    ]
    if len(result.by_op) > 1:
        for op, figures in result.by_op.items():
            rows.append((f"{op}: ops, p99 / p99.9", f"{figures['ops']}, {ms(figures['p99_ms'])} / {ms(figures['p999_ms'])} ms"))
    table = Table(title=f"dynctl bench against {address}", title_justify="left", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def _report(output: Output, result: BenchResult, address: str) -> None:
    if output.json_mode:
        output.write_json(result.document())
    else:
        output.write_table(_result_table(result, address))
    if result.errors:
        breakdown = ", ".join(f"{code} x{count}" for code, count in sorted(result.errors_by_code.items()))
        output.warn(f"{result.errors} operations failed: {breakdown}")


def bench(
    ctx: typer.Context,
    workload: Annotated[
        Workload,
        typer.Option(
            "--workload",
            help="put (overwrite with context), get, mixed (half each), insert (fresh keys), or a YCSB core "
            "workload: a (50/50 read/update), b (95/5), c (read only), d (read latest, 5% inserts), "
            "f (read-modify-write); YCSB's use scrambled zipfian keys (d: latest), theta 0.99.",
        ),
    ] = Workload.put,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", metavar="C", min=1, max=CONCURRENCY_MAX, help="Requests in flight.")
    ] = 32,
    value_size: Annotated[
        int, typer.Option("--value-size", metavar="BYTES", min=0, help="Size of each value written.")
    ] = 1024,
    seconds: Annotated[
        float, typer.Option("--seconds", metavar="S", min=0.001, help="Length of the timed phase.")
    ] = 10.0,
    keys: Annotated[
        int, typer.Option("--keys", metavar="K", min=1, help="Distinct keys, split among the workers.")
    ] = 1000,
    connections: Annotated[
        int | None,
        typer.Option(
            "--connections",
            metavar="N",
            min=1,
            help=f"Client connections (default: min(concurrency, {CONNECTIONS_DEFAULT_MAX})).",
        ),
    ] = None,
    ops_max: Annotated[
        int | None, typer.Option("--ops", metavar="MAX", min=1, help="Stop after MAX operations.")
    ] = None,
    routed: Annotated[
        bool,
        typer.Option(
            "--routed",
            help="Route each request to a primary by the cluster's ring (client-driven coordination); "
            "each connection is then one routing client with a connection per node.",
        ),
    ] = False,
) -> None:
    """Measure throughput and latency: ops/s, errors, p50/p99/p99.9/max.

    Keys are named bench:00000000 onwards. Before the timed phase (not measured) every key is read,
    and for get and mixed also written, so gets find values and puts overwrite.
    """
    session: Session = ctx.obj
    output = session.output
    if keys < concurrency:
        raise typer.BadParameter(
            f"must be at least --concurrency ({concurrency}) so each worker owns a key", param_hint="'--keys'"
        )
    if connections is None:
        connections = min(concurrency, CONNECTIONS_DEFAULT_MAX)
    if connections > concurrency:
        raise typer.BadParameter(
            f"more connections than workers ({concurrency}) would leave some idle", param_hint="'--connections'"
        )
    plan = BenchPlan(workload, concurrency, value_size, seconds, keys, connections, ops_max, routed)

    with node_errors_become_exit_codes(output), output.progress() as progress:
        result = trio.run(run_bench, session, plan, progress)
    _report(output, result, session.node_address)
    if result.ops == 0 and result.errors:
        output.abort("no operation succeeded", ExitCode.REFUSED)
