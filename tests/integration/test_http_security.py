"""Who may use the HTTP door: the CBOR port's rules, with bearer tokens.

Protected mode: without a secret, `http_listen` beyond loopback exits 2 unless the network is
declared trusted; with TLS configured it stays on loopback. With a secret and client tokens, a
request from another host needs `Authorization: Bearer TOKEN`: none or a bad one gets 401 and
changes nothing; a client token reads and writes, and gets only the version from /stats; an admin
token gets the numbers.
A request from the node's own host holds the admin role, as on the CBOR port.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_protected_mode import secret_file
from tests.integration.test_security_attacks import ADMIN_TOKEN, CLIENT_TOKEN, REMOTE, needs_remote, secure_config, start_with_token
from tests.support import hostile
from tests.support.http_door import HttpNode, request
from tests.support.procs import DyndProcess, free_port, run_dynd


def test_http_beyond_loopback_without_a_secret_exits_2(tmp_path: Path) -> None:
    port = free_port()
    result = run_dynd("--name", "p1", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"), "--http-listen", f"0.0.0.0:{free_port()}")
    assert result.returncode == 2, result
    assert "refusing to serve HTTP" in result.stderr and "trusted_network" in result.stderr, result.stderr
    assert not (tmp_path / "d").exists(), "nothing is written before the check"


def test_http_beyond_loopback_with_tls_configured_exits_2(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("not checked before the HTTP rule\n")
    config = tmp_path / "dynd.toml"
    config.write_text(
        f'[security]\ncluster_secret_file = "{secret_file(tmp_path / "s")}"\n'
        f'tls_cert_file = "{tmp_path / "cert.pem"}"\ntls_key_file = "{tmp_path / "key.pem"}"\ntls_ca_file = "{tmp_path / "ca.pem"}"\n'
    )
    result = run_dynd("--name", "p2", "--config", str(config), "--data-dir", str(tmp_path / "d"), "--http-listen", f"0.0.0.0:{free_port()}")
    assert result.returncode == 2, result
    assert "HTTP" in result.stderr and "TLS" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def token_door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpNode]:
    root = tmp_path_factory.mktemp("http-tokens")
    hostile.write_secret_file(root / "secret")
    hostile.write_tokens_file(root / "tokens", {CLIENT_TOKEN: "client", ADMIN_TOKEN: "admin"})
    config = secure_config(root / "secret", f'client_tokens_file = "{root / "tokens"}"\n')
    port, http_port = free_port(), free_port()
    args = ("--listen", f"0.0.0.0:{port}", "--advertise", f"127.0.0.1:{port}", "--partitions", "8", "--replicas", "1", "--r", "1", "--w", "1")
    node = DyndProcess(root / "t1", name="t1", config_text=config, port=port, extra_args=(*args, "--http-listen", f"0.0.0.0:{http_port}"))
    try:
        start_with_token(node, CLIENT_TOKEN)
        yield HttpNode(node, f"{REMOTE or '127.0.0.1'}:{http_port}")
    finally:
        node.stop()
        node.cleanup()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@needs_remote
def test_a_stranger_without_a_token_gets_401_and_changes_nothing(token_door: HttpNode) -> None:
    path = "/buckets/sec/keys/k"
    assert request(token_door.http, "PUT", path, b"mine", {"Content-Type": "text/plain", **bearer(CLIENT_TOKEN)}).status == 204
    for headers in ({}, bearer("not-a-token-at-all-0000"), {"Authorization": "Basic dXNlcjpwYXNz"}):
        for method, body in (("GET", None), ("PUT", b"theirs"), ("DELETE", None)):
            answer = request(token_door.http, method, path, body, {"Content-Type": "text/plain", **headers})
            assert answer.status == 401, (headers, method, answer)
            assert answer.header("WWW-Authenticate", ) == 'Bearer realm="dynd"'
        assert request(token_door.http, "GET", "/ping", headers=headers).status == 401
        assert request(token_door.http, "GET", "/buckets/sec/keys?keys=true", headers=headers).status == 401
    assert request(token_door.http, "GET", path, headers=bearer(CLIENT_TOKEN)).body == b"mine"


@needs_remote
def test_a_client_token_reads_and_writes_but_gets_only_the_version_from_stats(token_door: HttpNode) -> None:
    assert request(token_door.http, "GET", "/ping", headers=bearer(CLIENT_TOKEN)).status == 200
    stats = request(token_door.http, "GET", "/stats", headers=bearer(CLIENT_TOKEN))
    assert stats.status == 200 and json.loads(stats.body) == {"nodename": "t1", "riak_kv_version": "2.2.0"}  # no numbers
    assert request(token_door.http, "GET", "/stats", headers=bearer(ADMIN_TOKEN)).status == 200


def test_the_nodes_own_host_holds_the_admin_role(token_door: HttpNode) -> None:
    local = "127.0.0.1:" + token_door.http.rsplit(":", 1)[1]
    assert request(local, "GET", "/stats").status == 200
    assert request(local, "PUT", "/buckets/sec/keys/local", b"v", {"Content-Type": "text/plain"}).status == 204
