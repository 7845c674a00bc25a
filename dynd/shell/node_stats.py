"""The node's StatsOk, asked in-process for the metrics endpoint."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from dynd.protocol.messages import ErrorReply, StatsGet, StatsOk

log = logging.getLogger("dynd.metrics")


class Handles(Protocol):
    def handle(self, message: Any, reply: Any) -> None: ...


class NodeStats:
    """Asks `node.handle(StatsGet)` and keeps the StatsOk. A node that answers otherwise (one
    that does not serve stats yet, or an error) gives None, logged once, so scrapes carry on."""

    def __init__(self, node: Handles) -> None:
        self._node = node
        self._complained = False

    def read(self) -> StatsOk | None:
        answers: list[Any] = []
        self._node.handle(StatsGet(id=0), answers.append)
        if answers and isinstance(answers[0], StatsOk):
            return answers[0]
        if not self._complained:
            self._complained = True
            what = f"{answers[0].code}: {answers[0].message}" if answers and isinstance(answers[0], ErrorReply) else "no answer"
            log.warning("the node gives no stats (%s); /metrics serves dynd_up and dynd_node_info only", what)
        return None
