"""CPU per claim() call, and what the claimed rings look like, as a cluster grows and shrinks.

    python tests/bench/claim_cost.py [--partitions 1024] [--replicas 3] [--members 200]
        [--hosts 50] [--zones 5] [--leaves 20] [--no-locations]

Membership replays call claim once per event, so its cost per call is what a membership change
costs every node. The history: a fresh ring of N members, joins one at a time up to --members,
then --leaves leaves (every 7th member by join order). Members are the workers of --hosts hosts
(host-major join order: a host's workers join one after another, as `dynd --workers K` starts
them), the hosts spread round-robin over --zones zones. With --no-locations (or on a revision
whose claim takes no locations) the same history runs without them.

Prints ms per call for the fresh claim, the joins and the leaves (mean and max), and, at the end,
how many windows of N partitions repeat a node, a host or a zone, the partitions per member, and
how many partitions each member is a primary of (the preference lists, which skip repeated
hosts and zones).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Callable

from dynd.core.claim import claim
from dynd.core.preflist import preference_list
from dynd.core.ring import Ring


def member_names(members: int, hosts: int, zones: int) -> tuple[list[str], dict[str, str]]:
    per_host = -(-members // hosts)
    names: list[str] = []
    locations: dict[str, str] = {}
    for index in range(members):
        host, worker = divmod(index, per_host)
        name = f"h{host:03d}-w{worker}"
        names.append(name)
        locations[name] = f"zone-{host % zones}/host-{host:03d}"
    return names, locations


def window_repeats(ring: Ring, n: int, group: Callable[[str], str]) -> int:
    q = ring.partitions
    return sum(len({group(ring.owners[(p + k) % q]) for k in range(n)}) < n for p in range(q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=1024)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--zones", type=int, default=5)
    parser.add_argument("--leaves", type=int, default=20)
    parser.add_argument("--no-locations", action="store_true")
    args = parser.parse_args(argv)
    q, n = args.partitions, args.replicas
    names, locations = member_names(args.members, args.hosts, args.zones)
    with_locations = not args.no_locations and "locations" in inspect.signature(claim).parameters
    extra = {"locations": locations} if with_locations else {}

    def timed(previous: Ring | None, members: list[str]) -> tuple[Ring, float]:
        started = time.process_time()
        ring = claim(previous, members, partitions=q, n_replicas=n, **extra)
        return ring, (time.process_time() - started) * 1000

    members = names[:n]
    ring, fresh_ms = timed(None, members)
    join_ms: list[float] = []
    for size in range(n + 1, args.members + 1):
        members = names[:size]
        ring, spent = timed(ring, members)
        join_ms.append(spent)
    leave_ms: list[float] = []
    for leaver in names[::7][: args.leaves]:
        members = [m for m in members if m != leaver]
        ring, spent = timed(ring, members)
        leave_ms.append(spent)
    _, fresh_all_ms = timed(None, members)

    print(f"claim at Q={q} N={n}: {args.members} members on {args.hosts} hosts in {args.zones} zones, "
          f"locations {'passed' if with_locations else 'not passed'}")
    print(f"  fresh ring of {n}: {fresh_ms:.1f} ms; fresh ring of {len(members)}: {fresh_all_ms:.1f} ms")
    print(f"  {len(join_ms)} joins: mean {sum(join_ms) / len(join_ms):.1f} ms, max {max(join_ms):.1f} ms, total {sum(join_ms) / 1000:.2f} s")
    if leave_ms:
        print(f"  {len(leave_ms)} leaves: mean {sum(leave_ms) / len(leave_ms):.1f} ms, max {max(leave_ms):.1f} ms")
    counts = ring.counts()
    print(f"  final ring: {len(members)} members, partitions per member {min(counts.values())}..{max(counts.values())}")
    print(f"  windows of {n} repeating a node: {window_repeats(ring, n, lambda m: m)}, "
          f"a host: {window_repeats(ring, n, lambda m: locations[m])}, "
          f"a zone: {window_repeats(ring, n, lambda m: locations[m].split('/')[0])}")
    replicas: dict[str, int] = dict.fromkeys(members, 0)
    for p in range(q):
        for node in preference_list(ring, p, n).primaries:
            replicas[node] += 1
    mean = n * q / len(members)
    print(f"  replicas per member (partitions it is a primary of): mean {mean:.1f}, "
          f"min {min(replicas.values())}, max {max(replicas.values())} ({max(replicas.values()) / mean:.2f} x mean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
