"""Key placement on the ring: position = MD5(key) as a 128-bit integer; Q equal partitions."""

from __future__ import annotations

import hashlib

POSITION_BITS = 128


def ring_position(key: bytes) -> int:
    return int.from_bytes(hashlib.md5(key, usedforsecurity=False).digest(), "big")


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of `key` among `partitions` (a power of two): position * Q >> 128."""
    return (ring_position(key) * partitions) >> POSITION_BITS


def check_partition_count(partitions: int) -> None:
    if partitions < 1 or partitions & (partitions - 1) or partitions > 65536:
        raise ValueError(f"partition count must be a power of two in 1..65536, got {partitions}")
