"""Starting a node: a new cluster's first membership, or the membership of the cluster a seed is in."""

from __future__ import annotations

import uuid

from dynd.client import open_client
from dynd.core.membership import ClusterParams, Membership, MembershipError, create
from dynd.protocol.errors import BadRequest, DynError, Unreachable


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
