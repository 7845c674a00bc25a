"""The ring: which node owns each of the Q partitions (DESIGN.md section 3, the paper's strategy 3).

Rules:
- Q (`partitions`) is a power of two, fixed when the cluster is created; `owners[p]` names the node
  owning partition p, for every p in 0..Q-1. A ring is immutable: a membership change makes a new one
  (see claim.py), and every node that computes it from the same inputs gets an equal ring.
- The ring's nodes are the distinct owners. A member that owns nothing (more members than
  partitions) is not on the ring.
- Windows: the N partitions p, p+1, ..., p+N-1 (wrapping past Q-1 to 0) hold a key's replicas when
  each has a different owner. `repeated_windows` counts the windows where some node appears twice;
  when N > Q a window meets some partition twice, so every window repeats.
- Locations (issue 17): a ring may carry the location path of each of its nodes
  (`dynd.protocol.locations`), because where a node runs decides which nodes may hold a key's
  copies together (preflist.py). A node without one has the unknown location and counts as a host
  and a zone of its own. The locations are part of the ring: equal rings have equal owners and
  equal locations.
- The plain form is `[nodes, owner_indexes]`: the sorted distinct owners, then one index into that
  list per partition; a ring with any known location adds a third element, each node's location
  ("" for unknown) in the order of `nodes`. Each name crosses the wire once, and the form is
  canonical: equal rings give equal plain forms, and a ring without locations has the form it had
  before locations existed. `from_plain` checks everything before building a ring.

Only this module reads a ring's insides; the derived views (nodes, partitions per node) are built
once, when the ring is made, because membership and request code ask for them often.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dynd.core.partition import check_partition_count
from dynd.protocol.locations import LocationError, check_location, host_of, zone_of


@dataclass(frozen=True, slots=True)
class Ring:
    partitions: int
    owners: tuple[str, ...]
    # (node, location) for each node of the ring whose location is known, sorted by node. Build it
    # with `Ring.placed` from any mapping; the constructor accepts only this canonical form.
    locations: tuple[tuple[str, str], ...] = ()
    # Derived once: a ring with Q = 65536 would otherwise rescan its owners on every call.
    _nodes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _partitions_by_node: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _location_by_node: dict[str, str] = field(init=False, repr=False, compare=False)
    # Hashing a tuple of Q names costs O(Q) each time; preflist's per-ring cache hashes per request.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_partition_count(self.partitions)
        if type(self.owners) is not tuple:
            raise TypeError(f"ring owners must be a tuple, got {type(self.owners).__name__}")
        if len(self.owners) != self.partitions:
            raise ValueError(f"a ring of {self.partitions} partitions needs {self.partitions} owners, got {len(self.owners)}")
        by_node: dict[str, list[int]] = {}
        for partition, owner in enumerate(self.owners):
            if type(owner) is not str:
                raise TypeError(f"partition {partition}: owner must be a str, got {type(owner).__name__}")
            by_node.setdefault(owner, []).append(partition)
        nodes = tuple(sorted(by_node))
        object.__setattr__(self, "_nodes", nodes)
        object.__setattr__(self, "_partitions_by_node", {node: tuple(by_node[node]) for node in nodes})
        object.__setattr__(self, "_location_by_node", self._checked_locations(by_node))
        object.__setattr__(self, "_hash", hash((self.partitions, self.owners, self.locations)))

    def _checked_locations(self, by_node: dict[str, list[int]]) -> dict[str, str]:
        if type(self.locations) is not tuple:
            raise TypeError(f"ring locations must be a tuple of (node, location) pairs, got {type(self.locations).__name__}")
        previous: str | None = None
        found: dict[str, str] = {}
        for entry in self.locations:
            if type(entry) is not tuple or len(entry) != 2:
                raise TypeError("each ring location must be a (node, location) pair")
            node, location = entry
            if type(node) is not str or node not in by_node:
                raise ValueError(f"location given for {node!r}, which owns no partition of this ring")
            if previous is not None and node <= previous:
                raise ValueError("ring locations must be sorted by node, each node once")
            try:
                check_location(location)
            except LocationError as error:
                raise ValueError(f"location of {node!r}: {error}") from None
            found[node] = location
            previous = node
        return found

    @staticmethod
    def placed(partitions: int, owners: tuple[str, ...], locations: Mapping[str, str] | None) -> Ring:
        """The ring of `owners` with the known locations of its nodes taken from `locations`
        (entries for other names and empty locations are left out)."""
        nodes = set(owners)
        known = sorted((node, where) for node, where in (locations or {}).items() if node in nodes and where)
        return Ring(partitions, owners, tuple(known))

    def __hash__(self) -> int:
        return self._hash

    def owner(self, partition: int) -> str:
        if not 0 <= partition < self.partitions:
            raise IndexError(f"partition {partition} is outside 0..{self.partitions - 1}")
        return self.owners[partition]

    @property
    def nodes(self) -> tuple[str, ...]:
        """The distinct owners, sorted."""
        return self._nodes

    def partitions_of(self, node: str) -> tuple[int, ...]:
        """The partitions `node` owns, ascending; empty for a node not on the ring."""
        return self._partitions_by_node.get(node, ())

    def location_of(self, node: str) -> str:
        """`node`'s location path; "" when it is unknown (or the node is not on the ring)."""
        return self._location_by_node.get(node, "")

    def host_of(self, node: str) -> str:
        """The host `node` runs on (`dynd.protocol.locations.host_of`)."""
        return host_of(node, self._location_by_node.get(node, ""))

    def zone_of(self, node: str) -> str:
        """The zone `node` runs in (`dynd.protocol.locations.zone_of`)."""
        return zone_of(node, self._location_by_node.get(node, ""))

    def counts(self) -> dict[str, int]:
        """Partitions per node, for every node on the ring (a fresh dict the caller may change)."""
        return {node: len(owned) for node, owned in self._partitions_by_node.items()}

    def moved_from(self, old: Ring) -> tuple[int, ...]:
        """The partitions whose owner differs between `old` and this ring."""
        if old.partitions != self.partitions:
            raise ValueError(f"cannot compare rings of {old.partitions} and {self.partitions} partitions")
        return tuple(p for p, (before, after) in enumerate(zip(old.owners, self.owners)) if before != after)

    def to_plain(self) -> list[Any]:
        index = {node: i for i, node in enumerate(self._nodes)}
        plain: list[Any] = [list(self._nodes), [index[owner] for owner in self.owners]]
        if self.locations:
            plain.append([self.location_of(node) for node in self._nodes])
        return plain

    @staticmethod
    def from_plain(plain: Any) -> Ring:
        """The inverse of `to_plain`; raises ValueError on anything but a canonical plain ring."""
        if not isinstance(plain, list | tuple) or len(plain) not in (2, 3):
            raise ValueError("a plain ring is a list [nodes, owner_indexes] or [nodes, owner_indexes, locations]")
        nodes, indexes = plain[0], plain[1]
        if not isinstance(nodes, list | tuple) or not all(type(node) is str for node in nodes):
            raise ValueError("a plain ring's nodes must be a list of strings")
        if any(a >= b for a, b in zip(nodes, nodes[1:])):
            raise ValueError("a plain ring's nodes must be sorted and distinct")
        if not isinstance(indexes, list | tuple):
            raise ValueError("a plain ring's owner indexes must be a list")
        # bool is an int subclass; True must not pass for node 1.
        if not all(type(i) is int and 0 <= i < len(nodes) for i in indexes):
            raise ValueError(f"a plain ring's owner indexes must be integers in 0..{len(nodes) - 1}")
        if len(set(indexes)) != len(nodes):
            raise ValueError("every node of a plain ring must own at least one partition")
        locations: tuple[tuple[str, str], ...] = ()
        if len(plain) == 3:
            where = plain[2]
            if not isinstance(where, list | tuple) or len(where) != len(nodes) or not all(type(w) is str for w in where):
                raise ValueError("a plain ring's locations must be a list of strings, one per node")
            if not any(where):
                raise ValueError("a plain ring without known locations has no locations element")
            locations = tuple((node, w) for node, w in zip(nodes, where) if w)
        try:
            return Ring(len(indexes), tuple(nodes[i] for i in indexes), locations)
        except (TypeError, ValueError) as error:
            raise ValueError(f"invalid plain ring: {error}") from None


def window_repeats(owners: tuple[str, ...] | list[str], start: int, n_replicas: int) -> bool:
    """Whether the N partitions from `start` (wrapping) fail to have N distinct owners."""
    q = len(owners)
    if n_replicas > q:
        return True
    seen = {owners[(start + step) % q] for step in range(n_replicas)}
    return len(seen) < n_replicas


def repeated_windows(ring: Ring, n_replicas: int) -> int:
    """How many of the Q windows of N consecutive partitions hold some node more than once."""
    if n_replicas < 1:
        raise ValueError(f"n_replicas must be at least 1, got {n_replicas}")
    return sum(window_repeats(ring.owners, start, n_replicas) for start in range(ring.partitions))
