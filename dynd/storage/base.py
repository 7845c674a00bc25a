"""The Store interface every storage engine implements, and the write operations it applies.

Three keyspaces: `objects` keyed by (partition, key) so one partition streams in key order;
`hints` keyed by (target node, partition, key) for hinted handoff; `meta` keyed by name for node
identity, ring and membership. `write` applies a batch of operations atomically and durably: when
it returns, the batch survives a crash; when it raises, nothing of it was applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from dynd.core.limits import LMDB_KEY_BYTES_MAX, PARTITION_PREFIX_BYTES
from dynd.core.ops import DeleteHint, DeleteObject, PutHint, PutMeta, PutObject, WriteOp
from dynd.protocol.errors import KeyTooLarge

# The write operations live in the core (the pure node decides what to write); they are named
# here too because every storage engine applies them.
__all__ = [
    "DeleteHint", "DeleteObject", "PutHint", "PutMeta", "PutObject", "Store", "WriteOp",
    "OBJECTS", "HINTS", "META", "Row", "hint_key", "hint_prefix", "meta_key", "object_key", "row_of",
    "split_hint_key", "split_object_key",
]

TARGET_NAME_BYTES_MAX = 255




class Store(Protocol):
    def get_object(self, partition: int, key: bytes) -> bytes | None: ...

    def iter_partition(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """(key, data) of one partition in key order."""
        ...

    def iter_hints(self, target: str) -> Iterator[tuple[int, bytes, bytes]]:
        """(partition, key, data) of the hints held for `target`, in (partition, key) order."""
        ...

    def get_hint(self, target: str, partition: int, key: bytes) -> bytes | None: ...

    def hint_counts(self) -> dict[str, int]:
        """How many hints are held for each target (a full scan of the hints)."""
        ...

    def get_meta(self, name: str) -> bytes | None: ...

    def write(self, ops: Iterable[WriteOp]) -> None:
        """Apply every op atomically and durably, or raise and apply none."""
        ...

    def close(self) -> None: ...


# ---- key layout, shared by the engines so they order entries identically ----


def object_key(partition: int, key: bytes) -> bytes:
    encoded = partition.to_bytes(PARTITION_PREFIX_BYTES, "big") + key
    if len(encoded) > LMDB_KEY_BYTES_MAX:
        raise KeyTooLarge(f"key of {len(key)} bytes exceeds the storage key limit")
    return encoded


def split_object_key(encoded: bytes) -> tuple[int, bytes]:
    return int.from_bytes(encoded[:PARTITION_PREFIX_BYTES], "big"), encoded[PARTITION_PREFIX_BYTES:]


def hint_prefix(target: str) -> bytes:
    name = target.encode("utf-8")
    if not 0 < len(name) <= TARGET_NAME_BYTES_MAX:
        raise ValueError(f"hint target name must be 1..{TARGET_NAME_BYTES_MAX} bytes")
    return bytes([len(name)]) + name


def hint_key(target: str, partition: int, key: bytes) -> bytes:
    encoded = hint_prefix(target) + partition.to_bytes(PARTITION_PREFIX_BYTES, "big") + key
    if len(encoded) > LMDB_KEY_BYTES_MAX:
        raise KeyTooLarge(f"hint key of {len(encoded)} bytes exceeds the storage key limit")
    return encoded


def split_hint_key(encoded: bytes) -> tuple[str, int, bytes]:
    name_len = encoded[0]
    target = encoded[1 : 1 + name_len].decode("utf-8")
    rest = encoded[1 + name_len :]
    return target, int.from_bytes(rest[:PARTITION_PREFIX_BYTES], "big"), rest[PARTITION_PREFIX_BYTES:]


def meta_key(name: str) -> bytes:
    encoded = name.encode("utf-8")
    if not 0 < len(encoded) <= LMDB_KEY_BYTES_MAX:
        raise KeyTooLarge("meta name must be 1..511 bytes")
    return encoded


# ---- a write op as the row it touches, the one place the engines learn the op types ----

OBJECTS, HINTS, META = "objects", "hints", "meta"
Row = tuple[str, bytes, "bytes | None"]  # (keyspace, encoded key, data; None deletes)

_ROWS: dict[type, Callable[[Any], Row]] = {
    PutObject: lambda op: (OBJECTS, object_key(op.partition, op.key), op.data),
    DeleteObject: lambda op: (OBJECTS, object_key(op.partition, op.key), None),
    PutHint: lambda op: (HINTS, hint_key(op.target, op.partition, op.key), op.data),
    DeleteHint: lambda op: (HINTS, hint_key(op.target, op.partition, op.key), None),
    PutMeta: lambda op: (META, meta_key(op.name), op.data),
}


def row_of(op: WriteOp) -> Row:
    """The keyspace, encoded key and data (None: delete) an op writes."""
    to_row = _ROWS.get(type(op))
    if to_row is None:
        raise TypeError(f"unknown write op {op!r}")
    return to_row(op)
