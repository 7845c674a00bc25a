"""Preference lists: which nodes hold a key (DESIGN.md section 3; the paper's section 4.3).

Rules:
- Walk the partitions clockwise from the key's own: p, p+1, ..., Q-1, 0, ... Each node is counted
  when the walk first meets one of its partitions.
- Without locations the first N distinct nodes are the primaries. With locations (the ring's) the
  primaries are the first N nodes of the walk on distinct hosts, so that losing one host loses at
  most one copy of any key whenever the ring has N hosts; with fewer hosts, every host and then
  more nodes in walk order. primaries[0] owns p, and coordinates the key's requests. When the
  ring has fewer than N nodes, every node is a primary.
- Every other node of the ring is a fallback: in walk order without locations; with them, nodes
  on zones, then hosts, the list does not have yet come first. A sloppy quorum sends to the first
  healthy fallbacks in place of unreachable primaries.
- Every node and the client compute the same lists from the same ring: the walk and the split are
  the protocol's (`dynd.protocol.keyspace.preference_order`, `preference_split`), which the client
  library uses too.
- Everything that asks which nodes hold a partition (requests, handoff, hints, anti-entropy, the
  reaper, plans) asks this module; none assumes the primaries are the owners of p..p+N-1.

The lists of a ring are built lazily, one partition at a time, and kept per (ring, N) for the few
most recent rings, because a request asks for one on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from dynd.core.partition import partition_of
from dynd.core.ring import Ring
from dynd.protocol.keyspace import preference_order, preference_split

# Rings whose lists are kept: the current ring and a few older ones still in use during a change.
CACHED_RINGS = 4


@dataclass(frozen=True, slots=True)
class PreferenceList:
    partition: int
    primaries: tuple[str, ...]
    fallbacks: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        """Primaries then fallbacks: every node of the ring, each once."""
        return self.primaries + self.fallbacks


def preference_list(ring: Ring, partition: int, n_replicas: int) -> PreferenceList:
    if not 0 <= partition < ring.partitions:
        raise ValueError(f"partition {partition} is outside 0..{ring.partitions - 1}")
    if n_replicas < 1:
        raise ValueError(f"n_replicas must be at least 1, got {n_replicas}")
    lists = _lists_of(ring, n_replicas)
    found = lists[partition]
    if found is None:
        # A race between two threads filling the same slot builds two equal lists; either is fine.
        found = lists[partition] = _walk(ring, partition, n_replicas)
    return found


def preference_list_for_key(ring: Ring, key: bytes, n_replicas: int) -> PreferenceList:
    return preference_list(ring, partition_of(key, ring.partitions), n_replicas)


@lru_cache(maxsize=CACHED_RINGS)
def _lists_of(ring: Ring, n_replicas: int) -> list[PreferenceList | None]:
    # Ring caches its hash, so this lookup costs O(1), not O(Q).
    return [None] * ring.partitions


@lru_cache(maxsize=CACHED_RINGS)
def _locations_of(ring: Ring) -> dict[str, str]:
    return dict(ring.locations)


def _walk(ring: Ring, partition: int, n_replicas: int) -> PreferenceList:
    order = preference_order(ring.owners, partition, len(ring.nodes))
    primaries, fallbacks = preference_split(order, n_replicas, _locations_of(ring))
    return PreferenceList(partition=partition, primaries=primaries, fallbacks=fallbacks)
