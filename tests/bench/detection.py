"""Failure-detection times and false positives of the SWIM detector (dynd/core/swim.py), simulated.

    python tests/bench/detection.py [--nodes 5] [--trials 30] [--seed 1] [--loaded-minutes 10]

Runs the pure state machine with the default limits over `SimNet`, a simulated network with a
virtual clock: every datagram takes a seeded random delay (quiet: 0-20 ms; loaded: 0-200 ms, and
each node's tick comes up to 50 ms late, as when the event loop is busy serving writes).

- kill: a random node stops for good after a random warm-up; measured is the time until every
  other member says it is dead (the acceptance target: median <= 8 s, max <= 15 s).
- pause: a random node is stopped for 2 s (SIGSTOP: its datagrams wait in its socket buffer) and
  resumed; counted are dead verdicts about anyone (target: 0) and suspicions.
- loaded: no faults for `--loaded-minutes` simulated minutes under load; counted are suspicions and
  dead verdicts (target: 0).

Everything is drawn from the seed, so the same flags give the same numbers. Exits 1 when a target
is missed. `SimNet` is also the fake link of tests/unit/test_swim.py.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from dynd.core.limits import Limits
from dynd.core.swim import Swim

DETECTION_MEDIAN_MS_MAX = 8_000
DETECTION_MS_MAX = 15_000


@dataclass
class Verdict:
    at_ms: int
    observer: str
    member: str
    status: str


@dataclass
class _Host:
    name: str
    address: str
    swim: Swim
    killed: bool = False
    paused_until_ms: int = 0
    inbox: list[tuple[str, bytes]] = field(default_factory=list)  # datagrams held while paused
    tick_scheduled: bool = False


class SimNet:
    """Swim nodes on a virtual clock; datagrams delayed, dropped or held as the faults say.

    Deterministic for a given seed. `delay_ms` and `tick_late_ms` are ranges (lo, hi) drawn
    uniformly per datagram and per tick; `drop` cuts links; `kill`, `pause` and `restart` act on
    one node.
    """

    def __init__(
        self,
        names: list[str],
        *,
        seed: int,
        limits: Limits | None = None,
        delay_ms: tuple[int, int] = (0, 20),
        tick_late_ms: tuple[int, int] = (0, 0),
        loss: float = 0.0,
    ) -> None:
        self.limits = limits or Limits()
        self.rng = random.Random(seed)
        self.now = 0
        self.delay_ms = delay_ms
        self.tick_late_ms = tick_late_ms
        self.loss = loss
        self.cut: set[tuple[str, str]] = set()  # (from name, to name): datagrams dropped
        self.verdicts: list[Verdict] = []
        self.sent = 0
        self.sent_bytes = 0
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._counter = 0
        self.addresses = {name: f"10.0.0.{index + 1}:7400" for index, name in enumerate(names)}
        self._by_address = {address: name for name, address in self.addresses.items()}
        self.hosts: dict[str, _Host] = {}
        self.boots: dict[str, int] = {}  # each start of a node takes the next boot, as the daemon's do
        for name in names:
            self._start(name, incarnation=0)

    # ---- nodes ----

    def _start(self, name: str, incarnation: int) -> None:
        self.boots[name] = self.boots.get(name, 0) + 1
        swim = Swim(
            name,
            limits=self.limits,
            now_ms=lambda: self.now,
            rng=random.Random(self.rng.random()),
            incarnation=incarnation,
            boot=self.boots[name],
        )
        swim.set_members(self.addresses)
        swim.on_change.append(lambda member, status, observer=name: self.verdicts.append(Verdict(self.now, observer, member, status)))
        self.hosts[name] = _Host(name, self.addresses[name], swim)
        self._schedule_tick(self.hosts[name], self.rng.randint(1, self.limits.tick_interval_ms))

    def swim(self, name: str) -> Swim:
        return self.hosts[name].swim

    def kill(self, name: str) -> None:
        self.hosts[name].killed = True

    def restart(self, name: str, incarnation: int = 0) -> None:
        """A new process, fresh state: it starts at `incarnation` (0 unless persisted)."""
        self.hosts[name].killed = True
        self._start(name, incarnation)

    def pause(self, name: str, duration_ms: int) -> None:
        host = self.hosts[name]
        host.paused_until_ms = self.now + duration_ms
        self.at(host.paused_until_ms, lambda: self._resume(host))

    def _resume(self, host: _Host) -> None:
        if host.killed or self.now < host.paused_until_ms:
            return
        held, host.inbox = host.inbox, []
        for source, payload in held:
            self._deliver(host, source, payload)

    # ---- events ----

    def at(self, when_ms: int, action: Callable[[], None]) -> None:
        self._counter += 1
        heapq.heappush(self._events, (when_ms, self._counter, action))

    def run_until(self, end_ms: int, stop: Callable[[], bool] = lambda: False) -> None:
        while self._events and self._events[0][0] <= end_ms:
            when, _, action = heapq.heappop(self._events)
            self.now = max(self.now, when)
            action()
            if stop():
                return
        self.now = max(self.now, end_ms)

    def run_for(self, duration_ms: int, stop: Callable[[], bool] = lambda: False) -> None:
        self.run_until(self.now + duration_ms, stop)

    def _schedule_tick(self, host: _Host, after_ms: int) -> None:
        self.at(self.now + after_ms, lambda: self._tick(host))

    def _tick(self, host: _Host) -> None:
        if host.killed:
            return
        if self.now < host.paused_until_ms:  # a stopped process ticks again when it resumes
            self.at(host.paused_until_ms, lambda: self._tick(host))
            return
        self._send(host, host.swim.tick())
        self._schedule_tick(host, self.limits.tick_interval_ms + self.rng.randint(*self.tick_late_ms))

    def _send(self, host: _Host, datagrams: list[tuple[str, bytes]]) -> None:
        for address, payload in datagrams:
            self.sent += 1
            self.sent_bytes += len(payload)
            target = self._by_address.get(address)
            if target is None or (host.name, target) in self.cut or (self.loss and self.rng.random() < self.loss):
                continue
            delay = self.rng.randint(*self.delay_ms)
            self.at(self.now + delay, lambda target=target, payload=payload: self._arrive(target, host.address, payload))

    def _arrive(self, name: str, source: str, payload: bytes) -> None:
        host = self.hosts[name]
        if host.killed:
            return
        if self.now < host.paused_until_ms:
            host.inbox.append((source, payload))
            return
        self._deliver(host, source, payload)

    def _deliver(self, host: _Host, source: str, payload: bytes) -> None:
        self._send(host, host.swim.receive(source, payload))

    # ---- views ----

    def says(self, observer: str, member: str) -> str:
        return self.hosts[observer].swim.status(member)

    def all_say(self, member: str, status: str) -> bool:
        return all(self.says(o, member) == status for o, h in self.hosts.items() if o != member and not h.killed)


# ---- trials ----

QUIET = dict(delay_ms=(0, 20), tick_late_ms=(0, 0))
LOADED = dict(delay_ms=(0, 200), tick_late_ms=(0, 50))


def names_for(nodes: int) -> list[str]:
    return [f"node{index + 1}" for index in range(nodes)]


def kill_trial(seed: int, nodes: int, mode: dict) -> tuple[int, list[int]]:
    """(ms until every member says dead, ms until each member said dead)."""
    net = SimNet(names_for(nodes), seed=seed, **mode)
    net.run_for(net.rng.randint(5_000, 15_000))
    victim = net.rng.choice(names_for(nodes))
    killed_at = net.now
    net.kill(victim)
    net.run_for(120_000, stop=lambda: net.all_say(victim, "dead"))
    if not net.all_say(victim, "dead"):
        return 120_000, []
    firsts: dict[str, int] = {}
    for verdict in net.verdicts:
        if verdict.member == victim and verdict.status == "dead" and verdict.at_ms >= killed_at:
            firsts.setdefault(verdict.observer, verdict.at_ms - killed_at)
    return net.now - killed_at, sorted(firsts.values())


def pause_trial(seed: int, nodes: int, mode: dict, pause_ms: int = 2_000) -> tuple[int, int]:
    """(dead verdicts, suspicions) in the 30 s after a node is stopped for `pause_ms`."""
    net = SimNet(names_for(nodes), seed=seed, **mode)
    net.run_for(net.rng.randint(5_000, 15_000))
    victim = net.rng.choice(names_for(nodes))
    started = net.now
    net.pause(victim, pause_ms)
    net.run_for(30_000)
    after = [v for v in net.verdicts if v.at_ms >= started]
    return sum(v.status == "dead" for v in after), sum(v.status == "suspect" for v in after)


def steady_run(seed: int, nodes: int, mode: dict, duration_ms: int) -> tuple[int, int, float]:
    """(suspicions, dead verdicts, datagrams per node per second) with no faults."""
    net = SimNet(names_for(nodes), seed=seed, **mode)
    net.run_for(duration_ms)
    suspicions = sum(v.status == "suspect" for v in net.verdicts)
    dead = sum(v.status == "dead" for v in net.verdicts)
    return suspicions, dead, net.sent / nodes / (duration_ms / 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loaded-minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    limits = Limits()
    print(
        f"SWIM defaults: period {limits.swim_period_ms} ms, ping timeout {limits.swim_ping_timeout_ms} ms, "
        f"k={limits.swim_indirect_probes}, suspicion timeout {limits.swim_suspicion_timeout_ms} ms; "
        f"{args.nodes} nodes, {args.trials} trials per row, seed {args.seed}"
    )
    ok = True
    rows: list[tuple[str, ...]] = []
    for label, mode in (("quiet 0-20 ms", QUIET), ("loaded 0-200 ms", LOADED)):
        times = []
        member_times: list[int] = []
        for trial in range(args.trials):
            all_dead_ms, firsts = kill_trial(args.seed * 1_000_003 + trial, args.nodes, mode)
            times.append(all_dead_ms)
            member_times.extend(firsts)
        median, worst = statistics.median(times), max(times)
        met = median <= DETECTION_MEDIAN_MS_MAX and worst <= DETECTION_MS_MAX
        ok &= met
        rows.append(
            (
                f"kill, {label}",
                f"all members say dead: median {median / 1000:.1f} s, max {worst / 1000:.1f} s "
                f"(min {min(times) / 1000:.1f} s); per member median {statistics.median(member_times) / 1000:.1f} s",
                "ok" if met else "MISSED",
            )
        )
    for label, mode in (("quiet 0-20 ms", QUIET), ("loaded 0-200 ms", LOADED)):
        dead = suspicions = 0
        for trial in range(args.trials):
            d, s = pause_trial(args.seed * 2_000_003 + trial, args.nodes, mode)
            dead += d
            suspicions += s
        ok &= dead == 0
        rows.append((f"2 s pause, {label}", f"dead verdicts {dead}, suspicions (refuted) {suspicions}", "ok" if dead == 0 else "MISSED"))
    suspicions, dead, rate = steady_run(args.seed, args.nodes, LOADED, int(args.loaded_minutes * 60_000))
    ok &= suspicions == 0 and dead == 0
    rows.append(
        (
            f"no faults, loaded, {args.loaded_minutes:g} min",
            f"false suspicions {suspicions}, dead verdicts {dead}; {rate:.1f} datagrams per node per s",
            "ok" if suspicions == dead == 0 else "MISSED",
        )
    )
    width = max(len(row[0]) for row in rows)
    for scenario, result, verdict in rows:
        print(f"{scenario:<{width}}  {result}  [{verdict}]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
