"""Claim: the ring a membership should have, given the ring it had (DESIGN.md section 3, strategy 3).

Rules, in the order claim applies them:
1. Deterministic. The inputs are the previous ring, the *set* of members, their locations, Q and N. Members are
   deduplicated and sorted by code point, every loop runs over sorted names or partition numbers,
   and the one pseudo-random sequence (rule 6) has a constant seed. Every node given the same inputs
   computes an equal ring, whatever order the members arrive in and whatever the hash seed.
2. Balance. With S members every member owns floor(Q/S) or ceil(Q/S) partitions (when S > Q some
   own none). Members already holding a ceiling share keep it, most first then by name, while
   ceilings last (with locations, spread over the zones or hosts, rule 7: which members keep them
   moves nothing); the other members end at the floor or the ceiling, whichever placement suits.
3. Minimal movement. A partition moves only if its owner left or is above its share: the departed
   nodes' partitions and each over-share member's excess are released, nothing else. From a
   balanced ring a join moves the new node's share (at most ceil(Q/(S+1))), a leave moves exactly
   the leaver's partitions, and a replacement moves exactly the leaver's partitions. A claim that
   adds a member may move up to `join_slack(Q, N)` = 2N more, only to make windows distinct (rule 4).
4. Distinct windows. Each window of N consecutive partitions (wrapping) should have N different
   owners, so that a key's N primaries are exactly its window. Possible only if S >= N and
   ceil(Q/S) * N <= Q (a member with ceil(Q/S) partitions needs N-1 others between each two of them):
   `windows_can_be_distinct`. Claim gets there in three steps:
   - Donors give up partitions at least N apart from each other and from the departed nodes'
     partitions: those that repeat within a window first, else where the next of the evenly
     spaced releases is due, so that receivers' new partitions start far apart.
   - Released partitions go to receivers by a maximum bipartite matching (a receiver may take p only
     if it owns nothing within N-1 of p), within each receiver's floor and ceiling. From a ring
     with no repeats, one leaver's partitions are N apart, so the matching alone decides whether
     the leave can keep windows distinct; what it cannot place goes where it repeats least.
   - A local search swaps the owners of two partitions, or hands a partition from a member at the
     ceiling to one at the floor (both keep the balance), to remove repeats: first only moves that
     move no extra partition (which partitions a donor gives up and which receiver gets which are
     free choices); then, only if the membership gained a member, moves that cost extra movement,
     cheapest first, at most `join_slack(Q, N)` = 2N partitions beyond the minimum. A claim that
     only removes members never moves more than its minimum, even if a window then repeats.
   The search examines a bounded number of candidate moves (a constant plus 16 per partition), so
   a hopeless layout costs bounded time, the same on every node.
5. With S < N every window repeats some node whatever claim does. Claim keeps the layout it has
   (round-robin for a fresh ring, which keeps a node's partitions as far apart as S allows).
6. A fresh ring (no previous) is laid out in laps over the sorted members, the members below the
   ceiling each sitting out one lap, then mixed: owners of pseudo-random pairs of partitions are
   swapped wherever that repeats nothing. Round-robin would give each node the same neighbours all
   round the ring, so when one left only the nodes never beside it could take its partitions.
   With locations the laps follow an order whose neighbours differ in zone, then host.
7. Locations (issue 17; `dynd.protocol.locations`: the whole path is the host, the first part the
   zone, an unknown location a host and zone of the member's own). Windows should also hold N
   distinct hosts and N distinct zones. Rules 4 and 6 count repeats at three levels, node, host
   and zone (`_Sites`), with weights such that no move trades a repeated node for distinct hosts,
   nor a repeated host for distinct zones; a level is counted when it has at least N groups and
   none so big that its members at the floor share would own more than Q/N. Released partitions
   are matched tier by tier (no zone repeated, then no host, then no node), donors give up first
   what a receiver can take without a repeat, and the paid moves go to the worst repeats first.
   With exactly N groups at the coarsest counted level (three zones, N = 3), distinct windows
   need the group of partition p to follow p mod N; a phase (`_Sites.choose_phase`) says which
   group each residue holds, a fresh ring is laid out in it, and each partition out of it costs
   one more, so that joins move the ring towards it. Claim promises no repeated host (zone) in any
   window after a fresh claim or a join onto a ring without one, whenever
   `groups_can_be_distinct`: at least N hosts (zones), none whose members at the ceiling share
   would own more than 3/5 of Q/N. Without locations only the node level is counted, with weight
   1, and every choice is the one claim made before locations existed.

A repeated window costs no replication: the preference list walks on until it has N distinct nodes,
and with locations N distinct zones, else hosts (preflist.py). It only shifts a little load from
the repeated node to the next one along. So whatever claim achieves, losing one host (zone) loses
at most one copy of any key whenever the ring has N hosts (zones).

Measured (tests/property/test_ring_claim.py asserts the first three; Q in {8, 64, 256} and more):
- Fresh rings have no repeated window whenever `windows_can_be_distinct`: every N <= 7, Q <= 512
  and S up to 132 (two cases with N = 8 keep a few).
- A join or a replacement on a ring with no repeated window leaves none, whenever possible.
- A ring grown one join at a time from N nodes has none at every size where that is possible, for
  N <= 4. (S = N is impossible when N does not divide Q; for N = 5 the second join clears what
  the first could not.)
- A leave from a ring with no repeated window (130,000 generated claims): with N = 3 it keeps none
  in 99.5% of leaves once S - N >= 3 after the leave, and in every one once S - N >= 6; with
  S - N <= 2 about half leave some (median 7 windows of Q). With N = 5 it takes S - N >= 5
  (98.5%; 99.4% beyond). A join or replacement on a ring with repeats clears them two times
  out of three.
With locations (tests/property/test_claim_locations.py asserts rules 2, 3 and 7; 60,000 generated
clusters of hosts with 1-6 members in 1-6 zones, Q 16 to 256, N 2 to 4):
- No fresh ring or join onto a ring without repeats left a repeated host or zone while
  `groups_can_be_distinct`; from 0.65 to 0.75 of Q/N about one join in 400 left one or two windows.
- A leave keeps hosts distinct in 95% of 837 generated leaves; the others repeat a few windows.
- Q = 1024, N = 3, a cluster grown one worker at a time to 200 members on 50 hosts
  (tests/bench/claim_cost.py): with 5 zones no window repeats a host or zone; with 3 zones none
  repeats a host and 2 repeat a zone (where the ring wraps: 3 does not divide 1024); the most
  copies on one member is 1.11 x the mean (1.41 before the phase of rule 7). A claim costs
  about 12 ms with 3 zones, 4 ms with 5; 1.8 ms without locations (1.7 before locations).
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction

from dynd.core.partition import check_partition_count
from dynd.core.ring import Ring
from dynd.protocol.location_report import groups_can_be_distinct
from dynd.protocol.locations import LocationError, check_location, host_of, zone_of

__all__ = ["balanced_shares", "claim", "groups_can_be_distinct", "join_slack", "location_groups", "windows_can_be_distinct"]

# The local search's budget, in candidate moves examined per claim.
SEARCH_WORK_BASE = 200_000
SEARCH_WORK_PER_PARTITION = 16
# The fresh ring's mixing: swaps tried per partition, and the constant seed of their sequence.
MIX_ROUNDS = 2
MIX_SEED = 0x5EED_D1A5
# With locations, a partition repeating only a zone looks for a move among all Q partitions
# only while at most this many partitions are in conflict (a ring grown while its zones were too
# uneven to count can have hundreds; looking wide for each would spend the budget on one claim).
WIDE_SEARCH_CONFLICTS_MAX = 32
# Rings with exactly N zones (or hosts) get a phase for up to this many: N! assignments are tried.
PHASE_GROUPS_MAX = 6


def join_slack(partitions: int, n_replicas: int) -> int:
    """Most partitions a claim that adds a member moves beyond the minimum (rule 3), to fix windows: 2N."""
    check_partition_count(partitions)
    return min(partitions, 2 * n_replicas)


def windows_can_be_distinct(partitions: int, members: int, n_replicas: int) -> bool:
    """Whether a balanced ring of `members` nodes can give every window of N partitions N owners."""
    if members < n_replicas or n_replicas > partitions:
        return False
    return -(-partitions // members) * n_replicas <= partitions


def _worth_spreading(partitions: int, group_sizes: Sequence[int], n_replicas: int) -> bool:
    """Whether the search counts repeats of these groups at all: at least N groups, none so big
    that its members at the floor would own more than Q/N. A group just over the bound (three
    zones and Q not a multiple of 3) still gets all but a few windows distinct; one far over it
    would keep most partitions in conflict and only cost search time."""
    members = sum(group_sizes)
    if len(group_sizes) < n_replicas or n_replicas > partitions:
        return False
    return max(group_sizes) * max(partitions // members, 1) * n_replicas <= partitions


def location_groups(members: Iterable[str], locations: Mapping[str, str] | None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(members per host, members per zone), each list sorted, as `dynd.protocol.locations` groups
    them; a member without a known location is a host and a zone of its own."""
    where = locations or {}
    hosts: dict[str, list[str]] = {}
    zones: dict[str, list[str]] = {}
    for member in sorted(set(members)):
        location = where.get(member, "")
        hosts.setdefault(host_of(member, location), []).append(member)
        zones.setdefault(zone_of(member, location), []).append(member)
    return hosts, zones


