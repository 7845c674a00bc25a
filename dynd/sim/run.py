"""One simulation run: build the cluster, load it under faults, heal, quiesce, read back, check.

Phases, all in virtual time:
1. load: the set-add clients (adding to and now and then clearing their keys) run for `seconds`
   while the fault schedule plays out;
2. drain: clients finish the operation in hand (faults still active);
3. heal: every fault ends (crashed nodes restart, paused ones resume, links mend, loss stops);
4. quiesce: run until every node has the same membership and none holds data it should hand off
   (or `settle_max_ms` passes: the membership checker then says so);
5. final read: every key is read at R=N through every node; these reads also read-repair it (and
   anti-entropy runs throughout). Then the repairs are left to land;
6. reap: run until no node holds a tombstone past its grace period (the reapers remove them a
   partition at a time), so the stores compared next are settled;
7. check: `checkers.check` over the history, the final reads and each primary's committed store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from dynd.core.limits import Limits
from dynd.core.membership import LEAVING, Membership
from dynd.core.partition import partition_of
from dynd.core.reaper import is_expired_tombstone
from dynd.protocol import messages
from dynd.sim import checkers
from dynd.sim.faults import FAULT_KINDS, Fault, FaultInjector, draw_schedule
from dynd.sim.network import Endpoint, NetConfig
from dynd.sim.process import Process
from dynd.sim.workload import SetAddWorkload, decode_set
from dynd.sim.world import SIM_LIMITS, Failure, StorageWrapper, World

SETTLE_STEP_MS = 250
FINAL_READ_ROUNDS = 3
JOIN_RETRY_MS = 500
# Group commit delays (min, max): a slow disk keeps writes queued, visible but not durable, longer.
COMMIT_DELAYS_MS = ((1, 6), (1, 40), (5, 200))


@dataclass(frozen=True)
class SimConfig:
    seed: int
    nodes: int = 5
    # Nodes per machine (k each, the last machine takes the rest) or a count per machine, and the
    # zones machines are dealt to (see dynd.sim.world). One node per machine: no machine faults.
    nodes_per_machine: int | tuple[int, ...] = 1
    zones: int = 1
    seconds: float = 6.0
    faults: tuple[str, ...] = FAULT_KINDS
    schedule: tuple[Fault, ...] | None = None  # None: drawn from the seed
    n: int = 3
    r: int = 2
    w: int = 2
    partitions: int = 32
    keys: int = 6
    clients: int = 4
    clear_ratio: float = 0.05  # the share of ops that delete their key (see dynd.sim.workload)
    settle_max_ms: int = 60_000
    commit_delay_ms: tuple[int, int] | None = None  # None: drawn from the seed (fast, slow or very slow disks)
    limits: Limits = SIM_LIMITS
    net: NetConfig = field(default_factory=NetConfig)

    def replay_command(self) -> str:
        faults = ",".join(self.faults) if self.faults else "none"
        command = f"python -m dynd.sim --seed {self.seed} --nodes {self.nodes} --seconds {self.seconds:g} --faults {faults}"
        if self.nodes_per_machine != SimConfig.nodes_per_machine:
            layout = self.nodes_per_machine if isinstance(self.nodes_per_machine, int) else ",".join(map(str, self.nodes_per_machine))
            command += f" --nodes-per-machine {layout}"
        if self.zones != SimConfig.zones:
            command += f" --zones {self.zones}"
        if self.clear_ratio != SimConfig.clear_ratio:
            command += f" --clear-ratio {self.clear_ratio:g}"
        if self.schedule is not None:
            command += "   # with an explicit schedule: " + "; ".join(map(str, self.schedule))
        return command


@dataclass
class SimResult:
    config: SimConfig
    trace_hash: str
    simulated_ms: int
    messages: int
    events: int
    faults_injected: dict[str, int]
    ops: dict[str, int]
    failures: list[Failure]
    wall_s: float
    hosts: int
    fault_log: list[str]
    history_of: dict[bytes, list[str]]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def node_seconds(self) -> float:
        return self.hosts * self.simulated_ms / 1000

    def report(self, history_lines: int = 15) -> str:
        if self.ok:
            return f"seed {self.config.seed}: ok"
        out = []
        by_checker: dict[str, list[Failure]] = {}
        for failure in self.failures:
            by_checker.setdefault(failure.checker, []).append(failure)
        for checker, failures in sorted(by_checker.items()):
            out.append(f"FAILED seed={self.config.seed} checker={checker} ({len(failures)} failure(s))")
            first = failures[0]
            out.append(f"  {first.message}")
            if first.key is not None:
                out.append(f"  history of {first.key!r} (last {history_lines} ops):")
                out += [f"    {line}" for line in self.history_of.get(first.key, [])[-history_lines:]]
        out.append("  faults:")
        out += [f"    {line}" for line in self.fault_log[-25:]]
        out.append(f"  replay: {self.config.replay_command()}")
        return "\n".join(out)


class Simulation:
    def __init__(self, config: SimConfig, *, wrap_storage: StorageWrapper | None = None) -> None:
        self.config = config
        c = config
        commit_delay_ms = c.commit_delay_ms or COMMIT_DELAYS_MS[c.seed % len(COMMIT_DELAYS_MS)]
        self.world = World(
            c.seed,
            nodes=c.nodes,
            params=(c.n, c.r, c.w, c.partitions),
            limits=c.limits,
            net=c.net,
            commit_delay_ms=commit_delay_ms,
            wrap_storage=wrap_storage,
            nodes_per_machine=c.nodes_per_machine,
            zones=c.zones,
        )
        self.workload = SetAddWorkload(self.world, clients=c.clients, keys=c.keys, clear_ratio=c.clear_ratio)
        load_ms = int(c.seconds * 1000)
        schedule = list(c.schedule) if c.schedule is not None else draw_schedule(self.world.rng, c.faults, load_ms)
        self.injector = FaultInjector(self.world, schedule, c.faults)
        self.checker_process = Process("checker", 1, self.world._exception)
        self.checker_endpoint = Endpoint(self.world.net, "checker", self.checker_process, 3 * c.limits.request_timeout_ms)
        self.state = checkers.FinalState()

    def run(self) -> SimResult:
        started = time.perf_counter()
        world, c = self.world, self.config
        self.workload.start()
        self.injector.arm()
        world.run_for(int(c.seconds * 1000))
        self.workload.stop()
        world.run_for(self.workload.client_timeout_ms + self.workload.think_ms + 1, stop=lambda: self.workload.idle)
        self.injector.heal_all()
        self._quiesce()
        self._final_reads()
        self._await_reaping()
        self._collect()
        failures = list(world.failures) + checkers.check(self.workload.history, self.state, self.workload.keys)
        history_of = {key: [op.describe() for op in self.workload.history.of_key(key)] for key in self.workload.keys}
        return SimResult(
            config=c,
            trace_hash=world.loop.trace_hash,
            simulated_ms=world.loop.now_ms,
            messages=world.net.stats.sent,
            events=world.loop.events_run,
            faults_injected=dict(sorted(self.injector.injected.items())),
            ops=self.workload.history.counts(),
            failures=failures,
            wall_s=time.perf_counter() - started,
            hosts=len(world.hosts),
            fault_log=self.injector.log,
            history_of=history_of,
        )

    # ---- quiesce ----

    def _quiesce(self) -> None:
        world = self.world
        deadline = world.loop.now_ms + self.config.settle_max_ms
        while world.loop.now_ms < deadline:
            self._retry_joins()
            world.run_for(SETTLE_STEP_MS)
            if self._quiescent():
                # one more round of gossip and handoff so the last changes land everywhere
                world.run_for(4 * world.limits.gossip_interval_ms)
                if self._quiescent():
                    return

    def _retry_joins(self) -> None:
        """A join whose request was lost is retried, as an operator would (it is idempotent)."""
        world = self.world
        seeds = [h for h in world.up_hosts() if h.node is not None and h.node.cluster.membership.params == world.params]
        for host in world.up_hosts():
            if host.node is None or host.node.cluster.membership.params == world.params or not seeds:
                continue
            if world.loop.now_ms - getattr(host, "join_tried_ms", -JOIN_RETRY_MS) < JOIN_RETRY_MS:
                continue
            host.join_tried_ms = world.loop.now_ms  # type: ignore[attr-defined]
            seed = seeds[0]
            self.injector._admin(host.address, lambda rid, a=seed.address: messages.ClusterJoin(id=rid, seed=a), f"retry join {host.name} via {seed.name}")

    def _quiescent(self) -> bool:
        hosts = self.world.up_hosts()
        nodes = [h.node for h in hosts if h.node is not None]
        if len(nodes) != len(self.world.hosts):
            return False
        digests = {node.cluster.membership.digest for node in nodes}
        if len(digests) != 1:
            return False
        membership: Membership = nodes[0].cluster.membership
        if any(m.status == LEAVING for m in membership.members.values()):
            return False
        return all(not node.handoff.running and not node.handoff.partitions_to_move() for node in nodes)

    # ---- final reads ----

    def _final_reads(self) -> None:
        world, c = self.world, self.config
        keys = self.workload.keys
        unread = set(keys)
        for _ in range(FINAL_READ_ROUNDS):
            outstanding = 0

            def answered(key: bytes, answer: Any) -> None:
                nonlocal outstanding
                outstanding -= 1
                if isinstance(answer, messages.GetOk):
                    elements: set[str] = set()
                    for sibling in answer.siblings:
                        elements |= decode_set(sibling.value)
                    self.state.reads[key] = elements
                    self.state.read_dots[key] = {(sibling.actor, sibling.counter) for sibling in answer.siblings}
                    unread.discard(key)

            for name in sorted(world.hosts):
                host = world.hosts[name]
                for key in keys:
                    outstanding += 1
                    self.checker_endpoint.send_to_address(
                        host.address, lambda rid, k=key: messages.Get(id=rid, key=k, r=c.n), lambda answer, k=key: answered(k, answer)
                    )
                # one node at a time: its repairs land before the next node reads
                world.run_for(self.checker_endpoint.timeout_ms + 1, stop=lambda: outstanding == 0)
                world.run_for(c.limits.request_timeout_ms // 2)  # the repairs land
            if not unread:
                break
        self.state.unread = unread

    def _await_reaping(self) -> None:
        """Let the reapers remove every expired tombstone (they go a partition at a time), so the
        replicas compared are settled; one the reapers never remove shows as divergence."""
        world = self.world
        deadline = world.loop.now_ms + self.config.settle_max_ms
        while world.loop.now_ms < deadline and self._expired_tombstones_held():
            world.run_for(SETTLE_STEP_MS)

    def _expired_tombstones_held(self) -> bool:
        grace_ms = self.config.limits.tombstone_grace_ms
        for host in self.world.up_hosts():
            node = host.node
            if node is None:
                continue
            for key in self.workload.keys:
                record = host.store.get_object(partition_of(key, self.world.params.partitions), key)
                if record is not None and is_expired_tombstone(record, node.wall_ms(), grace_ms):
                    return True
        return False

    def _collect(self) -> None:
        world = self.world
        nodes = {h.name: h.node for h in world.up_hosts() if h.node is not None}
        self.state.digests = {name: node.cluster.membership.digest for name, node in sorted(nodes.items())}
        if not nodes:
            return
        view = nodes[sorted(nodes)[0]]
        self.state.n = world.params.n
        self.state.primaries = {p: view.cluster.preference_list(p).primaries for p in range(world.params.partitions)}
        self.state.locations = {name: world.location_of(name) for name in world.hosts}
        for key in self.workload.keys:
            partition = partition_of(key, world.params.partitions)
            primaries = view.cluster.preference_list(partition).primaries
            self.state.replicas[key] = {p: world.hosts[p].store.get_object(partition, key) for p in primaries if p in world.hosts}


def run_seed(config: SimConfig, *, wrap_storage: StorageWrapper | None = None) -> SimResult:
    return Simulation(config, wrap_storage=wrap_storage).run()
