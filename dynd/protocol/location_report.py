"""Where a ring keeps its copies: members per host and zone, and which placement guarantees hold.

A pure function of a ring (its owners and its nodes' locations) and N, shared by the CLI
(`dynctl ring status`, `cluster status`, `ring key`) and the node (a membership change's plan), so
both say the same thing about the same ring. Hosts and zones are `dynd.protocol.locations`'s; the
preference lists are the protocol's (`dynd.protocol.keyspace`).

What it reports, per level (host, zone):
- `holds`: every partition's N primaries sit on N distinct groups. The preference lists make it so
  whenever the ring has at least N groups; with fewer, no placement can, and `reasons` says so.
- `partitions_sharing`: partitions whose primaries share a group at this level (0 when it holds).
- `windows_repeating`: partitions whose window of N consecutive owners repeats a group. Their
  preference lists skip ahead to hold distinct groups, so the nodes further along carry more
  copies than their partitions: claim keeps this at 0 when `spread_possible`.
- `spread_possible` (`groups_can_be_distinct`): claim promises windows without repeats: at
  least N groups, and none whose members at the ceiling share would own more than 3/5 of Q/N
  partitions. A group owning more than Q/N is named in `reasons`.
Per member, `replicas` counts the partitions it is a primary of: N times its partitions when
every window is distinct; `load_max` is the largest over the mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dynd.protocol.keyspace import preference_split
from dynd.protocol.locations import host_of, zone_of

LEVELS = ("host", "zone")


def groups_can_be_distinct(partitions: int, group_sizes: Sequence[int], n_replicas: int) -> bool:
    """Whether claim promises every window of N partitions N distinct groups (hosts or zones), for
    groups of these many members each: at least N groups, and none whose members, each at the
    ceiling share ceil(Q/S), would own more than 3/5 of Q/N partitions.

    A group's partitions must sit N apart, so Q/N bounds what is possible at all. Claim's search,
    with its bounded movement, reaches it reliably up to 3/5 of that bound. Measured over 60,000
    generated clusters (hosts of 1-6 members, 1-6 zones, Q 16 to 256, N 2 to 4), a fresh ring and
    a join onto a ring without repeats: none repeated a window below 3/5; from 0.65 to 0.75 about
    one join in 400 left a window or two (a worker joining a host that already owns nearly its
    Q/N), which the preference lists skip."""
    members = sum(group_sizes)
    if len(group_sizes) < n_replicas or n_replicas > partitions or members == 0:
        return False
    return 5 * max(group_sizes) * -(-partitions // members) * n_replicas <= 3 * partitions


@dataclass(frozen=True, slots=True)
class GroupView:
    """One host or zone: its members (nodes of the ring), the partitions they own, and the
    partitions they are primaries of (`replicas`)."""

    name: str
    members: tuple[str, ...]
    partitions: int
    replicas: int


@dataclass(frozen=True, slots=True)
class LevelReport:
    level: str  # "host" or "zone"
    groups: tuple[GroupView, ...]
    holds: bool
    partitions_sharing: int
    windows_repeating: int
    spread_possible: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LocationReport:
    partitions: int
    n: int
    members: tuple[str, ...]  # the ring's nodes, sorted
    locations: dict[str, str]  # node -> location, "" for unknown
    unknown: tuple[str, ...]  # nodes without a known location (each a host and zone of its own)
    replicas: dict[str, int]  # node -> partitions it is a primary of
    host: LevelReport
    zone: LevelReport

    @property
    def load_max(self) -> float:
        """The most copies any member holds over the mean (1.0: every member holds its share)."""
        mean = sum(self.replicas.values()) / len(self.replicas) if self.replicas else 0.0
        return max(self.replicas.values()) / mean if mean else 0.0

    def level(self, name: str) -> LevelReport:
        return self.host if name == "host" else self.zone


def location_report(owners: Sequence[str], locations: Mapping[str, str], n_replicas: int) -> LocationReport:
    """The report for the ring whose partition p is owned by `owners[p]`, its nodes at
    `locations` (missing or "": unknown), and N = `n_replicas`."""
    q = len(owners)
    if q == 0:
        raise ValueError("a ring has at least one partition")
    if n_replicas < 1:
        raise ValueError(f"n_replicas must be at least 1, got {n_replicas}")
    nodes = tuple(sorted(set(owners)))
    where = {node: locations.get(node, "") for node in nodes}
    place = {
        "host": {node: host_of(node, where[node]) for node in nodes},
        "zone": {node: zone_of(node, where[node]) for node in nodes},
    }
    known = {node: loc for node, loc in where.items() if loc}
    owned = dict.fromkeys(nodes, 0)
    for owner in owners:
        owned[owner] += 1
    totals = {level: len(set(place[level].values())) for level in LEVELS}
    replicas = dict.fromkeys(nodes, 0)
    sharing = dict.fromkeys(LEVELS, 0)
    repeating = dict.fromkeys(LEVELS, 0)
    wanted = min(n_replicas, len(nodes))
    for p in range(q):
        primaries = _primaries(owners, p, n_replicas, known, place, totals, len(nodes))
        window = [owners[(p + k) % q] for k in range(min(n_replicas, q))]
        for node in primaries:
            replicas[node] += 1
        for level in LEVELS:
            if len({place[level][node] for node in primaries}) < wanted:
                sharing[level] += 1
            if len({place[level][node] for node in window}) < min(n_replicas, totals[level]) or n_replicas > q:
                repeating[level] += 1
    levels = {
        level: _level_report(level, nodes, place[level], owned, replicas, q, n_replicas, sharing[level], repeating[level])
        for level in LEVELS
    }
    return LocationReport(
        partitions=q,
        n=n_replicas,
        members=nodes,
        locations=where,
        unknown=tuple(node for node in nodes if not where[node]),
        replicas=replicas,
        host=levels["host"],
        zone=levels["zone"],
    )


def _primaries(
    owners: Sequence[str],
    partition: int,
    n_replicas: int,
    known: Mapping[str, str],
    place: dict[str, dict[str, str]],
    totals: dict[str, int],
    node_count: int,
) -> tuple[str, ...]:
    """The partition's primaries, walking only as far as the first N picks need: until the walk
    has met every zone (or N of them), N hosts (or all) and N nodes (or all). On that prefix
    `preference_split` picks the same first N as on the whole walk."""
    q = len(owners)
    zones_needed = min(n_replicas, totals["zone"])
    hosts_needed = min(n_replicas, totals["host"])
    nodes_needed = min(n_replicas, node_count)
    met: dict[str, None] = {}
    zones: set[str] = set()
    hosts: set[str] = set()
    for step in range(q):
        node = owners[(partition + step) % q]
        if node in met:
            continue
        met[node] = None
        zones.add(place["zone"][node])
        hosts.add(place["host"][node])
        if len(zones) >= zones_needed and len(hosts) >= hosts_needed and len(met) >= nodes_needed:
            break
    return preference_split(tuple(met), n_replicas, known)[0]


def _level_report(
    level: str,
    nodes: tuple[str, ...],
    group_of: dict[str, str],
    owned: dict[str, int],
    replicas: dict[str, int],
    partitions: int,
    n_replicas: int,
    sharing: int,
    repeating: int,
) -> LevelReport:
    members: dict[str, list[str]] = {}
    for node in nodes:
        members.setdefault(group_of[node], []).append(node)
    groups = tuple(
        GroupView(
            name=name,
            members=tuple(group),
            partitions=sum(owned[node] for node in group),
            replicas=sum(replicas[node] for node in group),
        )
        for name, group in sorted(members.items())
    )
    possible = groups_can_be_distinct(partitions, [len(group.members) for group in groups], n_replicas)
    reasons: list[str] = []
    if len(groups) < n_replicas:
        reasons.append(
            f"only {len(groups)} {level}{'s' if len(groups) != 1 else ''} for N={n_replicas} copies: "
            f"some copies of every key share a {level}"
        )
    else:
        for group in groups:
            if group.partitions * n_replicas > partitions:
                reasons.append(
                    f"{level} {group.name} owns {group.partitions} of {partitions} partitions, more than Q/N = "
                    f"{partitions / n_replicas:.0f}: windows repeat it, and preference lists skip ahead, so other "
                    f"{level}s' members hold more copies than their partitions"
                )
        if repeating and not reasons and not possible:
            reasons.append(
                f"the {level}s' sizes do not let every window of {n_replicas} partitions hold {n_replicas} "
                f"distinct {level}s: {repeating} windows repeat one, and their preference lists skip ahead"
            )
    return LevelReport(
        level=level,
        groups=groups,
        holds=sharing == 0,
        partitions_sharing=sharing,
        windows_repeating=repeating,
        spread_possible=possible,
        reasons=tuple(reasons),
    )
