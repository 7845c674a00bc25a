"""Whether a member is worth sending to: the failure detector's verdict plus local evidence.

Rules:
- A member the detector (SWIM, `dynd.core.swim`) says is dead is not usable; alive and suspect
  members are (a suspect may only be slow, and a request to it fails over to a spare fallback).
- Local evidence: a request that found the member unreachable (no connection) makes it unusable
  for `down_for_ms` (a named timeout per member, on the monotonic clock), or until a request to
  it succeeds. The detector hears of every failure (it probes the member at once) and every
  success (an answer counts as a probe answered).
- This node is always usable to itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dynd.core.timeouts import Timeout


class Detector(Protocol):
    def status(self, name: str) -> str: ...

    def incarnation(self, name: str) -> int: ...

    def usable(self, name: str) -> bool: ...

    def report_failure(self, name: str) -> None: ...

    def report_success(self, name: str) -> None: ...


class Health:
    def __init__(self, name: str, *, now_ms: Callable[[], int], down_for_ms: int, detector: Detector | None = None) -> None:
        self.name = name
        self.now_ms = now_ms
        self.down_for_ms = down_for_ms
        self.detector = detector
        self._down: dict[str, Timeout] = {}  # members local evidence holds unusable, until it fires

    def usable(self, name: str) -> bool:
        if name == self.name:
            return True
        if self.detector is not None and not self.detector.usable(name):
            return False
        down = self._down.get(name)
        if down is None:
            return True
        if down.fired(self.now_ms()):
            del self._down[name]
            return True
        return False

    def report_failure(self, name: str) -> None:
        self._down[name] = Timeout(f"{name} down", self.down_for_ms, start_ms=self.now_ms())
        if self.detector is not None:
            self.detector.report_failure(name)

    def report_timeout(self, name: str) -> None:
        """A request got no answer in time: slow or gone; only the detector can tell which."""
        if self.detector is not None:
            self.detector.report_failure(name)

    def report_success(self, name: str) -> None:
        self._down.pop(name, None)
        if self.detector is not None:
            self.detector.report_success(name)

    def status(self, name: str) -> str:
        """alive, suspect or dead, as the detector says (local evidence alone: alive or dead)."""
        if self.detector is not None and name != self.name:
            return self.detector.status(name)
        return "alive" if self.usable(name) else "dead"

    def incarnation(self, name: str) -> int:
        return self.detector.incarnation(name) if self.detector is not None else 0
