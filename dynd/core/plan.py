"""Plans of membership changes: what a join, leave or remove would do, before anything changes.

`dynctl cluster join|leave|remove --dry-run` (riak-admin cluster plan's counterpart) asks a node
for a `ClusterPlan`; `Planner` answers it. Pure.

Rules:
- The membership a plan describes is made by the very function the change runs
  (`ClusterView.leave_change`, `remove_change`, `membership_after_join`), and its ring by the very
  fold and claim every node runs (`Membership.ring`): a plan and the change it describes agree,
  unless the membership changes in between (another change, or an event gossip brings late).
- Sizes: every member reports, per partition, how many keys it holds (exact: the Merkle trees'
  counts, writes not yet committed included) and about how many bytes (`local_sizes`: the mean
  record of a sample of `plan_sample_keys` keys, times the count). A partition's size is the
  largest any member reported; members that do not answer within `gather_timeout_ms` are named
  in `sizes_missing`, and what only they hold is left out of the estimate.
- Two views of what moves. Ownership: `moves` lists the partitions whose owner changes, and the
  members' partition counts before and after are the balance. Data: a partition's replicas are
  its N primaries (`dynd.core.preflist`); each node that becomes a primary of a partition must
  receive a copy of it (`keys_in`, summed in `keys_to_move`), and each node that stops being
  one hands its copy off (`keys_out`). A removed node hands nothing off: the new replicas are
  filled by read repair and anti-entropy from the remaining ones.
- Windows: the first partition of every window of N consecutive partitions that would not have
  N distinct owners after the change (`dynd.core.ring.window_repeats`).
- Locations (when the ring has any): a note for each placement guarantee the change would break
  or mend (every key's copies on N distinct hosts, on N distinct zones), with the reason, and,
  when the change alters them, the windows that repeat a host or a zone before and after
  (`dynd.protocol.location_report`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dynd.core.claim import windows_can_be_distinct
from dynd.core.cluster import ClusterView, membership_after_join
from dynd.core.gather import Answers, Gathers
from dynd.core.membership import JOIN, JOINED, LEAVE, REMOVE, REMOVED, Membership
from dynd.core.merkle import Forest
from dynd.core.ports import Network, Storage
from dynd.core.preflist import preference_list
from dynd.core.ring import Ring, window_repeats
from dynd.protocol import messages
from dynd.protocol.address import format_address, parse_address
from dynd.protocol.errors import BadRequest, DynError
from dynd.protocol.location_report import location_report

Reply = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class PartitionSizes:
    """One node's holdings: keys[p] (exact) and bytes[p] (estimated) for every partition p."""

    keys: tuple[int, ...]
    bytes: tuple[int, ...]


def local_sizes(forest: Forest, storage: Storage, partitions: int, sample_keys: int) -> PartitionSizes:
    """This node's partition sizes: key counts from the trees; bytes from up to `sample_keys`
    records of each partition held (key and record bytes), scaled to its key count."""
    keys = [0] * partitions
    sizes = [0] * partitions
    for partition in forest.held():
        count = len(forest.tree(partition))
        keys[partition] = count
        sampled = 0
        sampled_bytes = 0
        for key in storage.partition_keys(partition, sample_keys):
            record = storage.read_object(partition, key)
            if record is not None:
                sampled += 1
                sampled_bytes += len(key) + len(record)
        if sampled:
            sizes[partition] = sampled_bytes * count // sampled
    return PartitionSizes(tuple(keys), tuple(sizes))


def repeated_window_starts(owners: Sequence[str], n_replicas: int) -> list[int]:
    """The first partition of every window of N that lacks N distinct owners."""
    return [start for start in range(len(owners)) if window_repeats(list(owners), start, n_replicas)]


def location_notes(ring_before: Ring, ring_after: Ring, n_replicas: int) -> list[str]:
    """What a change does to placement across hosts and zones, in sentences for the plan."""
    before = location_report(ring_before.owners, dict(ring_before.locations), n_replicas)
    after = location_report(ring_after.owners, dict(ring_after.locations), n_replicas)
    notes: list[str] = []
    for level_before, level_after in ((before.host, after.host), (before.zone, after.zone)):
        name = level_after.level
        if level_before.holds and not level_after.holds:
            why = "; ".join(level_after.reasons) or "see dynctl ring status"
            notes.append(f"LOCATION VIOLATION: after the change some keys have copies sharing a {name} ({why})")
        elif not level_after.holds:
            notes.append(f"copies still share a {name} for {level_after.partitions_sharing} partitions, as before the change")
        elif not level_before.holds:
            notes.append(f"after the change every key's copies sit on distinct {name}s (they did not before)")
        if level_before.windows_repeating != level_after.windows_repeating:
            notes.append(
                f"windows of {n_replicas} partitions repeating a {name}: {level_before.windows_repeating} before, "
                f"{level_after.windows_repeating} after (their preference lists skip ahead to keep copies apart)"
            )
    return notes


def _statuses(membership: Membership) -> dict[str, str]:
    return {name: member.status for name, member in membership.members.items()}


