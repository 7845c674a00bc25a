"""How membership, gossip and placement scale with the member count, in the simulator (issue 17).

    python tests/bench/scale.py [--members 10,50,100,200] [--partitions 256,1024]
                                [--nodes-per-machine 4] [--zones 3] [--time-bound 1800]

For each member count S and partition count Q, a `dynd.sim.World` of S members (k per machine,
machines dealt to zones in turn; 200 members are 50 machines of 4) runs with no client load:

1. warm-up (`--warmup-seconds`), then a quiet window (`--window-seconds`, simulated) with no change:
   messages and bytes per member per second by kind (the message's type name; "datagram" is the
   failure detector's), the process time nodes spent handling each kind, and "membership CPU",
   that time for the kinds named Gossip* or Cluster* (exchanging memberships with no change);
2. one join (a new machine's node joins through n1), then a window of the same length:
   - rounds: gossip intervals from the moment the joiner holds the new ring until every member
     holds it (polled every `POLL_MS` of virtual time; the join request itself takes a few ms);
   - CPU per membership change: the process time of every handling (a request, a reply, a
     datagram or a tick) after which the handling node held another membership (its digest
     differs), in the join window, per member: what adopting the change cost each node, decode
     and fold included, whichever message brought it; "adoptions" counts those handlings per
     member (1.0: every node adopted the change once). "all work" is the process time of all
     node work in the join window less that of the quiet window, per member: adoption and
     whatever the change set off (handoff, anti-entropy, gossip), noisy where that is small;
3. placement, from n1's view after the join: partitions per member (min/max against floor/ceil of
   Q/S), partitions whose owner the join moved (against floor(Q/(S+1))), and partitions whose N
   primaries are not on N distinct hosts (when there are at least N machines) or not in N distinct
   zones (when there are at least N zones), by `dynd.protocol.locations`.

Everything is drawn from `--seed`, so the same flags do the same simulated work; process times vary
with the machine. A case is started only while the time bound has not passed (each case is bounded
in simulated time; 200 members at Q=1024 take minutes, most of it building the world). Run it under
`flock -x /tmp/machine.lock` so that nothing else shares the cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from dynd.core.ring import Ring
from dynd.protocol import messages
from dynd.protocol.locations import host_of, zone_of
from dynd.sim.network import Endpoint, Traffic
from dynd.sim.process import Process
from dynd.sim.world import SIM_LIMITS, TICK, World

N, R, W = 3, 2, 2
POLL_MS = 10
MEMBERSHIP_PREFIXES = ("Gossip", "Cluster")  # message kinds that carry or change a membership
MEMBERSHIP_KINDS = "kinds named Gossip* or Cluster* (requests and replies)"


def membership_kind(kind: str) -> bool:
    return kind.startswith(MEMBERSHIP_PREFIXES)


@dataclass
class Balance:
    min: int
    max: int
    floor: int
    ceil: int

    @property
    def ok(self) -> bool:
        return self.floor <= self.min and self.max <= self.ceil


@dataclass
class Placement:
    balance: Balance
    machines: int
    zones: int
    host_violations: int | None  # None: fewer than N machines, the guarantee does not apply
    zone_violations: int | None


@dataclass
class Figures:
    members: int
    partitions: int
    machines: int
    zones: int
    build_s: float
    wall_s: float
    window_s: float
    rounds_to_agree: float | None  # None: no agreement within the window
    per_member_per_s: dict[str, tuple[float, float]]  # kind -> (messages, bytes), quiet window
    cpu_ms_per_member_per_s: dict[str, float]  # kind -> node process time, quiet window
    adoption_ms_per_member: float  # handlings that changed the node's membership, join window
    adoptions_per_member: float  # how many such handlings
    all_work_ms_per_member: float  # every kind, join window less quiet window
    before: Placement
    after: Placement
    moved: int
    moved_ideal: int
    notes: list[str] = field(default_factory=list)

    @property
    def messages_per_member_per_s(self) -> float:
        return sum(m for m, _ in self.per_member_per_s.values())

    @property
    def bytes_per_member_per_s(self) -> float:
        return sum(b for _, b in self.per_member_per_s.values())


def placement(world: World, ring: Ring, n: int) -> Placement:
    """Balance and location guarantees of `ring`, as the nodes' own preference lists have it."""
    counts = ring.counts()
    members = len(ring.nodes)
    q = ring.partitions
    balance = Balance(min(counts.values()), max(counts.values()), q // members, -(-q // members))
    locations = {name: world.location_of(name) for name in ring.nodes}
    hosts = {host_of(name, loc) for name, loc in locations.items()}
    zones = {zone_of(name, loc) for name, loc in locations.items()}
    view = world.hosts["n1"].node
    assert view is not None and view.cluster.ring == ring, "n1 holds another ring"
    host_violations = zone_violations = 0
    for partition in range(q):
        primaries = view.cluster.preference_list(partition).primaries
        if len({host_of(p, locations[p]) for p in primaries}) < len(primaries):
            host_violations += 1
        if len({zone_of(p, locations[p]) for p in primaries}) < len(primaries):
            zone_violations += 1
    return Placement(
        balance,
        len(hosts),
        len(zones),
        host_violations if len(hosts) >= n else None,
        zone_violations if len(zones) >= n else None,
    )


def _membership_digest(world: World, name: str) -> bytes | None:
    host = world.hosts.get(name)  # clients and the admin have none
    node = host.node if host is not None else None
    return node.cluster.membership.digest if node is not None else None


def rings(world: World) -> dict[str, Ring]:
    return {name: host.node.cluster.ring for name, host in world.hosts.items() if host.node is not None}


def measure(
    members: int,
    partitions: int,
    *,
    nodes_per_machine: int = 4,
    zones: int = 3,
    seed: int = 1,
    warmup_ms: int = 5_000,
    window_ms: int = 10_000,
    on_machine: str | None = None,
) -> Figures:
    """One case. `on_machine`: the joiner runs there (another worker of an existing machine)
    instead of on a new machine of its own."""
    started = time.perf_counter()
    world = World(seed, nodes=members, params=(N, R, W, partitions), nodes_per_machine=nodes_per_machine, zones=zones)
    build_s = time.perf_counter() - started
    traffic = world.net.traffic
    traffic.clock = time.process_time
    traffic.probe = lambda name: _membership_digest(world, name)
    world.run_for(warmup_ms)
    n1 = world.hosts["n1"]
    assert n1.node is not None
    ring_before = n1.node.cluster.ring
    notes = []
    if len(set(rings(world).values())) != 1:
        notes.append("members disagreed on the ring before the join")
    before = placement(world, ring_before, N)

    mark = traffic.snapshot()
    world.run_for(window_ms)
    quiet = traffic.since(mark)

    mark = traffic.snapshot()
    window_end = world.loop.now_ms + window_ms
    joiner = world.add_host(on_machine)
    admin = Endpoint(world.net, "admin", Process("admin", 1, world._exception), 3 * world.limits.request_timeout_ms)
    answers: list[Any] = []
    admin.send_to_address(joiner.address, lambda rid: messages.ClusterJoin(id=rid, seed=n1.address), answers.append)
    first_ms: int | None = None
    agreed_ms: int | None = None
    while world.loop.now_ms < window_end and agreed_ms is None:
        world.run_for(POLL_MS)
        node = joiner.node
        if node is None:
            continue
        target = node.cluster.ring
        if first_ms is None and joiner.name in target.nodes:
            first_ms = world.loop.now_ms
        if first_ms is not None and all(ring == target for ring in rings(world).values()):
            agreed_ms = world.loop.now_ms
    world.run_for(max(0, window_end - world.loop.now_ms))
    joined = traffic.since(mark)
    if not answers or not isinstance(answers[0], messages.ClusterOk):
        notes.append(f"the join answered {answers[0] if answers else 'nothing'}")
    assert joiner.node is not None
    ring_after = joiner.node.cluster.ring
    after = placement(world, ring_after, N)
    moved = sum(a != b for a, b in zip(ring_before.owners, ring_after.owners))

    seconds = window_ms / 1000
    per_member = {
        kind: (quiet.messages[kind] / members / seconds, quiet.bytes[kind] / members / seconds) for kind in sorted(quiet.messages)
    }
    cpu = {kind: 1000 * quiet.cpu_s[kind] / members / seconds for kind in sorted(quiet.cpu_s)}
    after_members = members + 1
    adoption = sum(joined.changed_cpu_s.values()) / after_members
    all_work = (sum(joined.cpu_s.values()) - sum(quiet.cpu_s.values())) / after_members
    if sum(quiet.changed.values()):
        notes.append(f"the membership changed in the quiet window: {dict(quiet.changed)}")
    return Figures(
        members=members,
        partitions=partitions,
        machines=before.machines,
        zones=zones,
        build_s=build_s,
        wall_s=time.perf_counter() - started,
        window_s=seconds,
        rounds_to_agree=None if agreed_ms is None or first_ms is None else (agreed_ms - first_ms) / world.limits.gossip_interval_ms,
        per_member_per_s=per_member,
        cpu_ms_per_member_per_s=cpu,
        adoption_ms_per_member=1000 * adoption,
        adoptions_per_member=sum(joined.changed.values()) / after_members,
        all_work_ms_per_member=1000 * all_work,
        before=before,
        after=after,
        moved=moved,
        moved_ideal=partitions // after_members,
        notes=notes,
    )


# ---- report ----


def _violations(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def summary_table(results: Sequence[Figures]) -> Table:
    table = Table(title=f"scale: no client load, N={N}, gossip every {SIM_LIMITS.gossip_interval_ms} ms (simulated)")
    for column in (
        "S", "Q", "machines/zones", "rounds to agree", "msgs/member/s", "bytes/member/s",
        "membership CPU ms/member/s", "adoption ms/member (adoptions)", "all work ms/member",
        "partitions/member (floor..ceil)", "moved at join (floor Q/S')", "host viol.", "zone viol.", "wall s",
    ):
        table.add_column(column, justify="right")
    for f in results:
        gossip_cpu = sum(v for k, v in f.cpu_ms_per_member_per_s.items() if membership_kind(k))
        b = f.after.balance
        table.add_row(
            str(f.members),
            str(f.partitions),
            f"{f.machines}/{f.zones}",
            "-" if f.rounds_to_agree is None else f"{f.rounds_to_agree:.1f}",
            f"{f.messages_per_member_per_s:.1f}",
            f"{f.bytes_per_member_per_s:,.0f}",
            f"{gossip_cpu:.2f}",
            f"{f.adoption_ms_per_member:.1f} ({f.adoptions_per_member:.2f})",
            f"{f.all_work_ms_per_member:.1f}",
            f"{b.min}..{b.max} ({b.floor}..{b.ceil})",
            f"{f.moved} ({f.moved_ideal})",
            f"{_violations(f.before.host_violations)}->{_violations(f.after.host_violations)}",
            f"{_violations(f.before.zone_violations)}->{_violations(f.after.zone_violations)}",
            f"{f.wall_s:.0f}",
        )
    return table


def kinds_table(results: Sequence[Figures]) -> Table:
    kinds = sorted({k for f in results for k in f.per_member_per_s} | {TICK})
    table = Table(title="quiet window, per member per second: messages / bytes / node CPU ms, by kind")
    table.add_column("kind")
    for f in results:
        table.add_column(f"S={f.members} Q={f.partitions}", justify="right")
    for kind in kinds:
        row = [kind]
        for f in results:
            msgs, size = f.per_member_per_s.get(kind, (0.0, 0.0))
            cpu = f.cpu_ms_per_member_per_s.get(kind, 0.0)
            row.append(f"{msgs:.1f} / {size:,.0f} / {cpu:.2f}" if msgs or cpu else "-")
        table.add_row(*row)
    return table


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more positive integers")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=_ints, default=[10, 50, 100, 200], help="member counts (default 10,50,100,200)")
    parser.add_argument("--partitions", type=_ints, default=[256, 1024], help="partition counts Q (default 256,1024)")
    parser.add_argument("--nodes-per-machine", type=int, default=4, help="nodes per machine (default 4: 200 members on 50 machines)")
    parser.add_argument("--zones", type=int, default=3, help="zones the machines are dealt to (default 3)")
    parser.add_argument("--join-on-existing", action="store_true", help="the joiner is one more worker of machine host-1, not a new machine")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="simulated seconds before the quiet window")
    parser.add_argument("--window-seconds", type=float, default=10.0, help="simulated seconds of the quiet and of the join window")
    parser.add_argument("--time-bound", type=float, default=1800.0, help="start no case after this many wall seconds (default 1800)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.nodes_per_machine < 1 or args.zones < 1:
        parser.error("--nodes-per-machine and --zones must be at least 1")
    logging.getLogger("dynd").setLevel(logging.ERROR)  # the nodes' own notes (joins, handoffs) are not the figures
    console = Console(width=max(Console().width, 200))
    started = time.perf_counter()
    results: list[Figures] = []
    skipped: list[str] = []
    for partitions in args.partitions:
        for members in args.members:
            if time.perf_counter() - started > args.time_bound:
                skipped.append(f"S={members} Q={partitions}")
                continue
            console.print(f"[dim]S={members} Q={partitions} ...", highlight=False)
            figures = measure(
                members, partitions, nodes_per_machine=args.nodes_per_machine, zones=args.zones, seed=args.seed,
                warmup_ms=int(args.warmup_seconds * 1000), window_ms=int(args.window_seconds * 1000),
                on_machine="host-1" if args.join_on_existing else None,
            )
            results.append(figures)
            for note in figures.notes:
                console.print(f"[yellow]S={members} Q={partitions}: {note}", highlight=False)
    if results:
        console.print(summary_table(results))
        console.print(kinds_table(results))
    if skipped:
        console.print(f"[yellow]not run (time bound {args.time_bound:g} s passed): {', '.join(skipped)}", highlight=False)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(f) for f in results], out, indent=1)
    console.print(
        f"{time.perf_counter() - started:.0f} s wall; seed {args.seed}, {args.nodes_per_machine} nodes per machine, "
        f"{args.zones} zones, windows of {args.window_seconds:g} simulated s; membership kinds: {MEMBERSHIP_KINDS}",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
