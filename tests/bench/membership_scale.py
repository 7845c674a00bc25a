"""Membership cost at scale, in the simulator (issue 17, item 5): CPU per membership change and
gossip bytes per message, at 10, 50, 100 and 200 members, Q = 256 and 1024.

    python tests/bench/membership_scale.py                          # this checkout
    python tests/bench/membership_scale.py --base 596164c           # and a base revision, interleaved
    python tests/bench/membership_scale.py --members 10 50 --partitions 256

Per (Q, members) and revision, in a process of its own: a `dynd.sim.World` of that many members
(no client load) is built, runs `--warmup-ms` (failure detection settles; the compactor may
snapshot the starting events), then `--steady-ms` with no change (gossip bytes per message
while nothing changes), then one new node joins through n1 and the world runs until every node
holds the same membership (at most `--deadline-ms`). In the join window it measures: simulator
CPU (every node, every concern), CPU inside decoding memberships (`Membership.decode`, and
`MembershipDelta.decode` where it exists) and folding them (`Membership._fold`, claim included),
claim calls, gossip messages and bytes, and gossip rounds until every node agrees.

Building the world is not measured: every node decodes the one stored membership, which is
decoded and folded once and shared (values are immutable), on either revision alike.
Run it under `flock -x /tmp/machine.lock` on a shared machine: it measures CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SIZES = (10, 50, 100, 200)
PARTITIONS = (256, 1024)


class Meter:
    """CPU seconds spent inside the wrapped functions (outermost calls only) and their count."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def measured(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            started = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - started
                self.calls += 1
                self._depth -= 1

        return measured


def measure_one(partitions: int, members: int, *, seed: int, warmup_ms: int, steady_ms: int, deadline_ms: int) -> dict[str, Any]:
    from dynd.core import membership as membership_module
    from dynd.protocol import codec, messages
    from dynd.sim.network import Endpoint
    from dynd.sim.process import Process
    from dynd.sim.world import World

    Membership = membership_module.Membership
    plain_decode = Membership.decode
    shared: dict[bytes, Any] = {}

    def decode_once(data: bytes, **kwargs: Any) -> Any:
        value = shared.get(data)
        if value is None:
            value = shared[data] = plain_decode(data, **kwargs)
        return value

    Membership.decode = staticmethod(decode_once)  # type: ignore[method-assign]
    built = time.process_time()
    world = World(seed, nodes=members, params=(3, 2, 2, partitions))
    build_s = time.process_time() - built
    Membership.decode = staticmethod(plain_decode)  # type: ignore[method-assign]

    decode_meter, fold_meter = Meter(), Meter()
    Membership.decode = staticmethod(decode_meter.wrap(plain_decode))  # type: ignore[method-assign]
    delta = getattr(membership_module, "MembershipDelta", None)
    if delta is not None:
        delta.decode = staticmethod(decode_meter.wrap(delta.decode))
    fold_property = Membership.__dict__["_fold"]
    fold_property.func = fold_meter.wrap(fold_property.func)
    claims = Counter[str]()
    fold_module = __import__("dynd.core.membership_fold", fromlist=["claim"]) if delta is not None else membership_module
    plain_claim = fold_module.claim

    def counted_claim(*args: Any, **kwargs: Any) -> Any:
        claims["calls"] += 1
        return plain_claim(*args, **kwargs)

    fold_module.claim = counted_claim
    gossip = Counter[str]()
    plain_encode = codec.encode_message

    def counted_encode(message: Any) -> bytes:
        data = plain_encode(message)
        if isinstance(message, (messages.Gossip, messages.GossipOk)):
            gossip["messages"] += 1
            gossip["bytes"] += len(data)
        return data

    codec.encode_message = counted_encode  # type: ignore[assignment]

    world.run_for(warmup_ms)
    gossip.clear()
    world.run_for(steady_ms)
    steady = dict(gossip)

    def nodes() -> list[Any]:
        return [h.node for h in world.hosts.values() if h.up and h.node is not None]

    gossip.clear()
    claims.clear()
    decode_meter.seconds = fold_meter.seconds = 0.0
    decode_meter.calls = fold_meter.calls = 0
    started_cpu, started_ms = time.process_time(), world.loop.now_ms
    joiner = world.add_host()
    admin = Process("admin", 1, world._exception)
    endpoint = Endpoint(world.net, "admin", admin, 3 * world.limits.request_timeout_ms)
    answers: list[Any] = []

    def ask_to_join() -> None:  # the simulated network drops 1% of messages: ask again after a failure
        endpoint.send_to_address(joiner.address, lambda rid: messages.ClusterJoin(id=rid, seed=world.hosts["n1"].address), answered)

    def answered(answer: Any) -> None:
        answers.append(answer)
        if not isinstance(answer, messages.ClusterOk):
            world.loop.after(world.limits.gossip_interval_ms, ask_to_join)

    ask_to_join()

    def agreed() -> bool:
        running = nodes()
        if len(running) < members + 1:
            return False
        digests = {node.cluster.membership.digest for node in running}
        me = running[0].cluster.membership.members.get(joiner.name)
        return len(digests) == 1 and me is not None and me.status == "joined"

    step_ms = 50
    while world.loop.now_ms - started_ms < deadline_ms and not agreed():
        world.run_for(step_ms)
    agree_ms = world.loop.now_ms - started_ms
    join_cpu = time.process_time() - started_cpu
    final = nodes()[0].cluster.membership
    nodes_count = len(nodes())
    return {
        "partitions": partitions,
        "members": members,
        "agreed": agreed(),
        "join_requests": len(answers),
        "build_s": round(build_s, 2),
        "join_cpu_s": round(join_cpu, 3),
        "membership_cpu_ms_per_node": round(1000 * (decode_meter.seconds + fold_meter.seconds) / nodes_count, 2),
        "decode_ms_total": round(1000 * decode_meter.seconds, 1),
        "fold_ms_total": round(1000 * fold_meter.seconds, 1),
        "folds": fold_meter.calls,
        "decodes": decode_meter.calls,
        "claims": claims["calls"],
        "rounds_to_agree": round(agree_ms / world.limits.gossip_interval_ms, 1),
        "steady_bytes_per_gossip_message": round(steady.get("bytes", 0) / max(1, steady.get("messages", 0)), 1),
        "join_bytes_per_gossip_message": round(gossip["bytes"] / max(1, gossip["messages"]), 1),
        "join_gossip_bytes_per_node": round(gossip["bytes"] / nodes_count),
        "snapshot_stamp": getattr(getattr(final, "base", None), "stamp", None),
        "membership_bytes": len(final.encode()),
    }


