"""One anti-entropy exchange (paper section 4.7) and the requests that answer it: two replicas of
a partition compare hash trees and repair the keys that differ, merging sibling sets both ways.
Pure: every step is a callback of the Network port. The scheduler that decides which exchanges
run, and when, is `dynd.core.anti_entropy`.

One exchange (`Exchange`: this node with one peer, for one partition):

    root                 ->  TreeLevel(depth 0); equal to ours: done (nothing differs)
    depth d differs      ->  TreeLevel(depth d + 1, children of the differing nodes), in
                             requests of at most `indexes_max` nodes, one at a time
    segments differ      ->  SegmentKeys(differing segments) in pages of at most `keys_max`
                             entries; each page is compared with our entries of the same key range
    a key differs        ->  only we hold it: Replicate(our record) to the peer
                             the peer holds it (alone, or another version): Fetch it, merge it
                             into ours (`merge`: checked against the node's limits, as
                             every record from a peer is), store the merge if it holds anything
                             new (`store_local`), and Replicate the result if the peer lacks part
                             of it (leaf hashes differ)
    every repair answered, nothing left to list  ->  done

At most one tree query and `repairs_inflight_max` repairs are in flight; the next page is asked
only once the repair queue has drained below a page, so memory stays bounded by a page. Each new
request first asks the pacer (admission control): while it refuses, the exchange parks and the
scheduler's tick resumes it. A failure that may pass (unreachable, timeout, overloaded) ends the
exchange (the next round retries); any other failed repair is counted and the exchange goes on.

The responder side (`answer_*`, `responders`) answers those requests from the Forest, and the
root comparisons that come before any exchange: TreeRootsCompare (the asker's roots; the answer
names those that differ, and the equal ones go to `roots_equal`, so this node counts them as
compared too) and, from nodes that predate it, TreeRoots.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynd.core.admission import Pacer, Unlimited
from dynd.core.merkle import HASH_BYTES, Forest, leaf_hash
from dynd.core.ports import Completion, Network
from dynd.core.replica import merge_records
from dynd.protocol import messages
from dynd.protocol.errors import BadRequest, DynError, Overloaded

log = logging.getLogger("dynd.anti_entropy")

ReadLocal = Callable[[int, bytes], "bytes | None"]  # (partition, key) -> stored record
StoreLocal = Callable[[int, bytes, bytes, Completion], None]  # (partition, key, record, done)
# (ours, theirs) -> the record to store, or None; raises a DynError when theirs is refused
MergeRecords = Callable[["bytes | None", bytes], "bytes | None"]
Reply = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class ExchangeLimits:
    """Bounds of one exchange; the node sets them from its Limits (ae_* names)."""

    indexes_max: int = 1024  # tree nodes, partitions or segments named in one request
    keys_max: int = 512  # entries in one SegmentKeys page
    repairs_inflight_max: int = 8  # Fetch/Replicate repairs one exchange keeps in flight
    roots_max: int = 1024  # partitions (with their roots) in one TreeRootsCompare

    def __post_init__(self) -> None:
        if min(self.indexes_max, self.keys_max, self.repairs_inflight_max, self.roots_max) < 1:
            raise ValueError("exchange limits must be positive")


@dataclass(slots=True)
class ExchangeStats:
    """Counts of one exchange, or summed over many. Bytes are CBOR payload sizes (`wire_bytes`),
    without the 4-byte frame prefix."""

    exchanges: int = 0  # (partition, peer) pairs compared to the end
    roots_equal: int = 0  # of which the roots matched at once
    failed: int = 0  # exchanges that ended early
    keys_compared: int = 0  # distinct keys of the differing segments, both sides
    keys_differing: int = 0
    repaired_local: int = 0  # keys this node stored something new for
    repaired_remote: int = 0  # keys sent to the peer
    repair_failures: int = 0
    messages_sent: int = 0  # requests; each got one reply or error
    bytes_sent: int = 0
    bytes_received: int = 0

    def add(self, other: ExchangeStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


# ---- payload sizes (CBOR sizes computed from the fields, without encoding) ----


def _head(n: int) -> int:
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5 if n < 0x100000000 else 9


def _size(value: Any) -> int:
    kind = type(value)
    if kind is bytes or kind is str:
        n = len(value) if kind is bytes else len(value.encode())
        return _head(n) + n
    if kind is int:
        return _head(value)
    if kind is list:
        if value and type(value[0]) is bytes:
            return _head(len(value)) + sum(map(len, value)) + sum(_head(len(item)) for item in value if len(item) >= 24) + len(value)
        if value and type(value[0]) is messages.KeyHash:
            return _head(len(value)) + sum(11 + _head(len(e.key)) + len(e.key) + len(e.hash) for e in value)
        return _head(len(value)) + sum(_size(item) for item in value)
    if value is None or kind is bool:
        return 1
    fields = dataclasses.fields(value)
    return _head(len(fields)) + sum(_size(f.name) + _size(getattr(value, f.name)) for f in fields)


def wire_bytes(message: Any) -> int:
    """The CBOR size of a message as the codec encodes it (None fields omitted), frame prefix not
    included; lists of hashes and key entries are sized without walking their CBOR."""
    fields = [(f.name, getattr(message, f.name)) for f in dataclasses.fields(message)]
    fields = [(name, value) for name, value in fields if value is not None]
    return (
        _head(len(fields) + 1) + 3 + _size(message.OP)
        + sum(_head(len(name)) + len(name) + _size(value) for name, value in fields)
    )  # fmt: skip


def _may_pass(error: Any) -> bool:
    return isinstance(error, DynError) and error.retriable


# ---- one exchange ----

_PUSH = 0  # only we hold the key
_PULL = 1  # the peer holds it, alone or in another version


class Exchange:
    """One partition compared and repaired with one peer; `on_done(self)` once, at the end."""

    def __init__(
        self,
        partition: int,
        peer: str,
        forest: Forest,
        network: Network,
        *,
        read_local: ReadLocal,
        store_local: StoreLocal,
        limits: ExchangeLimits,
        prune_threshold: int,
        on_done: Callable[[Exchange], None],
        pacer: Pacer | None = None,
        now_ms: Callable[[], int] = lambda: 0,
        root_differs: bool = False,
        merge: MergeRecords | None = None,
    ) -> None:
        """`root_differs`: the caller already compared roots (TreeRoots) and they differ.
        `merge`: how a fetched record joins ours, checked against the node's limits (the node's
        own; by default `merge_records` with the default limits)."""
        self.partition = partition
        self.peer = peer
        self.forest = forest
        self.network = network
        self.read_local = read_local
        self.store_local = store_local
        self.limits = limits
        self.prune_threshold = prune_threshold
        self.merge: MergeRecords = merge or (lambda ours, theirs: merge_records(ours, theirs, prune_threshold))
        self.on_done = on_done
        self.pacer: Pacer = pacer or Unlimited()
        self.now_ms = now_ms
        self.stats = ExchangeStats()
        self.error: DynError | None = None
        self.finished = False
        self.parked = False  # waiting for the pacer: `resume` when it may allow again
        # descent: the depth being asked, the chunks of node indexes left to ask at that depth,
        # and the nodes found to differ there so far
        self._depth = 0
        self._chunks: list[list[int]] = [[0]]
        self._differing: list[int] = []
        # listing: differing segments left to list, and where the first one resumes
        self._segments: list[int] = []
        self._after: bytes | None = None
        if root_differs:
            self._chunks, self._differing = [], [0]
            self._descend()
        self._repairs: deque[tuple[bytes, int]] = deque()
        self._query_inflight = False
        self._repairs_inflight = 0
        self._pumping = False
        self._repump = False
        self._started = False

    def start(self) -> None:
        assert not self._started, "an exchange runs once"
        self._started = True
        self._pump()

    def resume(self) -> None:
        if self.parked and not self.finished:
            self._pump()

    # ---- the driver ----

    def _pump(self) -> None:
        """Issue what may be issued now; finish when nothing is left. Re-entrant safe: a reply
        delivered at once, inside `send`, only marks that another pass is due."""
        if self._pumping:
            self._repump = True
            return
        self._pumping = True
        try:
            self._repump = True
            while self._repump and not self.finished:
                self._repump = False
                self._issue()
                if self._idle():
                    self._finish()
        finally:
            self._pumping = False

    def _issue(self) -> None:
        self.parked = False
        while self.error is None:
            if self._repairs and self._repairs_inflight < self.limits.repairs_inflight_max:
                if not self._may_start():
                    return
                key, kind = self._repairs.popleft()
                self._start_repair(key, kind)
                continue
            if not self._query_inflight and self._has_query() and len(self._repairs) < self._page_keys():
                if not self._may_start():
                    return
                self._send_query()
                continue
            return

    def _idle(self) -> bool:
        if self._query_inflight or self._repairs_inflight or self.parked:
            return False
        return self.error is not None or (not self._has_query() and not self._repairs)

    def _may_start(self) -> bool:
        if self.pacer.allow(self.now_ms()):
            return True
        self.parked = True
        return False

    def _page_keys(self) -> int:
        return max(1, min(self.limits.keys_max, self.pacer.slice_keys()))

    def _has_query(self) -> bool:
        return bool(self._chunks or self._segments)

    def _fail(self, error: DynError) -> None:
        if self.error is None:
            self.error = error
            log.info("anti-entropy of partition %d with %s stopped: %s", self.partition, self.peer, error)

    def _finish(self) -> None:
        self.finished = True
        self.stats.exchanges += 1
        if self.error is not None:
            self.stats.failed += 1
        elif self.stats.keys_differing:
            log.info(
                "anti-entropy of partition %d with %s: %d keys differed, %d repaired here, %d there",
                self.partition, self.peer, self.stats.keys_differing, self.stats.repaired_local, self.stats.repaired_remote,
            )  # fmt: skip
        self.on_done(self)

    def _send(self, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        stats = self.stats
        stats.messages_sent += 1

        def counted_build(request_id: int) -> Any:
            message = build(request_id)
            stats.bytes_sent += wire_bytes(message)
            return message

        def counted_reply(answer: Any) -> None:
            if not isinstance(answer, DynError):
                stats.bytes_received += wire_bytes(answer)
            on_reply(answer)

        self.network.send(self.peer, counted_build, counted_reply)

    # ---- tree queries ----

    def _send_query(self) -> None:
        self._query_inflight = True
        if self._chunks:
            indexes = self._chunks.pop(0)
            depth = self._depth
            self._send(
                lambda rid: messages.TreeLevel(
                    id=rid, partition=self.partition, depth=depth, indexes=indexes,
                    tree_segments=self.forest.segments, tree_fanout=self.forest.fanout,
                ),
                lambda answer: self._on_level(depth, indexes, answer),
            )  # fmt: skip
        else:
            asked = self._segments[: self.limits.indexes_max]
            after = self._after
            limit = self._page_keys()
            self._send(
                lambda rid: messages.SegmentKeys(
                    id=rid, partition=self.partition, segments=asked, limit=limit,
                    tree_segments=self.forest.segments, tree_fanout=self.forest.fanout, after=after,
                ),
                lambda answer: self._on_page(asked, after, limit, answer),
            )  # fmt: skip

    def _on_level(self, depth: int, indexes: list[int], answer: Any) -> None:
        self._query_inflight = False
        if not isinstance(answer, messages.TreeLevelOk) or len(answer.hashes) != len(indexes):
            self._fail(answer if isinstance(answer, DynError) else BadRequest(f"{self.peer} answered a tree query with {answer!r:.80}"))
            self._pump()
            return
        if self.error is None:
            mine = self.forest.level(self.partition, depth, indexes)
            self._differing += [index for index, theirs, ours in zip(indexes, answer.hashes, mine) if theirs != ours]
            if not self._chunks:
                self._descend()
        self._pump()

    def _descend(self) -> None:
        """Every node of this depth compared: ask the children of the differing ones."""
        differing, self._differing = self._differing, []
        if self._depth == 0 and not differing:
            self.stats.roots_equal += 1
            return
        if self._depth == self.forest.depth:
            self._segments = differing
            return
        self._depth += 1
        fanout = self.forest.fanout
        children = [child for parent in differing for child in range(parent * fanout, parent * fanout + fanout)]
        step = self.limits.indexes_max
        self._chunks = [children[i : i + step] for i in range(0, len(children), step)]

    def _on_page(self, asked: list[int], after: bytes | None, limit: int, answer: Any) -> None:
        self._query_inflight = False
        problem = None
        if not isinstance(answer, messages.SegmentKeysOk):
            problem = answer if isinstance(answer, DynError) else BadRequest(f"{self.peer} answered a segment query with {answer!r:.80}")
        elif not 0 <= answer.complete <= len(asked) or len(answer.entries) > limit:
            problem = BadRequest(f"{self.peer} sent a malformed segment page")
        elif answer.complete == 0 and (answer.after is None or (after is not None and answer.after <= after)):
            problem = BadRequest(f"{self.peer} sent a segment page that makes no progress")
        elif answer.complete == len(asked) and answer.after is not None:
            problem = BadRequest(f"{self.peer} sent a malformed segment page")
        if problem is not None:
            self._fail(problem)
            self._pump()
            return
        if self.error is None:
            self._compare_page(asked, after, answer)
        self._pump()

    def _compare_page(self, asked: list[int], after: bytes | None, page: messages.SegmentKeysOk) -> None:
        covered = asked[: page.complete]
        partial = page.after is not None
        if partial:
            covered.append(asked[page.complete])
        theirs: dict[int, dict[bytes, bytes]] = {segment: {} for segment in covered}
        segment_of = self.forest.segment_of
        for entry in page.entries:
            listed = theirs.get(segment_of(entry.key))
            if listed is None:
                self._fail(BadRequest(f"{self.peer} listed a key outside the segments asked"))
                return
            listed[entry.key] = entry.hash
        stats = self.stats
        for position, segment in enumerate(covered):
            low = after if position == 0 else None
            high = page.after if partial and position == len(covered) - 1 else None
            ours = dict(self.forest.entries(self.partition, segment, low, high))
            peer = theirs[segment]
            keys = ours.keys() | peer.keys()
            stats.keys_compared += len(keys)
            for key in sorted(keys):
                mine, other = ours.get(key), peer.get(key)
                if mine == other:
                    continue
                stats.keys_differing += 1
                self._repairs.append((key, _PUSH if other is None else _PULL))
        self._segments = asked[page.complete :] + self._segments[len(asked) :]
        self._after = page.after

    # ---- repairs ----

    def _start_repair(self, key: bytes, kind: int) -> None:
        self._repairs_inflight += 1
        if kind == _PUSH:
            record = self.read_local(self.partition, key)
            if record is None:  # deleted from the store since it was listed
                self._repair_done()
                return
            self._push(key, record, self._repair_done)
            return
        self._send(lambda rid: messages.Fetch(id=rid, key=key), lambda answer: self._on_fetched(key, answer))

    def _repair_done(self) -> None:
        self._repairs_inflight -= 1
        self._pump()

    def _repair_failed(self, error: Any, key: bytes) -> None:
        self.stats.repair_failures += 1
        if not isinstance(error, DynError):
            error = BadRequest(f"unexpected reply {error!r:.80}")
        if _may_pass(error):
            self._fail(error)
        else:
            log.warning("anti-entropy could not repair key %r of partition %d with %s: %s", key[:64], self.partition, self.peer, error)

    def _push(self, key: bytes, record: bytes, then: Callable[[], None]) -> None:
        def on_reply(answer: Any) -> None:
            if isinstance(answer, messages.ReplicateOk):
                self.stats.repaired_remote += 1
            else:
                self._repair_failed(answer, key)
            then()

        self._send(lambda rid: messages.Replicate(id=rid, key=key, record=record), on_reply)

    def _on_fetched(self, key: bytes, answer: Any) -> None:
        if not isinstance(answer, messages.FetchOk):
            self._repair_failed(answer, key)
            self._repair_done()
            return
        theirs = answer.record
        ours = self.read_local(self.partition, key)
        if theirs is None:  # the peer dropped it since listing it
            if ours is None:
                self._repair_done()
            else:
                self._push(key, ours, self._repair_done)
            return
        try:
            merged = self.merge(ours, theirs)  # a record over the limits is refused here, stored nowhere
        except DynError as exc:
            self._repair_failed(exc, key)
            self._repair_done()
            return
        final = merged if merged is not None else ours
        push = final is not None and leaf_hash(key, final) != leaf_hash(key, theirs)
        waiting = int(merged is not None) + int(push)
        if not waiting:
            self._repair_done()
            return

        def part_done() -> None:
            nonlocal waiting
            waiting -= 1
            if waiting == 0:
                self._repair_done()

        if merged is not None:

            def stored(error: DynError | None) -> None:
                if error is None:
                    self.stats.repaired_local += 1
                else:
                    self._repair_failed(error, key)
                part_done()

            # Read, merge and submit in one synchronous step: a foreground write cannot slip between.
            try:
                self.store_local(self.partition, key, merged, stored)
            except DynError as exc:  # refused, nothing queued (Storage.submit's contract)
                stored(exc)
        if push:
            assert final is not None
            self._push(key, final, part_done)


# ---- the responder ----


def _check_tree(forest: Forest, partition: int, segments: int, fanout: int) -> None:
    if not forest.ready:
        raise Overloaded("this node is still building its anti-entropy trees")
    if (segments, fanout) != (forest.segments, forest.fanout):
        raise BadRequest(
            f"tree shape {segments} segments / fanout {fanout} differs from this node's {forest.segments} / {forest.fanout}"
        )
    if not 0 <= partition < forest.partitions:
        raise BadRequest(f"partition {partition} out of range")


def answer_tree_roots(forest: Forest, request: messages.TreeRoots, limits: ExchangeLimits) -> messages.TreeRootsOk:
    if len(request.partitions) > limits.indexes_max:
        raise BadRequest(f"{len(request.partitions)} partitions exceed ae indexes_max={limits.indexes_max}")
    for partition in request.partitions:
        _check_tree(forest, partition, request.tree_segments, request.tree_fanout)
    return messages.TreeRootsOk(id=request.id, hashes=[forest.root(p) for p in request.partitions])


def answer_tree_roots_compare(forest: Forest, request: messages.TreeRootsCompare, limits: ExchangeLimits) -> tuple[messages.TreeRootsCompareOk, list[int]]:
    """The reply, and the partitions whose roots are equal; raises BadRequest (or Overloaded while
    the trees are being built) for a request that breaks the rules, before anything is counted."""
    partitions, hashes = request.partitions, request.hashes
    if len(partitions) > limits.roots_max:
        raise BadRequest(f"{len(partitions)} partitions exceed ae roots_max={limits.roots_max}")
    if len(hashes) != len(partitions):
        raise BadRequest(f"{len(hashes)} roots for {len(partitions)} partitions")
    if len(set(partitions)) != len(partitions):
        raise BadRequest("a partition is named twice")
    if not request.node:
        raise BadRequest("the sender must name itself")
    for partition in partitions:
        _check_tree(forest, partition, request.tree_segments, request.tree_fanout)
    for root in hashes:
        if len(root) not in (0, HASH_BYTES):
            raise BadRequest(f"a root of {len(root)} bytes (roots are {HASH_BYTES} bytes, or empty)")
    differing: list[int] = []
    ours: list[bytes] = []
    equal: list[int] = []
    for partition, theirs in zip(partitions, hashes):
        mine = forest.root(partition)
        if mine == theirs:
            equal.append(partition)
        else:
            differing.append(partition)
            ours.append(mine)
    return messages.TreeRootsCompareOk(id=request.id, differing=differing, hashes=ours), equal


def answer_tree_level(forest: Forest, request: messages.TreeLevel, limits: ExchangeLimits) -> messages.TreeLevelOk:
    _check_tree(forest, request.partition, request.tree_segments, request.tree_fanout)
    if len(request.indexes) > limits.indexes_max:
        raise BadRequest(f"{len(request.indexes)} tree nodes exceed ae indexes_max={limits.indexes_max}")
    try:
        hashes = forest.level(request.partition, request.depth, request.indexes)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return messages.TreeLevelOk(id=request.id, hashes=hashes)


def answer_segment_keys(forest: Forest, request: messages.SegmentKeys, limits: ExchangeLimits) -> messages.SegmentKeysOk:
    _check_tree(forest, request.partition, request.tree_segments, request.tree_fanout)
    if len(request.segments) > limits.indexes_max:
        raise BadRequest(f"{len(request.segments)} segments exceed ae indexes_max={limits.indexes_max}")
    if request.limit < 1:
        raise BadRequest("limit must be at least 1")
    try:
        entries, complete, after = forest.segment_page(request.partition, request.segments, request.after, min(request.limit, limits.keys_max))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return messages.SegmentKeysOk(id=request.id, entries=[messages.KeyHash(k, h) for k, h in entries], complete=complete, after=after)


# (sender, partitions whose roots it found equal to ours): the scheduler counts them as compared
RootsEqual = Callable[[str, list[int]], None]


def responders(forest: Forest, limits: ExchangeLimits, roots_equal: RootsEqual | None = None) -> dict[type, Callable[[Any, Reply], None]]:
    """Node handlers for the four requests (a DynError raised becomes the error reply).
    `roots_equal` hears of the partitions a TreeRootsCompare found equal."""

    def compare(request: messages.TreeRootsCompare, reply: Reply) -> None:
        answer, equal = answer_tree_roots_compare(forest, request, limits)
        if roots_equal is not None and equal:
            roots_equal(request.node, equal)
        reply(answer)

    return {
        messages.TreeRoots: lambda request, reply: reply(answer_tree_roots(forest, request, limits)),
        messages.TreeRootsCompare: compare,
        messages.TreeLevel: lambda request, reply: reply(answer_tree_level(forest, request, limits)),
        messages.SegmentKeys: lambda request, reply: reply(answer_segment_keys(forest, request, limits)),
    }

