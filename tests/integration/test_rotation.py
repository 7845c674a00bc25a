"""Rotating the cluster secret from A to B on a running 3-node cluster under write load.

The documented procedure (dynd(8), SECURITY): every node's secret file becomes "A then B" (prove
with A, accept both), then "B then A", then "B", each change followed by SIGHUP, one node at a
time. At every step every pair of nodes shares a secret, so no connection between them, old or
new, is refused, and the failure detector's datagrams keep being accepted.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import trio

from dynd.client import BlockingClient, PeerCredentials, open_client
from dynd.protocol import auth
from dynd.protocol.errors import DynError, Unauthorized
from tests.support.cluster import FAST_TIMERS, poll_until, settled, start_node
from tests.support.procs import DyndProcess

LOAD_OPS_MAX = 5_000
LOAD_SECONDS_MAX = 90.0
RELOADED = "credentials reloaded"


class WriteLoad:
    """Puts through each node in turn until stopped; a put that fails is retried once through the
    next node, and only a put that fails twice counts as failed."""

    def __init__(self, nodes: list[DyndProcess]) -> None:
        self.nodes = nodes
        self.acked: dict[str, bytes] = {}
        self.failed_twice: list[str] = []
        self.retried = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WriteLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        clients = [BlockingClient(node.address) for node in self.nodes]
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        try:
            for i in range(LOAD_OPS_MAX):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                key, value = f"rot-{i}", f"value-{i}".encode()
                for attempt in range(2):
                    index = (i + attempt) % len(clients)
                    try:
                        clients[index].put(key, value)
                        self.acked[key] = value
                        break
                    except DynError:
                        self.retried += 1
                        clients[index].close()
                        clients[index] = BlockingClient(self.nodes[index].address)
                else:
                    self.failed_twice.append(key)
        finally:
            for client in clients:
                client.close()


def reload(node: DyndProcess, secret_file: Path, text: str) -> None:
    before = node.stderr_text().count(RELOADED)
    secret_file.write_text(text)
    node.signal(signal.SIGHUP)
    poll_until(f"{node.name} reloads its secret", lambda: node.stderr_text().count(RELOADED) > before, deadline_s=10)


def peer_hello(address: str, keyring: auth.Keyring) -> frozenset[str]:
    async def hello() -> frozenset[str]:
        async with open_client(address, peer=PeerCredentials("probe", "", keyring), timeout_s=5) as client:
            return client.roles

    return trio.run(hello)


def test_rolling_rotation_under_write_load_loses_nothing_and_refuses_no_peer(tmp_path: Path) -> None:
    a, b = auth.new_secret_text(), auth.new_secret_text()
    secrets = {"A": bytes.fromhex(a.strip()), "B": bytes.fromhex(b.strip())}
    files = {name: tmp_path / f"secret-{name}" for name in ("r1", "r2", "r3")}
    for path in files.values():
        path.write_text(a)
        path.chmod(0o600)

    def config(name: str) -> str:
        return FAST_TIMERS + f'\n[security]\ncluster_secret_file = "{files[name]}"\n'

    nodes: list[DyndProcess] = []
    try:
        first = start_node(tmp_path, "r1", config_text=config("r1"))
        nodes.append(first)
        nodes += [start_node(tmp_path, name, first, config_text=config(name)) for name in ("r2", "r3")]
        members = {n.name for n in nodes}
        poll_until("3 members everywhere", lambda: settled(nodes, members))

        steps = [
            (a + b, auth.Keyring((secrets["B"], secrets["A"]))),  # then a dialer of the next step gets in
            (b + a, auth.Keyring((secrets["B"],))),
            (b, auth.Keyring((secrets["B"],))),
        ]
        with WriteLoad(nodes) as load:
            poll_until("the load is running", lambda: len(load.acked) >= 20)
            for text, next_step in steps:
                for node in nodes:
                    reload(node, files[node.name], text)
                for node in nodes:  # a new connection as the next step's nodes will make it
                    assert auth.PEER in peer_hello(node.address, next_step)
            written_before_end = len(load.acked)
            poll_until("the load goes on after the rotation", lambda: len(load.acked) >= written_before_end + 20)
        assert load.failed_twice == [], f"puts that failed twice: {load.failed_twice[:5]} (retried {load.retried})"
        print(f"rotation: {len(load.acked)} puts acknowledged, {load.retried} retried")

        # the old secret is now refused by every node, for new peer connections
        for node in nodes:
            with pytest.raises(Unauthorized):
                peer_hello(node.address, auth.Keyring((secrets["A"],)))
        # the failure detector kept every member alive, and every acknowledged write is there
        poll_until("3 members alive everywhere", lambda: settled(nodes, members))
        with BlockingClient(nodes[0].address) as client:
            missing = [key for key, value in load.acked.items() if client.get(key, r=2).values != [value]]
        assert missing == []
        # new connections between the nodes, made with B alone, work: restart each in turn
        for node in nodes:
            node.stop()
            node.start()
            poll_until("3 members alive again", lambda: settled(nodes, members))
    finally:
        for node in nodes:
            node.stop()
            node.cleanup()