def run_child(tree: Path, partitions: int, members: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--one", str(partitions), str(members), "--seed", str(args.seed),
        "--warmup-ms", str(args.warmup_ms), "--steady-ms", str(args.steady_ms), "--deadline-ms", str(args.deadline_ms),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3_600, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{tree} Q={partitions} S={members} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="also measure this revision (checked out into a temporary worktree)")
    parser.add_argument("--members", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--partitions", type=int, nargs="+", default=list(PARTITIONS))
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--warmup-ms", type=int, default=40_000)
    parser.add_argument("--steady-ms", type=int, default=10_000)
    parser.add_argument("--deadline-ms", type=int, default=60_000)
    parser.add_argument("--one", type=int, nargs=2, metavar=("Q", "MEMBERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        q, s = args.one
        print(json.dumps(measure_one(q, s, seed=args.seed, warmup_ms=args.warmup_ms, steady_ms=args.steady_ms, deadline_ms=args.deadline_ms)))
        return
    trees: dict[str, Path] = {"this": ROOT}
    with tempfile.TemporaryDirectory(prefix="dynd-membership-scale-") as scratch:
        if args.base:
            trees = {"base": Path(scratch) / "base", "this": ROOT}
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(trees["base"]), args.base], check=True)
        try:
            rows = []
            for q in args.partitions:
                for s in args.members:
                    for label, tree in trees.items():
                        row = run_child(tree, q, s, args)
                        rows.append({"rev": label, **row})
                        print(json.dumps(rows[-1]), flush=True)
        finally:
            if args.base:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees["base"])], check=False)
    print()
    print(f"{'rev':>5} {'Q':>5} {'S':>4} {'agreed':>6} {'rounds':>6} {'join CPU s':>10} {'decode+fold ms/node':>19} {'claims':>7} "
          f"{'B/gossip msg steady':>19} {'B/gossip msg join':>17} {'gossip B/node join':>18} {'snapshot':>8}")  # fmt: skip
    for r in rows:
        print(
            f"{r['rev']:>5} {r['partitions']:>5} {r['members']:>4} {str(r['agreed']):>6} {r['rounds_to_agree']:>6} {r['join_cpu_s']:>10} "
            f"{r['membership_cpu_ms_per_node']:>19} {r['claims']:>7} {r['steady_bytes_per_gossip_message']:>19} "
            f"{r['join_bytes_per_gossip_message']:>17} {r['join_gossip_bytes_per_node']:>18} {str(r['snapshot_stamp']):>8}"
        )


if __name__ == "__main__":
    main()