def balanced_shares(partitions: int, members: int) -> tuple[int, int]:
    """(floor, ceiling) of Q/S: every member of a balanced ring owns one of the two."""
    low, extra = divmod(partitions, members)
    return low, low + (1 if extra else 0)


def claim(
    previous: Ring | None,
    members: Sequence[str],
    *,
    partitions: int,
    n_replicas: int,
    locations: Mapping[str, str] | None = None,
) -> Ring:
    """The ring of `members` (any order, duplicates ignored), moving as little of `previous` as it can.

    `locations` maps members to their location paths (missing or "": unknown); the ring carries
    those of its nodes."""
    check_partition_count(partitions)
    if type(n_replicas) is not int or n_replicas < 1:
        raise ValueError(f"n_replicas must be a positive integer, got {n_replicas!r}")
    if isinstance(members, str):
        raise TypeError("members must be a sequence of node names, not one string")
    if not all(type(member) is str for member in members):
        raise TypeError("member names must be strings")
    nodes = sorted(set(members))
    if not nodes:
        raise ValueError("a ring needs at least one member")
    if previous is not None and previous.partitions != partitions:
        raise ValueError(f"the partition count is fixed: previous ring has {previous.partitions}, asked for {partitions}")
    where = _checked_locations(locations, nodes)
    sites = _Sites(nodes, where, partitions, n_replicas)

    if previous is None:
        order = sites.interleaved()
        ceiling = sites.ceiling_holders(order, partitions % len(nodes), partitions // len(nodes))
        fresh = _fresh_layout(order, partitions, n_replicas, ceiling)
        sites.choose_phase(fresh)
        if sites.phase is not None:
            fresh = sites.phased_layout(order, ceiling, partitions)
        layout = _Layout(fresh, None, nodes, n_replicas, sites)
        slack = 0  # every move is free: nothing was placed before
    else:
        sites.choose_phase(previous.owners)
        layout = _Layout(_rebalance(previous, nodes, n_replicas, sites), list(previous.owners), nodes, n_replicas, sites)
        # A member that joined, or one that moved to another location, may cost extra moves.
        gained = not set(nodes) <= set(previous.nodes)
        moved = any(previous.location_of(node) != where.get(node, "") for node in previous.nodes if node in sites.host)
        slack = join_slack(partitions, n_replicas) if gained or moved else 0
    if len(nodes) >= n_replicas and n_replicas <= partitions:
        layout.spread(slack)
        if previous is None:
            layout.mix()
    return Ring.placed(partitions, tuple(layout.owners), where)


def _checked_locations(locations: Mapping[str, str] | None, nodes: list[str]) -> dict[str, str]:
    """The known locations of `nodes`; a malformed one raises ValueError naming the member."""
    if locations is None:
        return {}
    if not isinstance(locations, Mapping):
        raise TypeError("locations must map member names to location paths")
    known: dict[str, str] = {}
    for node in nodes:
        location = locations.get(node, "")
        if location == "":
            continue
        try:
            known[node] = check_location(location)
        except LocationError as error:
            raise ValueError(f"member {node!r}: {error}") from None
    return known


class _Sites:
    """Where the members run, as the search counts it (rule 7).

    Levels, finest first: node, then host and zone when they group members differently from the
    level before and are worth spreading. `affinity[a][b]` is what one partition of b within N-1 of
    a partition of a costs: the sum of the weights of the levels at which a and b share a group.
    The coarsest counted level weighs 1 and each finer one more than any single move can change
    all coarser ones together, so the search never trades a repeated node for distinct hosts, nor
    a repeated host for distinct zones. Without locations only the node level is counted, with
    weight 1: exactly the repeats of rule 4, so the search makes the moves it made before
    locations existed.
    """

    def __init__(self, nodes: list[str], where: Mapping[str, str], partitions: int, n_replicas: int) -> None:
        self.nodes = nodes
        self.n_replicas = n_replicas
        self.phase: list[str] | None = None  # see choose_phase
        self.affinity: dict[str | None, dict[str, int]]
        if not where:  # no location known: the node level alone, cheaply (a claim per membership event)
            self.levels = [{node: node for node in nodes}]
            self.group = self.levels[0]
            self.located = self.zones_counted = False
            self.weights = [1]
            self.full = 1
            self.affinity = {node: {node: 1} for node in nodes}
            self.affinity[None] = {}
            self.host = self.zone = {node: f"member:{node}" for node in nodes}
            return
        self.host = {node: host_of(node, where.get(node, "")) for node in nodes}
        self.zone = {node: zone_of(node, where.get(node, "")) for node in nodes}
        hosts, zones = location_groups(nodes, where)
        # levels, finest first: one group key per node
        levels: list[dict[str, str]] = [{node: node for node in nodes}]
        group_counts = [len(nodes)]
        self.zones_counted = False
        for key, groups in ((self.host, hosts), (self.zone, zones)):
            if len(groups) < group_counts[-1] and _worth_spreading(partitions, [len(g) for g in groups.values()], n_replicas):
                levels.append(key)
                group_counts.append(len(groups))
                self.zones_counted = key is self.zone
        self.levels = levels
        self.located = len(levels) > 1  # hosts or zones are counted, not only nodes
        neighbours = len(_neighbour_offsets(partitions, n_replicas))
        weights = [1]
        for _ in levels[1:]:
            weights.insert(0, 4 * neighbours * sum(weights) + 1)
        self.weights = weights
        self.affinity = {}
        members_of: list[dict[str, list[str]]] = []
        for key in levels:
            grouped: dict[str, list[str]] = {}
            for node in nodes:
                grouped.setdefault(key[node], []).append(node)
            members_of.append(grouped)
        for node in nodes:
            row: dict[str, int] = {}
            for key, grouped, weight in zip(levels, members_of, weights):
                for other in grouped[key[node]]:
                    row[other] = row.get(other, 0) + weight
            self.affinity[node] = row
        self.affinity[None] = {}
        self.full = sum(weights)  # a node's affinity with itself
        self.group = levels[-1]  # the coarsest counted level

    def choose_phase(self, owners: Sequence[str | None]) -> None:
        """With exactly N groups at the coarsest counted level (three zones and N = 3, the usual
        cloud layout), windows hold N distinct groups only if partition p's group follows p mod N:
        group = sigma(p mod N). A search by swaps cannot shift a whole stretch of the ring from one
        phase to another, so each partition out of its phase costs 1 more (`unary`), which gives
        the search a direction. sigma is the assignment of groups to residues that agrees with
        most of `owners` (ties: the first permutation of the groups by name), so the ring moves
        as little as it can towards it."""
        groups = sorted(set(self.group.values()))
        n = self.n_replicas
        if not self.located or len(groups) != n or not 2 <= n <= PHASE_GROUPS_MAX:
            return
        agree = {(r, g): 0 for r in range(n) for g in groups}
        for p, owner in enumerate(owners):
            if owner is not None and owner in self.group:
                agree[(p % n, self.group[owner])] += 1
        best = max(itertools.permutations(groups), key=lambda sigma: sum(agree[(r, g)] for r, g in enumerate(sigma)))
        self.phase = [best[p % n] for p in range(len(owners))]

    def phased_layout(self, order: list[str], ceiling: set[str], partitions: int) -> list[str]:
        """A fresh ring in the phase: each group's members (in `order`) laid out in laps over the
        partitions of its phase, `_fresh_layout` within the group. When the groups' shares do not
        match their phases' sizes, a partition whose group has run out goes to the group with most
        left (then the first by name), and the search after it mends what that repeats."""
        assert self.phase is not None
        low = partitions // len(order)
        members: dict[str, list[str]] = {}
        for node in order:
            members.setdefault(self.group[node], []).append(node)
        queues: dict[str, deque[str]] = {}
        for group, inside in members.items():
            total = sum(low + (node in ceiling) for node in inside)
            above = ceiling & set(inside)
            # When every member of the group holds a ceiling, the group's own floor is the ceiling.
            queues[group] = deque(_fresh_layout(inside, total, self.n_replicas, above if len(above) < len(inside) else set()))
        owners: list[str] = []
        for p in range(partitions):
            queue = queues[self.phase[p]]
            if not queue:
                queue = queues[min(queues, key=lambda group: (-len(queues[group]), group))]
            owners.append(queue.popleft())
        return owners

    def unary(self, p: int, node: str | None) -> int:
        """1 when `node` at p would be out of the phase (choose_phase), else 0."""
        phase = self.phase
        return 1 if phase is not None and node is not None and self.group[node] != phase[p] else 0

    def ceiling_holders(self, candidates: list[str], count: int, low: int) -> set[str]:
        """`count` of `candidates` (best first) to hold a ceiling share: each time the best one of
        the group (at the coarsest counted level) whose members would own fewest partitions, so
        that zones (or hosts) keep near-equal shares of the ring, as distinct windows need when
        there are about N of them. Without locations: the first `count`."""
        if not self.located:
            return set(candidates[:count])
        key = self.levels[-1]
        size: dict[str, int] = {}
        for node in self.nodes:
            size[key[node]] = size.get(key[node], 0) + 1
        queues: dict[str, list[int]] = {}
        for rank, node in enumerate(candidates):
            queues.setdefault(key[node], []).append(rank)
        heap = [(low * size[group], ranks[0], group) for group, ranks in queues.items()]
        heapq.heapify(heap)
        chosen: set[str] = set()
        taken = {group: 0 for group in queues}
        while heap and len(chosen) < count:
            owned, rank, group = heapq.heappop(heap)
            chosen.add(candidates[rank])
            taken[group] += 1
            if taken[group] < len(queues[group]):
                heapq.heappush(heap, (owned + 1, queues[group][taken[group]], group))
        return chosen

    def tiers(self) -> list[Callable[[str, str | None], bool]]:
        """Whether two members may share a window, strictest first: for each counted level from
        the coarsest, "they share no group at that level" (which implies none at finer levels)."""
        tiers: list[Callable[[str, str | None], bool]] = []
        for key in reversed(self.levels):
            tiers.append(lambda a, b, key=key: b is None or key[a] != key[b])
        return tiers

    def interleaved(self) -> list[str]:
        """The members in an order whose neighbours differ in zone, then in host, as far as the
        group sizes allow: the fresh ring's laps follow it. Without locations: sorted by name."""
        if not self.located:
            return list(self.nodes)
        return _spread_out(
            [
                _spread_out([members for _, members in sorted(hosts.items())])
                for _, hosts in sorted(self._hosts_by_zone().items())
            ]
        )

    def _hosts_by_zone(self) -> dict[str, dict[str, list[str]]]:
        zones: dict[str, dict[str, list[str]]] = {}
        for node in self.nodes:
            zones.setdefault(self.zone[node], {}).setdefault(self.host[node], []).append(node)
        return zones


def _spread_out(groups: list[list[str]]) -> list[str]:
    """The groups' items merged so that each group's items are evenly spaced: item i of a group
    of k, the g-th of G groups, goes at (i + (g + 1/2) / G) / k of the way. Larger groups first, so
    they take the first of equal places; exact fractions keep the order the same everywhere."""
    ordered = sorted(groups, key=lambda items: -len(items))  # stable: equal sizes keep their order
    count = len(ordered)
    placed = [
        (Fraction(2 * i * count + 2 * g + 1, 2 * count * len(items)), g, i, item)
        for g, items in enumerate(ordered)
        for i, item in enumerate(items)
    ]
    return [item for *_, item in sorted(placed)]


def _fresh_layout(nodes: list[str], partitions: int, n_replicas: int, ceiling: set[str]) -> list[str]:
    """Laps over the members in the order given; the members below the ceiling each sit out one lap.

    Plain round-robin puts the Q mod S extra partitions in one run at the end, so when that run is
    shorter than N the first members meet themselves across the wrap. Instead lay out ceil(Q/S) laps
    of S slots and leave out one slot of each floor-share member, the left-out slots spread evenly
    over all the laps: a member's consecutive partitions are then S slots apart less the few
    left-out slots between them. The search after it fixes the rare tight case this misses.
    `ceiling`: the Q mod S members that own the ceiling (without locations, the first ones).
    """
    members = len(nodes)
    low, extra = divmod(partitions, members)
    assert len(ceiling) == extra, "the ceiling holders are the Q mod S"
    if extra == 0 or low == 0 or extra >= n_replicas:
        # Every gap between a member's partitions is S, or S less the floor-share members between
        # its slots in the last, partial lap, so at least Q mod S: both >= N when distinct windows
        # are possible (and with S > Q each member has at most one partition).
        return [nodes[slot % members] for slot in range(members * low)] + [node for node in nodes if node in ceiling]
    laps = low + 1
    slots = laps * members
    sitting_out = [index for index, node in enumerate(nodes) if node not in ceiling]
    left_out: set[int] = set()
    for k, index in enumerate(sitting_out):
        # the lap whose slot for this member lies nearest the k-th evenly spaced point of all slots
        ideal_slot = (2 * k + 1) * slots / (2 * len(sitting_out))
        lap = min(max(round((ideal_slot - index) / members), 0), laps - 1)
        left_out.add(lap * members + index)
    return [nodes[slot % members] for slot in range(slots) if slot not in left_out]


def _rebalance(previous: Ring, nodes: list[str], n_replicas: int, sites: _Sites) -> list[str]:
    """Release the departed nodes' partitions and the members' excess; match them to members below share."""
    q = partitions = previous.partitions
    low, high = balanced_shares(partitions, len(nodes))
    ceilings = partitions - low * len(nodes)
    member_set = set(nodes)
    owners: list[str | None] = [owner if owner in member_set else None for owner in previous.owners]
    offsets = _neighbour_offsets(partitions, n_replicas)
    held = {node: len(previous.partitions_of(node)) for node in nodes}

    # Members holding a ceiling share or more keep the ceiling while ceilings last (most first, then
    # by name; with locations, spread over zones or hosts, `_Sites.ceiling_holders`): each ceiling
    # kept is a partition not moved, whoever keeps it. Everyone else ends at the floor or, when
    # ceilings are left over, at whichever of floor and ceiling the matching below finds best.
    holders = sorted((n for n in nodes if held[n] >= high), key=lambda n: (-held[n], n))
    keeping = sites.ceiling_holders(holders, ceilings, low)
    keep = {node: high if node in keeping else low for node in holders}
    excess = {node: held[node] - keep[node] for node in keep}

    def repeats_at(p: int, node: str | None) -> int:
        if not sites.located:  # affinity is 1 with itself and 0 with the others: count
            return sum(owners[(p + off) % q] == node for off in offsets)
        near = sites.affinity[node]
        return sites.unary(p, node) + sum(near.get(owners[(p + off) % q], 0) for off in offsets)  # type: ignore[arg-type]

    receivers = [node for node in nodes if node not in keep]

    def may_take_under(apart: Callable[[str, str | None], bool]) -> Callable[[int, str], bool]:
        return lambda p, node: all(apart(node, owners[(p + off) % q]) for off in offsets)

    def may_take(p: int, node: str) -> bool:  # without locations: no partition of its own near p
        return not any(owners[(p + off) % q] == node for off in offsets)

    tiers = [may_take_under(apart) for apart in sites.tiers()] if sites.located else [may_take]
    if sites.phase is not None:
        coarsest = tiers[0]
        tiers.insert(0, lambda p, node: not sites.unary(p, node) and coarsest(p, node))
    fits: Callable[[int], bool] | None = None
    if sites.located:
        # With hosts or zones counted, a donor gives up first what some receiver can take
        # without repeating a zone (or host): a new worker of a busy host cannot take just any
        # partition, as a new node can.
        strictest = tiers[0]

        def fits(p: int) -> bool:
            return any(strictest(p, node) for node in receivers)

    _release_excess(owners, excess, previous, n_replicas, repeats_at, fits)

    fewest = {node: max(0, low - held[node]) for node in receivers}
    most = {node: high - held[node] for node in receivers}
    released = [p for p in range(partitions) if owners[p] is None]

    assignment = _match(released, receivers, fewest, most, tiers)
    for p, node in assignment.items():
        owners[p] = node
    _settle_unmatched(owners, released, receivers, fewest, most, repeats_at)
    return owners  # type: ignore[return-value]  # _settle_unmatched filled every None


def _release_excess(
    owners: list[str | None],
    excess: dict[str, int],
    previous: Ring,
    n_replicas: int,
    repeats_at: Callable[[int, str | None], int],
    fits: Callable[[int], bool] | None = None,
) -> None:
    """Choose which partitions the donors give up: `excess[node]` of each donor's, set to None.

    One walk round the ring releases a donor's partition when it is at least N from every other
    release (the departed nodes' partitions are released already) and either repeats within a
    window, so releasing it fixes the repeat, or is where the next of the evenly spaced releases
    is due. The receivers (often one new node) then get partitions N apart. Whatever the walk
    leaves, a donor gives up next its repeating partitions, then those farthest from any release.
    `fits` (with locations): the walk and the repeating round release only partitions some
    receiver can take without a repeat, and the last round prefers them.
    """
    partitions = len(owners)
    total = sum(e for e in excess.values() if e > 0)
    if total == 0:
        return
    released = [p for p in range(partitions) if owners[p] is None]
    count = 0
    last = released[-1] - partitions if released else -partitions
    first = released[0] if released else partitions  # the first release of all, seen again after the wrap
    upcoming = 0  # index into `released` of the next already-released partition at or after p
    for p in range(partitions):
        while upcoming < len(released) and released[upcoming] < p:
            last = released[upcoming]
            upcoming += 1
        owner = owners[p]
        if owner is None or excess.get(owner, 0) <= 0:
            continue
        following = min(released[upcoming] if upcoming < len(released) else 2 * partitions, first + partitions)
        if p - last < n_replicas or following - p < n_replicas:
            continue
        # the k-th release is due at (k + 1/2) * Q / total
        if (repeats_at(p, owner) or 2 * p * total >= (2 * count + 1) * partitions) and (fits is None or fits(p)):
            owners[p] = None
            excess[owner] -= 1
            count += 1
            last = p
            first = min(first, p)
    for node in sorted(excess):
        for p in previous.partitions_of(node):
            if excess[node] > 0 and owners[p] == node and repeats_at(p, node) and (fits is None or fits(p)):
                owners[p] = None
                excess[node] -= 1
    taken = [p for p in range(partitions) if owners[p] is None]
    for node in sorted(excess):
        while excess[node] > 0:
            candidates = [p for p in previous.partitions_of(node) if owners[p] == node]
            best = max(candidates, key=lambda p: (fits is None or fits(p), _distance_to(p, taken, partitions), -p))
            owners[best] = None
            insort(taken, best)
            excess[node] -= 1


def _distance_to(p: int, taken: list[int], partitions: int) -> int:
    """Cyclic distance from p to the nearest of `taken` (sorted), or Q if none."""
    if not taken:
        return partitions
    i = bisect_left(taken, p)
    before = taken[i - 1] if i > 0 else taken[-1] - partitions
    after = taken[i] if i < len(taken) else taken[0] + partitions
    return min(p - before, after - p)


def _match(
    released: list[int],
    receivers: list[str],
    fewest: dict[str, int],
    most: dict[str, int],
    tiers: list[Callable[[int, str], bool]],
) -> dict[int, str]:
    """Give released partitions to receivers, each receiver at least `fewest` and at most `most`,
    only where a tier's `may_take` allows: a maximum bipartite b-matching by augmenting paths.

    The tiers go from strictest (no zone repeated) to loosest (no node repeated). Each tier lets
    the partitions still unplaced go where it allows; a partition placed under a stricter tier
    only ever moves, along an augmenting path, to another receiver that tier allowed. Within a
    tier every receiver may first take only its `fewest`, then up to `most`. Augmenting never
    lowers a receiver's load, so the floors met in an earlier round stay met.
    """
    allowed: dict[int, list[str]] = {}
    holding: dict[str, list[int]] = {node: [] for node in receivers}
    assignment: dict[int, str] = {}
    for may_take in tiers:
        for p in released:
            if p not in assignment:
                allowed[p] = [node for node in receivers if may_take(p, node)]
        for capacity in (fewest, most):
            # Receivers a failed search explored stay hopeless until some search succeeds and changes
            # the matching (Kuhn's visited marks), so a run of failures costs one pass over the graph.
            hopeless: set[str] = set()
            for p in released:
                if p not in assignment:
                    if _augment(p, allowed, capacity, holding, assignment, hopeless):
                        hopeless.clear()
        if len(assignment) == len(released):
            break
    return assignment


def _augment(
    p: int,
    allowed: dict[int, list[str]],
    capacity: dict[str, int],
    holding: dict[str, list[int]],
    assignment: dict[int, str],
    hopeless: set[str],
) -> bool:
    # breadth first over receivers; via[node] = (partition node would take, receiver it comes from)
    via: dict[str, tuple[int, str | None]] = {}
    queue: deque[str] = deque()
    for node in allowed[p]:
        if node not in hopeless:
            via[node] = (p, None)
            queue.append(node)
    while queue:
        node = queue.popleft()
        if len(holding[node]) < capacity[node]:
            while True:
                taken, source = via[node]
                holding[node].append(taken)
                assignment[taken] = node
                if source is None:
                    return True
                holding[source].remove(taken)
                node = source
        for held in holding[node]:
            for other in allowed[held]:
                if other not in via and other not in hopeless:
                    via[other] = (held, node)
                    queue.append(other)
    hopeless.update(via)
    return False


def _settle_unmatched(
    owners: list[str | None],
    released: list[int],
    receivers: list[str],
    fewest: dict[str, int],
    most: dict[str, int],
    repeats_at: Callable[[int, str | None], int],
) -> None:
    """Where no matching keeps windows distinct, place what is left where it repeats least."""
    load = {node: 0 for node in receivers}
    for p in released:
        if owners[p] is not None:
            load[owners[p]] += 1  # type: ignore[index]
    for p in released:
        if owners[p] is not None:
            continue
        short = [node for node in receivers if load[node] < fewest[node]]
        pool = short or [node for node in receivers if load[node] < most[node]]
        node = min(pool, key=lambda n: (repeats_at(p, n), n))
        owners[p] = node
        load[node] += 1
    # A receiver still below its floor takes a partition from one above its own floor.
    for node in receivers:
        while load[node] < fewest[node]:
            p = min(
                (p for p in released if load[owners[p]] > fewest[owners[p]]),  # type: ignore[index]
                key=lambda p: (repeats_at(p, node) - (owners[p] == node), p),
            )
            load[owners[p]] -= 1  # type: ignore[index]
            owners[p] = node
            load[node] += 1


def _neighbour_offsets(partitions: int, n_replicas: int) -> tuple[int, ...]:
    """Offsets (mod Q) of the partitions sharing some window of N with a partition, itself excluded."""
    return tuple(sorted({d % partitions for k in range(1, n_replicas) for d in (k, -k)} - {0}))


# A move: (change in repeats, change in partitions moved, p, q, node). Swap the owners of p and q, or,
# when q is -1, hand p to `node`.
_Move = tuple[int, int, int, int, str]


class _Layout:
    """Owners being improved inside one claim; a swap or a hand-over keeps the ring balanced.

    `repeats[p]` sums, over the partitions closer than N to p, the affinity of their owners with p's
    owner (`_Sites`; without locations: counts those with p's owner). All are zero exactly when no
    window repeats a node, nor a host or a zone the search counts; unlike the window count it
    changes by small steps as single partitions change owner, so a local search can follow it.
    """

    def __init__(self, owners: list[str], before: list[str] | None, nodes: list[str], n_replicas: int, sites: _Sites) -> None:
        self.owners = owners
        self.affinity = sites.affinity
        self.full = sites.full
        self.unary = sites.unary
        self.phased = sites.phase is not None
        self.located = sites.located
        # What a partition pays for one neighbour on its host: repeats below it are zones only.
        self.host_weight = sites.weights[-2] if sites.zones_counted else sites.weights[-1]
        self.q = len(owners)
        self.before: list[str | None] = list(before) if before is not None else [None] * self.q
        self.nodes = nodes
        self.offsets = _neighbour_offsets(self.q, n_replicas)
        self.counts = dict.fromkeys(nodes, 0)
        for owner in owners:
            self.counts[owner] += 1
        self.low, self.high = balanced_shares(self.q, len(nodes))
        self.moved_set = {p for p in range(self.q) if self.owners[p] != self.before[p]}
        self.moved = len(self.moved_set)
        self.moved_floor = self.moved  # the minimum, from _rebalance
        self.held: dict[str, set[int]] = {node: set() for node in nodes}
        self.originally: dict[str | None, list[int]] = {}
        for p in range(self.q):
            self.held[self.owners[p]].add(p)
            self.originally.setdefault(self.before[p], []).append(p)
        self.repeats = [self._repeats_of(p) for p in range(self.q)]
        # Candidate moves examined so far: a fixed budget, so that a hopeless layout (S just above N
        # after leaves) costs bounded time, and the same on every node.
        self.work = 0
        self.work_max = SEARCH_WORK_BASE + SEARCH_WORK_PER_PARTITION * self.q

    def _repeats_of(self, p: int) -> int:
        owners, q, node = self.owners, self.q, self.owners[p]
        if not self.located:  # affinity is 1 with itself and 0 with the others: count
            return sum(1 for off in self.offsets if owners[(p + off) % q] == node)
        near = self.affinity[node]
        return self.unary(p, node) + sum(near.get(owners[(p + off) % q], 0) for off in self.offsets)

    def _cost_at(self, p: int, node: str, skip: int = -1) -> int:
        """What `node` would pay at p, its neighbours as they are, leaving out partition `skip`."""
        owners, q = self.owners, self.q
        near = self.affinity[node]
        total = self.unary(p, node)
        for off in self.offsets:
            r = (p + off) % q
            if r != skip:
                total += near.get(owners[r], 0)
        return total

    def neighbours(self, p: int) -> set[int]:
        return {(p + off) % self.q for off in self.offsets}

    def conflicted(self) -> list[int]:
        return [p for p, repeats in enumerate(self.repeats) if repeats]

    def spread(self, slack: int) -> None:
        """Remove repeats: free moves first, then paid ones while `slack` extra moves remain."""
        if self.located:
            self._spread_located(slack)
            return
        while True:
            self._improve_free()
            budget = slack - (self.moved - self.moved_floor)
            if budget <= 0:
                return
            best: _Move | None = None
            for p in self.conflicted():
                move = self._best_move(p, moved_at_most=budget, cheapest=True)
                if move is not None and (best is None or (move[1], move[0]) < (best[1], best[0])):
                    best = move
            if best is None:
                return
            self._apply(best)

    def _spread_located(self, slack: int) -> None:
        """`spread` when hosts or zones are counted. A ring can then hold hundreds of repeated
        zones (a ring grown while the zones were too uneven to count), too many to compare every
        conflicted partition with every other partition for each paid move. Instead each
        conflicted partition in turn takes its cheapest move among the other conflicted
        partitions (a swap of two misplaced partitions mends both), and looks at every partition
        only when it repeats a host (or a node), or when few partitions are in conflict
        (`WIDE_SEARCH_CONFLICTS_MAX`). Repeated until a pass finds nothing or the slack is spent."""
        while True:
            self._improve_free()
            applied = False
            conflicted = self.conflicted()
            few = len(conflicted) <= WIDE_SEARCH_CONFLICTS_MAX
            # Worst first: the slack goes to repeated nodes, then hosts, before zones.
            for p in sorted(conflicted, key=lambda p: (-self.repeats[p], p)):
                budget = slack - (self.moved - self.moved_floor)
                if budget <= 0:
                    return
                if not self.repeats[p]:
                    continue
                move = self._best_move(p, moved_at_most=budget, cheapest=True, among=self.conflicted())
                if move is None and (few or self.repeats[p] >= self.host_weight):
                    move = self._best_move(p, moved_at_most=budget, cheapest=True)
                if move is not None:
                    self._apply(move)
                    applied = True
            if not applied:
                return

    def _improve_free(self) -> None:
        changed = True
        while changed:
            changed = False
            for p in self.conflicted():
                if self.repeats[p]:  # an earlier move this pass may have fixed it
                    move = self._best_move(p, moved_at_most=0)
                    if move is not None:
                        self._apply(move)
                        changed = True

    def _best_move(self, p: int, *, moved_at_most: int, cheapest: bool = False, among: Sequence[int] | None = None) -> _Move | None:
        """The move at `p` that removes most repeats (or, if `cheapest`, moves least), or None;
        `among`: swap only with these partitions."""
        if self.work >= self.work_max:
            return None
        owners, before, q_count, offsets, repeats = self.owners, self.before, self.q, self.offsets, self.repeats
        affinity, full, unary, phased = self.affinity, self.full, self.unary, self.phased
        a = owners[p]
        a_affinity = affinity[a]
        near_p = self.neighbours(p)
        # around_p[b]: what b would pay at p (its affinity with the owners of p's neighbours)
        around_p: dict[str, int] = {}
        for r in near_p:
            for other, weight in affinity[owners[r]].items():
                around_p[other] = around_p.get(other, 0) + weight
        now_p = repeats[p]
        a_moved_at_p = a != before[p]
        candidates: Sequence[int]
        if among is not None:
            candidates = among
        elif moved_at_most <= 0 and before[p] is not None:
            # A swap moves nothing more only if q has already moved, or q was a's, or q returns p to
            # its first owner: a few partitions, not Q.
            first_owner = before[p]
            candidates = sorted(self.moved_set.union(self.originally.get(a, ()), self.held[first_owner] if first_owner in self.held else ()))
        else:
            candidates = range(q_count)
        self.work += len(candidates)
        best: _Move | None = None
        best_key: tuple[int, int] | None = None
        for q in candidates:
            b = owners[q]
            if b == a:
                continue
            moved_change = (b != before[p]) + (a != before[q]) - a_moved_at_p - (b != before[q])
            if moved_change > moved_at_most:
                continue
            q_near_p = q in near_p
            # After the swap p holds b among p's other neighbours and q holds a among q's; the pair
            # (p, q) itself, if they are neighbours, costs the affinity of a and b before and after
            # (0 without locations, as a != b). With `pair` that affinity when they are neighbours,
            # the change is
            #   (b at p, q aside) + pair - now_p + (a at q, p aside) + pair - repeats[q],
            # negative only if a pays less than `room` at q.
            pair = a_affinity.get(b, 0) if q_near_p else 0
            room = repeats[q] + now_p - (around_p.get(b, 0) - (full if q_near_p else 0)) - 2 * pair
            if phased:  # each pays for its place in the phase too (`_Sites.choose_phase`)
                room -= unary(p, b) + unary(q, a)
            if room <= 0:
                continue
            a_near_q = -full if q_near_p else 0  # p itself is one of a's partitions near q
            for off in offsets:
                a_near_q += a_affinity.get(owners[(q + off) % q_count], 0)
            if a_near_q < room:
                change = a_near_q - room
                key = (moved_change, change) if cheapest else (change, moved_change)
                if best_key is None or key < best_key:
                    best, best_key = (change, moved_change, p, q, b), key
        if self.low != self.high and self.counts[a] == self.high:
            for b in self.nodes:
                if self.counts[b] != self.low:
                    continue
                moved_change = (b != before[p]) - a_moved_at_p
                change = around_p.get(b, 0) + unary(p, b) - now_p
                if moved_change <= moved_at_most and change < 0:
                    key = (moved_change, change) if cheapest else (change, moved_change)
                    if best_key is None or key < best_key:
                        best, best_key = (change, moved_change, p, -1, b), key
        return best

    def _apply(self, move: _Move) -> None:
        _, moved_change, p, q, b = move
        a = self.owners[p]
        changed = [(p, b)] if q < 0 else [(p, b), (q, a)]
        for r, new_owner in changed:
            old_owner = self.owners[r]
            self.owners[r] = new_owner
            self.held[old_owner].remove(r)
            self.held[new_owner].add(r)
            self.counts[old_owner] -= 1
            self.counts[new_owner] += 1
            if new_owner != self.before[r]:
                self.moved_set.add(r)
            else:
                self.moved_set.discard(r)
        for r in {n for r, _ in changed for n in self.neighbours(r)} | {r for r, _ in changed}:
            self.repeats[r] = self._repeats_of(r)
        self.moved += moved_change
        assert self.moved == len(self.moved_set)

    def mix(self) -> None:
        """Swap owners at pseudo-random pairs of partitions wherever that repeats nothing (rule 6).

        Fresh rings only: it keeps no account of movement. Round-robin gives each node the same
        neighbours all round the ring; when that node leaves, only the nodes never beside it can
        take its partitions, and they may not need them. Mixed neighbourhoods let a later leave
        keep windows distinct while moving only the leaver's partitions. The sequence is fixed
        (SplitMix64 from a constant seed), so every node computes the same ring.
        """
        assert all(before is None for before in self.before), "mix() is for fresh rings"
        owners, q_count, held = self.owners, self.q, self.held
        state = MIX_SEED
        for _ in range(MIX_ROUNDS * q_count):
            state, draw = _splitmix64(state)
            p, q = draw % q_count, (draw >> 32) % q_count
            a, b = owners[p], owners[q]
            if a == b or self.repeats[p] or self.repeats[q]:
                continue
            # p and q may be neighbours: after the swap each sees the other's old owner, which
            # costs nothing, as p costs nothing now; so only the other neighbours count.
            if self._cost_at(p, b, skip=q) or self._cost_at(q, a, skip=p):
                continue
            owners[p], owners[q] = b, a
            held[a].remove(p)
            held[a].add(q)
            held[b].remove(q)
            held[b].add(p)


_MASK64 = (1 << 64) - 1


def _splitmix64(state: int) -> tuple[int, int]:
    """(next state, 64-bit output): Steele, Lea and Flood's SplitMix64."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)
