"""Every message on the wire, as a frozen dataclass with its op name.

A frame carries one CBOR map: {"op": OP, field: value, ...}. Requests carry an `id` that the
reply repeats, so one connection carries many requests at once. Nested records (`ClockEntry`,
`SiblingView`) travel as maps without an op. The codec (`codec.py`) is the only place that turns
these into bytes and back, type-checking every field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class ClockEntry:
    actor: str
    counter: int


@dataclass(frozen=True, slots=True)
class SiblingView:
    """One live sibling as a client sees it: its value, its dot and the clock it was written against."""

    value: bytes
    actor: str
    counter: int
    clock: list[ClockEntry]


@dataclass(frozen=True, slots=True)
class Hello:
    OP: ClassVar[str] = "hello"
    version: int
    agent: str


@dataclass(frozen=True, slots=True)
class HelloOk:
    OP: ClassVar[str] = "hello_ok"
    version: int
    node: str


@dataclass(frozen=True, slots=True)
class Ping:
    OP: ClassVar[str] = "ping"
    id: int


@dataclass(frozen=True, slots=True)
class Pong:
    OP: ClassVar[str] = "pong"
    id: int
    node: str


@dataclass(frozen=True, slots=True)
class Get:
    OP: ClassVar[str] = "get"
    id: int
    key: bytes
    r: int | None = None


@dataclass(frozen=True, slots=True)
class GetOk:
    """Live siblings (tombstones excluded) and the context that covers every sibling, tombstones too."""

    OP: ClassVar[str] = "get_ok"
    id: int
    siblings: list[SiblingView]
    context: bytes


@dataclass(frozen=True, slots=True)
class Put:
    OP: ClassVar[str] = "put"
    id: int
    key: bytes
    value: bytes
    context: bytes | None = None
    w: int | None = None


@dataclass(frozen=True, slots=True)
class PutOk:
    """The context of what this client has now seen: its old context plus the new write."""

    OP: ClassVar[str] = "put_ok"
    id: int
    context: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    OP: ClassVar[str] = "delete"
    id: int
    key: bytes
    context: bytes
    w: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteOk:
    OP: ClassVar[str] = "delete_ok"
    id: int
    context: bytes


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """`id` is None when the failing frame carried no readable id (for example, undecodable CBOR)."""

    OP: ClassVar[str] = "error"
    id: int | None
    code: str
    message: str
    retriable: bool


Request = Hello | Ping | Get | Put | Delete
Reply = HelloOk | Pong | GetOk | PutOk | DeleteOk | ErrorReply
Message = Request | Reply

MESSAGE_TYPES: tuple[type, ...] = (Hello, HelloOk, Ping, Pong, Get, GetOk, Put, PutOk, Delete, DeleteOk, ErrorReply)
RECORD_TYPES: tuple[type, ...] = (ClockEntry, SiblingView)
