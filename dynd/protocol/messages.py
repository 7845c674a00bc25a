"""Every message on the wire, as a frozen dataclass with its op name.

A frame carries one CBOR map: {"op": OP, field: value, ...}. Requests carry an `id` that the
reply repeats, so one connection carries many requests at once. Nested records (`ClockEntry`,
`SiblingView`) travel as maps without an op. The codec (`codec.py`) is the only place that turns
these into bytes and back, type-checking every field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dynd.protocol.errors import DynError


@dataclass(frozen=True, slots=True)
class ClockEntry:
    actor: str
    counter: int


@dataclass(frozen=True, slots=True)
class SiblingView:
    """One live sibling as a client sees it: its value, its dot and the clock it was written against."""

    value: bytes
    actor: str
    counter: int
    clock: list[ClockEntry]


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame of every connection (`dynd.protocol.auth` has the whole exchange).

    A client may carry a `token` (client or admin role). A peer names itself (`node`), the
    cluster it belongs to (`cluster`) and sends a fresh `nonce` for the listener to prove the
    cluster secret over."""

    OP: ClassVar[str] = "hello"
    version: int
    agent: str
    token: str | None = None
    node: str | None = None
    cluster: str | None = None
    nonce: bytes | None = None


@dataclass(frozen=True, slots=True)
class HelloOk:
    """`roles`: what the connection may do so far. To a peer's hello the listener adds its own
    `nonce` and its `proof` of the secret; the dialer then sends `HelloProof`."""

    OP: ClassVar[str] = "hello_ok"
    version: int
    node: str
    roles: list[str] | None = None
    cluster: str | None = None
    nonce: bytes | None = None
    proof: bytes | None = None


@dataclass(frozen=True, slots=True)
class HelloProof:
    """The dialer's proof of the cluster secret over both nonces, both names and the cluster id."""

    OP: ClassVar[str] = "hello_proof"
    proof: bytes


@dataclass(frozen=True, slots=True)
class HelloProofOk:
    OP: ClassVar[str] = "hello_proof_ok"
    roles: list[str]


@dataclass(frozen=True, slots=True)
class Ping:
    OP: ClassVar[str] = "ping"
    id: int


@dataclass(frozen=True, slots=True)
class Pong:
    OP: ClassVar[str] = "pong"
    id: int
    node: str


@dataclass(frozen=True, slots=True)
class Get:
    """`forwarded` is set by a node passing the request to a primary, which then coordinates it.
    `ring` is the ring version a routing client used: a node that is not a primary of the key then
    answers `stale_ring` instead of forwarding, so the client refreshes its ring. `pr` is how many
    of the R replies must come from primaries (not fallbacks standing in for them)."""

    OP: ClassVar[str] = "get"
    id: int
    key: bytes
    r: int | None = None
    forwarded: bool | None = None
    ring: bytes | None = None
    pr: int | None = None


@dataclass(frozen=True, slots=True)
class GetOk:
    """Live siblings (tombstones excluded) and the context that covers every sibling, tombstones too."""

    OP: ClassVar[str] = "get_ok"
    id: int
    siblings: list[SiblingView]
    context: bytes


@dataclass(frozen=True, slots=True)
class Put:
    """`pw` is how many of the W stores must be on primaries (not fallbacks standing in for them)."""

    OP: ClassVar[str] = "put"
    id: int
    key: bytes
    value: bytes
    context: bytes | None = None
    w: int | None = None
    forwarded: bool | None = None
    ring: bytes | None = None
    pw: int | None = None


@dataclass(frozen=True, slots=True)
class PutOk:
    """The context of what this client has now seen: its old context plus the new write."""

    OP: ClassVar[str] = "put_ok"
    id: int
    context: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    OP: ClassVar[str] = "delete"
    id: int
    key: bytes
    context: bytes
    w: int | None = None
    forwarded: bool | None = None
    ring: bytes | None = None
    pw: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteOk:
    OP: ClassVar[str] = "delete_ok"
    id: int
    context: bytes


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """`id` is None when the failing frame carried no readable id (for example, undecodable CBOR)."""

    OP: ClassVar[str] = "error"
    id: int | None
    code: str
    message: str
    retriable: bool


# ---- between nodes ----


@dataclass(frozen=True, slots=True)
class Replicate:
    """Merge this stored record of `key` into yours; answer once it is durable. With `hint`, the
    receiver is a fallback standing in for the primary `hint` names: it keeps the record as a hint
    for that primary and delivers it once the primary is reachable again."""

    OP: ClassVar[str] = "replicate"
    id: int
    key: bytes
    record: bytes
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicateOk:
    OP: ClassVar[str] = "replicate_ok"
    id: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """A replica read for a coordinator: the stored record of `key`, if any. With `hint`, the
    receiver answers as a fallback for that primary: its own record merged with the hint it holds."""

    OP: ClassVar[str] = "fetch"
    id: int
    key: bytes
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class FetchOk:
    OP: ClassVar[str] = "fetch_ok"
    id: int
    record: bytes | None


