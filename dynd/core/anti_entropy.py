"""Anti-entropy scheduling (paper section 4.7): which exchanges run, when, and the repair runs an
operator starts. One exchange itself, and its responder, is `dynd.core.exchange`.

The scheduler (`AntiEntropy`): every `interval_ms` it starts a round. A round picks at most
`peers_per_round` peers among the co-primaries (`pairs()`: the (partition, peer) pairs this node
and a peer are both primaries of), those compared longest ago first, and sends each ONE
TreeRootsCompare carrying this node's roots of the partitions it shares with that peer (the
`roots_max` compared longest ago, when it shares more). The peer answers which differ; equal
ones are recorded as exchanged on both sides (the peer learns them from our roots), and full
exchanges run for those that differ, `concurrency` at a time. So a member sends the same few
requests a round however many members there are and however many of them it shares partitions
with. A pair waits at most ceil(P / peers_per_round) rounds for its comparison (P: the peers this
node shares partitions with: fewer than the members, and fewer than (N-1) times the N Q / members
partitions it is a primary of, so at most about sqrt(N (N-1) Q) whatever the cluster size),
times ceil(shared / roots_max) when it shares more partitions with one peer than a message
carries; about half that, since both sides compare. A peer compared within the last half
interval (by either side) is left for later.

A peer that answers `unknown_op` runs a dynd from before TreeRootsCompare: it is asked with
TreeRoots (the partitions only, in chunks of `indexes_max`; it compares nothing and learns
nothing) for `LEGACY_RECHECK_ROUNDS` rounds, then with TreeRootsCompare again, in case it was
upgraded meanwhile.

`run_now` (`dynctl repair`) compares one partition or all with every co-primary at once, in
TreeRootsCompare requests of at most `roots_max` partitions, ahead of scheduled rounds,
reporting progress. One round or run at a time.

Repair runs (`RepairRuns`): `dynctl repair` starts a run (RepairStart) and asks for its progress
(RepairStatus); the last `REPAIR_RUNS_KEPT` runs can be asked for.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynd.core.admission import Pacer, Unlimited
from dynd.core.exchange import Exchange, ExchangeLimits, ExchangeStats, MergeRecords, ReadLocal, StoreLocal, wire_bytes
from dynd.core.merkle import Forest
from dynd.core.ports import Network
from dynd.core.timeouts import Timeout
from dynd.protocol import messages
from dynd.protocol.errors import BadRequest, DynError, UnknownOp

log = logging.getLogger("dynd.anti_entropy")

Reply = Callable[[Any], None]
REPAIR_RUNS_KEPT = 16  # repair runs whose progress can still be asked for
REPAIR_ERRORS_SHOWN = 5  # errors a progress reply carries, the latest
LEGACY_RECHECK_ROUNDS = 30  # rounds a peer that answered unknown_op is asked with TreeRoots
NEVER = -(1 << 63)  # "compared" time of a pair never compared (monotonic clocks start anywhere)


@dataclass(slots=True)
class RepairProgress:
    """What `run_now` reports after each step and once at the end (`finished`)."""

    pairs_total: int  # (partition, peer) pairs to compare
    pairs_done: int = 0
    pairs_failed: int = 0
    stats: ExchangeStats = field(default_factory=ExchangeStats)
    last: tuple[int, str] | None = None  # the pair that just finished
    errors: list[str] = field(default_factory=list)
    finished: bool = False


class _Run:
    """One round (scheduled) or run (`run_now`): root comparisons, one request per (peer,
    partitions) query, then an exchange for each pair whose roots differ."""

    def __init__(self, owner: AntiEntropy, queries: list[tuple[str, list[int]]], progress: Callable[[RepairProgress], None] | None) -> None:
        self.owner = owner
        self.progress = progress
        self.report = RepairProgress(pairs_total=sum(len(partitions) for _, partitions in queries))
        self.root_queries: deque[tuple[str, list[int]]] = deque(queries)
        self.queued: deque[tuple[int, str]] = deque()  # pairs whose roots differ
        self.active: list[Exchange] = []
        self.roots_inflight = False
        self.parked = False
        self.finished = False
        self.pumping = False
        self.repump = False

    def pump(self) -> None:
        """Start what may start now; re-entrant safe like Exchange._pump."""
        if self.pumping:
            self.repump = True
            return
        self.pumping = True
        try:
            self.repump = True
            while self.repump and not self.finished:
                self.repump = False
                self._step()
        finally:
            self.pumping = False

    def _step(self) -> None:
        owner = self.owner
        self.parked = False
        for exchange in list(self.active):
            exchange.resume()
        while self.queued and len(self.active) < owner.concurrency:
            partition, peer = self.queued.popleft()
            exchange = owner._exchange(partition, peer, self._exchange_done)
            self.active.append(exchange)
            exchange.start()
        if self.root_queries and not self.roots_inflight:
            if not owner.pacer.allow(owner.now_ms()):
                self.parked = True
            else:
                peer, partitions = self.root_queries.popleft()
                if owner.legacy(peer):
                    step = owner.limits.indexes_max  # what a TreeRoots may name
                    if len(partitions) > step:
                        self.root_queries.appendleft((peer, partitions[step:]))
                    self._ask_roots(peer, partitions[:step])
                else:
                    self._compare_roots(peer, partitions)
        if not self.finished and not self.root_queries and not self.roots_inflight and not self.queued and not self.active:
            self.finished = True
            self.report.finished = True
            self._tell()
            owner._run_done(self)

    def _send(self, peer: str, build: Callable[[int], Any], on_reply: Callable[[Any, ExchangeStats], None]) -> None:
        self.roots_inflight = True
        stats = ExchangeStats(messages_sent=1)

        def counted_build(rid: int) -> Any:
            request = build(rid)
            stats.bytes_sent += wire_bytes(request)
            return request

        def counted_reply(answer: Any) -> None:
            self.roots_inflight = False
            if not isinstance(answer, DynError):
                stats.bytes_received += wire_bytes(answer)
            on_reply(answer, stats)
            self.report.stats.add(stats)
            self.owner.totals.add(stats)
            self._tell()
            self.pump()

        self.owner.network.send(peer, counted_build, counted_reply)

    def _compare_roots(self, peer: str, partitions: list[int]) -> None:
        owner = self.owner
        forest = owner.forest
        roots = [forest.root(partition) for partition in partitions]

        def build(rid: int) -> messages.TreeRootsCompare:
            return messages.TreeRootsCompare(
                id=rid, node=owner.name, partitions=partitions, hashes=roots, tree_segments=forest.segments, tree_fanout=forest.fanout
            )

        def on_reply(answer: Any, stats: ExchangeStats) -> None:
            if isinstance(answer, UnknownOp):
                owner._mark_legacy(peer)
                self.root_queries.appendleft((peer, partitions))  # asked again, with TreeRoots
                return
            if not isinstance(answer, messages.TreeRootsCompareOk):
                self._roots_failed(peer, partitions, answer, stats)
                return
            differing = set(answer.differing)
            if len(differing) != len(answer.differing) or len(answer.hashes) != len(differing) or not differing <= set(partitions):
                self._roots_failed(peer, partitions, answer, stats)
                return
            theirs = dict(zip(partitions, roots))  # the peer found these equal to ours as sent
            theirs.update(zip(answer.differing, answer.hashes))
            self._sort(peer, partitions, theirs.__getitem__, stats)

        self._send(peer, build, on_reply)

    def _ask_roots(self, peer: str, partitions: list[int]) -> None:
        """TreeRoots, for a peer that does not know TreeRootsCompare."""
        owner = self.owner

        def build(rid: int) -> messages.TreeRoots:
            return messages.TreeRoots(id=rid, partitions=partitions, tree_segments=owner.forest.segments, tree_fanout=owner.forest.fanout)

        def on_reply(answer: Any, stats: ExchangeStats) -> None:
            if isinstance(answer, messages.TreeRootsOk) and len(answer.hashes) == len(partitions):
                roots = dict(zip(partitions, answer.hashes))
                self._sort(peer, partitions, roots.__getitem__, stats)
            else:
                self._roots_failed(peer, partitions, answer, stats)

        self._send(peer, build, on_reply)

    def _sort(self, peer: str, partitions: list[int], theirs: Callable[[int], bytes], stats: ExchangeStats) -> None:
        """Equal roots are exchanged pairs; the rest queue for an exchange. Ours are read again:
        a write that landed meanwhile may have made them equal, or different."""
        owner = self.owner
        now = owner.now_ms()
        for partition in partitions:
            if theirs(partition) == owner.forest.root(partition):
                stats.exchanges += 1
                stats.roots_equal += 1
                owner._exchanged(partition, peer, now)
                self.report.pairs_done += 1
            else:
                self.queued.append((partition, peer))

    def _roots_failed(self, peer: str, partitions: list[int], answer: Any, stats: ExchangeStats) -> None:
        error = answer if isinstance(answer, DynError) else BadRequest(f"{peer} answered roots with {answer!r:.80}")
        log.info("anti-entropy roots from %s: %s", peer, error)
        stats.exchanges += len(partitions)
        stats.failed += len(partitions)
        self.report.pairs_done += len(partitions)
        self.report.pairs_failed += len(partitions)
        self.report.errors.append(f"{peer}: {error}")

    def _exchange_done(self, exchange: Exchange) -> None:
        owner = self.owner
        self.active.remove(exchange)
        self.report.pairs_done += 1
        self.report.last = (exchange.partition, exchange.peer)
        self.report.stats.add(exchange.stats)
        owner.totals.add(exchange.stats)
        if exchange.error is None:
            owner._exchanged(exchange.partition, exchange.peer, owner.now_ms())
        else:
            self.report.pairs_failed += 1
            self.report.errors.append(f"partition {exchange.partition} with {exchange.peer}: {exchange.error}")
        self._tell()
        self.pump()

    def _tell(self) -> None:
        if self.progress is not None:
            self.progress(self.report)


class AntiEntropy:
    """The scheduler; the node calls `tick()` with its other timers, wires `run_now` to `dynctl
    repair` and `roots_equal` to the TreeRootsCompare responder (`exchange.responders`).
    `last_exchange_ms[partition]` feeds `cluster status`."""

    def __init__(
        self,
        name: str,
        forest: Forest,
        network: Network,
        *,
        pairs: Callable[[], list[tuple[int, str]]],
        read_local: ReadLocal,
        store_local: StoreLocal,
        limits: ExchangeLimits,
        prune_threshold: int,
        interval_ms: int,
        now_ms: Callable[[], int],
        pacer: Pacer | None = None,
        concurrency: int = 1,
        peers_per_round: int = 2,
        merge: MergeRecords | None = None,
    ) -> None:
        """`name`: this node's member name (the peers credit comparisons to it). `merge`: as for
        Exchange."""
        if peers_per_round < 1:
            raise ValueError("peers_per_round must be at least 1")
        self.name = name
        self.merge = merge
        self.forest = forest
        self.network = network
        self.pairs = pairs
        self.read_local = read_local
        self.store_local = store_local
        self.limits = limits
        self.prune_threshold = prune_threshold
        self.interval_ms = interval_ms
        self.now_ms = now_ms
        self.pacer: Pacer = pacer or Unlimited()
        self.concurrency = max(1, concurrency)
        self.peers_per_round = peers_per_round
        self.totals = ExchangeStats()
        self.last_exchange_ms: dict[int, int] = {}  # partition -> last completed exchange, any peer
        self.last_pair_exchange_ms: dict[tuple[int, str], int] = {}
        self.rounds = 0
        self._tried_ms: dict[str, int] = {}  # peer -> when a round last asked it, answered or not
        self._legacy: dict[str, int] = {}  # peer -> the round it answered TreeRootsCompare unknown_op
        self._run: _Run | None = None
        self._waiting: deque[_Run] = deque()
        self._round = Timeout("anti-entropy round", interval_ms, start_ms=now_ms())

    @property
    def running(self) -> bool:
        return self._run is not None

    def tick(self) -> None:
        if not self.forest.ready:
            return
        if self._run is not None:
            if self._run.parked or any(e.parked for e in self._run.active):
                self._run.pump()
            return
        if self._waiting:
            self._start(self._waiting.popleft())
        elif self._round.restart_if_fired(self.now_ms()):
            self.rounds += 1
            self._start(_Run(self, self._round_queries(), None))

    def _round_queries(self) -> list[tuple[str, list[int]]]:
        """The peers this round compares with, each with the partitions its one request carries."""
        now = self.now_ms()
        shared = _by_peer(self.pairs())
        for known in (self._tried_ms, self._legacy):
            for gone in [peer for peer in known if peer not in shared]:
                del known[gone]
        last = self.last_pair_exchange_ms
        # Ties (at start, every peer) go to the names after ours first, round the sorted names:
        # members starting together then ask different peers, not all the same two.
        peers = sorted(shared)
        after = bisect.bisect_right(peers, self.name)
        peers = peers[after:] + peers[:after]
        due: list[tuple[int, str]] = []
        for peer in peers:
            compared = min(last.get((partition, peer), NEVER) for partition in shared[peer])
            since = max(compared, self._tried_ms.get(peer, NEVER))
            if since <= now - self.interval_ms // 2:  # compared within half an interval: leave it
                due.append((since, peer))
        due.sort(key=lambda item: item[0])  # stable: ties stay in that order
        queries = []
        for _, peer in due[: self.peers_per_round]:
            self._tried_ms[peer] = now
            oldest_first = sorted(shared[peer], key=lambda partition: last.get((partition, peer), NEVER))
            queries.append((peer, sorted(oldest_first[: self.limits.roots_max])))
        return queries

    def run_now(self, partition: int | None, progress: Callable[[RepairProgress], None]) -> int:
        """Compare `partition` (every shared one when None) with each co-primary now, after the
        round in progress; `progress` gets a report after each step and one with `finished`.
        Returns how many (partition, peer) pairs it will compare."""
        shared = _by_peer([(p, peer) for p, peer in self.pairs() if partition is None or p == partition])
        step = self.limits.roots_max
        queries = [(peer, partitions[i : i + step]) for peer, partitions in sorted(shared.items()) for i in range(0, len(partitions), step)]
        run = _Run(self, queries, progress)
        if self._run is None and self.forest.ready:
            self._start(run)
        else:
            self._waiting.append(run)
        return run.report.pairs_total

    def roots_equal(self, peer: str, partitions: list[int]) -> None:
        """`peer` compared its roots with ours (TreeRootsCompare) and these were equal: exchanged
        pairs, for the partitions this node's own ring says it shares with `peer`."""
        shared = {p for p, other in self.pairs() if other == peer}
        now = self.now_ms()
        for partition in partitions:
            if partition in shared:
                self._exchanged(partition, peer, now)

    def legacy(self, peer: str) -> bool:
        """Whether `peer` is asked with TreeRoots: it answered unknown_op lately."""
        marked = self._legacy.get(peer)
        if marked is None:
            return False
        if self.rounds - marked >= LEGACY_RECHECK_ROUNDS:
            del self._legacy[peer]
            return False
        return True

    def _mark_legacy(self, peer: str) -> None:
        if peer not in self._legacy:
            log.info("%s does not know TreeRootsCompare (an older dynd): asking it with TreeRoots for %d rounds", peer, LEGACY_RECHECK_ROUNDS)
        self._legacy[peer] = self.rounds

    def _start(self, run: _Run) -> None:
        self._run = run
        run.pump()

    def _run_done(self, run: _Run) -> None:
        if self._run is run:
            self._run = None
        if self._waiting and self.forest.ready:
            self._start(self._waiting.popleft())

    def _exchange(self, partition: int, peer: str, on_done: Callable[[Exchange], None]) -> Exchange:
        return Exchange(
            partition,
            peer,
            self.forest,
            self.network,
            read_local=self.read_local,
            store_local=self.store_local,
            limits=self.limits,
            prune_threshold=self.prune_threshold,
            on_done=on_done,
            pacer=self.pacer,
            now_ms=self.now_ms,
            root_differs=True,
            merge=self.merge,
        )

    def _exchanged(self, partition: int, peer: str, now: int) -> None:
        self.last_exchange_ms[partition] = now
        self.last_pair_exchange_ms[(partition, peer)] = now


