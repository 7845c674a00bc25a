"""The node's view of its cluster: membership kept durable, spread by gossip, changed by admin acts.

Membership itself is pure (`dynd.core.membership`); this module persists it in the `meta`
database, gossips it push-pull with one random peer (or seed) per interval, and applies the admin
acts (join through a seed, leave, remove). Every change updates the peer addresses and the ring the
request handlers use.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable

import trio

from dynd.client import open_client
from dynd.core.membership import JOIN, JOINED, LEAVE, LEAVING, REMOVE, REMOVED, ClusterParams, Membership, MembershipError, create
from dynd.core.preflist import PreferenceList, preference_list
from dynd.core.ring import Ring
from dynd.protocol import messages
from dynd.protocol.errors import BadRequest, DynError, Unreachable
from dynd.shell.committer import GroupCommitter
from dynd.shell.peers import Peers
from dynd.storage.base import PutMeta

log = logging.getLogger("dynd.cluster")

MEMBERSHIP_META = "membership"


class Cluster:
    def __init__(
        self,
        name: str,
        address: str,
        membership: Membership,
        committer: GroupCommitter,
        peers: Peers,
        *,
        seeds: list[str],
        rng: random.Random,
    ) -> None:
        self.name = name
        self.address = address
        self.committer = committer
        self.peers = peers
        self.seeds = seeds
        self.rng = rng
        self.membership = membership
        self._preflists: dict[int, PreferenceList] = {}
        self._heard_at: dict[str, float] = {}  # member -> when a gossip exchange with it last succeeded
        self.heard_within_s = 5.0
        self.on_change: list[Callable[[], None]] = []
        self._adopt(membership, force=True)

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

    def ring_reply(self, request_id: int) -> messages.RingOk:
        return messages.RingOk(
            id=request_id,
            version=self.membership.digest,
            n=self.params.n,
            r=self.params.r,
            w=self.params.w,
            owners=list(self.ring.owners),
            addresses=[messages.NodeAddress(m.name, m.address) for m in self.membership.active()],
        )

    def status(self, request_id: int, transfers_pending: dict[str, int]) -> messages.ClusterStatusOk:
        """`transfers_pending`: each member's own count, as far as it is known (0 otherwise)."""
        counts = self.ring.counts()
        members = [
            messages.MemberView(
                name=m.name,
                address=m.address,
                status=m.status,
                partitions=counts.get(m.name, 0),
                reachable=self.reachable(m.name),
                transfers_pending=transfers_pending.get(m.name, 0),
            )
            for m in sorted(self.membership.members.values(), key=lambda m: m.name)
        ]
        return messages.ClusterStatusOk(id=request_id, node=self.name, members=members)

    def reachable(self, name: str) -> bool:
        """Connected now, or gossiped with lately (failure detection proper comes with SWIM)."""
        if name == self.name or self.peers.reachable(name):
            return True
        heard = self._heard_at.get(name)
        return heard is not None and trio.current_time() - heard < self.heard_within_s

    # ---- changes ----

    def _adopt(self, membership: Membership, force: bool = False) -> bool:
        changed = force or membership.events != self.membership.events
        self.membership = membership
        if changed:
            self._preflists = {}
            self.peers.set_addresses({m.name: m.address for m in membership.active()})
            for callback in self.on_change:
                callback()
        return changed

    def _update(self, membership: Membership, force: bool = False) -> None:
        if self._adopt(membership, force):
            self.committer.submit([PutMeta(MEMBERSHIP_META, membership.encode())], _log_persist_failure)
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

    def leave(self, node: str | None) -> str:
        target = node or self.name
        member = self.membership.members.get(target)
        if member is None or member.status == REMOVED:
            raise BadRequest(f"{target!r} is not a member")
        if member.status == LEAVING:
            return f"{target} is already leaving"
        if len([m for m in self.membership.members.values() if m.status == JOINED]) <= 1:
            raise BadRequest(f"{target} is the last member; it cannot leave")
        self._update(self.membership.with_event(LEAVE, target, origin=self.name))
        return f"{target} is leaving: its partitions move to the other members, then it is removed"

    def remove(self, node: str) -> str:
        member = self.membership.members.get(node)
        if member is None or member.status == REMOVED:
            raise BadRequest(f"{node!r} is not a member")
        if node == self.name:
            raise BadRequest("a node cannot remove itself; use leave")
        self._update(self.membership.with_event(REMOVE, node, origin=self.name))
        return f"{node} removed; its partitions were reassigned"

    def finish_leaving(self) -> None:
        """Called once a leaving node has handed everything off."""
        if self.membership.members.get(self.name, None) is not None and self.membership.members[self.name].status == LEAVING:
            self._update(self.membership.with_event(REMOVE, self.name, origin=self.name))

    @property
    def is_sole_member(self) -> bool:
        active = self.membership.active()
        return len(active) == 1 and active[0].name == self.name

    async def join(self, seed: str, timeout_s: float) -> str:
        """Join the cluster `seed` belongs to. Allowed while this node is alone in its own cluster."""
        if not self.is_sole_member:
            member = self.membership.members.get(self.name)
            if member is not None and member.status == JOINED:
                return f"{self.name} is already a member of cluster {self.params.cluster_id}"
        theirs = await fetch_membership(seed, timeout_s)
        if theirs.params.partitions != self.params.partitions:
            raise BadRequest(
                f"the cluster at {seed} uses {theirs.params.partitions} partitions and this node {self.params.partitions}; "
                "restart this node on an empty data directory with the cluster's --partitions"
            )
        if self.name in theirs.members and theirs.members[self.name].status == JOINED and theirs.address_of(self.name) == self.address:
            self._replace(theirs)
            return f"{self.name} is already a member of cluster {theirs.params.cluster_id}"
        self._replace(theirs.with_event(JOIN, self.name, origin=self.name, address=self.address))
        await self._push_to(seed, timeout_s)
        return f"{self.name} joined cluster {theirs.params.cluster_id} through {seed}"

    def _replace(self, membership: Membership) -> None:
        """Adopt another cluster's membership (joining it), dropping our own one-node cluster."""
        self._update(membership, force=True)

    async def announce(self, address: str, timeout_s: float) -> None:
        """Push our membership to `address` once (after joining through it at start)."""
        try:
            await self._push_to(address, timeout_s)
        except DynError as exc:
            log.info("could not announce to %s yet: %s", address, exc)

    # ---- gossip ----

    async def gossip_forever(self, interval_s: float, timeout_s: float) -> None:
        self.heard_within_s = max(self.heard_within_s, 4 * interval_s)
        while True:
            await trio.sleep(interval_s * (0.5 + self.rng.random()))  # jitter keeps nodes out of step
            target = self._gossip_target()
            if target is None:
                continue
            with trio.move_on_after(timeout_s):
                try:
                    await self._push_to(target, timeout_s)
                except DynError as exc:
                    log.debug("gossip with %s failed: %s", target, exc)
                except Exception:  # never let one bad exchange stop gossip
                    log.exception("gossip with %s failed", target)

    def _gossip_target(self) -> str | None:
        addresses = sorted({m.address for m in self.membership.active() if m.name != self.name} | set(self.seeds))
        addresses = [a for a in addresses if a != self.address]
        return self.rng.choice(addresses) if addresses else None

    async def _push_to(self, address: str, timeout_s: float) -> None:
        async with open_client(address, timeout_s=timeout_s, agent=f"gossip:{self.name}") as client:
            reply = await client.gossip(self.membership.encode())
            self._heard_at[client.node_name] = trio.current_time()
        try:
            self._update(self.membership.merge(Membership.decode(reply)))
        except MembershipError as exc:
            log.warning("gossip from %s refused: %s", address, exc)


async def fetch_membership(address: str, timeout_s: float) -> Membership:
    try:
        async with open_client(address, timeout_s=timeout_s, agent="gossip:joining") as client:
            reply = await client.gossip(b"")
    except DynError as exc:
        raise Unreachable(f"cannot reach seed {address}: {exc.message}") from None
    try:
        return Membership.decode(reply)
    except MembershipError as exc:
        raise BadRequest(f"seed {address} sent a bad membership: {exc}") from None


def new_cluster(name: str, address: str, n: int, r: int, w: int, partitions: int) -> Membership:
    try:
        return create(ClusterParams(uuid.uuid4().hex, n, r, w, partitions), name, address)
    except MembershipError as exc:
        raise BadRequest(str(exc)) from None


def _log_persist_failure(error: DynError | None) -> None:
    if error is not None:
        log.error("could not persist the membership: %s", error)