@dataclass(frozen=True, slots=True)
class HandoffItem:
    key: bytes
    record: bytes


@dataclass(frozen=True, slots=True)
class Handoff:
    """Part of a partition moving to a new owner; merged and made durable before HandoffOk."""

    OP: ClassVar[str] = "handoff"
    id: int
    partition: int
    items: list[HandoffItem]


@dataclass(frozen=True, slots=True)
class HandoffOk:
    OP: ClassVar[str] = "handoff_ok"
    id: int


@dataclass(frozen=True, slots=True)
class Gossip:
    """Push-pull membership exchange: the receiver merges and answers with its merged view."""

    OP: ClassVar[str] = "gossip"
    id: int
    membership: bytes


@dataclass(frozen=True, slots=True)
class GossipOk:
    OP: ClassVar[str] = "gossip_ok"
    id: int
    membership: bytes


# ---- anti-entropy between the replicas of a partition (dynd.core.anti_entropy) ----
#
# Hashes travel as 16 bytes, or b"" for an empty range. `tree_segments` and `tree_fanout` name the
# tree shape the asker uses; a receiver whose trees have another shape refuses with bad_request.


@dataclass(frozen=True, slots=True)
class TreeRoots:
    """The Merkle roots of `partitions`, in the same order."""

    OP: ClassVar[str] = "tree_roots"
    id: int
    partitions: list[int]
    tree_segments: int
    tree_fanout: int


@dataclass(frozen=True, slots=True)
class TreeRootsOk:
    OP: ClassVar[str] = "tree_roots_ok"
    id: int
    hashes: list[bytes]


@dataclass(frozen=True, slots=True)
class TreeLevel:
    """The hashes of nodes `indexes` at `depth` of one partition's tree (depth 0: the root)."""

    OP: ClassVar[str] = "tree_level"
    id: int
    partition: int
    depth: int
    indexes: list[int]
    tree_segments: int
    tree_fanout: int


@dataclass(frozen=True, slots=True)
class TreeLevelOk:
    OP: ClassVar[str] = "tree_level_ok"
    id: int
    hashes: list[bytes]


@dataclass(frozen=True, slots=True)
class KeyHash:
    key: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class SegmentKeys:
    """The (key, hash) entries of leaf `segments` of one partition's tree, each segment's keys in
    key order, at most `limit` of them; with `after`, the first segment's keys start after it."""

    OP: ClassVar[str] = "segment_keys"
    id: int
    partition: int
    segments: list[int]
    limit: int
    tree_segments: int
    tree_fanout: int
    after: bytes | None = None


@dataclass(frozen=True, slots=True)
class SegmentKeysOk:
    """`complete`: how many of the asked segments are listed in full. When the page filled up inside
    segment number `complete`, `after` is the last key listed of it: ask again from there."""

    OP: ClassVar[str] = "segment_keys_ok"
    id: int
    entries: list[KeyHash]
    complete: int
    after: bytes | None = None


# ---- cluster administration and ring queries ----


@dataclass(frozen=True, slots=True)
class ClusterJoin:
    """Ask this node to join the cluster that `seed` (HOST:PORT) belongs to."""

    OP: ClassVar[str] = "cluster_join"
    id: int
    seed: str


@dataclass(frozen=True, slots=True)
class ClusterLeave:
    """Hand off `node`'s partitions (this node when None), then remove it."""

    OP: ClassVar[str] = "cluster_leave"
    id: int
    node: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterRemove:
    """Drop a dead node at once; its partitions go to the others."""

    OP: ClassVar[str] = "cluster_remove"
    id: int
    node: str


@dataclass(frozen=True, slots=True)
class ClusterOk:
    OP: ClassVar[str] = "cluster_ok"
    id: int
    message: str


