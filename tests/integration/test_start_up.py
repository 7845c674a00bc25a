"""Start-up is atomic, `join` is never ignored, and an address change reaches the cluster.

A start that fails (a TCP or UDP port in use, a metrics port in use, a seed that never answers)
exits 1 and leaves the data directory as it found it: no node name, actor, boot number or
membership, so the next start begins from nothing and its `--join` takes effect. A data directory
that belongs to another cluster than the one `--join` names is refused with exit 2 (the unit does
not restart that). A node restarted at another address records it and the others learn it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynd.client import BlockingClient
from tests.support.cluster import FAST_TIMERS, poll_until, settled, start_node, status
from tests.support.procs import DyndFactory, DyndProcess, free_port, run_dynd

SHORT_JOIN = FAST_TIMERS + "join_timeout_ms = 500\n"


def taken_tcp(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def taken_udp(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    return sock


@pytest.fixture
def seed(tmp_path: Path) -> Iterator[DyndProcess]:
    node = start_node(tmp_path, "s1")
    yield node
    node.cleanup()


def membership_of(node: DyndProcess) -> dict[str, tuple[str, str]]:
    """name -> (status, address), as the node sees its cluster."""
    return {m.name: (m.status, m.address) for m in status(node).members}


@pytest.mark.parametrize("taken", ["tcp", "udp", "metrics", "seed"])
def test_a_failed_start_leaves_the_data_directory_as_it_found_it(tmp_path: Path, taken: str) -> None:
    config = tmp_path / "dynd.toml"
    config.write_text(SHORT_JOIN)
    data_dir = tmp_path / "state"
    data_dir.mkdir()  # as systemd's StateDirectory= makes it, before dynd starts
    port, other = free_port(), free_port()
    args = ["--name", "f1", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), "--config", str(config)]
    if taken == "tcp":
        blocker = taken_tcp(port)
    elif taken == "udp":
        blocker = taken_udp(port)
    elif taken == "metrics":
        blocker = taken_tcp(other)
        args += ["--metrics-listen", f"127.0.0.1:{other}"]
    else:  # a seed address where nothing answers
        blocker = taken_tcp(other)
        blocker.close()
        args += ["--join", f"127.0.0.1:{other}"]
    with blocker:
        result = run_dynd(*args)
    assert result.returncode == 1, result
    expected = {"tcp": "address in use", "udp": "address in use", "metrics": "cannot serve metrics", "seed": "cannot join through"}[taken]
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert list(data_dir.iterdir()) == [], "a failed start must leave no identity, cluster or address behind"


def test_after_a_start_on_a_taken_port_a_start_with_join_joins_at_the_right_address(tmp_path: Path, seed: DyndProcess) -> None:
    """The operator's sequence from issue 15: the first start (no --join yet) fails on a port in
    use; the retry on a free port with --join must join the seed's cluster and advertise the
    address it serves at, not create a cluster or keep the address of the failed start."""
    data_dir = tmp_path / "j2-data"
    wrong_port = free_port()
    with taken_tcp(wrong_port):
        failed = run_dynd("--name", "j2", "--listen", f"127.0.0.1:{wrong_port}", "--data-dir", str(data_dir), "--partitions", "64")
    assert failed.returncode == 1 and "address in use" in failed.stderr, failed
    assert not data_dir.exists()

    joiner = DyndProcess(tmp_path / "j2", name="j2", data_dir=data_dir, config_text=FAST_TIMERS, extra_args=("--join", seed.address))
    try:
        joiner.start()
        expected = {"s1": ("joined", seed.address), "j2": ("joined", joiner.address)}
        poll_until("both see j2 joined at its address", lambda: membership_of(seed) == expected == membership_of(joiner))
        poll_until("settled", lambda: settled([seed, joiner], {"s1", "j2"}))
        with BlockingClient(seed.address) as client:
            client.put(b"after-retry", b"v", w=2)  # needs both: j2 stores it at the address it serves at
    finally:
        joiner.cleanup()


def test_join_on_a_data_directory_of_another_cluster_is_refused_and_changes_nothing(dynd_factory: DyndFactory, seed: DyndProcess) -> None:
    alone = dynd_factory("a1", config_text=FAST_TIMERS)  # creates a cluster of its own
    with BlockingClient(alone.address) as client:
        client.put(b"mine", b"a1's")
        before = client.cluster_status().members
    assert alone.stop() == 0
    result = run_dynd("--name", "a1", "--listen", alone.address, "--data-dir", str(alone.data_dir), "--join", seed.address)
    assert result.returncode == 2, result
    assert "belongs to cluster" in result.stderr and f"the node at {seed.address} is in cluster" in result.stderr, result.stderr
    assert "join takes effect only on an empty data directory" in result.stderr, result.stderr
    assert f"cluster join {seed.address}" in result.stderr, result.stderr  # alone in its cluster: the way over
    assert "Traceback" not in result.stderr, result.stderr
    alone.start()  # without --join: as it was
    with BlockingClient(alone.address) as client:
        assert client.get(b"mine").values == [b"a1's"]
        assert client.cluster_status().members == before
    assert "a1" not in membership_of(seed)


def test_a_restart_with_join_set_needs_no_seed_that_is_a_member(tmp_path: Path, seed: DyndProcess) -> None:
    """A config file keeps `join` for every start: a restart while the seed is down must work."""
    joiner = start_node(tmp_path, "j3", seed)
    try:
        poll_until("settled", lambda: settled([seed, joiner], {"s1", "j3"}))
        seed.stop()
        joiner.restart()
        assert membership_of(joiner)["j3"] == ("joined", joiner.address)
    finally:
        joiner.cleanup()


def test_a_node_restarted_at_another_address_is_reached_there(tmp_path: Path) -> None:
    """n3 comes back on 127.0.0.2 (same port, its data directory kept): it records the address,
    gossip carries it, and the others reach it, and accept its failure-detector datagrams, there."""
    nodes = [start_node(tmp_path, "m1")]
    nodes += [start_node(tmp_path, f"m{i}", nodes[0]) for i in (2, 3)]
    moved: DyndProcess | None = None
    try:
        poll_until("settled", lambda: settled(nodes, {"m1", "m2", "m3"}))
        old = nodes[2]
        old.stop()
        moved = DyndProcess(tmp_path / "m3-moved", name="m3", host="127.0.0.2", port=old.port, data_dir=old.data_dir, config_text=FAST_TIMERS)
        moved.start()
        running = [nodes[0], nodes[1], moved]
        poll_until(
            "every member sees m3 at 127.0.0.2, alive",
            lambda: all(membership_of(n)["m3"] == ("joined", moved.address) for n in running) and settled(running, {"m1", "m2", "m3"}),
        )
        with BlockingClient(nodes[0].address) as client:
            client.put(b"moved", b"v", w=3)  # every replica, m3 at its new address among them
        with BlockingClient(moved.address) as client:
            assert client.info().advertise == moved.address
    finally:
        for node in [*nodes, *([moved] if moved else [])]:
            node.cleanup()


def test_dynd_without_arguments_asks_for_a_name() -> None:
    result = run_dynd()
    assert result.returncode == 2, result
    assert "no node name: give --name NAME, or --config FILE with [node] name" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "''" not in result.stderr, result.stderr
