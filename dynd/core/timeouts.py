"""Named timeouts that their owner ticks (a deadline is a value, not a field called `_next_x_ms`).

Every time in the core that says "do this later" is a `Timeout`: the gossip round, the handoff
pass, hint delivery, anti-entropy rounds, reaping, a request's deadline, a status gather. The
owner arms it with `start`, and its `tick` asks `fired(now_ms)`, which answers True exactly once
per arming, when the deadline has passed. A periodic timer rearms itself with `restart`.

All of them run on the node's monotonic clock (`now_ms`): a wall clock that steps an hour ahead
or back must neither fire them all at once nor hold them off for an hour. The wall clock
(`wall_ms`) is only for what nodes compare with each other: sibling timestamps, tombstone age,
hint age.
"""

from __future__ import annotations


class Timeout:
    """One named deadline on the monotonic clock. `after_ms` is its usual length."""

    __slots__ = ("name", "after_ms", "due_ms")

    def __init__(self, name: str, after_ms: int, *, start_ms: int | None = None) -> None:
        """`start_ms`: arm it at once, due `after_ms` later; else it waits for `start`."""
        if after_ms < 0:
            raise ValueError(f"timeout {name!r}: after_ms={after_ms} is negative")
        self.name = name
        self.after_ms = after_ms
        self.due_ms: int | None = None if start_ms is None else start_ms + after_ms

    @property
    def running(self) -> bool:
        return self.due_ms is not None

    def start(self, now_ms: int, after_ms: int | None = None) -> None:
        """Arm (or rearm) it: due `after_ms` (default: its usual length) from `now_ms`."""
        self.due_ms = now_ms + (self.after_ms if after_ms is None else after_ms)

    def stop(self) -> None:
        self.due_ms = None

    def due(self, now_ms: int) -> bool:
        """Whether it is armed and its deadline has passed (without consuming it)."""
        return self.due_ms is not None and now_ms >= self.due_ms

    def fired(self, now_ms: int) -> bool:
        """True once when the deadline has passed; the timeout is then disarmed."""
        if self.due_ms is None or now_ms < self.due_ms:
            return False
        self.due_ms = None
        return True

    def restart_if_fired(self, now_ms: int, after_ms: int | None = None) -> bool:
        """A periodic timer's tick: when it fired, rearm it from `now_ms` and say so."""
        if not self.fired(now_ms):
            return False
        self.start(now_ms, after_ms)
        return True

    def remaining_ms(self, now_ms: int) -> int | None:
        """How long until it fires (0 when overdue), or None when it is not armed."""
        return None if self.due_ms is None else max(0, self.due_ms - now_ms)

    def __repr__(self) -> str:
        return f"Timeout({self.name!r}, after_ms={self.after_ms}, due_ms={self.due_ms})"
