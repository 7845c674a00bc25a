"""Telling whoever started dynd that it serves: systemd's notify protocol, or a worker's supervisor.

- A node on its own (one worker) sends `READY=1` to `$NOTIFY_SOCKET` once its port serves, and
  `STOPPING=1` when it starts to stop, so the unit can be `Type=notify`: `systemctl start` returns
  once the node serves, and units ordered after dynd start only then. Without `$NOTIFY_SOCKET`
  (not under systemd) nothing is sent.
- A worker (`dynd --workers K`, `dynd.shell.supervisor`) holds one end of a socket pair whose other
  end its supervisor keeps: it writes one byte there once it serves (the supervisor tells systemd
  `READY=1` once every worker has), and it stops as on SIGTERM when that end closes, which happens
  when the supervisor dies however it dies (even SIGKILL), so no worker outlives its host's
  supervisor and holds ports a restarted supervisor needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Mapping

import trio

log = logging.getLogger("dynd.readiness")

READY_BYTE = b"R"


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (lines such as "READY=1") to the service manager; True if it was sent. Without
    $NOTIFY_SOCKET, or when the socket cannot be reached, nothing happens (a failure is logged:
    readiness is a courtesy to the manager, not a reason to stop serving)."""
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket name
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", environ["NOTIFY_SOCKET"], exc)
        return False
    return True


class SupervisorLink:
    """A worker's end of the socket pair its supervisor made (`--supervisor-fd`)."""

    def __init__(self, fd: int) -> None:
        try:
            self.sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ValueError(f"--supervisor-fd {fd} is not an open socket: {exc.strerror or exc}") from None
        self.sock.set_inheritable(False)

    def ready(self) -> None:
        """Tell the supervisor this worker serves."""
        with contextlib.suppress(OSError):  # a supervisor already gone: the watch below stops us
            self.sock.send(READY_BYTE)

    async def stop_when_gone(self) -> None:
        """Return never while the supervisor lives; when its end closes, deliver SIGTERM to this
        process, so the node stops exactly as when asked to."""
        fd = self.sock.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = self.sock.recv(64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                break
        log.warning("the supervisor is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)
        await trio.sleep_forever()


def announce_ready(link: SupervisorLink | None, status: str) -> None:
    if link is not None:
        link.ready()
    else:
        sd_notify(f"READY=1\nSTATUS={status}")


def announce_stopping(link: SupervisorLink | None) -> None:
    if link is None:
        sd_notify("STOPPING=1")
