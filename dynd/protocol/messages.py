"""Every message on the wire, as a frozen dataclass with its op name.

A frame carries one CBOR map: {"op": OP, field: value, ...}. Requests carry an `id` that the
reply repeats, so one connection carries many requests at once. Nested records (`ClockEntry`,
`SiblingView`) travel as maps without an op. The codec (`codec.py`) is the only place that turns
these into bytes and back, type-checking every field.

Each class says what it is where it is defined, with one decorator above its `@dataclass`:
`@request(role)` (a request and the role that may send it, `forwardable=True` when a node may pass
it on to a primary), `@handshake` (the hello frames), `@reply` or `@record` (a nested map). The
tables at the bottom (`MESSAGE_TYPES`, `REQUIRED_ROLE`, ...) are built from those decorators, so a
new message is written in one place; the module refuses to load with a message left undeclared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar

from dynd.protocol.roles import ADMIN, CLIENT, PEER
from dynd.protocol.errors import DynError


class Message(Protocol):
    """Any message class below (the registry, `MESSAGE_TYPES`, lists them all): it has an op name."""

    OP: ClassVar[str]


# ---- the registry: filled by the decorators as the classes below are defined ----

_Class = TypeVar("_Class", bound=type)

_messages: list[type] = []
_records: list[type] = []
_handshakes: list[type] = []
_replies: list[type] = []
_roles: dict[type, str] = {}
_forwardable: list[type] = []
_ops: dict[str, type] = {}


def _declared(cls: type, *, has_op: bool) -> None:
    # `slots=True` makes @dataclass return a new class: a decorator below it would register the
    # class the module does not export.
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: put its message decorator above @dataclass(frozen=True, slots=True)")
    if not has_op:
        return
    op = cls.__dict__.get("OP")
    if not isinstance(op, str):
        raise TypeError(f"{cls.__name__} needs an OP")
    if op in _ops:
        raise TypeError(f"{cls.__name__} and {_ops[op].__name__} share the op {op!r}")
    _ops[op] = cls
    _messages.append(cls)


def request(role: str, *, forwardable: bool = False) -> Callable[[_Class], _Class]:
    """A request that a connection holding `role` may send (roles: `dynd.protocol.roles`).
    `forwardable`: a node may forward it to a primary, which then coordinates it; forwarded, it
    needs the peer role."""

    def declare(cls: _Class) -> _Class:
        _declared(cls, has_op=True)
        _roles[cls] = role
        if forwardable:
            _forwardable.append(cls)
        return cls

    return declare


def handshake(cls: _Class) -> _Class:
    """A hello frame: the handshake itself, sent before the connection has any role."""
    _declared(cls, has_op=True)
    _handshakes.append(cls)
    return cls


def reply(cls: _Class) -> _Class:
    """A reply: never a request a node accepts."""
    _declared(cls, has_op=True)
    _replies.append(cls)
    return cls


def record(cls: _Class) -> _Class:
    """A nested map inside a message (no op)."""
    _declared(cls, has_op=False)
    _records.append(cls)
    return cls


@record
@dataclass(frozen=True, slots=True)
class ClockEntry:
    actor: str
    counter: int


@record
@dataclass(frozen=True, slots=True)
class MetaEntry:
    """One item of a value's user metadata (Riak's X-Riak-Meta-NAME: VALUE); names are lowercase."""

    name: str
    value: str


@record
@dataclass(frozen=True, slots=True)
class SiblingView:
    """One live sibling as a client sees it: its value, its dot and the clock it was written
    against. A value written with metadata (a content type, user metadata) carries it, and
    `modified_ms`, when it was written (the coordinator's wall clock); one written without has
    none of the three."""

    value: bytes
    actor: str
    counter: int
    clock: list[ClockEntry]
    content_type: str | None = None
    usermeta: list[MetaEntry] | None = None
    modified_ms: int | None = None


@handshake
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


@reply
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


@handshake
@dataclass(frozen=True, slots=True)
class HelloProof:
    """The dialer's proof of the cluster secret over both nonces, both names and the cluster id."""

    OP: ClassVar[str] = "hello_proof"
    proof: bytes


@reply
@dataclass(frozen=True, slots=True)
class HelloProofOk:
    OP: ClassVar[str] = "hello_proof_ok"
    roles: list[str]


@request(CLIENT)
@dataclass(frozen=True, slots=True)
class Ping:
    OP: ClassVar[str] = "ping"
    id: int


@reply
@dataclass(frozen=True, slots=True)
class Pong:
    OP: ClassVar[str] = "pong"
    id: int
    node: str


@request(CLIENT, forwardable=True)
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


@reply
@dataclass(frozen=True, slots=True)
class GetOk:
    """Live siblings (tombstones excluded) and the context that covers every sibling, tombstones too."""

    OP: ClassVar[str] = "get_ok"
    id: int
    siblings: list[SiblingView]
    context: bytes


@request(CLIENT, forwardable=True)
@dataclass(frozen=True, slots=True)
class Put:
    """`pw` is how many of the W stores must be on primaries (not fallbacks standing in for them).
    `content_type` and `usermeta`: metadata stored with the value (within meta_bytes_max), shown
    with it to every reader; a node older than them refuses them as unknown fields."""

    OP: ClassVar[str] = "put"
    id: int
    key: bytes
    value: bytes
    context: bytes | None = None
    w: int | None = None
    forwarded: bool | None = None
    ring: bytes | None = None
    pw: int | None = None
    content_type: str | None = None
    usermeta: list[MetaEntry] | None = None


@reply
@dataclass(frozen=True, slots=True)
class PutOk:
    """The context of what this client has now seen: its old context plus the new write."""

    OP: ClassVar[str] = "put_ok"
    id: int
    context: bytes


@request(CLIENT, forwardable=True)
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


@reply
@dataclass(frozen=True, slots=True)
class DeleteOk:
    OP: ClassVar[str] = "delete_ok"
    id: int
    context: bytes


@reply
@dataclass(frozen=True, slots=True)
class ErrorReply:
    """`id` is None when the failing frame carried no readable id (for example, undecodable CBOR)."""

    OP: ClassVar[str] = "error"
    id: int | None
    code: str
    message: str
    retriable: bool


@request(CLIENT)
@dataclass(frozen=True, slots=True)
class KeysList:
    """The keys whose stored key starts with `prefix` (a bucket's: `dynd.protocol.buckets`), from
    a scan of every member's store (`dynd.core.listing`), sorted, at most `limit` (and at most
    list_keys_max). A key is listed when a scanned replica holds a live value of it: a deleted key
    leaves the listing once every replica holds its tombstone.

    Client role, as a get: a client may read every key, so it may list them. It is a full scan of
    every node's store: the coordinating node runs list_keys_inflight_max at once and refuses more
    with `overloaded`, and each node examines at most list_keys_scan_max stored keys."""

    OP: ClassVar[str] = "keys_list"
    id: int
    prefix: bytes
    limit: int | None = None


@reply
@dataclass(frozen=True, slots=True)
class KeysListOk:
    """`complete`: every partition was scanned by a member that holds it, no scan stopped at its
    bound and no more than `limit` keys matched; False: `keys` may miss some."""

    OP: ClassVar[str] = "keys_list_ok"
    id: int
    keys: list[bytes]
    complete: bool


# ---- between nodes ----


@request(PEER)
@dataclass(frozen=True, slots=True)
class KeysScan:
    """A listing's part on one node: its own stored keys starting with `prefix`, at most `limit`,
    tombstones left out. Peers only: a stranger who reaches the port is refused before this."""

    OP: ClassVar[str] = "keys_scan"
    id: int
    prefix: bytes
    limit: int


@reply
@dataclass(frozen=True, slots=True)
class KeysScanOk:
    """`partitions`: those whose keys were all examined; `complete`: no bound cut the scan."""

    OP: ClassVar[str] = "keys_scan_ok"
    id: int
    keys: list[bytes]
    partitions: list[int]
    complete: bool


@request(PEER)
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


@reply
@dataclass(frozen=True, slots=True)
class ReplicateOk:
    OP: ClassVar[str] = "replicate_ok"
    id: int


@request(PEER)
@dataclass(frozen=True, slots=True)
class Fetch:
    """A replica read for a coordinator: the stored record of `key`, if any. With `hint`, the
    receiver answers as a fallback for that primary: its own record merged with the hint it holds.

    With `digest` (`replica.versions_digest` of the coordinator's own copy: a get's digest read), a
    receiver whose record has the same versions answers `same` instead of sending the record back; any
    other answer carries the record as without it. A node older than the field refuses it as an
    unknown field, and the coordinator asks it again without (`dynd.core.requests`). Peers only:
    a stranger who reaches the port is refused before this, and a digest tells a peer nothing it
    could not fetch."""

    OP: ClassVar[str] = "fetch"
    id: int
    key: bytes
    hint: str | None = None
    digest: bytes | None = None


@reply
@dataclass(frozen=True, slots=True)
class FetchOk:
    """`same`: the replica holds what the Fetch's `digest` describes, and `record` is left out."""

    OP: ClassVar[str] = "fetch_ok"
    id: int
    record: bytes | None
    same: bool | None = None


@record
@dataclass(frozen=True, slots=True)
class HandoffItem:
    key: bytes
    record: bytes


@request(PEER)
@dataclass(frozen=True, slots=True)
class Handoff:
    """Part of a partition moving to a new owner; merged and made durable before HandoffOk."""

    OP: ClassVar[str] = "handoff"
    id: int
    partition: int
    items: list[HandoffItem]


@reply
@dataclass(frozen=True, slots=True)
class HandoffOk:
    OP: ClassVar[str] = "handoff_ok"
    id: int


@record
@dataclass(frozen=True, slots=True)
class MembershipSummary:
    """A membership in a few bytes, for digest-first gossip (dynd.core.cluster): its digest, its
    highest stamp, and its snapshot's stamp and digest (0 and b"" for none); `node` names the
    sender (a proved peer)."""

    node: str
    digest: bytes
    stamp: int
    snapshot_stamp: int
    snapshot_digest: bytes


@request(PEER)
@dataclass(frozen=True, slots=True)
class Gossip:
    """Membership exchange (dynd.core.cluster has the protocol). Digest-first: `summary` set,
    `membership` empty, `delta` the events (and snapshot) the receiver lacks when the sender knows
    them. Without `summary`, the form of 70300c4 and before: `membership` whole (empty: the
    sender has none yet, as a joining node), answered with the receiver's whole membership.
    A stranger who reaches the port gets nothing: gossip needs the peer role (the cluster secret);
    a proved peer that is not a member may gossip (that is how it joins) and learns the members'
    names, addresses and locations."""

    OP: ClassVar[str] = "gossip"
    id: int
    membership: bytes
    summary: MembershipSummary | None = None
    delta: bytes | None = None


@reply
@dataclass(frozen=True, slots=True)
class GossipOk:
    OP: ClassVar[str] = "gossip_ok"
    id: int
    membership: bytes
    summary: MembershipSummary | None = None
    delta: bytes | None = None


# ---- anti-entropy between the replicas of a partition (dynd.core.anti_entropy) ----
#
# Hashes travel as 16 bytes, or b"" for an empty range. `tree_segments` and `tree_fanout` name the
# tree shape the asker uses; a receiver whose trees have another shape refuses with bad_request.


@request(PEER)
@dataclass(frozen=True, slots=True)
class TreeRoots:
    """The Merkle roots of `partitions`, in the same order. What nodes before TreeRootsCompare
    ask with, and what a newer node asks them with; every node still answers it."""

    OP: ClassVar[str] = "tree_roots"
    id: int
    partitions: list[int]
    tree_segments: int
    tree_fanout: int


@reply
@dataclass(frozen=True, slots=True)
class TreeRootsOk:
    OP: ClassVar[str] = "tree_roots_ok"
    id: int
    hashes: list[bytes]


@request(PEER)
@dataclass(frozen=True, slots=True)
class TreeRootsCompare:
    """The sender's Merkle roots of partitions it and the receiver are both primaries of (as the
    sender's ring has it): `hashes[i]` is the root of `partitions[i]`, the partitions distinct,
    at most the receiver's `ae_roots_max`. The receiver answers which differ and counts the
    others as compared with `node`, the sender's member name, where its own ring agrees that
    they share the partition (so it need not ask them itself soon). It replaces a TreeRoots per
    peer and round: one of these to each of a few peers per round (`dynd.core.anti_entropy`).

    A node before this message answers `unknown_op`; the sender then asks it with TreeRoots.
    Peer role: a stranger who reaches the port gets `unauthorized` and nothing changes; a member
    learns which partitions differ, hashes of hashes: nothing of a key or a value."""

    OP: ClassVar[str] = "tree_roots_compare"
    id: int
    node: str
    partitions: list[int]
    hashes: list[bytes]
    tree_segments: int
    tree_fanout: int


@reply
@dataclass(frozen=True, slots=True)
class TreeRootsCompareOk:
    """`differing`: the asked partitions whose roots differ here, in the order asked; `hashes`:
    this node's roots of them, in the same order."""

    OP: ClassVar[str] = "tree_roots_compare_ok"
    id: int
    differing: list[int]
    hashes: list[bytes]


@request(PEER)
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


@reply
@dataclass(frozen=True, slots=True)
class TreeLevelOk:
    OP: ClassVar[str] = "tree_level_ok"
    id: int
    hashes: list[bytes]


@record
@dataclass(frozen=True, slots=True)
class KeyHash:
    key: bytes
    hash: bytes


@request(PEER)
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


@reply
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


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class ClusterJoin:
    """Ask this node to join the cluster that `seed` (HOST:PORT) belongs to."""

    OP: ClassVar[str] = "cluster_join"
    id: int
    seed: str


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class ClusterLeave:
    """Hand off `node`'s partitions (this node when None), then remove it."""

    OP: ClassVar[str] = "cluster_leave"
    id: int
    node: str | None = None


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class ClusterRemove:
    """Drop a dead node at once; its partitions go to the others, nothing is handed off. A node
    that answers a probe from this one is refused (bad_request, nothing changes) unless `force`:
    a live member retires with ClusterLeave, which hands its data over first."""

    OP: ClassVar[str] = "cluster_remove"
    id: int
    node: str
    force: bool | None = None


@reply
@dataclass(frozen=True, slots=True)
class ClusterOk:
    OP: ClassVar[str] = "cluster_ok"
    id: int
    message: str


@record
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


# ---- plans and transfers of membership changes (dynd.core.plan, dynd.core.handoff) ----


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """What a membership change would do, changing nothing (`dynctl cluster ... --dry-run`).

    `action` is join, leave or remove. leave: `node` leaves (this node when None); remove: `node`
    is dropped. join, with `seed`: this node plans its own join of the cluster `seed` (HOST:PORT)
    belongs to, by asking the seed; join, with `node` and `address`: this node plans that node
    joining its own cluster (what the seed answers). The node computes the membership the change
    would make with the very code the change runs, and asks every member for its partition sizes.

    Admin role: a stranger who reaches the port gets `unauthorized`. An admin learns the ring
    before and after, member names and how many keys (and about how many bytes) each partition
    holds: no key, no value."""

    OP: ClassVar[str] = "cluster_plan"
    id: int
    action: str
    node: str | None = None
    seed: str | None = None
    address: str | None = None


@record
@dataclass(frozen=True, slots=True)
class PartitionMove:
    """A partition whose owner changes, with its size as the members reported it (estimated)."""

    partition: int
    source: str
    target: str
    keys: int
    bytes: int


@record
@dataclass(frozen=True, slots=True)
class PlanMember:
    """One member before and after the change. `gives`/`takes`: partitions it stops or starts
    owning; `keys_in`/`bytes_in`: what it must receive for the replicas it gains; `keys_out`/
    `bytes_out`: what it hands off for the replicas it loses (estimated)."""

    name: str
    status_before: str
    status_after: str
    partitions_before: int
    partitions_after: int
    gives: int
    takes: int
    keys_in: int
    bytes_in: int
    keys_out: int
    bytes_out: int


@reply
@dataclass(frozen=True, slots=True)
class ClusterPlanOk:
    """The plan. `changes` False: the change would do nothing (`summary` says why). `owners_*`:
    the ring before and after (owners[p] owns partition p). `windows_repeated`: the first
    partition of each window of N consecutive partitions that would not have N distinct owners
    after the change (`windows_repeated_before`: how many had not before). `keys_to_move`,
    `bytes_to_move`: the copies new replicas must receive, estimated from the sizes that
    `sizes_from` reported (`sizes_missing` did not answer). `notes`: what the operator should know."""

    OP: ClassVar[str] = "cluster_plan_ok"
    id: int
    node: str
    action: str
    target: str
    changes: bool
    summary: str
    n: int
    owners_before: list[str]
    owners_after: list[str]
    members: list[PlanMember]
    moves: list[PartitionMove]
    windows_repeated: list[int]
    windows_repeated_before: int
    keys_to_move: int
    bytes_to_move: int
    sizes_from: list[str]
    sizes_missing: list[str]
    notes: list[str]


@request(PEER)
@dataclass(frozen=True, slots=True)
class PartitionSizes:
    """How many keys this node holds in each partition, and about how many bytes (a plan's
    estimate). Peer role: a stranger gets `unauthorized`."""

    OP: ClassVar[str] = "partition_sizes"
    id: int


@reply
@dataclass(frozen=True, slots=True)
class PartitionSizesOk:
    """`keys[p]` exact (writes not yet committed included); `bytes[p]` estimated from a sample."""

    OP: ClassVar[str] = "partition_sizes_ok"
    id: int
    node: str
    keys: list[int]
    bytes: list[int]


@record
@dataclass(frozen=True, slots=True)
class TransferView:
    """One partition a node hands off. `state`: sending (a batch is out), paced (held back while
    foreground latency is high), queued (later in this pass). `keys_total`: the keys it held
    when the transfer started (or holds, when queued); `started_ms`: wall clock, 0 when queued."""

    source: str
    partition: int
    targets: list[str]
    state: str
    keys_sent: int
    bytes_sent: int
    keys_total: int
    started_ms: int


@record
@dataclass(frozen=True, slots=True)
class NodeTransfers:
    """One node's handoff, as it reports it. `status`: its own membership status; `answered`:
    False when it did not answer the gather (the rest is then zero). `partitions_pending`,
    `keys_pending`, `bytes_pending` (estimated): what it holds for partitions it no longer
    replicates; `*_sent`: what it has handed off since it started; `hints_pending`: hints it
    holds. `safe_to_stop`: it is not a member any more, the others know, and (after a leave) it
    holds nothing."""

    node: str
    status: str
    answered: bool
    partitions_pending: int
    keys_pending: int
    bytes_pending: int
    partitions_sent: int
    keys_sent: int
    bytes_sent: int
    hints_pending: int
    safe_to_stop: bool
    transfers: list[TransferView]


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class ClusterTransfers:
    """The partition transfers in flight on every member (`local_only`: on this node alone; the
    progress `dynctl cluster leave --wait` polls on the leaving node). Admin role: a stranger gets
    `unauthorized`; an admin learns member names, partition numbers and key counts."""

    OP: ClassVar[str] = "cluster_transfers"
    id: int
    local_only: bool | None = None


@reply
@dataclass(frozen=True, slots=True)
class ClusterTransfersOk:
    OP: ClassVar[str] = "cluster_transfers_ok"
    id: int
    node: str
    nodes: list[NodeTransfers]


# ---- what a node measures (issue 14): admin requests, as they tell load, backlog and disk use ----


@record
@dataclass(frozen=True, slots=True)
class LatencyView:
    """One latency histogram's summary, in microseconds. `op`: get, put, delete (as coordinator),
    replicate, forward (as replica or forwarder); `window`: "60s" (the last 60 s) or "start"
    (since the node started)."""

    op: str
    window: str
    count: int
    p50_us: int
    p99_us: int
    p999_us: int
    max_us: int


@record
@dataclass(frozen=True, slots=True)
class Metric:
    """One counter or gauge. `label`: one bounded label value ("" for none): an error code, an
    outcome, a member name, a liveness; never a key."""

    name: str
    label: str
    value: int


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class StatsGet:
    """This node's latency summaries, counters and gauges."""

    OP: ClassVar[str] = "stats"
    id: int


@reply
@dataclass(frozen=True, slots=True)
class StatsOk:
    """`counters` only grow while the node runs; `gauges` are readings now. `versions_per_get`:
    how many gets answered with 1, 2, 3 and 4 or more versions (the paper's section 6.3 table)."""

    OP: ClassVar[str] = "stats_ok"
    id: int
    node: str
    uptime_ms: int
    latencies: list[LatencyView]
    counters: list[Metric]
    gauges: list[Metric]
    versions_per_get: list[int]


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class InfoGet:
    """Who and where this node is, and its store."""

    OP: ClassVar[str] = "info"
    id: int


@reply
@dataclass(frozen=True, slots=True)
class InfoOk:
    """`last_exchange_age_ms`: since this node last finished an anti-entropy exchange of any
    partition (None: never)."""

    OP: ClassVar[str] = "info_ok"
    id: int
    node: str
    version: str
    protocol_version: int
    uptime_ms: int
    listen: str
    advertise: str
    data_dir: str
    keys: int
    disk_used_bytes: int
    map_bytes: int
    pending_writes: int
    hints_pending: int
    partitions_owned: int
    last_exchange_age_ms: int | None = None


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class LogLevelSet:
    """Change this node's log level while it runs (DEBUG, INFO, WARNING, ERROR)."""

    OP: ClassVar[str] = "log_level"
    id: int
    level: str


@reply
@dataclass(frozen=True, slots=True)
class LogLevelOk:
    OP: ClassVar[str] = "log_level_ok"
    id: int
    level: str
    previous: str


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The cluster as one node sees it, with every member's own count of pending transfers
    (gathered from the members; `local_only` asks for this node's view alone)."""

    OP: ClassVar[str] = "cluster_status"
    id: int
    local_only: bool | None = None


@reply
@dataclass(frozen=True, slots=True)
class ClusterStatusOk:
    """`last_exchange_ms`: per partition, when this node last finished an anti-entropy exchange
    of it (wall-clock ms; 0: never, or a partition it does not hold)."""

    OP: ClassVar[str] = "cluster_status_ok"
    id: int
    node: str
    members: list[MemberView]
    last_exchange_ms: list[int] | None = None


@record
@dataclass(frozen=True, slots=True)
class NodeAddress:
    node: str
    address: str


@record
@dataclass(frozen=True, slots=True)
class NodeLocation:
    node: str
    location: str


@request(CLIENT)
@dataclass(frozen=True, slots=True)
class RingGet:
    """The ring. `locations` True asks for the nodes' locations too; a node older than the field
    refuses it as an unknown field, and the client asks again without (its ring then has none).
    Client role: a stranger with the client role (any connection, on a trusted network) learns
    the members' names, addresses and locations, as it must to route requests."""

    OP: ClassVar[str] = "ring_get"
    id: int
    locations: bool | None = None


@reply
@dataclass(frozen=True, slots=True)
class RingOk:
    """The ring as clients need it: owners[p] is partition p's owner; `version` changes with it.
    `locations` (only when the RingGet asked for them, so an older client never meets the field):
    the location of each node of the ring whose location is known, which preference lists need
    (`dynd.protocol.keyspace.preference_split`); None or missing: all unknown."""

    OP: ClassVar[str] = "ring_ok"
    id: int
    version: bytes
    n: int
    r: int
    w: int
    owners: list[str]
    addresses: list[NodeAddress]
    locations: list[NodeLocation] | None = None


# ---- repair (anti-entropy on demand) ----


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class RepairStart:
    """Run an anti-entropy exchange now for `partition` (every partition this node holds when
    None) with each other primary; the reply names the run to poll with RepairStatus."""

    OP: ClassVar[str] = "repair_start"
    id: int
    partition: int | None = None


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class RepairStatus:
    OP: ClassVar[str] = "repair_status"
    id: int
    run: int


@reply
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


# ---- backup (dynctl backup; the node's side is dynd.shell.backup) ----
#
# Admin only: a backup is every key and value the node holds. A stranger who reaches the port is
# refused with `unauthorized` (with a secret, only the node's own host or an admin token may ask),
# and learns nothing, not even whether a backup is running.


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class BackupStart:
    """Begin a consistent copy of this node's whole store (LMDB's compacting copy of one read
    snapshot, while the node keeps serving). Refused with `overloaded` while `backups_max` copies
    are in progress, and with `storage_full` when the data directory has no room for one."""

    OP: ClassVar[str] = "backup_start"
    id: int


@reply
@dataclass(frozen=True, slots=True)
class BackupStartOk:
    """`backup`: the id to read it by. `taken_ms`: the node's wall clock when the snapshot was
    taken. `estimate_bytes`: the store's used size, at least what the copy will hold. A backup
    nobody reads for `idle_timeout_ms` is stopped and deleted; a read may wait `read_wait_ms`
    for the copy to get further."""

    OP: ClassVar[str] = "backup_start_ok"
    id: int
    backup: int
    node: str
    cluster: str
    taken_ms: int
    estimate_bytes: int
    chunk_bytes: int
    idle_timeout_ms: int
    read_wait_ms: int


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class BackupRead:
    """Up to `backup_chunk_bytes` of backup `backup` from `offset`, which may be anything up to
    what is copied so far (so a lost reply can be asked again). At the end of what is copied, the
    node waits up to `backup_read_wait_ms` for more before answering with what it has."""

    OP: ClassVar[str] = "backup_read"
    id: int
    backup: int
    offset: int


@reply
@dataclass(frozen=True, slots=True)
class BackupChunk:
    """`data` starts at `offset`; `copied_bytes`: how much of the copy exists so far. Once `done`,
    `size` is the copy's length and `sha256` its digest, computed by the node as it copied."""

    OP: ClassVar[str] = "backup_chunk"
    id: int
    backup: int
    offset: int
    data: bytes
    copied_bytes: int
    done: bool
    size: int | None = None
    sha256: bytes | None = None


@request(ADMIN)
@dataclass(frozen=True, slots=True)
class BackupEnd:
    """Stop backup `backup` (if it is still copying) and delete the node's copy of it."""

    OP: ClassVar[str] = "backup_end"
    id: int
    backup: int


@reply
@dataclass(frozen=True, slots=True)
class BackupEndOk:
    OP: ClassVar[str] = "backup_end_ok"
    id: int
    backup: int


# ---- the tables, built once from the declarations above ----

MESSAGE_TYPES: tuple[type, ...] = tuple(_messages)
RECORD_TYPES: tuple[type, ...] = tuple(_records)

# Who may send each request (roles: dynd.protocol.auth). Every request type has one, so a new one
# cannot be added without a role (tests/unit/test_roles.py walks MESSAGE_TYPES). The hello frames
# are the handshake itself; replies are never requests.
HANDSHAKE_TYPES: tuple[type, ...] = tuple(_handshakes)
REPLY_TYPES: tuple[type, ...] = tuple(_replies)
REQUIRED_ROLE: dict[type, str] = dict(_roles)
# A get, put or delete that a node forwards to a primary makes that primary coordinate even when
# it would not: only a peer may ask that.
FORWARDABLE_TYPES: tuple[type, ...] = tuple(_forwardable)

_undeclared = [
    value.__name__
    for value in list(globals().values())
    if isinstance(value, type) and "OP" in value.__dict__ and value not in MESSAGE_TYPES
]
if _undeclared:
    raise TypeError(f"messages without @request, @handshake or @reply: {', '.join(_undeclared)}")


def required_role(message: object) -> str | None:
    """The role a request needs, or None for a frame that is not a request a node accepts."""
    role = REQUIRED_ROLE.get(type(message))
    if role is not None and type(message) in FORWARDABLE_TYPES and message.forwarded:  # type: ignore[attr-defined]
        return PEER
    return role


def error_reply(request_id: int | None, error: DynError) -> ErrorReply:
    """The reply that carries `error` across the wire (the one place errors become messages)."""
    return ErrorReply(id=request_id, code=error.code, message=error.message, retriable=error.retriable)
