"""Where a key lives on a ring: its partition, and the nodes that hold that partition.

Rules (DESIGN.md section 3; the paper's sections 4.2-4.3):
- A key's ring position is MD5(key) as a 128-bit integer; with Q equal partitions (Q a power of
  two, at most 65536) the key falls in partition position * Q >> 128.
- A partition's preference order walks the partitions clockwise from it: p, p+1, ..., Q-1, 0, ...
  and counts each node when the walk first meets one of its partitions. The first N nodes are the
  primaries, the rest the fallbacks.

Every node and every client must compute the same answer from the same ring (a `ring_ok` reply
gives a client the owners), so this is part of the protocol: the core's ring modules
(`dynd.core.partition`, `dynd.core.preflist`) and the client's key placement both use this one copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

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
