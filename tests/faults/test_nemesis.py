"""The nemesis run (issue 6): set-add clients against five real nodes while faults come and go.

Five nodes, N=3 R=2 W=2. Clients each loop: read a key's siblings and context, merge them by
union, add a unique element, write it back with the context. Every few seconds the nemesis
starts one fault and heals it before the next: a minority partition and an isolated node (when
network namespaces are available, as root), kill -9 and restart, and a pause (SIGSTOP/SIGCONT).
Then everything heals, and the run waits until every replica of every key holds the same
versions (read without read repair: replica fetches). Checks: every acknowledged element is in
the final read, nothing appears that no client attempted, all replicas match.

Short in `make test` (one seed, DYND_NEMESIS_SECONDS=20 by default); the long run is
`DYND_NEMESIS_SEEDS=10 DYND_NEMESIS_SECONDS=60 pytest tests/faults/test_nemesis.py -s`.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from dynd.client import Client, key_placement, open_client, open_cluster_client
from dynd.core.replica import decode_record
from dynd.protocol import messages
from dynd.protocol.errors import DynError, Timeout
from dynd.shell.peer_transport import PeerLink
from tests.support import netns
from tests.support.cluster import FAST_TIMERS, poll_until, settled
from tests.support.procs import DyndProcess

SEEDS = int(os.environ.get("DYND_NEMESIS_SEEDS", "1"))
LOAD_S = float(os.environ.get("DYND_NEMESIS_SECONDS", "20"))
NODES = 5
PORT = 7400
KEYS = 8
CLIENTS = 4
FAULT_S = 3.0  # each fault lasts this long, then heals
CALM_S = 1.0  # between faults
CLIENT_TIMEOUT_S = 2.0
CONVERGE_DEADLINE_S = 120.0
CONFIG = FAST_TIMERS + "ae_interval_ms = 2000\n"
convergence_times: list[float] = []


@dataclass
class History:
    attempted: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    failed_by_fault: Counter[str] = field(default_factory=Counter)
    ops_by_fault: Counter[str] = field(default_factory=Counter)
    fault: str = "none"
    last_heal: float = 0.0  # time.monotonic() of the last heal (or of the end of the load)


def encode_set(elements: set[str]) -> bytes:
    return "\n".join(sorted(elements)).encode()


def decode_set(value: bytes) -> set[str]:
    return set(value.decode().split("\n")) if value else set()


@dataclass
class Lab:
    nodes: list[DyndProcess]
    net: netns.NetLab | None

    def kinds(self) -> list[str]:
        return ["kill", "pause"] + (["isolate", "minority"] if self.net is not None else [])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    net = netns.NetLab() if netns.available() else None
    nodes: list[DyndProcess] = []
    try:
        for index in range(1, NODES + 1):
            args = ("--join", nodes[0].address) if nodes else ("--replicas", "3", "--r", "2", "--w", "2", "--partitions", "64")
            if net is not None:
                ip = net.add_node(index)
                node = DyndProcess(tmp_path / f"m{index}", name=f"m{index}", config_text=CONFIG + netns.TRUSTED_LAB, host=ip, port=PORT, wrapper=net.wrapper(index), extra_args=args)
            else:
                node = DyndProcess(tmp_path / f"m{index}", name=f"m{index}", config_text=CONFIG, extra_args=args)
            nodes.append(node.start())
        poll_until("five members everywhere", lambda: settled(nodes, {n.name for n in nodes}))
        yield Lab(nodes, net)
    finally:
        if net is not None:
            net.heal_all()
        for node in nodes:
            if node.running:
                node.signal(signal.SIGCONT)
            node.stop()
            node.cleanup()
        if net is not None:
            net.close()


async def set_add_client(seeds: list[str], number: int, history: History, stop: trio.Event, rng: random.Random) -> None:
    async with open_cluster_client(seeds, timeout_s=CLIENT_TIMEOUT_S) as client:
        sequence = 0
        while not stop.is_set():
            key = f"set-{rng.randrange(KEYS)}"
            element = f"c{number}-{sequence}"
            sequence += 1
            fault = history.fault
            history.ops_by_fault[fault] += 1
            try:
                read = await client.get(key)
                merged = set().union(*(decode_set(v) for v in read.values))
                history.attempted.add(element)
                await client.put(key, encode_set(merged | {element}), read.context)
                history.acknowledged.add(element)
            except Timeout:
                history.failed_by_fault[fault] += 1  # indeterminate: it may have landed
            except DynError:
                history.failed_by_fault[fault] += 1
                await trio.sleep(0.05)  # a refused write: do not spin on a broken path


async def nemesis(lab: Lab, history: History, rng: random.Random, seconds: float) -> None:
    deadline = trio.current_time() + seconds
    nodes = lab.nodes
    while trio.current_time() + FAULT_S < deadline:
        await trio.sleep(CALM_S)
        kind = rng.choice(lab.kinds())
        victims = rng.sample(range(NODES), 2 if kind == "minority" else 1)
        history.fault = kind
        if kind == "kill":
            await trio.to_thread.run_sync(nodes[victims[0]].kill9)
        elif kind == "pause":
            nodes[victims[0]].signal(signal.SIGSTOP)
        elif kind == "isolate":
            assert lab.net is not None
            lab.net.isolate(victims[0] + 1)
        else:
            assert lab.net is not None
            lab.net.split({v + 1 for v in victims})
        await trio.sleep(FAULT_S)
        if kind == "kill":
            await trio.to_thread.run_sync(nodes[victims[0]].start)
        elif kind == "pause":
            nodes[victims[0]].signal(signal.SIGCONT)
        else:
            assert lab.net is not None
            lab.net.heal_all()
        history.fault = "none"
        history.last_heal = time.monotonic()


async def run_load(lab: Lab, seed: int) -> History:
    history = History()
    rng = random.Random(seed)
    stop = trio.Event()
    seeds = [n.address for n in lab.nodes]
    async with trio.open_nursery() as nursery:
        for number in range(CLIENTS):
            nursery.start_soon(set_add_client, seeds, number, history, stop, random.Random(rng.random()))
        await nemesis(lab, history, rng, LOAD_S)
        stop.set()
    return history


async def fetch(client: Client, key: str) -> bytes | None:
    answer: list[Any] = []
    done = trio.Event()

    def record(reply: Any) -> None:
        answer.append(reply)
        done.set()

    PeerLink(client, CLIENT_TIMEOUT_S).call(lambda rid: messages.Fetch(id=rid, key=key.encode()), record)
    await done.wait()
    if not isinstance(answer[0], messages.FetchOk):
        raise answer[0] if isinstance(answer[0], DynError) else AssertionError(answer[0])
    return answer[0].record  # type: ignore[no-any-return]


async def replicas_of_every_key(lab: Lab) -> dict[str, list[Any]]:
    """Each key's versions as each of its primaries holds them (None: holds nothing)."""
    async with open_client(lab.nodes[0].address) as any_node:
        ring = await any_node.ring()
    addresses = {n.name: n.address for n in lab.nodes}
    held: dict[str, list[Any]] = {}
    for number in range(KEYS):
        key = f"set-{number}"
        held[key] = []
        for primary in key_placement(ring, key).primaries:
            async with open_client(addresses[primary]) as client:
                record = await fetch(client, key)
            held[key].append(None if record is None else decode_record(record))
    return held


