"""The failure detector's datagrams (SWIM over UDP): encoding, sealing, packing to a byte budget, strict decoding.

A datagram (version 2) is a CBOR body followed by its MAC:

    body = [TAG, VERSION, cluster, boot, mseq, incarnation, kind, seq, sender, target, updates]
    datagram = body || MAC,  MAC = dynd.protocol.auth.datagram_mac(secret, body)  (16 bytes)

- TAG ("dswim") and VERSION (2) name the protocol. `cluster` is the sender's cluster id.
- The sender's own word about itself: `boot` grows with every start of the sender (the daemon
  persists it), `mseq` grows by one with every datagram it sends within a boot (the receiver's
  replay window), `incarnation` is its current SWIM incarnation.
- kind: PING, ACK or PING_REQ. seq: the prober's sequence number, echoed by the ack.
- PING: `sender` asks `target` (the receiver's own name) for an ack.
- PING_REQ: `sender` asks the receiver to ping `target` and relay the ack.
- ACK: a direct ack has `target` "" (the sender is the member whose liveness it asserts); a relayed
  ack names that member in `target` and its `sender` is the relaying member (who sends it, and so
  who MACs it). So an ack is never larger than the ping it answers, and a relayed ack never larger
  than the ping-req it answers, less piggyback.
- updates: piggybacked membership updates, each [name, status, incarnation], status ALIVE, SUSPECT
  or DEAD.

The MAC is HMAC-SHA256 truncated to 16 bytes, keyed with the cluster secret (`keyring.current` to
send; any secret of the keyring is accepted, so a rotation needs no downtime), or with a fixed
no-secret key when the cluster has no secret (integrity against corruption, not authenticity).

Decoding is strict, like `dynd.protocol.codec`, and in this order: the size is checked before
anything else, then the MAC over the body (`open_datagram`, in constant time, before a byte of
CBOR is parsed: a datagram that fails is dropped unread), then `codec.loads_strict` refuses tags,
indefinite-length items, duplicate keys, invalid UTF-8, deep nesting and trailing bytes, and every
field is type-checked here. Anything else raises `BadDatagram` (`BadMac` for a MAC that fails)
and has no other effect. Whether the cluster id, the sender, the source address and the sequence
are acceptable is the detector's call (`dynd.core.swim`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import cbor2

from dynd.protocol import codec
from dynd.protocol.auth import DATAGRAM_MAC_BYTES, Keyring, check_datagram_mac, datagram_mac
from dynd.protocol.errors import BadFrame

TAG = "dswim"
VERSION = 2
PING, ACK, PING_REQ = 0, 1, 2
KINDS = (PING, ACK, PING_REQ)
ALIVE, SUSPECT, DEAD = 0, 1, 2
STATUSES = (ALIVE, SUSPECT, DEAD)
NAME_BYTES_MAX = 64  # node names are 1-64 characters (dynd.config.NODE_NAME_PATTERN)
CLUSTER_BYTES_MAX = 64  # cluster ids are 32 hex digits (dynd.shell.bootstrap)
INT_MAX = 2**63 - 1
UPDATES_WIRE_MAX = 64  # most updates any datagram may carry, whatever the limits say
MAC_BYTES = DATAGRAM_MAC_BYTES
BODY_ITEMS = 11


class BadDatagram(ValueError):
    """A datagram that is too large, malformed, of another protocol or with a mistyped field."""


class BadMac(BadDatagram):
    """A datagram whose MAC no secret of the keyring makes: forged, corrupted, or from another cluster's secret."""


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
    cluster: str = ""
    boot: int = 0
    mseq: int = 0
    incarnation: int = 0  # the sender's own


# ---- encoding ----


def _header(d: Datagram) -> list[Any]:
    return [TAG, VERSION, d.cluster, d.boot, d.mseq, d.incarnation, d.kind, d.seq, d.sender, d.target]


def encode_body(datagram: Datagram) -> bytes:
    updates = [[u.name, u.status, u.incarnation] for u in datagram.updates]
    return cbor2.dumps([*_header(datagram), updates])


def encode_datagram(datagram: Datagram, secret: bytes | None = None) -> bytes:
    """The sealed datagram: body || MAC (`secret` None: the no-secret key)."""
    body = encode_body(datagram)
    return body + datagram_mac(secret, body)


def update_bytes(update: Update) -> int:
    """The encoded size of one update inside the updates array."""
    return len(cbor2.dumps([update.name, update.status, update.incarnation]))


def _array_head_bytes(count: int) -> int:
    return 1 if count < 24 else 2 if count < 256 else 3


