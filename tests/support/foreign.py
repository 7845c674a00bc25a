"""Servers that are not dynd, on 127.0.0.1, for the client's "is not a dynd node" errors.

`ForeignServer(reply, greet=...)` listens on a free port in a thread. Each connection gets `reply`:
at once when `greet` (as an SSH server sends its banner), else after the first bytes arrive (as an
HTTP server answers a request it cannot parse). Then the server closes the connection. `accepted`
counts connections, so a test can also check that a client never connected.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

HTTP_REPLY = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request"
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"
ACCEPT_POLL_S = 0.1
READ_TIMEOUT_S = 5.0


class ForeignServer:
    def __init__(self, reply: bytes, *, greet: bool = False) -> None:
        self.reply = reply
        self.greet = greet
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(ACCEPT_POLL_S)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="foreign-server", daemon=True)

    def __enter__(self) -> ForeignServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            with connection:
                connection.settimeout(READ_TIMEOUT_S)
                try:
                    if not self.greet:
                        connection.recv(4096)
                    connection.sendall(self.reply)
                except OSError:
                    pass
