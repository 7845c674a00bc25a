"""A host running `dynd --workers K` for tests: one supervisor process, K members.

    host = WorkersHost(tmp_path / "h1", name="h1", workers=2).start()   # ready once every worker answers
    host.names, host.addresses                                          # h1-0, h1-1 at PORT, PORT+1
    host.worker_pids()                                                  # the workers' pids, read from /proc
    host.kill_everything()                                              # SIGKILL the supervisor and every descendant at once

The supervisor's process is `proc` (as a node's is in `DyndProcess`); stopping it (SIGTERM) stops
every worker. Readiness is each worker answering ping under its own name, polled under a deadline.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path

from tests.support.procs import BIND_ATTEMPTS, LOOPBACK, PROBE_INTERVAL_S, PROBE_TIMEOUT_S, START_TIMEOUT_S, DyndError, DyndProcess, _live, probe
from dynd.protocol.address import format_address

PORT_SEARCH_ATTEMPTS = 50


def ephemeral_low() -> int:
    """The lowest port the kernel hands out for outgoing connections and binds to port 0."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int, host: str = LOOPBACK) -> int:
    """A base port such that base .. base+count-1 were all free a moment ago (TCP and UDP).

    Drawn below the kernel's ephemeral range: a port there is taken only by an explicit bind,
    while one in the range can be taken at any moment by an outgoing connection, and a worker
    binds its port (base + i) a while after it was found free."""
    high = ephemeral_low() - count
    for _ in range(PORT_SEARCH_ATTEMPTS):
        base = random.randrange(max(1024, high - 12_000), high)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    held.append(sock)
                    sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


def descendants(pid: int) -> list[int]:
    """Every living descendant of `pid` (children, grandchildren...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child in children.get(parent, []):
            found.append(child)
            frontier.append(child)
    return found


class WorkersHost(DyndProcess):
    """`dynd --workers K`: the supervisor is this object's process; its workers are members
    NAME-0 .. NAME-(K-1) at PORT .. PORT+K-1."""

    def __init__(self, directory: Path | str | None = None, *, workers: int = 2, port: int | None = None, host: str = LOOPBACK, **kwargs: object) -> None:
        self.workers = workers
        fixed = port is not None
        super().__init__(directory, port=port if fixed else free_ports(workers, host), host=host, **kwargs)  # type: ignore[arg-type]
        self._port_fixed = fixed

    def argv(self) -> list[str]:
        return [*super().argv(), "--workers", str(self.workers)]

    @property
    def names(self) -> list[str]:
        return [f"{self.name}-{index}" for index in range(self.workers)]

    @property
    def addresses(self) -> list[str]:
        return [format_address(self.host, self.port + index) for index in range(self.workers)]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> WorkersHost:
        if self.running:
            raise DyndError(self._describe("already running"))
        may_move = self.starts == 0 and not self._port_fixed
        for attempt in range(BIND_ATTEMPTS):
            try:
                self._start_once(timeout_s)
                return self
            except DyndError as exc:  # ports taken after they were found free: fresh ones, first start only
                if not (may_move and "address in use" in str(exc)) or attempt == BIND_ATTEMPTS - 1:
                    raise
                self.stop()
                self.port = free_ports(self.workers, self.host)
        raise AssertionError("unreachable")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Poll until every worker answers ping under its own name."""
        deadline = time.monotonic() + timeout_s
        waiting = dict(zip(self.addresses, self.names))
        last_error: BaseException | None = None
        while waiting:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                _live.pop(self.proc.pid, None)
                raise DyndError(self._describe(f"supervisor exited with code {code} before every worker was ready"))
            for address, name in list(waiting.items()):
                try:
                    answered = probe(address, timeout_s=min(PROBE_TIMEOUT_S, max(0.05, deadline - time.monotonic())))
                except BaseException as exc:  # noqa: BLE001  (not ready yet: keep polling)
                    last_error = exc
                    continue
                if answered != name:
                    raise DyndError(self._describe(f"{address} answered as {answered!r}, not {name!r}"))
                del waiting[address]
            if waiting and "address in use" in self.stderr_text().rsplit("=== start ", 1)[-1]:  # this start's log
                raise DyndError(self._describe("a worker's port is taken"))
            if waiting and time.monotonic() >= deadline:
                raise DyndError(self._describe(f"{', '.join(waiting.values())} not ready within {timeout_s:g} s (last probe: {last_error!r})"))
            if waiting:
                time.sleep(PROBE_INTERVAL_S)  # poll interval; readiness itself is the probe above
        return self.name

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid of the worker processes running now (the supervisor's children)."""
        pids: dict[int, int] = {}
        for pid in descendants(self.pid):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--worker-index" in args:
                pids[int(args[args.index(b"--worker-index") + 1])] = pid
        return pids

    def kill_everything(self) -> list[int]:
        """SIGKILL the supervisor and every process under it, as a host losing power would; reap
        the supervisor and return the pids killed."""
        pids = [self.pid, *descendants(self.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.kill9()
        return pids
