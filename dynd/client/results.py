"""What a request returns, and the pieces of a request both connections share.

No trio here: the blocking socket connection (`dynd.client.sync`) and the trio one
(`dynd.client.connection`) both build their requests and read their replies with these, and a
process that only needs the former loads no event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from dynd.protocol import PROTOCOL_VERSION, messages
from dynd.protocol.errors import Internal

DEFAULT_TIMEOUT_S = 5.0
REPLY_FRAME_BYTES_MAX = 64 * 1024 * 1024
# Before the hello is done a node sends only hello replies and errors, each far below this: a
# longer length prefix means what answered is not a dynd node (`dynd.client.errors`).
HELLO_REPLY_BYTES_MAX = 64 * 1024
# The most replicas a cluster keeps of a key (N; a node refuses a config with more). R, W, PR and PW
# count replicas, so a value above this is wrong on every cluster and is refused before sending.
REPLICAS_MAX = 16

KeyLike = bytes | str


@dataclass(frozen=True, slots=True)
class Sibling:
    """One value. `content_type`, `usermeta` (lowercase name -> value) and `modified_ms` (when it
    was written, wall-clock ms) are there when its writer gave metadata (`put(content_type=...)`,
    or through the HTTP door), else None, {} and None."""

    value: bytes
    dot: tuple[str, int]
    clock: dict[str, int]
    content_type: str | None = None
    usermeta: dict[str, str] = field(default_factory=dict)
    modified_ms: int | None = None


@dataclass(frozen=True, slots=True)
class GetResult:
    """`values` is empty when the key is not found (or deleted); `context` is opaque."""

    values: list[bytes]
    context: bytes
    siblings: list[Sibling]

    @property
    def found(self) -> bool:
        return bool(self.values)


def key_bytes(key: KeyLike) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def get_result(reply: messages.GetOk) -> GetResult:
    siblings = [
        Sibling(
            view.value,
            (view.actor, view.counter),
            {entry.actor: entry.counter for entry in view.clock},
            view.content_type,
            {entry.name: entry.value for entry in view.usermeta or ()},
            view.modified_ms,
        )
        for view in reply.siblings
    ]
    return GetResult([sibling.value for sibling in siblings], reply.context, siblings)


def meta_entries(usermeta: Mapping[str, str] | None) -> list[messages.MetaEntry] | None:
    """A put's user metadata as the wire carries it (None when there is none)."""
    return [messages.MetaEntry(name, value) for name, value in usermeta.items()] if usermeta else None


def client_hello(agent: str, token: str | None) -> messages.Hello:
    """The hello of a client (not a peer): who it is, and its token when it has one."""
    return messages.Hello(version=PROTOCOL_VERSION, agent=agent, token=token)


_Reply = TypeVar("_Reply")


def expect(reply: messages.Message, kind: type[_Reply], request: messages.Message) -> _Reply:
    """`reply` as the `kind` of reply `request` should get; anything else is the node's bug."""
    if not isinstance(reply, kind):
        raise Internal(f"unexpected reply {type(reply).__name__} to {request.OP}")
    return reply
