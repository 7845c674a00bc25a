"""The backup file's tail (`dynd.protocol.backup_file`): what is read back, and what is refused."""

from __future__ import annotations

import hashlib
import struct

import pytest

from dynd.protocol import codec
from dynd.protocol.backup_file import MAGIC, TAIL_BYTES, Manifest, NotABackup, decode_manifest, encode_tail, manifest_length

STORE = b"pretend this is an LMDB file" * 100
MANIFEST = Manifest(node="n1", cluster="c0ffee", taken_ms=1_700_000_000_000, size=len(STORE), sha256=hashlib.sha256(STORE).digest(), agent="test")


def read_back(data: bytes) -> Manifest:
    length = manifest_length(data[-TAIL_BYTES:], len(data))
    return decode_manifest(data[-TAIL_BYTES - length : -TAIL_BYTES], len(data))


def test_a_manifest_reads_back_as_written() -> None:
    assert read_back(STORE + encode_tail(MANIFEST)) == MANIFEST


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (STORE, "does not end like a dynd backup"),
        (STORE + encode_tail(MANIFEST)[:-1], "does not end like"),
        (STORE[1:] + encode_tail(MANIFEST), "truncated or damaged"),
        (STORE + b"x" + encode_tail(MANIFEST), "truncated or damaged"),
        (STORE + encode_tail(MANIFEST)[:-8] + b"DYNDBAK\x02", "format 2"),
        (STORE + struct.pack(">Q8s", 10**9, MAGIC), "does not fit"),
        (STORE + b"\xff\xff" + struct.pack(">Q8s", 2, MAGIC), "damaged"),
    ],
)
def test_anything_else_is_not_a_backup(data: bytes, reason: str) -> None:
    with pytest.raises(NotABackup, match=reason):
        read_back(data) if len(data) >= TAIL_BYTES else manifest_length(data, len(data))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"format": 9}, "format 9"),
        ({"sha256": b"short"}, "invalid size, time or digest"),
        ({"node": 7}, "'node'"),
        ({"size": -1}, "invalid size"),
    ],
)
def test_a_manifest_with_a_bad_field_is_refused(change: dict[str, object], reason: str) -> None:
    fields = {"format": 1, "node": "n1", "cluster": "c", "taken_ms": 1, "size": len(STORE), "sha256": b"\0" * 32, "agent": ""}
    body = codec.dumps({**fields, **change})
    data = STORE + body + struct.pack(">Q8s", len(body), MAGIC)
    with pytest.raises(NotABackup, match=reason):
        read_back(data)
