"""Claim: the ring a membership should have, given the ring it had (DESIGN.md section 3, strategy 3).

Rules, in the order claim applies them:
1. Deterministic. The inputs are the previous ring, the *set* of members, Q and N; members are
   deduplicated and sorted (by code point), every loop runs over sorted names or partition numbers,
   and there is no randomness. Every node given the same inputs computes an equal ring.
2. Balance. With S members, every member owns floor(Q/S) or ceil(Q/S) partitions; exactly Q mod S
   of them own the ceiling. The ceilings go to the members that already own the most (ties by
   name), so as few partitions as possible change hands. When S > Q some members own nothing.
3. Minimal movement. A partition moves only if its owner left, or its owner is above its share:
   every departed node's partitions and each over-share member's excess are released, nothing else.
   A join therefore moves the new node's share, at most ceil(Q/(S+1)) partitions, when the previous
   ring was balanced; a leave moves exactly the leaver's partitions.
4. Distinct windows. Each window of N consecutive partitions (wrapping) should have N different
   owners, so a key's N primaries are N nodes. Released partitions go to members that do not own a
   partition within N-1 of them; then a local search swaps owners between two partitions, or hands a
   partition from a member at the ceiling to one at the floor, to remove repeats:
   - first only moves that move no more partitions than the minimum (choosing *which* partitions a
     donor gives up, and which receiver gets which released partition, is free);
   - then, only when the membership gained a node, moves that cost extra movement, cheapest first,
     at most `join_slack(Q, N)` partitions beyond the minimum in one claim. A claim that only removes
     members never moves more than rule 3 says, even if that leaves a repeat (the next join fixes it).
   Distinct windows are possible only if S >= N and ceil(Q/S) * N <= Q (a node with ceil(Q/S)
   partitions needs N-1 others between each two of them); `windows_can_be_distinct` says so. With
   S < N every window repeats some node whatever claim does; the layout is round-robin, which keeps a
   node's partitions as far apart as S allows.
5. Fresh ring (no previous): round-robin over the sorted members, then the same search, where every
   move is free because every partition is new.

Measured (tests/property/test_ring_claim.py, and the sweep in that module's docstring): fresh rings
have no repeated window whenever `windows_can_be_distinct`; after generated histories of joins,
leaves and replacements with Q in {8, 64, 256}, the rings of feasible memberships have no repeated
window except after a pure leave, which may leave a few until the next join.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from dynd.core.partition import check_partition_count
from dynd.core.ring import Ring



def join_slack(partitions: int, n_replicas: int) -> int:
    """Most partitions a claim that adds a member moves beyond the minimum: 2N, and at least 2."""
    check_partition_count(partitions)
    return min(partitions, max(2, 2 * n_replicas))


def windows_can_be_distinct(partitions: int, members: int, n_replicas: int) -> bool:
    """Whether a balanced ring of `members` nodes can give every window of N partitions N owners."""
    if members < n_replicas or n_replicas > partitions:
        return False
    return -(-partitions // members) * n_replicas <= partitions


def balanced_shares(partitions: int, members: int) -> tuple[int, int]:
    """(floor, ceiling) of Q/S: every member of a balanced ring owns one of the two."""
    low, extra = divmod(partitions, members)
    return low, low + (1 if extra else 0)


def claim(previous: Ring | None, members: Sequence[str], *, partitions: int, n_replicas: int) -> Ring:
    """The ring of `members` (any order, duplicates ignored), moving as little of `previous` as it can."""
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

    targets = _targets(previous, nodes, partitions)
    if previous is None:
        layout = _Layout(_fresh_layout(nodes, targets, partitions, n_replicas), None, nodes, n_replicas)
        slack = 0  # every move is free: nothing was placed before
    else:
        owners = _rebalance(previous, nodes, n_replicas)
        layout = _Layout(owners, list(previous.owners), nodes, n_replicas)
        gained = not set(nodes) <= set(previous.nodes)
        slack = join_slack(partitions, n_replicas) if gained else 0
    if len(nodes) >= n_replicas and n_replicas <= partitions:
        # With S < N every window repeats anyway and round-robin is already as spread as it gets.
        layout.spread(slack)
        if previous is None:
            layout.mix()
    return Ring(partitions, tuple(layout.owners))


def _targets(previous: Ring | None, nodes: list[str], partitions: int) -> dict[str, int]:
    low, extra = divmod(partitions, len(nodes))
    held = previous.counts() if previous is not None else {}
    # The ceilings go to whoever holds most already: each one kept is one partition not moved.
    by_holding = sorted(nodes, key=lambda node: (-held.get(node, 0), node))
    return {node: low + (1 if rank < extra else 0) for rank, node in enumerate(by_holding)}


def _fresh_layout(nodes: list[str], targets: dict[str, int], partitions: int, n_replicas: int) -> list[str]:
    """Laps over the sorted members; the members below the ceiling each sit out one lap.

    Plain round-robin puts the Q mod S extra partitions in one run at the end, so when that run is
    shorter than N the first members meet themselves across the wrap. Instead lay out ceil(Q/S) laps
    of S slots and leave out one slot of each floor-share member, the left-out slots spread evenly
    over all laps: a member's consecutive partitions are then S slots apart less the few left-out
    slots between them.
    """
    members = len(nodes)
    low, extra = divmod(partitions, members)
    if extra == 0 or low == 0 or extra >= n_replicas:
        # Every gap between a member's partitions is S or the length of the last run: both >= N
        # when distinct windows are possible (and with S > Q each member has at most one partition).
        return [nodes[slot % members] for slot in range(members * low)] + [nodes[i] for i in range(members) if targets[nodes[i]] > low]
    laps = low + 1
    slots = laps * members
    sitting_out = [i for i, node in enumerate(nodes) if targets[node] == low]
    left_out: set[int] = set()
    for k, index in enumerate(sitting_out):
        # the lap whose slot for this member lies nearest the k-th evenly spaced point of all slots
        ideal_slot = (2 * k + 1) * slots / (2 * len(sitting_out))
        lap = min(max(round((ideal_slot - index) / members), 0), laps - 1)
        left_out.add(lap * members + index)
    return [nodes[slot % members] for slot in range(slots) if slot not in left_out]


def _rebalance(previous: Ring, nodes: list[str], n_replicas: int) -> list[str]:
    """Release the departed nodes' partitions and the members' excess; match them to members below share."""
    q = partitions = previous.partitions
    low, high = balanced_shares(partitions, len(nodes))
    ceilings = partitions - low * len(nodes)
    member_set = set(nodes)
    owners: list[str | None] = [owner if owner in member_set else None for owner in previous.owners]
    offsets = _neighbour_offsets(partitions, n_replicas)
    held = {node: len(previous.partitions_of(node)) for node in nodes}

    # Members holding a ceiling share or more keep the ceiling while ceilings last (most first, then
    # by name): each ceiling kept is a partition not moved. Everyone else ends at the floor or, when
    # ceilings are left over, at whichever of floor and ceiling the matching below finds best.
    keep = {}
    for rank, node in enumerate(sorted((n for n in nodes if held[n] >= high), key=lambda n: (-held[n], n))):
        keep[node] = high if rank < ceilings else low
    excess = {node: held[node] - keep[node] for node in keep}

    def repeats_at(p: int, node: str | None) -> int:
        return sum(owners[(p + off) % q] == node for off in offsets)

    # A donor gives up first the partitions that repeat within a window: releasing them fixes a repeat.
    for node in sorted(excess):
        for p in previous.partitions_of(node):
            if excess[node] > 0 and repeats_at(p, node):
                owners[p] = None
                excess[node] -= 1
    _release_spread(owners, excess, previous, n_replicas)

    receivers = [node for node in nodes if node not in keep]
    fewest = {node: max(0, low - held[node]) for node in receivers}
    most = {node: high - held[node] for node in receivers}
    released = [p for p in range(partitions) if owners[p] is None]

    def may_take(p: int, node: str) -> bool:
        return not repeats_at(p, node)

    assignment = _match(released, receivers, fewest, most, may_take)
    for p, node in assignment.items():
        owners[p] = node
    _settle_unmatched(owners, released, receivers, fewest, most, repeats_at)
    return owners  # type: ignore[return-value]  # _settle_unmatched filled every None


def _release_spread(owners: list[str | None], excess: dict[str, int], previous: Ring, n_replicas: int) -> None:
    """Release each donor's remaining excess at partitions spread evenly round the ring, N apart if possible.

    The receivers (often one new node) then get partitions far from each other, and far from the
    departed nodes' partitions, which are released too.
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
        # the k-th release ideally sits at (k + 1/2) * Q / total; never closer than N to another release
        if 2 * p * total >= (2 * count + 1) * partitions and p - last >= n_replicas and following - p >= n_replicas:
            owners[p] = None
            excess[owner] -= 1
            count += 1
            last = p
            first = min(first, p)
    # Donors whose turn never came (their partitions sat too near others) give up their farthest ones.
    for node in sorted(excess):
        while excess[node] > 0:
            taken = [p for p in range(partitions) if owners[p] is None]
            candidates = [p for p in previous.partitions_of(node) if owners[p] == node]
            best = max(candidates, key=lambda p: (_distance_to(p, taken, partitions), -p))
            owners[best] = None
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
    may_take: Callable[[int, str], bool],
) -> dict[int, str]:
    """Give released partitions to receivers, each receiver at least `fewest` and at most `most`,
    only where `may_take`: a maximum bipartite b-matching by augmenting paths.

    First every receiver may take only its `fewest`; then up to `most`. Augmenting never lowers a
    receiver's load, so the floors met in the first round stay met.
    """
    allowed = {p: [node for node in receivers if may_take(p, node)] for p in released}
    holding: dict[str, list[int]] = {node: [] for node in receivers}
    assignment: dict[int, str] = {}
    for capacity in (fewest, most):
        for p in released:
            if p not in assignment:
                _augment(p, allowed, capacity, holding, assignment)
    return assignment


