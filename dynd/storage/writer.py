"""The LMDB writer process: applies batches of write ops sent over a pipe, one transaction each.

    python -m dynd.storage.writer LMDB_PATH MAP_BYTES

Why a process: py-lmdb releases the GIL around every put and around the commit's fsync, and a
busy event loop then holds it for up to the interpreter's switch interval before the writer thread
gets it back, so a writer thread in the node's own process spent most of each commit waiting for
the GIL (measured: 43 commits/s beside a busy loop, against about 1,000/s alone). A child process
has a GIL of its own.

Protocol on stdin/stdout, with the node's framing (4-byte length + CBOR): the parent sends
[op, ...] lists, one batch per frame; the child answers each with [] when the batch is durable, or
[code, message] when it failed and nothing of it was applied. It exits when stdin closes. The
parent holds the data directory's lock; this process opens the environment without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import cbor2

from dynd.protocol.errors import DynError, Internal
from dynd.protocol.framing import LENGTH_PREFIX, PREFIX_BYTES, encode_frame
from dynd.storage.base import DeleteHint, DeleteObject, PutHint, PutMeta, PutObject, WriteOp
from dynd.storage.lmdb_store import LmdbStore


_ENCODERS: dict[type, Callable[[Any], list[Any]]] = {
    PutObject: lambda op: ["po", op.partition, op.key, op.data],
    DeleteObject: lambda op: ["do", op.partition, op.key],
    PutHint: lambda op: ["ph", op.target, op.partition, op.key, op.data],
    DeleteHint: lambda op: ["dh", op.target, op.partition, op.key],
    PutMeta: lambda op: ["pm", op.name, op.data],
}
_DECODERS = {"po": PutObject, "do": DeleteObject, "ph": PutHint, "dh": DeleteHint, "pm": PutMeta}


def encode_batch(ops: list[WriteOp]) -> bytes:
    plain: list[list[Any]] = []
    for op in ops:
        encode = _ENCODERS.get(type(op))
        if encode is None:
            raise TypeError(f"unknown write op {op!r}")
        plain.append(encode(op))
    return encode_frame(cbor2.dumps(plain))


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
