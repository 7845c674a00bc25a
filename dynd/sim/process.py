"""One life of a simulated node process, between a start and a crash.

Everything that runs "inside" a node (a delivered request, a reply or timeout callback, a disk
completion, a tick) goes through `Process.run`:
- a crashed process runs nothing, ever again: callbacks of a dead incarnation are dropped;
- a paused process (SIGSTOP) queues what arrives and runs it, in order, on `resume`;
- an exception escaping the node is a bug: it is reported to the world (with the seed), not raised.
"""

from __future__ import annotations

import traceback
from collections import deque
from collections.abc import Callable


class Process:
    def __init__(self, host: str, incarnation: int, on_exception: Callable[[str, str], None]) -> None:
        self.host = host
        self.incarnation = incarnation
        self.alive = True
        self.paused = False
        self.pauses = 0
        self._queued: deque[Callable[[], None]] = deque()
        self._on_exception = on_exception

    def __repr__(self) -> str:
        return f"{self.host}#{self.incarnation}"

    def run(self, fn: Callable[[], None]) -> None:
        if not self.alive:
            return
        if self.paused:
            self._queued.append(fn)
            return
        self._call(fn)

    def _call(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # a bug in the node (or the simulator): report it, keep simulating
            self._on_exception(repr(self), traceback.format_exc())

    def pause(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume(self) -> None:
        self.paused = False
        while self._queued and self.alive and not self.paused:
            self._call(self._queued.popleft())

    def crash(self) -> None:
        self.alive = False
        self._queued.clear()
