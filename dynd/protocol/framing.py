"""Length-prefixed framing: a 4-byte big-endian length, then that many bytes of CBOR.

The decoder checks each length prefix against the limit as soon as its four bytes arrive, before
buffering the body, so a hostile prefix never makes us allocate. It is a pure state machine: feed it
whatever chunks the socket returns and take the complete frames out.
"""

from __future__ import annotations

import struct

from dynd.protocol.errors import BadFrame

LENGTH_PREFIX = struct.Struct(">I")
PREFIX_BYTES = LENGTH_PREFIX.size


class FrameTooLarge(BadFrame):
    """The length prefix exceeds the limit; the stream cannot be resynchronised, so close it."""

    code = "frame_too_large"


def encode_frame(payload: bytes) -> bytes:
    return LENGTH_PREFIX.pack(len(payload)) + payload


class FrameDecoder:
    """Collects chunks and yields complete frame payloads.

    A zero-length frame is returned as b"" (the codec rejects it, and the stream stays in sync).
    A prefix over `frame_bytes_max` raises FrameTooLarge and poisons the decoder.
    """

    def __init__(self, frame_bytes_max: int) -> None:
        self._frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        # Kept as text: a kept exception would hold its traceback, and through it this decoder
        # and the last chunk, in a cycle only the full collector frees (megabytes per connection).
        self._poisoned: str | None = None

    @property
    def has_partial_frame(self) -> bool:
        """True when some bytes of an unfinished frame are buffered (a per-frame deadline runs)."""
        return bool(self._buffer)

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def set_frame_bytes_max(self, frame_bytes_max: int) -> None:
        """Change the limit for frames whose prefix has not been read yet (a connection that has
        finished its hello may send larger frames than one that has not)."""
        self._frame_bytes_max = frame_bytes_max

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add a chunk; return every frame now complete, in order."""
        if self._poisoned is not None:
            raise FrameTooLarge(self._poisoned)
        self._buffer += chunk
        frames: list[bytes] = []
        start = 0
        buf = self._buffer
        end = len(buf)
        while end - start >= PREFIX_BYTES:
            (length,) = LENGTH_PREFIX.unpack_from(buf, start)
            if length > self._frame_bytes_max:
                self._poisoned = _describe_oversize(bytes(buf[start : start + PREFIX_BYTES]), length, self._frame_bytes_max)
                del buf[:]
                raise FrameTooLarge(self._poisoned)
            if end - start - PREFIX_BYTES < length:
                break
            body_start = start + PREFIX_BYTES
            frames.append(bytes(buf[body_start : body_start + length]))
            start = body_start + length
        if start:
            del buf[:start]
        return frames


def _describe_oversize(prefix: bytes, length: int, limit: int) -> str:
    if prefix in (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN"):
        return "this is a dynd port (length-prefixed CBOR frames), not HTTP"
    return f"frame of {length} bytes exceeds frame_bytes_max={limit}"
