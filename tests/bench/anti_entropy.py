"""Anti-entropy cost for 100,000 keys: forest build, idle exchange, and repairs after divergence.

    .venv/bin/python tests/bench/anti_entropy.py [--keys 100000] [--partitions 256] [--value-bytes 100]

Two replicas, A and B, each a primary of every one of `--partitions` partitions (the worst case for
an idle exchange: every partition has a root to compare; a node of a 5-node N=3 cluster holds about
3/5 of them), holding the same `--keys` keys. A runs anti-entropy against B over `Link`, a fake
network that passes every message through the real codec (so byte counts are the wire's, 4-byte
frame prefixes included) and delivers it from a queue: no sockets, no sleeps. CPU is process time
for both sides together (one process), codec included.

Scenarios: an idle round (every root equal), the same as one Exchange per partition (no root
batching, for comparison), a round after B's copy of one partition was wiped, and a round after
100 keys were written to A alone. After each repair round a second round must repair nothing.

`Replica` and `Link` are also the fake link of tests/unit/test_anti_entropy.py and
tests/property/test_merkle_properties.py.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dynd.core.admission import BackgroundBudget
from dynd.core.anti_entropy import AntiEntropy, RepairProgress
from dynd.core.exchange import Exchange, ExchangeLimits, ExchangeStats, responders
from dynd.core.limits import Limits
from dynd.core.merkle import DEFAULT_FANOUT, DEFAULT_SEGMENTS, Forest
from dynd.core.partition import partition_of
from dynd.core.replica import LocalReplica, merge_records
from dynd.protocol import codec, messages
from dynd.protocol.errors import DynError, Unreachable, error_from_code
from dynd.protocol.messages import error_reply

PRUNE_THRESHOLD = 10


class Replica:
    """One node's side: a dict store, its forest, the anti-entropy responder, Fetch and Replicate."""

    def __init__(
        self,
        name: str,
        partitions: int = 256,
        *,
        segments: int = DEFAULT_SEGMENTS,
        fanout: int = DEFAULT_FANOUT,
        limits: ExchangeLimits = ExchangeLimits(),
        prune_threshold: int = PRUNE_THRESHOLD,
    ) -> None:
        self.name = name
        self.partitions = partitions
        self.prune_threshold = prune_threshold
        self.limits = limits
        self.store: dict[tuple[int, bytes], bytes] = {}
        self.forest = Forest(partitions, segments=segments, fanout=fanout)
        self.forest.mark_ready()
        self.local = LocalReplica(name, Limits(), partitions)
        self.handlers: dict[type, Callable[[Any, Callable[[Any], None]], None]] = {
            **responders(self.forest, limits),
            messages.Fetch: self._fetch,
            messages.Replicate: self._replicate,
        }
        self.stored_writes = 0

    # ---- the store ----

    def partition(self, key: bytes) -> int:
        return partition_of(key, self.partitions)

    def read_local(self, partition: int, key: bytes) -> bytes | None:
        return self.store.get((partition, key))

    def store_local(self, partition: int, key: bytes, record: bytes, done: Callable[[DynError | None], None]) -> None:
        self.write_record(partition, key, record)
        done(None)

    def write_record(self, partition: int, key: bytes, record: bytes) -> None:
        self.store[(partition, key)] = record
        self.forest.note_put(partition, key, record)
        self.stored_writes += 1

    def delete(self, key: bytes) -> None:
        partition = self.partition(key)
        self.store.pop((partition, key), None)
        self.forest.note_delete(partition, key)

    def put(self, key: bytes, value: bytes | None, now_ms: int = 1, context: bytes | None = None) -> bytes:
        """A client write coordinated here (value None: a delete); returns the stored record."""
        partition = self.partition(key)
        plan = self.local.write(key, value, context, self.store.get((partition, key)), now_ms)
        self.write_record(partition, key, plan.record)
        return plan.record

    def merge(self, key: bytes, record: bytes) -> None:
        """Merge a record from another replica (replication, read repair)."""
        partition = self.partition(key)
        merged = merge_records(self.store.get((partition, key)), record, self.prune_threshold)
        if merged is not None:
            self.write_record(partition, key, merged)

    def wipe(self, partition: int) -> int:
        keys = [key for p, key in self.store if p == partition]
        for key in keys:
            del self.store[(partition, key)]
        self.forest.drop(partition)
        return len(keys)

    def rebuild(self) -> None:
        """The start-up scan: every partition's tree from the store."""
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for (partition, key), record in self.store.items():
            by_partition.setdefault(partition, []).append((key, record))
        self.forest = Forest(self.partitions, segments=self.forest.segments, fanout=self.forest.fanout)
        for partition, items in by_partition.items():
            self.forest.build(partition, items)
        self.forest.mark_ready()
        self.handlers.update(responders(self.forest, self.limits))

    # ---- requests ----

    def handle(self, message: Any, reply: Callable[[Any], None], received_us: int | None = None) -> None:
        handler = self.handlers.get(type(message))
        try:
            if handler is None:
                raise DynError(f"{message.OP} is not handled")
            handler(message, reply)
        except DynError as exc:
            reply(error_reply(getattr(message, "id", None), exc))

    def _fetch(self, request: messages.Fetch, reply: Callable[[Any], None]) -> None:
        reply(messages.FetchOk(id=request.id, record=self.store.get((self.partition(request.key), request.key))))

    def _replicate(self, request: messages.Replicate, reply: Callable[[Any], None]) -> None:
        self.merge(request.key, request.record)
        reply(messages.ReplicateOk(id=request.id))


