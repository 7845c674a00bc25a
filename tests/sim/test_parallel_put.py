"""A coordinator's own commit runs beside the replicas' (one commit of latency per put). Its dots
must stay unique when that commit never lands: these scenarios fail if a node could issue the same
counter twice (see `dynd.core.actors`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from dynd.core.ops import PutObject, WriteOp
from dynd.core.partition import partition_of
from dynd.protocol import messages
from dynd.protocol.errors import DynError, Internal
from dynd.sim.disk import SimDisk
from dynd.sim.network import Endpoint
from dynd.sim.process import Process
from dynd.sim.workload import decode_set, encode_set
from dynd.sim.world import SIM_LIMITS, Host, World

KEY = b"parallel-put"


class LosesTheNextWrite:
    """The target host's next commit of KEY never lands: it fails (`crash=False`) or hangs until the
    process dies (`crash=True`). Other hosts' disks are untouched."""

    def __init__(self, target: str, world_ref: list[World], *, crash: bool) -> None:
        self.target, self.world_ref, self.crash = target, world_ref, crash
        self.armed = False

    def __call__(self, host: Host, disk: SimDisk) -> Any:
        if host.name != self.target:
            return disk
        wrapper = self

        class Disk:
            def __getattr__(self, name: str) -> Any:
                return getattr(disk, name)

            def submit(self, ops: Sequence[WriteOp], on_done: Callable[[DynError | None], None]) -> None:
                if wrapper.armed and any(isinstance(op, PutObject) and op.key == KEY for op in ops):
                    wrapper.armed = False
                    if not wrapper.crash:
                        wrapper.world_ref[0].loop.after(3, lambda: on_done(Internal("simulated disk error")))
                    return  # with crash=True: held until the process is gone
                disk.submit(ops, on_done)

        return Disk()


def call(world: World, endpoint: Endpoint, address: str, build: Any) -> Any:
    answers: list[Any] = []
    endpoint.send_to_address(address, build, answers.append)
    world.run_for(10_000, stop=lambda: bool(answers))
    assert answers, "no answer"
    return answers[0]


def scenario(*, crash: bool) -> tuple[set[str], set[str]]:
    """(acknowledged elements, elements a read from every replica returns)."""
    world_ref: list[World] = []
    # Find the coordinator first (the ring depends only on the membership), then break its disk.
    probe = World(3, nodes=3, params=(3, 2, 2, 32))
    probe.run_for(500)
    node = probe.hosts["n1"].node
    assert node is not None
    coordinator = node.cluster.preference_list(partition_of(KEY, 32)).primaries[0]
    breaker = LosesTheNextWrite(coordinator, world_ref, crash=crash)
    # No anti-entropy: it could repair the coordinator's copy before the second write and hide a
    # reused dot.
    world = World(3, nodes=3, params=(3, 2, 2, 32), wrap_storage=breaker, limits=dataclasses.replace(SIM_LIMITS, ae_interval_ms=600_000))
    world_ref.append(world)
    world.net.heal()
    client = Endpoint(world.net, "client", Process("client", 1, world._exception), 10_000)
    world.run_for(1_000)
    x = world.hosts[coordinator]
    acknowledged: set[str] = set()
    breaker.armed = True
    first = call(world, client, x.address, lambda rid: messages.Put(id=rid, key=KEY, value=encode_set({"a"})))
    assert isinstance(first, messages.PutOk), "w=2: the two other replicas stored it"
    acknowledged.add("a")
    if crash:
        world.crash(x)
        world.restart(x)
        world.run_for(1_000)
    # A blind write through the same coordinator, whose store never got "a".
    second = call(world, client, x.address, lambda rid: messages.Put(id=rid, key=KEY, value=encode_set({"b"})))
    assert isinstance(second, messages.PutOk), second
    acknowledged.add("b")
    world.run_for(1_000)
    answer = call(world, client, x.address, lambda rid: messages.Get(id=rid, key=KEY, r=3))
    assert isinstance(answer, messages.GetOk), answer
    return acknowledged, set().union(*(decode_set(s.value) for s in answer.siblings))


def test_a_failed_own_commit_takes_a_new_epoch() -> None:
    acknowledged, final = scenario(crash=False)
    assert acknowledged <= final, f"lost {acknowledged - final}"


def test_a_crash_before_the_own_commit_lands_takes_a_new_epoch_at_start() -> None:
    acknowledged, final = scenario(crash=True)
    assert acknowledged <= final, f"lost {acknowledged - final}"
