"""Helpers for tests that run a cluster of real dynd processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dynd.client import BlockingClient
from dynd.protocol.errors import DynError
from tests.support.procs import DyndProcess

FAST_TIMERS = """
[limits]
gossip_interval_ms = 150
handoff_interval_ms = 200
tick_interval_ms = 20
request_timeout_ms = 3000
peer_retry_ms = 200
hint_delivery_interval_ms = 200
"""
CONVERGE_DEADLINE_S = 30.0
POLL_S = 0.05


def poll_until(what: str, check: Callable[[], Any], deadline_s: float = CONVERGE_DEADLINE_S) -> Any:
    """Call `check` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except DynError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(POLL_S)
    raise AssertionError(f"{what} did not happen within {deadline_s:g} s (last: {last!r})")


def status(node: DyndProcess) -> Any:
    with BlockingClient(node.address) as client:
        return client.cluster_status()


def settled(nodes: list[DyndProcess], members: set[str]) -> bool:
    """Every node sees exactly `members` joined and alive, and none has partitions left to hand
    off (a node just restarted counts as settled only once the others' detectors see it again)."""
    for node in nodes:
        view = status(node)
        joined = {m.name for m in view.members if m.status == "joined"}
        if joined != members or any(m.transfers_pending for m in view.members):
            return False
        if any(m.liveness != "alive" for m in view.members if m.name in members):
            return False
    return True


def start_node(
    tmp_path: Path, name: str, seed: DyndProcess | None = None, extra: tuple[str, ...] = (), config_text: str = FAST_TIMERS
) -> DyndProcess:
    # A joining node takes the cluster's Q (64 here, not the default 256) without being told.
    args = ("--join", seed.address) if seed is not None else ("--replicas", "3", "--r", "2", "--w", "2", "--partitions", "64")
    return DyndProcess(tmp_path / name, name=name, config_text=config_text, extra_args=args + extra).start()


@contextlib.contextmanager
def running_cluster(tmp_path: Path, prefix: str, size: int, config_text: str = FAST_TIMERS) -> Iterator[list[DyndProcess]]:
    """`size` nodes named prefix1..prefixN (the first creates the cluster, the rest join it),
    settled; every node is stopped (resumed first, were it paused) and cleaned up afterwards."""
    nodes: list[DyndProcess] = []
    try:
        first = start_node(tmp_path, f"{prefix}1", config_text=config_text)
        nodes.append(first)
        nodes += [start_node(tmp_path, f"{prefix}{i}", first, config_text=config_text) for i in range(2, size + 1)]
        poll_until(f"{size} members everywhere", lambda: settled(nodes, {n.name for n in nodes}))
        yield nodes
    finally:
        for node in nodes:
            if node.running:
                node.signal(signal.SIGCONT)  # a paused node must be able to stop
            node.stop()
            node.cleanup()


def run_repair(node: DyndProcess) -> Any:
    """Run an anti-entropy exchange of everything the node holds, to the end; its final report."""
    with BlockingClient(node.address) as client:
        report = client.repair_start()
        while not report.finished:
            time.sleep(POLL_S)  # poll interval; the loop ends on the node's own "finished"
            report = client.repair_status(report.run)
    return report
