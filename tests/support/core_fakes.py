"""Fakes of a node's ports and views for tests that drive a core component synchronously."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynd.core.membership import JOINED
from dynd.core.preflist import PreferenceList


class FakeNetwork:
    """Records every request (built with id 1) and its reply callback, for the test to answer."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Any]] = []

    def send(self, node: str, build: Any, on_reply: Any) -> None:
        self.sent.append((node, build(1), on_reply))


@dataclass
class Member:
    name: str
    status: str = JOINED


class Membership:
    def __init__(self, names: tuple[str, ...]) -> None:
        self.members = [Member(name) for name in names]

    def active(self) -> list[Member]:
        return self.members


class Cluster:
    """Every partition's primaries are a, b and c; `members` may name more."""

    PRIMARIES = ("a", "b", "c")

    def __init__(self, members: tuple[str, ...] = PRIMARIES) -> None:
        self.membership = Membership(members)
        self.removed = False  # this node is a member

    def preference_list(self, partition: int) -> PreferenceList:
        return PreferenceList(partition, self.PRIMARIES, ())


class Healthy:
    def usable(self, name: str) -> bool:
        return True
