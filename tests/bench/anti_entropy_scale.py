"""Anti-entropy load per member as the cluster grows, and how long a planted divergence lasts.

    .venv/bin/python tests/bench/anti_entropy_scale.py [--members 10,25,50,100,200] [--partitions 256]
        [--seconds 20] [--plant 16] [--seed 1]

A driver over `dynd.sim.World` (virtual time, the simulator's timers: `SIM_LIMITS`, anti-entropy
rounds every second), N=3, no client load. For each cluster size:

1. idle: after a warm-up, every message the network delivers for `--seconds` is counted by kind
   (its op; SWIM datagrams as "swim"), with its bytes (a TCP frame's 4-byte prefix included).
   Each message has one sender and one receiver, so the total over the members' count is the
   average a member sends (and receives) per second;
   Before it, one key is written to every partition on all its primaries, so every root is a hash.
2. planted divergence: `--plant` keys, each in another partition, are written to one primary only
   (a Replicate delivered to it alone, as if the other copies were lost); the clock then runs until
   every primary of each holds it. Nothing else repairs them (no reads: no read repair; no hints),
   so the time is anti-entropy's alone. Reported: median and largest, in seconds and in rounds.

Counting wraps the loop's trace (every delivered request, reply and datagram passes through it),
so the simulator runs exactly as it would unobserved.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cbor2

from dynd.core.limits import Limits
from dynd.core.partition import partition_of
from dynd.core.replica import LocalReplica
from dynd.protocol import messages
from dynd.sim.world import SIM_LIMITS, World

N, R, W = 3, 2, 2
WARMUP_MS = 3_000
REPAIR_STEP_MS = 100
AE_OPS = frozenset({
    "tree_roots", "tree_roots_ok", "tree_roots_compare", "tree_roots_compare_ok", "tree_level", "tree_level_ok",
    "segment_keys", "segment_keys_ok", "fetch", "fetch_ok", "replicate", "replicate_ok",
})  # fmt: skip
ROOTS_OPS = frozenset({"tree_roots", "tree_roots_ok", "tree_roots_compare", "tree_roots_compare_ok"})


class Counter:
    """Messages and bytes by kind, from the loop's trace, while `on`."""

    def __init__(self, world: World) -> None:
        self.on = False
        self.messages: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        trace = world.loop.trace

        def counting(*parts: object) -> None:
            trace(*parts)
            if self.on and parts and parts[0] in ("req", "rep", "dgram"):
                payload = parts[-1]
                assert isinstance(payload, bytes)
                if parts[0] == "dgram":
                    self._count("swim", len(payload))
                else:
                    item = cbor2.loads(payload)
                    self._count(str(item.get("op", "?")), 4 + len(payload))

        world.loop.trace = counting  # type: ignore[method-assign]

    def _count(self, kind: str, size: int) -> None:
        self.messages[kind] += 1
        self.bytes[kind] += size


def group(kind: str) -> str:
    if kind in ROOTS_OPS:
        return "ae roots"
    if kind in AE_OPS:
        return "ae descent+repair"
    if kind.startswith("gossip"):
        return "gossip"
    return kind if kind == "swim" else "other"


def key_in(partition: int, partitions: int, prefix: bytes) -> bytes:
    i = 0
    while partition_of(key := b"%s:%d:%d" % (prefix, partition, i), partitions) != partition:
        i += 1
    return key


def write_to(world: World, names: list[str], key: bytes, record: bytes) -> None:
    """`record` delivered to `names` as a Replicate each (answered once its commit is durable)."""
    answers: list[Any] = []
    for name in names:
        host = world.hosts[name]
        world.inside(host, lambda h=host: h.node.handle(messages.Replicate(id=1, key=key, record=record), answers.append))  # type: ignore[union-attr]
    world.run_for(50)
    assert len(answers) == len(names) and all(isinstance(a, messages.ReplicateOk) for a in answers), answers


def primaries_of(world: World, partition: int) -> list[str]:
    any_node = next(h.node for h in world.hosts.values() if h.node is not None)
    assert any_node is not None
    return list(any_node.cluster.preference_list(partition).primaries)


def fill(world: World) -> None:
    """One key in every partition on all its primaries, so every root is a real hash."""
    partitions = world.params.partitions
    writer = LocalReplica("filler", Limits(), partitions)
    for partition in range(partitions):
        key = key_in(partition, partitions, b"fill")
        write_to(world, primaries_of(world, partition), key, writer.write(key, b"same", None, None, 1_700_000_000_000).record)


