"""The failure detector's datagrams: every datagram survives a round trip, and no bytes crash the decoder."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynd.protocol import swim_wire as wire
from dynd.protocol.swim_wire import ACK, KINDS, STATUSES, BadDatagram, Datagram, Update

BYTES_MAX = 1400
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=64)
unicode_names = st.text(min_size=1, max_size=16)  # any text the decoder must take: at most 64 bytes of UTF-8
updates = st.builds(Update, st.one_of(names, unicode_names), st.sampled_from(STATUSES), st.integers(0, wire.INT_MAX))


@st.composite
def datagrams(draw: st.DrawFn) -> Datagram:
    kind = draw(st.sampled_from(KINDS))
    target = "" if kind == ACK else draw(names)
    return Datagram(kind, draw(st.integers(0, wire.INT_MAX)), draw(names), target, tuple(draw(st.lists(updates, max_size=8))))


@settings(max_examples=500)
@given(datagrams())
def test_round_trip(datagram: Datagram) -> None:
    payload = wire.encode_datagram(datagram)
    assert wire.decode_datagram(payload, bytes_max=len(payload)) == datagram
    with pytest.raises(BadDatagram):
        wire.decode_datagram(payload, bytes_max=len(payload) - 1)


@settings(max_examples=500)
@given(datagrams(), st.lists(updates, max_size=40), st.integers(40, BYTES_MAX), st.integers(1, 20))
def test_pack_fits_the_budget_and_keeps_the_order(datagram: Datagram, candidates: list[Update], bytes_max: int, updates_max: int) -> None:
    packed = wire.pack(datagram.kind, datagram.seq, datagram.sender, datagram.target, candidates, bytes_max=bytes_max, updates_max=updates_max)
    bare = len(wire.encode_datagram(Datagram(datagram.kind, datagram.seq, datagram.sender, datagram.target)))
    if packed is None:
        assert bare > bytes_max - 1
        return
    payload, chosen = packed
    assert len(payload) <= bytes_max and len(chosen) <= updates_max
    assert chosen == sorted(chosen)
    decoded = wire.decode_datagram(payload, bytes_max=bytes_max)
    assert decoded.updates == tuple(candidates[i] for i in chosen)
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
@given(datagrams(), st.integers(0, 6), plain)
def test_any_field_swapped_for_any_value_is_refused_or_still_valid(datagram: Datagram, position: int, value: object) -> None:
    item = cbor2.loads(wire.encode_datagram(datagram))
    item[position] = value
    try:
        payload = cbor2.dumps(item)
    except (ValueError, TypeError, OverflowError):
        return
    try:
        decoded = wire.decode_datagram(payload, bytes_max=BYTES_MAX)
    except BadDatagram:
        return
    assert wire.encode_datagram(decoded) == payload  # what gets through is a valid datagram


@pytest.mark.parametrize(
    "payload",
    [
        cbor2.dumps(["dswim", 1, 0, 1, "a", "b", [["c", 0, 1]]], canonical=True)[:-1],
        cbor2.dumps(["dswim", 1, 0, 1, "a", "b", []]) + b"\x00",  # trailing bytes
        cbor2.dumps(["dswim", 2, 0, 1, "a", "b", []]),  # another version
        cbor2.dumps(["dswim", 1, 3, 1, "a", "b", []]),  # unknown kind
        cbor2.dumps(["dswim", 1, 1, 1, "a", "b", []]),  # an ack with a target
        cbor2.dumps(["dswim", 1, 0, 1, "", "b", []]),  # empty sender
        cbor2.dumps(["dswim", 1, 0, 1, "a" * 65, "b", []]),  # name too long
        cbor2.dumps(["dswim", 1, 0, -1, "a", "b", []]),  # negative seq
        cbor2.dumps(["dswim", 1, 0, True, "a", "b", []]),  # bool is not an int
        cbor2.dumps(["dswim", 1, 0, 1, "a", "b", [["c", 3, 1]]]),  # unknown status
        cbor2.dumps(["dswim", 1, 0, 1, "a", "b", [["c", 0, 2**64]]]),  # incarnation out of range
        cbor2.dumps(["dswim", 1, 0, 1, "a", "b", [["c", 0]]]),  # short update
        cbor2.dumps(["dswim", 1, 0, 1, "a", "b", [["c", 0, 1]] * 65]),  # too many updates
        cbor2.dumps({"tag": "dswim"}),  # not an array
        cbor2.dumps(cbor2.CBORTag(1, ["dswim", 1, 0, 1, "a", "b", []])),  # tagged
        bytes.fromhex("9f") + cbor2.dumps("dswim")[0:] + b"\xff",  # indefinite-length array
        b"\x87" + b"\x81" * 5000,  # deeply nested
    ],
)
def test_malformed_datagrams_are_refused(payload: bytes) -> None:
    with pytest.raises(BadDatagram):
        wire.decode_datagram(payload, bytes_max=BYTES_MAX)
