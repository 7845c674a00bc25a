"""Buckets: where the HTTP door's (bucket, key) pairs live in dynd's one flat key space.

dynd stores opaque byte keys; Riak's HTTP interface names objects by bucket and key. One
reserved first byte keeps the two apart:

    stored key = 0x00 | len(bucket) (one byte, 1..255) | bucket | key (one byte or more)

- Every key whose first byte is not 0x00 is a plain key, as CBOR clients and `dynctl` have always
  written (a UTF-8 key from the command line cannot start with NUL).
- A key that starts with 0x00 must be exactly the encoding of one (bucket, key) pair: the node
  refuses any other such key from any client (`check_key_shape`, run wherever the node checks a
  key's size), so no CBOR key can land on a bucket's object by accident, and each bucket's objects
  are reached by exactly one stored key. A CBOR client reaches bucket B's key K by sending
  `bucket_key(B, K)` (`dynctl --bucket B`).
- Only the default bucket type exists: `/types/default/buckets/B/...` and `/buckets/B/...` name
  the same object.
- The stored key counts against `key_bytes_max`, so a bucket key holds len(bucket) + 2 bytes less.
- Within a partition keys are kept in byte order, so every bucket key sorts before every plain
  key, and one bucket's keys are contiguous: a listing stops at the first key past its bucket.
"""

from __future__ import annotations

from dynd.protocol.errors import BadRequest

BUCKET_MARK = 0x00
BUCKET_BYTES_MAX = 255


def bucket_key(bucket: bytes, key: bytes) -> bytes:
    """The stored key of `key` in `bucket` (both non-empty; the bucket at most 255 bytes)."""
    if not bucket or len(bucket) > BUCKET_BYTES_MAX:
        raise BadRequest(f"a bucket name must be 1..{BUCKET_BYTES_MAX} bytes")
    if not key:
        raise BadRequest("the key is empty")
    return bytes((BUCKET_MARK, len(bucket))) + bucket + key


def bucket_prefix(bucket: bytes) -> bytes:
    """What every stored key of `bucket` starts with."""
    if not bucket or len(bucket) > BUCKET_BYTES_MAX:
        raise BadRequest(f"a bucket name must be 1..{BUCKET_BYTES_MAX} bytes")
    return bytes((BUCKET_MARK, len(bucket))) + bucket


def split_key(stored: bytes) -> tuple[bytes, bytes] | None:
    """(bucket, key) of a bucket key, None for a plain key; BadRequest for a key that starts with
    the bucket mark but is no bucket key."""
    if not stored or stored[0] != BUCKET_MARK:
        return None
    if len(stored) < 2 or stored[1] == 0 or len(stored) < 3 + stored[1]:
        raise BadRequest(
            "a key starting with byte 0x00 is a bucket key (0x00, bucket length 1..255, bucket, key of 1 byte or more): "
            "this one is not well formed"
        )
    end = 2 + stored[1]
    return stored[2:end], stored[end:]


def check_key_shape(stored: bytes) -> None:
    """Refuse a key that starts with the bucket mark and is not a bucket key (see the module)."""
    if stored and stored[0] == BUCKET_MARK:
        split_key(stored)
