"""Load balance of the ring under uniform and zipfian keys (the paper's section 6.2, strategy 3).

    python tests/bench/load_balance.py [--nodes 30] [--replicas 3] [--partitions 256]
        [--requests 1000000] [--keys 100000] [--zipf-exponent 1.0] [--seed 1]

Builds the ring with claim() twice: fresh with all S nodes, and grown from N nodes by one join at a
time (as a cluster grows). Then draws requests over `--keys` distinct keys, uniformly and from a
zipf distribution (the key of rank k drawn with weight 1/k**s), and counts each request against
the nodes of its key's preference list: at the coordinator only (the first primary), and at every
one of the N primaries (a get or put touches all N replicas).

Load-balancing efficiency, as in the paper, is the mean load per node over the load of the busiest
node: 1.0 is perfect. Strategy 3 keeps every node within one partition of Q/S, so with uniform keys
the efficiency is close to (Q/S) / ceil(Q/S) less sampling noise. Under zipf one key's share of all
requests is a floor for the busiest node's load that no placement can lower; the table shows it.
Everything is seeded: the same flags give the same numbers.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate

from rich.console import Console
from rich.table import Table

from dynd.core.claim import claim
from dynd.core.partition import partition_of
from dynd.core.preflist import preference_list
from dynd.core.ring import Ring, repeated_windows

WORKLOADS = ("uniform", "zipf")


@dataclass(frozen=True, slots=True)
class Balance:
    ring: str
    workload: str
    counted_at: str  # "coordinator" or "primaries"
    mean_load: float
    max_load: int
    hottest_key_requests: int

    @property
    def efficiency(self) -> float:
        return self.mean_load / self.max_load if self.max_load else 1.0

    @property
    def best_possible(self) -> float:
        """The efficiency if the busiest node served only the hottest key: no placement beats it."""
        return self.mean_load / max(self.mean_load, self.hottest_key_requests)


@dataclass(frozen=True, slots=True)
class RingShape:
    ring: str
    partitions_min: int
    partitions_max: int
    repeated_windows: int

    def efficiency(self, nodes: int, partitions: int) -> float:
        return (partitions / nodes) / self.partitions_max


@dataclass(frozen=True, slots=True)
class Report:
    shapes: tuple[RingShape, ...]
    balances: tuple[Balance, ...]
    seconds: float


def node_names(count: int) -> list[str]:
    return [f"node-{i:03d}" for i in range(count)]


def build_rings(nodes: int, replicas: int, partitions: int) -> dict[str, Ring]:
    names = node_names(nodes)
    fresh = claim(None, names, partitions=partitions, n_replicas=replicas)
    start = min(nodes, replicas)
    grown = claim(None, names[:start], partitions=partitions, n_replicas=replicas)
    for size in range(start + 1, nodes + 1):
        grown = claim(grown, names[:size], partitions=partitions, n_replicas=replicas)
    return {"fresh": fresh, "grown": grown}


def zipf_cumulative_weights(keys: int, exponent: float) -> list[float]:
    """Cumulative weights of ranks 1..keys, rank k weighing 1/k**exponent."""
    return list(accumulate(1.0 / rank**exponent for rank in range(1, keys + 1)))


def draw_requests(workload: str, keys: int, requests: int, exponent: float, rng: random.Random) -> Counter[int]:
    """Requests per key index. Zipf ranks map to key indexes through a seeded shuffle, so the hot
    keys are not the ones whose names sort first."""
    if workload == "uniform":
        return Counter(rng.randrange(keys) for _ in range(requests))
    by_rank = list(range(keys))
    rng.shuffle(by_rank)
    ranks = rng.choices(range(keys), cum_weights=zipf_cumulative_weights(keys, exponent), k=requests)
    return Counter(by_rank[rank] for rank in ranks)


def measure(
    *, nodes: int, replicas: int, partitions: int, requests: int, keys: int, zipf_exponent: float, seed: int
) -> Report:
    started = time.perf_counter()
    rings = build_rings(nodes, replicas, partitions)
    key_partitions = [partition_of(f"key-{i:08d}".encode(), partitions) for i in range(keys)]
    shapes = []
    for label, ring in rings.items():
        counts = [ring.counts().get(name, 0) for name in node_names(nodes)]
        shapes.append(RingShape(label, min(counts), max(counts), repeated_windows(ring, replicas)))

    balances = []
    for workload in WORKLOADS:
        # one seeded stream per workload, so adding a workload never changes another's numbers
        per_key = draw_requests(workload, keys, requests, zipf_exponent, random.Random(f"{seed}:{workload}"))
        hottest = max(per_key.values())
        per_partition = [0] * partitions
        for key, count in per_key.items():
            per_partition[key_partitions[key]] += count
        for label, ring in rings.items():
            at_coordinator = dict.fromkeys(node_names(nodes), 0)
            at_primaries = dict.fromkeys(node_names(nodes), 0)
            for partition, count in enumerate(per_partition):
                primaries = preference_list(ring, partition, replicas).primaries
                at_coordinator[primaries[0]] += count
                for node in primaries:
                    at_primaries[node] += count
            for counted_at, loads in (("coordinator", at_coordinator), ("primaries", at_primaries)):
                mean = sum(loads.values()) / nodes
                balances.append(Balance(label, workload, counted_at, mean, max(loads.values()), hottest))
    return Report(tuple(shapes), tuple(balances), time.perf_counter() - started)


def print_report(report: Report, args: argparse.Namespace, console: Console) -> None:
    console.print(
        f"Ring load balance (paper section 6.2, strategy 3): S={args.nodes} N={args.replicas} Q={args.partitions}, "
        f"{args.requests:,} requests over {args.keys:,} keys, zipf exponent {args.zipf_exponent}, seed {args.seed}"
    )
    shape_table = Table(title="Partitions per node")
    for column in ("ring", "min", "max", "ideal Q/S", "mean/max", "repeated windows"):
        shape_table.add_column(column, justify="left" if column == "ring" else "right")
    for shape in report.shapes:
        shape_table.add_row(
            shape.ring,
            str(shape.partitions_min),
            str(shape.partitions_max),
            f"{args.partitions / args.nodes:.2f}",
            f"{shape.efficiency(args.nodes, args.partitions):.3f}",
            str(shape.repeated_windows),
        )
    console.print(shape_table)
    table = Table(title="Requests per node; efficiency = mean / max")
    for column in ("ring", "keys", "counted at", "mean", "max", "efficiency", "at best"):
        table.add_column(column, justify="left" if column in ("ring", "keys", "counted at") else "right")
    for balance in report.balances:
        table.add_row(
            balance.ring,
            balance.workload,
            balance.counted_at,
            f"{balance.mean_load:,.0f}",
            f"{balance.max_load:,}",
            f"{balance.efficiency:.3f}",
            f"{balance.best_possible:.3f}",
        )
    console.print(table)
    console.print(
        "counted at: the coordinator (first primary) only, or each of the N primaries. "
        "at best: mean / the hottest key's requests, when that is above the mean."
    )
    console.print(f"{report.seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=30, help="S, the number of nodes (default 30)")
    parser.add_argument("--replicas", type=int, default=3, help="N, replicas per key (default 3)")
    parser.add_argument("--partitions", type=int, default=256, help="Q, a power of two (default 256)")
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests per workload (default 1,000,000)")
    parser.add_argument("--keys", type=int, default=100_000, help="distinct keys (default 100,000)")
    parser.add_argument("--zipf-exponent", type=float, default=1.0, help="s in weight 1/rank**s (default 1.0)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    for name in ("nodes", "replicas", "requests", "keys"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    try:
        report = measure(
            nodes=args.nodes,
            replicas=args.replicas,
            partitions=args.partitions,
            requests=args.requests,
            keys=args.keys,
            zipf_exponent=args.zipf_exponent,
            seed=args.seed,
        )
    except ValueError as error:  # e.g. a partition count that is not a power of two
        parser.error(str(error))
    print_report(report, args, Console(highlight=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
