"""Writes keep succeeding at W=2 while any one node of five is killed or paused (issue 5).

A routing client writes fresh keys one after another; partway through, one node is killed (and
stays down) or paused with SIGSTOP for longer than the client's timeout (then resumed). Every
write must be acknowledged (the client moves on to the next primary when one does not answer),
and afterwards every acknowledged key reads back.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dynd.client import open_cluster_client
from tests.support.cluster import running_cluster
from tests.support.procs import DyndProcess

WRITES = 300
FAULT_AFTER = 50
PAUSE_S = 3.0
CLIENT_TIMEOUT_S = 1.5
RUN_DEADLINE_S = 120.0


@pytest.fixture
def five(tmp_path: Path) -> Iterator[list[DyndProcess]]:
    with running_cluster(tmp_path, "a", 5) as nodes:
        yield nodes


async def write_through_fault(seeds: list[str], fault: str, victim: DyndProcess) -> dict[str, bytes]:
    acked: dict[str, bytes] = {}
    with trio.fail_after(RUN_DEADLINE_S):
        async with open_cluster_client(seeds, timeout_s=CLIENT_TIMEOUT_S) as client:
            for i in range(WRITES):
                if i == FAULT_AFTER:
                    if fault == "kill":
                        victim.kill9()
                    else:
                        victim.signal(signal.SIGSTOP)
                        resume_at = trio.current_time() + PAUSE_S
                if fault == "pause" and i > FAULT_AFTER and trio.current_time() >= resume_at and victim.running:
                    victim.signal(signal.SIGCONT)
                    fault = "resumed"
                key, value = f"avail-{i}", f"v{i}".encode()
                await client.put(key, value, w=2)  # raises if the write is not acknowledged
                acked[key] = value
            if fault == "pause":  # the writes outran the pause: resume it now
                victim.signal(signal.SIGCONT)
    return acked


async def read_back(seeds: list[str], acked: dict[str, bytes]) -> list[str]:
    async with open_cluster_client(seeds, timeout_s=CLIENT_TIMEOUT_S * 4) as client:
        return [key for key, value in acked.items() if value not in (await client.get(key)).values]


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_writes_keep_succeeding_with_one_of_five_nodes_down(five: list[DyndProcess], fault: str) -> None:
    victim = five[2]
    seeds = [n.address for n in five if n is not victim]
    acked = trio.run(write_through_fault, seeds, fault, victim)
    assert len(acked) == WRITES
    assert trio.run(read_back, seeds, acked) == []
