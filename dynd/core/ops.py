"""The write operations a node asks its storage to apply atomically and durably.

Defined in the core because the pure node decides what to write; every storage engine
(`dynd.storage`) and the simulator's disk apply them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PutObject:
    partition: int
    key: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class DeleteObject:
    partition: int
    key: bytes


@dataclass(frozen=True, slots=True)
class PutHint:
    target: str
    partition: int
    key: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class DeleteHint:
    target: str
    partition: int
    key: bytes


@dataclass(frozen=True, slots=True)
class PutMeta:
    name: str
    data: bytes


WriteOp = PutObject | DeleteObject | PutHint | DeleteHint | PutMeta
