"""Framing under arbitrary chunking, and a codec round trip for every message type."""

from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynd.protocol import codec, messages
from dynd.protocol.errors import BadFrame, BadRequest, UnknownOp
from dynd.protocol.framing import FrameDecoder, FrameTooLarge, encode_frame

FRAME_MAX = 4096


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=20))) if len(data) > 1 else []
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return pieces


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=10), st.data())
def test_frames_survive_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder(FRAME_MAX)
    received: list[bytes] = []
    for piece in data.draw(chunked(stream)):
        received.extend(decoder.feed(piece))
    assert received == payloads
    assert not decoder.has_partial_frame


def test_oversize_prefix_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(FRAME_MAX)
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">I", FRAME_MAX + 1))
    assert decoder.buffered_bytes == 0
    with pytest.raises(FrameTooLarge):  # the stream cannot resynchronise: the decoder stays poisoned
        decoder.feed(encode_frame(b"\xa0"))


def test_a_prefix_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(FRAME_MAX)
    assert decoder.feed(encode_frame(b"x" * FRAME_MAX)) == [b"x" * FRAME_MAX]


def test_http_on_the_port_is_named() -> None:
    with pytest.raises(FrameTooLarge, match="not HTTP"):
        FrameDecoder(FRAME_MAX).feed(b"POST / HTTP/1.1\r\n")


text = st.text(max_size=20)
ids = st.integers(0, codec.INT_MAX)
blobs = st.binary(max_size=64)
small = st.none() | st.integers(1, 5)
clock_entries = st.lists(st.builds(messages.ClockEntry, text, ids), max_size=4)
meta_entries = st.none() | st.lists(st.builds(messages.MetaEntry, text, text), max_size=3)
sibling_views = st.lists(
    st.builds(messages.SiblingView, blobs, text, ids, clock_entries, st.none() | text, meta_entries, st.none() | ids), max_size=4
)

