"""Starting a node: a new cluster's first membership, or the membership of the cluster a seed is in."""

from __future__ import annotations

import uuid

from dynd.client import PeerCredentials, open_client
from dynd.core.membership import ClusterParams, Membership, MembershipError, create
from dynd.protocol.errors import BadRequest, DynError, Unauthorized, Unreachable
from dynd.shell.security import Security


async def fetch_membership(address: str, timeout_s: float, *, security: Security | None = None, name: str = "") -> Membership:
    """The membership of the cluster the seed at `address` belongs to. A node with a secret proves
    it (as `name`, not yet a member: the seed lets it gossip and nothing else)."""
    peer = PeerCredentials(name, security.cluster_id, security.keyring) if security is not None and name else None
    try:
        ssl_context = security.client_ssl if security is not None else None
        async with open_client(address, timeout_s=timeout_s, agent="gossip:joining", peer=peer, ssl_context=ssl_context) as client:
            reply = await client.gossip(b"")
    except Unauthorized as exc:
        raise Unauthorized(f"seed {address} and this node do not share a cluster secret (or TLS CA): {exc.message}") from None
    except DynError as exc:
        raise Unreachable(f"cannot reach seed {address}: {exc.message}") from None
    try:
        return Membership.decode(reply)
    except MembershipError as exc:
        raise BadRequest(f"seed {address} sent a bad membership: {exc}") from None


def new_cluster(name: str, address: str, n: int, r: int, w: int, partitions: int, location: str = "") -> Membership:
    try:
        return create(ClusterParams(uuid.uuid4().hex, n, r, w, partitions), name, address, location)
    except MembershipError as exc:
        raise BadRequest(str(exc)) from None
