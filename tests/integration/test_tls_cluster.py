"""TLS on real dynd processes: a 3-node cluster with a cluster secret and mutual TLS between peers,
certificates from trustme (one cluster CA; a second CA stands for anyone else).

Each node's config sets `[security] tls_cert_file, tls_key_file, tls_ca_file`; the nodes reach each
other with their own certificates (mutual TLS) and clients connect with the CA alone.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from dynd.client import BlockingClient, open_client, open_cluster_client
from dynd.protocol.errors import BadRequest, DynError, Unauthorized, Unreachable
from dynd.protocol.tls import client_context
from tests.support.cluster import FAST_TIMERS
from tests.support.procs import PROBE_INTERVAL_S, START_TIMEOUT_S, DyndError, DyndFactory, DyndProcess, free_port, run_dynd

SETTLE_DEADLINE_S = 30.0
REFUSAL_DEADLINE_S = 5.0  # a refused connection must say so well within a client's timeout


@dataclass(frozen=True)
class Pki:
    root: Path
    ca_file: str
    secret_file: str
    rogue_cert: str  # signed by another CA
    rogue_key: str

    def node_files(self, name: str) -> tuple[str, str]:
        return str(self.root / f"{name}.pem"), str(self.root / f"{name}.key")

    def config(self, name: str, cert: tuple[str, str] | None = None) -> str:
        cert_file, key_file = cert if cert is not None else self.node_files(name)
        return FAST_TIMERS + (
            "\n[security]\n"
            f'cluster_secret_file = "{self.secret_file}"\n'
            f'tls_cert_file = "{cert_file}"\n'
            f'tls_key_file = "{key_file}"\n'
            f'tls_ca_file = "{self.ca_file}"\n'
        )

    def client_ssl(self) -> Any:
        return client_context(self.ca_file)  # checks the host name: the certificates list 127.0.0.1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("tls-pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))

    def issue(authority: trustme.CA, name: str) -> None:
        leaf = authority.issue_cert("127.0.0.1", "localhost", f"{name}.dynd.test")
        for blob in leaf.cert_chain_pems:
            blob.write_to_path(str(root / f"{name}.pem"), append=True)
        leaf.private_key_pem.write_to_path(str(root / f"{name}.key"))

    for name in ("t1", "t2", "t3"):
        issue(ca, name)
    issue(other_ca, "rogue")
    secret = root / "cluster.secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    secret.chmod(0o600)
    return Pki(root, str(root / "ca.pem"), str(secret), str(root / "rogue.pem"), str(root / "rogue.key"))


class TlsNode(DyndProcess):
    """A node whose readiness is probed over TLS (the plain probe is refused, as it should be)."""

    ssl_context: Any = None

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        last_error: BaseException | None = None
        while True:
            assert self.proc is not None
            if (code := self.proc.poll()) is not None:
                raise DyndError(self._describe(f"exited with code {code} before it was ready"))
            try:
                with BlockingClient(self.address, timeout_s=1.0, ssl_context=self.ssl_context) as client:
                    name = client.ping()
            except DynError as exc:
                last_error = exc
            else:
                if name != self.name:
                    raise DyndError(self._describe(f"answered as {name!r}"))
                return name
            if time.monotonic() >= deadline:
                raise DyndError(self._describe(f"not ready within {timeout_s:g} s (last probe: {last_error!r})"))
            time.sleep(PROBE_INTERVAL_S)


def tls_node(pki: Pki, tmp: Path, name: str, seed: DyndProcess | None = None) -> TlsNode:
    args = ("--join", seed.address) if seed is not None else ("--replicas", "3", "--r", "2", "--w", "2", "--partitions", "64")
    node = TlsNode(tmp / name, name=name, config_text=pki.config(name), extra_args=args)
    node.ssl_context = pki.client_ssl()
    return node


def settled(nodes: list[TlsNode], ssl_context: Any) -> bool:
    names = {node.name for node in nodes}
    for node in nodes:
        with BlockingClient(node.address, ssl_context=ssl_context) as client:
            view = client.cluster_status()
        if {m.name for m in view.members if m.status == "joined"} != names:
            return False
        if any(m.liveness != "alive" or m.transfers_pending for m in view.members):
            return False
    return True


@pytest.fixture(scope="module")
def cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TlsNode]]:
    tmp = tmp_path_factory.mktemp("tls-cluster")
    nodes: list[TlsNode] = []
    try:
        nodes.append(tls_node(pki, tmp, "t1").start())
        for name in ("t2", "t3"):
            nodes.append(tls_node(pki, tmp, name, seed=nodes[0]).start())
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        while not settled(nodes, pki.client_ssl()):
            assert time.monotonic() < deadline, "the TLS cluster did not settle: " + "\n".join(n.stderr_tail(20) for n in nodes)
            time.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            node.stop()
            print(f"--- {node!r} stderr (last lines) ---\n{node.stderr_tail()}")


# ---- a cluster over TLS ----


def test_puts_and_gets_through_tls_clients(cluster: list[TlsNode], pki: Pki) -> None:
    ssl_context = pki.client_ssl()
    with BlockingClient(cluster[0].address, ssl_context=ssl_context) as client:
        for i in range(20):
            client.put(f"tls:{i}", f"value {i}".encode() * 50)
    for node in cluster:  # R=2: every get reads replicas the coordinator reached over mutual TLS
        with BlockingClient(node.address, ssl_context=ssl_context) as client:
            for i in range(20):
                assert client.get(f"tls:{i}", r=3).values == [f"value {i}".encode() * 50]


async def test_large_values_and_pipelined_requests_over_tls(cluster: list[TlsNode], pki: Pki) -> None:
    big = bytes(range(256)) * 3000  # 750 KiB: many TLS records per frame
    async with open_client(cluster[1].address, ssl_context=pki.client_ssl()) as client:
        context = await client.put(b"tls:big", big)
        assert (await client.get(b"tls:big")).values == [big]

        async def put_get(i: int) -> None:
            await client.put(f"tls:pipe:{i}", str(i).encode())
            assert (await client.get(f"tls:pipe:{i}")).values == [str(i).encode()]

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(put_get, i)
        assert context


async def test_routing_cluster_client_over_tls(cluster: list[TlsNode], pki: Pki) -> None:
    async with open_cluster_client([n.address for n in cluster], ssl_context=pki.client_ssl()) as client:
        for i in range(30):
            await client.put(f"tls:routed:{i}", b"x")
        for i in range(30):
            assert (await client.get(f"tls:routed:{i}")).values == [b"x"]


# ---- refusals ----


def test_plain_client_gets_a_clear_error_not_a_hang(cluster: list[TlsNode]) -> None:
    started = time.monotonic()
    with pytest.raises(BadRequest, match="speaks TLS only"):
        BlockingClient(cluster[0].address, timeout_s=30.0)
    assert time.monotonic() - started < REFUSAL_DEADLINE_S


def test_client_that_does_not_trust_the_node_refuses_it(cluster: list[TlsNode], pki: Pki) -> None:
    other_ca = trustme.CA()
    other_ca.cert_pem.write_to_path(str(pki.root / "unrelated-ca.pem"))
    with pytest.raises(Unauthorized, match="not trusted"):
        BlockingClient(cluster[0].address, ssl_context=client_context(str(pki.root / "unrelated-ca.pem")))


def test_node_refuses_a_client_certificate_from_another_ca(cluster: list[TlsNode], pki: Pki) -> None:
    started = time.monotonic()
    with pytest.raises(Unauthorized, match="certificate|unknown ca"):
        BlockingClient(cluster[0].address, timeout_s=30.0, ssl_context=client_context(pki.ca_file, pki.rogue_cert, pki.rogue_key))
    assert time.monotonic() - started < REFUSAL_DEADLINE_S


def test_a_node_with_a_certificate_from_another_ca_cannot_join(cluster: list[TlsNode], pki: Pki, tmp_path: Path) -> None:
    """Mutual TLS between peers: the seed refuses the joining node's certificate before any hello."""
    rogue = TlsNode(
        tmp_path / "rogue",
        name="rogue",
        config_text=pki.config("rogue", cert=(pki.rogue_cert, pki.rogue_key)),
        extra_args=("--join", cluster[0].address),
    )
    rogue.ssl_context = pki.client_ssl()
    try:
        with pytest.raises(DyndError):
            rogue.start(timeout_s=3.0)  # it keeps retrying the join, and never serves
    finally:
        rogue.stop()
    assert "unknown ca" in rogue.stderr_text() or "certificate" in rogue.stderr_text(), rogue.stderr_tail()
    with BlockingClient(cluster[0].address, ssl_context=pki.client_ssl()) as client:
        assert "rogue" not in {m.name for m in client.cluster_status().members}


def test_tls_client_to_a_node_without_tls(dynd_factory: DyndFactory, pki: Pki) -> None:
    plain = dynd_factory("plain1")
    started = time.monotonic()
    with pytest.raises(Unreachable, match="does not speak TLS"):
        BlockingClient(plain.address, timeout_s=30.0, ssl_context=client_context(pki.ca_file))
    assert time.monotonic() - started < REFUSAL_DEADLINE_S


def test_config_errors_name_the_tls_setting(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'[security]\ntls_cert_file = "{tmp_path}/missing.pem"\ntls_key_file = "{pki.rogue_key}"\ntls_ca_file = "{pki.ca_file}"\n')
    result = run_dynd("--name", "bad", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"), "--config", str(config))
    assert result.returncode == 2
    assert "tls_cert_file" in result.stderr and "missing.pem" in result.stderr