@dataclass(frozen=True, slots=True)
class MemberView:
    name: str
    address: str
    status: str
    partitions: int
    reachable: bool
    transfers_pending: int
    liveness: str = "alive"  # the failure detector's verdict: alive, suspect or dead
    incarnation: int = 0
    hints_pending: int = 0  # hints this node holds for the member


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The cluster as one node sees it, with every member's own count of pending transfers
    (gathered from the members; `local_only` asks for this node's view alone)."""

    OP: ClassVar[str] = "cluster_status"
    id: int
    local_only: bool | None = None


@dataclass(frozen=True, slots=True)
class ClusterStatusOk:
    """`last_exchange_ms`: per partition, when this node last finished an anti-entropy exchange
    of it (wall-clock ms; 0: never, or a partition it does not hold)."""

    OP: ClassVar[str] = "cluster_status_ok"
    id: int
    node: str
    members: list[MemberView]
    last_exchange_ms: list[int] | None = None


@dataclass(frozen=True, slots=True)
class NodeAddress:
    node: str
    address: str


@dataclass(frozen=True, slots=True)
class RingGet:
    OP: ClassVar[str] = "ring_get"
    id: int


@dataclass(frozen=True, slots=True)
class RingOk:
    """The ring as clients need it: owners[p] is partition p's owner; `version` changes with it."""

    OP: ClassVar[str] = "ring_ok"
    id: int
    version: bytes
    n: int
    r: int
    w: int
    owners: list[str]
    addresses: list[NodeAddress]


# ---- repair (anti-entropy on demand) ----


@dataclass(frozen=True, slots=True)
class RepairStart:
    """Run an anti-entropy exchange now for `partition` (every partition this node holds when
    None) with each other primary; the reply names the run to poll with RepairStatus."""

    OP: ClassVar[str] = "repair_start"
    id: int
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class RepairStatus:
    OP: ClassVar[str] = "repair_status"
    id: int
    run: int


@dataclass(frozen=True, slots=True)
class RepairProgressOk:
    """Progress of a repair run: (partition, peer) pairs compared so far and what they found."""

    OP: ClassVar[str] = "repair_progress_ok"
    id: int
    run: int
    pairs_total: int
    pairs_done: int
    pairs_failed: int
    keys_compared: int
    keys_differing: int
    repaired_local: int
    repaired_remote: int
    finished: bool
    errors: list[str]


Request = (
    Hello | HelloProof | Ping | Get | Put | Delete | Replicate | Fetch | Handoff | Gossip
    | TreeRoots | TreeLevel | SegmentKeys
    | ClusterJoin | ClusterLeave | ClusterRemove | ClusterStatus | RingGet | RepairStart | RepairStatus
)
Reply = (
    HelloOk | HelloProofOk | Pong | GetOk | PutOk | DeleteOk | ErrorReply | ReplicateOk | FetchOk | HandoffOk | GossipOk
    | TreeRootsOk | TreeLevelOk | SegmentKeysOk
    | ClusterOk | ClusterStatusOk | RingOk | RepairProgressOk
)
Message = Request | Reply

MESSAGE_TYPES: tuple[type, ...] = (
    Hello, HelloOk, HelloProof, HelloProofOk, Ping, Pong, Get, GetOk, Put, PutOk, Delete, DeleteOk, ErrorReply,
    Replicate, ReplicateOk, Fetch, FetchOk, Handoff, HandoffOk, Gossip, GossipOk,
    TreeRoots, TreeRootsOk, TreeLevel, TreeLevelOk, SegmentKeys, SegmentKeysOk,
    ClusterJoin, ClusterLeave, ClusterRemove, ClusterOk, ClusterStatus, ClusterStatusOk, RingGet, RingOk,
    RepairStart, RepairStatus, RepairProgressOk,
)
RECORD_TYPES: tuple[type, ...] = (ClockEntry, SiblingView, HandoffItem, MemberView, NodeAddress, KeyHash)

# Who may send each request (roles: dynd.protocol.auth). Every request type is listed, so a new
# one cannot be added without a role (tests/unit/test_roles.py walks MESSAGE_TYPES). The hello
# frames are the handshake itself; replies are never requests.
HANDSHAKE_TYPES: tuple[type, ...] = (Hello, HelloProof)
REPLY_TYPES: tuple[type, ...] = (
    HelloOk, HelloProofOk, Pong, GetOk, PutOk, DeleteOk, ErrorReply, ReplicateOk, FetchOk, HandoffOk, GossipOk,
    TreeRootsOk, TreeLevelOk, SegmentKeysOk, ClusterOk, ClusterStatusOk, RingOk, RepairProgressOk,
)
REQUIRED_ROLE: dict[type, str] = {
    Ping: "client", Get: "client", Put: "client", Delete: "client", RingGet: "client",
    ClusterJoin: "admin", ClusterLeave: "admin", ClusterRemove: "admin", ClusterStatus: "admin",
    RepairStart: "admin", RepairStatus: "admin",
    Replicate: "peer", Fetch: "peer", Handoff: "peer", Gossip: "peer",
    TreeRoots: "peer", TreeLevel: "peer", SegmentKeys: "peer",
}  # fmt: skip
# A get, put or delete that a node forwards to a primary makes that primary coordinate even when
# it would not: only a peer may ask that.
FORWARDABLE_TYPES: tuple[type, ...] = (Get, Put, Delete)


def required_role(message: object) -> str | None:
    """The role a request needs, or None for a frame that is not a request a node accepts."""
    role = REQUIRED_ROLE.get(type(message))
    if role is not None and type(message) in FORWARDABLE_TYPES and message.forwarded:  # type: ignore[attr-defined]
        return "peer"
    return role


def error_reply(request_id: int | None, error: DynError) -> ErrorReply:
    """The reply that carries `error` across the wire (the one place errors become messages)."""
    return ErrorReply(id=request_id, code=error.code, message=error.message, retriable=error.retriable)
