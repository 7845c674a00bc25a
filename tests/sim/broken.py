"""Deliberately broken nodes: Storage ports that lie, so each checker is seen to fail.

Each wraps the simulator's disk (`dynd.sim.disk.SimDisk`) and is passed to the simulation as
`wrap_storage(host, disk)`; the node above it is the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dynd.core.ops import PutObject, WriteOp
from dynd.core.replica import decode_record, encode_record
from dynd.core.versions import EMPTY_CLOCK, Dot, Sibling, SiblingSet
from dynd.sim.disk import SimDisk
from dynd.sim.world import Host

PRUNE = 10


class _Wrapper:
    def __init__(self, host: Host, disk: SimDisk) -> None:
        self.host = host
        self.disk = disk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.disk, name)

    def submit(self, ops: Sequence[WriteOp], on_done: Callable[[Any], None]) -> None:
        self.disk.submit([self.rewrite(op) for op in ops], on_done)

    def rewrite(self, op: WriteOp) -> WriteOp:
        if isinstance(op, PutObject):
            return PutObject(op.partition, op.key, self.rewrite_record(op.partition, op.key, op.data))
        return op

    def rewrite_record(self, partition: int, key: bytes, record: bytes) -> bytes:
        return record


class AckBeforeStore(_Wrapper):
    """Says a write is durable as soon as it is queued: a crash before the commit loses it."""

    def submit(self, ops: Sequence[WriteOp], on_done: Callable[[Any], None]) -> None:
        self.disk.submit(ops, lambda error: None)
        on_done(None)


class DropSiblings(_Wrapper):
    """Keeps only the newest sibling of every object it stores (last writer wins)."""

    def rewrite_record(self, partition: int, key: bytes, record: bytes) -> bytes:
        obj = decode_record(record)
        if len(obj.siblings) <= 1:
            return record
        newest = max(obj.siblings, key=lambda s: (s.timestamp_ms, s.dot))
        return encode_record(SiblingSet((newest,), obj.seen), PRUNE)


class InventsValues(_Wrapper):
    """Adds a sibling holding an element no client wrote to every object it stores."""

    def rewrite_record(self, partition: int, key: bytes, record: bytes) -> bytes:
        obj = decode_record(record)
        ghost = Sibling(Dot("ghost", 1), EMPTY_CLOCK, b"ghost-element", 0)
        if any(s.dot == ghost.dot for s in obj.siblings):
            return record
        return encode_record(SiblingSet(tuple(sorted((*obj.siblings, ghost), key=lambda s: s.dot)), obj.seen), PRUNE)


class IgnoresWrites(_Wrapper):
    """Acknowledges object writes but never stores them (membership writes still work)."""

    def submit(self, ops: Sequence[WriteOp], on_done: Callable[[Any], None]) -> None:
        self.disk.submit([op for op in ops if not isinstance(op, PutObject)], on_done)


class KeepsObsolete(_Wrapper):
    """Keeps the siblings a write superseded next to the new ones (skips the coverage rule)."""

    def rewrite_record(self, partition: int, key: bytes, record: bytes) -> bytes:
        old = self.disk.read_object(partition, key)
        if old is None:
            return record
        new = decode_record(record)
        by_dot = {s.dot: s for s in decode_record(old).siblings}
        by_dot.update({s.dot: s for s in new.siblings})
        return encode_record(SiblingSet(tuple(sorted(by_dot.values(), key=lambda s: s.dot)), new.seen), PRUNE)


class IgnoresWritesAfterAPause(_Wrapper):
    """Stores nothing once its process has been paused: fails only under a `pause` fault."""

    def submit(self, ops: Sequence[WriteOp], on_done: Callable[[Any], None]) -> None:
        if self.disk.process.pauses:
            ops = [op for op in ops if not isinstance(op, PutObject)]
        self.disk.submit(ops, on_done)


def only_on(name: str, wrapper: type[_Wrapper]) -> Callable[[Host, SimDisk], Any]:
    """Break one host; the others run the real disk."""
    return lambda host, disk: wrapper(host, disk) if host.name == name else disk


def everywhere(wrapper: type[_Wrapper]) -> Callable[[Host, SimDisk], Any]:
    return lambda host, disk: wrapper(host, disk)
