"""When a supervisor restarts a worker that died, and when it gives up (`dynd.shell.supervisor`).

Rules, per worker, with the time passed in:
- each death is remembered for `window_ms`;
- the k-th death within the window is followed by a restart after backoff_ms * 2^(k-1), at most
  backoff_max_ms: a worker that crashes at once is not restarted in a tight loop, one that dies
  once in a while comes back after backoff_ms;
- a death that makes more than `restarts_max` within the window is one too many: give up (the
  supervisor then stops the host and exits non-zero, so the service manager can try the whole
  host again or an operator can look).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    backoff_ms: int
    backoff_max_ms: int
    restarts_max: int
    window_ms: int
    deaths: deque[int] = field(default_factory=deque)

    def after_death(self, now_ms: int) -> int | None:
        """The delay before restarting a worker that died at `now_ms`, or None: give up."""
        while self.deaths and self.deaths[0] <= now_ms - self.window_ms:
            self.deaths.popleft()
        self.deaths.append(now_ms)
        recent = len(self.deaths)
        if recent > self.restarts_max:
            return None
        return min(self.backoff_max_ms, self.backoff_ms << min(recent - 1, 32))

    @property
    def recent_deaths(self) -> int:
        return len(self.deaths)
