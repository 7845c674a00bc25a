"""The local replica: limits, and the pre-encoded read view agreeing with the plain encoding."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynd.core import replica as r
from dynd.core import versions, versions_codec
from dynd.core.limits import Limits
from dynd.protocol import codec, messages
from dynd.protocol.errors import BadRequest, KeyTooLarge, ValueTooLarge

LIMITS = Limits(key_bytes_max=16, value_bytes_max=64)


def node() -> r.LocalReplica:
    return r.LocalReplica("n1", LIMITS, partitions=256)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=8) | st.none(), st.booleans()), min_size=1, max_size=12))
def test_the_stitched_get_reply_equals_the_plain_one(writes: list[tuple[bytes | None, bool]]) -> None:
    replica = node()
    record: bytes | None = None
    context: bytes | None = None
    for step, (value, with_context) in enumerate(writes):
        plan = replica.write(b"key", value, context if with_context else None, record, now_ms=step)
        record, context = plan.record, plan.reply_context
    assert record is not None
    obj = r.decode_record(record)
    expected = messages.GetOk(
        id=5,
        siblings=r.sibling_views(obj),
        context=versions_codec.encode_context(obj.read_context(LIMITS.context_prune_threshold)),
    )
    view = replica.read(record)
    stitched = codec.encode_get_ok_preencoded(5, view.siblings_cbor, view.context_cbor)
    assert codec.decode_message(stitched) == expected
    assert view.siblings_cbor == cbor2.dumps(codec.to_plain(r.sibling_views(obj)))
    assert obj == versions_codec.decode_object(versions_codec.encode_object(obj)), "the record round-trips the object"


def test_a_missing_key_reads_as_no_siblings_and_an_empty_context() -> None:
    view = node().read(None)
    reply = codec.decode_message(codec.encode_get_ok_preencoded(1, view.siblings_cbor, view.context_cbor))
    assert isinstance(reply, messages.GetOk) and reply.siblings == []
    assert versions_codec.decode_context(reply.context, entries_max=8, actor_bytes_max=8) == versions.EMPTY_CLOCK


@pytest.mark.parametrize(
    ("key", "value", "context", "error"),
    [
        (b"", b"v", None, BadRequest),
        (b"k" * 17, b"v", None, KeyTooLarge),
        (b"k", b"v" * 65, None, ValueTooLarge),
        (b"k", b"v", b"\x01", BadRequest),
        (b"k", b"v", versions_codec.encode_context(versions.Clock({f"a{i}": (1, 0) for i in range(LIMITS.context_entries_max + 1)})), BadRequest),
    ],
)
def test_refused_writes_name_their_reason(key: bytes, value: bytes, context: bytes | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        node().write(key, value, context, None, now_ms=0)


def test_a_write_at_the_limits_is_accepted() -> None:
    plan = node().write(b"k" * 16, b"v" * 64, None, None, now_ms=0)
    assert [s.value for s in r.decode_record(plan.record).siblings] == [b"v" * 64]


def _values(record: bytes) -> list[bytes | None]:
    return sorted(s.value for s in r.decode_record(record).siblings if s.value is not None)


def test_a_remembered_object_is_not_used_once_the_stored_bytes_changed() -> None:
    replica, other = node(), r.LocalReplica("n2", LIMITS, partitions=256)
    first = replica.write(b"key", b"mine", None, None, now_ms=1)
    theirs = other.write(b"key", b"theirs", None, None, now_ms=2)
    merged = r.merge_records(first.record, theirs.record, LIMITS.context_prune_threshold)
    assert merged is not None
    # Our context covers only our own write: theirs, merged in since, must survive this one.
    second = replica.write(b"key", b"mine again", first.reply_context, merged, now_ms=3)
    assert _values(second.record) == [b"mine again", b"theirs"]
    # And with the bytes unchanged, the remembered object gives what decoding would.
    third = replica.write(b"key", b"last", second.reply_context, second.record, now_ms=4)
    fresh = node()
    fresh.actor = replica.actor
    assert third.record == fresh.write(b"key", b"last", second.reply_context, second.record, now_ms=4).record


def test_the_remembered_objects_and_contexts_stay_bounded() -> None:
    replica = r.LocalReplica("n1", Limits(key_bytes_max=16, value_bytes_max=64, versions_cache_entries=8), partitions=256)
    for index in range(100):
        replica.write(b"k%d" % index, b"v", None, None, now_ms=index)
    assert len(replica._objects) == 8 and len(replica._contexts) == 8


def test_large_objects_are_not_remembered() -> None:
    limits = Limits(key_bytes_max=16, value_bytes_max=64, versions_cache_record_bytes_max=100)
    replica = r.LocalReplica("n1", limits, partitions=256)
    small = replica.write(b"small", b"v", None, None, now_ms=1)
    large = replica.write(b"large", b"x" * 64, None, None, now_ms=1)
    assert len(small.record) <= 100 < len(large.record)
    assert [key for _, key in replica._objects] == [b"small"]


def test_a_deleted_key_says_when_its_newest_tombstone_was_written() -> None:
    replica = node()
    live = replica.write(b"k", b"v", None, None, now_ms=10)
    assert r.deleted_at_ms(live.record) is None
    other = r.LocalReplica("n2", LIMITS, partitions=256).write(b"k", None, None, None, now_ms=30)
    beside = r.merge_records(live.record, other.record, LIMITS.context_prune_threshold)
    assert beside is not None and r.deleted_at_ms(beside) is None, "a tombstone beside a live value is no deletion"
    deleted = replica.write(b"k", None, live.reply_context, beside, now_ms=20)
    assert [s.value for s in r.decode_record(deleted.record).siblings] == [None, None]
    assert r.deleted_at_ms(deleted.record) == 30, "the newest of the tombstones"
    seen_only = _record(versions.SiblingSet((), r.decode_record(deleted.record).seen))
    assert r.deleted_at_ms(seen_only) is None, "no sibling at all: nothing to age"


def test_the_canonical_parts_leave_out_only_the_pruned_context() -> None:
    record = node().write(b"k", b"v", None, None, now_ms=1).record
    head, tail = r.canonical_parts(record)
    view = r.record_view(record)
    assert bytes(head).endswith(view.siblings_cbor) and bytes(tail) == versions_codec.encode_object(r.decode_record(record), values=False)
    assert len(head) + len(tail) + 4 + len(view.context_cbor) == len(record)


# ---- records from peers ----


def _record(obj: versions.SiblingSet) -> bytes:
    return r.encode_record(obj, LIMITS.context_prune_threshold)


def _sib(actor: str, counter: int, value: bytes | None = b"v", context: versions.Clock = versions.EMPTY_CLOCK) -> versions.Sibling:
    return versions.Sibling(versions.Dot(actor, counter), context, value, 5)


def test_an_honest_record_from_a_peer_is_accepted_as_sent() -> None:
    first = node().write(b"k", b"one", None, None, now_ms=1)
    second = r.LocalReplica("n2", LIMITS, 256).write(b"k", b"two", first.reply_context, first.record, now_ms=2)
    assert r.decode_peer_record(second.record, LIMITS) == r.decode_record(second.record)
    assert r.merge_records(None, second.record, LIMITS.context_prune_threshold, limits=LIMITS) == second.record


def _with_versions(record: bytes, versions_cbor: bytes) -> bytes:
    _, object_start, _ = r._split_record(record)
    return record[:object_start] + versions_cbor


def _with_context(record: bytes, token: bytes) -> bytes:
    context_start, context_end, siblings_len = r._split_record(record)
    head = codec.cbor_head(codec.MAJOR_BYTES, len(token))
    length_at = context_start - 4
    return record[:length_at] + (len(head) + len(token)).to_bytes(4, "big") + head + token + record[context_end:]


def _malformed() -> list[tuple[str, bytes]]:
    obj = versions.SiblingSet((_sib("a", 1), _sib("b", 1)), versions.EMPTY_CLOCK)
    record = _record(obj)
    raw = cbor2.loads(versions_codec.encode_object(obj, values=False))
    unsorted = [raw[0], raw[1][::-1], raw[2], raw[3]]
    seen_covers = versions.SiblingSet((_sib("a", 1),), versions.Clock({"a": (1, 0)}))
    stray_context = versions.SiblingSet((_sib("a", 1, context=versions.Clock({"z": (3, 0)})),), versions.EMPTY_CLOCK)
    return [
        ("truncated", record[:-3]),
        ("not canonical", _with_versions(record, cbor2.dumps(unsorted))),
        ("seen supersedes a sibling", _record(seen_covers)),
        ("context beyond seen", _record(stray_context)),
        ("view out of step", _with_versions(record, versions_codec.encode_object(versions.SiblingSet((_sib("a", 1),)), values=False))),
        ("context covers too little", _with_context(record, versions_codec.encode_context(versions.Clock({"a": (1, 0)})))),
        ("context covers too much", _with_context(record, versions_codec.encode_context(versions.Clock({"a": (1, 0), "b": (2, 0)})))),
        ("garbage", b"\x01\x00\x00\x00\x01\x80\x00\x00\x00\x01\x40\xff"),
    ]


@pytest.mark.parametrize(("case", "record"), _malformed(), ids=[case for case, _ in _malformed()])
def test_a_malformed_record_from_a_peer_is_refused(case: str, record: bytes) -> None:
    with pytest.raises(BadRequest):
        r.decode_peer_record(record, LIMITS)
    with pytest.raises(BadRequest):
        r.merge_records(None, record, LIMITS.context_prune_threshold, limits=LIMITS)


def test_a_write_whose_actor_has_issued_its_last_counter_takes_a_new_epoch() -> None:
    exhausted = versions.Clock({"n1": (versions.EPOCH_COUNTER_MAX, 0)})
    record = _record(versions.SiblingSet((_sib("n2", 1, context=exhausted),), exhausted))
    with pytest.raises(versions.EpochExhausted):
        node().write(b"k", b"v", None, record, now_ms=1)  # no way to take a new epoch: refused
    renewed: list[str] = []
    replica = node()

    def renew() -> list[Any]:
        replica.actor = "n1.new"
        renewed.append(replica.actor)
        return ["persist n1.new"]

    replica.renew_actor = renew
    plan = replica.write(b"k", b"v", None, record, now_ms=1)
    assert renewed == ["n1.new"] and plan.meta_ops == ("persist n1.new",)
    assert versions.Dot("n1.new", 1) in {s.dot for s in r.decode_record(plan.record).siblings}


def test_a_client_context_with_an_implausible_counter_is_refused() -> None:
    # It would reach the other replicas in `seen`, and they refuse counters no actor issues.
    token = versions_codec.encode_context(versions.Clock({"someone": (versions.EPOCH_COUNTER_MAX + 1, 0)}))
    with pytest.raises(BadRequest, match="above"):
        node().write(b"k", b"v", token, None, now_ms=1)