def _by_peer(pairs: list[tuple[int, str]]) -> dict[str, list[int]]:
    """Each peer's partitions, ascending."""
    shared: dict[str, list[int]] = {}
    for partition, peer in sorted(set(pairs)):
        shared.setdefault(peer, []).append(partition)
    return shared


def co_primary_pairs(name: str, partitions: int, primaries: Callable[[int], Sequence[str]]) -> list[tuple[int, str]]:
    """(partition, peer) for every partition `name` is a primary of and every other primary of it:
    what `AntiEntropy(pairs=...)` wants (call it per round: the ring moves)."""
    return [
        (partition, peer)
        for partition in range(partitions)
        if name in (owners := primaries(partition))
        for peer in owners
        if peer != name
    ]


class RepairRuns:
    """The RepairStart and RepairStatus requests: runs of `AntiEntropy.run_now`, numbered from 1,
    whose latest progress is kept for the last `REPAIR_RUNS_KEPT` of them."""

    def __init__(self, name: str, anti_entropy: AntiEntropy) -> None:
        self.name = name
        self.anti_entropy = anti_entropy
        self.partitions = anti_entropy.forest.partitions
        self._runs: dict[int, RepairProgress] = {}
        self._next_run = 1

    def start(self, request: messages.RepairStart, reply: Reply) -> None:
        if request.partition is not None and not 0 <= request.partition < self.partitions:
            raise BadRequest(f"partition {request.partition} is outside 0..{self.partitions - 1}")
        run = self._next_run
        self._next_run += 1
        while len(self._runs) >= REPAIR_RUNS_KEPT:
            del self._runs[min(self._runs)]

        def progress(report: RepairProgress) -> None:
            self._runs[run] = report

        total = self.anti_entropy.run_now(request.partition, progress)
        self._runs.setdefault(run, RepairProgress(pairs_total=total, finished=total == 0))
        reply(self._reply(request.id, run))

    def status(self, request: messages.RepairStatus, reply: Reply) -> None:
        if request.run not in self._runs:
            raise BadRequest(f"no repair run {request.run} on {self.name} (only the last {REPAIR_RUNS_KEPT} are kept)")
        reply(self._reply(request.id, request.run))

    def _reply(self, request_id: int, run: int) -> messages.RepairProgressOk:
        report = self._runs[run]
        stats = report.stats
        return messages.RepairProgressOk(
            id=request_id,
            run=run,
            pairs_total=report.pairs_total,
            pairs_done=report.pairs_done,
            pairs_failed=report.pairs_failed,
            keys_compared=stats.keys_compared,
            keys_differing=stats.keys_differing,
            repaired_local=stats.repaired_local,
            repaired_remote=stats.repaired_remote,
            finished=report.finished,
            errors=list(report.errors[-REPAIR_ERRORS_SHOWN:]),
        )