class Link:
    """A fake network among replicas. Every message goes through the codec; `bytes` counts frames
    (4-byte prefix included) both ways. Queued delivery (`run()` drains it) unless `sync`."""

    def __init__(self, replicas: dict[str, Replica], *, sync: bool = False) -> None:
        self.replicas = replicas
        self.sync = sync
        self.down: set[str] = set()
        self.queue: deque[Callable[[], None]] = deque()
        self.ids = itertools.count(1)
        self.bytes = 0
        self.frames = 0
        self.sent_ops: dict[str, int] = {}
        self.fail_op: str | None = None  # answer every request of this op with Unreachable

    def network(self) -> _Port:
        return _Port(self)

    def _post(self, action: Callable[[], None]) -> None:
        if self.sync:
            action()
        else:
            self.queue.append(action)

    def run(self, steps_max: int = 10_000_000) -> int:
        steps = 0
        while self.queue:
            self.queue.popleft()()
            steps += 1
            assert steps < steps_max, "the link never went quiet"
        return steps

    def _encode(self, message: Any) -> bytes:
        payload = codec.encode_message(message)
        self.bytes += 4 + len(payload)
        self.frames += 1
        return payload

    def send(self, node: str, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        request = build(next(self.ids))
        self.sent_ops[request.OP] = self.sent_ops.get(request.OP, 0) + 1
        target = self.replicas.get(node)
        if target is None or node in self.down or request.OP == self.fail_op:
            self._post(lambda: on_reply(Unreachable(f"{node} is unreachable")))
            return
        payload = self._encode(request)
        answered = False

        def reply(message: Any) -> None:
            nonlocal answered
            assert not answered, "a request got two replies"
            answered = True
            reply_payload = self._encode(message)

            def deliver_reply() -> None:
                decoded = codec.decode_message(reply_payload)
                if isinstance(decoded, messages.ErrorReply):
                    on_reply(error_from_code(decoded.code, decoded.message))
                else:
                    on_reply(decoded)

            self._post(deliver_reply)

        self._post(lambda: target.handle(codec.decode_message(payload), reply))


class _Port:
    def __init__(self, link: Link) -> None:
        self.link = link

    def send(self, node: str, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        self.link.send(node, build, on_reply)

    def send_to_address(self, address: str, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        self.link.send(address, build, on_reply)

    def set_addresses(self, addresses: dict[str, str]) -> None:
        pass

    def connected(self, node: str) -> bool:
        return node not in self.link.down


def scheduler(
    replica: Replica,
    link: Link,
    peers: list[str],
    *,
    interval_ms: int = 1_000,
    clock: list[int] | None = None,
    budget: BackgroundBudget | None = None,
    concurrency: int = 1,
    partitions: list[int] | None = None,
    peers_per_round: int = 2,
) -> AntiEntropy:
    """An AntiEntropy for `replica` with `peers` as co-primaries of every (or of `partitions`)
    partition; the replica's TreeRootsCompare responder credits it with the roots found equal."""
    now = clock if clock is not None else [0]
    held = partitions if partitions is not None else list(range(replica.partitions))
    ae = AntiEntropy(
        replica.name,
        replica.forest,
        link.network(),
        pairs=lambda: [(p, peer) for p in held for peer in peers],
        read_local=replica.read_local,
        store_local=replica.store_local,
        limits=replica.limits,
        prune_threshold=replica.prune_threshold,
        interval_ms=interval_ms,
        now_ms=lambda: now[0],
        pacer=budget,
        concurrency=concurrency,
        peers_per_round=peers_per_round,
    )
    replica.handlers.update(responders(replica.forest, replica.limits, roots_equal=ae.roots_equal))
    return ae


def repair_all(replica: Replica, link: Link, peers: list[str], partition: int | None = None, **kwargs: Any) -> RepairProgress:
    """run_now on `replica` and drain the link; the final progress report."""
    ae = scheduler(replica, link, peers, **kwargs)
    reports: list[RepairProgress] = []
    ae.run_now(partition, reports.append)
    link.run()
    assert reports and reports[-1].finished, "the run did not finish"
    return reports[-1]


# ---- the benchmark ----


def _fill(a: Replica, b: Replica, keys: int, value_bytes: int) -> None:
    value = b"v" * value_bytes
    for i in range(keys):
        key = b"user:%012d" % i
        record = a.put(key, value, now_ms=1_700_000_000_000 + i)
        b.write_record(a.partition(key), key, record)


def _measure(label: str, link: Link, action: Callable[[], Any]) -> tuple[str, float, int, int, Any]:
    gc.collect()
    frames, sent = link.frames, link.bytes
    started = time.process_time()
    result = action()
    cpu_ms = (time.process_time() - started) * 1000
    return label, cpu_ms, link.frames - frames, link.bytes - sent, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=256)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--one-side-keys", type=int, default=100)
    args = parser.parse_args(argv)

    a, b = Replica("A", args.partitions), Replica("B", args.partitions)
    print(f"filling two replicas with {args.keys:,} keys ({args.value_bytes}-byte values) over {args.partitions} partitions ...", flush=True)
    _fill(a, b, args.keys, args.value_bytes)
    record_bytes = sum(len(r) for r in a.store.values()) / len(a.store)

    # Build: the start-up scan. Keys copied so the trees own them, as from LMDB.
    items: dict[int, list[tuple[bytes, bytes]]] = {}
    for (partition, key), record in a.store.items():
        items.setdefault(partition, []).append((bytes(memoryview(key)), record))

    def build() -> Forest:
        forest = Forest(args.partitions)
        for partition, listed in items.items():
            forest.build(partition, listed)
        return forest

    gc.collect()
    started = time.process_time()
    build()
    build_s = time.process_time() - started
    gc.collect()
    tracemalloc.start()  # a second build, traced (tracing slows allocation: not timed)
    forest = build()
    forest_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del forest
    key_bytes = sum(33 + len(key) for _, key in a.store)

    # Per-write upkeep: note_put on a key already held (a leaf hash, an entry hash, three XORs).
    sample = list(a.store.items())[:20_000]
    started = time.perf_counter()
    for (partition, key), record in sample:
        a.forest.note_put(partition, key, record)
    note_us = (time.perf_counter() - started) / len(sample) * 1e6
    budget = BackgroundBudget(target_p99_ms=50)
    started = time.perf_counter()
    for i in range(200_000):
        budget.record_ms(1.5, i // 100)
    record_us = (time.perf_counter() - started) / 200_000 * 1e6

    link = Link({"A": a, "B": b})
    rows: list[tuple[str, float, int, int, ExchangeStats]] = []

    def run() -> ExchangeStats:
        return repair_all(a, link, ["B"]).stats

    def per_partition_exchanges() -> ExchangeStats:
        total = ExchangeStats()
        for partition in range(args.partitions):
            exchange = Exchange(
                partition, "B", a.forest, link.network(), read_local=a.read_local, store_local=a.store_local,
                limits=a.limits, prune_threshold=PRUNE_THRESHOLD, on_done=lambda e: total.add(e.stats),
            )  # fmt: skip
            exchange.start()
            link.run()
        return total

    def equal() -> bool:
        return all(a.forest.root(p) == b.forest.root(p) for p in range(args.partitions)) and a.store == b.store

    rows.append(_measure("idle round (TreeRootsCompare)", link, run))
    rows.append(_measure("idle, one Exchange per partition", link, per_partition_exchanges))
    wiped_partition = 7
    wiped = b.wipe(wiped_partition)
    rows.append(_measure(f"B's partition {wiped_partition} wiped ({wiped} keys)", link, run))
    assert equal(), "replicas differ after repairing the wiped partition"
    rows.append(_measure("  next round", link, run))
    assert rows[-1][4].keys_differing == 0
    for i in range(args.one_side_keys):
        a.put(b"only-on-a:%06d" % i, b"w" * args.value_bytes, now_ms=1_800_000_000_000 + i)
    rows.append(_measure(f"{args.one_side_keys} keys written to A alone", link, run))
    assert equal(), "replicas differ after repairing the one-sided writes"
    rows.append(_measure("  next round", link, run))
    assert rows[-1][4].keys_differing == 0

    print()
    print(f"keys {args.keys:,}, partitions {args.partitions}, tree {DEFAULT_SEGMENTS} segments / fanout {DEFAULT_FANOUT}, "
          f"records {record_bytes:.0f} bytes on average")  # fmt: skip
    print(f"forest build (start-up scan): {build_s * 1000:.0f} ms CPU, {forest_bytes / 1e6:.1f} MB "
          f"({forest_bytes / args.keys:.0f} bytes/key; of which ~{key_bytes / 1e6:.1f} MB are the keys themselves)")  # fmt: skip
    print(f"per-write upkeep (note_put): {note_us:.2f} us; BackgroundBudget.record_ms: {record_us:.2f} us")
    print()
    header = f"{'scenario':40} {'CPU ms':>8} {'frames':>7} {'wire bytes':>11} {'est bytes':>10} {'compared':>9} {'differ':>7} {'fixed A':>8} {'fixed B':>8}"
    print(header)
    print("-" * len(header))
    for label, cpu_ms, frames, sent, stats in rows:
        print(
            f"{label:40} {cpu_ms:8.1f} {frames:7d} {sent:11,d} {stats.bytes_sent + stats.bytes_received:10,d} "
            f"{stats.keys_compared:9d} {stats.keys_differing:7d} {stats.repaired_local:8d} {stats.repaired_remote:8d}"
        )
    print()
    print("CPU is both sides in one process, codec included; 'fixed A'/'fixed B': keys stored anew on A / sent to B.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
