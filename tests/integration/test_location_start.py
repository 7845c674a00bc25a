"""Locations on real processes (issue 17): `--location` travels in a node's join, the default is
the host name, and a bad one stops the start with exit status 2 before anything is written."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from dynd.client import open_client
from dynd.core.membership import Membership
from dynd.protocol.locations import default_location
from tests.support.cluster import poll_until, start_node
from tests.support.procs import DyndProcess, run_dynd


def locations_seen_by(node: DyndProcess) -> dict[str, str]:
    async def ask() -> bytes:
        async with open_client(node.address, timeout_s=5) as client:
            return await client.gossip(b"")  # as a joining node fetches the membership

    membership = Membership.decode(trio.run(ask))
    return {name: member.location for name, member in membership.members.items()}


def test_a_bad_location_stops_the_start_and_writes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    result = run_dynd("--name", "bad1", "--data-dir", str(data_dir), "--location", "zone a/h1")
    assert result.returncode == 2, result
    assert "[node] location (--location)" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert list(data_dir.iterdir()) == []


def test_locations_travel_in_joins_and_default_to_the_host_name(tmp_path: Path) -> None:
    first = start_node(tmp_path, "loc1", extra=("--location", "zone-a/host-1"))
    nodes = [first]
    try:
        nodes.append(start_node(tmp_path, "loc2", first, extra=("--location", "zone-b/host-2")))
        nodes.append(start_node(tmp_path, "loc3", first))
        expected = {"loc1": "zone-a/host-1", "loc2": "zone-b/host-2", "loc3": default_location(socket.gethostname())}
        for node in nodes:
            poll_until(f"every location at {node.name}", lambda node=node: locations_seen_by(node) == expected)
    finally:
        for node in nodes:
            node.stop()
            node.cleanup()
