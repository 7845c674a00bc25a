"""A node's dot sequence: the counters it puts in the dots of the writes it coordinates.

It only rises. The shell persists `high_water` with every commit that holds a dot, and a restarted
node resumes above it, so no dot is ever issued twice, even for a key whose history was pruned.
"""

from __future__ import annotations


class DotSequence:
    def __init__(self, high_water: int = 0) -> None:
        self._next = high_water + 1

    @property
    def next_counter(self) -> int:
        """The counter the next write will use (not consumed until `advance_past`)."""
        return self._next

    @property
    def high_water(self) -> int:
        """The highest counter issued so far."""
        return self._next - 1

    def advance_past(self, counter: int) -> None:
        if counter >= self._next:
            self._next = counter + 1
