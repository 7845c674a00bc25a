"""Key listing: the keys that start with a prefix (a bucket's), from a scan of every member. Pure.

Dynamo has no key index: keys are spread over the ring by their hash, so listing a bucket is a
full scan, as it is in Riak (which warns against it in production). It is bounded here:
- Each node scans its own store (`scan_local`): the partitions it holds, each in key order from
  the start, stopping at the first key past the prefix. Bucket keys start with byte 0x00
  (`dynd.protocol.buckets`), so they sort before every plain key and one bucket's keys are
  contiguous: a scan reads the keys of the buckets that sort before it, then its own, and stops.
  It examines at most `list_keys_scan_max` stored keys and keeps at most `limit`. A key whose
  every sibling is a tombstone is left out; the union lists a key that any replica holds live, so
  a key deleted a moment ago is listed until its last replica has the tombstone (as in Riak).
- The node a client asked (`KeyListings.start`) scans itself and gathers a `KeysScan` from every
  other active member (for at most `gather_timeout_ms`), then answers the sorted union, cut at
  the limit. It is `complete` only if every partition was scanned in full by a node that is one
  of its primaries, no scan stopped at a bound, and the union fit the limit. A partition whose
  primaries are all down, or a new primary that has not yet received its handoff, can hide keys:
  the answer then says so (or, in the second case, cannot know; anti-entropy closes the gap).
- At most `list_keys_inflight_max` listings run at once on the coordinating node; more are
  refused with `overloaded`.

The scan runs in the node's thread: list_keys_scan_max bounds how long one node spends on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from dynd.core.cluster import ClusterView
from dynd.core.gather import Answers, Gathers
from dynd.core.limits import Limits
from dynd.core.ports import Storage
from dynd.core.replica import has_live_value
from dynd.protocol import messages
from dynd.protocol.errors import BadRequest, Overloaded

Reply = Callable[[Any], None]


def scan_local(
    storage: Storage, partitions: Iterable[int], prefix: bytes, limit: int, scan_max: int
) -> tuple[list[bytes], list[int], bool]:
    """(live keys starting with `prefix`, partitions scanned in full, whether no bound cut the
    scan) from this node's store."""
    keys: list[bytes] = []
    scanned: list[int] = []
    examined = 0
    for partition in partitions:
        items = storage.partition_items(partition)
        finished = True
        try:
            for key, record in items:
                examined += 1
                if examined > scan_max:
                    finished = False
                    break
                if key < prefix:
                    continue
                if not key.startswith(prefix):
                    break
                if has_live_value(record):
                    if len(keys) >= limit:
                        finished = False
                        break
                    keys.append(key)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # an LMDB cursor's read transaction ends here, not at garbage collection
        if not finished:
            return keys, scanned, False
        scanned.append(partition)
    return keys, scanned, True


class KeyListings:
    """Serves KeysList (coordinating a listing) and KeysScan (this node's part of one)."""

    def __init__(self, name: str, storage: Storage, cluster: ClusterView, gathers: Gathers, *, limits: Limits, partitions: int) -> None:
        self.name = name
        self.storage = storage
        self.cluster = cluster
        self.gathers = gathers
        self.limits = limits
        self.partitions = partitions
        self.running = 0

    def _scan(self, prefix: bytes, limit: int) -> tuple[list[bytes], list[int], bool]:
        held = [p for p in range(self.partitions) if self.name in self.cluster.preference_list(p).primaries]
        return scan_local(self.storage, held, prefix, limit, self.limits.list_keys_scan_max)

    def _limit(self, asked: int | None) -> int:
        if asked is None:
            return self.limits.list_keys_max
        if asked < 1:
            raise BadRequest("a listing's limit must be at least 1")
        return min(asked, self.limits.list_keys_max)

    def scan(self, request: messages.KeysScan, reply: Reply) -> None:
        keys, scanned, complete = self._scan(request.prefix, self._limit(request.limit))
        reply(messages.KeysScanOk(id=request.id, keys=keys, partitions=scanned, complete=complete))

    def start(self, request: messages.KeysList, reply: Reply) -> None:
        limit = self._limit(request.limit)
        if self.running >= self.limits.list_keys_inflight_max:
            raise Overloaded(f"{self.running} key listings are running here (list_keys_inflight_max={self.limits.list_keys_inflight_max}): try again later")
        # One more than the limit from each scan tells a listing that fits from one cut short.
        keys, scanned, complete = self._scan(request.prefix, limit + 1)
        found: set[bytes] = set(keys)
        covered: set[int] = set(scanned)
        others = self.cluster.other_members()
        self.running += 1

        def gathered(answers: Answers) -> None:
            self.running -= 1
            all_complete = complete
            for member in others:
                answer = answers.get(member)
                if not isinstance(answer, messages.KeysScanOk):
                    all_complete = False
                    continue
                found.update(key for key in answer.keys if key.startswith(request.prefix))
                covered.update(answer.partitions)
                all_complete = all_complete and answer.complete
            ordered = sorted(found)
            whole = all_complete and len(covered) == self.partitions and len(ordered) <= limit
            reply(messages.KeysListOk(id=request.id, keys=ordered[:limit], complete=whole))

        self.gathers.start(others, lambda rid: messages.KeysScan(id=rid, prefix=request.prefix, limit=limit + 1), gathered)
