"""A stand-in node for dynctl's cluster and ring tests: dynd's real framing and codec, canned replies.

    python tests/cli/fake_cluster_node.py --listen 127.0.0.1:PORT [--without-cluster] [--admin-token TOKEN]
        [--locations | --before-locations]

It answers hello, ping, ring_get, cluster_status, cluster_join/leave/remove, cluster_plan,
cluster_transfers, stats and info from the constants below (the tests import them to know what to expect), so dynctl's tables, JSON and exit codes are
tested over a real connection against known numbers, which a real cluster's claim does not fix.
Every frame goes through `dynd.protocol.codec`, so a request dynctl gets wrong fails here as it
would on a node. With --without-cluster it refuses every cluster and ring request with
bad_request, as a node that does not serve them would, for the error paths. With --admin-token it
acts as a node seen from another host: a hello with that token holds the admin role, one without a
token the client role, and one with any other token is refused; requests dynd's role table gives
to admins (membership changes, cluster status) are refused without the admin role with
`unauthorized`, as dynd refuses them. With --locations its ring carries LOCATIONS (when the
RingGet asks for them, as a node answers); with --before-locations it refuses RingGet's
`locations` field as unknown, as a node older than locations does.
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import sys
from functools import partial

import trio

from dynd.protocol import PROTOCOL_VERSION, codec, messages
from dynd.protocol.address import format_address, parse_address
from dynd.protocol.errors import BadRequest, DynError, Unauthorized
from dynd.protocol.framing import FrameDecoder, encode_frame

NODE_NAME = "fake1"
FRAME_BYTES_MAX = 1024 * 1024
RECEIVE_CHUNK_BYTES = 64 * 1024

# Q = 8 over three nodes: fake1 and fake2 own 3 partitions each, fake3 owns 2.
RING_OWNERS = ["fake1", "fake2", "fake3", "fake1", "fake2", "fake3", "fake1", "fake2"]
RING_N, RING_R, RING_W = 2, 1, 2
RING_VERSION = bytes.fromhex("0badcafe")
NODE_ADDRESSES = {"fake1": "127.0.0.1:7501", "fake2": "127.0.0.1:7502", "fake3": "127.0.0.1:7503"}
# With --locations: fake1 and fake2 are two workers of one host, fake3 another host of the same
# zone, so with N = 2 every key has copies on 2 hosts but on one zone; fake4 (joining, not on
# the ring) is in a second zone.
LOCATIONS = {"fake1": "zone-a/host-1", "fake2": "zone-a/host-1", "fake3": "zone-a/host-2", "fake4": "zone-b/host-3"}
_ring_mode = ["plain"]  # "plain", "located" or "before-locations" (main sets it)

# fake4 has joined and owns nothing yet: its share is 0 and it is not on the ring.
MEMBERS = [
    messages.MemberView("fake1", "127.0.0.1:7501", "valid", 3, True, 0),
    messages.MemberView("fake2", "127.0.0.1:7502", "valid", 3, True, 2),
    messages.MemberView("fake3", "127.0.0.1:7503", "leaving", 2, False, 1, liveness="dead", incarnation=4, hints_pending=7),
    messages.MemberView("fake4", "127.0.0.1:7504", "joining", 0, True, 0),
]

# What `stats` and `info` answer (issue 14): two minutes up, known rates, percentiles and shares.
UPTIME_MS = 120_000
LATENCIES = [
    messages.LatencyView("get", "60s", 600, 1_000, 5_000, 9_000, 12_000),
    messages.LatencyView("get", "start", 1_200, 1_100, 6_000, 10_000, 30_000),
    messages.LatencyView("put", "60s", 300, 2_000, 8_000, 15_000, 20_000),
    messages.LatencyView("put", "start", 360, 2_100, 9_000, 16_000, 40_000),
    messages.LatencyView("replicate", "60s", 120, 300, 900, 1_500, 2_000),
    messages.LatencyView("replicate", "start", 240, 310, 950, 1_600, 2_500),
]
COUNTERS = [
    messages.Metric("requests", "get:ok", 1_150),
    messages.Metric("requests", "get:timeout", 50),
    messages.Metric("requests", "put:ok", 350),
    messages.Metric("requests", "put:quorum_failed", 10),
    messages.Metric("hints_stored", "", 12),
]
GAUGES = [
    messages.Metric("keys", "", 4_321),
    messages.Metric("hints_pending", "fake3", 7),
    messages.Metric("partitions_in_transfer", "", 2),
]
VERSIONS_PER_GET = [900, 80, 15, 5]
INFO = messages.InfoOk(
    id=0,
    node=NODE_NAME,
    version="0.0-fake",
    protocol_version=PROTOCOL_VERSION,
    uptime_ms=UPTIME_MS,
    listen="127.0.0.1:7501",
    advertise="127.0.0.1:7501",
    data_dir="/var/lib/dynd/fake1",
    keys=4_321,
    disk_used_bytes=50 * 1024 * 1024,
    map_bytes=1024 * 1024 * 1024,
    pending_writes=3,
    hints_pending=7,
    partitions_owned=3,
    last_exchange_age_ms=42_000,
)

# A member name the fake refuses, as a node refuses to remove a node it does not know.
UNKNOWN_MEMBER = "ghost"
# A member that answers probes: removing it needs force, as a node refuses to remove a live member.
LIVE_MEMBER = "fake2"

# The plan of every change: fake3 leaves (or is removed); its two partitions go to fake1 and fake2.
PLAN_OWNERS_AFTER = ["fake1", "fake2", "fake1", "fake1", "fake2", "fake2", "fake1", "fake2"]
PLAN_MEMBERS = [
    messages.PlanMember("fake1", "valid", "valid", 3, 4, 0, 1, 120, 2_400, 0, 0),
    messages.PlanMember("fake2", "valid", "valid", 3, 4, 0, 1, 80, 1_600, 0, 0),
    messages.PlanMember("fake3", "leaving", "removed", 2, 0, 2, 0, 0, 0, 200, 4_000),
]
PLAN_MOVES = [messages.PartitionMove(2, "fake3", "fake1", 120, 2_400), messages.PartitionMove(5, "fake3", "fake2", 80, 1_600)]
PLAN_NOTES = ["fake4 did not answer: what only it holds is not counted"]


def plan_for(request: messages.ClusterPlan) -> messages.ClusterPlanOk:
    target = request.node or request.seed or NODE_NAME
    return messages.ClusterPlanOk(
        id=request.id, node=NODE_NAME, action=request.action, target=target, changes=True, summary=f"{request.action} {target}",
        n=RING_N, owners_before=list(RING_OWNERS), owners_after=list(PLAN_OWNERS_AFTER), members=list(PLAN_MEMBERS),
        moves=list(PLAN_MOVES), windows_repeated=[3, 7], windows_repeated_before=0, keys_to_move=200, bytes_to_move=4_000,
        sizes_from=["fake1", "fake2", "fake3"], sizes_missing=["fake4"], notes=list(PLAN_NOTES),
    )  # fmt: skip


# `cluster transfers`: fake3 sends partition 2 to fake1 and fake2 (started STARTED_MS), partition 5 queued.
STARTED_MS = 1_767_225_600_000
TRANSFERS = [
    messages.NodeTransfers("fake1", "valid", True, 0, 0, 0, 0, 0, 0, 0, False, []),
    messages.NodeTransfers(
        "fake3", "leaving", True, 2, 150, 3_000, 1, 50, 1_000, 0, False,
        [
            messages.TransferView("fake3", 2, ["fake1", "fake2"], "sending", 30, 600, 120, STARTED_MS),
            messages.TransferView("fake3", 5, ["fake2", "fake1"], "queued", 0, 0, 80, 0),
        ],
    ),  # fmt: skip
    messages.NodeTransfers("fake4", "joining", False, 0, 0, 0, 0, 0, 0, 0, False, []),
]

# What the leaving node reports to `leave --wait`, poll by poll (the last one repeats): keys
# handed off grow from 100 to 300 while the partitions left fall to none.
LEAVE_PROGRESS = [
    messages.NodeTransfers(NODE_NAME, "leaving", True, 4, 200, 4_000, 2, 100, 2_000, 0, False, []),
    messages.NodeTransfers(NODE_NAME, "leaving", True, 2, 100, 2_000, 4, 200, 4_000, 0, False, []),
    messages.NodeTransfers(NODE_NAME, "removed", True, 0, 0, 0, 6, 300, 6_000, 0, False, []),
    messages.NodeTransfers(NODE_NAME, "removed", True, 0, 0, 0, 6, 300, 6_000, 0, True, []),
]
_leave_polls = [0]  # local transfer requests answered since the last leave


def join_message(seed: str) -> str:
    return f"{NODE_NAME} is joining the cluster of {seed}"


def leave_message(node: str | None) -> str:
    return f"{node or NODE_NAME} is handing off its partitions and leaving"


def remove_message(node: str) -> str:
    return f"{node} removed; its partitions go to the other members"


CLUSTER_REQUESTS = (
    messages.ClusterJoin, messages.ClusterLeave, messages.ClusterRemove, messages.ClusterStatus, messages.RingGet,
    messages.ClusterPlan, messages.ClusterTransfers,
)  # fmt: skip
CLIENT, ADMIN = "client", "admin"


def unauthorized_reason(op: str) -> str:
    return f"{op} needs an admin token or a connection from the node's own host (this connection holds client)"


def hello_roles(request: messages.Hello, admin_token: str | None) -> set[str]:
    """The roles a hello earns; raises Unauthorized for a token this node does not know."""
    if admin_token is None:
        return {CLIENT, ADMIN}  # as a node seen from its own host
    if request.token is None:
        return {CLIENT}
    if request.token == admin_token:
        return {CLIENT, ADMIN}
    raise Unauthorized("hello refused: the token is not valid here")


def reply_to(request: messages.Message, *, with_cluster: bool) -> messages.Message:
    """The canned reply; raises DynError for what a node would refuse."""
    if isinstance(request, messages.Ping):
        return messages.Pong(id=request.id, node=NODE_NAME)
    if isinstance(request, CLUSTER_REQUESTS) and not with_cluster:
        raise BadRequest(f"{request.OP!r} is not a request a node accepts")
    if isinstance(request, messages.RingGet):
        if request.locations is not None and _ring_mode[0] == "before-locations":
            raise BadRequest("unknown field(s) ['locations'] for RingGet")  # as the codec of an older node says
        addresses = [messages.NodeAddress(node, address) for node, address in NODE_ADDRESSES.items()]
        locations = None
        if request.locations and _ring_mode[0] == "located":
            locations = [messages.NodeLocation(node, where) for node, where in LOCATIONS.items()]
        return messages.RingOk(request.id, RING_VERSION, RING_N, RING_R, RING_W, list(RING_OWNERS), addresses, locations)
    if isinstance(request, messages.ClusterStatus):
        return messages.ClusterStatusOk(id=request.id, node=NODE_NAME, members=list(MEMBERS))
    if isinstance(request, messages.StatsGet):
        return messages.StatsOk(
            request.id, NODE_NAME, UPTIME_MS, list(LATENCIES), list(COUNTERS), list(GAUGES), list(VERSIONS_PER_GET)
        )
    if isinstance(request, messages.InfoGet):
        return dataclasses.replace(INFO, id=request.id)
    if isinstance(request, messages.ClusterJoin):
        return messages.ClusterOk(id=request.id, message=join_message(request.seed))
    if isinstance(request, messages.ClusterLeave | messages.ClusterRemove | messages.ClusterPlan):
        if request.node == UNKNOWN_MEMBER:
            raise BadRequest(f"no member named {request.node!r}")
        if isinstance(request, messages.ClusterPlan):
            return plan_for(request)
        if isinstance(request, messages.ClusterLeave):
            _leave_polls[0] = 0
            return messages.ClusterOk(id=request.id, message=leave_message(request.node))
        if request.node == LIVE_MEMBER and not request.force:
            raise BadRequest(f"{LIVE_MEMBER} is alive and answers: remove it with --force")
        return messages.ClusterOk(id=request.id, message=remove_message(request.node))
    if isinstance(request, messages.ClusterTransfers):
        if not request.local_only:
            return messages.ClusterTransfersOk(id=request.id, node=NODE_NAME, nodes=list(TRANSFERS))
        index = min(_leave_polls[0], len(LEAVE_PROGRESS) - 1)
        _leave_polls[0] += 1
        return messages.ClusterTransfersOk(id=request.id, node=NODE_NAME, nodes=[LEAVE_PROGRESS[index]])
    raise BadRequest(f"the fake node does not serve {request.OP!r}")


def _error(request_id: int | None, error: DynError) -> messages.ErrorReply:
    return messages.ErrorReply(id=request_id, code=error.code, message=error.message, retriable=error.retriable)


def answer_frame(
    frame: bytes, *, roles: set[str] | None, with_cluster: bool, admin_token: str | None = None
) -> tuple[messages.Message, set[str] | None]:
    """(reply, the connection's roles; None until a hello is accepted) for one frame's payload."""
    try:
        request = codec.decode_message(frame)
    except DynError as exc:
        return _error(codec.request_id_of(exc), exc), roles
    if roles is None:
        if isinstance(request, messages.Hello) and request.version == PROTOCOL_VERSION:
            try:
                granted = hello_roles(request, admin_token)
            except DynError as exc:
                return _error(None, exc), None
            return messages.HelloOk(version=PROTOCOL_VERSION, node=NODE_NAME, roles=sorted(granted)), granted
        return _error(None, BadRequest("the first frame must be a hello")), None
    try:
        if messages.required_role(request) == ADMIN and ADMIN not in roles:  # dynd's own table
            raise Unauthorized(unauthorized_reason(request.OP))
        return reply_to(request, with_cluster=with_cluster), roles
    except DynError as exc:
        return _error(getattr(request, "id", None), exc), roles


async def serve_connection(with_cluster: bool, admin_token: str | None, stream: trio.SocketStream) -> None:
    decoder = FrameDecoder(FRAME_BYTES_MAX)
    roles: set[str] | None = None
    async with stream:
        while True:
            try:
                chunk = await stream.receive_some(RECEIVE_CHUNK_BYTES)
                if not chunk:
                    return
                replies = []
                for frame in decoder.feed(chunk):
                    reply, roles = answer_frame(frame, roles=roles, with_cluster=with_cluster, admin_token=admin_token)
                    replies.append(encode_frame(codec.encode_message(reply)))
                await stream.send_all(b"".join(replies))
            except (trio.BrokenResourceError, trio.ClosedResourceError, DynError):
                return


async def serve(host: str, port: int, with_cluster: bool, admin_token: str | None = None) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    print(f"fake cluster node listening on {format_address(host, port)}", file=sys.stderr, flush=True)
    await trio.serve_listeners(partial(serve_connection, with_cluster, admin_token), listeners)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--without-cluster", action="store_true", help="refuse cluster and ring requests")
    parser.add_argument("--admin-token", metavar="TOKEN", help="act as a node seen from another host, with this admin token")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--locations", action="store_true", help="the ring carries LOCATIONS")
    modes.add_argument("--before-locations", action="store_true", help="refuse RingGet's locations field, as an older node")
    args = parser.parse_args(argv)
    _ring_mode[0] = "located" if args.locations else "before-locations" if args.before_locations else "plain"
    host, port = parse_address(args.listen)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, host, port, not args.without_cluster, args.admin_token)


if __name__ == "__main__":
    main()
