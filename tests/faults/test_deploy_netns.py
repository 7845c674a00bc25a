"""Three hosts brought up from the shipped config alone (root only: network namespaces).

Each host is a network namespace on a bridge, and the lab's addresses are the example's: host N is
LAB.N where deploy/dynd.toml says 10.0.0.N. Each node runs `dynd --config FILE` and nothing else,
FILE being deploy/dynd.toml with only what differs per host changed, as README's "Run it on servers"
says: name, advertise and join (empty on the first host), plus the paths this test can write to
(data_dir, cluster_secret_file). So every node listens on the wildcard 0.0.0.0:7400, uses the
shipped seeds, the shipped secret setting and the shipped limits.

Then, as an operator would check it: `dynctl health` on each host (against 127.0.0.1, where admin
requests need no token) exits 0, every host lists the three members at their advertised addresses,
and a write through one node reads back from the others.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynd.client import BlockingClient
from dynd.protocol.auth import new_secret_text
from tests.support import netns
from tests.support.cluster import poll_until
from tests.support.procs import DyndProcess, dynd_command

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root and network namespaces")

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "dynd.toml"
EXAMPLE_NETWORK = "10.0.0."  # the addresses deploy/dynd.toml and README use
HOSTS = 3
PORT = 7400
KEYS = 20
SETTLE_S = 90.0


class ConfiguredNode(DyndProcess):
    """A node started as the unit starts it: `dynd --config FILE`, no other flag."""

    def argv(self) -> list[str]:
        assert self.config_path is not None
        return [*self.wrapper, *dynd_command("--config", str(self.config_path))]


def per_host(text: str, settings: dict[str, str]) -> str:
    """`text` with each `key = "..."` setting named in `settings` given its new value (each must
    appear exactly once, uncommented, so the shipped file really sets it)."""
    for key, value in settings.items():
        text, count = re.subn(rf'^{key} = "[^"]*"', f"{key} = {json.dumps(value)}", text, flags=re.MULTILINE)
        assert count == 1, f"deploy/dynd.toml sets {key} {count} times"
    return text


def host_config(lab: netns.NetLab, index: int, directory: Path, secret: Path) -> str:
    shipped = SHIPPED.read_text().replace(EXAMPLE_NETWORK, f"{lab.subnet}.")  # the example network is the lab's
    return per_host(
        shipped,
        {
            "name": f"node{index}",
            "advertise": f"{lab.ip_of(index)}:{PORT}",
            "join": "" if index == 1 else f"{lab.ip_of(1)}:{PORT}",
            "data_dir": str(directory / "data"),
            "cluster_secret_file": str(secret),
        },
    )


def dynctl_on(lab: netns.NetLab, index: int, *args: str) -> subprocess.CompletedProcess[str]:
    """dynctl run on host `index` against its own node, as an operator logged in there would."""
    command = [*lab.wrapper(index), sys.executable, "-m", "dynctl", "--node", f"127.0.0.1:{PORT}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[netns.NetLab, list[ConfiguredNode]]]:
    lab = netns.NetLab()
    nodes: list[ConfiguredNode] = []
    secret_text = new_secret_text()
    try:
        for index in range(1, HOSTS + 1):
            ip = lab.add_node(index)
            directory = tmp_path / f"host{index}"
            directory.mkdir()
            secret = directory / "secret"  # the same secret on every host, each its own copy
            secret.write_text(secret_text)
            secret.chmod(0o600)
            node = ConfiguredNode(
                directory, name=f"node{index}", config_text=host_config(lab, index, directory, secret), host=ip, port=PORT, wrapper=lab.wrapper(index)
            )
            nodes.append(node.start(timeout_s=90))  # the first creates the cluster, the others join it
        yield lab, nodes
    finally:
        for node in nodes:
            node.stop()
        lab.close()


def members_seen(lab: netns.NetLab, index: int) -> dict[str, tuple[str, str, str]]:
    result = dynctl_on(lab, index, "--json", "cluster", "status")
    assert result.returncode == 0, result
    return {m["name"]: (m["status"], m["address"], m["liveness"]) for m in json.loads(result.stdout)["members"]}


def test_three_hosts_come_up_from_the_shipped_config_and_serve_each_others_writes(hosts: tuple[netns.NetLab, list[ConfiguredNode]]) -> None:
    lab, nodes = hosts
    expected = {f"node{i}": ("joined", f"{lab.ip_of(i)}:{PORT}", "alive") for i in range(1, HOSTS + 1)}
    for index in range(1, HOSTS + 1):
        poll_until(f"host {index} sees three members alive at their addresses", lambda i=index: members_seen(lab, i) == expected, deadline_s=SETTLE_S)
    for index in range(1, HOSTS + 1):
        poll_until(f"dynctl health on host {index}", lambda i=index: dynctl_on(lab, i, "health").returncode == 0, deadline_s=SETTLE_S)

    written = {f"deploy-{i}".encode(): f"value {i}".encode() for i in range(KEYS)}
    with BlockingClient(nodes[0].address) as client:  # a client: the secret allows it without a token
        for key, value in written.items():
            client.put(key, value, w=3)
    for reader in nodes[1:]:
        with BlockingClient(reader.address) as client:
            read = {key: client.get(key, r=3).values for key in written}
        assert read == {key: [value] for key, value in written.items()}, reader
    for node in nodes:
        log = node.stderr_text()
        assert f"advertised as {node.address}" in log and "Traceback" not in log, node.stderr_tail()
