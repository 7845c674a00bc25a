"""Gathers: ask several members one request each, then act once on what came back. Pure.

An admin request that needs every member's word (a membership plan needs each member's partition
sizes, a transfer listing each member's handoff) starts a gather: one request to each member,
by name through the Network port. `done(answers)` runs once, with every member's reply or error
(a `DynError`) by name, as soon as all have answered, or at the deadline (`timeout_ms` after the
start, run by `tick`) with those that have: a dead member holds the operator back no longer.
Replies that come after `done` are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dynd.core.ports import Builder, Network
from dynd.core.timeouts import Timeout

Answers = dict[str, Any]  # member -> its reply message, or the DynError that ended the wait


class Gathers:
    def __init__(self, network: Network, *, now_ms: Callable[[], int], timeout_ms: int) -> None:
        self.network = network
        self.now_ms = now_ms
        self.timeout_ms = timeout_ms
        self._open: list[tuple[Timeout, Callable[[], None]]] = []  # (deadline, finish now)

    def start(self, members: Sequence[str], build: Builder, done: Callable[[Answers], None]) -> None:
        """Send `build(request_id)` to each of `members`; `done(answers)` once, as above."""
        answers: Answers = {}
        waiting = set(members)
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                done(dict(answers))

        if not waiting:
            finish()
            return

        def answered(member: str) -> Callable[[Any], None]:
            def record(answer: Any) -> None:
                if finished:
                    return
                answers[member] = answer
                waiting.discard(member)
                if not waiting:
                    finish()

            return record

        self._open.append((Timeout("gather", self.timeout_ms, start_ms=self.now_ms()), finish))
        for member in sorted(waiting):
            self.network.send(member, build, answered(member))

    @property
    def open(self) -> int:
        """Gathers whose deadline has not come yet (some may have finished already)."""
        return len(self._open)

    def tick(self) -> None:
        if not self._open:
            return
        now = self.now_ms()
        due = [finish for deadline, finish in self._open if deadline.fired(now)]
        if due:
            self._open = [(deadline, finish) for deadline, finish in self._open if deadline.running]
            for finish in due:
                finish()