BUILDERS: dict[type, st.SearchStrategy[messages.Message]] = {
    messages.Hello: st.builds(messages.Hello, ids, text, st.none() | text, st.none() | text, st.none() | text, st.none() | blobs),
    messages.HelloOk: st.builds(
        messages.HelloOk, ids, text, st.none() | st.lists(text, max_size=3), st.none() | text, st.none() | blobs, st.none() | blobs
    ),
    messages.HelloProof: st.builds(messages.HelloProof, blobs),
    messages.HelloProofOk: st.builds(messages.HelloProofOk, st.lists(text, max_size=3)),
    messages.Ping: st.builds(messages.Ping, ids),
    messages.Pong: st.builds(messages.Pong, ids, text),
    messages.Get: st.builds(messages.Get, ids, blobs, small, st.none() | st.booleans(), st.none() | blobs, small),
    messages.GetOk: st.builds(messages.GetOk, ids, sibling_views, blobs),
    messages.Put: st.builds(
        messages.Put, ids, blobs, blobs, st.none() | blobs, small, st.none() | st.booleans(), st.none() | blobs, small, st.none() | text, meta_entries
    ),
    messages.PutOk: st.builds(messages.PutOk, ids, blobs),
    messages.Delete: st.builds(messages.Delete, ids, blobs, blobs, small, st.none() | st.booleans(), st.none() | blobs, small),
    messages.DeleteOk: st.builds(messages.DeleteOk, ids, blobs),
    messages.ErrorReply: st.builds(messages.ErrorReply, st.none() | ids, text, text, st.booleans()),
    messages.Replicate: st.builds(messages.Replicate, ids, blobs, blobs, st.none() | text),
    messages.ReplicateOk: st.builds(messages.ReplicateOk, ids),
    messages.Fetch: st.builds(messages.Fetch, ids, blobs, st.none() | text),
    messages.FetchOk: st.builds(messages.FetchOk, ids, st.none() | blobs),
    messages.Handoff: st.builds(messages.Handoff, ids, ids, st.lists(st.builds(messages.HandoffItem, blobs, blobs), max_size=3)),
    messages.HandoffOk: st.builds(messages.HandoffOk, ids),
    messages.Gossip: st.builds(messages.Gossip, ids, blobs),
    messages.GossipOk: st.builds(messages.GossipOk, ids, blobs),
    messages.ClusterJoin: st.builds(messages.ClusterJoin, ids, text),
    messages.ClusterLeave: st.builds(messages.ClusterLeave, ids, st.none() | text),
    messages.ClusterRemove: st.builds(messages.ClusterRemove, ids, text, st.none() | st.booleans()),
    messages.ClusterPlan: st.builds(messages.ClusterPlan, ids, text, st.none() | text, st.none() | text, st.none() | text),
    messages.ClusterPlanOk: st.builds(
        messages.ClusterPlanOk,
        ids, text, text, text, st.booleans(), text, ids, st.lists(text, max_size=4), st.lists(text, max_size=4),
        st.lists(st.builds(messages.PlanMember, text, text, text, ids, ids, ids, ids, ids, ids, ids, ids), max_size=3),
        st.lists(st.builds(messages.PartitionMove, ids, text, text, ids, ids), max_size=3),
        st.lists(ids, max_size=4), ids, ids, ids, st.lists(text, max_size=3), st.lists(text, max_size=3), st.lists(text, max_size=3),
    ),  # fmt: skip
    messages.PartitionSizes: st.builds(messages.PartitionSizes, ids),
    messages.PartitionSizesOk: st.builds(messages.PartitionSizesOk, ids, text, st.lists(ids, max_size=4), st.lists(ids, max_size=4)),
    messages.ClusterTransfers: st.builds(messages.ClusterTransfers, ids, st.none() | st.booleans()),
    messages.ClusterTransfersOk: st.builds(
        messages.ClusterTransfersOk,
        ids,
        text,
        st.lists(
            st.builds(
                messages.NodeTransfers, text, text, st.booleans(), ids, ids, ids, ids, ids, ids, ids, st.booleans(),
                st.lists(st.builds(messages.TransferView, text, ids, st.lists(text, max_size=3), text, ids, ids, ids, ids), max_size=2),
            ),  # fmt: skip
            max_size=3,
        ),
    ),
    messages.ClusterOk: st.builds(messages.ClusterOk, ids, text),
    messages.ClusterStatus: st.builds(messages.ClusterStatus, ids, st.none() | st.booleans()),
    messages.ClusterStatusOk: st.builds(
        messages.ClusterStatusOk,
        ids,
        text,
        st.lists(st.builds(messages.MemberView, text, text, text, ids, st.booleans(), ids, text, ids, ids), max_size=3),
        st.none() | st.lists(ids, max_size=4),
    ),
    messages.StatsGet: st.builds(messages.StatsGet, ids),
    messages.StatsOk: st.builds(
        messages.StatsOk,
        ids,
        text,
        ids,
        st.lists(st.builds(messages.LatencyView, text, text, ids, ids, ids, ids, ids), max_size=3),
        st.lists(st.builds(messages.Metric, text, text, ids), max_size=3),
        st.lists(st.builds(messages.Metric, text, text, ids), max_size=3),
        st.lists(ids, max_size=4),
    ),
    messages.InfoGet: st.builds(messages.InfoGet, ids),
    messages.InfoOk: st.builds(
        messages.InfoOk, ids, text, text, ids, ids, text, text, text, ids, ids, ids, ids, ids, ids, st.none() | ids
    ),
    messages.LogLevelSet: st.builds(messages.LogLevelSet, ids, text),
    messages.LogLevelOk: st.builds(messages.LogLevelOk, ids, text, text),
    messages.RingGet: st.builds(messages.RingGet, ids),
    messages.RingOk: st.builds(
        messages.RingOk, ids, blobs, ids, ids, ids, st.lists(text, max_size=4), st.lists(st.builds(messages.NodeAddress, text, text), max_size=3)
    ),
    messages.TreeRoots: st.builds(messages.TreeRoots, ids, st.lists(ids, max_size=4), ids, ids),
    messages.TreeRootsOk: st.builds(messages.TreeRootsOk, ids, st.lists(blobs, max_size=4)),
    messages.TreeRootsCompare: st.builds(messages.TreeRootsCompare, ids, text, st.lists(ids, max_size=4), st.lists(blobs, max_size=4), ids, ids),
    messages.TreeRootsCompareOk: st.builds(messages.TreeRootsCompareOk, ids, st.lists(ids, max_size=4), st.lists(blobs, max_size=4)),
    messages.TreeLevel: st.builds(messages.TreeLevel, ids, ids, ids, st.lists(ids, max_size=4), ids, ids),
    messages.TreeLevelOk: st.builds(messages.TreeLevelOk, ids, st.lists(blobs, max_size=4)),
    messages.SegmentKeys: st.builds(messages.SegmentKeys, ids, ids, st.lists(ids, max_size=4), ids, ids, ids, st.none() | blobs),
    messages.SegmentKeysOk: st.builds(
        messages.SegmentKeysOk, ids, st.lists(st.builds(messages.KeyHash, blobs, blobs), max_size=3), ids, st.none() | blobs
    ),
    messages.RepairStart: st.builds(messages.RepairStart, ids, st.none() | ids),
    messages.RepairStatus: st.builds(messages.RepairStatus, ids, ids),
    messages.RepairProgressOk: st.builds(
        messages.RepairProgressOk, ids, ids, ids, ids, ids, ids, ids, ids, ids, st.booleans(), st.lists(text, max_size=3)
    ),
    messages.BackupStart: st.builds(messages.BackupStart, ids),
    messages.BackupStartOk: st.builds(messages.BackupStartOk, ids, ids, text, text, ids, ids, ids, ids, ids),
    messages.BackupRead: st.builds(messages.BackupRead, ids, ids, ids),
    messages.BackupChunk: st.builds(messages.BackupChunk, ids, ids, ids, blobs, ids, st.booleans(), st.none() | ids, st.none() | blobs),
    messages.BackupEnd: st.builds(messages.BackupEnd, ids, ids),
    messages.BackupEndOk: st.builds(messages.BackupEndOk, ids, ids),
    messages.KeysList: st.builds(messages.KeysList, ids, blobs, st.none() | ids),
    messages.KeysListOk: st.builds(messages.KeysListOk, ids, st.lists(blobs, max_size=4), st.booleans()),
    messages.KeysScan: st.builds(messages.KeysScan, ids, blobs, ids),
    messages.KeysScanOk: st.builds(messages.KeysScanOk, ids, st.lists(blobs, max_size=4), st.lists(ids, max_size=4), st.booleans()),
}
every_message = st.one_of(*BUILDERS.values())


