"""The LMDB writer process: applies batches of write ops sent over a pipe, one transaction each.

    python -m dynd.storage.writer LMDB_PATH MAP_BYTES

Why a process: py-lmdb releases the GIL around every put and around the commit's fsync, and a
busy event loop then holds it for up to the interpreter's switch interval before the writer thread
gets it back, so a writer thread in the node's own process spent most of each commit waiting for
the GIL (measured: 43 commits/s beside a busy loop, against about 1,000/s alone). A child process
has a GIL of its own. The node can commit on a thread instead (`[node] commit_engine = "thread"`,
`dynd.shell.commit_engines.CommitThreadEngine`): on a loaded 2-core machine, with group commit
taking everything queued, the thread inserted at 0.97-1.01x the process's rate with 0-5% more
server CPU per insert (three interleaved runs), so the process stays the default.

Protocol on stdin/stdout, with the node's framing (4-byte length + CBOR): the parent sends
[op, ...] lists, one batch per frame; the child answers each with [] when the batch is durable, or
[code, message] when it failed and nothing of it was applied. It exits when stdin closes. The
parent holds the data directory's lock; this process opens the environment without it.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

import cbor2

from dynd.protocol.codec import MAJOR_ARRAY, MAJOR_BYTES, cbor_head, cbor_text, cbor_uint
from dynd.protocol.errors import DynError, Internal
from dynd.protocol.framing import LENGTH_PREFIX, PREFIX_BYTES, encode_frame
from dynd.storage.base import DeleteHint, DeleteObject, PutHint, PutMeta, PutObject, WriteOp
from dynd.storage.lmdb_store import LmdbStore

# Each op is a CBOR array [kind, fields...]: kind "po" [partition, key, data], "do" [partition,
# key], "ph" [target, partition, key, data], "dh" [target, partition, key], "pm" [name, data].
_PO = cbor_head(MAJOR_ARRAY, 4) + cbor_text("po")
_DO = cbor_head(MAJOR_ARRAY, 3) + cbor_text("do")
_PH = cbor_head(MAJOR_ARRAY, 5) + cbor_text("ph")
_DH = cbor_head(MAJOR_ARRAY, 4) + cbor_text("dh")
_PM = cbor_head(MAJOR_ARRAY, 3) + cbor_text("pm")
_DECODERS = {"po": PutObject, "do": DeleteObject, "ph": PutHint, "dh": DeleteHint, "pm": PutMeta}


def encode_batch(ops: list[WriteOp]) -> bytes:
    """The framed batch, built from CBOR pieces (the bytes cbor2 writes for the same lists) and
    joined once with its length prefix: each value is copied once on its way to the pipe, where
    cbor2 and then the framing copied it twice."""
    out: list[bytes] = [b"", cbor_head(MAJOR_ARRAY, len(ops))]
    for op in ops:
        kind = type(op)
        if kind is PutObject:
            out += (_PO, cbor_uint(op.partition), cbor_head(MAJOR_BYTES, len(op.key)), op.key, cbor_head(MAJOR_BYTES, len(op.data)), op.data)  # type: ignore[union-attr]
        elif kind is DeleteObject:
            out += (_DO, cbor_uint(op.partition), cbor_head(MAJOR_BYTES, len(op.key)), op.key)  # type: ignore[union-attr]
        elif kind is PutHint:
            out += (_PH, cbor_text(op.target), cbor_uint(op.partition), cbor_head(MAJOR_BYTES, len(op.key)), op.key)  # type: ignore[union-attr]
            out += (cbor_head(MAJOR_BYTES, len(op.data)), op.data)  # type: ignore[union-attr]
        elif kind is DeleteHint:
            out += (_DH, cbor_text(op.target), cbor_uint(op.partition), cbor_head(MAJOR_BYTES, len(op.key)), op.key)  # type: ignore[union-attr]
        elif kind is PutMeta:
            out += (_PM, cbor_text(op.name), cbor_head(MAJOR_BYTES, len(op.data)), op.data)  # type: ignore[union-attr]
        else:
            raise TypeError(f"unknown write op {op!r}")
    out[0] = LENGTH_PREFIX.pack(sum(map(len, out)))
    return b"".join(out)


def decode_batch(payload: bytes) -> list[WriteOp]:
    return [_DECODERS[kind](*fields) for kind, *fields in cbor2.loads(payload)]


def encode_outcome(error: DynError | None) -> bytes:
    return encode_frame(cbor2.dumps([] if error is None else [error.code, error.message]))


def decode_outcome(payload: bytes) -> tuple[str, str] | None:
    outcome = cbor2.loads(payload)
    return None if not outcome else (outcome[0], outcome[1])


def _read_exactly(stream: BinaryIO, count: int) -> bytes | None:
    data = stream.read(count)
    if len(data) < count:
        return None
    return data


def serve(store: LmdbStore, requests: BinaryIO, replies: BinaryIO) -> None:
    while True:
        prefix = _read_exactly(requests, PREFIX_BYTES)
        if prefix is None:
            return
        (length,) = LENGTH_PREFIX.unpack(prefix)
        payload = _read_exactly(requests, length)
        if payload is None:
            return
        error: DynError | None = None
        try:
            store.write(decode_batch(payload))
        except DynError as exc:
            error = exc
        except Exception as exc:
            error = Internal(f"writer failed: {exc!r}")
        replies.write(encode_outcome(error))
        replies.flush()


def main(argv: list[str] | None = None) -> None:
    path, map_bytes = (argv if argv is not None else sys.argv[1:])[:2]
    store = LmdbStore(path, map_bytes=int(map_bytes), lock_directory=False)
    try:
        serve(store, sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:
        pass  # the node went away; everything acknowledged was committed before its reply
    finally:
        store.close()


if __name__ == "__main__":
    main()