def plant(world: World, count: int, rng: random.Random) -> list[tuple[bytes, int, list[str]]]:
    """`count` keys, each in a partition of its own, written to one of its primaries only."""
    partitions = world.params.partitions
    writer = LocalReplica("planter", Limits(), partitions)
    planted = []
    for partition in rng.sample(range(partitions), count):
        key = key_in(partition, partitions, b"planted")
        primaries = primaries_of(world, partition)
        write_to(world, [rng.choice(primaries)], key, writer.write(key, b"divergent", None, None, 1_700_000_000_000).record)
        planted.append((key, partition, primaries))
    return planted


def repaired(world: World, key: bytes, partition: int, primaries: list[str]) -> bool:
    for name in primaries:
        node = world.hosts[name].node
        if node is None or node.storage.read_object(partition, key) is None:
            return False
    return True


def measure(members: int, partitions: int, seconds: float, plant_count: int, seed: int, repair_max_s: float) -> dict[str, Any]:
    started = time.process_time()
    world = World(seed, nodes=members, params=(N, R, W, partitions), limits=SIM_LIMITS)
    build_s = time.process_time() - started
    counter = Counter(world)
    fill(world)
    world.run_for(WARMUP_MS)
    counter.on = True
    window_ms = int(seconds * 1000)
    world.run_for(window_ms)
    counter.on = False
    run_s = time.process_time() - started - build_s
    rng = random.Random(seed)
    planted = plant(world, plant_count, rng)
    planted_at = world.loop.now_ms
    times: dict[bytes, float] = {}
    while len(times) < len(planted) and world.loop.now_ms - planted_at < repair_max_s * 1000:
        world.run_for(REPAIR_STEP_MS)
        for key, partition, primaries in planted:
            if key not in times and repaired(world, key, partition, primaries):
                times[key] = (world.loop.now_ms - planted_at) / 1000
    failures = [f for f in world.failures]
    return {
        "members": members,
        "partitions": partitions,
        "window_s": window_ms / 1000,
        "messages": dict(counter.messages),
        "bytes": dict(counter.bytes),
        "repair_s": sorted(times.values()),
        "unrepaired": len(planted) - len(times),
        "failures": failures,
        "build_cpu_s": build_s,
        "run_cpu_s": run_s,
    }


def report(result: dict[str, Any], ae_interval_ms: int) -> None:
    members, window = result["members"], result["window_s"]
    per = members * window
    by_group_msgs: dict[str, float] = defaultdict(float)
    by_group_bytes: dict[str, float] = defaultdict(float)
    for kind, count in result["messages"].items():
        by_group_msgs[group(kind)] += count / per
        by_group_bytes[group(kind)] += result["bytes"][kind] / per
    total = sum(by_group_msgs.values())
    ae = by_group_msgs["ae roots"] + by_group_msgs["ae descent+repair"]
    times = result["repair_s"]
    rounds = ae_interval_ms / 1000
    repair = (
        f"repair median {statistics.median(times):5.1f} s max {max(times):5.1f} s ({max(times) / rounds:.0f} rounds)"
        if times else "repair: none finished"
    )  # fmt: skip
    if result["unrepaired"]:
        repair += f", {result['unrepaired']} NOT repaired"
    print(
        f"Q={result['partitions']:5d} members {members:4d}: all {total:6.1f} msg/s/member, anti-entropy {ae:5.2f} msg/s "
        f"{by_group_bytes['ae roots'] + by_group_bytes['ae descent+repair']:8.0f} B/s; {repair}; cpu {result['build_cpu_s']:.0f}+{result['run_cpu_s']:.0f} s",
        flush=True,
    )
    for name in sorted(by_group_msgs):
        print(f"    {name:20} {by_group_msgs[name]:7.2f} msg/s {by_group_bytes[name]:9.0f} B/s")
    for kind in sorted(k for k in result["messages"] if k in AE_OPS):
        print(f"      {kind:26} {result['messages'][kind] / per:7.3f} msg/s {result['bytes'][kind] / per:9.0f} B/s")
    for failure in result["failures"][:5]:
        print(f"    CHECKER {failure.checker}: {failure.message[:200]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="10,25,50,100,200", help="cluster sizes, comma-separated")
    parser.add_argument("--partitions", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20.0, help="virtual seconds counted per size")
    parser.add_argument("--plant", type=int, default=16, help="keys planted on one primary each")
    parser.add_argument("--repair-max", type=float, default=300.0, help="virtual seconds to wait for the planted keys")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"N={N}, anti-entropy every {SIM_LIMITS.ae_interval_ms} ms, gossip every {SIM_LIMITS.gossip_interval_ms} ms, "
          f"{args.seconds:g} virtual s counted per size; per member: messages and bytes it sends per second "
          "(= what it receives, on average)", flush=True)  # fmt: skip
    for members in (int(m) for m in args.members.split(",")):
        result = measure(members, args.partitions, args.seconds, min(args.plant, args.partitions), args.seed, args.repair_max)
        report(result, SIM_LIMITS.ae_interval_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
