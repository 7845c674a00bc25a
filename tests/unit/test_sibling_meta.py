"""Sibling metadata in the value model: objects without it keep the bytes they always had (so old
records read as before and Merkle leaves stay comparable), metadata round-trips through records,
views, peer checks and merges, and malformed or oversize metadata is refused."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynd.core import replica as r
from dynd.core import versions, versions_codec
from dynd.core.limits import Limits
from dynd.protocol import codec, messages
from dynd.protocol.errors import BadRequest

LIMITS = Limits(meta_bytes_max=256)


def node(actor: str = "n1") -> r.LocalReplica:
    return r.LocalReplica(actor, LIMITS, partitions=64)


def test_an_object_without_metadata_encodes_as_before_metadata_existed() -> None:
    plan = node().write(b"k", b"v", None, None, now_ms=7)
    obj = r.decode_record(plan.record)
    # The format of every object stored before this change: six items a sibling, written by cbor2.
    old_shape = [1, [["n1", 1, 7, b"v", [], []]], [], []]
    assert versions_codec.encode_object(obj) == cbor2.dumps(old_shape)
    assert versions_codec.decode_object(cbor2.dumps(old_shape)) == obj
    assert all(s.meta is None for s in obj.siblings)


def test_a_record_of_an_older_node_merges_with_one_that_has_metadata() -> None:
    old = node("old").write(b"k", b"from old", None, None, now_ms=1)  # written as an old node writes
    new = node("new").write(b"k", b"from new", None, None, now_ms=2, meta=versions.make_meta("text/plain", [("a", "b")]))
    merged = r.merge_records(old.record, new.record, LIMITS.context_prune_threshold, limits=LIMITS, actor="third")
    assert merged is not None
    by_value = {s.value: s.meta for s in r.decode_record(merged).siblings}
    assert by_value == {b"from old": None, b"from new": versions.SiblingMeta("text/plain", (("a", "b"),))}


metas = st.none() | st.builds(
    versions.make_meta,
    st.none() | st.sampled_from(["text/plain", "application/json; charset=utf-8", "image/png"]),
    st.lists(st.tuples(st.sampled_from(["color", "Size", "x-y", "n!"]), st.text("abc XYZ-=;", max_size=8).map(str.strip)), max_size=3, unique_by=lambda p: p[0].lower()),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=8) | st.none(), st.booleans(), metas), min_size=1, max_size=10))
def test_metadata_round_trips_through_records_views_and_peer_checks(writes: list[tuple[bytes | None, bool, versions.SiblingMeta | None]]) -> None:
    replica = node()
    record: bytes | None = None
    context: bytes | None = None
    for step, (value, with_context, meta) in enumerate(writes):
        plan = replica.write(b"key", value, context if with_context else None, record, now_ms=step, meta=meta)
        record, context = plan.record, plan.reply_context
    assert record is not None
    obj = r.decode_record(record)
    assert all(s.meta is None for s in obj.siblings if s.value is None)
    # the stitched view equals the plain encoding of the views, and decodes to the metadata
    view = r.record_view(record)
    assert cbor2.dumps(codec.to_plain(r.sibling_views(obj))) == view.siblings_cbor
    reply = codec.decode_message(codec.encode_get_ok_preencoded(1, view.siblings_cbor, view.context_cbor))
    assert isinstance(reply, messages.GetOk)
    for shown, sibling in zip(reply.siblings, obj.live):
        meta = sibling.meta
        assert shown.content_type == (meta.content_type if meta else None)
        assert [(e.name, e.value) for e in shown.usermeta or ()] == (list(meta.user) if meta else [])
        assert shown.modified_ms == (sibling.timestamp_ms if meta else None)
    # another node takes the record as sent, and a merge keeps every sibling's metadata
    assert r.decode_peer_record(record, LIMITS, actor="n2") == obj
    assert versions.merge(obj, r.decode_peer_record(record, LIMITS, actor="n2")) == obj


def sibling_with(meta_item: object, value: bytes | None = b"v") -> bytes:
    """A record from a peer whose one sibling carries `meta_item` as its seventh item."""
    good = node().write(b"k", b"v", None, None, now_ms=3, meta=versions.make_meta("text/plain"))
    context_start, context_end, siblings_len = r._split_record(good.record)
    versions_part = cbor2.loads(good.record[context_end:])
    versions_part[1][0][6] = meta_item
    if value is None:
        versions_part[1][0][3] = None
    return good.record[:context_end] + cbor2.dumps(versions_part)


@pytest.mark.parametrize(
    ("meta_item", "message"),
    [
        (["text/plain", [["B", "x"]]], "canonical"),  # a name not lowercase
        (["text/plain", [["b", "x"], ["a", "y"]]], "canonical"),  # not sorted
        ([None, []], "canonical"),  # empty: no metadata has six items
        (["text/plain", [["a", "x" * 300]]], "meta_bytes_max"),
        (["text/plain"], "metadata must be"),
        (["text/plain", [["a", 5]]], "metadata entry"),
    ],
)
def test_a_peer_record_with_malformed_metadata_is_refused(meta_item: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        r.decode_peer_record(sibling_with(meta_item), LIMITS, actor="n2", as_sent=False)


def test_a_write_with_metadata_over_the_limit_changes_nothing() -> None:
    replica = node()
    with pytest.raises(BadRequest, match="meta_bytes_max"):
        replica.write(b"k", b"v", None, None, now_ms=1, meta=versions.make_meta("t", [("big", "x" * 300)]))


@pytest.mark.parametrize(
    ("content_type", "user", "message"),
    [
        (None, [("a", "1"), ("A", "2")], "unique"),
        (None, [("bad name", "1")], "HTTP token"),
        (None, [("", "1")], "HTTP token"),
        (None, [("a", "line\r\nbreak")], "printable ASCII"),
        (None, [("a", " padded")], "printable ASCII"),
        ("text/plain\n", [], "content type"),
    ],
)
def test_make_meta_refuses_what_cannot_be_a_header(content_type: str | None, user: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        versions.make_meta(content_type, user)


def test_make_meta_is_canonical() -> None:
    assert versions.make_meta(None, []) is None and versions.make_meta("", []) is None
    assert versions.make_meta("t", [("B", "2"), ("a", "1")]) == versions.SiblingMeta("t", (("a", "1"), ("b", "2")))
