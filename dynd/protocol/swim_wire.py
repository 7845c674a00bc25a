"""The failure detector's datagrams (SWIM over UDP): encoding, packing to a byte budget, strict decoding.

A datagram is one CBOR array of seven items:

    [TAG, VERSION, kind, seq, sender, target, updates]

- TAG ("dswim") and VERSION (1) name the protocol; they carry no cluster id (the member list says
  who may talk to whom).
- kind: PING, ACK or PING_REQ. seq: the prober's sequence number, echoed by the ack.
- PING: `sender` asks `target` (the receiver's own name) for an ack.
- PING_REQ: `sender` asks the receiver to ping `target` and relay the ack.
- ACK: `sender` is the member whose liveness the ack asserts (the pinged one), also when another
  member relays it; `target` is always "". So a relayed ack is never larger than the ping-req it
  answers, less piggyback.
- updates: piggybacked membership updates, each [name, status, incarnation], status ALIVE, SUSPECT
  or DEAD.

Decoding is strict, like `dynd.protocol.codec`: the size is checked before anything is parsed, then
`codec.loads_strict` refuses tags, indefinite-length items, duplicate keys, invalid UTF-8, deep
nesting and trailing bytes, and every field is type-checked here. Anything else raises
`BadDatagram` and has no other effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from dynd.protocol import codec
from dynd.protocol.errors import BadFrame

TAG = "dswim"
VERSION = 1
PING, ACK, PING_REQ = 0, 1, 2
KINDS = (PING, ACK, PING_REQ)
ALIVE, SUSPECT, DEAD = 0, 1, 2
STATUSES = (ALIVE, SUSPECT, DEAD)
NAME_BYTES_MAX = 64  # node names are 1-64 characters (dynd.config.NODE_NAME_PATTERN)
INT_MAX = 2**63 - 1
UPDATES_WIRE_MAX = 64  # most updates any datagram may carry, whatever the limits say


class BadDatagram(ValueError):
    """A datagram that is too large, malformed, of another protocol or with a mistyped field."""


@dataclass(frozen=True, slots=True)
class Update:
    name: str
    status: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class Datagram:
    kind: int
    seq: int
    sender: str
    target: str
    updates: tuple[Update, ...] = ()


# ---- encoding ----


def _header(kind: int, seq: int, sender: str, target: str) -> list[Any]:
    return [TAG, VERSION, kind, seq, sender, target]


def encode_datagram(datagram: Datagram) -> bytes:
    updates = [[u.name, u.status, u.incarnation] for u in datagram.updates]
    return cbor2.dumps([*_header(datagram.kind, datagram.seq, datagram.sender, datagram.target), updates])


def update_bytes(update: Update) -> int:
    """The encoded size of one update inside the updates array."""
    return len(cbor2.dumps([update.name, update.status, update.incarnation]))


def _array_head_bytes(count: int) -> int:
    return 1 if count < 24 else 2 if count < 256 else 3


def pack(
    kind: int,
    seq: int,
    sender: str,
    target: str,
    candidates: Sequence[Update],
    *,
    bytes_max: int,
    updates_max: int,
) -> tuple[bytes, list[int]] | None:
    """The datagram with as many of `candidates` as fit, taken greedily in order.

    Returns (payload, indices of the candidates included), or None when not even the bare datagram
    fits in `bytes_max`. The payload is never larger than `bytes_max`.
    """
    head = cbor2.dumps(_header(kind, seq, sender, target))
    # `head` encodes a 6-item array; the datagram is a 7-item array: same one-byte head.
    room = bytes_max - len(head) - _array_head_bytes(updates_max)
    if room < 0:
        return None
    chosen: list[int] = []
    for index, update in enumerate(candidates):
        if len(chosen) >= updates_max:
            break
        size = update_bytes(update)
        if size <= room:
            chosen.append(index)
            room -= size
    payload = encode_datagram(Datagram(kind, seq, sender, target, tuple(candidates[i] for i in chosen)))
    assert len(payload) <= bytes_max, (len(payload), bytes_max)
    return payload, chosen


# ---- decoding ----


def _name(value: Any, field: str, *, empty_ok: bool = False) -> str:
    if type(value) is not str:
        raise BadDatagram(f"{field} must be text, not {type(value).__name__}")
    if not value and not empty_ok:
        raise BadDatagram(f"{field} must not be empty")
    if len(value.encode()) > NAME_BYTES_MAX:
        raise BadDatagram(f"{field} longer than {NAME_BYTES_MAX} bytes")
    return value


def _int(value: Any, field: str) -> int:
    if type(value) is not int or not 0 <= value <= INT_MAX:
        raise BadDatagram(f"{field} must be an integer in 0..2^63-1")
    return value


def decode_datagram(payload: bytes, *, bytes_max: int, updates_max: int = UPDATES_WIRE_MAX) -> Datagram:
    """Parse one datagram or raise BadDatagram. The size is checked before any parsing."""
    if len(payload) > bytes_max:
        raise BadDatagram(f"datagram of {len(payload)} bytes exceeds {bytes_max}")
    try:
        item = codec.loads_strict(payload)
    except BadFrame as exc:
        raise BadDatagram(exc.message) from None
    if type(item) is not list or len(item) != 7:
        raise BadDatagram("datagram must be an array of 7 items")
    tag, version, kind, seq, sender, target, raw_updates = item
    if tag != TAG or type(tag) is not str:
        raise BadDatagram("not a dswim datagram")
    if type(version) is not int or version != VERSION:
        raise BadDatagram(f"unsupported dswim version {version!r}")
    if type(kind) is not int or kind not in KINDS:
        raise BadDatagram(f"unknown datagram kind {kind!r}")
    seq = _int(seq, "seq")
    sender = _name(sender, "sender")
    target = _name(target, "target", empty_ok=kind == ACK)
    if kind == ACK and target:
        raise BadDatagram("an ack's target must be empty")
    if type(raw_updates) is not list:
        raise BadDatagram("updates must be an array")
    if len(raw_updates) > min(updates_max, UPDATES_WIRE_MAX):
        raise BadDatagram(f"{len(raw_updates)} updates exceed {min(updates_max, UPDATES_WIRE_MAX)}")
    updates = []
    for index, raw in enumerate(raw_updates):
        if type(raw) is not list or len(raw) != 3:
            raise BadDatagram(f"updates[{index}] must be an array of 3 items")
        name = _name(raw[0], f"updates[{index}].name")
        status = raw[1]
        if type(status) is not int or status not in STATUSES:
            raise BadDatagram(f"updates[{index}].status must be 0, 1 or 2")
        updates.append(Update(name, status, _int(raw[2], f"updates[{index}].incarnation")))
    return Datagram(kind, seq, sender, target, tuple(updates))
