"""Hinted handoff with real processes: writes keep succeeding at W=2 while a replica is down, and
reach it once it is back, so it alone can serve them afterwards (issue 5's acceptance)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynd.client import BlockingClient, key_placement
from dynd.protocol.errors import DynError
from tests.support.cluster import poll_until, running_cluster, status
from tests.support.procs import DyndProcess

KEYS = 100


def hints_drained(nodes: list[DyndProcess]) -> bool:
    return all(sum(m.hints_pending for m in status(node).members) == 0 for node in nodes)


def write_keys_with_one_node_down(nodes: list[DyndProcess], down: DyndProcess) -> dict[str, bytes]:
    down.kill9()
    coordinator = next(n for n in nodes if n is not down)
    written = {}
    with BlockingClient(coordinator.address) as client:
        for i in range(KEYS):
            key, value = f"hinted-{i}", f"value-{i}".encode()
            client.put(key, value, w=2)  # every one must succeed: raises otherwise
            written[key] = value
    return written


def check_readable_from_alone(survivor: DyndProcess, others: list[DyndProcess], written: dict[str, bytes]) -> None:
    with BlockingClient(survivor.address) as client:
        ring = client.ring()
    mine = {key: value for key, value in written.items() if survivor.name in key_placement(ring, key).primaries}
    assert mine, "the restarted node is a primary of some of the keys"
    for node in others:
        node.kill9()
    with BlockingClient(survivor.address) as client:
        missing = [key for key, value in mine.items() if client.get(key, r=1).values != [value]]
    assert missing == [], f"{len(missing)} of {len(mine)} keys did not reach {survivor.name}"


@pytest.mark.parametrize("size", [3, 5])
def test_a_node_that_was_down_gets_every_write_through_hints(tmp_path: Path, size: int) -> None:
    with running_cluster(tmp_path, "h", size) as started:
        check_hints_reach_a_node_that_was_down(started, size)


def check_hints_reach_a_node_that_was_down(started: list[DyndProcess], size: int) -> None:
    down = started[-1]
    written = write_keys_with_one_node_down(started, down)
    others = [n for n in started if n is not down]
    held = {node.name: sum(m.hints_pending for m in status(node).members if m.name == down.name) for node in others}
    assert sum(held.values()) > 0, f"hints are held for {down.name}: {held}"
    if size == 5:
        # Every write went through others[0]; a coordinator keeps a hint only when no fallback can,
        # so hints on any other node are fallbacks standing in for the dead primary.
        assert any(count for name, count in held.items() if name != others[0].name), f"fallbacks hold hints: {held}"
    else:
        assert held[others[0].name] > 0, "with no fallback in a 3-node cluster, the coordinator keeps the hints"
    down.restart()
    poll_until("hints delivered", lambda: hints_drained(started))
    check_readable_from_alone(down, others, written)


def test_a_write_that_cannot_reach_w_says_so(tmp_path: Path) -> None:
    with running_cluster(tmp_path, "h", 3) as started:
        started[1].kill9()
        started[2].kill9()
        with BlockingClient(started[0].address) as client:
            with pytest.raises(DynError, match="w=2 cannot be met"):
                client.put("lonely", b"v", w=2)
            client.put("lonely", b"v", w=1)  # one replica is enough when asked for
            with pytest.raises(DynError, match="pw=2 cannot be met"):
                client.put("lonely", b"v", w=1, pw=2)