def describe_change(
    request_id: int,
    *,
    node: str,
    action: str,
    target: str,
    before: Membership,
    ring_before: Ring,
    after: Membership | None,
    ring_after: Ring | None,
    summary: str = "",
    sizes: Mapping[str, PartitionSizes],
    sizes_missing: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> messages.ClusterPlanOk:
    """The plan of changing `before` into `after` (None: a change that does nothing, `summary`
    says why), as the module docstring describes. `node`: who computed it."""
    n = before.params.n
    q = ring_before.partitions
    changes = after is not None and ring_after is not None
    if not changes:
        after, ring_after = before, ring_before
    assert after is not None and ring_after is not None

    # a partition's size: the largest count any member reported, with that member's bytes
    est_keys = [0] * q
    est_bytes = [0] * q
    for reported in sizes.values():
        for p in range(q):
            if (reported.keys[p], reported.bytes[p]) > (est_keys[p], est_bytes[p]):
                est_keys[p], est_bytes[p] = reported.keys[p], reported.bytes[p]

    status_before, status_after = _statuses(before), _statuses(after)
    names = sorted(name for name in set(status_before) | set(status_after) if not (status_before.get(name, REMOVED) == REMOVED == status_after.get(name, REMOVED)))
    keys_in = dict.fromkeys(names, 0)
    bytes_in = dict.fromkeys(names, 0)
    keys_out = dict.fromkeys(names, 0)
    bytes_out = dict.fromkeys(names, 0)
    hands_nothing = target if action == REMOVE else None
    if changes:
        for p in range(q):
            old = set(preference_list(ring_before, p, n).primaries)
            new = set(preference_list(ring_after, p, n).primaries)
            for gaining in new - old:
                keys_in[gaining] = keys_in.get(gaining, 0) + est_keys[p]
                bytes_in[gaining] = bytes_in.get(gaining, 0) + est_bytes[p]
            for losing in old - new:
                if losing == hands_nothing:
                    continue
                own = sizes.get(losing)
                keys_out[losing] = keys_out.get(losing, 0) + (own.keys[p] if own is not None else est_keys[p])
                bytes_out[losing] = bytes_out.get(losing, 0) + (own.bytes[p] if own is not None else est_bytes[p])

    counts_before, counts_after = ring_before.counts(), ring_after.counts()
    moved = ring_after.moved_from(ring_before)
    gives = dict.fromkeys(names, 0)
    takes = dict.fromkeys(names, 0)
    for p in moved:
        gives[ring_before.owners[p]] = gives.get(ring_before.owners[p], 0) + 1
        takes[ring_after.owners[p]] = takes.get(ring_after.owners[p], 0) + 1
    members = [
        messages.PlanMember(
            name=name,
            status_before=status_before.get(name, ""),
            status_after=status_after.get(name, ""),
            partitions_before=counts_before.get(name, 0),
            partitions_after=counts_after.get(name, 0),
            gives=gives.get(name, 0),
            takes=takes.get(name, 0),
            keys_in=keys_in.get(name, 0),
            bytes_in=bytes_in.get(name, 0),
            keys_out=keys_out.get(name, 0),
            bytes_out=bytes_out.get(name, 0),
        )
        for name in names
    ]
    moves = [messages.PartitionMove(p, ring_before.owners[p], ring_after.owners[p], est_keys[p], est_bytes[p]) for p in moved]

    all_notes = list(notes)
    owners_after = sorted(name for name, status in status_after.items() if status == JOINED)
    if changes and not windows_can_be_distinct(q, len(owners_after), n):
        all_notes.append(
            f"with {len(owners_after)} owning members, N={n} and {q} partitions, not every window of {n} partitions "
            "can have distinct owners: a key whose window repeats a node still gets N replicas, one of them further along the ring"
        )
    if changes and (ring_before.locations or ring_after.locations):
        all_notes.extend(location_notes(ring_before, ring_after, n))
    if changes and action == REMOVE:
        all_notes.append(
            f"{target} hands nothing off: the partitions' new replicas are filled by read repair and anti-entropy from the remaining replicas"
        )
    if sizes_missing:
        all_notes.append(f"no sizes from {', '.join(sorted(sizes_missing))} (no answer in time): what only they hold is not counted")
    keys_to_move = sum(keys_in.values())
    bytes_to_move = sum(bytes_in.values())
    if changes and not summary:
        summary = (
            f"{action} {target}: {len(moved)} of {q} partitions change owner; "
            f"about {keys_to_move} keys ({bytes_to_move} bytes) to copy to new replicas"
        )
    return messages.ClusterPlanOk(
        id=request_id,
        node=node,
        action=action,
        target=target,
        changes=changes,
        summary=summary,
        n=n,
        owners_before=list(ring_before.owners),
        owners_after=list(ring_after.owners),
        members=members,
        moves=moves,
        windows_repeated=repeated_window_starts(ring_after.owners, n),
        windows_repeated_before=len(repeated_window_starts(ring_before.owners, n)),
        keys_to_move=keys_to_move,
        bytes_to_move=bytes_to_move,
        sizes_from=sorted(sizes),
        sizes_missing=sorted(sizes_missing),
        notes=all_notes,
    )


class Planner:
    """Answers ClusterPlan: checks the change as the change itself would, gathers the members'
    sizes (`PartitionSizes`), then describes it. A join plan with a seed is the joining node's:
    it asks the seed, which plans the join into its own cluster."""

    def __init__(
        self,
        cluster: ClusterView,
        network: Network,
        gathers: Gathers,
        *,
        local_sizes: Callable[[], PartitionSizes],
        liveness: Callable[[str], str],
    ) -> None:
        self.cluster = cluster
        self.network = network
        self.gathers = gathers
        self.local_sizes = local_sizes
        self.liveness = liveness

    def handle(self, request: messages.ClusterPlan, reply: Reply) -> None:
        cluster = self.cluster
        if request.action == JOIN and request.seed is not None:
            self._plan_own_join(request, reply)
            return
        notes: list[str] = []
        change: Membership | str
        if request.action == JOIN:
            if not request.node or not request.address:
                raise BadRequest("a join plan needs the seed to join through, or the joining node's name and address")
            address = _checked_address(request.address)
            target = request.node
            change = membership_after_join(cluster.membership, target, address)
        elif request.action == LEAVE:
            target = request.node or cluster.name
            change = cluster.leave_change(target)
            if target != cluster.name and self.liveness(target) == "dead":
                notes.append(f"{target} looks dead to {cluster.name}: its handoff starts only once it is back (for a member gone for good, use remove)")
        elif request.action == REMOVE:
            if not request.node:
                raise BadRequest("a remove plan needs the node to remove")
            target = request.node
            change = cluster.remove_change(target)
        else:
            raise BadRequest(f"unknown membership change {request.action!r}: join, leave or remove")
        before, ring_before = cluster.membership, cluster.ring
        after = change if isinstance(change, Membership) else None
        summary = change if isinstance(change, str) else ""
        others = [member.name for member in before.active() if member.name != cluster.name]

        def sized(answers: Answers) -> None:
            sizes = {cluster.name: self.local_sizes()}
            missing = []
            q = ring_before.partitions
            for member in others:
                answer = answers.get(member)
                if isinstance(answer, messages.PartitionSizesOk) and len(answer.keys) == len(answer.bytes) == q:
                    sizes[member] = PartitionSizes(tuple(answer.keys), tuple(answer.bytes))
                else:
                    missing.append(member)
            if after is not None and request.action == REMOVE and target in sizes and target != cluster.name:
                notes.append(
                    f"{target} is alive and answers: remove would be refused without --force "
                    f"(`dynctl cluster leave {target}` hands its data over first)"
                )
            reply(
                describe_change(
                    request.id,
                    node=cluster.name,
                    action=request.action,
                    target=target,
                    before=before,
                    ring_before=ring_before,
                    after=after,
                    ring_after=after.ring if after is not None else None,
                    summary=summary,
                    sizes=sizes,
                    sizes_missing=missing,
                    notes=notes,
                )
            )

        if after is None:  # nothing would change, so nothing moves: no sizes to gather
            reply(
                describe_change(
                    request.id, node=cluster.name, action=request.action, target=target, before=before, ring_before=ring_before,
                    after=None, ring_after=None, summary=summary, sizes={}, notes=notes,
                )  # fmt: skip
            )
            return
        self.gathers.start(others, lambda rid: messages.PartitionSizes(id=rid), sized)

    def _plan_own_join(self, request: messages.ClusterPlan, reply: Reply) -> None:
        """This node would join the seed's cluster: the seed plans it, as the join would adopt
        the seed's membership and add this node to it."""
        cluster = self.cluster
        assert request.seed is not None
        seed = _checked_address(request.seed)
        me = cluster.membership.members.get(cluster.name)
        if not cluster.is_sole_member and me is not None and me.status == JOINED:
            ring = cluster.ring
            reply(
                describe_change(
                    request.id, node=cluster.name, action=JOIN, target=cluster.name, before=cluster.membership, ring_before=ring,
                    after=None, ring_after=None, summary=f"{cluster.name} is already a member of cluster {cluster.params.cluster_id}", sizes={},
                )  # fmt: skip
            )
            return

        def planned(answer: Any) -> None:
            if isinstance(answer, DynError):
                reply(messages.error_reply(request.id, type(answer)(f"cannot plan with seed {seed}: {answer.message}")))
                return
            if not isinstance(answer, messages.ClusterPlanOk):
                reply(messages.error_reply(request.id, BadRequest(f"seed {seed} answered the plan with {type(answer).__name__}")))
                return
            if len(answer.owners_before) != cluster.params.partitions:
                reply(messages.error_reply(request.id, cluster.partition_mismatch(seed, len(answer.owners_before))))
                return
            reply(dataclasses.replace(answer, id=request.id))

        self.network.send_to_address(
            seed,
            lambda rid: messages.ClusterPlan(id=rid, action=JOIN, node=cluster.name, address=cluster.address),
            planned,
        )


def _checked_address(address: str) -> str:
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return format_address(host, port)
