"""Nodes in their own Linux network namespaces, joined by veth pairs to a bridge (root only).

    lab = NetLab()                     # a bridge with an address for the test process itself
    address = lab.add_node(1)          # namespace + veth pair; the node listens on `address`'s IP
    lab.isolate(1); lab.heal(1)        # the node's link down / up: cut off from everyone
    lab.split({1, 2})                  # those nodes' links move to a second bridge: two sides
    lab.close()                        # removes every namespace, link and bridge it made

Names carry the test process id, so parallel runs and leftovers of a crashed run never collide.
"""

from __future__ import annotations

import os
import shutil
import subprocess

SUBNET_PREFIX = "10.231"
# Nodes in a lab listen on the lab's addresses, which protected mode refuses without a secret. The
# lab is a network the test made for itself, reached by nothing else: the operator's opt-out fits
# (the test process also reads replicas directly, as only a peer may). The secure path across a
# real non-loopback address is tests/integration/test_security_attacks.py's.
TRUSTED_LAB = "\n[security]\ntrusted_network = true\n"


def available() -> bool:
    """Root, the `ip` tool, and a namespace can actually be made here."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"dyprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class NetLab:
    def __init__(self) -> None:
        self.tag = f"dy{os.getpid() % 100000}"
        self.subnet = f"{SUBNET_PREFIX}.{os.getpid() % 250}"
        self.bridge = f"{self.tag}b0"
        self.other_bridge = f"{self.tag}b1"
        self.nodes: list[int] = []
        for bridge in (self.bridge, self.other_bridge):
            _ip("link", "add", bridge, "type", "bridge")
            _ip("link", "set", bridge, "up")
        _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)

    def namespace(self, index: int) -> str:
        return f"{self.tag}n{index}"

    def host_link(self, index: int) -> str:
        return f"{self.tag}h{index}"

    def wrapper(self, index: int) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace(index))

    def ip_of(self, index: int) -> str:
        return f"{self.subnet}.{index}"

    def add_node(self, index: int) -> str:
        """Make node `index`'s namespace and link; return its IP address."""
        namespace, host_side, node_side = self.namespace(index), self.host_link(index), f"{self.tag}v{index}"
        _ip("netns", "add", namespace)
        self.nodes.append(index)
        _ip("link", "add", host_side, "type", "veth", "peer", "name", node_side)
        _ip("link", "set", node_side, "netns", namespace)
        _ip("link", "set", host_side, "master", self.bridge)
        _ip("link", "set", host_side, "up")
        _ip("-n", namespace, "addr", "add", f"{self.ip_of(index)}/24", "dev", node_side)
        _ip("-n", namespace, "link", "set", node_side, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return self.ip_of(index)

    def isolate(self, index: int) -> None:
        _ip("link", "set", self.host_link(index), "down")

    def heal(self, index: int) -> None:
        _ip("link", "set", self.host_link(index), "up")

    def split(self, minority: set[int]) -> None:
        """Cut the cluster in two: `minority` on one bridge, the rest (and the test) on the other."""
        for index in minority:
            _ip("link", "set", self.host_link(index), "master", self.other_bridge)

    def heal_all(self) -> None:
        for index in self.nodes:
            _ip("link", "set", self.host_link(index), "master", self.bridge)
            _ip("link", "set", self.host_link(index), "up")

    def close(self) -> None:
        for index in self.nodes:
            subprocess.run(["ip", "link", "del", self.host_link(index)], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.namespace(index)], capture_output=True)
        for bridge in (self.bridge, self.other_bridge):
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
