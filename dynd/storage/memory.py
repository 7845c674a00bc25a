"""An in-memory Store for tests and the simulator. It holds exactly what was written."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sortedcontainers import SortedDict

from dynd.storage import base
from dynd.storage.base import WriteOp


class MemoryStore:
    def __init__(self) -> None:
        self._objects: SortedDict = SortedDict()
        self._hints: SortedDict = SortedDict()
        self._meta: dict[bytes, bytes] = {}
        self.closed = False

    def get_object(self, partition: int, key: bytes) -> bytes | None:
        return self._objects.get(base.object_key(partition, key))

    def iter_partition(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        start = base.object_key(partition, b"")
        stop = base.object_key(partition + 1, b"") if partition + 1 < 65536 else None
        for encoded in list(self._objects.irange(start, stop, inclusive=(True, False))):
            yield base.split_object_key(encoded)[1], self._objects[encoded]

    def iter_hints(self, target: str) -> Iterator[tuple[int, bytes, bytes]]:
        prefix = base.hint_prefix(target)
        for encoded in list(self._hints.irange(minimum=prefix)):
            if not encoded.startswith(prefix):
                break
            _, partition, key = base.split_hint_key(encoded)
            yield partition, key, self._hints[encoded]

    def get_hint(self, target: str, partition: int, key: bytes) -> bytes | None:
        return self._hints.get(base.hint_key(target, partition, key))

    def hint_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for encoded in self._hints:
            target = base.split_hint_key(encoded)[0]
            counts[target] = counts.get(target, 0) + 1
        return counts

    def get_meta(self, name: str) -> bytes | None:
        return self._meta.get(base.meta_key(name))

    def write(self, ops: Iterable[WriteOp]) -> None:
        # Validate every op first so a bad one applies nothing, as a real transaction would.
        rows = [base.row_of(op) for op in ops]
        tables: dict[str, dict[bytes, bytes] | SortedDict] = {base.OBJECTS: self._objects, base.HINTS: self._hints, base.META: self._meta}
        for keyspace, encoded, data in rows:
            table = tables[keyspace]
            if data is None:
                table.pop(encoded, None)
            else:
                table[encoded] = bytes(data)

    def close(self) -> None:
        self.closed = True
