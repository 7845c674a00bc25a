"""Hash trees over a node's objects, one per partition, kept current as writes land. Pure.

Shape: `segments` leaf segments, a power of `fanout` (itself a power of two). Depth 0 is the root,
depth D = log_fanout(segments) the segment level; node i at depth d covers the segments
[i * fanout^(D-d), (i+1) * fanout^(D-d)). Defaults: 256 segments, fanout 16 (D = 2, 273 nodes).

Rules:
- A key's segment is the low bits of BLAKE2b(key): independent of the key's partition (high bits
  of MD5(key)), so the keys of a partition spread over its segments.
- A key's leaf hash is `leaf_hash(key, record)`, 16 bytes: canonical, so replicas holding equal
  sibling sets hash equal whatever node encoded them (see there), and bound to the key.
- Every node's hash, segments included, is the XOR of the leaf hashes of the keys under it; an
  empty range hashes to zero (sent as b""). A write XORs (old leaf ^ new leaf) into the D + 1
  nodes on its key's path: O(depth), no rehashing of sibling nodes, no dirty flags, and the tree
  is a function of its (key, record) set alone, whatever order the writes landed in. (Cassandra's
  Merkle trees combine rows the same way.) Two different sets collide only if their leaf hashes
  XOR to the same 128 bits: chance 2^-128 for accidental divergence. XOR is not collision
  resistant against someone who picks keys and values *and* which writes a replica misses; such
  a crafted gap would be left to read repair.
- Membership: each tree keeps one dict key -> leaf hash and, per segment, a list of its keys, so a
  segment lists in O(its keys) and the requester compares leaf hashes key by key. Node hashes are
  a flat list of ints (XOR in place: a bytearray was 20x slower per update).

Memory (tests/bench/anti_entropy.py): 18.3 MB for 100,000 keys over 256 partitions, 183 bytes per
key, of which ~50 are the key bytes themselves (20-byte keys). A partition with no keys has no tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from dynd.core import replica

HASH_BYTES = 16
DEFAULT_SEGMENTS = 256
DEFAULT_FANOUT = 16
_SEGMENT_HASHER = hashlib.blake2b(digest_size=8, person=b"dynd-segment")
_LEAF_HASHER = hashlib.blake2b(digest_size=HASH_BYTES, person=b"dynd-leaf")


def leaf_hash(key: bytes, record: bytes) -> bytes:
    """A digest of (key, stored record) that depends only on the key and the sibling set held.

    Two replicas holding the same sibling set can hold different record bytes (the read context
    in a record is pruned per node), so the digest covers only the parts of the record that
    the sibling set determines (`replica.canonical_parts`). The key is hashed in (length first)
    because two keys often hold byte-identical records (same coordinator, counter, timestamp and
    value), and equal digests would cancel under XOR.
    """
    digest = _LEAF_HASHER.copy()
    digest.update(len(key).to_bytes(4, "big"))
    digest.update(key)
    head, tail = replica.canonical_parts(record)
    digest.update(head)
    digest.update(tail)
    return digest.digest()


def check_shape(segments: int, fanout: int) -> int:
    """The depth of the segment level; raises ValueError for a shape trees cannot have."""
    if fanout < 2 or fanout & (fanout - 1):
        raise ValueError(f"fanout must be a power of two of at least 2, got {fanout}")
    depth, width = 0, 1
    while width < segments:
        width *= fanout
        depth += 1
    if width != segments or segments > 1 << 20:
        raise ValueError(f"segments must be a power of fanout={fanout} up to 2^20, got {segments}")
    return depth


def _wire(value: int) -> bytes:
    return value.to_bytes(HASH_BYTES, "big") if value else b""


class MerkleTree:
    """One partition's tree: see the module docstring for its rules."""

    __slots__ = ("segments", "fanout", "depth", "_shift", "_offsets", "_nodes", "_entries", "_members")

    def __init__(self, segments: int = DEFAULT_SEGMENTS, fanout: int = DEFAULT_FANOUT) -> None:
        self.depth = check_shape(segments, fanout)
        self.segments = segments
        self.fanout = fanout
        self._shift = fanout.bit_length() - 1
        self._offsets = [(fanout**d - 1) // (fanout - 1) for d in range(self.depth + 1)]  # first node of each depth
        self._nodes = [0] * (self._offsets[-1] + segments)  # XOR accumulators, root first
        self._entries: dict[bytes, bytes] = {}  # key -> leaf hash
        self._members: list[list[bytes] | None] = [None] * segments  # segment -> its keys

    def __len__(self) -> int:
        return len(self._entries)

    def segment_of(self, key: bytes) -> int:
        digest = _SEGMENT_HASHER.copy()
        digest.update(key)
        return int.from_bytes(digest.digest(), "big") & (self.segments - 1)

    def hash_of(self, key: bytes) -> bytes | None:
        """The key's leaf hash, or None if the tree does not hold it."""
        return self._entries.get(key)

    # ---- updates ----

    def update(self, key: bytes, leaf: bytes | None) -> None:
        """The key now holds a record with this leaf hash (`leaf_hash(key, record)`; None: the key
        is gone). O(depth): the XOR of old and new goes into the nodes on the key's path."""
        old = self._entries.get(key)
        if leaf == old:
            return
        segment = self.segment_of(key)
        if leaf is None:
            assert old is not None
            del self._entries[key]
            members = self._members[segment]
            assert members is not None
            members.remove(key)
            if not members:
                self._members[segment] = None
            delta = int.from_bytes(old, "big")
        else:
            self._entries[key] = leaf
            if old is None:
                members = self._members[segment]
                if members is None:
                    self._members[segment] = [key]
                else:
                    members.append(key)
                delta = int.from_bytes(leaf, "big")
            else:
                delta = int.from_bytes(old, "big") ^ int.from_bytes(leaf, "big")
        nodes, offsets, shift = self._nodes, self._offsets, self._shift
        index = segment
        for depth in range(self.depth, -1, -1):
            nodes[offsets[depth] + index] ^= delta
            index >>= shift

    def build(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace the contents with (key, leaf hash) pairs in one pass: the start-up scan."""
        self._entries = entries = {}
        self._members = members = [None] * self.segments
        acc = [0] * self.segments
        segment_of = self.segment_of
        for key, leaf in items:
            segment = segment_of(key)
            old = entries.get(key)
            entries[key] = leaf
            if old is None:
                held = members[segment]
                if held is None:
                    members[segment] = [key]
                else:
                    held.append(key)
                acc[segment] ^= int.from_bytes(leaf, "big")
            else:  # a key listed twice: the later record wins
                acc[segment] ^= int.from_bytes(old, "big") ^ int.from_bytes(leaf, "big")
        levels = [acc]
        fanout = self.fanout
        for _ in range(self.depth):
            below = levels[-1]
            levels.append([_xor_all(below[i : i + fanout]) for i in range(0, len(below), fanout)])
        self._nodes = [value for level in reversed(levels) for value in level]

    # ---- queries ----

    def root(self) -> bytes:
        """The root as sent on the wire: b"" when the tree holds nothing."""
        return _wire(self._nodes[0])

    def level(self, depth: int, indexes: Iterable[int]) -> list[bytes]:
        """Wire hashes (b"" for zero) of nodes `indexes` at `depth`; raises ValueError if out of range."""
        if not 0 <= depth <= self.depth:
            raise ValueError(f"depth {depth} is outside 0..{self.depth}")
        width = self.fanout**depth
        offset = self._offsets[depth]
        nodes = self._nodes
        out = []
        for index in indexes:
            if not 0 <= index < width:
                raise ValueError(f"node {index} is outside 0..{width - 1} at depth {depth}")
            out.append(_wire(nodes[offset + index]))
        return out

    def entries(self, segment: int, after: bytes | None = None, until: bytes | None = None) -> list[tuple[bytes, bytes]]:
        """(key, leaf hash) of one segment in key order, keys in (after, until]."""
        members = self._members[segment]
        if members is None:
            return []
        entries = self._entries
        return [(k, entries[k]) for k in sorted(members) if (after is None or k > after) and (until is None or k <= until)]


def _xor_all(values: list[int]) -> int:
    out = 0
    for value in values:
        out ^= value
    return out


PENDING_NOTES_MAX = 256  # writes noted but not yet hashed in (a batch takes ~2 ms of the loop)
PENDING_NOTES_BYTES_MAX = 4 * 1024 * 1024  # and the records they hold on to


class Forest:
    """One tree per partition, created on the first key and dropped with the last.

    `ready` stays False until the engineer's start-up scan has built every held partition
    (`build`, then `mark_ready`); until then the trees do not describe the store, so exchanges
    neither start nor answer.

    Writes are noted on the request path but hashed in later, in batches: before any query, and
    whenever `PENDING_NOTES_MAX` keys or `PENDING_NOTES_BYTES_MAX` bytes of records are waiting.
    Hashing one write among a request's other work cost several times what it costs in a run of
    them (measured: about a tenth of a 3-node cluster's insert throughput), and a key written
    twice in between is hashed once.
    """

    def __init__(self, partitions: int, *, segments: int = DEFAULT_SEGMENTS, fanout: int = DEFAULT_FANOUT) -> None:
        self.depth = check_shape(segments, fanout)
        self.partitions = partitions
        self.segments = segments
        self.fanout = fanout
        self.ready = False
        self._trees: dict[int, MerkleTree] = {}
        self._empty = MerkleTree(segments, fanout)  # answers for partitions without keys
        self._pending: dict[tuple[int, bytes], bytes | None] = {}  # the latest record noted, None: deleted
        self._pending_bytes = 0

    def mark_ready(self) -> None:
        self.ready = True

    def tree(self, partition: int) -> MerkleTree:
        """The partition's tree (an empty, shared one when it holds no key: do not update it)."""
        self.settle()
        return self._trees.get(partition, self._empty)

    def held(self) -> list[int]:
        """Partitions with at least one key, in order."""
        self.settle()
        return sorted(self._trees)

    @property
    def key_count(self) -> int:
        self.settle()
        return sum(len(tree) for tree in self._trees.values())

    # ---- keeping current ----

    def note_put(self, partition: int, key: bytes, record: bytes) -> None:
        """The partition now stores `record` for `key` (call on every object write)."""
        self._pending[(partition, key)] = record
        self._pending_bytes += len(record)
        if len(self._pending) >= PENDING_NOTES_MAX or self._pending_bytes >= PENDING_NOTES_BYTES_MAX:
            self.settle()

    def note_delete(self, partition: int, key: bytes) -> None:
        self._pending[(partition, key)] = None
        if len(self._pending) >= PENDING_NOTES_MAX:
            self.settle()

    def note_record(self, partition: int, key: bytes, record: bytes | None) -> None:
        """note_put, or note_delete when `record` is None."""
        if record is None:
            self.note_delete(partition, key)
        else:
            self.note_put(partition, key, record)

    def settle(self) -> None:
        """Hash every noted write into its tree."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        self._pending_bytes = 0
        trees = self._trees
        for (partition, key), record in pending.items():
            tree = trees.get(partition)
            if record is None:
                if tree is not None:
                    tree.update(key, None)
                    if not len(tree):
                        del trees[partition]
                continue
            if tree is None:
                tree = trees[partition] = MerkleTree(self.segments, self.fanout)
            tree.update(key, leaf_hash(key, record))

    def build(self, partition: int, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace the partition's tree from every (key, record) it stores: the start-up scan."""
        self.settle()
        tree = MerkleTree(self.segments, self.fanout)
        tree.build((key, leaf_hash(key, record)) for key, record in items)
        if len(tree):
            self._trees[partition] = tree
        else:
            self._trees.pop(partition, None)

    def drop(self, partition: int) -> None:
        self.settle()
        self._trees.pop(partition, None)

    # ---- queries (wire form: b"" for an empty range) ----

    def root(self, partition: int) -> bytes:
        return self.tree(partition).root()

    def level(self, partition: int, depth: int, indexes: Iterable[int]) -> list[bytes]:
        return self.tree(partition).level(depth, indexes)

    def segment_of(self, key: bytes) -> int:
        return self._empty.segment_of(key)

    def entries(self, partition: int, segment: int, after: bytes | None = None, until: bytes | None = None) -> list[tuple[bytes, bytes]]:
        return self.tree(partition).entries(segment, after, until)

    def segment_page(
        self, partition: int, segments: list[int], after: bytes | None, limit: int
    ) -> tuple[list[tuple[bytes, bytes]], int, bytes | None]:
        """Up to `limit` (key, entry hash) of `segments`, each in key order, the first one's keys
        after `after`. Returns (entries, complete, after): how many segments were listed in full
        and, if the page filled inside the next one, the last key listed of it."""
        if limit < 1:
            raise ValueError("a page holds at least one entry")
        tree = self.tree(partition)
        out: list[tuple[bytes, bytes]] = []
        for position, segment in enumerate(segments):
            if not 0 <= segment < self.segments:
                raise ValueError(f"segment {segment} is outside 0..{self.segments - 1}")
            listed = tree.entries(segment, after if position == 0 else None)
            room = limit - len(out)
            if len(listed) > room:
                out += listed[:room]  # room >= 1: a full page returns before the next segment
                return out, position, out[-1][0]
            out += listed
            if len(out) == limit and position + 1 < len(segments):
                return out, position + 1, None
        return out, len(segments), None
