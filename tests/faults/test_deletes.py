"""Deletes that stay deleted (issue 6): through a restart, hint delivery, anti-entropy and reaping.

A key is deleted while one replica is down; the tombstone reaches it through its hint when it is
back; once every primary holds the tombstone and the grace period has passed, every replica reaps
it; and neither restarts nor anti-entropy bring the value (or the tombstone) back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dynd.client import BlockingClient, open_client
from dynd.protocol import messages
from dynd.shell.peer_transport import PeerLink
from tests.support.cluster import FAST_TIMERS, poll_until, run_repair, running_cluster, settled
from tests.support.procs import DyndProcess

GRACE_MS = 3000
CONFIG = FAST_TIMERS + f"ae_interval_ms = 500\ntombstone_grace_ms = {GRACE_MS}\nreap_interval_ms = 100\n"


@pytest.fixture
def three(tmp_path: Path) -> Iterator[list[DyndProcess]]:
    with running_cluster(tmp_path, "t", 3, config_text=CONFIG) as nodes:
        yield nodes


def stored(node: DyndProcess, key: bytes) -> bytes | None:
    """The node's own record of `key`, read as a replica fetch (no read repair)."""

    async def ask() -> Any:
        async with open_client(node.address) as client:
            answer: list[Any] = []
            done = trio.Event()
            PeerLink(client, 5).call(lambda rid: messages.Fetch(id=rid, key=key), lambda r: (answer.append(r), done.set()))
            await done.wait()
            return answer[0]

    reply = trio.run(ask)
    assert isinstance(reply, messages.FetchOk), reply
    return reply.record  # type: ignore[no-any-return]


def test_a_deleted_key_stays_deleted_and_is_reaped_everywhere(three: list[DyndProcess]) -> None:
    a, _, c = three
    with BlockingClient(a.address) as client:
        context = client.put("doomed", b"value", w=3)
        c.stop()
        client.delete("doomed", context, w=2)  # c misses it: a keeps a hint for c
        deleted_at = time.monotonic()
    c.start()
    poll_until("the tombstone reaches the restarted replica", lambda: stored(c, b"doomed") is not None and not _live(c))
    with BlockingClient(c.address) as client:
        assert client.get("doomed", r=3).values == []
    # Past the grace period, with every primary holding the tombstone, each replica reaps it.
    poll_until("every replica reaps the tombstone", lambda: all(stored(n, b"doomed") is None for n in three), deadline_s=GRACE_MS / 1000 + 30)
    assert time.monotonic() - deleted_at >= GRACE_MS / 1000, "reaped before the grace period ended"
    for node in three:
        node.stop()
        node.start()
    poll_until("three members again", lambda: settled(three, {"t1", "t2", "t3"}))
    for node in three:  # an exchange now: were anything left to resurrect it, it would show
        poll_until(f"a complete exchange through {node.name}", lambda: run_repair(node).pairs_failed == 0)
    for node in three:
        with BlockingClient(node.address) as client:
            assert client.get("doomed", r=3).values == [], f"{node.name} brought the value back"
        assert stored(node, b"doomed") is None, f"{node.name} brought the tombstone back"


def _live(node: DyndProcess) -> bool:
    with BlockingClient(node.address) as client:
        return bool(client.get("doomed", r=1).values)
