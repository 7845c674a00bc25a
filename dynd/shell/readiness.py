"""Waiting for many sockets to become readable, at one `epoll_ctl` per batch rather than one per wait.

trio arms every `wait_readable` with EPOLLONESHOT, so each wait costs an `epoll_ctl` system call:
under load that is one per request on a client connection, as many as the reads and the replies.
A `ReadinessHub` keeps the server's connections in an epoll set of its own, registered once and
edge-triggered, and one task waits (through trio) on that set's descriptor: each time it wakes it
takes every connection that received bytes and wakes their readers, however many there are.

Edge-triggered means a socket is reported when bytes arrive, not while they wait: a reader must
say so (`more_ready`) when its read may have left bytes behind (it filled its buffer), and a
report that comes while no reader waits is remembered until it does. Where `select.epoll` is
missing (not Linux), every wait is trio's own.
"""

from __future__ import annotations

import select
from typing import Any

import trio

# Reports taken from the set per wake; more simply wait for the next pass.
EVENTS_PER_POLL_MAX = 256
_HAS_EPOLL = hasattr(select, "epoll")
# What wakes a reader: bytes, the peer's end of stream, an error or a hang-up (a read then says which).
_READ_EVENTS = (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET) if _HAS_EPOLL else 0


class ReadinessHub:
    """Readable-waits on registered sockets, for one trio run. Start `run` (a task living as long
    as the sockets) before the first wait; `register` a socket before waiting on it and
    `unregister` it before it is closed."""

    def __init__(self) -> None:
        self._epoll: Any = select.epoll() if _HAS_EPOLL else None
        self._parked: dict[int, trio.lowlevel.Task] = {}
        self._ready: set[int] = set()  # reported while no reader waited
        self._registered: set[int] = set()

    def register(self, fd: int) -> None:
        if self._epoll is None:
            return
        self._epoll.register(fd, _READ_EVENTS)  # already readable: reported at once
        self._registered.add(fd)

    def unregister(self, fd: int) -> None:
        if fd not in self._registered:
            return
        self._registered.discard(fd)
        self._ready.discard(fd)
        self._parked.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:  # closed already: the kernel dropped it from the set
            pass

    def more_ready(self, fd: int) -> None:
        """The last read may have left bytes in `fd`: the next wait returns at once."""
        if fd in self._registered:
            self._ready.add(fd)

    async def wait_readable(self, fd: int) -> None:
        if fd not in self._registered:
            await trio.lowlevel.wait_readable(fd)
            return
        if fd in self._ready:
            self._ready.discard(fd)
            await trio.lowlevel.checkpoint()  # a wait is a checkpoint: cancellation, and others' turn
            return
        assert fd not in self._parked, "one reader per socket"
        self._parked[fd] = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._parked.pop(fd, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        """Wake the readers of every socket reported readable, until cancelled."""
        if self._epoll is None:
            await trio.sleep_forever()
        epoll = self._epoll
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _events in epoll.poll(0, EVENTS_PER_POLL_MAX):
                    task = self._parked.pop(fd, None)
                    if task is not None:
                        trio.lowlevel.reschedule(task)
                    elif fd in self._registered:
                        self._ready.add(fd)
        finally:
            epoll.close()
            # Readers still waiting go back to trio's own waits (their next pass).
            parked, self._parked = self._parked, {}
            self._registered.clear()
            for task in parked.values():
                trio.lowlevel.reschedule(task)
