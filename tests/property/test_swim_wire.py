"""The failure detector's datagrams: every datagram survives a round trip, a MAC binds every byte, and no bytes crash the decoder."""

from __future__ import annotations

from dataclasses import replace

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynd.protocol import swim_wire as wire
from dynd.protocol.auth import Keyring, datagram_mac
from dynd.protocol.swim_wire import KINDS, MAC_BYTES, PING, PING_REQ, STATUSES, BadDatagram, BadMac, Datagram, Update

BYTES_MAX = 1400
SECRET_A, SECRET_B = b"a" * 32, b"b" * 32
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=64)
unicode_names = st.text(min_size=1, max_size=16)  # any text the decoder must take: at most 64 bytes of UTF-8
updates = st.builds(Update, st.one_of(names, unicode_names), st.sampled_from(STATUSES), st.integers(0, wire.INT_MAX))


@st.composite
def datagrams(draw: st.DrawFn) -> Datagram:
    kind = draw(st.sampled_from(KINDS))
    target = draw(names) if kind in (PING, PING_REQ) else draw(st.one_of(st.just(""), names))  # an ack's: "" or a relayed ack's subject
    ints = st.integers(0, wire.INT_MAX)
    return Datagram(
        kind,
        draw(ints),
        draw(names),
        target,
        tuple(draw(st.lists(updates, max_size=8))),
        cluster=draw(st.one_of(st.just(""), st.text(alphabet="0123456789abcdef", min_size=1, max_size=64))),
        boot=draw(ints),
        mseq=draw(ints),
        incarnation=draw(ints),
    )


@settings(max_examples=500)
@given(datagrams())
def test_round_trip(datagram: Datagram) -> None:
    payload = wire.encode_datagram(datagram)
    assert wire.decode_datagram(payload, bytes_max=len(payload)) == datagram
    with pytest.raises(BadDatagram):
        wire.decode_datagram(payload, bytes_max=len(payload) - 1)


@settings(max_examples=300)
@given(datagrams(), st.data())
def test_the_mac_binds_the_secret_and_every_byte(datagram: Datagram, data: st.DataObject) -> None:
    sealed = wire.encode_datagram(datagram, SECRET_A)
    assert wire.decode_datagram(sealed, bytes_max=BYTES_MAX, keyring=Keyring((SECRET_A,))) == datagram
    assert wire.decode_datagram(sealed, bytes_max=BYTES_MAX, keyring=Keyring((SECRET_B, SECRET_A))) == datagram
    for keyring in (Keyring((SECRET_B,)), None):  # another secret, or none
        with pytest.raises(BadMac):
            wire.decode_datagram(sealed, bytes_max=BYTES_MAX, keyring=keyring)
    position = data.draw(st.integers(0, len(sealed) - 1))
    flipped = bytearray(sealed)
    flipped[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(BadMac):
        wire.decode_datagram(bytes(flipped), bytes_max=BYTES_MAX, keyring=Keyring((SECRET_A,)))


@settings(max_examples=500)
@given(datagrams(), st.lists(updates, max_size=40), st.integers(40, BYTES_MAX), st.integers(1, 20))
def test_pack_fits_the_budget_and_keeps_the_order(datagram: Datagram, candidates: list[Update], bytes_max: int, updates_max: int) -> None:
    bare_datagram = replace(datagram, updates=())
    packed = wire.pack(datagram, candidates, bytes_max=bytes_max, updates_max=updates_max, secret=SECRET_A)
    bare = len(wire.encode_datagram(bare_datagram))  # MAC included
    if packed is None:
        assert bare > bytes_max - 1
        return
    payload, chosen = packed
    assert len(payload) <= bytes_max and len(chosen) <= updates_max
    assert chosen == sorted(chosen)
    decoded = wire.decode_datagram(payload, bytes_max=bytes_max, keyring=Keyring((SECRET_A,)))
    assert decoded == replace(bare_datagram, updates=tuple(candidates[i] for i in chosen))
    # greedy: each candidate left out (before the count was reached) did not fit beside those before it
    reserved = bare - 1 + (1 if updates_max < 24 else 2)  # the bare datagram less its empty updates array
    for index in set(range(len(candidates))) - set(chosen):
        before = [j for j in chosen if j < index]
        if len(before) < updates_max:
            assert reserved + sum(wire.update_bytes(candidates[j]) for j in before) + wire.update_bytes(candidates[index]) > bytes_max


@settings(max_examples=1000)
@given(st.binary(max_size=BYTES_MAX + 10))
def test_random_bytes_never_crash(payload: bytes) -> None:
    try:
        wire.decode_datagram(payload, bytes_max=BYTES_MAX)
    except BadDatagram:
        pass


plain = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=70), st.binary(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=8), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=30,
)


