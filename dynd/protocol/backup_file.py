"""The backup file `dynctl backup` writes and `dynd restore` reads. Pure: bytes in, bytes out.

    [ the store: LMDB's compacting copy of one snapshot, `size` bytes ]
    [ manifest: one CBOR map, `manifest_bytes` long                   ]
    [ manifest_bytes: 8 bytes, big-endian                             ]
    [ MAGIC: 8 bytes                                                  ]

The manifest comes last because the node knows the copy's length and digest only once it has
made it, and a client that streams the copy to disk should not need a second pass. The store comes
first, at offset 0, so the file is itself an LMDB data file (`mdb_stat -n FILE` reads it; the
bytes after the last page are ignored).

Manifest fields: `format` (FORMAT), `node` and `cluster` (who it is a copy of), `taken_ms` (the
node's wall clock at the snapshot, for the restore's age check against the tombstone grace),
`size`, `sha256` (32 bytes, over the store part, computed by the node and checked by the client and
again by the restore), `agent` (what wrote the file).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dynd.protocol import codec
from dynd.protocol.errors import BadFrame

MAGIC = b"DYNDBAK\x01"
FORMAT = 1
TAIL_BYTES = 16  # the manifest's length and the magic
MANIFEST_BYTES_MAX = 4096
SHA256_BYTES = 32
_TAIL = struct.Struct(">Q8s")


class NotABackup(ValueError):
    """The bytes are not a backup file of this format, or it is damaged (the message says which)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    node: str
    cluster: str
    taken_ms: int
    size: int
    sha256: bytes
    agent: str = ""
    format: int = FORMAT


def encode_tail(manifest: Manifest) -> bytes:
    """What follows the store in the file: the manifest, its length and the magic."""
    body = codec.dumps(
        {
            "format": manifest.format,
            "node": manifest.node,
            "cluster": manifest.cluster,
            "taken_ms": manifest.taken_ms,
            "size": manifest.size,
            "sha256": manifest.sha256,
            "agent": manifest.agent,
        }
    )
    return body + _TAIL.pack(len(body), MAGIC)


def manifest_length(tail: bytes, file_bytes: int) -> int:
    """From the file's last TAIL_BYTES: the manifest's length, checked against the file's size."""
    if file_bytes < TAIL_BYTES or len(tail) != TAIL_BYTES:
        raise NotABackup("it is too short to be a dynd backup")
    length, magic = _TAIL.unpack(tail)
    if magic != MAGIC:
        if magic[:7] == MAGIC[:7]:
            raise NotABackup(f"it is a dynd backup of format {magic[7]}, which this version does not read")
        raise NotABackup("it does not end like a dynd backup (made by `dynctl backup`)")
    if not 0 < length <= MANIFEST_BYTES_MAX or length > file_bytes - TAIL_BYTES:
        raise NotABackup(f"its manifest length ({length} bytes) does not fit the file")
    return int(length)


def decode_manifest(body: bytes, file_bytes: int) -> Manifest:
    """The manifest, checked: every field of the right type, and the store's size matching the file."""
    try:
        item = codec.loads_strict(body)
    except BadFrame as exc:
        raise NotABackup(f"its manifest is damaged: {exc.message}") from None
    if not isinstance(item, dict):
        raise NotABackup("its manifest is not a map")
    expected = {"format": int, "node": str, "cluster": str, "taken_ms": int, "size": int, "sha256": bytes, "agent": str}
    for name, kind in expected.items():
        if type(item.get(name)) is not kind:
            raise NotABackup(f"its manifest lacks a valid {name!r}")
    if item["format"] != FORMAT:
        raise NotABackup(f"it is a dynd backup of format {item['format']}, which this version does not read")
    if len(item["sha256"]) != SHA256_BYTES or item["size"] < 0 or item["taken_ms"] < 0:
        raise NotABackup("its manifest has an invalid size, time or digest")
    if item["size"] + len(body) + TAIL_BYTES != file_bytes:
        raise NotABackup(f"it holds {file_bytes} bytes where its manifest says {item['size'] + len(body) + TAIL_BYTES}: truncated or damaged")
    return Manifest(
        node=item["node"], cluster=item["cluster"], taken_ms=item["taken_ms"], size=item["size"], sha256=item["sha256"], agent=item["agent"]
    )