def _augment(p: int, allowed: dict[int, list[str]], capacity: dict[str, int], holding: dict[str, list[int]], assignment: dict[int, str]) -> bool:
    # breadth first over receivers; via[node] = (partition node would take, receiver it comes from)
    via: dict[str, tuple[int, str | None]] = {}
    queue: deque[str] = deque()
    for node in allowed[p]:
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
                if other not in via:
                    via[other] = (held, node)
                    queue.append(other)
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

    `repeats[p]` counts the partitions closer than N to p with p's owner. All are zero exactly when
    no window repeats a node; unlike the window count it changes by small steps as single partitions
    change owner, so a local search can follow it.
    """

    def __init__(self, owners: list[str], before: list[str] | None, nodes: list[str], n_replicas: int) -> None:
        self.owners = owners
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

    def _repeats_of(self, p: int) -> int:
        owners, q, node = self.owners, self.q, self.owners[p]
        return sum(1 for off in self.offsets if owners[(p + off) % q] == node)

    def neighbours(self, p: int) -> set[int]:
        return {(p + off) % self.q for off in self.offsets}

    def conflicted(self) -> list[int]:
        return [p for p, repeats in enumerate(self.repeats) if repeats]

    def spread(self, slack: int) -> None:
        """Remove repeats: free moves first, then paid ones while `slack` extra moves remain."""
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

    def _best_move(self, p: int, *, moved_at_most: int, cheapest: bool = False) -> _Move | None:
        """The move at `p` that removes most repeats (or, if `cheapest`, moves least), or None."""
        owners, before, q_count, offsets, repeats = self.owners, self.before, self.q, self.offsets, self.repeats
        a = owners[p]
        near_p = self.neighbours(p)
        around_p: dict[str, int] = {}
        for r in near_p:
            around_p[owners[r]] = around_p.get(owners[r], 0) + 1
        now_p = repeats[p]
        a_moved_at_p = a != before[p]
        # near_a[q]: how many of a's partitions lie closer than N to q (p among them when q is near p)
        near_a = [0] * q_count
        for r in self.held[a]:
            for off in offsets:
                near_a[(r + off) % q_count] += 1
        if moved_at_most <= 0 and self.before[p] is not None:
            # A swap moves nothing more only if q has already moved, or q was a's, or q returns p to
            # its first owner: a few partitions, not Q.
            candidates: Iterable[int] = sorted(self.moved_set.union(self.originally.get(a, ()), self.held.get(before[p], ())))  # type: ignore[arg-type]
        else:
            candidates = range(q_count)
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
            # After the swap p holds b among p's other neighbours, q holds a among q's; the pair
            # (p, q) itself repeats neither before nor after, as a != b.
            change = (around_p.get(b, 0) - q_near_p - now_p) + (near_a[q] - q_near_p - repeats[q])
            if change < 0:
                key = (moved_change, change) if cheapest else (change, moved_change)
                if best_key is None or key < best_key:
                    best, best_key = (change, moved_change, p, q, b), key
        if self.low != self.high and self.counts[a] == self.high:
            for b in self.nodes:
                if self.counts[b] != self.low:
                    continue
                moved_change = (b != before[p]) - a_moved_at_p
                change = around_p.get(b, 0) - now_p
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
        """Swap owners at pseudo-random pairs of partitions wherever that repeats nothing.

        Round-robin gives each node the same neighbours all round the ring; when that node leaves,
        its partitions can go only to the nodes that are never its neighbours, and those may not
        need them. Mixed neighbourhoods let a later leave keep windows distinct while moving
        only the leaver's partitions. The sequence is fixed (splitmix64 from a constant seed), so
        every node computes the same ring.
        """
        owners, q_count, offsets, held = self.owners, self.q, self.offsets, self.held
        state = _MIX_SEED
        for _ in range(_MIX_ROUNDS * q_count):
            state, draw = _splitmix64(state)
            p, q = draw % q_count, (draw >> 32) % q_count
            a, b = owners[p], owners[q]
            if a == b or self.repeats[p] or self.repeats[q]:
                continue
            # p and q may be neighbours: after the swap each sees the other's old owner, never its own
            if any(owners[(p + off) % q_count] == b and (p + off) % q_count != q for off in offsets):
                continue
            if any(owners[(q + off) % q_count] == a and (q + off) % q_count != p for off in offsets):
                continue
            owners[p], owners[q] = b, a
            held[a].remove(p)
            held[a].add(q)
            held[b].remove(q)
            held[b].add(p)


_MIX_SEED = 0x5EED_D1A5
_MIX_ROUNDS = 2
_MASK64 = (1 << 64) - 1


def _splitmix64(state: int) -> tuple[int, int]:
    """(next state, 64-bit output): Steele, Lea and Flood's SplitMix64."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)