def pack(
    bare: Datagram,
    candidates: Sequence[Update],
    *,
    bytes_max: int,
    updates_max: int,
    secret: bytes | None = None,
) -> tuple[bytes, list[int]] | None:
    """The sealed datagram `bare` with as many of `candidates` as fit, taken greedily in order.

    `bare` carries the header (its own updates are ignored). Returns (payload, indices of the
    candidates included), or None when not even the bare datagram and its MAC fit in `bytes_max`.
    The payload, MAC included, is never larger than `bytes_max`.
    """
    head = cbor2.dumps(_header(bare))
    # `head` encodes a 10-item array; the body is an 11-item array: the same one-byte head.
    room = bytes_max - MAC_BYTES - len(head) - _array_head_bytes(updates_max)
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
    payload = encode_datagram(replace(bare, updates=tuple(candidates[i] for i in chosen)), secret)
    assert len(payload) <= bytes_max, (len(payload), bytes_max)
    return payload, chosen


# ---- decoding ----


def _text(value: Any, field: str, *, bytes_max: int = NAME_BYTES_MAX, empty_ok: bool = False) -> str:
    if type(value) is not str:
        raise BadDatagram(f"{field} must be text, not {type(value).__name__}")
    if not value and not empty_ok:
        raise BadDatagram(f"{field} must not be empty")
    if len(value.encode()) > bytes_max:
        raise BadDatagram(f"{field} longer than {bytes_max} bytes")
    return value


def _int(value: Any, field: str) -> int:
    if type(value) is not int or not 0 <= value <= INT_MAX:
        raise BadDatagram(f"{field} must be an integer in 0..2^63-1")
    return value


def open_datagram(payload: bytes, keyring: Keyring | None, *, bytes_max: int) -> bytes:
    """The body of a datagram whose size and MAC are good, or raise (BadMac for the MAC). Parses nothing."""
    if len(payload) > bytes_max:
        raise BadDatagram(f"datagram of {len(payload)} bytes exceeds {bytes_max}")
    if len(payload) <= MAC_BYTES:
        raise BadDatagram(f"datagram of {len(payload)} bytes is too short to carry a MAC")
    body, mac = payload[:-MAC_BYTES], payload[-MAC_BYTES:]
    if not check_datagram_mac(keyring, body, mac):
        raise BadMac("the datagram's MAC does not check with any secret")
    return body


def decode_body(body: bytes, *, updates_max: int = UPDATES_WIRE_MAX) -> Datagram:
    """Parse a body whose MAC has been checked, or raise BadDatagram."""
    try:
        item = codec.loads_strict(body)
    except BadFrame as exc:
        raise BadDatagram(exc.message) from None
    if type(item) is not list or len(item) != BODY_ITEMS:
        raise BadDatagram(f"datagram must be an array of {BODY_ITEMS} items")
    tag, version, cluster, boot, mseq, incarnation, kind, seq, sender, target, raw_updates = item
    if tag != TAG or type(tag) is not str:
        raise BadDatagram("not a dswim datagram")
    if type(version) is not int or version != VERSION:
        raise BadDatagram(f"unsupported dswim version {version!r}")
    cluster = _text(cluster, "cluster", bytes_max=CLUSTER_BYTES_MAX, empty_ok=True)
    boot = _int(boot, "boot")
    mseq = _int(mseq, "mseq")
    incarnation = _int(incarnation, "incarnation")
    if type(kind) is not int or kind not in KINDS:
        raise BadDatagram(f"unknown datagram kind {kind!r}")
    seq = _int(seq, "seq")
    sender = _text(sender, "sender")
    target = _text(target, "target", empty_ok=kind == ACK)
    if type(raw_updates) is not list:
        raise BadDatagram("updates must be an array")
    if len(raw_updates) > min(updates_max, UPDATES_WIRE_MAX):
        raise BadDatagram(f"{len(raw_updates)} updates exceed {min(updates_max, UPDATES_WIRE_MAX)}")
    updates = []
    for index, raw in enumerate(raw_updates):
        if type(raw) is not list or len(raw) != 3:
            raise BadDatagram(f"updates[{index}] must be an array of 3 items")
        name = _text(raw[0], f"updates[{index}].name")
        status = raw[1]
        if type(status) is not int or status not in STATUSES:
            raise BadDatagram(f"updates[{index}].status must be 0, 1 or 2")
        updates.append(Update(name, status, _int(raw[2], f"updates[{index}].incarnation")))
    return Datagram(kind, seq, sender, target, tuple(updates), cluster, boot, mseq, incarnation)


def decode_datagram(
    payload: bytes, *, bytes_max: int, keyring: Keyring | None = None, updates_max: int = UPDATES_WIRE_MAX
) -> Datagram:
    """Check the size, then the MAC, then parse one datagram; or raise BadDatagram (BadMac)."""
    return decode_body(open_datagram(payload, keyring, bytes_max=bytes_max), updates_max=updates_max)
