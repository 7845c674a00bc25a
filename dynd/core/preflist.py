"""Preference lists: who holds a key.

Walk the partitions clockwise from the key's own, collecting each owner the first time it is met.
The first N distinct nodes are the key's primaries; the rest, in the order the walk meets them, are
its fallbacks (used by sloppy quorum). Every node and the client compute the same list from the
same ring.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from dynd.core.partition import partition_of
from dynd.core.ring import Ring

# Lists are computed once per (ring, N) and partition; a ring changes rarely.
RINGS_CACHED_MAX = 4


@dataclass(frozen=True, slots=True)
class PreferenceList:
    partition: int
    primaries: tuple[str, ...]
    fallbacks: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.primaries + self.fallbacks


def _walk(ring: Ring, partition: int, n_replicas: int) -> PreferenceList:
    seen: dict[str, None] = {}
    owners = ring.owners
    count = len(owners)
    for step in range(count):
        seen.setdefault(owners[(partition + step) % count], None)
    order = tuple(seen)
    return PreferenceList(partition, order[:n_replicas], order[n_replicas:])


@lru_cache(maxsize=RINGS_CACHED_MAX)
def _all_lists(ring: Ring, n_replicas: int) -> tuple[PreferenceList, ...]:
    return tuple(_walk(ring, partition, n_replicas) for partition in range(ring.partitions))


def preference_list(ring: Ring, partition: int, n_replicas: int) -> PreferenceList:
    if not 0 <= partition < ring.partitions:
        raise ValueError(f"partition {partition} outside 0..{ring.partitions - 1}")
    return _all_lists(ring, n_replicas)[partition]


def preference_list_for_key(ring: Ring, key: bytes, n_replicas: int) -> PreferenceList:
    return preference_list(ring, partition_of(key, ring.partitions), n_replicas)
