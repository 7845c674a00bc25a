"""Fault schedules: what goes wrong, when, for how long; drawn from the seed or given explicitly.

A schedule is a list of `Fault`s. Each names its kind, when it starts, how long it lasts, a target
(an index into the sorted host names at the moment it starts, so a schedule stays meaningful
whatever hosts exist; a host is one node process, see `dynd.sim.world`; for host-crash, an index
into the sorted machine names) and one kind-specific argument:

    kind        what happens                                              arg
    loss        messages are lost more often                              extra loss, percent
    duplicate   requests are delivered twice more often                   extra duplication, percent
    delay       messages take longer (and reorder more)                   extra delay up to, ms
    partition   a minority of hosts is cut off from the rest both ways    picks the minority's size
    isolate     one host is cut off from every other host                 -
    oneway      one host cannot send (arg even) or cannot receive (odd)   direction
    crash       the host's process dies (uncommitted writes are lost)     -
                and restarts from its store when the fault ends
    pause       the host's process stops (SIGSTOP) until the fault ends   -
    skew        the host's wall clock jumps forward (permanently)         jump, ms
    clock-step  the host's wall clock steps forward or back, by up to     step, ms (< 0: back; odd:
                CLOCK_STEP_MAX_MS; its monotonic clock does not           for good, even: it steps
                                                                          back when the fault ends)
    join        a new host joins the cluster through a member             -
    leave       a member leaves (hands its data off, then is removed)     -
    disk-error  every commit of the host's disk fails, applying nothing   -
    disk-full   the host's disk refuses every write (StorageFull)         -
    host-crash  every node process of one machine dies at the same        -
                instant; none restarts (a crash fault ending meanwhile
                included) until this fault ends, when all of them do

Every fault heals when its duration ends (a skew, join or leave has nothing to undo), and
`heal_all` heals whatever is still active before the checkers run. A disk fault belongs to the
process's disk (`dynd.sim.disk`): a crash meanwhile ends it, as the process is what saw the error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dynd.core.membership import JOINED, Membership
from dynd.protocol import messages
from dynd.sim.disk import DISK_ERROR, DISK_FULL
from dynd.sim.network import Endpoint
from dynd.sim.process import Process
from dynd.sim.world import FAULT_DURATION_MAX_MS, FAULT_DURATION_MIN_MS, World

FAULT_KINDS = ("loss", "duplicate", "delay", "partition", "isolate", "oneway", "crash", "pause", "skew", "clock-step", "join", "leave", "disk-error", "disk-full", "host-crash")
NETWORK_KINDS = ("loss", "duplicate", "delay", "partition", "isolate", "oneway")
RESTART_SKEW_MS = 3_000  # with skew enabled, a restarted node's clock is off by up to this much
EXTRA_HOSTS_MAX = 2  # joins add at most this many hosts
CLOCK_STEP_MAX_MS = 2 * 3_600_000  # an NTP step or an operator's `date -s`: up to two hours either way


@dataclass(frozen=True, order=True)
class Fault:
    at_ms: int
    kind: str
    duration_ms: int
    target: int = 0
    arg: int = 0

    def __str__(self) -> str:
        return f"{self.kind}@{self.at_ms}ms+{self.duration_ms}ms(target={self.target},arg={self.arg})"


def parse_kinds(text: str) -> tuple[str, ...]:
    if text in ("all", ""):
        return FAULT_KINDS
    if text == "none":
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}")
    return kinds


def draw_arg(rng: random.Random, kind: str) -> int:
    if kind in ("loss", "duplicate"):
        return rng.randint(5, 40)
    if kind == "delay":
        return rng.randint(20, 600)
    if kind == "skew":
        return rng.randint(100, 120_000)
    if kind == "clock-step":
        return rng.choice((-1, 1)) * rng.randint(1, CLOCK_STEP_MAX_MS)
    return rng.randrange(64)


def draw_schedule(rng: random.Random, kinds: tuple[str, ...], load_ms: int, mean_gap_ms: int = 1_200) -> list[Fault]:
    """Faults through the load phase, overlapping freely."""
    faults: list[Fault] = []
    if not kinds:
        return faults
    at = rng.randint(100, mean_gap_ms)
    while at < load_ms:
        kind = rng.choice(kinds)
        faults.append(Fault(at, kind, rng.randint(FAULT_DURATION_MIN_MS, FAULT_DURATION_MAX_MS), rng.randrange(64), draw_arg(rng, kind)))
        at += rng.randint(mean_gap_ms // 3, mean_gap_ms * 5 // 3)
    return faults


class FaultInjector:
    def __init__(self, world: World, schedule: list[Fault], kinds: tuple[str, ...]) -> None:
        self.world = world
        self.schedule = sorted(schedule)
        self.rng = random.Random(world.rng.getrandbits(64))
        self.skew_on_restart = "skew" in kinds
        self.max_hosts = len(world.hosts) + EXTRA_HOSTS_MAX
        self.injected: dict[str, int] = {}
        self.log: list[str] = []
        self._undo: dict[int, object] = {}  # fault id -> how to heal it
        self.admin = Process("admin", 1, world._exception)
        self.admin_endpoint = Endpoint(world.net, "admin", self.admin, 3 * world.limits.request_timeout_ms)

    def arm(self) -> None:
        for fault_id, fault in enumerate(self.schedule):
            self.world.loop.at(fault.at_ms, lambda i=fault_id, f=fault: self._inject(i, f))

    @property
    def total(self) -> int:
        return sum(self.injected.values())

    def _note(self, text: str) -> None:
        self.log.append(f"{self.world.loop.now_ms:>7}ms {text}")
        self.world.loop.trace("fault", text)

    def _inject(self, fault_id: int, fault: Fault) -> None:
        world = self.world
        names = sorted(world.hosts)
        name = names[fault.target % len(names)]
        host = world.hosts[name]
        net = world.net
        kind = fault.kind
        undo: object = None
        if kind == "loss":
            net.faults.loss[fault_id] = fault.arg / 100
            undo = lambda: net.faults.loss.pop(fault_id, None)  # noqa: E731
            what = f"loss +{fault.arg}%"
        elif kind == "duplicate":
            net.faults.duplicate[fault_id] = fault.arg / 100
            undo = lambda: net.faults.duplicate.pop(fault_id, None)  # noqa: E731
            what = f"duplication +{fault.arg}%"
        elif kind == "delay":
            net.faults.delay_ms[fault_id] = fault.arg
            undo = lambda: net.faults.delay_ms.pop(fault_id, None)  # noqa: E731
            what = f"delays +0..{fault.arg}ms"
        elif kind in ("partition", "isolate", "oneway"):
            if kind == "partition":
                size = 1 + fault.arg % max(1, (len(names) - 1) // 2)
                minority = sorted(self.rng.sample(names, size))
                rest = [n for n in names if n not in minority]
                pairs = {(a, b) for a in minority for b in rest} | {(b, a) for a in minority for b in rest}
                what = f"partition {','.join(minority)} | {','.join(rest)}"
            elif kind == "isolate":
                pairs = {(name, b) for b in names if b != name} | {(b, name) for b in names if b != name}
                what = f"isolate {name}"
            elif fault.arg % 2 == 0:
                pairs = {(name, b) for b in names if b != name}
                what = f"one-way: {name} cannot send"
            else:
                pairs = {(b, name) for b in names if b != name}
                what = f"one-way: {name} cannot receive"
            net.set_cut(fault_id, frozenset(pairs))
            undo = lambda: net.clear_cut(fault_id)  # noqa: E731
        elif kind == "crash":
            if not host.up:
                return
            world.crash(host)

            def undo() -> None:
                skew = self.rng.randint(-RESTART_SKEW_MS, RESTART_SKEW_MS) if self.skew_on_restart else None
                world.restart(host, skew)

            what = f"crash {name}"
        elif kind == "host-crash":
            machines = sorted(world.machines)
            machine = machines[fault.target % len(machines)]
            crashed = world.crash_machine(machine)
            if not crashed:
                return

            def undo() -> None:
                # One machine, one clock: its nodes come back with the same skew.
                skew = self.rng.randint(-RESTART_SKEW_MS, RESTART_SKEW_MS) if self.skew_on_restart else None
                world.restore_machine(machine, skew)

            what = f"crash machine {machine} ({world.machines[machine].location}): {', '.join(h.name for h in crashed)}"
        elif kind == "pause":
            if host.process is None or host.process.paused:
                return
            process = host.process
            world.pause(host)

            def undo() -> None:
                if host.process is process:
                    world.resume(host)

            what = f"pause {name}"
        elif kind == "skew":
            host.skew_ms += fault.arg
            what = f"clock of {name} jumps +{fault.arg}ms"
        elif kind == "clock-step":
            step_ms = fault.arg
            host.wall_step_ms += step_ms
            if step_ms % 2 == 0:

                def undo() -> None:
                    host.wall_step_ms -= step_ms

            what = f"wall clock of {name} steps {step_ms:+}ms" + (" until the fault ends" if step_ms % 2 == 0 else " for good")
        elif kind == "join":
            if len(world.hosts) >= self.max_hosts:
                return
            seeds = [h for h in world.up_hosts() if h.name in self._members()]
            if not seeds:
                return
            seed = seeds[fault.target % len(seeds)]
            new = world.add_host()
            self._admin(new.address, lambda rid: messages.ClusterJoin(id=rid, seed=seed.address), f"join {new.name} via {seed.name}")
            what = f"join {new.name} via {seed.name}"
        elif kind == "leave":
            members = self._members()
            if len(members) <= world.params.n:
                return
            name = members[fault.target % len(members)]
            self._admin(world.hosts[name].address, lambda rid: messages.ClusterLeave(id=rid), f"leave {name}")
            what = f"leave {name}"
        elif kind in (DISK_ERROR, DISK_FULL):
            disk = host.disk
            if disk is None:
                return
            disk.faults[kind] += 1  # counted: overlapping faults of one kind heal one at a time
            undo = lambda: disk.faults.subtract((kind,))  # noqa: E731
            what = f"{'every commit fails' if kind == DISK_ERROR else 'the disk is full'} on {name}"
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.injected[kind] = self.injected.get(kind, 0) + 1
        self._note(f"{what} (fault {fault_id}: {fault})")
        if undo is not None:
            self._undo[fault_id] = undo
            world.loop.after(fault.duration_ms, lambda: self._heal(fault_id))

    def _heal(self, fault_id: int) -> None:
        undo = self._undo.pop(fault_id, None)
        if undo is not None:
            self._note(f"heal fault {fault_id}")
            undo()  # type: ignore[operator]

    def heal_all(self) -> None:
        for fault_id in sorted(self._undo):
            self._heal(fault_id)
        for machine in sorted(self.world.machines):
            self.world.restore_machine(machine)
        for host in self.world.hosts.values():
            if not host.up:
                self.world.restart(host)
            elif host.process is not None and host.process.paused:
                self.world.resume(host)
        self.world.net.heal()
        self._note("healed everything")

    def _members(self) -> list[str]:
        """Joined members, as the union of every running node's view says."""
        merged: Membership | None = None
        for host in self.world.up_hosts():
            assert host.node is not None
            view = host.node.cluster.membership
            if view.params != self.world.params:
                continue
            merged = view if merged is None else merged.merge(view)
        if merged is None:
            return []
        return sorted(name for name, m in merged.members.items() if m.status == JOINED)

    def _admin(self, address: str, build: object, what: str) -> None:
        def answered(answer: object) -> None:
            self._note(f"{what}: {answer}")

        self.admin_endpoint.send_to_address(address, build, lambda answer: self.admin.run(lambda: answered(answer)))  # type: ignore[arg-type]