@settings(max_examples=300)
@given(datagrams(), st.integers(0, wire.BODY_ITEMS - 1), plain)
def test_any_field_swapped_for_any_value_is_refused_or_still_valid(datagram: Datagram, position: int, value: object) -> None:
    """Even with a good MAC (a peer's bug, or a holder of the secret), the body is checked strictly."""
    item = cbor2.loads(wire.encode_body(datagram))
    item[position] = value
    try:
        body = cbor2.dumps(item)
    except (ValueError, TypeError, OverflowError):
        return
    try:
        decoded = wire.decode_datagram(seal(body), bytes_max=BYTES_MAX)
    except BadDatagram:
        return
    assert wire.encode_body(decoded) == body  # what gets through is a valid datagram


def seal(body: bytes) -> bytes:
    """`body` with a good no-secret MAC."""
    return body + datagram_mac(None, body)


def test_a_datagram_too_short_for_a_mac_is_refused_before_anything() -> None:
    for payload in (b"", b"\x00" * MAC_BYTES):
        with pytest.raises(BadDatagram):
            wire.decode_datagram(payload, bytes_max=BYTES_MAX)


V = wire.VERSION


@pytest.mark.parametrize(
    "body",
    [
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, 1, "a", "b", [["c", 0, 1]]], canonical=True)[:-1],
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, 1, "a", "b", []]) + b"\x00",  # trailing bytes
        cbor2.dumps(["dswim", 1, 0, 1, "a", "b", []]),  # version 1
        cbor2.dumps(["dswim", 1, "", 0, 1, 0, 0, 1, "a", "b", []]),  # another version
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 3, 1, "a", "b", []]),  # unknown kind
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, 1, "", "b", []]),  # empty sender
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, 1, "a", "", []]),  # a ping without a target
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, 1, "a" * 65, "b", []]),  # name too long
        cbor2.dumps(["dswim", V, "c" * 65, 0, 1, 0, 0, 1, "a", "b", []]),  # cluster id too long
        cbor2.dumps(["dswim", V, b"c", 0, 1, 0, 0, 1, "a", "b", []]),  # cluster id not text
        cbor2.dumps(["dswim", V, "", -1, 1, 0, 0, 1, "a", "b", []]),  # negative boot
        cbor2.dumps(["dswim", V, "", 0, 2**64, 0, 0, 1, "a", "b", []]),  # mseq out of range
        cbor2.dumps(["dswim", V, "", 0, 1, 1.0, 0, 1, "a", "b", []]),  # a float incarnation
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, -1, "a", "b", []]),  # negative seq
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, True, "a", "b", []]),  # bool is not an int
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, 1, "a", "b", [["c", 3, 1]]]),  # unknown status
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, 1, "a", "b", [["c", 0, 2**64]]]),  # incarnation out of range
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, 1, "a", "b", [["c", 0]]]),  # short update
        cbor2.dumps(["dswim", V, "", 0, 1, 0, 0, 1, "a", "b", [["c", 0, 1]] * 65]),  # too many updates
        cbor2.dumps({"tag": "dswim"}),  # not an array
        cbor2.dumps(cbor2.CBORTag(1, ["dswim", V, "", 0, 1, 0, 0, 1, "a", "b", []])),  # tagged
        bytes.fromhex("9f") + cbor2.dumps("dswim")[0:] + b"\xff",  # indefinite-length array
        b"\x8b" + b"\x81" * 5000,  # deeply nested
    ],
)
def test_malformed_datagrams_are_refused_even_with_a_good_mac(body: bytes) -> None:
    with pytest.raises(BadDatagram):
        wire.decode_datagram(seal(body), bytes_max=BYTES_MAX)
