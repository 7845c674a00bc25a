"""A quorum tally: pending until enough replicas said yes (won) or too many said no (lost)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Vote(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


@dataclass
class Tally:
    """`needed` yes votes out of `voters`; each voter votes once. With fewer voters than needed
    (replicas down before the request began) the tally is lost from the start."""

    needed: int
    voters: int
    yes: int = 0
    no: int = 0

    def __post_init__(self) -> None:
        if self.needed <= 0 or self.voters < 0:
            raise ValueError(f"need needed > 0 and voters >= 0, got {self.needed} of {self.voters}")

    def record(self, ok: bool) -> Vote:
        if ok:
            self.yes += 1
        else:
            self.no += 1
        return self.result

    @property
    def result(self) -> Vote:
        if self.yes >= self.needed:
            return Vote.WON
        if self.voters - self.no < self.needed:
            return Vote.LOST
        return Vote.PENDING

    @property
    def answered(self) -> int:
        return self.yes + self.no
