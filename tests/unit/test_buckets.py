"""Bucket keys (`dynd.protocol.buckets`): one stored key per (bucket, key), and no plain key, nor
any key a client may send, that lands on a bucket's object by accident."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynd.core.limits import Limits
from dynd.core.replica import LocalReplica
from dynd.protocol.buckets import bucket_key, bucket_prefix, check_key_shape, split_key
from dynd.protocol.errors import BadRequest

buckets = st.binary(min_size=1, max_size=255)
keys = st.binary(min_size=1, max_size=64)


@given(buckets, keys)
def test_a_bucket_key_splits_back_into_its_bucket_and_key(bucket: bytes, key: bytes) -> None:
    stored = bucket_key(bucket, key)
    assert split_key(stored) == (bucket, key)
    assert stored.startswith(bucket_prefix(bucket))
    check_key_shape(stored)


@given(buckets, keys, buckets, keys)
def test_different_pairs_never_share_a_stored_key(b1: bytes, k1: bytes, b2: bytes, k2: bytes) -> None:
    assert (bucket_key(b1, k1) == bucket_key(b2, k2)) == ((b1, k1) == (b2, k2))


@given(st.binary(min_size=1, max_size=300))
def test_every_key_a_client_may_send_is_plain_or_exactly_one_bucket_key(stored: bytes) -> None:
    try:
        pair = split_key(stored)
    except BadRequest:
        with pytest.raises(BadRequest):
            check_key_shape(stored)
        return
    if pair is None:
        assert stored[0] != 0  # a plain key never starts with the mark
    else:
        assert bucket_key(*pair) == stored


def test_one_buckets_keys_are_contiguous_in_byte_order() -> None:
    stored = sorted([bucket_key(b"a", b"1"), bucket_key(b"ab", b"0"), bucket_key(b"a", b"\xff"), b"plain", bucket_key(b"b", b"0")])
    prefix = bucket_prefix(b"a")
    run = "".join("1" if key.startswith(prefix) else "0" for key in stored)
    assert run.strip("0") == "11"  # both of its keys, side by side
    assert stored[-1] == b"plain"  # plain keys sort after every bucket key


@pytest.mark.parametrize("forged", [b"\x00", b"\x00\x00k", b"\x00\x05abc", b"\x00\x03abc"])
def test_the_node_refuses_a_key_that_starts_with_the_mark_but_is_no_bucket_key(forged: bytes) -> None:
    with pytest.raises(BadRequest, match="bucket key"):
        LocalReplica("n1", Limits(), 64).check_key(forged)


@pytest.mark.parametrize(("bucket", "key"), [(b"", b"k"), (b"b" * 256, b"k"), (b"b", b"")])
def test_bucket_key_refuses_empty_or_long_names(bucket: bytes, key: bytes) -> None:
    with pytest.raises(BadRequest):
        bucket_key(bucket, key)