def test_the_round_trip_covers_every_message_type() -> None:
    assert set(BUILDERS) == set(messages.MESSAGE_TYPES)


@settings(max_examples=500)
@given(every_message)
def test_every_message_round_trips(message: messages.Message) -> None:
    assert codec.decode_message(codec.encode_message(message)) == message


@pytest.mark.parametrize(
    ("payload", "error", "fragment"),
    [
        (b"", BadFrame, "empty"),
        (cbor2.dumps([1, 2]), BadFrame, "map"),
        (cbor2.dumps({"op": "ping", "id": 1}) + b"\x00", BadFrame, "trailing"),
        (b"\x81" * 50 + b"\x01", BadFrame, "depth"),
        (b"\xbf\x62op\x64ping\xff", BadFrame, "indefinite"),
        (b"\xd9\x27\x0f\x01", BadFrame, "tag"),
        (cbor2.dumps({"op": "ping", "id": 1, "at": cbor2.CBORTag(1, 0)}), BadFrame, "tag"),
        (b"\xa2\x62op\x64ping\x62op\x64ping", BadFrame, "Duplicate"),
        (b"\xa1\x62op\x62\xff\xfe", BadFrame, "text"),
        (cbor2.dumps({"op": "frobnicate", "id": 7}), UnknownOp, "frobnicate"),
        (cbor2.dumps({"op": "get", "id": 7}), BadRequest, "missing"),
        (cbor2.dumps({"op": "get", "id": 7, "key": "text"}), BadRequest, "bytes"),
        (cbor2.dumps({"op": "get", "id": 7, "key": b"k", "extra": 1}), BadRequest, "unknown field"),
        (cbor2.dumps({"op": "get", "id": -1, "key": b"k"}), BadRequest, "integer"),
        (cbor2.dumps({"op": "get", "id": 2**64 - 1, "key": b"k"}), BadRequest, "integer"),
        (cbor2.dumps({"op": "get", "id": True, "key": b"k"}), BadRequest, "integer"),
        (cbor2.dumps({1: 2}), BadFrame, "key"),
    ],
)
def test_strict_decoding_refuses(payload: bytes, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as raised:
        codec.decode_message(payload)
    assert fragment.lower() in str(raised.value).lower()


def test_a_bad_request_keeps_its_id_for_the_reply() -> None:
    with pytest.raises(BadRequest) as raised:
        codec.decode_message(cbor2.dumps({"op": "put", "id": 41, "key": b"k"}))
    assert codec.request_id_of(raised.value) == 41


_REFUSED_ITEMS = [
    b"\x81" * 50 + b"\x01",  # too deep, stopped part way down
    b"\x82\x81\xd8\x1c\x01\x01",  # a shareable (tag 28) inside an array
    b"\x82\xd9\x01\x00\x81\x61a\x01",  # a string-reference namespace (tag 256)
    b"\x82\x01",  # an array cut short
    b"\xa2\x62op\x64ping\x62op\x64ping",
]


@settings(max_examples=200)
@given(st.lists(st.one_of(st.sampled_from(_REFUSED_ITEMS), every_message), max_size=12))
def test_a_refused_frame_leaves_nothing_behind_for_the_next(stream: list[bytes | messages.Message]) -> None:
    """Decoders are reused between frames (`codec.loads_strict`): whatever frames were refused
    before it, each good one decodes to exactly what was sent, its nesting allowed in full."""
    deepest = cbor2.dumps({"op": "ping", "id": 1, "x": [[[[[[[1]]]]]]]})  # as deep as CBOR_DEPTH_MAX allows
    for item in stream:
        if isinstance(item, bytes):
            with pytest.raises(BadFrame):
                codec.decode_message(item)
        else:
            assert codec.decode_message(codec.encode_message(item)) == item
        with pytest.raises(BadRequest):  # decoded in full (a depth left over would refuse it), then its field refused
            codec.decode_message(deepest)


def test_the_deepest_item_in_the_reuse_test_is_at_the_limit() -> None:
    with pytest.raises(BadFrame, match="depth"):
        codec.decode_message(cbor2.dumps({"op": "ping", "id": 1, "x": [[[[[[[[1]]]]]]]]}))
