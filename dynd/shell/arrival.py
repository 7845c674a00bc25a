"""When a connection's bytes reached this host, read from the kernel (Linux `SO_TIMESTAMPNS`).

A request waits in its socket until the event loop gets to it; under load that wait is most of
what a client sees beyond the node's own work, and a latency timed from the moment the node
decodes the request leaves it out. So each read also asks the kernel when the data arrived, and
latencies start there: what `dynctl stats` reports is then close to what clients measure.

The kernel stamps with the wall clock; the wait is wall-now minus the stamp, taken at the read,
so a wall clock stepped between the two gives a nonsense wait, which is dropped (counted as 0).
Where the option is missing the wait is always 0 and latencies start at the read.
"""

from __future__ import annotations

import socket
import struct
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # the Linux value; the socket module lacks the name
_STAMP = struct.Struct("@qq")  # struct timespec: seconds, nanoseconds
ANCILLARY_BYTES = socket.CMSG_SPACE(_STAMP.size)
WAIT_S_MAX = 10.0  # a longer "wait" is a wall-clock step, not a queue


class ArrivalReader:
    """Reads a connection's socket (non-blocking) and says how long the bytes had waited there.
    It borrows the file descriptor: `release` hands it back without closing it."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._stamped = True
        except OSError:  # not Linux: reads work, waits read 0
            self._stamped = False

    def read(self, max_bytes: int) -> tuple[bytes, float]:
        """The bytes there are (b"" at end of stream) and the seconds the newest of them waited.
        Raises BlockingIOError when there are none yet, like `os.read`."""
        if not self._stamped:
            return self._sock.recv(max_bytes), 0.0
        data, ancillary, _flags, _address = self._sock.recvmsg(max_bytes, ANCILLARY_BYTES)
        for level, kind, stamp in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= _STAMP.size:
                seconds, nanoseconds = _STAMP.unpack_from(stamp)
                waited_s = time.time() - seconds - nanoseconds / 1e9
                return data, waited_s if 0.0 <= waited_s <= WAIT_S_MAX else 0.0
        return data, 0.0

    def release(self) -> None:
        self._sock.detach()
