"""Where a key lives on a ring: its partition, and the nodes that hold that partition.

Rules (DESIGN.md section 3; the paper's sections 4.2-4.3):
- A key's ring position is MD5(key) as a 128-bit integer; with Q equal partitions (Q a power of
  two, at most 65536) the key falls in partition position * Q >> 128.
- A partition's preference order walks the partitions clockwise from it: p, p+1, ..., Q-1, 0, ...
  and counts each node when the walk first meets one of its partitions.
- Without locations the first N nodes of the walk are the primaries, the rest the fallbacks.
- With locations (`dynd.protocol.locations`; a node whose location is unknown is a host and a zone
  of its own) the list skips positions to hold distinct places, as the paper's list skips them to
  hold distinct physical nodes (section 4.3). It is picked greedily along the walk: each pick is
  the next node on a zone the list does not have yet; when no node brings a new zone, the next on
  a new host; then the next node. The first N picks are the primaries, listed in walk order (the
  owner of p first); the other picks, in order, are the fallbacks. So the primaries sit on
  min(N, zones) distinct zones and min(N, hosts) distinct hosts of the ring, and a fallback
  brings a zone, else a host, the list lacks before one that brings neither.
  When every window of N partitions already has N distinct zones, or fewer zones than N and N
  distinct hosts covering every zone (claim makes windows so whenever it can), the primaries are
  exactly the first N nodes of the walk, as without locations.

Every node and every client must compute the same answer from the same ring (a `ring_ok` reply
gives a client the owners and the locations), so this is part of the protocol: the core's ring
modules (`dynd.core.partition`, `dynd.core.preflist`) and the client's key placement both use this
one copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from dynd.protocol.locations import host_of, zone_of

POSITION_BITS = 128
PARTITIONS_MAX = 65536


def ring_position(key: bytes) -> int:
    return int.from_bytes(hashlib.md5(key, usedforsecurity=False).digest(), "big")


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of `key` among `partitions` (a power of two): position * Q >> 128."""
    return (ring_position(key) * partitions) >> POSITION_BITS


def check_partition_count(partitions: int) -> None:
    if partitions < 1 or partitions & (partitions - 1) or partitions > PARTITIONS_MAX:
        raise ValueError(f"partition count must be a power of two in 1..{PARTITIONS_MAX}, got {partitions}")


def preference_order(owners: Sequence[str], partition: int, node_count: int) -> tuple[str, ...]:
    """Every node of the ring (`node_count` distinct owners) once, in the order the clockwise walk
    from `partition` meets them; the first N are the partition's primaries."""
    partitions = len(owners)
    met: dict[str, None] = {}  # insertion-ordered set
    for step in range(partitions):
        met.setdefault(owners[(partition + step) % partitions])
        if len(met) == node_count:
            break
    return tuple(met)


def preference_split(
    order: Sequence[str], n_replicas: int, locations: Mapping[str, str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(primaries, fallbacks) of a partition whose walk meets the ring's nodes in `order`
    (`preference_order`); `locations` maps nodes to their location paths (missing or "": unknown).

    The list is picked greedily: each time the next node in walk order on a zone the list does not
    have yet, else on a host it does not have yet, else the next node in walk order. The first N
    picks are the primaries (given in walk order, so the owner of the partition comes first), the
    rest the fallbacks in the order picked."""
    if not locations:
        return tuple(order[:n_replicas]), tuple(order[n_replicas:])
    zones = [zone_of(node, locations.get(node, "")) for node in order]
    hosts = [host_of(node, locations.get(node, "")) for node in order]
    picked: list[int] = []
    taken = [False] * len(order)
    seen_zones: set[str] = set()
    seen_hosts: set[str] = set()
    # Each round takes, in walk order, the nodes that still bring a new zone (then host, then
    # node); taking one may make later ones of its zone or host bring nothing new.
    for brings in (zones, hosts, None):
        for i in range(len(order)):
            if taken[i]:
                continue
            if brings is zones and zones[i] in seen_zones:
                continue
            if brings is hosts and hosts[i] in seen_hosts:
                continue
            taken[i] = True
            seen_zones.add(zones[i])
            seen_hosts.add(hosts[i])
            picked.append(i)
    primaries = tuple(order[i] for i in sorted(picked[:n_replicas]))
    return primaries, tuple(order[i] for i in picked[n_replicas:])
