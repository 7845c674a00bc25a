"""Losing a whole host of workers loses no acknowledged write (root only: network namespaces).

Three "hosts", each a network namespace with its own address and location (`host-1` .. `host-3`),
each running `dynd --workers 2`: six members of one cluster (N=3, R=2, W=2). Clients write keys
at W=2 from several tasks at once, recording each acknowledged write; part way through, every
process of host 1 (the one that created the cluster: its supervisor, both workers and their
writer processes) is killed at once with SIGKILL, as a host losing power would be. Then:

- the cluster keeps taking writes at W=2 (within a deadline, a bounded number of fresh keys);
- every write acknowledged before, during or after the kill reads back at R=2;
- every one of those keys has its N primaries on N distinct hosts, which is why it survived: claim
  keeps a key's replicas off a shared host whenever there are N hosts (DESIGN.md section 3).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from dynd.client import BlockingClient, key_placement, open_cluster_client
from dynd.protocol.address import parse_address
from dynd.protocol.errors import DynError
from tests.support import netns
from tests.support.cluster import FAST_TIMERS, poll_until, settled
from tests.support.workers import WorkersHost

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root and network namespaces")

HOSTS = 3
WORKERS = 2
PORT = 7400
WRITERS = 4  # client tasks writing at once, so writes are in flight when the host dies
WRITES_BEFORE_KILL = 120
WRITES_MAX = 600  # bound on the whole write phase
WRITES_AFTER_KILL = 60  # fresh writes the cluster must take once the host is gone
WRITE_DEADLINE_S = 90.0
READ_DEADLINE_S = 60.0
CLIENT_TIMEOUT_S = 2.0
SETTLE_S = 120.0
VICTIM = 1


@dataclass(frozen=True)
class Member:
    """One worker as `tests.support.cluster.settled` sees a node: an address to ask."""

    name: str
    address: str


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[netns.NetLab, list[WorkersHost]]]:
    lab = netns.NetLab()
    made: list[WorkersHost] = []
    try:
        for index in range(1, HOSTS + 1):
            ip = lab.add_node(index)
            creates = ("--replicas", "3", "--r", "2", "--w", "2", "--partitions", "64")
            args = ("--location", f"host-{index}", *(creates if index == 1 else ("--join", f"{lab.ip_of(1)}:{PORT}")))
            host = WorkersHost(
                tmp_path / f"h{index}",
                name=f"h{index}",
                workers=WORKERS,
                host=ip,
                port=PORT,
                wrapper=lab.wrapper(index),
                config_text=FAST_TIMERS + netns.TRUSTED_LAB,
                extra_args=args,
            )
            made.append(host.start(timeout_s=90))
        members = [Member(name, address) for host in made for name, address in zip(host.names, host.addresses)]
        poll_until("six members, settled, everywhere", lambda: settled(members, {m.name for m in members}), deadline_s=SETTLE_S)  # type: ignore[arg-type]
        yield lab, made
    finally:
        for host in made:
            host.stop()
            print(f"--- {host!r} stderr (last lines) ---\n{host.stderr_tail(60)}")
        lab.close()


def pids_in(lab: netns.NetLab, index: int) -> list[int]:
    listing = subprocess.run(["ip", "netns", "pids", lab.namespace(index)], capture_output=True, text=True, check=True)
    return [int(pid) for pid in listing.stdout.split()]


def kill_host(lab: netns.NetLab, host: WorkersHost, index: int) -> list[int]:
    """SIGKILL every process in the host's namespace at once (the supervisor, its workers, their
    writer processes), then reap the supervisor."""
    pids = pids_in(lab, index)
    assert host.pid in pids and len(pids) >= 1 + WORKERS, pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    host.kill9()
    return pids


async def write_through_the_kill(seeds: list[str], kill: object) -> tuple[dict[str, bytes], int]:
    """Write distinct keys from WRITERS tasks; after WRITES_BEFORE_KILL acknowledgements call
    `kill()`; stop once WRITES_AFTER_KILL writes have been acknowledged after it, or at the bound
    or the deadline. Returns every acknowledged write and how many came after the kill."""
    acked: dict[str, bytes] = {}
    after_kill = 0
    killed = trio.Event()
    enough = trio.Event()
    issued = 0

    async def writer(client: object) -> None:
        nonlocal issued, after_kill
        while not enough.is_set() and issued < WRITES_MAX:
            key, value = f"w-{issued}", f"value {issued}".encode()
            issued += 1
            started_after_kill = killed.is_set()
            try:
                await client.put(key, value, w=2)  # type: ignore[attr-defined]
            except DynError:
                continue  # not acknowledged: promises nothing
            acked[key] = value
            if started_after_kill:
                after_kill += 1
                if after_kill >= WRITES_AFTER_KILL:
                    enough.set()
            if len(acked) >= WRITES_BEFORE_KILL and not killed.is_set():
                killed.set()
                kill()  # type: ignore[operator]

    with trio.move_on_after(WRITE_DEADLINE_S):
        async with open_cluster_client(seeds, timeout_s=CLIENT_TIMEOUT_S) as client:
            async with trio.open_nursery() as nursery:
                for _ in range(WRITERS):
                    nursery.start_soon(writer, client)
    assert killed.is_set(), f"only {len(acked)} writes acknowledged before the deadline"
    return acked, after_kill


async def read_back(seeds: list[str], acked: dict[str, bytes]) -> dict[str, object]:
    """Each key's values at R=2 (a read that fails is retried until the deadline; a read that
    answers is final). Returns the keys whose answer is not their value."""
    wrong: dict[str, object] = {}
    pending = dict(acked)
    with trio.move_on_after(READ_DEADLINE_S):
        async with open_cluster_client(seeds, timeout_s=CLIENT_TIMEOUT_S) as client:
            while pending:
                for key, value in list(pending.items()):
                    try:
                        result = await client.get(key, r=2)
                    except DynError:
                        continue
                    del pending[key]
                    if result.values != [value]:
                        wrong[key] = result.values
                if pending:
                    await trio.sleep(0.2)  # the failed reads' next round; failure detection is under way
    wrong.update({key: "no R=2 answer before the deadline" for key in pending})
    return wrong


def test_killing_every_process_of_one_host_loses_no_acknowledged_write(hosts: tuple[netns.NetLab, list[WorkersHost]]) -> None:
    lab, made = hosts
    victim = made[VICTIM - 1]
    survivors = [address for host in made if host is not victim for address in host.addresses]
    killed: list[int] = []
    acked, after_kill = trio.run(
        write_through_the_kill, [address for host in made for address in host.addresses], lambda: killed.extend(kill_host(lab, victim, VICTIM))
    )
    assert killed and pids_in(lab, VICTIM) == [], "every process of the host is gone"
    assert after_kill >= WRITES_AFTER_KILL, f"the cluster took only {after_kill} writes at W=2 after losing a host"

    assert trio.run(read_back, survivors, acked) == {}

    with BlockingClient(survivors[0]) as client:
        ring = client.ring()
    host_of = {a.node: parse_address(a.address)[0] for a in ring.addresses}
    shared = {key: key_placement(ring, key).primaries for key in acked if len({host_of[n] for n in key_placement(ring, key).primaries}) < 3}
    assert shared == {}, f"{len(shared)} of {len(acked)} keys have two primaries on one host"
