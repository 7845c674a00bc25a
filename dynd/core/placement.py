"""Sloppy quorum placement: which nodes hold a request's copies when some primaries are down.

Rules (paper section 4.6, DESIGN.md section 4):
- Walk the preference list. Each healthy primary holds its own copy. Each primary that is down is
  replaced by the next healthy fallback, which holds the copy as a hint naming that primary.
- A primary no fallback can stand in for is `unplaced`: the coordinator keeps its hint, committed
  with the coordinator's own copy before the write is acknowledged.
- The coordinator itself always holds a copy (it versions the write); it is never a target.
- `replicas` is how many distinct replicas the key has in this ring, healthy or not: R and W count
  among those, so nodes being down never lowers a quorum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dynd.core.preflist import PreferenceList


@dataclass(frozen=True, slots=True)
class Placement:
    targets: tuple[tuple[str, str | None], ...]  # (node, hint): hint names the primary it stands in for
    spares: tuple[str, ...]  # healthy fallbacks not used yet, in preference order
    unplaced: tuple[str, ...]  # primaries that are down with no fallback to stand in
    replicas: int
    coordinator_is_primary: bool


def place(preference: PreferenceList, me: str, usable: Callable[[str], bool]) -> Placement:
    spares = [node for node in preference.fallbacks if node != me and usable(node)]
    targets: list[tuple[str, str | None]] = []
    unplaced: list[str] = []
    for primary in preference.primaries:
        if primary == me:
            continue
        if usable(primary):
            targets.append((primary, None))
        elif spares:
            targets.append((spares.pop(0), primary))
        else:
            unplaced.append(primary)
    return Placement(
        targets=tuple(targets),
        spares=tuple(spares),
        unplaced=tuple(unplaced),
        replicas=len(preference.primaries),
        coordinator_is_primary=me in preference.primaries,
    )


def coordinators(preference: PreferenceList, me: str, usable: Callable[[str], bool]) -> list[str]:
    """The nodes that may coordinate the key, best first: its first N healthy nodes."""
    healthy = [node for node in preference.all if node == me or usable(node)]
    return healthy[: len(preference.primaries)]
