"""The simulated cluster: machines, the node processes they run, the network and the disks, on one clock.

A `Host` is one node's place on a machine: a name, an address and a MemoryStore that survives
crashes (the node's data directory). It runs at most one node process at a time; each start builds
a new `dynd.core.node.Node` from what the store committed (its membership comes from the meta
record "membership"), with its own disk (overlay and commit queue) and its own network endpoint, so
nothing of a crashed incarnation leaks into the next. Faults that target "a host" (`dynd.sim.faults`)
target one such node process.

A `Machine` is a server: it runs one or more hosts (the workers of `dynd --workers K`) and has a
location, `zone-<z>/host-<m>` (`dynd.protocol.locations`), which every node on it shares; machines
are dealt to zones in turn. `nodes_per_machine` lays the starting nodes out: k each (the last
machine takes what is left), or an explicit count per machine. The default is one node per machine
in one zone. Every node is started with its machine's location (`Node(location=...)`), as
`dynd --location` does, and the starting membership records it, so placement sees where nodes run.
Losing a machine (`crash_machine`, the `host-crash` fault) loses every node on it at once.

Each node process has two clocks, as a real one does. Its monotonic clock (`Node(now_ms=...)`, for
every deadline and timer) is the loop's virtual time plus an offset of its own, fixed for the life
of the process: a monotonic clock has an arbitrary origin per process, so nothing may depend on its
value, only on its differences. Its wall clock (`Node(wall_ms=...)`, for sibling timestamps and
tombstone and hint age) is EPOCH_MS plus virtual time plus the host's `skew_ms` (set by the skew
fault, and at a restart) plus its `wall_step_ms` (the clock-step fault: the machine's clock stepped
by NTP or an operator; it survives a restart of the process).

Every random choice comes from one `random.Random(seed)`: the world draws a sub-stream for each
concern (network, each disk, each node, the workload) in a fixed order, so adding a draw in one
concern does not reshuffle the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynd.core.limits import Limits
from dynd.core.membership import JOIN, ClusterParams, Membership, create
from dynd.core.actors import ACTOR_META, CLEAN_STOP_META, actor_at_start
from dynd.core.node import Node
from dynd.core.ops import PutMeta
from dynd.core.ports import Storage
from dynd.protocol.locations import check_location
from dynd.sim.disk import SimDisk
from dynd.sim.loop import Loop
from dynd.sim.network import Endpoint, NetConfig, SimNetwork
from dynd.sim.process import Process
from dynd.storage.memory import MemoryStore

MEMBERSHIP_META = "membership"
TICK = "tick"  # the kind nodes' timers count under in `SimNetwork.traffic` (given a clock)
# Wall clocks read like wall clocks (timestamps order context entries for pruning), and a clock
# set back at a restart or stepped back must not go below zero.
EPOCH_MS = 1_700_000_000_000
MONOTONIC_ORIGIN_MAX_MS = 1 << 40  # a process's monotonic clock starts anywhere below this

# How long a drawn fault lasts (dynd.sim.faults).
FAULT_DURATION_MIN_MS = 200
FAULT_DURATION_MAX_MS = 4_000

# Short intervals: more gossip, handoff and timeouts per simulated second.
SIM_LIMITS = Limits(
    request_timeout_ms=1_000,
    tick_interval_ms=50,
    peer_retry_ms=500,
    gossip_interval_ms=300,
    handoff_interval_ms=600,
    handoff_batch_keys=4,
    ae_interval_ms=1_000,
    reap_interval_ms=500,
    # The operator's promise behind the grace period is that no node stays unreachable longer
    # (see dynd.core.reaper): a fault lasts at most FAULT_DURATION_MAX_MS, so this keeps it.
    tombstone_grace_ms=5_000,
)


@dataclass(frozen=True)
class Failure:
    checker: str
    message: str
    key: bytes | None = None
    at_ms: int = 0


@dataclass
class Host:
    name: str
    address: str
    machine: str = ""  # the name of the Machine this node runs on
    location: str = ""  # that machine's location
    store: MemoryStore = field(default_factory=MemoryStore)
    seeds: tuple[str, ...] = ()
    process: Process | None = None
    node: Node | None = None
    disk: SimDisk | None = None
    endpoint: Endpoint | None = None
    incarnations: int = 0
    skew_ms: int = 0
    wall_step_ms: int = 0  # the clock-step fault: the machine's wall clock stepped this far
    rng: random.Random = field(default_factory=random.Random)

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.alive

    @property
    def running(self) -> bool:
        """Up and not paused: serving requests now."""
        return self.up and not self.process.paused  # type: ignore[union-attr]


@dataclass
class Machine:
    name: str  # host-<m>
    location: str  # zone-<z>/host-<m>
    hosts: list[str] = field(default_factory=list)  # the nodes it runs, in the order they came
    down: bool = False  # crashed as a whole: none of its nodes can start until it comes back


StorageWrapper = Callable[["Host", SimDisk], Storage]


def machine_layout(nodes: int, nodes_per_machine: int | Sequence[int]) -> list[int]:
    """How many of `nodes` each machine runs: `k` per machine (the last takes the rest) or, given a
    sequence, exactly those counts (which must add up to `nodes`)."""
    if nodes < 1:
        raise ValueError(f"a world needs at least one node, not {nodes}")
    if isinstance(nodes_per_machine, int):
        if nodes_per_machine < 1:
            raise ValueError(f"nodes_per_machine must be at least 1, not {nodes_per_machine}")
        full, rest = divmod(nodes, nodes_per_machine)
        return [nodes_per_machine] * full + ([rest] if rest else [])
    counts = [int(k) for k in nodes_per_machine]
    if not counts or any(k < 1 for k in counts):
        raise ValueError(f"every machine runs at least one node; got {counts}")
    if sum(counts) != nodes:
        raise ValueError(f"nodes_per_machine {counts} lays out {sum(counts)} nodes, not {nodes}")
    return counts


class World:
    def __init__(
        self,
        seed: int,
        *,
        nodes: int,
        params: tuple[int, int, int, int],  # n, r, w, partitions
        limits: Limits = SIM_LIMITS,
        net: NetConfig | None = None,
        commit_delay_ms: tuple[int, int] = (1, 6),
        wrap_storage: StorageWrapper | None = None,
        nodes_per_machine: int | Sequence[int] = 1,
        zones: int = 1,
    ) -> None:
        layout = machine_layout(nodes, nodes_per_machine)
        if zones < 1:
            raise ValueError(f"zones must be at least 1, not {zones}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.loop = Loop()
        self.limits = limits
        self.commit_delay_ms = commit_delay_ms
        self.wrap_storage = wrap_storage
        self.failures: list[Failure] = []
        self.net = SimNetwork(self.loop, self._substream(), net or NetConfig(), self.report)
        self.workload_rng = self._substream()
        n, r, w, partitions = params
        self.params = ClusterParams(f"sim-{seed}", n, r, w, partitions)
        self.hosts: dict[str, Host] = {}
        self.zones = zones
        self.machines: dict[str, Machine] = {}
        names = [f"n{i}" for i in range(1, nodes + 1)]
        machine_of: list[str] = []
        for count in layout:
            machine_of += [self._new_machine().name] * count
        membership = Membership(self.params)
        for name, machine in zip(names, machine_of):
            location = self.machines[machine].location
            membership = membership.with_event(JOIN, name, origin=names[0], address=self._address(name), location=location)
        stored = membership.encode()
        self._first_membership = (stored, Membership.decode(stored))
        for name, machine in zip(names, machine_of):
            host = self._new_host(name, machine)
            host.store.write([PutMeta(MEMBERSHIP_META, stored)])
            self.start(host)

    # ---- hosts ----

    def _substream(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    @staticmethod
    def _address(name: str) -> str:
        return f"{name}.sim:7400"

    def _new_machine(self) -> Machine:
        """One more machine, in the next zone in turn. (No random draw: adding machines moves no
        other stream.)"""
        number = len(self.machines) + 1
        name = f"host-{number}"
        zone = f"zone-{(number - 1) % self.zones + 1}"
        machine = Machine(name, check_location(f"{zone}/{name}"))
        self.machines[name] = machine
        return machine

    def _new_host(self, name: str, machine: str) -> Host:
        where = self.machines[machine]
        host = Host(name, self._address(name), machine, where.location, seeds=(self._address("n1"),), rng=self._substream())
        self.hosts[name] = host
        where.hosts.append(name)
        self.net.register(name, host.address)
        return host

    def add_host(self, machine: str | None = None) -> Host:
        """A new node with a fresh one-node cluster of its own (it joins through a seed later), on
        `machine` (another worker there) or, by default, on a new machine of its own."""
        if machine is not None and machine not in self.machines:
            raise ValueError(f"no machine {machine!r}; there are {', '.join(sorted(self.machines))}")
        name = f"n{len(self.hosts) + 1}"
        host = self._new_host(name, machine if machine is not None else self._new_machine().name)
        alone = create(ClusterParams(f"sim-{self.seed}-{name}", *self._params_tuple()), name, host.address, host.location)
        host.store.write([PutMeta(MEMBERSHIP_META, alone.encode())])
        self.start(host)
        return host

    def _params_tuple(self) -> tuple[int, int, int, int]:
        p = self.params
        return p.n, p.r, p.w, p.partitions

    def monotonic_of(self, host: Host) -> Callable[[], int]:
        """The monotonic clock of the host's next process: virtual time from an origin of its
        own. The origin is drawn from (seed, host, start), not from the world's random streams,
        so it moves no other draw."""
        loop = self.loop
        origin_ms = random.Random(f"{self.seed}/{host.name}/{host.incarnations}").randrange(MONOTONIC_ORIGIN_MAX_MS)
        return lambda: origin_ms + loop.now_ms

    def wall_of(self, host: Host) -> Callable[[], int]:
        """The host's wall clock: it follows its skew and steps, whatever process runs."""
        loop = self.loop
        return lambda: EPOCH_MS + loop.now_ms + host.skew_ms + host.wall_step_ms

    def start(self, host: Host) -> None:
        assert not host.up
        host.incarnations += 1
        process = Process(host.name, host.incarnations, self._exception)
        disk = SimDisk(host.store, process, self.loop, random.Random(host.rng.getrandbits(64)), self.commit_delay_ms)
        storage: Storage = self.wrap_storage(host, disk) if self.wrap_storage is not None else disk
        endpoint = Endpoint(self.net, host.name, process, self.limits.request_timeout_ms, host.address)
        meta = host.store.get_meta(MEMBERSHIP_META)
        # Simulated processes never stop cleanly: every start takes a new actor epoch, stored
        # before the node serves, as the daemon does after a crash.
        actor, actor_ops = actor_at_start(host.name, host.store.get_meta(ACTOR_META), host.store.get_meta(CLEAN_STOP_META), host.rng)
        host.store.write(actor_ops)
        assert meta is not None, "a host's store always holds a membership"
        host.process, host.disk, host.endpoint = process, disk, endpoint
        node_rng = random.Random(host.rng.getrandbits(64))

        def build() -> None:
            host.node = Node(
                host.name,
                host.address,
                self._membership_read(meta),
                storage,
                endpoint,
                limits=self.limits,
                now_ms=self.monotonic_of(host),
                wall_ms=self.wall_of(host),
                rng=node_rng,
                seeds=host.seeds,
                actor=actor,
                boot=host.incarnations,  # grows with every start, as the daemon's persisted boot does
                location=host.location,  # every node of a machine at the machine's
            )

        process.run(build)
        if host.node is None:
            process.crash()
            return
        node = host.node
        self.net.listen(host.address, process, node.handle, getattr(node, "receive_datagram", None))
        self.loop.trace("start", host.name, host.incarnations)
        self.loop.after(host.rng.randint(1, self.limits.tick_interval_ms), lambda: self._tick(process, node))

    def _membership_read(self, stored: bytes) -> Membership:
        """The membership a starting node reads from its store. The nodes of a new world all start
        from the same bytes: they share one decoded value (immutable; its fold is made once) rather
        than each folding the whole history again, which with hundreds of nodes is most of the time
        building a world takes. Any other bytes are decoded for the node alone."""
        first_stored, first = self._first_membership
        return first if stored == first_stored else Membership.decode(stored)

    def _tick(self, process: Process, node: Node) -> None:
        if not process.alive:
            return
        if not process.paused:  # a stopped process does not tick; it catches up when resumed
            if self.net.traffic.clock is not None:
                process.run(lambda: self.net.traffic.run_timed(process.host, lambda: node.tick() or TICK))
            else:
                process.run(node.tick)
        self.loop.after(self.limits.tick_interval_ms, lambda: self._tick(process, node))

    def crash(self, host: Host) -> None:
        if host.process is None:
            return
        host.process.crash()
        self.net.unlisten(host.address)
        host.process = host.node = host.disk = host.endpoint = None
        self.loop.trace("crash", host.name)

    def restart(self, host: Host, skew_ms: int | None = None) -> None:
        if host.up or self.machines[host.machine].down:
            return
        if skew_ms is not None:
            host.skew_ms = skew_ms  # a clock may be set back across a restart
        self.start(host)

    def move(self, host: Host, address: str) -> None:
        """A stopped host comes back at another address (a new `advertise`): its next process
        listens there, and datagrams it sends carry it as their source."""
        assert not host.up, "a host moves only while its node is down"
        self.net.host_of_address.pop(host.address, None)  # nothing answers at the old address
        host.address = address
        self.net.register(host.name, address)
        self.loop.trace("move", host.name, address)

    def pause(self, host: Host) -> None:
        if host.process is not None:
            host.process.pause()
            self.loop.trace("pause", host.name)

    def resume(self, host: Host) -> None:
        if host.process is not None and host.process.paused:
            self.loop.trace("resume", host.name)
            host.process.resume()

    def up_hosts(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.up]

    # ---- machines ----

    def location_of(self, name: str) -> str:
        """The location of node `name` (the machine it runs on)."""
        return self.hosts[name].location

    def hosts_of(self, machine: str) -> list[Host]:
        return [self.hosts[name] for name in self.machines[machine].hosts]

    def crash_machine(self, machine: str) -> list[Host]:
        """The machine dies (power, kernel panic, its one systemd unit killed): every node process
        on it crashes at the same virtual instant, and none restarts until `restore_machine`.
        Returns the nodes that were up (none: the machine was down already, and nothing changes)."""
        where = self.machines[machine]
        if where.down:
            return []
        where.down = True
        crashed = [host for host in self.hosts_of(machine) if host.up]
        self.loop.trace("crash-machine", machine, [host.name for host in crashed])
        for host in crashed:
            self.crash(host)
        return crashed

    def restore_machine(self, machine: str, skew_ms: int | None = None) -> None:
        """The machine is back (rebooted; its unit starts every worker): every node on it that is
        down starts, with the machine's one clock `skew_ms` when given."""
        where = self.machines[machine]
        if not where.down:
            return
        where.down = False
        self.loop.trace("restore-machine", machine)
        for host in self.hosts_of(machine):
            self.restart(host, skew_ms)

    # ---- failures ----

    def report(self, checker: str, message: str, key: bytes | None = None) -> None:
        self.failures.append(Failure(checker, message, key, self.loop.now_ms))

    def _exception(self, process: str, formatted: str) -> None:
        self.report("exception", f"{process} raised:\n{formatted}")

    def run_for(self, ms: int, stop: Callable[[], bool] | None = None) -> None:
        self.loop.run_until(self.loop.now_ms + ms, stop)

    def inside(self, host: Host, fn: Callable[[], Any]) -> None:
        """Run `fn` inside the host's current process (as if the node did it itself)."""
        if host.process is not None:
            host.process.run(fn)
