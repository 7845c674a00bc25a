"""The Dynamo paper's section 6.3 table on this store: the share of gets that saw 1, 2, 3 and 4 or
more versions, after a shopping-cart load of concurrent read-modify-writes.

    python tests/bench/versions_per_get.py [--seconds 20] [--writers 16] [--keys 50]

Starts a three-node cluster (N=3 R=2 W=2) in a temporary directory, then runs `--writers` tasks
for `--seconds` (and at most 200,000 operations), each looping: pick one of `--keys` keys, get it
through one of the three nodes, put a new value with the context the get returned through
another node. Two writers that read the same versions write concurrent siblings; the next get
of that key sees both and its put resolves them, as a cart's merge would. Then asks every node
for its stats and prints each node's versions-per-get counts and shares and the cluster's, which
must add to 100%.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from foundation import HOST
from revisions import ROOT, start_cluster

OPS_MAX = 200_000


async def load(ports: list[int], seconds: float, writers: int, keys: int) -> int:
    from dynd.client.connection import open_client
    from dynd.protocol.errors import DynError

    done = 0

    async def writer(index: int) -> None:
        nonlocal done
        rng = random.Random(index)
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(open_client(f"{HOST}:{port}")) for port in ports]
            while done < OPS_MAX:
                key = f"cart:{rng.randrange(keys)}"
                reader, putter = rng.sample(clients, 2)
                try:
                    found = await reader.get(key)
                    await putter.put(key, b"item-%d" % rng.randrange(1_000_000), found.context)
                except DynError as exc:
                    print(f"writer {index}: {exc}", file=sys.stderr)
                done += 2

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for index in range(writers):
                nursery.start_soon(writer, index)
    return done


async def versions_per_get(ports: list[int]) -> dict[str, list[int]]:
    from dynd.client.connection import open_client

    tables = {}
    for port in ports:
        async with open_client(f"{HOST}:{port}") as client:
            stats = await client.stats()
        tables[stats.node] = list(stats.versions_per_get)
    return tables


def shares(counts: list[int]) -> str:
    total = sum(counts)
    if not total:
        return "no gets"
    parts = [f"{label}: {count:,} ({count / total:.4%})" for label, count in zip(("1", "2", "3", "4+"), counts, strict=True)]
    return f"{', '.join(parts)}; shares add to {sum(counts) / total:.2%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--keys", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dynd-versions-") as scratch:
        ports, procs = start_cluster(ROOT, "v", Path(scratch), [])
        try:
            operations = trio.run(load, ports, args.seconds, args.writers, args.keys)
            tables = trio.run(versions_per_get, ports)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    print(f"{operations:,} operations: {args.writers} writers, {args.keys} keys, {args.seconds:g} s; versions seen per get:")
    for node, counts in sorted(tables.items()):
        print(f"  {node}: {shares(counts)}")
    cluster = [sum(column) for column in zip(*tables.values(), strict=True)]
    print(f"  cluster: {shares(cluster)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
