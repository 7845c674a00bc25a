"""A node's view of its cluster: membership kept durable, spread by gossip, changed by admin acts.

Membership itself is a pure lattice (`dynd.core.membership`); this module holds the node's current
copy, persists every change through the Storage port (meta record "membership"), gossips it
push-pull with one random member or seed per `gossip_interval_ms`, and applies the admin acts
(join through a seed, leave, remove). Every change updates the peer addresses on the Network port
and the preference lists the request handlers use.

Rules:
- A change is adopted in memory at once and persisted in the background; gossip may spread it
  before it is durable, which is safe because membership only grows (a restarted node learns it
  back from its peers).
- A node alone in its own one-node cluster may join another cluster: it adopts theirs, adds its
  JOIN event and pushes the result to the seed. A joined member joining again is a no-op.
- A node serves at the address it was started with: when the membership holds another one for it
  (it restarted with a new `advertise`), it records an address event at start, and again whenever
  gossip brings an older address back (a change lost in a crash before it was stored), at most
  `ADDRESS_CLAIMS_MAX` times per start: two processes started with one name must not out-claim each
  other forever, growing the membership; past that the conflict is logged.
- `reachable(member)`: connected now, or a gossip exchange with it succeeded within
  `4 * gossip_interval_ms` (SWIM failure detection replaces this with issue 5).
- Each change is checked, and its next membership made, by one function (`leave_change`,
  `remove_change`, `membership_after_join`) that both the change and its plan (`dynd.core.plan`)
  call, so a dry run shows exactly what the change would do.
- `remove` refuses a member that answers a probe (a Ping, within `gather_timeout_ms`) unless
  forced: a live member retires with `leave`, which hands its data over first.
- A node whose own status is removed is not a member: it serves no data (`not_a_member`), and
  once some member has shown it the membership that records its removal (`removal_known`), the
  others have it too and it is safe to stop. A leaving node that records its own removal pushes
  it to every member at once, so that moment comes quickly.

`StatusGather` answers `dynctl cluster status`: this node's view, with each reachable member's
own count of pending transfers, gathered for at most `STATUS_GATHER_MS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dynd.core.limits import Limits
from dynd.core.membership import JOIN, JOINED, LEAVE, LEAVING, REMOVE, REMOVED, ClusterParams, Membership, MembershipError
from dynd.core.ops import PutMeta
from dynd.core.ports import Network, Storage
from dynd.core.preflist import PreferenceList, preference_list
from dynd.core.ring import Ring
from dynd.core.timeouts import Timeout
from dynd.protocol import messages
from dynd.protocol.errors import BadRequest, DynError, NotAMember

log = logging.getLogger("dynd.cluster")

MEMBERSHIP_META = "membership"
HEARD_WITHIN_GOSSIP_INTERVALS = 4
STATUS_GATHER_MS = 1_000  # how long cluster status waits for members' own transfer counts
ADDRESS_CLAIMS_MAX = 3  # address events a node records per start (see the rules above)


class RandomSource(Protocol):
    def random(self) -> float: ...

    def choice(self, seq: Sequence[Any]) -> Any: ...

    def shuffle(self, x: list[Any]) -> None: ...

    def sample(self, population: Sequence[Any], k: int) -> list[Any]: ...


class Liveness(Protocol):
    def status(self, name: str) -> str: ...

    def incarnation(self, name: str) -> int: ...


class ClusterView:
    def __init__(
        self,
        name: str,
        address: str,
        membership: Membership,
        storage: Storage,
        network: Network,
        *,
        limits: Limits,
        now_ms: Callable[[], int],
        rng: RandomSource,
        seeds: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.address = address
        self.storage = storage
        self.network = network
        self.limits = limits
        self.now_ms = now_ms
        self.rng = rng
        self.seeds = tuple(seeds)
        self.membership = membership
        self._preflists: dict[int, PreferenceList] = {}
        self._heard_at_ms: dict[str, int] = {}
        self._gossip = Timeout("gossip round", limits.gossip_interval_ms)
        self._gossip.start(now_ms(), 0)  # the first round at the first tick
        self._probes: list[tuple[Timeout, Callable[[Any], None]]] = []  # remove's liveness probes: (deadline, answer now)
        self.on_change: list[Callable[[], None]] = []
        self.removed = False  # this node's own status is removed: it is not a member
        self.removal_known = False  # ... and some member has shown it that removal
        self._address_claims = 0
        self._address_conflict_logged = False
        claimed = self._claim_address(membership)
        self._adopt(claimed, force=True)
        if claimed is not membership:
            self._persist(claimed)

    # ---- what the request handlers ask ----

    @property
    def params(self) -> ClusterParams:
        return self.membership.params

    @property
    def ring(self) -> Ring:
        ring = self.membership.ring
        if ring is None:  # no joined member at all: keep serving as the only owner
            return Ring(self.params.partitions, (self.name,) * self.params.partitions)
        return ring

    def preference_list(self, partition: int) -> PreferenceList:
        cached = self._preflists.get(partition)
        if cached is None:
            cached = self._preflists[partition] = preference_list(self.ring, partition, self.params.n)
        return cached

    def ring_reply(self, request_id: int, *, with_locations: bool = False) -> messages.RingOk:
        """`with_locations`: the client asked for them (an older client would refuse the field)."""
        ring = self.ring
        return messages.RingOk(
            id=request_id,
            version=self.membership.digest,
            n=self.params.n,
            r=self.params.r,
            w=self.params.w,
            owners=list(ring.owners),
            addresses=[messages.NodeAddress(m.name, m.address) for m in self.membership.active()],
            locations=[messages.NodeLocation(node, where) for node, where in ring.locations] if with_locations else None,
        )

    def status(self, request_id: int, transfers_pending: dict[str, int], health: Liveness, hints: dict[str, int]) -> messages.ClusterStatusOk:
        """`transfers_pending`: each member's own count, as far as it is known (0 otherwise);
        `hints`: how many hints this node holds per member."""
        counts = self.ring.counts()
        # A node that is not a member runs no failure detector (the members no longer answer its
        # probes): it cannot tell who is alive, and says so rather than calling them dead.
        members = [
            messages.MemberView(
                name=m.name,
                address=m.address,
                status=m.status,
                partitions=counts.get(m.name, 0),
                reachable=self.reachable(m.name),
                transfers_pending=transfers_pending.get(m.name, 0),
                liveness="unknown" if self.removed and m.name != self.name else health.status(m.name),
                incarnation=health.incarnation(m.name),
                hints_pending=hints.get(m.name, 0),
            )
            for m in sorted(self.membership.members.values(), key=lambda m: m.name)
        ]
        return messages.ClusterStatusOk(id=request_id, node=self.name, members=members)

    def reachable(self, name: str) -> bool:
        if name == self.name or self.network.connected(name):
            return True
        heard = self._heard_at_ms.get(name)
        return heard is not None and self.now_ms() - heard < HEARD_WITHIN_GOSSIP_INTERVALS * self.limits.gossip_interval_ms

    def other_members(self) -> list[str]:
        return [m.name for m in self.membership.active() if m.name != self.name]

    def not_a_member(self) -> NotAMember:
        """The error a node that is not a member answers data requests with: where to go instead."""
        members = sorted(self.membership.active(), key=lambda m: m.name)
        where = ", ".join(f"{m.name} at {m.address}" for m in members[:3]) or "none known"
        return NotAMember(
            f"{self.name} is not a member of cluster {self.params.cluster_id} any more (it left or was removed) "
            f"and serves no data; ask a member: {where}"
        )

    # ---- changes ----

    def _adopt(self, membership: Membership, force: bool = False) -> bool:
        changed = force or membership.events != self.membership.events
        self.membership = membership
        if changed:
            self._preflists = {}
            me = membership.members.get(self.name)
            self.removed = me is not None and me.status == REMOVED
            if not self.removed:
                self.removal_known = False
            self.network.set_addresses({m.name: m.address for m in membership.active()})
            for callback in self.on_change:
                callback()
        return changed

    def _claim_address(self, membership: Membership) -> Membership:
        """`membership`, with this node at the address it serves at (see the rules above)."""
        claimed = membership.at_address(self.name, self.address)
        if claimed is membership:
            return membership
        held = membership.address_of(self.name)
        if self._address_claims < ADDRESS_CLAIMS_MAX:
            self._address_claims += 1
            log.info("%s now at %s (was %s): telling the cluster", self.name, self.address, held)
            return claimed
        if not self._address_conflict_logged:
            self._address_conflict_logged = True
            log.error(
                "the cluster keeps %s at %s, not at %s where this node serves, after %d corrections: "
                "is another node running with the name %s?",
                self.name, held, self.address, ADDRESS_CLAIMS_MAX, self.name,
            )
        return membership

    def _persist(self, membership: Membership) -> None:
        try:  # a refusal (disk full, overloaded) must not escape into whoever brought the news
            self.storage.submit([PutMeta(MEMBERSHIP_META, membership.encode())], _log_persist_failure)
        except DynError as exc:
            _log_persist_failure(exc)

    def _update(self, membership: Membership, force: bool = False) -> None:
        membership = self._claim_address(membership)
        if self._adopt(membership, force):
            self._persist(membership)
            log.info("membership now %s", ", ".join(f"{m.name}={m.status}" for m in sorted(membership.members.values(), key=lambda m: m.name)))

    def merge_from_peer(self, data: bytes) -> bytes:
        """Gossip receive: merge what a peer sent (empty: it has nothing yet) and answer with ours."""
        if data:
            try:
                incoming = Membership.decode(data)
                self._update(self.membership.merge(incoming))
            except MembershipError as exc:
                raise BadRequest(str(exc)) from None
        return self.membership.encode()

    def _note_removal_seen(self, theirs: Membership) -> None:
        """A member answered our gossip with its membership: if that records our removal, the
        members have it (they spread it among themselves), and this node may go."""
        if self.removed and not self.removal_known:
            me = theirs.members.get(self.name)
            if me is not None and me.status == REMOVED:
                self.removal_known = True

    def leave_change(self, node: str | None) -> Membership | str:
        """The membership after `node` (this node when None) leaves, or why nothing would change;
        BadRequest for a leave that may not be made."""
        target = node or self.name
        member = self.membership.members.get(target)
        if member is None or member.status == REMOVED:
            raise BadRequest(f"{target!r} is not a member")
        if member.status == LEAVING:
            return f"{target} is already leaving"
        if len([m for m in self.membership.members.values() if m.status == JOINED]) <= 1:
            raise BadRequest(f"{target} is the last member; it cannot leave")
        return self.membership.with_event(LEAVE, target, origin=self.name)

    def remove_change(self, node: str) -> Membership:
        """The membership after `node` is removed; BadRequest for a removal that may not be made."""
        member = self.membership.members.get(node)
        if member is None or member.status == REMOVED:
            raise BadRequest(f"{node!r} is not a member")
        if node == self.name:
            raise BadRequest("a node cannot remove itself; use leave")
        return self.membership.with_event(REMOVE, node, origin=self.name)

    def leave(self, node: str | None) -> str:
        change = self.leave_change(node)
        if isinstance(change, str):
            return change
        self._update(change)
        return f"{node or self.name} is leaving: its partitions move to the other members, then it is removed"

    def remove(self, node: str, done: Callable[[str | DynError], None], *, force: bool = False, liveness: str = "") -> None:
        """Remove `node`; `done` gets the message or the refusal. Unless `force`, the node is
        probed first, and one that answers is refused (BadRequest): nothing changes."""
        self.remove_change(node)  # refuse at once what may not be removed at all

        def apply() -> None:
            try:
                change = self.remove_change(node)  # again: the membership may have changed meanwhile
            except DynError as exc:
                done(exc)
                return
            self._update(change)
            done(f"{node} removed; its partitions were reassigned")

        if force:
            apply()
            return
        answered = False

        def probed(answer: Any) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            if isinstance(answer, messages.Pong) and answer.node == node:
                seen = f" ({liveness} to {self.name}'s failure detector)" if liveness else ""
                done(
                    BadRequest(
                        f"{node} is alive and answers{seen}: removing it would drop its replicas without handing them over. "
                        f"To retire it, `dynctl cluster leave {node}` hands its data to the others first; "
                        "to drop it anyway, remove it with --force"
                    )
                )
                return
            apply()

        self._probes.append((Timeout("remove probe", self.limits.gather_timeout_ms, start_ms=self.now_ms()), lambda: probed(None)))
        self.network.send(node, lambda rid: messages.Ping(id=rid), probed)

    def partition_mismatch(self, seed: str, theirs: int) -> BadRequest:
        return BadRequest(
            f"the cluster at {seed} uses {theirs} partitions and this node {self.params.partitions}; "
            "restart this node on an empty data directory with the cluster's --partitions"
        )

    def finish_leaving(self) -> None:
        """Called once a leaving node has handed everything off: record its removal, and push it
        to every member at once (each answer that shows it makes `removal_known`)."""
        me = self.membership.members.get(self.name)
        if me is not None and me.status == LEAVING:
            self._update(self.membership.with_event(REMOVE, self.name, origin=self.name))
            for member in sorted(self.other_members()):
                self.network.send(member, self._gossip_request, lambda answer, m=member: self._merge_reply(m, answer, member=m))

    @property
    def is_leaving(self) -> bool:
        me = self.membership.members.get(self.name)
        return me is not None and me.status == LEAVING

    @property
    def is_sole_member(self) -> bool:
        active = self.membership.active()
        return len(active) == 1 and active[0].name == self.name

    def join(self, seed: str, done: Callable[[str | DynError], None]) -> None:
        """Join the cluster `seed` belongs to; `done` gets a message or an error.

        Allowed while this node is alone in its own cluster (or already a member: a no-op).
        """
        if not self.is_sole_member:
            member = self.membership.members.get(self.name)
            if member is not None and member.status == JOINED:
                done(f"{self.name} is already a member of cluster {self.params.cluster_id}")
                return

        def fetched(answer: Any) -> None:
            if isinstance(answer, DynError):
                done(type(answer)(f"cannot reach seed {seed}: {answer.message}"))
                return
            try:
                theirs = Membership.decode(answer.membership)
            except MembershipError as exc:
                done(BadRequest(f"seed {seed} sent a bad membership: {exc}"))
                return
            if theirs.params.partitions != self.params.partitions:
                done(self.partition_mismatch(seed, theirs.params.partitions))
                return
            change = membership_after_join(theirs, self.name, self.address)
            if isinstance(change, str):
                self._update(theirs, force=True)
                done(change)
                return
            self._update(change, force=True)

            def pushed(answer: Any) -> None:
                if isinstance(answer, DynError):
                    done(type(answer)(f"joined, but could not tell {seed} yet (gossip will): {answer.message}"))
                    return
                self._merge_reply(seed, answer)
                done(f"{self.name} joined cluster {theirs.params.cluster_id} through {seed}")

            self.network.send_to_address(seed, self._gossip_request, pushed)

        self.network.send_to_address(seed, lambda rid: messages.Gossip(id=rid, membership=b""), fetched)

    def announce(self, address: str) -> None:
        """Push our membership to `address` once (after joining through it at start)."""
        self.network.send_to_address(address, self._gossip_request, lambda answer: self._merge_reply(address, answer))

    # ---- gossip ----

    def tick(self) -> None:
        now = self.now_ms()
        if self._probes:
            due = [answer for deadline, answer in self._probes if deadline.fired(now)]
            if due:
                self._probes = [(deadline, answer) for deadline, answer in self._probes if deadline.running]
                for answer in due:
                    answer()  # no answer in time: the member does not answer
        if not self._gossip.fired(now):
            return
        # Jitter keeps nodes out of step.
        self._gossip.start(now, int(self.limits.gossip_interval_ms * (0.5 + self.rng.random())))
        self.gossip_once()

    def gossip_once(self) -> None:
        """Push-pull with one member (by name, over its open connection) or one seed (by address)."""
        members = sorted(self.other_members())
        member_addresses = {self.membership.address_of(name) for name in members}
        seeds = sorted(a for a in self.seeds if a not in member_addresses and a != self.address)
        targets = [("member", name) for name in members] + [("seed", address) for address in seeds]
        if not targets:
            return
        kind, target = self.rng.choice(targets)
        if kind == "member":
            self.network.send(target, self._gossip_request, lambda answer: self._merge_reply(target, answer, member=target))
        else:
            self.network.send_to_address(target, self._gossip_request, lambda answer: self._merge_reply(target, answer))

    def _gossip_request(self, request_id: int) -> messages.Gossip:
        return messages.Gossip(id=request_id, membership=self.membership.encode())

    def _merge_reply(self, source: str, answer: Any, member: str | None = None) -> None:
        if not isinstance(answer, messages.GossipOk):
            log.debug("gossip with %s failed: %s", source, answer)
            return
        if member is not None:
            self._heard_at_ms[member] = self.now_ms()
        try:
            theirs = Membership.decode(answer.membership)
            self._update(self.membership.merge(theirs))
        except MembershipError as exc:
            log.warning("gossip from %s refused: %s", source, exc)
            return
        if member is not None:
            self._note_removal_seen(theirs)


def membership_after_join(theirs: Membership, node: str, address: str) -> Membership | str:
    """The membership after `node` at `address` joins `theirs` (the cluster's, as its seed has
    it), or why nothing would change: it is a joined member at that address already."""
    member = theirs.members.get(node)
    if member is not None and member.status == JOINED and member.address == address:
        return f"{node} is already a member of cluster {theirs.params.cluster_id}"
    return theirs.with_event(JOIN, node, origin=node, address=address)


class StatusGather:
    """ClusterStatus requests: this node's view (`describe(request_id, pending)`, `pending` being
    each member's own count of pending transfers as far as known), after asking every other member
    for its own count. A member that does not answer within `STATUS_GATHER_MS` (a dead one) does
    not hold the operator's view back: `tick` answers with what came."""

    def __init__(
        self,
        cluster: ClusterView,
        network: Network,
        *,
        now_ms: Callable[[], int],
        transfers_pending: Callable[[], int],
        describe: Callable[[int, dict[str, int]], messages.ClusterStatusOk],
    ) -> None:
        self.cluster = cluster
        self.network = network
        self.now_ms = now_ms
        self.transfers_pending = transfers_pending
        self.describe = describe
        self._gathers: list[tuple[Timeout, Callable[[], None]]] = []  # (deadline, answer now)

    def handle(self, request: messages.ClusterStatus, reply: Callable[[Any], None]) -> None:
        pending = {self.cluster.name: self.transfers_pending()}
        others = self.cluster.other_members()
        if request.local_only or not others:
            reply(self.describe(request.id, pending))
            return
        waiting = set(others)
        replied = False

        def answer_now() -> None:
            nonlocal replied
            if not replied:
                replied = True
                reply(self.describe(request.id, pending))

        def answered(node: str) -> Callable[[Any], None]:
            def record(answer: Any) -> None:
                if isinstance(answer, messages.ClusterStatusOk):
                    pending[node] = next((m.transfers_pending for m in answer.members if m.name == node), 0)
                waiting.discard(node)
                if not waiting:
                    answer_now()

            return record

        self._gathers.append((Timeout("status gather", STATUS_GATHER_MS, start_ms=self.now_ms()), answer_now))
        for node in others:
            self.network.send(node, lambda rid: messages.ClusterStatus(id=rid, local_only=True), answered(node))

    def tick(self) -> None:
        if not self._gathers:
            return
        now = self.now_ms()
        due = [answer for deadline, answer in self._gathers if deadline.fired(now)]
        if due:
            self._gathers = [(deadline, answer) for deadline, answer in self._gathers if deadline.running]
            for answer in due:
                answer()


def _log_persist_failure(error: DynError | None) -> None:
    if error is not None:
        log.error("could not persist the membership: %s", error)