def converged(lab: Lab) -> bool:
    held = trio.run(replicas_of_every_key, lab)
    return all(all(versions == copies[0] for versions in copies) for copies in held.values())


async def final_read(lab: Lab) -> set[str]:
    found: set[str] = set()
    async with open_cluster_client([n.address for n in lab.nodes]) as client:
        for number in range(KEYS):
            result = await client.get(f"set-{number}", r=3)
            found |= set().union(*(decode_set(v) for v in result.values))
    return found


@pytest.mark.parametrize("seed", range(SEEDS))
def test_nemesis_loses_no_acknowledged_add_and_replicas_converge(lab: Lab, seed: int) -> None:
    history = trio.run(run_load, lab, seed)
    healed = history.last_heal or time.monotonic()
    poll_until("every replica of every key the same", lambda: converged(lab), deadline_s=CONVERGE_DEADLINE_S)
    convergence_times.append(time.monotonic() - healed)
    found = trio.run(final_read, lab)
    lost = history.acknowledged - found
    invented = found - history.attempted
    failed = {kind: f"{history.failed_by_fault[kind]}/{history.ops_by_fault[kind]}" for kind in sorted(history.ops_by_fault)}
    print(
        f"\nnemesis seed {seed}: {len(history.acknowledged)} adds acknowledged, {len(history.attempted)} attempted; "
        f"ops failed per fault (failed/ops): {failed}; converged {convergence_times[-1]:.1f} s after heal "
        f"(median so far {statistics.median(convergence_times):.1f} s; from the last heal, writes still arriving until the load stopped)"
    )
    assert len(history.acknowledged) > 20, "the load made progress"
    assert lost == set(), f"{len(lost)} acknowledged adds lost: {sorted(lost)[:10]}"
    assert invented == set(), f"elements no client attempted: {sorted(invented)[:10]}"
