"""Handoff throughput: how fast a 4th node takes its share of a loaded 3-node cluster, at a few sizes.

    python tests/bench/handoff.py [--sizes 25000,50000,100000] [--value-size 1024] [--deadline-s 300]

For each size: starts a fresh 3-node cluster (N=3 R=2 W=2, default settings: transfer pacing and
limits as shipped), loads that many fresh keys with the routed, pipelined loader, then starts a 4th
node with --join and times from its start until all four nodes hold the same ring, one that gives
the 4th node partitions, and `cluster transfers` (asked of the first node, which gathers every
member's view) shows all four answering and no partition transfer pending. Bytes moved: the growth of the
`handoff_bytes` counters of all four nodes. Prints seconds, keys and MB moved, MB/s, and seconds per
1,000 keys of the cluster, which stays flat when handoff time grows linearly with the data.
The cluster is idle during the handoff (no foreground load), so pacing never holds it back.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trio
from bulk_load import load
from foundation import HOST, free_port
from revisions import start_cluster
from peers import stop

from dynd.client import BlockingClient
from dynd.protocol.errors import DynError

POLL_S = 0.2  # how often the transfers view is read; the resolution of the handoff time
ROOT = Path(__file__).resolve().parents[2]


def handoff_bytes(addresses: list[str]) -> int:
    total = 0
    for address in addresses:
        with BlockingClient(address) as client:
            total += sum(m.value for m in client.stats().counters if m.name == "handoff_bytes")
    return total


def rings_agree_with(addresses: list[str], newcomer: str) -> bool:
    """Every node has the same ring and it gives the newcomer partitions: each old owner knows
    what it must hand off, so "nothing pending" from then on means the handoff is done."""
    versions = set()
    for address in addresses:
        with BlockingClient(address) as client:
            ring = client.ring()
        if newcomer not in ring.owners:
            return False
        versions.add(ring.version)
    return len(versions) == 1


def measure(size: int, value_size: int, deadline_s: float, scratch: Path) -> tuple[float, int, int, float]:
    """(seconds, bytes moved, keys sent, load seconds) for one size."""
    import subprocess

    ports, procs = start_cluster(ROOT, f"s{size}-", scratch, [])
    addresses = [f"{HOST}:{port}" for port in ports]
    try:
        load_started = time.monotonic()
        written = trio.run(lambda: load(addresses[0], 0, size, value_size, deadline_s=load_started + deadline_s))
        load_s = time.monotonic() - load_started
        if written < size:
            raise RuntimeError(f"loaded only {written} of {size} keys within {deadline_s:g} s")
        before = handoff_bytes(addresses)
        port = free_port()
        argv = [sys.executable, "-m", "dynd", "--name", f"s{size}-3", "--listen", f"{HOST}:{port}", "--data-dir", str(scratch / f"s{size}-3"), "--join", addresses[0]]
        with open(scratch / f"s{size}-3.log", "wb") as log:
            procs.append(subprocess.Popen(argv, cwd=ROOT, stderr=log, stdin=subprocess.DEVNULL))
        started = time.monotonic()
        newcomer = f"s{size}-3"
        everyone = [*addresses, f"{HOST}:{port}"]
        with BlockingClient(addresses[0]) as client:
            while True:
                if time.monotonic() - started > deadline_s:
                    raise RuntimeError(f"handoff of {size} keys not done within {deadline_s:g} s")
                try:
                    settled = rings_agree_with(everyone, newcomer)
                    view = client.cluster_transfers() if settled else None
                except DynError:
                    view = None  # the newcomer is still starting, or a node is busy: ask again
                if view is not None and all(n.answered for n in view.nodes) and len(view.nodes) == 4:
                    if sum(n.partitions_pending for n in view.nodes) == 0:
                        elapsed = time.monotonic() - started
                        break
                time.sleep(POLL_S)  # poll interval; the transfers view is the event we wait for
        keys_sent = sum(n.keys_sent for n in view.nodes)
        moved = handoff_bytes([*addresses, f"{HOST}:{port}"]) - before
        return elapsed, moved, keys_sent, load_s
    finally:
        stop(procs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25000,50000,100000", help="keys loaded before each join")
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--deadline-s", type=float, default=300.0, help="bound on each load and each handoff")
    args = parser.parse_args(argv)
    sizes = [int(text) for text in args.sizes.split(",")]
    print(f"a 4th node joins a loaded 3-node cluster (N=3 R=2 W=2), {args.value_size} B values, idle cluster")
    print("| keys in cluster | load s | handoff s | keys handed off | MB moved | MB/s | s per 1,000 keys |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="dynd-handoff-") as scratch_dir:
        for size in sizes:
            seconds, moved, keys_sent, load_s = measure(size, args.value_size, args.deadline_s, Path(scratch_dir))
            print(
                f"| {size:,} | {load_s:.0f} | {seconds:.1f} | {keys_sent:,} | {moved / 1e6:,.1f} | {moved / 1e6 / seconds:,.2f} | {seconds / size * 1000:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
